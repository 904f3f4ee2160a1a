"""arXiv summarization (`ccdv/arxiv-summarization`): whole arXiv papers with their abstracts.

Items: one `summary` item per paper, "Summarize the paper." answered by the authors' abstract. The
abstract is removed from the document given to the model wherever it occurs verbatim (up to whitespace).
The hub config is `section` (sections separated by newlines; recipe option `config`).
Papers carry no id or title in this dataset (the article starts with its body text): the id is a hash of the
text and the paper has no title (items say `(untitled)`; the paper framing does not show titles).

Layouts (`layouts`), rows `{article, abstract}` (strings), on the hub and in a local copy `DIR/arxiv/`:
1. `main` since its conversion to Parquet: one folder per config, `<config>/<split>-*.parquet`
   (configs `section` and `document`);
2. the hub's Parquet export: `<config>/<split>/*.parquet` (revision `refs/convert/parquet`);
3. (local only) `*.jsonl` / `*.parquet` files named by split.
Rows are streamed and reading stops after `max_docs` papers, so only the first files are fetched.
"""

from __future__ import annotations

import re
from typing import Any

from llqa.datafiles import PARQUET_EXPORT, Layout
from longqa.schema import QA, Document, SourceData, clean_text, content_id
from longqa.sources import Located, by_split_layout

NAME = "arxiv"
HUB_ID = "ccdv/arxiv-summarization"
SUMMARY_QUESTION = "Summarize the paper."


def remove_abstract(article: str, abstract: str) -> str:
    """The article without the abstract's text (matched word by word across any whitespace)."""
    words = abstract.split()
    if len(words) < 5:
        return article
    pattern = r"\s+".join(re.escape(w) for w in words)
    return re.sub(pattern, " ", article)


def from_rows(rows, data: SourceData, max_docs: int | None = None, max_chars: int | None = None) -> SourceData:
    seen = 0
    for row in rows:
        if max_docs is not None and seen >= max_docs:
            break
        seen += 1
        abstract = clean_text(row.get("abstract") or "")
        article = clean_text(remove_abstract(row.get("article") or "", abstract))
        if not article or not abstract:
            data.notes.append("a paper without article or abstract skipped")
            continue
        if max_chars and len(article) > max_chars:
            data.notes.append("a paper above the recipe's character bound skipped untokenized")
            continue
        doc_id = "arxiv-" + content_id(article)
        data.documents[doc_id] = Document(doc_id, "", article, "paper", NAME)
        data.qas.append(QA(doc_id, SUMMARY_QUESTION, abstract, "summary", "summary", NAME))
    return data


def layouts(options: dict[str, Any]) -> list[Layout]:
    config, splits = options.get("config", "section"), list(options.get("splits", ["train"]))
    return [
        Layout(f"Parquet, config {config}", {s: (f"{config}/{s}-*.parquet",) for s in splits}),
        Layout(f"Parquet export, config {config}", {s: (f"{config}/{s}/*.parquet",) for s in splits}, PARQUET_EXPORT),
        by_split_layout(splits),
    ]


def read(src: Located, options: dict[str, Any]) -> SourceData:
    data = src.source_data()
    for split in options.get("splits", ["train"]):
        from_rows(src.rows(split), data, options.get("max_docs"), options.get("max_chars"))
    return data
