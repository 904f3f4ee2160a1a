"""`llqa validate PATH`: prove a LongQA build sound before anyone trains on it.

PATH is a build directory (the files `llqa build` writes + manifest.json) or a single .jsonl file. Every
problem is reported with file, line and field; errors fail validation (exit 1), warnings do not. Bad input
is something to report, never a crash: invalid UTF-8, malformed JSON, lone surrogates, wrong types, huge
lines, damaged manifests and odd files included. Only the build directory's own regular files are read:
manifest paths are plain file names, and symbolic links are reported, never followed.

What a build promises, and so what validate holds it to: the manifest lists every file of the directory
with its sha256 and size; its counts, cells, histogram and length bounds describe the items; each
Parquet file holds the rows of its jsonl; each item is the recipe's framing around a human question,
with n_tokens as the manifest's tokenizer counts it. An edit that keeps every promise and every item
check (a re-serialisation of the same JSON, CRLF line ends, with checksums updated) still passes.

Checks (code: severity):
- manifest: `manifest` missing, unreadable, a field missing or of the wrong type, `files` empty, no
  tokenizer named, a format or n_tokens definition other than the one checked here (error);
  `extra-field` an unknown top-level field (warning); `path` a listed name that is not a plain file name
  in the build directory (never read), `symlink`, `not-a-file`, `missing-file`, `unlisted-file` a file of
  the directory the manifest does not list (error; the files of a split the manifest records as empty
  may be absent); `checksum` a file's sha256 or byte count differs from the manifest (error); `parquet` a
  Parquet file unreadable or not holding the rows of its jsonl, `readme` README.md not the dataset card
  of the manifest (error).
- lines: `utf8` invalid UTF-8 (error), `json` not a JSON object, a duplicate key or a carriage return
  inside a line (error), `surrogate` a lone UTF-16 surrogate (a `\\ud800` escape: no UTF-8 reader or
  tokenizer takes it) (error), `empty` a file with no items (error; a warning for a split the manifest
  records as empty).
- schema: `missing-field`, `type` wrong JSON type (error), `extra-field` (warning), `category`,
  `doc_type`, `split`, `answer_type` unknown value or a split field that disagrees with its file (error).
- text: `empty` empty or whitespace-only string (error), `control-char` (error), `mojibake` UTF-8 read as
  Latin-1/cp1252 or U+FFFD (warning).
- framing: `framing` instruction is not the manifest's framing around the item's question (error).
- tokens: `n_tokens` recounted with the manifest's tokenizer differs (error; skipped with
  --no-recount), `too-long` n_tokens above --ctx, `bounds` outside the recipe's min/max_tokens (error);
  `tokenizer` the manifest's tokenizer cannot be loaded (error) or differs from the build's (warning).
- duplicates: `duplicate-id`, `duplicate-question` (same document, same question) (error);
  `near-duplicate-question` (same document, same words) (warning); `doc-mismatch` one doc_id with two
  different texts, titles, doc_types or sources (error); `near-duplicate-document` two doc_ids with
  near-identical text (warning); `split-leak` a document, or a near-duplicate of it, in both splits
  (error); `max-per-doc` more items on one document than the recipe's max_per_doc (error).
- answers: `answer-in-question` (error), `extractive-not-found` an extractive answer's span absent from
  the document (error).
- counts: `quota` a (doc_type, category) count above the recipe's quota, or below it when the build was
  not made with --allow-short (error); `counts` the manifest's counts (total, by split, category,
  doc_type and source, documents, clusters), cells, per-source items or n_tokens histogram differ from
  the files (error).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import string
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from longqa import dedup, framing
from longqa.build import DATA_FILES, N_TOKENS_DEFINITION, dataset_card
from longqa.schema import (
    ANSWER_TYPES,
    CATEGORIES,
    DOC_TYPES,
    ITEM_FIELDS,
    SPLITS,
    answer_in_question,
    extractive_spans,
    find_control,
    find_mojibake,
    norm_space,
    norm_words,
)

ERROR, WARNING = "error", "warning"
MAX_PROBLEMS = 10_000  # kept in the report; counts by code are always complete

MANIFEST = "manifest.json"
FORMAT = "llqa-longqa/1"
# What `llqa build` writes beside the manifest; each must be listed in the manifest's `files`.
BUILD_FILES = DATA_FILES
# The manifest's top-level fields and their JSON types.
MANIFEST_FIELDS: dict[str, type] = {
    "format": str,
    "llqa_version": str,
    "recipe": dict,
    "seed": int,
    "allow_short": bool,
    "shortfalls": list,
    "tokenizer": dict,
    "n_tokens": str,
    "sources": dict,
    "cells": dict,
    "counts": dict,
    "dropped": dict,
    "n_tokens_histogram": list,
    "files": dict,
}
# The manifest's counts: totals (int) and tallies by an item field (dict of value -> int).
COUNT_TOTALS = ("total", "documents", "document_clusters")
COUNT_TALLIES = {"by_split": "split", "by_category": "category", "by_doc_type": "doc_type", "by_source": "source"}
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # json.loads pairs valid ones, so any left is a lone surrogate
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # the only way one gets into valid UTF-8 JSON


def printable(s: str) -> str:
    """`s` with lone surrogates as `\\udxxx` escapes: safe to print, to write as UTF-8 and to compare."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Problem:
    severity: str
    code: str
    file: str
    line: int | None
    field: str | None
    message: str


