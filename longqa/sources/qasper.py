"""QASPER (`allenai/qasper`): whole NLP papers with questions written by NLP practitioners who read only
the title and abstract, answered by others who read the whole paper.

Items: every question with the first annotator answer that is not "unanswerable": the free-form answer
when there is one (`abstractive`), else the extractive spans joined by "; " (`extractive`, kept only when
every span occurs in the document text; else `abstractive`), else Yes/No (`yes_no`). Document text:
title, abstract and every section with its paragraphs. `paper` documents.

Local copy (`DIR/qasper/`), either form:
1. Hub schema: `*.jsonl` / `*.parquet` named by split, one paper per row: `id`, `title`, `abstract`,
   `full_text.{section_name[], paragraphs[][]}`, `qas.{question[], question_id[], answers[].{answer[]}}`
   where each answer has `unanswerable`, `extractive_spans`, `yes_no`, `free_form_answer`.
2. The original release: `qasper-{train,dev,test}-v0.3.json`, a {paper_id: paper} object whose
   `full_text` is a list of {section_name, paragraphs} and `qas` a list of {question, answers[{answer}]}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longqa.schema import QA, Document, SourceData, clean_text, norm_space
from longqa.sources import data_files, digest_files, hub_revision, hub_rows, iter_records, local_origin

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


def load_hub(options: dict[str, Any]) -> SourceData:
    data = SourceData(NAME, HUB_ID, hub_revision(HUB_ID))
    for split in options.get("splits", ["train", "validation", "test"]):
        from_rows(hub_rows(HUB_ID, split), data, options.get("max_chars"))
    return data


def load_local(directory: Path, options: dict[str, Any]) -> SourceData:
    splits = list(options.get("splits", ["train", "validation", "test"]))
    files = data_files(directory, splits)
    # the original release names splits inside the file name: qasper-train-v0.3.json
    files += [
        p
        for p in sorted(directory.glob("qasper-*.json"))
        if p not in files and any(s in p.name for s in splits + (["dev"] if "validation" in splits else []))
    ]
    data = SourceData(NAME, local_origin(directory), digest_files(files, directory))
    return from_rows((r for f in files for r in iter_records(f)), data, options.get("max_chars"))
