"""`llqa build`: turn a recipe and its sources into a LongQA dataset directory.

Steps: load each source (local copy or hub) -> drop unusable pairs (hygiene.py: misaligned documents, questions
asked twice; answer given away by the question) -> categorise every human QA pair -> count tokens (each document
once, see tokens.py) -> keep items whose n_tokens lies in the recipe's bounds -> join near-duplicate
documents into clusters -> split clusters (not items) into train/test by a seeded hash -> fill each
(doc_type, category) quota by a seeded round-robin over sources, at most `max_per_doc` items per
cluster -> write everything into a temporary directory and move it into place in one rename.

Same sources + recipe + seed + tokenizer -> byte-identical files (stable sorts, seeded choices, no
timestamps, sorted JSON keys in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from llqa.io import plain_permissions, remove_dead_leftovers, writable_dir
from longqa import dedup, framing, hygiene
from longqa.categories import categorize
from longqa.recipe import Recipe
from longqa.schema import (
    CATEGORIES,
    DOC_TYPES,
    ITEM_FIELDS,
    QA,
    Document,
    SourceData,
    answer_in_question,
    content_id,
    norm_words,
)
from longqa.sources import check_available, load_source
from longqa.tokens import TokenCounter, load_counter, safe_split

# Documents longer than this many characters per token of max_tokens are skipped before tokenizing:
# English prose runs ~4.3 characters per SmolLM2 token, so such documents cannot fit the bound.
CHARS_PER_TOKEN_CAP = 6
HIST_EDGES = [0, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
N_TOKENS_DEFINITION = (
    "n_tokens = tokens(instruction) + tokens(output), each encoded alone with the "
    "manifest's tokenizer, no special tokens"
)
DATA_FILES = ("train.jsonl", "test.jsonl", "train.parquet", "test.parquet", "README.md")


@dataclass
class Candidate:
    qa: QA
    doc: Document
    category: str
    template: str  # the recipe's framing for the document's type
    rest: str  # middle + question + tail: the instruction after the document

    @property
    def head_doc(self) -> str:
        """Framing head + document, built on demand (documents are large; candidates many)."""
        return framing.head(self.template, self.doc.title) + self.doc.text

    @property
    def instruction(self) -> str:
        return self.head_doc + self.rest

    @property
    def splits_cleanly(self) -> bool:
        return safe_split(framing.head(self.template, self.doc.title) + self.doc.text[-1:], self.rest)

    n_tokens: int = 0  # rest + answer tokens until selected, then the item's n_tokens
    answer_tokens: int = 0
    cluster: str = ""


@dataclass
class BuildResult:
    out: Path
    counts: dict[str, Any]
    shortfalls: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str, int | None], Callable[[int], None]]  # (task name, total) -> advance(n)


def _no_progress(name: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


# --------------------------------------------------------------------------- candidates


def candidates(sources: list[SourceData], recipe: Recipe, stats: Counter) -> list[Candidate]:
    """Every usable QA pair as a framed candidate, in a stable order. Each document's pairs are first checked in
    the source's own order (hygiene.py): a document whose answers are misaligned with its questions loses
    them all; a question asked twice keeps its first answer."""
    docs: dict[str, Document] = {}
    for s in sources:
        stats.update(s.dropped)
        for doc_id in sorted(s.documents):
            if doc_id in docs:
                stats["doc_id_collision"] += 1
                continue
            docs[doc_id] = s.documents[doc_id]
    wanted = {(d, c) for d, c, _ in recipe.cells()}
    out = []
    for s in sources:
        for qa in sorted(usable_pairs(s.qas, stats), key=lambda q: (q.doc_id, q.question, q.answer)):
            doc = docs.get(qa.doc_id)
            if doc is None or doc.source != s.name:
                stats["no_document"] += 1
                continue
            if answer_in_question(qa.question, qa.answer):
                stats["answer_in_question"] += 1
                continue
            template = recipe.framing[doc.doc_type]
            if not doc.title and "{title}" in template:
                stats["no_title"] += 1
                continue
            category = categorize(qa.question, doc.doc_type, qa.category)
            if (doc.doc_type, category) not in wanted:
                # writing tasks are a stated drop, not a quota shortfall (see longqa/categories.py)
                stats["generation_task" if category == "generation" else "no_quota_for_cell"] += 1
                continue
            out.append(Candidate(qa, doc, category, template, framing.rest(template, doc.title, qa.question)))
    return out


def usable_pairs(qas: list[QA], stats: Counter) -> list[QA]:
    """The pairs that survive the per-document checks of hygiene.py, in source order."""
    by_doc: dict[str, list[QA]] = defaultdict(list)
    for qa in qas:
        by_doc[qa.doc_id].append(qa)
    out = []
    for pairs in by_doc.values():
        if hygiene.misaligned([q.question for q in pairs], [q.answer for q in pairs]):
            stats["misaligned_document"] += len(pairs)
            continue
        kept, dropped = hygiene.first_answers([(q.question, q.answer) for q in pairs], norm_words)
        stats.update(dropped)
        out += [pairs[i] for i in kept]
    return out


def count_short(cands: list[Candidate], counter: TokenCounter, progress: Progress) -> tuple[list[int], list[int]]:
    """Token counts of every candidate's instruction rest (middle + question + tail) and answer."""
    advance = progress("tokenizing questions and answers", 2 * len(cands))
    old_batch, counter.batch = counter.batch, 1024
    try:
        counts = counter.count([c.rest for c in cands] + [c.qa.answer for c in cands], advance)
    finally:
        counter.batch = old_batch
    return counts[: len(cands)], counts[len(cands) :]


