"""QASPER (`allenai/qasper`): whole NLP papers with questions written by NLP practitioners who read only
the title and abstract, answered by others who read the whole paper.

Items: every question with the first annotator answer that is not "unanswerable": the free-form answer
when there is one (`abstractive`), else the extractive spans joined by "; " (`extractive`, kept only when
every span occurs in the document text; else `abstractive`), else Yes/No (`yes_no`). Document text:
title, abstract and every section with its paragraphs. `paper` documents.

Layouts (`layouts`), on the hub and in a local copy `DIR/qasper/`:
1. the hub's Parquet export (revision `refs/convert/parquet`; `main` holds only the loading script):
   `qasper/{train,validation,test}/*.parquet`, one paper per row: `id`, `title`, `abstract`,
   `full_text.{section_name[], paragraphs[][]}`, `qas.{question[], question_id[], answers[].{answer[]}}`
   where each answer has `unanswerable`, `extractive_spans`, `yes_no`, `free_form_answer`;
2. (local only) the same rows in `*.jsonl` / `*.parquet` files named by split;
3. (local only) the original release: `qasper-{train,dev,test}-v0.3.json`, a {paper_id: paper} object whose
   `full_text` is a list of {section_name, paragraphs} and `qas` a list of {question, answers[{answer}]}.
"""

from __future__ import annotations

from typing import Any

from llqa.datafiles import PARQUET_EXPORT, Layout
from longqa.schema import QA, Document, SourceData, clean_text, norm_space
from longqa.sources import Located, by_split_layout, iter_records

ORIGINAL = "original release"

NAME = "qasper"
HUB_ID = "allenai/qasper"


def _sections(full_text: Any) -> list[tuple[str, list[str]]]:
    if isinstance(full_text, dict):  # hub: columns of lists
        return list(zip(full_text.get("section_name") or [], full_text.get("paragraphs") or [], strict=False))
    return [(s.get("section_name") or "", s.get("paragraphs") or []) for s in full_text or []]


def _questions(qas: Any) -> list[tuple[str, list[dict]]]:
    """(question, [answer dicts]) from either the hub's columns or the original list of dicts."""
    if isinstance(qas, dict):
        out = []
        for q, ans in zip(qas.get("question") or [], qas.get("answers") or [], strict=False):
            answers = ans.get("answer") if isinstance(ans, dict) else ans
            out.append((q, list(answers or [])))
        return out
    out = []
    for q in qas or []:
        answers = [a.get("answer", a) if isinstance(a, dict) else a for a in q.get("answers") or []]
        out.append((q.get("question") or "", answers))
    return out


def pick_answer(answers: list[dict], document: str) -> tuple[str, str] | None:
    """(answer, answer_type) of the first answerable annotation, or None."""
    norm_doc = None
    for a in answers:
        if not isinstance(a, dict) or a.get("unanswerable"):
            continue
        free = clean_text(a.get("free_form_answer") or "")
        if free:
            return free, "abstractive"
        spans = [clean_text(s) for s in a.get("extractive_spans") or [] if clean_text(s)]
        if spans:
            norm_doc = norm_doc or norm_space(document)
            found = all(norm_space(s) in norm_doc for s in spans)
            return "; ".join(spans), "extractive" if found else "abstractive"
        if a.get("yes_no") is not None:
            return ("Yes" if a["yes_no"] else "No"), "yes_no"
    return None


def paper_document(title: str, abstract: str, full_text: Any) -> str:
    parts = [title.strip(), "Abstract\n" + abstract.strip()]
    for name, paragraphs in _sections(full_text):
        body = "\n\n".join(p.strip() for p in paragraphs if p and p.strip())
        if body:
            parts.append(f"{(name or '').strip()}\n{body}".strip())
    return clean_text("\n\n".join(p for p in parts if p))


def from_rows(rows, data: SourceData, max_chars: int | None = None) -> SourceData:
    for row in rows:
        doc_id = str(row.get("id") or "")
        text = paper_document(row.get("title") or "", row.get("abstract") or "", row.get("full_text"))
        if not doc_id or not text:
            data.notes.append("a paper without id or text skipped")
            continue
        if max_chars and len(text) > max_chars:
            data.notes.append(f"{doc_id}: {len(text)} characters, above the recipe's bound; skipped untokenized")
            continue
        data.documents[doc_id] = Document(doc_id, clean_text(row.get("title") or doc_id), text, "paper", NAME)
        for question, answers in _questions(row.get("qas")):
            picked = pick_answer(answers, text)
            if picked and clean_text(question):
                data.qas.append(QA(doc_id, clean_text(question), picked[0], picked[1], None, NAME))
    return data


def _splits(options: dict[str, Any]) -> list[str]:
    return list(options.get("splits", ["train", "validation", "test"]))


def layouts(options: dict[str, Any]) -> list[Layout]:
    splits = _splits(options)
    original = {"train": "train", "validation": "dev", "test": "test"}
    return [
        Layout("Parquet export", {s: (f"qasper/{s}/*.parquet",) for s in splits}, revision=PARQUET_EXPORT),
        by_split_layout(splits),
        Layout(ORIGINAL, {s: (f"**/qasper-{original.get(s, s)}-v0.3.json",) for s in splits}, hub=False, partial=True),
    ]


def read(src: Located, options: dict[str, Any]) -> SourceData:
    data = src.source_data()
    for split in _splits(options):
        if src.layout.name == ORIGINAL:  # {paper_id: paper} objects, which `datasets` does not read as rows
            rows = (r for f in src.files[split] for r in iter_records(src.path(f)))
        else:
            rows = src.rows(split)
        from_rows(rows, data, options.get("max_chars"))
    return data
