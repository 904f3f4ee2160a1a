"""NarrativeQA (`deepmind/narrativeqa`): whole books and film scripts, questions and answers written by
people from plot summaries, and the Wikipedia plot summaries themselves.

Items: every question with its first non-empty human answer (category by the rules in categories.py),
plus one `summary` item per document: "Summarize the story." answered by the human plot summary.
Books and scripts are both `novel` documents. The story text is cut to the span between the dataset's
`start` and `end` markers when both occur (dropping licence headers), HTML is reduced to text.

Layouts (`layouts`), on the hub and in a local copy `DIR/narrativeqa/`:
1. `main` since its conversion to Parquet: `data/{train,validation,test}-*-of-*.parquet` (train in 24
   files), one QA per row: `document.{id,kind,start,end,text,summary.{text,title}}`, `question.text`,
   `answers[].text`. Every row repeats its whole book or script, so reading a split is a large download
   (several GB for train): rows are streamed and each document is kept once;
2. (local only) the NarrativeQA repository layout: `documents.csv` (document_id, set, kind, wiki_title,
   story_start, story_end, ...); questions in `qaps.csv` (document_id, set, question, answer1, answer2)
   and/or `*qaps*.jsonl` ({document_id, question, answers: [..]}); summaries in
   `third_party/wikipedia/summaries.csv` (document_id, summary) and/or `*summaries*.jsonl`
   ({document_id, summary, local_story_file}); story texts at `local_story_file` (relative to the
   folder), or `stories/`, `tmp/` as `<document_id>.content` / `<document_id>.txt`.
   Documents without a local story text are skipped (and counted in the manifest notes);
3. (local only) the hub's rows in `*.jsonl` / `*.parquet` files named by split.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from llqa.datafiles import Layout
from llqa.io import read_text
from longqa.schema import QA, Document, SourceData, clean_text
from longqa.sources import Located, by_split_layout, iter_records

REPOSITORY = "NarrativeQA repository"

NAME = "narrativeqa"
HUB_ID = "deepmind/narrativeqa"
SUMMARY_QUESTION = "Summarize the story."
_SET = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}


def story_text(raw: str, start: str | None = None, end: str | None = None) -> str:
    """The story between its start and end markers (when both occur), HTML reduced to plain text."""
    if start and end:
        i, j = raw.find(start), raw.rfind(end)
        if 0 <= i < j:
            raw = raw[i : j + len(end)]
    if re.search(r"<(html|body|pre|p|br|div)\b", raw[:20000], re.I):
        raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.I | re.S)
        raw = re.sub(r"<br\s*/?>|</p>|</div>", "\n", raw, flags=re.I)
        raw = html.unescape(re.sub(r"<[^>]+>", "", raw))
    return clean_text(raw)


def clean_title(title: str) -> str:
    """ "Pump Up the Volume (film)" -> "Pump Up the Volume": drop Wikipedia's disambiguation."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", title.strip()) or title.strip()


def _add(
    data: SourceData,
    doc_id: str,
    title: str,
    text: str,
    summary: str | None,
    questions: list[tuple[str, list[str]]],
    max_chars: int | None,
) -> None:
    if not text:
        data.notes.append(f"{doc_id}: empty story text")
        return
    if max_chars and len(text) > max_chars:
        data.notes.append(f"{doc_id}: {len(text)} characters, above the recipe's bound; skipped untokenized")
        return
    data.documents[doc_id] = Document(doc_id, clean_title(title) or doc_id, text, "novel", NAME)
    if summary and clean_text(summary):
        data.qas.append(QA(doc_id, SUMMARY_QUESTION, clean_text(summary), "summary", "summary", NAME))
    for question, answers in questions:
        answer = next((clean_text(a) for a in answers if a and clean_text(a)), "")
        if clean_text(question) and answer:
            data.qas.append(QA(doc_id, clean_text(question), answer, "abstractive", None, NAME))


# --------------------------------------------------------------------------- hub schema


def _answer_texts(answers: Any) -> list[str]:
    """`answers` as a list of {text, tokens} (the hub's Parquet) or as {text: [...], tokens: [...]}."""
    if isinstance(answers, dict):
        return [t or "" for t in answers.get("text") or []]
    return [(a or {}).get("text") or "" for a in answers or []]


