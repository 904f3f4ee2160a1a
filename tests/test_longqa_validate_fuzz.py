"""Fuzzing `llqa validate` on a real small build (L-Eval papers and stories from ../shared/data).

1,180 examples per run, about 1,000 of them corruptions that must fail, in six classes: byte edits of
the data files, item edits with the jsonl's checksum recomputed, forged items (jsonl, Parquet and
checksums all rewritten to agree), manifest edits, encodings, and file-system oddities. Every example
asserts that validate returns a report (only `LlqaError` may escape, and then only for a corruption that
must fail) that the CLI can write, and that the verdict is exactly the oracle's: a corruption that
changes the items or breaks a promise of the manifest fails; one that changes nothing observable (the
same JSON re-serialised, CRLF line ends, a field validate cannot verify, such as a renamed item id in a
forged build) passes.

The costly parts run once per module: the build, the tokenizer (token counts are memoised by text, so a
recount after one edit encodes only the edited texts) and document fingerprints and near-duplicate pairs
(memoised by their inputs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llqa.errors import LlqaError
from longqa import dedup
from longqa.build import build, json_line, write_parquet
from longqa.recipe import load_recipe
from longqa.schema import CATEGORIES, ITEM_FIELDS, SPLITS
from longqa.tokens import load_counter
from longqa.validate import BUILD_FILES, MANIFEST, validate

FRAMING = "[framing]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in load_recipe("longqa-3k").framing.items())
RECIPE = (
    """