# --------------------------------------------------------------------------- split and selection


def _unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) from (seed, key), the same on every machine and run."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16) / 16**15


def assign_splits(cluster_sizes: dict[str, int], test_fraction: float, seed: int) -> dict[str, str]:
    """cluster -> split. Whole clusters (near-duplicate documents) go to test in a seeded hash order for as
    long as that brings the test share of items closer to `test_fraction`; with test_fraction > 0 and two
    or more clusters, at least one cluster is test and at least one is train."""
    clusters = sorted(cluster_sizes, key=lambda c: (_unit(seed, c), c))
    split = dict.fromkeys(clusters, "train")
    target = test_fraction * sum(cluster_sizes.values())
    n_test = 0
    for c in clusters[:-1]:  # the last one stays train: never an empty train split
        size = cluster_sizes[c]
        if abs(n_test + size - target) < abs(n_test - target):
            split[c] = "test"
            n_test += size
    if n_test == 0 and test_fraction > 0 and len(clusters) > 1:  # every cluster overshoots: the closest
        split[min(clusters[:-1], key=lambda c: abs(cluster_sizes[c] - target))] = "test"
    return split


class Selector:
    """Fills the quotas lazily: candidates are visited in a seeded order that does not depend on any token
    count, and a document is tokenized (with its framing head, once) and fingerprinted only when one of
    its questions is reached. A 3,000-item build thus never tokenizes the sources' whole corpora."""

    def __init__(self, recipe: Recipe, counter: TokenCounter, progress: Progress, stats: Counter):
        self.recipe, self.counter, self.stats = recipe, counter, stats
        self.head_tokens: dict[str, int] = {}  # doc_id -> tokens(head + document)
        self.whole_tokens: dict[int, int] = {}  # id(candidate) -> tokens(instruction), when not by parts
        self.index = dedup.NearDuplicateIndex()
        self.parent: dict[str, str] = {}  # union-find over doc ids: near-duplicate documents share a cluster
        self.taken: Counter = Counter()  # cluster root -> items chosen
        self.left_out: set[str] = set()  # documents that would merge clusters past max_per_doc (see `cluster`)
        self.advance = progress("tokenizing documents", None)

    def cluster(self, doc: Document) -> str | None:
        """The root of the document's near-duplicate cluster, or None for a document left out: one that would
        join clusters holding more than max_per_doc items between them. Clusters are found as documents are
        reached, so two partly filled clusters can meet only through a document near-duplicating both; leaving
        that document out (unindexed, none of its items taken) keeps every cluster within max_per_doc."""
        if doc.doc_id in self.left_out:
            return None
        if doc.doc_id not in self.parent:
            fp = dedup.fingerprint(doc.text)
            roots = {self._find(other) for other, _ in self.index.query(fp)}
            if len(roots) > 1 and sum(self.taken[r] for r in roots) > self.recipe.max_per_doc:
                self.left_out.add(doc.doc_id)
                self.stats["documents_bridging_full_clusters"] += 1
                return None
            self.index.insert(doc.doc_id, fp)
            self.parent[doc.doc_id] = doc.doc_id
            for root in roots:
                self._union(doc.doc_id, root)
        return self._find(doc.doc_id)

    def _find(self, k: str) -> str:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            keep, drop = min(ra, rb), max(ra, rb)
            self.parent[drop] = keep
            self.taken[keep] += self.taken.pop(drop, 0)

    def _exact_by_parts(self, c: Candidate) -> bool:
        return self.counter.splittable and c.splits_cleanly

    def _count(self, upcoming: list[Candidate]) -> None:
        """Count the heads (head + document) of the next uncounted documents in one batch; batching
        changes no count. Candidates whose instruction cannot be counted by parts are counted whole."""
        heads: dict[str, Candidate] = {}
        wholes: dict[int, Candidate] = {}
        for c in upcoming:
            if self._exact_by_parts(c):
                if c.doc.doc_id not in self.head_tokens:
                    heads.setdefault(c.doc.doc_id, c)
            elif id(c) not in self.whole_tokens:
                wholes.setdefault(id(c), c)
        self.head_tokens.update(zip(heads, self.counter.count([c.head_doc for c in heads.values()]), strict=True))
        self.whole_tokens.update(zip(wholes, self.counter.count([c.instruction for c in wholes.values()]), strict=True))
        self.advance(len(heads) + len(wholes))

    def n_tokens(self, c: Candidate, upcoming: list[Candidate]) -> int:
        if self._exact_by_parts(c):
            if c.doc.doc_id not in self.head_tokens:
                self._count([c] + upcoming)
            return self.head_tokens[c.doc.doc_id] + c.n_tokens  # c.n_tokens holds rest + answer here
        if id(c) not in self.whole_tokens:
            self._count([c] + upcoming)
        return self.whole_tokens[id(c)] + c.answer_tokens

    def take(self, c: Candidate, upcoming: list[Candidate]) -> bool:
        n = self.n_tokens(c, upcoming)
        if n < self.recipe.min_tokens:
            self.stats["below_min_tokens"] += 1
            return False
        if n > self.recipe.max_tokens:
            self.stats["above_max_tokens"] += 1
            return False
        root = self.cluster(c.doc)
        if root is None:
            return False
        if self.taken[root] >= self.recipe.max_per_doc:
            self.stats["max_per_doc"] += 1
            return False
        self.taken[root] += 1
        c.n_tokens = n
        return True