def from_hub_rows(rows, data: SourceData, max_chars: int | None = None) -> SourceData:
    """Group hub rows (one QA each, the document repeated) by document."""
    docs: dict[str, dict[str, Any]] = {}
    questions: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for row in rows:
        doc = row["document"]
        doc_id = doc["id"]
        if doc_id not in docs:
            summary = doc.get("summary") or {}
            docs[doc_id] = dict(
                title=summary.get("title") or doc.get("url") or doc_id,
                text=story_text(doc.get("text") or "", doc.get("start"), doc.get("end")),
                summary=summary.get("text"),
            )
        questions[doc_id].append(((row.get("question") or {}).get("text") or "", _answer_texts(row.get("answers"))))
    for doc_id in sorted(docs):
        d = docs[doc_id]
        _add(data, doc_id, d["title"], d["text"], d["summary"], questions[doc_id], max_chars)
    return data


def _splits(options: dict[str, Any]) -> list[str]:
    return list(options.get("splits", ["train", "validation", "test"]))


def layouts(options: dict[str, Any]) -> list[Layout]:
    splits = _splits(options)
    return [
        Layout("Parquet", {s: (f"data/{s}-*.parquet",) for s in splits}),
        Layout(REPOSITORY, {"documents": ("documents.csv",)}, hub=False),
        by_split_layout(splits),
    ]


def read(src: Located, options: dict[str, Any]) -> SourceData:
    if src.layout.name == REPOSITORY:
        return _load_repo_layout(src, _splits(options), options.get("max_chars"))
    data = src.source_data()
    for split in _splits(options):
        from_hub_rows(src.rows(split), data, options.get("max_chars"))
    return data


# --------------------------------------------------------------------------- the repository layout


def _load_repo_layout(src: Located, splits: list[str], max_chars: int | None) -> SourceData:
    directory = src.path("")
    read: list[Path] = [directory / "documents.csv"]
    meta = {
        r["document_id"]: r
        for r in iter_records(directory / "documents.csv")
        if _SET.get(r.get("set", ""), r.get("set")) in splits
    }
    questions: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    if (directory / "qaps.csv").is_file():
        read.append(directory / "qaps.csv")
        for r in iter_records(directory / "qaps.csv"):
            questions[r["document_id"]].append((r.get("question", ""), [r.get("answer1", ""), r.get("answer2", "")]))
    for f in sorted(directory.glob("*qaps*.jsonl")):
        read.append(f)
        for r in iter_records(f):
            questions[r["document_id"]].append((r.get("question", ""), list(r.get("answers") or [])))
    summaries: dict[str, str] = {}
    story_files: dict[str, Path] = {}
    wiki = directory / "third_party" / "wikipedia" / "summaries.csv"
    if wiki.is_file():
        read.append(wiki)
        summaries.update({r["document_id"]: r.get("summary", "") for r in iter_records(wiki)})
    for f in sorted(directory.glob("*summaries*.jsonl")):
        read.append(f)
        for r in iter_records(f):
            summaries[r["document_id"]] = r.get("summary") or summaries.get(r["document_id"], "")
            if r.get("local_story_file"):
                story_files[r["document_id"]] = directory / r["local_story_file"]
    for doc_id in meta:
        if doc_id not in story_files:
            for sub in ("stories", "tmp"):
                for ext in (".content", ".txt"):
                    if (directory / sub / f"{doc_id}{ext}").is_file():
                        story_files[doc_id] = directory / sub / f"{doc_id}{ext}"
    data = SourceData(NAME, src.origin, "")
    missing = 0
    for doc_id in sorted(meta):
        path = story_files.get(doc_id)
        if path is None or not path.is_file():
            missing += 1
            continue
        read.append(path)
        m = meta[doc_id]
        raw = read_text(path)  # UTF-8 with universal newlines, as every reader; other bytes are refused
        _add(
            data,
            doc_id,
            m.get("wiki_title") or doc_id,
            story_text(raw, m.get("story_start"), m.get("story_end")),
            summaries.get(doc_id),
            questions.get(doc_id, []),
            max_chars,
        )
    if missing:
        data.notes.append(f"{missing} documents of {len(meta)} have no local story text; skipped")
    data.revision = src.source_data([p.relative_to(directory).as_posix() for p in read]).revision
    return data
