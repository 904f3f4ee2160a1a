"""evals/texts.py: documents from text files, folders, jsonl/json/parquet tables; clear errors."""

from __future__ import annotations

import gzip
import json

import pytest

from evals.texts import load_texts
from llqa.errors import LlqaError
from llqa.io import read_text, read_text_lines


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
        read_text(empty)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_end_reads_as_lf(tmp_path, end):
    """Universal newlines in the one reader: a text file, and the lines of a JSON lines table (gzipped too)."""
    text = "Chapter 1\n\nIt was a dark night;\n  she said: “n’est-ce pas?”\n"
    p = tmp_path / "t.txt"
    p.write_bytes(text.replace("\n", end.decode()).encode())
    assert read_text(p) == text == load_texts(p)[0].text
    assert list(read_text_lines(p)) == text.split("\n")[:-1]
    rows = [json.dumps({"text": "a\r\nb"}), json.dumps({"text": "c"})]  # an escaped CR is data, kept
    with gzip.open(tmp_path / "t.jsonl.gz", "wb") as f:
        f.write(end.join(r.encode() for r in rows) + end)
    assert [d.text for d in load_texts(tmp_path / "t.jsonl.gz")] == ["a\r\nb", "c"]


def test_non_utf8_is_refused_with_its_byte_offset(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(b"line one\r\nline two \xff\xfe")
    with pytest.raises(LlqaError, match=r"bin.txt is not UTF-8 text \(byte 19: b'\\xff'\)"):
        read_text(p)
    with pytest.raises(LlqaError, match=r"not UTF-8 text \(line 2, byte 19: b'\\xff'\)"):
        list(read_text_lines(p))
    p.write_bytes(b"\xef\xbb\xbf{}\n\x80")  # offsets count the BOM: they are offsets into the file
    with pytest.raises(LlqaError, match=r"line 2, byte 6"):
        list(read_text_lines(p))
