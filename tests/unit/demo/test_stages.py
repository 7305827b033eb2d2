"""Stage bookkeeping: finished = marker + same settings + same upstream tokens + outputs present."""

from __future__ import annotations

import json
import os

import pytest

from verl_difficulty.demo.stages import StageBook


def _out(tmp_path, name="out.txt"):
    p = tmp_path / name
    p.write_text("x")
    return str(p)


def test_status_through_the_life_of_a_stage(tmp_path):
    book = StageBook(str(tmp_path))
    out = _out(tmp_path)
    assert book.status("score", {"k": 8}, {"data": "t1"}).why == "not run yet"
    rec = book.mark_done("score", {"k": 8, "names": ("a", "b")}, {"data": "t1"}, [out], 1.5, ["line"], {"rho": 0.5})
    assert rec.outputs == ["out.txt"]  # relative to the demo folder, so a moved folder stays valid
    st = book.status("score", {"k": 8, "names": ["a", "b"]}, {"data": "t1"})  # tuples compare as lists
    assert st.done and st.record.summary == ["line"] and st.record.data == {"rho": 0.5}
    st = book.status("score", {"k": 16, "names": ["a", "b"]}, {"data": "t1"})
    assert not st.done and st.why == "settings changed: k"
    st = book.status("score", {"k": 8, "names": ["a", "b"]}, {"data": "t2"})
    assert not st.done and st.why == "redone upstream: data"
    os.unlink(out)
    st = book.status("score", {"k": 8, "names": ["a", "b"]}, {"data": "t1"})
    assert not st.done and st.why == "output missing: out.txt"


def test_tokens_change_on_every_finish_and_forget(tmp_path):
    book = StageBook(str(tmp_path))
    out = _out(tmp_path)
    t1 = book.mark_done("data", {}, {}, [out], 0.1).token
    t2 = book.mark_done("data", {}, {}, [out], 0.1).token
    assert t1 != t2 and book.token("data") == t2
    book.forget("data")
    assert book.token("data") is None and book.load("data") is None
    book.forget("data")  # idempotent


def test_missing_output_is_refused_and_a_torn_marker_is_not_finished(tmp_path):
    book = StageBook(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="was not written"):
        book.mark_done("model", {}, {}, [str(tmp_path / "nope")], 1.0)
    assert book.load("model") is None
    os.makedirs(book.dir, exist_ok=True)
    with open(book.path("model"), "w") as f:
        f.write('{"stage": "model", "sett')  # a marker cut short
    st = book.status("model", {}, {})
    assert not st.done and "unreadable" in st.why
    # a marker written by mark_done is complete JSON
    book.mark_done("model", {"a": 1}, {}, [_out(tmp_path)], 1.0)
    with open(book.path("model")) as f:
        assert json.load(f)["settings"] == {"a": 1}