name = "fuzz"
description = "L-Eval papers and stories (validate fuzzing)."
min_tokens = 2048
max_tokens = 8192
max_per_doc = 2
test_fraction = 0.3
[quotas.paper]
detail = 4
[quotas.novel]
detail = 4
[sources.leval]
tasks = ["scientific_qa", "quality"]
"""
    + FRAMING
)


def fuzz(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


class MemoCounter:
    """A TokenCounter that encodes each distinct text once per session (validate's recount is exact either
    way; this only skips re-encoding the texts a corruption left alone)."""

    def __init__(self, real):
        self.real, self.cache = real, {}
        self.splittable, self.sha256, self.spec, self.batch = real.splittable, real.sha256, real.spec, real.batch

    def count(self, texts, progress=None):
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        self.cache.update(zip(new, self.real.count(new), strict=True))
        return [self.cache[t] for t in texts]


class Build:
    """The clean build's files (bytes by name) and items (by split), and one scratch copy to corrupt: each
    `copy()` resets it (clearing the scratch area in place is much cheaper than a new temporary directory)."""

    def __init__(self, path: Path, scratch: Path, counter: MemoCounter):
        self.files = {p.name: p.read_bytes() for p in sorted(path.iterdir())}
        self.items = {s: [json.loads(x) for x in self.files[f"{s}.jsonl"].splitlines()] for s in SPLITS}
        self.scratch, self.counter = scratch, counter

    def copy(self) -> Path:
        d = self.scratch / "build"
        d.mkdir(exist_ok=True)
        for where in (self.scratch, d):
            for e in os.scandir(where):
                if e.is_dir(follow_symlinks=False):
                    if e.path != str(d):
                        shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
        for name, data in self.files.items():
            (d / name).write_bytes(data)
        return d


@pytest.fixture(scope="module")
def clean(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "scratch").mkdir()
    (d / "fuzz.toml").write_text(RECIPE)
    build(load_recipe(d / "fuzz.toml"), d / "set", source_dir=shared_data, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dedup, "fingerprint", functools.lru_cache(maxsize=4096)(dedup.fingerprint))
        real_pairs = dedup.near_duplicate_pairs
        pairs = functools.lru_cache(maxsize=4096)(lambda prints: real_pairs(dict(prints)))
        mp.setattr(dedup, "near_duplicate_pairs", lambda prints: pairs(tuple(prints.items())))
        yield Build(d / "set", d / "scratch", MemoCounter(load_counter("smollm2-135m")))


def verdict(b: Build, d: Path, must_fail: bool, what) -> None:
    """Validate `d` and compare with the oracle."""
    try:
        rep = validate(d, counter=b.counter)
    except LlqaError:  # a directory it cannot even list: acceptable only where the build is broken
        assert must_fail, what
        return
    json.dumps(rep.to_dict(), ensure_ascii=False).encode("utf-8")  # what --report writes
    assert all(p.file and p.code for p in rep.problems)
    errors = [(p.code, p.file, p.line, p.field, p.message) for p in rep.problems if p.severity == "error"]
    if must_fail:
        assert not rep.ok, ("passed", what)
    else:
        assert rep.ok, ("failed", what, errors[:5])


def rehash(d: Path, *names: str) -> None:
    """Recompute the manifest's sha256 and bytes for `names` (a forger's edit), keeping its format."""
    m = json.loads((d / MANIFEST).read_bytes())
    for name in names:
        data = (d / name).read_bytes()
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(d, m)


def write_manifest(d: Path, m) -> None:
    (d / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def canon(x) -> str:
    return json.dumps(x, sort_keys=True)


# --------------------------------------------------------------------------- 1. byte edits, no rehash


@fuzz(220)
@given(data=st.data())
def test_byte_edits_of_listed_files(clean, data):
    name = data.draw(st.sampled_from(BUILD_FILES))
    old = clean.files[name]
    op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "append"]))
    i = data.draw(st.integers(0, len(old) - 1))
    if op == "set":  # sometimes the same byte: nothing changes, and it must pass
        new = old[:i] + bytes([data.draw(st.sampled_from([old[i], data.draw(st.integers(0, 255))]))]) + old[i + 1 :]
    elif op == "insert":
        new = old[:i] + data.draw(st.binary(min_size=1, max_size=8)) + old[i:]
    elif op == "delete":
        new = old[:i] + old[i + data.draw(st.integers(1, 64)) :]
    elif op == "truncate":
        new = old[:i]
    else:
        new = old + data.draw(st.binary(min_size=1, max_size=8))
    d = clean.copy()
    (d / name).write_bytes(new)
    verdict(clean, d, new != old, (name, op, i))


# --------------------------------------------------------------------------- 2. item edits, jsonl rehashed

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def serialiser(data):
    """A way to write one item as a line: the build's own, or an equivalent JSON text."""
    kind = data.draw(st.sampled_from(["build", "ascii", "spaced", "shuffled"]))
    if kind == "build":
        return json_line
    if kind == "ascii":
        return lambda it: json.dumps(it, ensure_ascii=True) + "\n"
    if kind == "spaced":
        return lambda it: json.dumps(it, ensure_ascii=False, separators=(" ,  ", " :\t")) + "\n"
    order = data.draw(st.permutations(list(ITEM_FIELDS)))
    return lambda it: json.dumps({k: it[k] for k in order if k in it} | it, ensure_ascii=False) + "\n"


def write_jsonl(d: Path, split: str, items: list, line=json_line, crlf: bool = False, blank: bool = False) -> None:
    text = "".join(line(it) for it in items)
    if crlf:
        text = text.replace("\n", "\r\n")
    if blank:
        text += "\n\n"
    (d / f"{split}.jsonl").write_bytes(text.encode("utf-8"))


@fuzz(240)
@given(data=st.data())
def test_item_edits_with_the_jsonl_rehashed(clean, data):
    """Parquet keeps the original rows, so any change to the items is caught; equivalent JSON is not."""
    split = data.draw(st.sampled_from(SPLITS))
    items = [dict(it) for it in clean.items[split]]
    k = data.draw(st.integers(0, len(items) - 1))
    key = data.draw(st.sampled_from(list(ITEM_FIELDS)))
    op = data.draw(st.sampled_from(["none", "same", "set", "delete", "extra", "drop", "duplicate", "swap"]))
    before = canon(items)
    if op == "same":
        items[k][key] = items[k][key]
    elif op == "set":
        items[k][key] = data.draw(st.one_of(ODD_VALUES, st.just(items[k][key])))
    elif op == "delete":
        del items[k][key]
    elif op == "extra":
        items[k][data.draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in ITEM_FIELDS))] = 1
    elif op == "drop":
        del items[k]
    elif op == "duplicate":
        items.insert(k, items[k])
    elif op == "swap":
        j = (k + data.draw(st.integers(1, len(items) - 1))) % len(items)
        items[k], items[j] = items[j], items[k]
    d = clean.copy()
    write_jsonl(d, split, items, serialiser(data), crlf=data.draw(st.booleans()), blank=data.draw(st.booleans()))
    rehash(d, f"{split}.jsonl")
    # n_tokens 5 and 5.0 are == in Python; canonical JSON tells them apart, as the type check does
    verdict(clean, d, canon(items) != before, (split, k, key, op))