@dataclass
class Report:
    path: str
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # by code
    items: int = 0
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, severity: str, code: str, file: str, line: int | None, fld: str | None, message: str) -> None:
        self.counts[(severity, code)] += 1
        if len(self.problems) < MAX_PROBLEMS:
            fld = None if fld is None else printable(fld)
            self.problems.append(Problem(severity, code, printable(file), line, fld, printable(message)))

    @property
    def errors(self) -> int:
        return sum(n for (sev, _), n in self.counts.items() if sev == ERROR)

    @property
    def warnings(self) -> int:
        return sum(n for (sev, _), n in self.counts.items() if sev == WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "items": self.items,
            "errors": self.errors,
            "warnings": self.warnings,
            "checked": self.checked,
            "skipped": self.skipped,
            "by_code": {f"{sev}:{code}": n for (sev, code), n in sorted(self.counts.items())},
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass
class Row:
    file: str
    line: int
    item: dict[str, Any]
    doc: str | None = None  # the document, when the framing parsed
    head_doc: str | None = None


def _dict(x: Any) -> dict:
    """A manifest part as a dict, whatever a damaged manifest holds there."""
    return x if isinstance(x, dict) else {}


def _short(s: str, n: int = 60) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n] + "..."


# --------------------------------------------------------------------------- reading


class _DuplicateKey(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses a repeated key (readers disagree on which value wins)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key)
    return obj


def parse_json(text: str) -> Any:
    """json.loads that also refuses duplicate keys; raises ValueError (JSONDecodeError, an integer too long
    to convert, a duplicate key) or RecursionError."""
    return json.loads(text, object_pairs_hook=_object)


def json_problem(e: Exception) -> str:
    if isinstance(e, _DuplicateKey):
        return f"the key {_short(str(e))!r} appears twice"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg})"
    if isinstance(e, RecursionError):
        return "not valid JSON (nested too deeply)"
    return f"not valid JSON ({_short(str(e))})"


def surrogate_paths(x: Any, where: str = "") -> list[str]:
    """Dotted paths of the keys and strings in `x` that hold a lone surrogate."""
    if isinstance(x, str):
        return [where] if _SURROGATE.search(x) else []
    out: list[str] = []
    if isinstance(x, dict):
        for k, v in x.items():
            path = f"{where}.{k}" if where else k
            out += [path] if _SURROGATE.search(k) else surrogate_paths(v, path)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += surrogate_paths(v, f"{where}[{i}]")
    return out


def read_rows(data: bytes, name: str, report: Report) -> tuple[list[Row], bool]:
    """Items of one jsonl file's bytes that are JSON objects of UTF-8 text, and whether every line was one;
    every other line becomes a problem. Lines end at \\n only (as `llqa build` writes them); \\r\\n is
    accepted, a \\r elsewhere is not: readers that split lines on it would see two."""
    rows, lines = [], 0
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        lines += 1
        if b"\r" in raw[:-1]:
            report.add(ERROR, "json", name, i, None, "a carriage return inside the line")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(ERROR, "utf8", name, i, None, f"invalid UTF-8 at byte {e.start}")
            continue
        try:
            obj = parse_json(text)
        except (ValueError, RecursionError) as e:
            report.add(ERROR, "json", name, i, None, json_problem(e))
            continue
        if not isinstance(obj, dict):
            report.add(ERROR, "json", name, i, None, f"a JSON {type(obj).__name__}, not an object")
            continue
        bad = surrogate_paths(obj) if _ESCAPED_SURROGATE.search(raw) else []
        for path in bad:
            report.add(ERROR, "surrogate", name, i, path, "a lone surrogate (\\ud800-\\udfff): not encodable as UTF-8")
        if not bad:
            rows.append(Row(name, i, obj))
    return rows, len(rows) == lines


