import json

import pytest

from featviz import FeatvizError
from featviz.mining.corpus import documents, windows


def test_txt_and_jsonl_windows(llama, tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph here.\n\nsecond one, the cat sat.\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "the moon over the sea"}) + "\n")
    docs = list(documents(str(tmp_path)))
    assert docs == ["first paragraph here.", "second one, the cat sat.", "the moon over the sea"]
    ws = list(windows(llama, str(tmp_path), 4))
    assert all(len(w.ids) == 5 and w.ids[0] == llama.bos_id for w in ws)
    assert [w.index for w in ws] == list(range(len(ws)))
    again = list(windows(llama, str(tmp_path), 4))
    assert [w.ids.tolist() for w in ws] == [w.ids.tolist() for w in again]


def test_max_tokens(llama, tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat on the mat " * 50)
    ws = list(windows(llama, str(tmp_path / "a.txt"), 8, max_tokens=40))
    assert len(ws) == 5


@pytest.mark.parametrize("content,msg", [
    (b"", "is empty"),
    (b"   \n\n  ", "is empty"),
    (b"\xff\xfe bad bytes", "not valid UTF-8"),
    (b"abc\x00def", "looks binary"),
])
def test_bad_txt(llama, tmp_path, content, msg):
    p = tmp_path / "x.txt"
    p.write_bytes(content)
    with pytest.raises(FeatvizError, match=msg):
        list(windows(llama, str(p), 4))


def test_bad_sources(llama, tmp_path):
    with pytest.raises(FeatvizError, match="does not exist"):
        list(windows(llama, str(tmp_path / "nope.txt"), 4))
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(FeatvizError, match="no string field 'text'"):
        list(windows(llama, str(tmp_path / "a.jsonl"), 4))
    (tmp_path / "b.jsonl").write_text('{not json\n')
    with pytest.raises(FeatvizError, match="line 1 is not JSON"):
        list(windows(llama, str(tmp_path / "b.jsonl"), 4))
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(FeatvizError, match="yields no window"):
        list(windows(llama, str(tmp_path / "short.txt"), 50))
    with pytest.raises(FeatvizError, match="at least 1 token"):
        list(windows(llama, str(tmp_path / "short.txt"), 0))
    (tmp_path / "d").mkdir()
    with pytest.raises(FeatvizError, match="holds no .txt or .jsonl"):
        list(windows(llama, str(tmp_path / "d"), 4))
    with pytest.raises(FeatvizError, match="need the `datasets` package|cannot load dataset"):
        list(windows(llama, "hf:some/dataset", 4))


def test_huge_single_line(llama, tmp_path):
    p = tmp_path / "long.txt"
    p.write_text("x" * 300_000)
    ws = list(windows(llama, str(p), 16, max_tokens=160, max_doc_chars=10_000))
    assert len(ws) == 10


@pytest.mark.slow
def test_embedded_wiki(smollm):
    ws = []
    for w in windows(smollm, None, 63, max_tokens=630):
        ws.append(w)
    assert len(ws) == 10 and all(len(w.ids) == 64 for w in ws)
    text = smollm.decode(ws[0].ids[1:])
    assert len(text.split()) > 20