# --------------------------------------------------------------------------- 3. forged items


def forge(b: Build, split: str, items: list) -> Path:
    """A copy whose jsonl, Parquet and checksums all agree on `items` (the edit a careful forger makes)."""
    d = b.copy()
    write_jsonl(d, split, items)
    write_parquet(d / f"{split}.parquet", items)
    rehash(d, f"{split}.jsonl", f"{split}.parquet")
    return d


def _word_gap(text: str, start: int, data) -> int:
    """A position just before a space in text[start:] (an inserted " word" there is its own pre-token)."""
    gaps = [i for i in range(start, len(text)) if text[i] == " "]
    return data.draw(st.sampled_from(gaps))


@fuzz(170)
@given(data=st.data())
def test_forged_items(clean, data):
    split = data.draw(st.sampled_from(SPLITS))
    items = [dict(it) for it in clean.items[split]]
    everything = clean.items["train"] + clean.items["test"]
    k = data.draw(st.integers(0, len(items) - 1))
    it = items[k]
    shared = sum(x["doc_id"] == it["doc_id"] for x in everything) > 1
    op = data.draw(
        st.sampled_from(
            [
                "n_tokens",
                "output",
                "question",
                "title",
                "document",
                "category",
                "doc_type",
                "source",
                "split",
                "id-taken",
                "id-new",
                "doc_id",
            ]
        )
    )
    must_fail = True
    if op == "n_tokens":
        it["n_tokens"] += data.draw(st.integers(-5000, 5000).filter(bool))
    elif op == "output":  # one more word: at least one more token
        it["output"] += " " + data.draw(st.sampled_from(["indeed", "zqxv", "Moreover, yes"]))
    elif op == "question":
        it["question"] += data.draw(st.sampled_from([" Why?", "!", " (explain)"]))
    elif op == "title":  # only novels frame the title; a paper's title shows only beside its other items
        it["title"] += data.draw(st.sampled_from([" II", ":", " (abridged)"]))
        must_fail = it["doc_type"] == "novel" or shared
    elif op == "document":
        head = it["instruction"].index("\n") + 1
        i = _word_gap(it["instruction"], head, data)
        it["instruction"] = it["instruction"][:i] + " zqxv" + it["instruction"][i:]
    elif op == "category":
        it["category"] = data.draw(st.sampled_from([c for c in CATEGORIES if c != it["category"]]))
    elif op == "doc_type":
        it["doc_type"] = "paper" if it["doc_type"] == "novel" else "novel"
    elif op == "source":
        it["source"] = data.draw(st.sampled_from(["qasper", "narrativeqa", "leval2"]))
    elif op == "split":
        it["split"] = "test" if split == "train" else "train"
    elif op == "id-taken":
        it["id"] = data.draw(st.sampled_from([x["id"] for x in everything if x["id"] != it["id"]]))
    elif op == "id-new":  # an id is a name: renaming one in a consistent forgery breaks no promise
        it["id"] = it["id"] + data.draw(st.sampled_from(["-x", "0", "-renamed"]))
        must_fail = False
    elif op == "doc_id":  # a new name for a document: visible only in the count of documents
        it["doc_id"] = it["doc_id"] + "-renamed"
        must_fail = shared
    verdict(clean, forge(clean, split, items), must_fail, (split, k, op))


# --------------------------------------------------------------------------- 4. manifest edits


