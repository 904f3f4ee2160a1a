"""arXiv summarization (`ccdv/arxiv-summarization`): whole arXiv papers with their abstracts.

Items: one `summary` item per paper, "Summarize the paper." answered by the authors' abstract. The
abstract is removed from the document given to the model wherever it occurs verbatim (up to whitespace).
The hub config is `section` (sections separated by newlines; recipe option `config`).
Papers carry no id or title in this dataset: the id is a hash of the text, the title its first line.

Local copy (`DIR/arxiv/`): `*.jsonl` / `*.parquet` files named by split (`train*`, `validation*`,
`test*`), one paper per row with `article` and `abstract` strings (the hub schema).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from longqa.schema import QA, Document, SourceData, clean_text, content_id
from longqa.sources import data_files, digest_files, hub_revision, hub_rows, iter_records, local_origin

NAME = "arxiv"
HUB_ID = "ccdv/arxiv-summarization"
SUMMARY_QUESTION = "Summarize the paper."


def first_line_title(text: str, limit: int = 100) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


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
        data.documents[doc_id] = Document(doc_id, first_line_title(article), article, "paper", NAME)
        data.qas.append(QA(doc_id, SUMMARY_QUESTION, abstract, "summary", "summary", NAME))
    return data


def load_hub(options: dict[str, Any]) -> SourceData:
    data = SourceData(NAME, HUB_ID, hub_revision(HUB_ID))
    for split in options.get("splits", ["train"]):
        rows = hub_rows(HUB_ID, split, config=options.get("config", "section"), streaming=True)
        from_rows(rows, data, options.get("max_docs"), options.get("max_chars"))
    return data


def load_local(directory: Path, options: dict[str, Any]) -> SourceData:
    files = data_files(directory, options.get("splits", ["train"]))
    data = SourceData(NAME, local_origin(directory), digest_files(files, directory))
    return from_rows(
        (r for f in files for r in iter_records(f)), data, options.get("max_docs"), options.get("max_chars")
    )
