import json
import subprocess
import sys

import pytest

from featviz.cli.main import main


def _run(args):
    p = subprocess.run([sys.executable, "-m", "featviz", *args], capture_output=True, text=True,
                       timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args,msg", [
    (["activations", "--target", "mlp:1", "hi"], "takes 2 numbers"),
    (["activations", "--target", "neuron:1:2", "hi"], "unknown kind"),
    (["activations", "hi"], "required: --target"),
    (["nosuchcommand"], "invalid choice"),
    (["activations", "--target", "mlp:1:2", "--model", "/no/such/dir/model", "hi"], "does not exist"),
    (["activations", "--target", "mlp:1:2", "--model", "missing.gguf", "hi"], "does not exist"),
    (["gallery", "--targets", "mlp:1:2", "--dream-group", "0"], "--dream-group must be at least 1"),
    (["gallery", "--targets", "mlp:1:2", "--shard", "3/2"], "--shard 3/2: i must be between 1 and N"),
    (["gallery", "--targets", "mlp:1:2", "--shard", "0/2"], "--shard 0/2: i must be between 1 and N"),
    (["gallery", "--targets", "mlp:1:2", "--shard", "half"], "must be written i/N"),
    (["gallery", "--merge", "/no/such/gallery"], "is not a folder"),
    (["gallery"], "give the targets"),
    (["compare", "--targets", "mlp:1:2"], "nothing to compare"),
])
def test_cli_errors_are_one_line(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_out_of_range_subprocess():
    rc, out, err = _run(["activations", "--target", "mlp:30:0", "hello"])
    assert rc == 2 and "Traceback" not in err
    assert "layer 30 is out of range; this model has layers 0-29" in err


@pytest.mark.slow
def test_cli_activations_json(capsys):
    assert main(["activations", "--target", "mlp:12:345", "--target", "head:3:2@max", "--json",
                 "The cat sat on the mat"]) == 0
    doc = json.loads(capsys.readouterr().out)
    t = doc["texts"][0]
    assert t["tokens"][0] == "<|im_start|>" and len(t["values"]["mlp:12:345"]) == len(t["tokens"])
    assert set(t["reduced"]) == {"mlp:12:345", "head:3:2@max"}
    assert doc["targets"][0]["description"].startswith("MLP neuron 345 of layer 12")


@pytest.mark.slow
def test_cli_query_json_and_out(tmp_path, capsys):
    out = tmp_path / "q.json"
    rc = main(["query", "--target", "mlp:14:1333", "--budget-seconds", "12", "--corpus-tokens",
               "630", "--top-k", "3", "--json", "--out", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    assert doc["dream"]["target"] == "mlp:14:1333" and "silu" in doc["dream"]["target_description"]
    assert len(doc["exemplars"]["top"]) == 3 and doc["corpus_max"] == doc["exemplars"]["top"][0]["value"]
    fr = doc["dream"]["frontier"]
    assert fr and all(a["xe"] <= b["xe"] and a["activation"] < b["activation"]
                      for a, b in zip(fr, fr[1:]))
    assert doc["ratio_best"] == pytest.approx(doc["dream"]["best"]["activation"] / doc["corpus_max"])