def check_schema(row: Row, report: Report, split: str | None) -> bool:
    """Field presence, types and values; False when the item is too broken for further checks."""
    it, ok = row.item, True
    for key, typ in ITEM_FIELDS.items():
        if key not in it:
            report.add(ERROR, "missing-field", row.file, row.line, key, "field missing")
            ok = False
        elif not isinstance(it[key], typ) or (typ is int and isinstance(it[key], bool)):
            report.add(ERROR, "type", row.file, row.line, key, f"expected {typ.__name__}, got {type(it[key]).__name__}")
            ok = False
    for key in sorted(set(it) - set(ITEM_FIELDS)):
        report.add(WARNING, "extra-field", row.file, row.line, str(key), "field not in the LongQA format")
    for key, allowed in (
        ("category", CATEGORIES),
        ("doc_type", DOC_TYPES),
        ("split", SPLITS),
        ("answer_type", ANSWER_TYPES),
    ):
        v = it.get(key)
        if isinstance(v, str) and v not in allowed:
            report.add(
                ERROR, key, row.file, row.line, key, f"unknown value {_short(v)!r}; allowed: {', '.join(allowed)}"
            )
            ok = False
    if split and isinstance(it.get("split"), str) and it["split"] in SPLITS and it["split"] != split:
        report.add(ERROR, "split", row.file, row.line, "split", f"item says {it['split']!r} in {split}.jsonl")
    for key, typ in ITEM_FIELDS.items():
        v = it.get(key)
        if typ is str and isinstance(v, str):
            if not v.strip():
                report.add(ERROR, "empty", row.file, row.line, key, "empty or whitespace-only")
                ok = ok and key not in ("instruction", "question", "doc_id")
                continue
            c = find_control(v)
            if c is not None:
                report.add(ERROR, "control-char", row.file, row.line, key, f"control character U+{ord(c):04X}")
            m = find_mojibake(v)
            if m is not None:
                report.add(WARNING, "mojibake", row.file, row.line, key, f"mojibake {m!r}")
    if isinstance(it.get("n_tokens"), int) and not isinstance(it["n_tokens"], bool) and it["n_tokens"] <= 0:
        report.add(ERROR, "n_tokens", row.file, row.line, "n_tokens", f"must be positive, got {it['n_tokens']}")
    return ok


# --------------------------------------------------------------------------- whole-set checks


def check_framing(rows: list[Row], templates: dict[str, str], report: Report) -> None:
    for r in rows:
        it = r.item
        parsed = framing.parse(templates[it["doc_type"]], it["title"], it["question"], it["instruction"])
        if parsed is None or not parsed[1].strip():
            report.add(
                ERROR,
                "framing",
                r.file,
                r.line,
                "instruction",
                f"not the recipe's {it['doc_type']} framing around this item's title and question",
            )
            continue
        r.head_doc, r.doc = parsed


def check_tokens(rows: list[Row], counter, ctx: int | None, report: Report, recount: bool) -> None:
    from longqa.tokens import safe_split

    if ctx is not None:
        for r in rows:
            if r.item["n_tokens"] > ctx:
                report.add(ERROR, "too-long", r.file, r.line, "n_tokens", f"{r.item['n_tokens']} tokens > --ctx {ctx}")
    if not recount:
        return
    split_ok = counter.splittable
    heads: dict[str, int] = {}
    for r in rows:
        if split_ok and r.head_doc is not None and safe_split(r.head_doc, r.item["instruction"][len(r.head_doc) :]):
            heads.setdefault(r.head_doc, 0)
    keys = sorted(heads)
    heads.update(zip(keys, counter.count(keys), strict=True))
    whole = [r for r in rows if r.head_doc not in heads]
    whole_counts = counter.count([r.item["instruction"] for r in whole])
    short = [r.item["instruction"][len(r.head_doc) :] for r in rows if r.head_doc in heads]
    counter.batch, old = 1024, counter.batch
    try:
        short_counts = iter(counter.count(short))
        out_counts = counter.count([r.item["output"] for r in rows])
    finally:
        counter.batch = old
    whole_iter = iter(whole_counts)
    by_parts = []
    for r, n_out in zip(rows, out_counts, strict=True):
        if r.head_doc in heads:
            n_inst = heads[r.head_doc] + next(short_counts)
            by_parts.append((n_inst, r))
        else:
            n_inst = next(whole_iter)
        if n_inst + n_out != r.item["n_tokens"]:
            report.add(
                ERROR,
                "n_tokens",
                r.file,
                r.line,
                "n_tokens",
                f"recorded {r.item['n_tokens']}, recounted {n_inst + n_out}",
            )
    # Cross-check the shortcut itself on the three shortest instructions counted by parts.
    sample = sorted(by_parts, key=lambda t: (t[0], t[1].file, t[1].line))[:3]
    for (n_parts, r), n_whole in zip(sample, counter.count([r.item["instruction"] for _, r in sample]), strict=True):
        if n_parts != n_whole:
            report.add(
                ERROR,
                "n_tokens",
                r.file,
                r.line,
                "instruction",
                f"counted by parts {n_parts} != whole {n_whole}: this tokenizer does not split cleanly",
            )


