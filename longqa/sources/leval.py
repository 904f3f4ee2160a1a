"""L-Eval (`L4NLP/LEval`): long documents, each with instructions written by annotators and reference
outputs. One config per task; the recipe lists the tasks to use (`tasks = [...]`).

Each task has a document type (`TASK_DOC_TYPES`; a recipe may add `doc_types = {task = "paper"}`):
papers — `scientific_qa` (QASPER papers), `paper_assistant` (ICLR papers: abstract, related work and
review writing); novels — `quality` (stories, multiple choice), `sci_fi` (true/false questions about
the story's world), `narrative_qa`. Items: every (instruction, output) pair, the instruction's leading
numbering dropped; sci_fi's outputs "True [fact: False]" keep the in-story answer ("True").
Ids hash the document text (HTML comments removed). Titles: a story's first line; a paper's first line
unless it is a section heading — L-Eval's papers start at "Introduction" / "1 INTRODUCTION", without their
titles, so they have none (hygiene.py).

Repairs and drops (counted in the manifest's notes and `dropped`):
- `sci_fi` questions take one form, "<statement>, True or False? Answer this question based on the world
  described in the document.": a "QuestionN:" prefix is stripped, a doubled "True or False? ..." suffix
  collapsed, and a bare statement (answered True/False all the same) given the suffix (`sci_fi_question`);
- `quality` mixes Project Gutenberg stories, each opening with its title and a "By AUTHOR" byline, with
  non-fiction (Slate magazine articles such as "The Flytrap Blame Game", which have no byline): only the
  stories are novels; a document without a byline in its first lines is dropped (`not_a_story`), since the
  recipe frames novels as "paragraphs in the book".

Layouts (`layouts`), on the hub and in a local copy `DIR/leval/`; rows `{input, instructions[], outputs[],
source, evaluation}` in both:
1. the hub's Parquet export (revision `refs/convert/parquet`: `main` holds only the loading script `LEval.py`,
   which `datasets` >= 4 refuses): one folder per task, `<task>/test/0000.parquet`. It has no per-task
   configs (only `default`, which merges every task), so tasks are picked by their files, never by config;
2. `<task>.jsonl` at any depth: `main`'s `LEval/{Exam,Generation}/` folders or the L-Eval GitHub repository's
   `LEval-data/{Open-ended-tasks,Closed-ended-tasks}/` (`../shared/data/leval` is this layout).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from llqa.datafiles import PARQUET_EXPORT, Layout
from llqa.errors import LlqaError
from longqa.hygiene import book_title, paper_title, strip_markup
from longqa.schema import QA, Document, SourceData, clean_text, content_id, is_multiple_choice
from longqa.sources import Located

NAME = "leval"
HUB_ID = "L4NLP/LEval"
TASK_DOC_TYPES = {
    "scientific_qa": "paper",
    "paper_assistant": "paper",
    "quality": "novel",
    "sci_fi": "novel",
    "narrative_qa": "novel",
}


def clean_instruction(text: str) -> str:
    return clean_text(re.sub(r"^\s*(\d+\.|Question\s*\d+\s*:)\s*", "", text))


SCI_FI_TAIL = "True or False? Answer this question based on the world described in the document."
_TRUE_OR_FALSE = re.compile(r"\s*,?\s*True or False\?", re.I)
_BASED_ON = re.compile(r"\s*,?\s*Answer this question based on the world described in the document\.?", re.I)


def sci_fi_question(question: str) -> tuple[str, str | None]:
    """(the question in its one form, what was repaired or None): "<statement>, True or False? Answer this
    question based on the world described in the document."."""
    asks = len(_TRUE_OR_FALSE.findall(question))
    statement = _BASED_ON.sub("", _TRUE_OR_FALSE.split(question, maxsplit=1)[0])
    statement = re.sub(r"(\s*,)+", ",", statement).strip().rstrip(" .,;")
    fixed = f"{statement}, {SCI_FI_TAIL}"
    if fixed == question:
        return fixed, None
    return fixed, "bare statement" if asks == 0 else "doubled suffix" if asks > 1 else "form"


BYLINE = re.compile(r"^\s*by\b", re.I | re.M)


def has_byline(text: str, lines: int = 8) -> bool:
    """A "By AUTHOR" line (or a line "By" followed by the name) among the first non-empty lines."""
    head = [ln for ln in text.splitlines() if ln.strip()][:lines]
    return any(BYLINE.match(ln) for ln in head)


def clean_output(text: str, task: str) -> str:
    if task == "sci_fi":
        text = re.sub(r"\s*\[fact:[^\]]*\]\s*$", "", text)
    return clean_text(text)


def answer_type(question: str) -> str:
    if is_multiple_choice(question):
        return "multiple_choice"
    return "yes_no" if re.search(r"\btrue or false\b", question, re.I) else "abstractive"


def from_rows(rows, task: str, doc_type: str, data: SourceData, max_chars: int | None = None) -> SourceData:
    repairs: Counter = Counter()
    for row in rows:
        text = clean_text(strip_markup(row.get("input") or ""))
        pairs = list(zip(row.get("instructions") or [], row.get("outputs") or [], strict=False))
        if not text:
            data.notes.append(f"{task}: a row without input skipped")
            continue
        if task == "quality" and not has_byline(text):
            data.dropped["not_a_story"] += len(pairs)
            data.notes.append(f"{task}: {book_title(text)!r} has no byline (non-fiction): dropped")
            continue
        if max_chars and len(text) > max_chars:
            data.notes.append(f"{task}: a document above the recipe's character bound skipped untokenized")
            continue
        doc_id = f"leval-{task}-{content_id(text)}"
        title = paper_title(text) if doc_type == "paper" else book_title(text)
        data.documents[doc_id] = Document(doc_id, title, text, doc_type, NAME)
        for q, a in pairs:
            if task == "sci_fi" and re.match(r"\s*Question\s*\d+\s*:", q or ""):
                repairs["'QuestionN:' prefix stripped"] += 1
            q, a = clean_instruction(q or ""), clean_output(a or "", task)
            if task == "sci_fi" and q:
                q, repaired = sci_fi_question(q)
                repairs[repaired] += repaired is not None
            if q and a:
                data.qas.append(QA(doc_id, q, a, answer_type(q), None, NAME))
    for what, n in sorted((k, v) for k, v in repairs.items() if k):
        data.notes.append(f"{task}: {n} question(s) repaired ({what})")
    return data


def _tasks(options: dict[str, Any]) -> list[tuple[str, str]]:
    types = {**TASK_DOC_TYPES, **options.get("doc_types", {})}
    tasks = options.get("tasks") or ["scientific_qa", "paper_assistant", "quality", "sci_fi"]
    unknown = [t for t in tasks if types.get(t) not in ("paper", "novel")]
    if unknown:
        raise LlqaError(
            f"leval tasks {unknown} have no document type",
            'add doc_types = { task = "paper" | "novel" } under [sources.leval]',
        )
    return [(t, types[t]) for t in tasks]


def layouts(options: dict[str, Any]) -> list[Layout]:
    tasks = [t for t, _ in _tasks(options)]
    return [
        Layout("Parquet export", {t: (f"{t}/test/*.parquet",) for t in tasks}, revision=PARQUET_EXPORT),
        Layout("one <task>.jsonl per task", {t: (f"**/{t}.jsonl",) for t in tasks}),
    ]


def read(src: Located, options: dict[str, Any]) -> SourceData:
    data = src.source_data()
    for task, doc_type in _tasks(options):
        from_rows(src.rows(task), task, doc_type, data, options.get("max_chars"))
    return data