def _items(b: Build) -> list[dict]:
    return b.items["train"] + b.items["test"]


def manifest_edit(b: Build, m: dict, data) -> tuple[bool, str]:
    """Apply one edit to manifest `m`; (must fail, description)."""
    items = _items(b)
    lengths = [it["n_tokens"] for it in items]
    per_doc = max(sum(x["doc_id"] == it["doc_id"] for x in items) for it in items)
    op = data.draw(
        st.sampled_from(
            [
                "delete-top",
                "retype-top",
                "extra-top",
                "count",
                "count-delete",
                "count-zero-entry",
                "clusters",
                "files-delete",
                "files-empty",
                "files-sha",
                "files-bytes",
                "files-bad-name",
                "spec",
                "framing",
                "quota",
                "bounds",
                "max_per_doc",
                "allow_short",
                "cells",
                "histogram",
                "source-items",
                "carded",
                "unverifiable",
            ]
        )
    )
    if op == "delete-top":
        key = data.draw(st.sampled_from(sorted(m)))
        del m[key]
        return True, f"{op} {key}"
    if op == "retype-top":
        key = data.draw(st.sampled_from(sorted(m)))
        value = data.draw(ODD_VALUES.filter(lambda v: type(v) is not type(m[key])))
        m[key] = value
        return True, f"{op} {key}={value!r}"
    if op == "extra-top":  # unknown fields are a warning
        m[data.draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in m))] = data.draw(ODD_VALUES)
        return False, op
    counts = m["counts"]
    if op == "count":
        key = data.draw(st.sampled_from(["total", "documents", "by_split", "by_category", "by_doc_type", "by_source"]))
        delta = data.draw(st.integers(-3, 3).filter(bool))
        if isinstance(counts[key], dict):
            sub = data.draw(st.sampled_from(sorted(counts[key])))
            counts[key][sub] += delta
            return True, f"counts.{key}.{sub} {delta:+d}"
        counts[key] += delta
        return True, f"counts.{key} {delta:+d}"
    if op == "count-delete":
        key = data.draw(st.sampled_from(sorted(counts)))
        del counts[key]
        return True, f"del counts.{key}"
    if op == "count-zero-entry":  # a value with no items may be listed as 0
        key = data.draw(st.sampled_from(["by_split", "by_category", "by_doc_type", "by_source"]))
        n = data.draw(st.sampled_from([0, 0, 1]))
        counts[key]["nothing-here"] = n
        return n != 0, f"counts.{key}.nothing-here = {n}"
    if op == "clusters":  # near-duplicates joined: anything from 1 to the number of documents is possible
        v = data.draw(st.integers(-1, counts["documents"] + 2))
        counts["document_clusters"] = v
        return not 1 <= v <= counts["documents"], f"document_clusters = {v}"
    files = m["files"]
    if op == "files-delete":
        name = data.draw(st.sampled_from(sorted(files)))
        del files[name]
        return True, f"del files.{name}"
    if op == "files-empty":
        m["files"] = {}
        return True, op
    if op == "files-sha":
        name = data.draw(st.sampled_from(sorted(files)))
        files[name]["sha256"] = data.draw(st.sampled_from(["", "0" * 64, files[name]["sha256"].upper(), None]))
        return True, f"files.{name}.sha256"
    if op == "files-bytes":
        name = data.draw(st.sampled_from(sorted(files)))
        files[name]["bytes"] = data.draw(
            st.one_of(st.integers(-1, 10**7), st.none(), st.just(str(files[name]["bytes"])))
        )
        return files[name]["bytes"] != len(b.files[name]), f"files.{name}.bytes"
    if op == "files-bad-name":  # never read; the real sha256 of what it names does not make it pass
        name = data.draw(
            st.sampled_from(
                ["../../etc/hostname", "/etc/hostname", "x" * 300, "a\0b", "sub/train.jsonl", ".", "..", "\ud800", ""]
            )
        )
        target = Path("/etc/hostname")
        sha = hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else "0" * 64
        files[name] = {"sha256": sha, "bytes": 1}
        return True, f"files[{name[:20]!r}]"
    if op == "spec":
        value = data.draw(st.sampled_from(["", " ", None, 5, "x" * 300, "no-such-model-zz", "a\0b", "../../etc"]))
        m["tokenizer"]["spec"] = value
        return True, f"tokenizer.spec = {value!r}"
    recipe = m["recipe"]
    if op == "framing":
        doc_type = data.draw(st.sampled_from(["paper", "novel"]))
        t = recipe["framing"][doc_type]
        i = data.draw(st.integers(0, len(t) - 1))
        recipe["framing"][doc_type] = t[:i] + data.draw(st.sampled_from(["x", "", "{title}", "{"])) + t[i + 1 :]
        return recipe["framing"][doc_type] != t, f"framing.{doc_type}[{i}]"
    if op == "quota":
        doc_type = data.draw(st.sampled_from(["paper", "novel"]))
        q = recipe["quotas"][doc_type]["detail"]
        recipe["quotas"][doc_type]["detail"] = v = data.draw(st.integers(0, q + 3))
        return v != q, f"quota {doc_type} {v}"
    if op == "bounds":
        lo, hi = data.draw(st.integers(0, 10_000)), data.draw(st.integers(0, 10_000))
        recipe["min_tokens"], recipe["max_tokens"] = lo, hi
        return not all(lo <= n <= hi for n in lengths), f"bounds [{lo}, {hi}]"
    if op == "max_per_doc":
        recipe["max_per_doc"] = v = data.draw(st.integers(0, per_doc + 2))
        return v < per_doc, f"max_per_doc {v} (largest {per_doc})"
    if op == "allow_short":  # all quotas are met: allowing shortfalls changes nothing
        m["allow_short"] = v = data.draw(st.sampled_from([True, False, "false", 0]))
        return not isinstance(v, bool), f"allow_short {v!r}"
    if op == "cells":
        cell = data.draw(st.sampled_from(sorted(m["cells"])))
        key = data.draw(st.sampled_from(["built", "quota", "candidates", "sources"]))
        m["cells"][cell][key] = data.draw(st.integers(0, 200).filter(lambda v: v != m["cells"][cell][key]))
        return key in ("built", "quota"), f"cells.{cell}.{key}"  # quota is printed in the dataset card
    if op == "histogram":
        i = data.draw(st.integers(0, len(m["n_tokens_histogram"]) - 1))
        m["n_tokens_histogram"][i]["count"] += data.draw(st.integers(-2, 2).filter(bool))
        return True, f"histogram[{i}]"
    if op == "source-items":
        m["sources"]["leval"]["items"] += data.draw(st.integers(-2, 2).filter(bool))
        return True, op
    if op == "carded":  # fields the dataset card (README.md) prints
        path = data.draw(
            st.sampled_from(
                [("llqa_version",), ("seed",), ("recipe", "name"), ("recipe", "description"), ("tokenizer", "spec")]
                + [("sources", "leval", "origin"), ("sources", "leval", "revision")]
            )
        )
        parent = functools.reduce(lambda x, k: x[k], path[:-1], m)
        parent[path[-1]] = parent[path[-1]] + (1 if isinstance(parent[path[-1]], int) else "x")
        return True, f"{'.'.join(path)}"
    # op == "unverifiable": provenance no file can confirm; the card does not print it either
    path = data.draw(
        st.sampled_from(
            [("tokenizer", "note"), ("tokenizer", "sha256"), ("sources", "leval", "documents"), ("dropped",)]
            + [("recipe", "test_fraction"), ("recipe", "seed"), ("shortfalls",), ("cells", "novel/detail", "sources")]
        )
    )
    parent = functools.reduce(lambda x, k: x[k], path[:-1], m)
    old = parent[path[-1]]
    parent[path[-1]] = {str: "changed", int: 7, float: 0.5, dict: {"x": 1}, list: ["x"]}[type(old)]
    return False, f"{'.'.join(path)} (unverifiable)"


