"""`featviz compare` from the command line: table, JSON, pages, and one-line errors."""
import json
import os

import pytest
import torch
from conftest import make_tokenizer, tiny_gpt2, tiny_llama, word_corpus

from featviz.cli.main import main


def save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp-models")
    a = tiny_llama(make_tokenizer(), seed=5)
    b = tiny_llama(make_tokenizer(), seed=5)
    with torch.no_grad():
        b.model.layers[1].mlp.gate_proj.weight[2] = b.model.layers[1].mlp.gate_proj.weight[4].flip(0)
    return {"a": save(a, root / "a"), "b": save(b, root / "b"),
            "gpt2": save(tiny_gpt2(make_tokenizer()), root / "gpt2"),
            "short": save(tiny_llama(make_tokenizer(), seed=5, layers=2), root / "short"),
            "corpus": word_corpus(root / "c.txt", 0, 40, 30),
            "empty": (root / "empty.txt").write_text("\n\n") and str(root / "empty.txt")}


SMALL = ["--tokens", "800", "--window", "16", "--top-k", "4", "--cache-dir", ""]


def test_cli_compare_table_json_and_pages(dirs, tmp_path, capsys):
    out, pages = tmp_path / "cmp.json", tmp_path / "pages"
    args = ["compare", "--model", dirs["a"], "--against", dirs["b"], "--targets", "mlp:1:0-5",
            "--corpus", dirs["corpus"], "--steps", "3", "--swap-iters", "2", *SMALL]
    assert main(args + ["--out", str(out), "--gallery", str(pages)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "verdict" in lines[1] and lines[2].split()[1] == "mlp:1:2"      # the edited one first
    assert lines[-1].startswith("/") or lines[-1].endswith("index.html")
    doc = json.loads(out.read_text())
    assert doc["schema"] == "featviz.compare" and doc["version"] == 1
    assert doc["ranked_by"] == "drift" and doc["targets"][0]["target"] == "mlp:1:2"
    assert sum(doc["verdicts"].values()) == 6
    assert os.path.exists(pages / "index.html") and os.path.exists(pages / "compare.json")
    assert len(os.listdir(pages / "targets")) == 6
    assert main(args + ["--json"]) == 0                     # fixed steps: the same JSON again
    assert json.loads(capsys.readouterr().out) == doc


@pytest.mark.parametrize("case,msg", [
    ("arch", "cannot compare: model A has arch llama, model B has gpt2"),
    ("missing", "exists in model A but not in model B"),
    ("empty", "is empty; pass a file with text in it"),
    ("nothing", "nothing to compare"),
    ("outdir", "--out"),
])
def test_cli_compare_errors_are_one_line(dirs, case, msg, capsys, tmp_path, monkeypatch):
    args = ["compare", "--model", dirs["a"], "--targets", "mlp:1:0", "--corpus", dirs["corpus"],
            "--no-dream", *SMALL]
    args += {"arch": ["--against", dirs["gpt2"]],
             "missing": ["--against", dirs["short"], "--targets", "mlp:2:0"],
             "empty": ["--task-corpus", dirs["empty"]],
             "nothing": [],
             "outdir": ["--against", dirs["b"], "--out", str(tmp_path)]}[case]
    if case == "arch":                  # refused from config.json, before any weights load
        import featviz.model.loading as loading
        monkeypatch.setattr(loading, "_load_cached", lambda *a: pytest.fail("a model loaded"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]                  # (transformers' loading bar may come before)
    assert msg in last and last.startswith("featviz: error: ") and "Traceback" not in err