def select(
    cands: list[Candidate], recipe: Recipe, selector: Selector, lookahead: int = 16
) -> tuple[list[Candidate], dict[str, dict[str, Any]]]:
    """Fill each cell's quota by a seeded round-robin over its sources (cells scarce-first: summary,
    relation, character, detail); each candidate is checked against the token bounds and its cluster's
    max_per_doc when reached."""
    rng = random.Random(recipe.seed)
    chosen: list[Candidate] = []
    cells: dict[str, dict[str, Any]] = {}
    by_cell: dict[tuple[str, str], dict[str, list[Candidate]]] = defaultdict(lambda: defaultdict(list))
    for c in cands:
        by_cell[(c.doc.doc_type, c.category)][c.qa.source].append(c)
    order = sorted(recipe.cells(), key=lambda t: (CATEGORIES.index(t[1]), DOC_TYPES.index(t[0])))
    for doc_type, category, quota in order:
        sources = sorted(by_cell[(doc_type, category)])
        queues = []
        for source in sources:
            pool = by_cell[(doc_type, category)][source]
            rng.shuffle(pool)
            queues.append(pool)
        pos = [0] * len(queues)
        taken = 0
        while taken < quota and any(p < len(q) for p, q in zip(pos, queues, strict=True)):
            for i, q in enumerate(queues):
                if taken >= quota or pos[i] >= len(q):
                    continue
                c = q[pos[i]]
                pos[i] += 1
                upcoming = [x for j, qq in enumerate(queues) for x in qq[pos[j] : pos[j] + lookahead]]
                if selector.take(c, upcoming):
                    chosen.append(c)
                    taken += 1
        cells[f"{doc_type}/{category}"] = {
            "quota": quota,
            "built": taken,
            "candidates": sum(len(q) for q in queues),
            "sources": sources,
        }
    return chosen, cells


# --------------------------------------------------------------------------- items and files


def item_id(c: Candidate) -> str:
    return f"{c.qa.source}-{content_id(c.doc.doc_id, c.qa.question, c.qa.answer, n=12)}"