@fuzz(260)
@given(data=st.data())
def test_manifest_edits(clean, data):
    m = json.loads(clean.files[MANIFEST])
    must_fail, what = manifest_edit(clean, m, data)
    d = clean.copy()
    indent = data.draw(st.sampled_from([None, 0, 2, 4]))  # re-serialising the same manifest changes nothing
    text = json.dumps(m, indent=indent, sort_keys=data.draw(st.booleans()), ensure_ascii=data.draw(st.booleans()))
    (d / MANIFEST).write_bytes(text.encode("utf-8", "surrogatepass"))
    verdict(clean, d, must_fail, what)


# --------------------------------------------------------------------------- 5. encodings


@fuzz(180)
@given(data=st.data())
def test_encodings(clean, data):
    split = data.draw(st.sampled_from(SPLITS))
    name = f"{split}.jsonl"
    lines = clean.files[name].splitlines(keepends=True)
    k = data.draw(st.integers(0, len(lines) - 1))
    op = data.draw(st.sampled_from(["bad-utf8", "bom", "crlf", "surrogate", "nul", "nul-escape"]))
    must_fail = op != "crlf"
    if op == "bad-utf8":
        i = data.draw(st.integers(0, len(lines[k]) - 1))
        bad = data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]))
        lines[k] = lines[k][:i] + bad + lines[k][i:]
    elif op == "bom":
        lines[k] = b"\xef\xbb\xbf" + lines[k]
    elif op == "crlf":  # the same JSON, Windows line ends: every reader takes it
        lines = [x.replace(b"\n", b"\r\n") for x in lines]
    elif op in ("surrogate", "nul-escape"):  # as JSON escapes in a string field (or a key)
        item = json.loads(lines[k])
        key = data.draw(st.sampled_from([k for k, t in ITEM_FIELDS.items() if t is str] + ["<key>"]))
        ch = chr(data.draw(st.integers(0xD800, 0xDFFF))) if op == "surrogate" else "\0"
        if key == "<key>":
            item["extra" + ch] = "x"
        else:
            i = data.draw(st.integers(0, len(item[key])))
            item[key] = item[key][:i] + ch + item[key][i:]
        lines[k] = (json.dumps(item, ensure_ascii=data.draw(st.booleans()) or op == "surrogate") + "\n").encode()
    else:
        i = data.draw(st.integers(0, len(lines[k]) - 1))
        lines[k] = lines[k][:i] + b"\0" + lines[k][i:]
    d = clean.copy()
    (d / name).write_bytes(b"".join(lines))
    if data.draw(st.booleans()):
        rehash(d, name)
    else:
        must_fail = must_fail or b"".join(lines) != clean.files[name]
    verdict(clean, d, must_fail, (name, k, op))


