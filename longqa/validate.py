"""`llqa validate PATH`: prove a LongQA build sound before anyone trains on it.

PATH is a build directory (train/test jsonl + manifest.json) or a single .jsonl file. Every problem is
reported with file, line and field; errors fail validation (exit 1), warnings do not. Bad input is
something to report, never a crash: invalid UTF-8, malformed JSON, wrong types and huge lines included.

Checks (code: severity):
- manifest: `manifest` missing/unreadable (error for a directory), `checksum` a file's sha256 or size
  differs from the manifest, or a listed file is missing (error).
- lines: `utf8` invalid UTF-8 (error), `json` not a JSON object (error).
- schema: `missing-field`, `type` wrong JSON type (error), `extra-field` (warning), `category`,
  `doc_type`, `split`, `answer_type` unknown value or a split field that disagrees with its file (error).
- text: `empty` empty or whitespace-only string (error), `control-char` (error), `mojibake` UTF-8 read as
  Latin-1/cp1252 or U+FFFD (warning).
- framing: `framing` instruction is not the manifest's framing around the item's question (error).
- tokens: `n_tokens` recounted with the manifest's tokenizer differs (error; skipped with
  --no-recount), `too-long` n_tokens above --ctx (error).
- duplicates: `duplicate-id`, `duplicate-question` (same document, same question) (error);
  `near-duplicate-question` (same document, same words) (warning); `doc-mismatch` one doc_id with two
  different texts (error); `near-duplicate-document` two doc_ids with near-identical text (warning);
  `split-leak` a document, or a near-duplicate of it, in both splits (error).
- answers: `answer-in-question` (error), `extractive-not-found` an extractive answer's span absent from
  the document (error).
- counts: `quota` a (doc_type, category) count above the recipe's quota, or below it when the build was
  not made with --allow-short (error); `counts` counts differ from the manifest's (error).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from longqa import dedup, framing
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
            self.problems.append(Problem(severity, code, file, line, fld, message))

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


def read_rows(path: Path, report: Report, split: str | None) -> list[Row]:
    """Items of one jsonl file that are JSON objects; every other line becomes a problem."""
    rows = []
    name = path.name
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.add(ERROR, "utf8", name, i, None, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                report.add(ERROR, "json", name, i, None, f"not valid JSON ({msg})")
                continue
            if not isinstance(obj, dict):
                report.add(ERROR, "json", name, i, None, f"a JSON {type(obj).__name__}, not an object")
                continue
            rows.append(Row(name, i, obj))
    return rows


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


def check_counts(rows: list[Row], manifest: dict[str, Any], report: Report) -> None:
    quotas = _dict(_dict(manifest.get("recipe")).get("quotas"))
    counts = Counter((r.item["doc_type"], r.item["category"]) for r in rows)
    allow_short = bool(manifest.get("allow_short"))
    for doc_type in DOC_TYPES:
        for cat in CATEGORIES:
            q = _dict(quotas.get(doc_type)).get(cat, 0)
            n = counts.get((doc_type, cat), 0)
            if not isinstance(q, int):
                report.add(
                    ERROR,
                    "manifest",
                    "manifest.json",
                    None,
                    f"recipe.quotas.{doc_type}.{cat}",
                    f"not a count: {_short(repr(q))}",
                )
            elif n > q or (n < q and not allow_short):
                report.add(
                    ERROR, "quota", "manifest.json", None, "recipe.quotas", f"{doc_type}/{cat}: {n} items, quota {q}"
                )
    recorded = _dict(manifest.get("counts")).get("by_category")
    actual = dict(sorted(Counter(r.item["category"] for r in rows).items()))
    if recorded is not None and recorded != actual:
        report.add(
            ERROR,
            "counts",
            "manifest.json",
            None,
            "counts.by_category",
            f"manifest says {recorded}, files hold {actual}",
        )


# --------------------------------------------------------------------------- entry point


def _manifest(path: Path, report: Report) -> dict[str, Any] | None:
    f = path / "manifest.json"
    if not f.is_file():
        report.add(ERROR, "manifest", "manifest.json", None, None, "missing")
        return None
    try:
        m = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        report.add(ERROR, "manifest", "manifest.json", None, None, f"unreadable ({type(e).__name__})")
        return None
    if not isinstance(m, dict):
        report.add(ERROR, "manifest", "manifest.json", None, None, "not a JSON object")
        return None
    files = m.get("files")
    if not isinstance(files, dict):
        report.add(ERROR, "manifest", "manifest.json", None, "files", "no file checksums")
    else:
        for name, meta in sorted(files.items()):
            p = path / str(name)
            if not p.is_file():
                report.add(ERROR, "checksum", str(name), None, None, "listed in the manifest but missing")
                continue
            want = meta.get("sha256") if isinstance(meta, dict) else None
            got = hashlib.sha256(p.read_bytes()).hexdigest()
            if got != want:
                report.add(
                    ERROR, "checksum", str(name), None, None, f"sha256 {got[:12]}... != manifest {str(want)[:12]}..."
                )
    return m


def _usable_template(t: Any) -> bool:
    if (
        not isinstance(t, str)
        or t.count("{document}") != 1
        or t.count("{question}") != 1
        or t.index("{question}") < t.index("{document}")
    ):
        return False
    try:
        t.format(document="", question="", title="")
    except (KeyError, IndexError, ValueError):
        return False
    return True


def _templates(manifest: dict[str, Any] | None, report: Report) -> dict[str, str] | None:
    fr = _dict(_dict(_dict(manifest).get("recipe")).get("framing"))
    if all(_usable_template(fr.get(d)) for d in DOC_TYPES):
        return {d: fr[d] for d in DOC_TYPES}
    if manifest is not None:
        report.add(ERROR, "manifest", "manifest.json", None, "recipe.framing", "no usable framing templates")
    return None


def validate(
    path: str | Path,
    ctx: int | None = None,
    recount: bool = True,
    tokenizer: str | None = None,
    recipe: str | None = None,
) -> Report:
    """Check a build directory or one .jsonl file; `tokenizer`/`recipe` stand in for a missing manifest."""
    path = Path(path)
    if not path.exists():
        raise LlqaError(f"{path} does not exist", "pass a directory written by `llqa build` or a .jsonl file")
    report = Report(str(path))
    if path.is_dir():
        manifest = _manifest(path, report)
        files = [(path / f"{s}.jsonl", s) for s in SPLITS]
        for f, _ in files:
            if not f.is_file():
                report.add(ERROR, "missing-file", f.name, None, None, "missing")
        files = [(f, s) for f, s in files if f.is_file()]
    else:
        manifest = None
        files = [(path, None)]
        report.skipped.append("manifest checks (a single file)")
    rows: list[Row] = []
    for f, s in files:
        for r in read_rows(f, report, s):
            if check_schema(r, report, s):
                rows.append(r)
    report.items = len(rows)
    templates = _templates(manifest, report)
    if templates is None and recipe is not None:
        from longqa.recipe import load_recipe

        templates = load_recipe(recipe).framing
    report.checked += ["schema", "text"]
    if templates is not None:
        check_framing(rows, templates, report)
        report.checked.append("framing")
    else:
        report.skipped.append("framing and extractive answers (no manifest; pass --recipe)")
    spec = tokenizer or _dict(_dict(manifest).get("tokenizer")).get("spec")
    counter = None
    if manifest is not None and not isinstance(spec, str):
        report.add(ERROR, "manifest", "manifest.json", None, "tokenizer.spec", "no tokenizer named")
        spec = None
    if recount and spec:
        from longqa.tokens import load_counter

        try:
            counter = load_counter(str(spec))
        except LlqaError as e:
            if tokenizer:  # the user's own --tokenizer: their mistake, one line
                raise
            report.add(ERROR, "tokenizer", "manifest.json", None, "tokenizer.spec", f"cannot load it: {e}")
    if counter is not None:
        want = _dict(_dict(manifest).get("tokenizer")).get("sha256")
        if want and want != counter.sha256:
            report.add(
                WARNING,
                "tokenizer",
                "manifest.json",
                None,
                "tokenizer.sha256",
                f"the local {spec} tokenizer differs from the one the build used; counts may differ",
            )
        check_tokens(rows, counter, ctx, report, True)
        report.checked.append("n_tokens recount")
    else:
        check_tokens(rows, None, ctx, report, False)
        why = "--no-recount" if not recount else "no tokenizer" if not spec else "tokenizer not loadable"
        report.skipped.append(f"n_tokens recount ({why})")
    check_duplicates(rows, report)
    check_documents(rows, report)
    check_answers(rows, report)
    report.checked += ["duplicates", "documents and split leakage", "answers"]
    if manifest is not None:
        check_counts(rows, manifest, report)
        report.checked += ["quotas and counts", "checksums"]
    return report
