"""Where a dataset's files come from, and how they are read: the hub or a local folder, then `datasets`.

A dataset is read in three steps, and only the first differs between the hub and a local copy:

1. list its files — `hub_listing(repo, revision)` (one `HfApi.dataset_info` call, which also gives the commit
   the revision points at) or `local_listing(folder)` (every file below it): a `Listing` of relative paths;
2. match a `Layout` against the listing: per part (a split, an L-Eval task) the glob patterns its files
   follow on the hub, e.g. `scientific_qa/test/*.parquet` — the first layout whose every part has files wins;
3. read the matched files with `datasets.load_dataset("parquet" | "json", data_files=[...], streaming=True)`:
   hub files as `hf://datasets/<repo>@<commit>/<path>`, pinned to the commit that was listed (streamed: no
   file is downloaded whole and nothing is written to the datasets cache), local files by path. The perplexity
   evals, which sample rows at random, download the split's files into the HF cache instead (evals/texts.py).

`datasets` >= 4 no longer runs loading scripts, so a dataset whose default branch holds only a script
(L-Eval, QASPER, proof-pile) is read from the hub's Parquet export, revision `refs/convert/parquet`; its layout
says so. A local copy is exactly what `huggingface-cli download REPO --repo-type dataset [--revision R]
--local-dir DIR` puts on disk, so the same layouts match it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX

PARQUET_EXPORT = "refs/convert/parquet"
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


@dataclass(frozen=True)
class Layout:
    """One way a dataset's files lie, on the hub at `revision` (None: the default branch) and in a download."""

    name: str  # how errors and the manifest name it: "Parquet export"
    parts: dict[str, tuple[str, ...]]  # part -> glob patterns relative to the dataset's root (`**/` any folders)
    revision: str | None = None
    hub: bool = True  # False: a layout only local copies have (an original release), read by the source itself
    # True: matched when any part has files (a local copy may hold only some splits; the source notes the rest)
    partial: bool = False
    summary: str = ""  # how error messages name the files, when the patterns are too many to list

    def expected(self) -> str:
        """The files it wants, for error messages: `scientific_qa/test/*.parquet, quality/test/*.parquet`."""
        return self.summary or ", ".join(dict.fromkeys(p for pats in self.parts.values() for p in pats))

    def download(self, repo: str) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"huggingface-cli download {repo} --repo-type dataset{rev} --local-dir DIR"


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """A glob over `/`-separated relative paths: `*` and `?` stay within one folder, `**/` spans any folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out, re.I)


@dataclass(frozen=True)
class Listing:
    """The files of one dataset at one place: a local folder, or the hub at one commit."""

    files: tuple[str, ...]  # relative paths with `/`, sorted
    folder: Path | None = None  # local copy
    repo: str | None = None  # hub
    commit: str | None = None  # the hub commit these files are listed (and read) at
    ref: str | None = None  # the revision asked for (None: the default branch)

    def parts(self, layout: Layout) -> dict[str, list[str]]:
        """part -> its files (sorted; empty when it has none)."""
        found = {}
        for part, patterns in layout.parts.items():
            regexes = [glob_regex(p) for p in patterns]
            found[part] = [f for f in self.files if any(r.fullmatch(f) for r in regexes)]
        return found

    def match(self, layout: Layout) -> dict[str, list[str]] | None:
        """part -> its files, or None when some part has no file."""
        found = self.parts(layout)
        ok = any(found.values()) if layout.partial else all(found.values())
        return found if ok else None

    def location(self, rel: str) -> str:
        """What `datasets` is given for one file: a local path, or an hf:// URL pinned to the listed commit."""
        if self.folder is not None:
            return str(self.folder / rel)
        return f"hf://datasets/{self.repo}@{self.commit}/{rel}"

    @property
    def revision_read(self) -> str:
        """For the manifest: `refs/convert/parquet@<commit>` on the hub; local copies are digested instead."""
        return f"{self.ref or 'main'}@{self.commit}"


def local_listing(folder: Path) -> Listing:
    """Every file below `folder` except hidden ones (`huggingface-cli download` keeps its `.cache/` there)."""
    folder = Path(folder)
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return Listing(tuple(files), folder=folder)


class RevisionMissing(Exception):
    """The hub repo has no such revision (e.g. no Parquet export): try the next layout."""