# --------------------------------------------------------------------------- 6. file-system oddities


@fuzz(110)
@given(data=st.data())
def test_file_system_oddities(clean, data):
    name = data.draw(st.sampled_from(list(BUILD_FILES) + [MANIFEST]))
    op = data.draw(st.sampled_from(["missing", "extra", "directory", "empty", "symlink", "fifo"]))
    d = clean.copy()
    outside = d.parent / "outside"
    if op == "missing":
        (d / name).unlink()
    elif op == "extra":
        extra = data.draw(st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=40))
        extra = extra if extra not in (".", "..", *clean.files) else extra + "x"
        kind = data.draw(st.sampled_from(["file", "dir", "link"]))
        if kind == "file":
            (d / extra).write_bytes(data.draw(st.binary(max_size=20)))
        elif kind == "dir":
            (d / extra).mkdir()
        else:
            os.symlink(d / name, d / extra)
    elif op == "directory":
        (d / name).unlink()
        (d / name).mkdir()
        (d / name / "train.jsonl").write_bytes(clean.files["train.jsonl"])
    elif op == "empty":
        (d / name).write_bytes(b"")
        if name != MANIFEST and data.draw(st.booleans()):
            rehash(d, name)
    elif op == "symlink":  # to an identical copy: a link is still never followed
        (d / name).rename(outside)
        os.symlink(outside if data.draw(st.booleans()) else os.path.relpath(outside, d), d / name)
    else:  # a FIFO would block a reader forever: it must be reported without being opened
        (d / name).unlink()
        os.mkfifo(d / name)
    verdict(clean, d, True, (name, op))