def check_duplicates(rows: list[Row], report: Report) -> None:
    ids: dict[str, Row] = {}
    questions: dict[tuple[str, str], Row] = {}
    near: dict[tuple[str, str], Row] = {}
    docs: dict[str, tuple[str, Row]] = {}
    meta: dict[tuple[str, str], Row] = {}
    for r in rows:
        it = r.item
        if it["id"] in ids:
            first = ids[it["id"]]
            report.add(ERROR, "duplicate-id", r.file, r.line, "id", f"also at {first.file}:{first.line}")
        ids.setdefault(it["id"], r)
        key = (it["doc_id"], it["question"])
        if key in questions:
            first = questions[key]
            report.add(
                ERROR,
                "duplicate-question",
                r.file,
                r.line,
                "question",
                f"same question on the same document at {first.file}:{first.line}",
            )
        else:
            questions[key] = r
            nkey = (it["doc_id"], norm_words(it["question"]))
            if nkey in near:
                first = near[nkey]
                report.add(
                    WARNING,
                    "near-duplicate-question",
                    r.file,
                    r.line,
                    "question",
                    f"same words as {first.file}:{first.line}",
                )
            near.setdefault(nkey, r)
        if r.doc is not None:
            digest = hashlib.sha256(r.doc.encode("utf-8", "surrogatepass")).hexdigest()
            if it["doc_id"] in docs and docs[it["doc_id"]][0] != digest:
                first = docs[it["doc_id"]][1]
                report.add(
                    ERROR,
                    "doc-mismatch",
                    r.file,
                    r.line,
                    "instruction",
                    f"doc_id {_short(it['doc_id'])!r} has a different document at {first.file}:{first.line}",
                )
            docs.setdefault(it["doc_id"], (digest, r))
        for key in ("title", "doc_type", "source"):  # properties of the document, not of the question
            first = meta.setdefault((it["doc_id"], key), r)
            if first.item[key] != it[key]:
                report.add(
                    ERROR,
                    "doc-mismatch",
                    r.file,
                    r.line,
                    key,
                    f"doc_id {_short(it['doc_id'])!r} has {key} {_short(first.item[key])!r} "
                    f"at {first.file}:{first.line}",
                )


def check_documents(rows: list[Row], report: Report) -> None:
    """Split leakage (by doc_id and by near-duplicate text) and near-duplicate documents."""
    splits: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Row] = {}
    texts: dict[str, str] = {}
    for r in rows:
        splits[r.item["doc_id"]].add(r.item["split"])
        first.setdefault(r.item["doc_id"], r)
        if r.doc is not None:
            texts.setdefault(r.item["doc_id"], r.doc)
    for doc_id in sorted(splits):
        if len(splits[doc_id] & set(SPLITS)) > 1:
            r = first[doc_id]
            report.add(ERROR, "split-leak", r.file, r.line, "doc_id", f"document {_short(doc_id)!r} is in both splits")
    prints = {k: dedup.fingerprint(v) for k, v in sorted(texts.items())}
    for a, b, j in dedup.near_duplicate_pairs(prints):
        ra, rb = first[a], first[b]
        if splits[a] != splits[b] or len(splits[a]) > 1:
            report.add(
                ERROR,
                "split-leak",
                rb.file,
                rb.line,
                "doc_id",
                f"near-duplicate (Jaccard {j}) of {_short(a)!r} at {ra.file}:{ra.line}, in another split",
            )
        else:
            report.add(
                WARNING,
                "near-duplicate-document",
                rb.file,
                rb.line,
                "doc_id",
                f"near-duplicate (Jaccard {j}) of {_short(a)!r} at {ra.file}:{ra.line}",
            )


def check_answers(rows: list[Row], report: Report) -> None:
    norm_docs: dict[str, str] = {}
    for r in rows:
        it = r.item
        if answer_in_question(it["question"], it["output"]):
            report.add(ERROR, "answer-in-question", r.file, r.line, "output", "the question contains the answer")
        if it["answer_type"] == "extractive" and r.doc is not None:
            doc = norm_docs.setdefault(it["doc_id"], norm_space(r.doc))
            missing = [s for s in extractive_spans(it["output"]) if norm_space(s) not in doc]
            if missing:
                report.add(
                    ERROR,
                    "extractive-not-found",
                    r.file,
                    r.line,
                    "output",
                    f"span {_short(missing[0])!r} is not in the document",
                )


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _mismatch(report: Report, fld: str, recorded: Any, actual: Any) -> None:
    report.add(
        ERROR, "counts", MANIFEST, None, fld, f"manifest says {_short(repr(recorded), 200)}, files hold {actual}"
    )


