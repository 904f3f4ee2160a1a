"""Source modules: each turns one public dataset into `Document`s and `QA`s (schema.py).

Every module exposes `NAME`, `HUB_ID`, `load_hub(options) -> SourceData` and
`load_local(directory, options) -> SourceData`; its docstring documents the local layout it reads.
`load_source` picks the local copy under `--source-dir/<name>/` when there is one, else the hub when it
is reachable, and otherwise fails with one line naming the dataset and the flag.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX, hub_reachable
from llqa.io import read_text, read_text_lines
from longqa.schema import SourceData

SOURCE_NAMES = ("narrativeqa", "qasper", "arxiv", "leval", "longalpaca")


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


def load_source(name: str, options: dict[str, Any], source_dir: Path | None) -> SourceData:
    mod = module(name)
    local = local_dir(name, source_dir)
    if local is not None:
        return mod.load_local(local, options)
    check_available([name], source_dir)
    return mod.load_hub(options)


# --------------------------------------------------------------------------- local files


def local_origin(directory: Path) -> str:
    """How a local copy is named in the manifest: by its folder name only, so that the same files give
    the same bytes wherever they lie (their content is pinned by the sha256 revision)."""
    return f"local copy: <source-dir>/{Path(directory).name}"


def digest_files(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names and bytes of the local files a source read: its 'revision'."""
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


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


DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def data_files(directory: Path, splits: Iterable[str] | None = None) -> list[Path]:
    """Data files under `directory` (recursively), sorted; with `splits`, only files whose name starts
    with a split name (`train.jsonl`, `test-00000-of-00001.parquet`, ...) or lies in a split folder."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if splits is None:
        return files
    splits = tuple(splits)
    aliases = {"validation": ("validation", "valid", "dev", "val")}
    names = tuple(a for s in splits for a in aliases.get(s, (s,)))
    return [
        p
        for p in files
        if p.name.lower().startswith(names)
        or any(part.lower() in names for part in p.relative_to(directory).parts[:-1])
    ]


# --------------------------------------------------------------------------- hub


def hub_revision(hub_id: str) -> str:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(hub_id).sha or "unknown"
    except Exception:  # the revision is metadata: a failed lookup must not fail the build
        return "unknown"


def hub_rows(hub_id: str, split: str, config: str | None = None, streaming: bool = False):
    """Rows of one split from the hub through `datasets`, failing with one line when it cannot.
    Datasets published with a loading script (no longer run by `datasets` >= 4) are read from the hub's
    Parquet conversion (revision refs/convert/parquet) instead."""
    import datasets

    first: Exception | None = None
    for revision in (None, "refs/convert/parquet"):
        try:
            return datasets.load_dataset(hub_id, config, split=split, streaming=streaming, revision=revision)
        except Exception as e:  # datasets raises many types (connection, script, missing config, ...)
            first = first or e
    msg = str(first).splitlines()[0] if str(first) else type(first).__name__
    raise LlqaError(
        f"could not load {hub_id} ({config or 'default'}, {split}) from the hub: {msg}",
        f"{OFFLINE_FIX} via --source-dir",
    )