# --------------------------------------------------------------------------- the fuzzing's first finds, pinned


def _codes(rep) -> set[tuple[str, str, int | None, str | None]]:
    return {(p.code, p.file, p.line, p.field) for p in rep.problems if p.severity == "error"}


@pytest.mark.parametrize("key", ["output", "instruction", "title", "id", "doc_id"])
def test_lone_surrogate_escape_is_reported_with_its_line_and_field(clean, key):
    d = clean.copy()
    item = dict(clean.items["train"][1])
    item[key] = item[key][:5] + "\ud800" + item[key][5:]
    lines = clean.files["train.jsonl"].splitlines(keepends=True)
    lines[1] = (json.dumps(item) + "\n").encode()  # ensure_ascii: the surrogate as the escape \ud800
    (d / "train.jsonl").write_bytes(b"".join(lines))
    rehash(d, "train.jsonl")
    rep = validate(d, counter=clean.counter)  # with the recount, which used to crash on it
    assert ("surrogate", "train.jsonl", 2, key) in _codes(rep) and not rep.ok


def test_surrogates_via_the_cli_give_a_report_not_a_traceback(clean, tmp_path, capsys):
    from conftest import llqa_call

    d = clean.copy()
    with open(d / "test.jsonl", "ab") as f:
        f.write(b'{"id": "\\udc00x", "\\ud800": 1}\n')
    m = json.loads((d / MANIFEST).read_text())
    m["tokenizer"]["note"] = "\ud800"
    (d / MANIFEST).write_bytes(json.dumps(m).encode())
    code, out, err = llqa_call(capsys, "validate", str(d), "--no-recount", "--report", str(tmp_path / "r.json"))
    assert code == 1 and "Traceback" not in out + err and "surrogate" in out
    rep = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert {"surrogate"} <= {p["code"] for p in rep["problems"]}
    assert any(p["field"] == "tokenizer.note" for p in rep["problems"])


def test_manifest_file_name_longer_than_255_is_reported(clean):
    d = clean.copy()
    m = json.loads((d / MANIFEST).read_text())
    m["files"]["x" * 300 + ".jsonl"] = {"sha256": "0" * 64, "bytes": 0}
    write_manifest(d, m)
    rep = validate(d, counter=clean.counter)
    assert [(p.code, p.field[:12]) for p in rep.problems if p.severity == "error"] == [("path", "files.xxxxxx")]


def test_every_data_file_must_be_listed_and_files_empty_fails(clean):
    d = clean.copy()
    m = json.loads((d / MANIFEST).read_text())
    del m["files"]["train.jsonl"]
    write_manifest(d, m)
    assert ("unlisted-file", "train.jsonl", None, None) in _codes(validate(d, counter=clean.counter))
    m["files"] = {}
    write_manifest(d, m)
    rep = validate(d, counter=clean.counter)
    assert ("manifest", MANIFEST, None, "files") in _codes(rep)
    assert {f for c, f, _, _ in _codes(rep) if c == "unlisted-file"} == set(BUILD_FILES)


@pytest.mark.parametrize(
    "path, value",
    [
        (("files", "test.parquet", "bytes"), 1),
        (("counts", "total"), 1),
        (("counts", "by_split", "train"), 1),
        (("counts", "by_source", "leval"), 1),
        (("counts", "by_category", "detail"), 1),
    ],
)
def test_bytes_and_counts_are_checked(clean, path, value):
    d = clean.copy()
    m = json.loads((d / MANIFEST).read_text())
    functools.reduce(lambda x, k: x[k], path[:-1], m)[path[-1]] += value
    write_manifest(d, m)
    rep = validate(d, counter=clean.counter)
    want = (
        ("checksum", "test.parquet", None, None)
        if path[0] == "files"
        else ("counts", MANIFEST, None, ".".join(path[:2]))
    )
    assert want in _codes(rep)