def check_counts(rows: list[Row], manifest: dict[str, Any], report: Report) -> None:
    """The manifest's description of the items (quotas, counts, cells, per-source items, histogram, length
    bounds, max_per_doc) against the items themselves."""
    recipe = _dict(manifest.get("recipe"))
    quotas = _dict(recipe.get("quotas"))
    cells = Counter((r.item["doc_type"], r.item["category"]) for r in rows)
    allow_short = manifest.get("allow_short") is True
    recorded_cells = _dict(manifest.get("cells"))
    for doc_type in DOC_TYPES:
        for cat in CATEGORIES:
            q = _dict(quotas.get(doc_type)).get(cat, 0)
            n = cells.get((doc_type, cat), 0)
            if not _is_count(q):
                report.add(
                    ERROR,
                    "manifest",
                    MANIFEST,
                    None,
                    f"recipe.quotas.{doc_type}.{cat}",
                    f"not a count: {_short(repr(q))}",
                )
            elif n > q or (n < q and not allow_short):
                report.add(ERROR, "quota", MANIFEST, None, "recipe.quotas", f"{doc_type}/{cat}: {n} items, quota {q}")
            cell = recorded_cells.get(f"{doc_type}/{cat}")
            if (n or q) and _dict(cell).get("built") != n:
                _mismatch(report, f"cells.{doc_type}/{cat}.built", _dict(cell).get("built"), n)
    counts = manifest.get("counts")
    if not isinstance(counts, dict):
        return  # reported with the manifest's fields
    actual: dict[str, Any] = {
        "total": len(rows),
        "documents": len({r.item["doc_id"] for r in rows}),
        **{k: Counter(r.item[f] for r in rows) for k, f in COUNT_TALLIES.items()},
    }
    for key, want in actual.items():
        got = counts.get(key)
        if key in COUNT_TALLIES:
            # A value with no items may be listed as 0 or left out.
            ok = isinstance(got, dict) and all(map(_is_count, got.values()))
            ok = ok and {k: v for k, v in got.items() if v} == dict(want)
            want = dict(sorted(want.items()))
        else:
            ok = _is_count(got) and got == want
        if not ok:
            _mismatch(report, f"counts.{key}", got, want)
    clusters = counts.get("document_clusters")  # near-duplicate documents joined: at most the documents
    if not _is_count(clusters) or clusters > actual["documents"] or (clusters == 0) != (not rows):
        _mismatch(report, "counts.document_clusters", clusters, f"{actual['documents']} documents")
    by_source = actual["by_source"]
    for name, src in sorted(_dict(manifest.get("sources")).items()):
        if _dict(src).get("items") != by_source.get(name, 0):
            _mismatch(report, f"sources.{name}.items", _dict(src).get("items"), by_source.get(name, 0))
    for name in sorted(set(by_source) - set(_dict(manifest.get("sources")))):
        report.add(
            ERROR,
            "counts",
            MANIFEST,
            None,
            "sources",
            f"items from {_short(name)!r}, a source the manifest does not list",
        )
    _check_histogram(rows, manifest.get("n_tokens_histogram"), report)
    _check_bounds(rows, recipe, report)


def _check_histogram(rows: list[Row], hist: Any, report: Report) -> None:
    if not isinstance(hist, list):
        return  # reported with the manifest's fields
    lengths = [r.item["n_tokens"] for r in rows]
    covered = 0
    for i, b in enumerate(hist):
        lo, hi, n = _dict(b).get("min"), _dict(b).get("max"), _dict(b).get("count")
        if not _is_count(lo) or not (hi is None or _is_count(hi)) or not _is_count(n):
            report.add(ERROR, "manifest", MANIFEST, None, f"n_tokens_histogram[{i}]", "not a {min, max, count} bucket")
            return
        got = sum(1 for v in lengths if v >= lo and (hi is None or v < hi))
        covered += got
        if got != n:
            _mismatch(report, f"n_tokens_histogram[{i}].count", n, got)
    if covered != len(lengths):
        _mismatch(report, "n_tokens_histogram", f"buckets covering {covered} items", len(lengths))


def _check_bounds(rows: list[Row], recipe: dict[str, Any], report: Report) -> None:
    lo, hi, per_doc = recipe.get("min_tokens"), recipe.get("max_tokens"), recipe.get("max_per_doc")
    if _is_count(lo) and _is_count(hi):
        for r in rows:
            if not lo <= r.item["n_tokens"] <= hi:
                report.add(
                    ERROR,
                    "bounds",
                    r.file,
                    r.line,
                    "n_tokens",
                    f"{r.item['n_tokens']} outside the recipe's [{lo}, {hi}]",
                )
    else:
        report.add(ERROR, "manifest", MANIFEST, None, "recipe.min_tokens", "no token bounds (min_tokens, max_tokens)")
    if not _is_count(per_doc):
        report.add(ERROR, "manifest", MANIFEST, None, "recipe.max_per_doc", f"not a count: {_short(repr(per_doc))}")
        return
    by_doc: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_doc[r.item["doc_id"]].append(r)
    for doc_id, rs in sorted(by_doc.items()):
        if len(rs) > per_doc:
            report.add(
                ERROR,
                "max-per-doc",
                rs[per_doc].file,
                rs[per_doc].line,
                "doc_id",
                f"{len(rs)} items on {_short(doc_id)!r}, recipe max_per_doc {per_doc}",
            )


# --------------------------------------------------------------------------- the build directory


def plain_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a file of the build directory (the manifest may only name its own files)."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if _SURROGATE.search(name) or "\0" in name:
        return "not a file name (a lone surrogate or NUL)"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "a path, not a file name in the build directory: never read"
    if len(name.encode()) > 255:
        return "longer than 255 bytes: no file system holds such a name"
    return None


