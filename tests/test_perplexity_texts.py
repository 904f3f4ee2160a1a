"""evals/texts.py: documents from text files, folders, jsonl/json/parquet tables; clear errors."""

from __future__ import annotations

import gzip
import json

import pytest

from evals.texts import load_texts, read_text_file
from llqa.errors import LlqaError


def test_text_file_folder_and_tables(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffFirst book.".encode())  # a UTF-8 BOM is dropped
    assert load_texts(tmp_path / "a.txt")[0].text == "First book."
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.txt").write_text("Second book.")
    (sub / "skip.md").write_text("not a .txt")
    rows = [{"text": "row zero", "meta": {"set_name": "arxiv"}}, {"text": "row one", "meta": "{}"}]
    with gzip.open(sub / "t.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert [d.id for d in load_texts(tmp_path)] == ["a.txt", "sub/b.txt"]
    docs = load_texts(tmp_path, pattern="*.txt,*.jsonl.gz")
    assert [d.id for d in docs] == ["a.txt", "sub/b.txt", "sub/t.jsonl.gz:0", "sub/t.jsonl.gz:1"]
    assert docs[2].meta["meta"] == {"set_name": "arxiv"}
    (tmp_path / "arr.json").write_text(json.dumps([{"body": "x", "name": "n1"}]))
    doc = load_texts(tmp_path / "arr.json", text_field="body", id_field="name")[0]
    assert (doc.id, doc.text) == ("n1", "x")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", "beta"], "short_book_title": ["A", "B"]}), tmp_path / "t.parquet")
    docs = load_texts(tmp_path / "t.parquet")
    assert [d.text for d in docs] == ["alpha", "beta"] and docs[1].meta["short_book_title"] == "B"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        ("caf\u00e9".encode("latin-1"), "is not UTF-8"),
    ],
)
def test_bad_text_files(tmp_path, content, needle):
    p = tmp_path / "x.txt"
    p.write_bytes(content)
    with pytest.raises(LlqaError, match=needle):
        load_texts(p)


def test_bad_tables_and_folders(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(LlqaError, match="line 2 is not JSON"):
        load_texts(p)
    p.write_text('{"text": 3}\n')
    with pytest.raises(LlqaError, match="is int, not text"):
        load_texts(p)
    p.write_text("")
    with pytest.raises(LlqaError, match="is empty"):
        load_texts(p)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlqaError, match="no files matching"):
        load_texts(empty)
    (empty / "e.txt").write_text("\n")
    with pytest.raises(LlqaError, match="is empty"):
        load_texts(empty)
    with pytest.raises(LlqaError, match="cannot read"):
        read_text_file(empty)