def test_manifest_without_counts_fails(clean):
    d = clean.copy()
    m = json.loads((d / MANIFEST).read_text())
    del m["counts"]
    write_manifest(d, m)
    assert ("manifest", MANIFEST, None, "counts") in _codes(validate(d, counter=clean.counter))


def test_empty_tokenizer_spec_is_reported_not_skipped(clean):
    d = clean.copy()
    m = json.loads((d / MANIFEST).read_text())
    m["tokenizer"]["spec"] = ""
    write_manifest(d, m)
    rep = validate(d)  # no counter given: the manifest's spec is all there is
    assert ("manifest", MANIFEST, None, "tokenizer.spec") in _codes(rep)
    assert any("n_tokens recount" in s for s in rep.skipped)


@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/hostname", "../outside.txt"])
def test_manifest_paths_outside_the_build_are_reported_and_never_read(clean, monkeypatch, name):
    d = clean.copy()
    (d.parent / "outside.txt").write_text("secret\n")
    target = (d / name).resolve() if not name.startswith("/") else Path(name)
    m = json.loads((d / MANIFEST).read_text())
    data = target.read_bytes() if target.is_file() else b""
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}  # would match if read
    write_manifest(d, m)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k))
    rep = validate(d, counter=clean.counter)
    assert ("path", MANIFEST, None, f"files.{name}") in _codes(rep) and not rep.ok
    assert all(p.parent == d for p in opened), opened


def test_symlink_out_of_the_build_is_reported_and_never_followed(clean):
    d = clean.copy()
    (d.parent / "copy.jsonl").write_bytes(clean.files["train.jsonl"])  # identical: only the link is wrong
    (d / "train.jsonl").unlink()
    os.symlink(d.parent / "copy.jsonl", d / "train.jsonl")
    rep = validate(d, counter=clean.counter)
    assert ("symlink", "train.jsonl", None, None) in _codes(rep) and not rep.ok


def test_empty_jsonl_is_reported(clean, tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    rep = validate(tmp_path / "empty.jsonl", recount=False)
    assert ("empty", "empty.jsonl", None, None) in _codes(rep) and not rep.ok
    d = clean.copy()
    (d / "test.jsonl").write_bytes(b"")
    rehash(d, "test.jsonl")
    rep = validate(d, counter=clean.counter)
    assert ("empty", "test.jsonl", None, None) in _codes(rep) and not rep.ok


def test_a_clean_copy_passes_and_the_fuzz_build_is_small(clean):
    assert all(clean.items[s] for s in SPLITS) and len(_items(clean)) == 8
    verdict(clean, clean.copy(), False, "clean")


def test_an_empty_split_recorded_as_empty_is_a_warning_and_its_files_may_be_left_out(tmp_path, shared_data):
    (tmp_path / "r.toml").write_text(RECIPE.replace("test_fraction = 0.3", "test_fraction = 0"))
    build(load_recipe(tmp_path / "r.toml"), tmp_path / "set", source_dir=shared_data, seed=0)
    rep = validate(tmp_path / "set", recount=False)
    assert rep.ok and rep.to_dict()["by_code"] == {"warning:empty": 1}
    m = json.loads((tmp_path / "set" / MANIFEST).read_text())
    for name in ("test.jsonl", "test.parquet"):
        (tmp_path / "set" / name).unlink()
        del m["files"][name]
    write_manifest(tmp_path / "set", m)
    assert validate(tmp_path / "set", recount=False).ok
    m["counts"]["by_split"]["test"] = 1  # now the manifest promises a test item: its files must be there
    write_manifest(tmp_path / "set", m)
    codes = _codes(validate(tmp_path / "set", recount=False))
    assert {("missing-file", "test.jsonl", None, None), ("missing-file", "test.parquet", None, None)} <= codes


@pytest.mark.parametrize("name", ["x" * 300, "a\0b"])
def test_an_unusable_path_argument_is_one_error_line(tmp_path, name):
    with pytest.raises(LlqaError, match="not a usable path|does not exist"):
        validate(str(tmp_path / name))
