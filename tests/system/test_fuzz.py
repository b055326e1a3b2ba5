"""Property-based bad input: target specs, configs, CLI flags and corpus files.

Every case must end in a FeatvizError (exit 2 and one line from the CLI) or a correct
result: never another exception, a traceback, a hang, or a partial output file.
The number of cases tried is printed at the end of the session (pytest -s).
"""
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featviz
from featviz import FeatvizError
from featviz.cli.main import main
from featviz.config import load_config
from featviz.mining.corpus import windows
from featviz.mining.miner import MineConfig, mine

TRIED: dict = {}
FAST = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def tried(name):
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="session", autouse=True)
def report_counts():
    yield
    if TRIED:
        print("\nfuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
              + f" (total {sum(TRIED.values())})")


PIECES = st.sampled_from(["mlp", "head", "attn", "resid", "blocks", "hook_post", "mlp.hook_post",
                          ":", "::", "@", "@max", "@mean", "@last", "@-1", "@99", "-", ".", "0",
                          "1", "2", "3", "-1", "99", "1-2", "2-1", "0-99999", "1e3", " ", "x",
                          "/tmp/none.npy", "\x00", "\u202e", "٣"])
SPECS = st.one_of(st.text(max_size=30), st.lists(PIECES, max_size=8).map("".join))


@FAST
@given(spec=SPECS)
def test_target_specs(llama, spec):
    tried("target specs")
    try:
        ts = featviz.parse_targets(spec, llama)
    except FeatvizError as e:
        assert "\n" not in str(e)
        return
    assert ts and all(str(t) for t in ts)
    for t in ts[:3]:
        featviz.read_text(llama, [t], "the cat")        # a parsed target can be read


VALUES = st.one_of(st.integers(-10, 10 ** 9), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.booleans(), st.none(),
                   st.lists(st.integers(-3, 9), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                             st.integers(), max_size=2))
KEYS = st.sampled_from(["length", "batch", "steps", "seed", "budget_seconds", "xe_cap", "init",
                        "lr", "tau0", "caps", "vocab", "corpus_tokens", "top_k", "window",
                        "precision", "children", "bogus", "memory_gb", "beam_lams", "sweep"])


@FAST
@given(doc=st.one_of(st.dictionaries(KEYS, VALUES, max_size=4), st.text(max_size=40),
                     st.binary(max_size=40)))
def test_configs(tmp_path_factory, doc):
    tried("config files")
    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    if isinstance(doc, dict):
        import yaml
        p.write_text(yaml.safe_dump(doc))
    elif isinstance(doc, bytes):
        p.write_bytes(doc)
    else:
        p.write_text(doc)
    try:
        cfg = load_config(str(p), {})
    except FeatvizError as e:
        assert "\n" not in str(e)
        return
    assert cfg.dream.length >= 1 and cfg.dream.rows.batch >= 1


CORPORA = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.builds(lambda n, c: c * n, st.integers(0, 20_000), st.sampled_from(["a", "é", "\n", " ", "x y"])),
    st.lists(st.text(max_size=20), max_size=8).map(lambda xs: "\n".join(json.dumps({"text": x}) for x in xs)),
    st.just(b"\xff\xfe\x00\x00garbage"),
)


@FAST
@given(content=CORPORA, window=st.integers(-2, 40), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_corpus_files(llama, tmp_path_factory, content, window, suffix):
    tried("corpus files")
    p = tmp_path_factory.mktemp("corp") / f"c{suffix}"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    try:
        ws = list(windows(llama, str(p), window, max_tokens=2000))
        assert ws and all(len(w.ids) == window + 1 for w in ws)
        cfg = MineConfig(window=window, max_tokens=max(window, 200), k=2, cells=4, hist_bins=4)
        r = mine(llama, featviz.parse_targets("mlp:1:0-1", llama), cfg, source=str(p),
                 progress=False)
        assert r[0].n_tokens > 0
    except FeatvizError as e:
        assert "\n" not in str(e)


FLAGS = {
    "query": ["--length", "--steps", "--batch", "--seed", "--xe-cap", "--budget-seconds",
              "--corpus-tokens", "--top-k", "--init", "--prefix", "--target", "--config"],
    "gallery": ["--tokens", "--window", "--top-k", "--budget-seconds", "--steps", "--swap-iters",
                "--layers", "--targets", "--seed", "--config", "--title"],
    "audit": ["--tokens", "--window", "--steps", "--swap-iters", "--threshold", "--target",
              "--seed"],
    "activations": ["--target"],
}
ARGV_VALUES = st.sampled_from(["0", "-1", "1", "2", "1e9", "nan", "inf", "x", "", "mlp:1:0",
                               "mlp:9:0", "head:1:1@max", "mlp:1:0-2", "superstimulus=2",
                               "path_z=x", "0,1", "1-0", "random", "model", "corpus",
                               "/nonexistent.yaml", "<script>"])


@FAST
@given(cmd=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_cli_flags(model_dir, tmp_path_factory, capsys, cmd, data):
    tried("CLI invocations")
    flags = data.draw(st.lists(st.tuples(st.sampled_from(FLAGS[cmd]), ARGV_VALUES), max_size=4))
    out = tmp_path_factory.mktemp("cli")
    base = {"query": ["--target", "mlp:1:0", "--steps", "2", "--swap-iters", "1", "--length", "3",
                      "--batch", "2", "--corpus-tokens", "0"],
            "gallery": ["--targets", "mlp:1:0", "--tokens", "64", "--window", "16", "--steps", "2",
                        "--swap-iters", "1", "--cache-dir", "", "--out", str(out / "g")],
            "audit": ["--target", "mlp:1:0", "--tokens", "400", "--window", "16", "--steps", "2",
                      "--swap-iters", "1", "--cache-dir", ""],
            "activations": ["--target", "mlp:1:0"]}[cmd]
    argv = [cmd, "--model", model_dir] + base + [x for f, v in flags for x in (f, v)]
    if cmd == "activations":
        argv.append("the cat")
    try:
        rc = main(argv)
    except SystemExit as e:              # --help and friends
        rc = e.code
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    assert rc in (0, 2), (argv, rc, cap.err[-300:])
    if rc == 2:
        assert cap.err.strip().splitlines()[-1].startswith("featviz: error:")
    for root, _, files in os.walk(out):
        for f in files:
            assert ".tmp" not in f                       # no partial output left behind
            if f.endswith(".json"):
                json.load(open(os.path.join(root, f)))


@pytest.mark.parametrize("doc", ["corpus_tokens: null\n", "window: null\n", "top_k: null\n",
                                 "steps: null\n"])
def test_config_nulls_are_one_line_errors(tmp_path, doc):
    """Found by test_configs: a YAML null where an integer belongs once crashed the check
    with a TypeError; ``steps: null`` (no limit) needs a budget."""
    from featviz.config import load_config
    p = tmp_path / "c.yaml"
    p.write_text(doc)
    with pytest.raises(FeatvizError):
        load_config(str(p), {})