def hub_listing(repo: str, revision: str | None) -> Listing:
    """The repo's files at `revision` and the commit it points at, from one API call; one clear line on failure."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency of datasets
        raise LlqaError(f"huggingface_hub is not installed ({e})", "pip install huggingface_hub") from None
    try:
        info = HfApi().dataset_info(repo, revision=revision)
    except RevisionNotFoundError:
        raise RevisionMissing(revision) from None
    except RepositoryNotFoundError:
        raise LlqaError(f"dataset {repo} was not found on the hub", "check the name, or pass a local copy") from None
    except Exception as e:  # connection errors, timeouts, offline mode, HTTP errors: all end the same way
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LlqaError(f"cannot list {repo}'s files on the hub ({first})", OFFLINE_FIX) from None
    files = tuple(sorted(s.rfilename for s in info.siblings or []))
    return Listing(files, repo=repo, commit=info.sha or "unknown", ref=revision)


def no_layout_error(
    where: str, what: str, layouts: Iterable[Layout], repo: str, listing: Listing | None = None
) -> LlqaError:
    """One line: which files were expected, and for a layout that is partly there, which parts lack files."""
    layouts = list(layouts)
    expected = "; or ".join(f"{lay.name}: {lay.expected()}" for lay in layouts)
    hub = next((lay for lay in layouts if lay.hub), None)
    fix = f"expected {expected}"
    if hub is not None:
        fix += f" (e.g. `{hub.download(repo)}`)"
    near = ""
    if listing is not None:
        partial = [(lay, [p for p, f in listing.parts(lay).items() if not f]) for lay in layouts]
        partial = [(lay, miss) for lay, miss in partial if len(miss) < len(lay.parts)]
        if partial:
            lay, miss = min(partial, key=lambda t: len(t[1]))
            near = f" ({lay.name}, but nothing for {', '.join(miss)})"
    return LlqaError(f"{where} holds no known {what} layout{near}", fix)


def find_local(folder: Path, layouts: Iterable[Layout], what: str, repo: str):
    """(layout, listing, part -> files) of the first layout the folder matches; else one error naming them all."""
    layouts = list(layouts)
    listing = local_listing(folder)
    for layout in layouts:
        found = listing.match(layout)
        if found is not None:
            return layout, listing, found
    raise no_layout_error(str(folder), what, layouts, repo, listing)


def find_hub(repo: str, layouts: Iterable[Layout], what: str):
    """(layout, listing, part -> files) of the first hub layout present on the hub (a listing per revision)."""
    layouts = [lay for lay in layouts if lay.hub]
    listings: dict[str | None, Listing | None] = {}
    for layout in layouts:
        if layout.revision not in listings:
            try:
                listings[layout.revision] = hub_listing(repo, layout.revision)
            except RevisionMissing:
                listings[layout.revision] = None
        listing = listings[layout.revision]
        found = listing.match(layout) if listing is not None else None
        if found is not None:
            return layout, listing, found
    raise no_layout_error(f"the hub's {repo}", what, layouts, repo)


def builder(rel: str) -> str:
    name = rel.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    raise LlqaError(f"{rel}: not a parquet or JSON file", "keep only the dataset's data files")


def read_parts(listing: Listing, parts: dict[str, list[str]]) -> dict[str, Iterator[dict[str, Any]]]:
    """part -> the rows of its files, in order, read through `datasets` (streamed; one `load_dataset` call per
    file format, each part a split of it). A file it cannot read is one clear line when its rows are read.

    Streaming keeps local copies out of the datasets cache and reads hub files without downloading them whole;
    `datasets` imports torch (when installed) for every streamed dataset, which costs a few seconds once."""
    by_builder: dict[str, dict[str, list[str]]] = {}
    for part, rels in parts.items():
        for rel in rels:
            by_builder.setdefault(builder(rel), {}).setdefault(part, []).append(listing.location(rel))
    opened: dict[str, Any] = {}

    def rows(part: str) -> Iterator[dict[str, Any]]:
        import datasets

        for b, files in by_builder.items():
            if part not in files:
                continue
            try:
                if b not in opened:
                    opened[b] = datasets.load_dataset(b, data_files=files, streaming=True)
                yield from opened[b][part]
            except LlqaError:
                raise
            except Exception as e:  # pyarrow / json / fsspec errors of many types
                first = (str(e).splitlines() or [type(e).__name__])[0]
                where = listing.folder or f"hf://datasets/{listing.repo}"
                fix = "re-download the local copy" if listing.folder else OFFLINE_FIX
                names = ", ".join(Path(f).name for f in files[part][:3])
                raise LlqaError(f"cannot read {names} in {where} ({first[:300]})", fix) from None

    return {part: rows(part) for part in parts}


def digest(listing: Listing, files: Iterable[str]) -> str:
    """`sha256:` over the relative names and bytes of the local files read: a local copy's revision."""
    assert listing.folder is not None
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        h.update(rel.encode() + b"\0")
        with open(listing.folder / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def revision(listing: Listing, files: Iterable[str]) -> str:
    """What the manifest records as read: the hub ref and commit, or the digest of the local files."""
    return digest(listing, files) if listing.folder is not None else listing.revision_read