def make_item(c: Candidate, split: str) -> dict[str, Any]:
    item = {
        "id": item_id(c),
        "instruction": c.instruction,
        "output": c.qa.answer,
        "category": c.category,
        "doc_type": c.doc.doc_type,
        "source": c.qa.source,
        "doc_id": c.doc.doc_id,
        "title": c.doc.title or hygiene.UNTITLED,
        "question": c.qa.question,
        "answer_type": c.qa.answer_type,
        "n_tokens": c.n_tokens,
        "split": split,
    }
    assert list(item) == list(ITEM_FIELDS)
    return item


def histogram(values: list[int]) -> list[dict[str, int | None]]:
    edges = HIST_EDGES + [None]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        n = sum(1 for v in values if v >= lo and (hi is None or v < hi))
        out.append({"min": lo, "max": hi, "count": n})
    return out


# Line separators that JSON leaves raw but str.splitlines() and some readers split on: written escaped.
_LINE_BREAKERS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(item: dict[str, Any]) -> str:
    """One JSON object on one line, UTF-8 text; only \\n ends it, even for str.splitlines()."""
    line = json.dumps(item, ensure_ascii=False)
    for ch, esc in _LINE_BREAKERS.items():
        if ch in line:
            line = line.replace(ch, esc)
    return line + "\n"


def jsonl_bytes(items: list[dict[str, Any]]) -> bytes:
    return "".join(json_line(it) for it in items).encode()


def write_parquet(path: Path, items: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {str: pa.string(), int: pa.int64()}
    schema = pa.schema([(k, types[t]) for k, t in ITEM_FIELDS.items()])
    table = pa.Table.from_pylist(items, schema=schema)
    pq.write_table(table, path, compression="zstd")


def _card_splits(counts: dict[str, Any]) -> str:
    """The card's data_files: only splits that hold items. `datasets` refuses a listed split whose file has
    no rows ("Instruction 'test' corresponds to no data"), so an empty test split (test_fraction = 0, or
    one document) is left out of the card; its empty file stays, listed in the manifest like the others."""
    splits = [s for s in ("train", "test") if counts["by_split"].get(s, 0) > 0] or ["train"]
    return "\n".join(f"  - split: {s}\n    path: {s}.jsonl" for s in splits)


def dataset_card(manifest: dict[str, Any]) -> str:
    counts = manifest["counts"]
    rows = "\n".join(f"| {cell} | {v['quota']} | {v['built']} |" for cell, v in manifest["cells"].items())
    sources = "\n".join(
        f"- `{n}`: {s['origin']} (revision `{s['revision']}`), {s['items']} items"
        for n, s in manifest["sources"].items()
    )
    return f"""---
pretty_name: LongQA ({manifest["recipe"]["name"]})
task_categories:
- question-answering
language:
- en
configs:
- config_name: default
  data_files:
{_card_splits(counts)}
---

# LongQA — {manifest["recipe"]["name"]}

{manifest["recipe"]["description"]}

Built by `llqa build` (llqa {manifest["llqa_version"]}) with seed {manifest["seed"]}: {counts["total"]} items,
{counts["by_split"].get("train", 0)} train / {counts["by_split"].get("test", 0)} test, split by document.
Every question and answer was written by people (the sources below); llqa only frames the document and
the question as LongQA does (`instruction`) and keeps the human answer (`output`).

`{N_TOKENS_DEFINITION}` (tokenizer `{manifest["tokenizer"]["spec"]}`).

| cell (doc_type/category) | quota | built |
|---|---|---|
{rows}

Sources (check each one's license before redistributing):
{sources}

Fields: {", ".join(f"`{k}`" for k in ITEM_FIELDS)}. `manifest.json` holds the recipe, source revisions,
counts, the token-length histogram and the sha256 of every file; `llqa validate` checks all of it.
"""


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished build into place: the old directory is renamed away first, then dropped."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def check_out(out: Path, overwrite: bool) -> None:
    """A non-empty --out is replaced only with `overwrite`, and only when it is an llqa build (notes and reports
    the user put beside the items go with it, which is why it takes the flag); anything else is refused."""
    writable_dir(out, "--out", create=False)
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "manifest.json").is_file():
        raise LlqaError(f"--out {out} exists and is not an llqa build", "choose a new or empty directory")
    if not overwrite:
        raise LlqaError(
            f"--out {out} already holds a build", "pass --overwrite to replace it (everything in it), or another --out"
        )


# --------------------------------------------------------------------------- entry point