def read_member(build: Path, name: str, report: Report) -> bytes | None:
    """The bytes of the regular file `name` in the build directory, or None with the problem reported.
    Symbolic links are never followed, and nothing but a regular file is opened."""
    p = build / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        report.add(ERROR, "missing-file", name, None, None, "missing")
        return None
    except OSError as e:
        report.add(ERROR, "path", name, None, None, f"cannot be read ({e.strerror})")
        return None
    if stat.S_ISLNK(st.st_mode):
        report.add(ERROR, "symlink", name, None, None, "a symbolic link: not followed (a build holds regular files)")
        return None
    if not stat.S_ISREG(st.st_mode):
        report.add(ERROR, "not-a-file", name, None, None, "not a regular file")
        return None
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the lstat
                report.add(ERROR, "not-a-file", name, None, None, "not a regular file")
                return None
            return f.read()
    except OSError as e:
        report.add(ERROR, "path", name, None, None, f"cannot be read ({e.strerror})")
        return None


def _manifest(build: Path, report: Report) -> dict[str, Any] | None:
    """The manifest as a dict with every top-level field of the right type (damaged ones reported and
    replaced by empty values), or None when there is none to read."""
    data = read_member(build, MANIFEST, report)
    if data is None:
        report.add(ERROR, "manifest", MANIFEST, None, None, "no readable manifest")
        return None
    try:
        m = parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        report.add(ERROR, "manifest", MANIFEST, None, None, f"unreadable (invalid UTF-8 at byte {e.start})")
        return None
    except (ValueError, RecursionError) as e:
        report.add(ERROR, "manifest", MANIFEST, None, None, f"unreadable: {json_problem(e)}")
        return None
    if not isinstance(m, dict):
        report.add(ERROR, "manifest", MANIFEST, None, None, "not a JSON object")
        return None
    for path in surrogate_paths(m):
        report.add(
            ERROR, "surrogate", MANIFEST, None, path, "a lone surrogate (\\ud800-\\udfff): not encodable as UTF-8"
        )
    m = _without_surrogates(m)
    for key, typ in MANIFEST_FIELDS.items():
        if key not in m:
            report.add(ERROR, "manifest", MANIFEST, None, key, "field missing")
            m[key] = typ()
        elif not isinstance(m[key], typ) or (typ is int and isinstance(m[key], bool)):
            report.add(ERROR, "manifest", MANIFEST, None, key, f"expected {typ.__name__}, got {type(m[key]).__name__}")
            m[key] = typ()
    for key in sorted(set(m) - set(MANIFEST_FIELDS)):
        report.add(WARNING, "extra-field", MANIFEST, None, key, "field not in the manifest format")
    for key, want in (("format", FORMAT), ("n_tokens", N_TOKENS_DEFINITION)):  # what this validator checks
        if m[key] != want:
            report.add(ERROR, "manifest", MANIFEST, None, key, f"{_short(m[key])!r}, expected {_short(want)!r}")
    counts = m["counts"]
    for key in (*COUNT_TOTALS, *COUNT_TALLIES):
        if key not in counts:
            report.add(ERROR, "manifest", MANIFEST, None, f"counts.{key}", "field missing")
    spec = _dict(m["tokenizer"]).get("spec")
    if not isinstance(spec, str) or not spec.strip():
        report.add(ERROR, "manifest", MANIFEST, None, "tokenizer.spec", f"no tokenizer named ({_short(repr(spec))})")
    return m


