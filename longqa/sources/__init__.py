"""Source modules: each turns one public dataset into `Document`s and `QA`s (schema.py).

Every module exposes `NAME`, `HUB_ID`, `layouts(options) -> [Layout]` (the file layouts it reads, in order of
preference: what the hub holds today, then what local copies may hold; see llqa/datafiles.py) and
`read(src: Located, options) -> SourceData`. `load_source` finds the files — under `--source-dir/<name>/`
when that folder exists, else on the hub — matches the first layout they follow, and hands them to `read`:
the hub and a local copy differ only in where the files come from. A folder that matches no layout, a hub
that cannot be reached, a repo that holds none of the layouts: one line naming the expected files.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llqa.datafiles import Layout, Listing, find_hub, find_local, read_parts, revision
from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX, hub_reachable
from llqa.io import read_text, read_text_lines
from longqa.schema import SourceData

SOURCE_NAMES = ("narrativeqa", "qasper", "arxiv", "leval", "longalpaca")
# split name -> the names its files may carry (QASPER's original release says "dev")
SPLIT_ALIASES = {"validation": ("validation", "valid", "dev", "val")}


def module(name: str):
    import importlib

    if name not in SOURCE_NAMES:
        raise LlqaError(f"unknown source {name!r} in the recipe", f"use one of: {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(f"longqa.sources.{name}")


def local_dir(name: str, source_dir: Path | None) -> Path | None:
    if source_dir is None:
        return None
    d = Path(source_dir) / name
    return d if d.is_dir() else None


def check_available(names: Iterable[str], source_dir: Path | None) -> None:
    """Fail before any work when a source has neither a local copy nor a reachable hub."""
    missing = [n for n in names if local_dir(n, source_dir) is None]
    if missing and not hub_reachable():
        what = ", ".join(f"{n} ({module(n).HUB_ID})" for n in missing)
        where = f"{source_dir}/<name>/" if source_dir else "--source-dir DIR with DIR/<name>/"
        raise LlqaError(
            f"no local copy and no hub for source(s) {what}",
            f"{OFFLINE_FIX}: pass {where} holding each (layouts in README, 'LongQA sources')",
        )


@dataclass
class Located:
    """A source's files, found: the layout they follow, where they are, and part -> files."""

    name: str
    layout: Layout
    listing: Listing
    files: dict[str, list[str]]
    origin: str
    _readers: dict[str, Iterator[dict[str, Any]]] | None = None

    def rows(self, part: str) -> Iterator[dict[str, Any]]:
        """The rows of one part's files, read by `datasets` (parquet / json builders; one call for all parts)."""
        if self._readers is None:
            self._readers = read_parts(self.listing, {p: fs for p, fs in self.files.items() if fs})
        return self._readers.get(part, iter(()))

    def path(self, rel: str) -> Path:
        """A local file of a local-only layout (read by the source itself)."""
        assert self.listing.folder is not None, "local-only layouts are never matched on the hub"
        return self.listing.folder / rel

    def source_data(self, read: Iterable[str] | None = None) -> SourceData:
        """An empty SourceData whose revision pins the files read (by default every matched file); parts of a
        partial layout that have no files are noted."""
        read = [f for fs in self.files.values() for f in fs] if read is None else list(read)
        data = SourceData(self.name, self.origin, revision(self.listing, read))
        missing = [p for p, fs in self.files.items() if not fs]
        if missing:
            data.notes.append(f"no files for {', '.join(missing)} in the local copy: not read")
        return data


def locate(name: str, options: dict[str, Any], source_dir: Path | None) -> Located:
    mod = module(name)
    layouts = mod.layouts(options)
    local = local_dir(name, source_dir)
    if local is not None:
        layout, listing, files = find_local(local, layouts, name, mod.HUB_ID)
        origin = f"{local_origin(local)} ({layout.name})"
    else:
        check_available([name], source_dir)
        layout, listing, files = find_hub(mod.HUB_ID, layouts, name)
        origin = f"{mod.HUB_ID} ({layout.name})"
    return Located(name, layout, listing, files, origin)


def load_source(name: str, options: dict[str, Any], source_dir: Path | None) -> SourceData:
    return module(name).read(locate(name, options, source_dir), options)


def split_patterns(split: str, suffixes: Iterable[str] = ("jsonl", "json", "parquet")) -> tuple[str, ...]:
    """Files of one split in the generic hub schema: named by it (`test.jsonl`, `test-00000-of-00001.parquet`)
    or in a folder named by it (`test/0000.parquet`), at any depth."""
    names = SPLIT_ALIASES.get(split, (split,))
    return tuple(
        p
        for n in names
        for suffix in suffixes
        for p in (f"**/{n}.{suffix}", f"**/{n}-*.{suffix}", f"**/{n}/*.{suffix}")
    )


def by_split_layout(splits: Iterable[str], name: str = "files named by split (hub schema)") -> Layout:
    """The generic local layout: each split's files named by it, rows in the dataset's hub schema. A copy may
    hold only some of the splits; the missing ones are noted in the manifest."""
    splits = list(splits)
    summary = (
        f"<split>.jsonl|json|parquet, <split>-*.parquet or <split>/*.parquet at any depth, for {', '.join(splits)}"
    )
    return Layout(name, {s: split_patterns(s) for s in splits}, hub=False, partial=True, summary=summary)


# --------------------------------------------------------------------------- local files


def local_origin(directory: Path) -> str:
    """How a local copy is named in the manifest: by its folder name only, so that the same files give
    the same bytes wherever they lie (their content is pinned by the sha256 revision)."""
    return f"local copy: <source-dir>/{Path(directory).name}"


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list, or {"data"|"train": [...]}, or {id: row}), .parquet or .csv file.
    A malformed file fails with its name and line."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            yield from pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise LlqaError(f"{path}: unreadable parquet ({e})", "re-download the local copy") from None
        return
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        yield from csv.DictReader(io.StringIO(read_text(path)))  # quoted line ends inside fields read as LF too
        return
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path}: not valid JSON ({e})", "re-download the local copy") from None
        if isinstance(data, dict):
            for key in ("data", "train", "rows"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:  # {id: row} as QASPER's original files
                data = [dict(v, id=k) if isinstance(v, dict) and "id" not in v else v for k, v in data.items()]
        if not isinstance(data, list):
            raise LlqaError(f"{path}: expected a list of records", "re-download the local copy")
        yield from (r for r in data if isinstance(r, dict))
        return
    for i, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path}:{i}: not valid JSON ({e.msg})", "re-download the local copy") from None
        if not isinstance(rec, dict):
            raise LlqaError(f"{path}:{i}: expected a JSON object", "re-download the local copy")
        yield rec