def build(
    recipe: Recipe,
    out: Path,
    source_dir: Path | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    allow_short: bool = False,
    progress: Progress = _no_progress,
    overwrite: bool = False,
) -> BuildResult:
    out = Path(out)
    check_out(out, overwrite)
    if seed is not None:
        recipe.seed = seed
    if tokenizer is not None:
        recipe.tokenizer = tokenizer
    names = sorted(recipe.sources)
    check_available(names, source_dir)
    counter = load_counter(recipe.tokenizer)
    max_chars = recipe.max_tokens * CHARS_PER_TOKEN_CAP
    loaded = []
    advance = progress("loading sources", len(names))
    for name in names:
        options = {**recipe.sources[name], "max_chars": max_chars, "framing": recipe.framing}
        loaded.append(load_source(name, options, source_dir))
        advance(1)
    stats: Counter = Counter()
    cands = candidates(loaded, recipe, stats)
    rest, answers = count_short(cands, counter, progress)
    for c, r, n in zip(cands, rest, answers, strict=True):
        c.n_tokens, c.answer_tokens = r + n, n
    selector = Selector(recipe, counter, progress, stats)
    chosen, cells = select(cands, recipe, selector)
    for c in chosen:
        c.cluster = selector._find(c.doc.doc_id)
    split_of = assign_splits(Counter(c.cluster for c in chosen), recipe.test_fraction, recipe.seed)
    shortfalls = [
        f"{cell} {v['built']}/{v['quota']} (candidates {v['candidates']} from {', '.join(v['sources']) or 'no source'})"
        for cell, v in cells.items()
        if v["built"] < v["quota"]
    ]
    if shortfalls and not allow_short:
        raise LlqaError(
            f"the sources cannot fill {len(shortfalls)} quota cell(s): " + "; ".join(shortfalls),
            "add sources or local copies, lower the quotas in the recipe, or pass --allow-short",
        )
    items = sorted((make_item(c, split_of[c.cluster]) for c in chosen), key=lambda it: it["id"])
    by_split = {s: [it for it in items if it["split"] == s] for s in ("train", "test")}
    manifest = _manifest(recipe, loaded, counter, items, cells, stats, allow_short, shortfalls)
    manifest["counts"]["document_clusters"] = len({c.cluster for c in chosen})  # near-duplicates joined
    writable_dir(out.parent, "--out")  # the temporary directory must be on out's filesystem
    for leftover in (f".{out.name}.tmp-", f".{out.name}.old-.{out.name}.tmp-"):  # of a killed build, by its PID
        remove_dead_leftovers(out.parent, leftover)
    tmp = plain_permissions(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        for s, rows in by_split.items():
            (tmp / f"{s}.jsonl").write_bytes(jsonl_bytes(rows))
            write_parquet(tmp / f"{s}.parquet", rows)
        (tmp / "README.md").write_text(dataset_card(manifest), encoding="utf-8")
        manifest["files"] = {
            name: {
                "sha256": hashlib.sha256((tmp / name).read_bytes()).hexdigest(),
                "bytes": (tmp / name).stat().st_size,
            }
            for name in DATA_FILES
        }
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out, manifest["counts"], shortfalls, manifest)


def _manifest(
    recipe: Recipe,
    loaded: list[SourceData],
    counter: TokenCounter,
    items: list[dict[str, Any]],
    cells: dict[str, Any],
    stats: Counter,
    allow_short: bool,
    shortfalls: list[str],
) -> dict[str, Any]:
    from llqa import __version__

    def by(key: str) -> dict[str, int]:
        return dict(sorted(Counter(it[key] for it in items).items()))

    per_source = Counter(it["source"] for it in items)
    return {
        "format": "llqa-longqa/1",
        "llqa_version": __version__,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "allow_short": allow_short,
        "shortfalls": shortfalls,
        "tokenizer": {"spec": counter.spec, "note": counter.note, "sha256": counter.sha256},
        "n_tokens": N_TOKENS_DEFINITION,
        "sources": {
            s.name: {
                "origin": s.origin,
                "revision": s.revision,
                "documents": len(s.documents),
                "qas": len(s.qas),
                "items": per_source.get(s.name, 0),
                "notes": s.notes[:50],
                "notes_total": len(s.notes),
            }
            for s in loaded
        },
        "cells": cells,
        "counts": {
            "total": len(items),
            "by_split": by("split"),
            "by_category": by("category"),
            "by_doc_type": by("doc_type"),
            "by_source": by("source"),
            "documents": len({it["doc_id"] for it in items}),
        },
        "dropped": dict(sorted(stats.items())),
        "n_tokens_histogram": histogram([it["n_tokens"] for it in items]),
    }
