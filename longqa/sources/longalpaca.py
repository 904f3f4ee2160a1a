"""LongAlpaca-12k (`Yukang/LongAlpaca-12k`): the published form of LongLoRA's original LongQA set, mixed
with short Alpaca items.

Only the long paper/book items are imported: those whose `instruction` matches one of the recipe's
framings (the same strings LongQA used), which gives back the document, the book title and the
question; they are re-framed, categorised and length-filtered like every other source. Other rows
(short Alpaca instructions) are skipped and counted in the manifest notes. Ids hash the document text.

Layouts (`layouts`), rows `{instruction, output, file}`: `LongAlpaca-12k.json` (one 498 MB JSON list, as
`main` publishes it), on the hub or in a local copy `DIR/longalpaca/`; or (local only) `*.jsonl` / `*.parquet`
files.
"""

from __future__ import annotations

import re
from typing import Any

from llqa.datafiles import Layout
from longqa.hygiene import book_title, paper_title, strip_markup
from longqa.schema import QA, Document, SourceData, clean_text, content_id
from longqa.sources import Located

NAME = "longalpaca"
HUB_ID = "Yukang/LongAlpaca-12k"


_GROUPS = {"title": r"(?P<title>.*?)", "document": r"(?P<document>.*)", "question": r"(?P<question>.*)"}


def framing_pattern(template: str) -> re.Pattern:
    """A regex that takes a framed instruction apart again ({title}, {document}, {question} groups).
    The literal text is matched up to whitespace, since published copies vary in it."""
    parts = re.split(r"\{(title|document|question)\}", template)  # literal, name, literal, ...
    regex = ""
    for i, part in enumerate(parts):
        if i % 2:
            regex += r"\s*" + _GROUPS[part] + r"\s*"
        else:
            words = part.replace("{{", "{").replace("}}", "}").split()
            regex += r"\s*".join(re.escape(w) for w in words)
    return re.compile(r"\s*" + regex + r"\s*", re.S)


def from_rows(rows, framing: dict[str, str], data: SourceData, max_chars: int | None = None) -> SourceData:
    patterns = {doc_type: framing_pattern(t) for doc_type, t in framing.items()}
    skipped = 0
    for row in rows:
        instruction, output = row.get("instruction") or "", clean_text(row.get("output") or "")
        for doc_type, pattern in patterns.items():  # noqa: B007 - doc_type is used after the loop
            m = pattern.fullmatch(instruction)
            if m:
                break
        else:
            skipped += 1
            continue
        document, question = clean_text(m.group("document")), clean_text(m.group("question"))
        if not (document and question and output):
            skipped += 1
            continue
        if max_chars and len(document) > max_chars:
            data.notes.append("a document above the recipe's character bound skipped untokenized")
            continue
        doc_id = "longalpaca-" + content_id(document)
        title = clean_text(strip_markup(m.groupdict().get("title") or ""))
        if not title:  # the paper framing carries no title: a paper's first line, unless a section heading
            title = paper_title(document) if doc_type == "paper" else book_title(document)
        data.documents.setdefault(doc_id, Document(doc_id, title, document, doc_type, NAME))
        data.qas.append(QA(doc_id, question, output, "abstractive", None, NAME))
    if skipped:
        data.notes.append(f"{skipped} rows that are not framed long paper/book items skipped")
    return data


def layouts(options: dict[str, Any]) -> list[Layout]:
    return [
        Layout("LongAlpaca-12k.json", {"train": ("**/LongAlpaca-12k.json",)}),
        Layout("JSON lines or Parquet files", {"train": ("**/*.jsonl", "**/*.parquet")}, hub=False),
    ]


def read(src: Located, options: dict[str, Any]) -> SourceData:
    return from_rows(src.rows("train"), options["framing"], src.source_data(), options.get("max_chars"))