def _without_surrogates(x: Any) -> Any:
    """`x` with every string made printable: a lone surrogate (already reported) then matches nothing it
    should, and reaches no file system call or tokenizer."""
    if isinstance(x, str):
        return printable(x)
    if isinstance(x, dict):
        return {printable(k): _without_surrogates(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_without_surrogates(v) for v in x]
    return x


def _may_be_absent(name: str, manifest: dict[str, Any]) -> bool:
    """The files of a split the manifest records as empty may be left out of a build."""
    split = name.split(".")[0]
    by_split = _dict(manifest["counts"].get("by_split"))
    return split in SPLITS and name != "README.md" and "by_split" in manifest["counts"] and not by_split.get(split)


def check_files(build: Path, manifest: dict[str, Any], report: Report) -> dict[str, bytes]:
    """Every file of the directory listed with a matching sha256 and size, every listed file present:
    the verified bytes by name (files that fail are reported; their bytes are still returned where they
    could be read, for the line-level checks)."""
    files = manifest["files"]
    if not files:
        report.add(ERROR, "manifest", MANIFEST, None, "files", "lists no files")
    try:
        present = sorted(e.name for e in os.scandir(build))
    except OSError as e:
        raise LlqaError(f"cannot list {build} ({e.strerror})", "check the directory's permissions") from None
    for name in present:
        if name != MANIFEST and name not in files:
            report.add(
                ERROR, "unlisted-file", name, None, None, "in the build directory but not in the manifest's files"
            )
    for name in BUILD_FILES:
        if name not in files and name not in present and not _may_be_absent(name, manifest):
            report.add(ERROR, "missing-file", name, None, None, "missing (and not in the manifest's files)")
    out: dict[str, bytes] = {}
    for name, meta in sorted(files.items()):
        why = plain_name_problem(name)
        if why is not None:
            report.add(ERROR, "path", MANIFEST, None, f"files.{_short(name)}", why)
            continue
        data = read_member(build, name, report)
        if data is None:
            continue
        out[name] = data
        want, size = _dict(meta).get("sha256"), _dict(meta).get("bytes")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            report.add(ERROR, "checksum", name, None, None, f"sha256 {got[:12]}... != manifest {_short(str(want), 12)}")
        if size != len(data) or not _is_count(size):
            report.add(ERROR, "checksum", name, None, None, f"{len(data)} bytes != manifest {_short(repr(size))}")
    if MANIFEST in files:
        report.add(ERROR, "path", MANIFEST, None, f"files.{MANIFEST}", "the manifest cannot hold its own checksum")
    return out


def check_parquet(data: bytes, name: str, items: list[dict[str, Any]], report: Report) -> None:
    """The Parquet file holds exactly the rows of its jsonl, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # one thread: small files, and a thread pool costs more than it saves on a busy machine
        rows = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pylist()
    except Exception as e:  # pyarrow raises many types on damaged files; any of them means unreadable
        report.add(ERROR, "parquet", name, None, None, f"unreadable ({type(e).__name__}: {_short(str(e))})")
        return
    if len(rows) != len(items):
        report.add(ERROR, "parquet", name, None, None, f"{len(rows)} rows, its jsonl {len(items)}")
        return
    for i, (row, item) in enumerate(zip(rows, items, strict=True), 1):
        if row != item:
            keys = sorted(set(row) | set(item), key=str)
            fld = next((k for k in keys if k not in row or k not in item or row[k] != item[k]), None)
            report.add(ERROR, "parquet", name, i, fld, "this row differs from the same line of its jsonl")
            return


def _fill_order(cell: tuple[str, Any]) -> tuple[int, int, str]:
    """The order `llqa build` fills cells in (scarce categories first), which its dataset card lists them in;
    the manifest stores them sorted by name."""
    doc_type, _, cat = cell[0].partition("/")
    rank = lambda x, xs: xs.index(x) if x in xs else len(xs)  # noqa: E731
    return rank(cat, CATEGORIES), rank(doc_type, DOC_TYPES), cell[0]


def check_card(data: bytes, manifest: dict[str, Any], report: Report) -> None:
    """README.md is the dataset card `llqa build` writes from the manifest (its YAML header is what
    `datasets.load_dataset(dir)` reads to find the splits)."""
    try:
        want = dataset_card({**manifest, "cells": dict(sorted(manifest["cells"].items(), key=_fill_order))})
    except Exception as e:  # a damaged manifest (already reported) may lack anything the card reads
        report.add(
            ERROR, "readme", "README.md", None, None, f"cannot be rebuilt from the manifest ({type(e).__name__})"
        )
        return
    if data != want.encode("utf-8", "backslashreplace"):
        report.add(ERROR, "readme", "README.md", None, None, "not the dataset card of this manifest")


def _usable_template(t: Any) -> bool:
    """A framing template with {document} then {question} once each, {title} optional, and no other
    replacement field (no format spec, conversion, index or attribute: parsing must stay exact)."""
    if not isinstance(t, str):
        return False
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t) if f is not None]
    except ValueError:
        return False
    names = [f for f, _, _ in fields]
    if not (
        all(f in ("document", "question", "title") and not spec and conv is None for f, spec, conv in fields)
        and names.count("document") == 1
        and names.count("question") == 1
        and names.index("document") < names.index("question")
    ):
        return False
    try:  # literal braces ("{{document}}") can still defeat the split at {document}: parse must invert render
        f = framing.render(t, "T", "D", "Q")
        return framing.parse(t, "T", "Q", f.instruction) == (f.head_doc, "D")
    except (ValueError, KeyError, IndexError):
        return False


def _templates(manifest: dict[str, Any] | None, report: Report) -> dict[str, str] | None:
    fr = _dict(_dict(_dict(manifest).get("recipe")).get("framing"))
    if all(_usable_template(fr.get(d)) for d in DOC_TYPES):
        return {d: fr[d] for d in DOC_TYPES}
    if manifest is not None:
        report.add(ERROR, "manifest", MANIFEST, None, "recipe.framing", "no usable framing templates")
    return None


def _load_counter(spec: str, report: Report, user: bool):
    from longqa.tokens import load_counter

    try:
        return load_counter(spec)
    except Exception as e:  # a manifest's spec reaches the hub client and the tokenizers parser: any failure
        if user:  # the user's own --tokenizer: their mistake, one line
            raise e if isinstance(e, LlqaError) else LlqaError(f"--tokenizer {spec}: cannot load it ({e})") from None
        report.add(ERROR, "tokenizer", MANIFEST, None, "tokenizer.spec", f"cannot load it: {_short(str(e), 200)}")
        return None


# --------------------------------------------------------------------------- entry point


def _read_path(
    path: Path, report: Report
) -> tuple[dict[str, Any] | None, dict[str, bytes], list[tuple[str, str | None]]]:
    """(manifest, bytes by file name, [(jsonl name, split)]) of a build directory or a single .jsonl file."""
    if path.is_dir():
        manifest = _manifest(path, report)
        jsonl = [(f"{s}.jsonl", s) for s in SPLITS]
        if manifest is not None:
            return manifest, check_files(path, manifest, report), jsonl
        contents = {name: read_member(path, name, report) for name, _ in jsonl}
        return None, {k: v for k, v in contents.items() if v is not None}, jsonl
    if not path.is_file():
        raise LlqaError(f"{path} is not a regular file or directory", "pass a build directory or a .jsonl file")
    report.skipped.append("manifest checks (a single file)")
    try:
        return None, {path.name: path.read_bytes()}, [(path.name, None)]
    except OSError as e:
        raise LlqaError(f"cannot read {path} ({e.strerror})", "check the file's permissions") from None


def _report_empty(name: str, split: str | None, manifest: dict[str, Any] | None, report: Report) -> None:
    """A file without items: an error, unless the manifest records its split as empty (a warning then)."""
    by_split = _dict(manifest).get("counts", {}).get("by_split")
    if split is not None and isinstance(by_split, dict) and by_split.get(split, 0) == 0:
        report.add(WARNING, "empty", name, None, None, f"no items (the manifest records an empty {split} split)")
    else:
        report.add(ERROR, "empty", name, None, None, "no items")


def _recount(
    rows: list[Row], manifest: dict[str, Any] | None, report: Report, ctx, recount, tokenizer, counter
) -> None:
    spec = tokenizer or _dict(_dict(manifest).get("tokenizer")).get("spec")
    if not isinstance(spec, str) or not spec.strip():
        spec = None  # a manifest without one is already an error
    if recount and counter is None and spec is not None:
        counter = _load_counter(spec, report, user=bool(tokenizer))
    if not recount or counter is None:
        check_tokens(rows, None, ctx, report, False)
        why = "--no-recount" if not recount else "no tokenizer" if spec is None else "tokenizer not loadable"
        report.skipped.append(f"n_tokens recount ({why})")
        return
    want = _dict(_dict(manifest).get("tokenizer")).get("sha256")
    if want and want != counter.sha256:
        report.add(
            WARNING,
            "tokenizer",
            MANIFEST,
            None,
            "tokenizer.sha256",
            f"the local {counter.spec} tokenizer differs from the one the build used; counts may differ",
        )
    check_tokens(rows, counter, ctx, report, True)
    report.checked.append("n_tokens recount")


def validate(
    path: str | Path,
    ctx: int | None = None,
    recount: bool = True,
    tokenizer: str | None = None,
    recipe: str | None = None,
    counter=None,
) -> Report:
    """Check a build directory or one .jsonl file; `tokenizer`/`recipe` stand in for a missing manifest.
    `counter`: a loaded `TokenCounter` to recount with (else the manifest's or `tokenizer`'s is loaded)."""
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL in it
        raise LlqaError(
            f"{printable(str(path))}: not a usable path ({e})", "pass a build directory or a .jsonl file"
        ) from None
    if not exists:
        raise LlqaError(f"{path} does not exist", "pass a directory written by `llqa build` or a .jsonl file")
    report = Report(str(path))
    manifest, contents, jsonl = _read_path(path, report)
    rows: list[Row] = []
    for name, split in jsonl:
        if name not in contents:
            continue  # missing or unreadable: reported
        file_rows, clean = read_rows(contents[name], name, report)
        if clean and not file_rows:
            _report_empty(name, split, manifest, report)
        parquet = f"{split}.parquet"
        if manifest is not None and clean and parquet in contents:
            check_parquet(contents[parquet], parquet, [r.item for r in file_rows], report)
        rows += [r for r in file_rows if check_schema(r, report, split)]
    if manifest is not None and "README.md" in contents:
        check_card(contents["README.md"], manifest, report)
    report.items = len(rows)
    if path.is_dir() and not rows:
        report.add(ERROR, "empty", path.name, None, None, "the build holds no items")
    report.checked += ["schema", "text"] + (["parquet = jsonl"] if manifest is not None else [])
    templates = _templates(manifest, report)
    if templates is None and recipe is not None:
        from longqa.recipe import load_recipe

        templates = load_recipe(recipe).framing
    if templates is not None:
        check_framing(rows, templates, report)
        report.checked.append("framing")
    else:
        report.skipped.append("framing and extractive answers (no manifest; pass --recipe)")
    _recount(rows, manifest, report, ctx, recount, tokenizer, counter)
    check_duplicates(rows, report)
    check_documents(rows, report)
    check_answers(rows, report)
    report.checked += ["duplicates", "documents and split leakage", "answers"]
    if manifest is not None:
        check_counts(rows, manifest, report)
        report.checked += ["quotas, counts, bounds", "files and checksums"]
    return report
