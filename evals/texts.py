"""Documents for the evals: a .txt file, a folder of text files, jsonl/parquet rows, or a hub dataset.

Every loader returns `Document`s (id, text, meta) and fails with one `LlqaError` line on bad input:
an empty file, text that is not UTF-8, a missing text field, a hub dataset that cannot be reached.
Files are read by `llqa.io.read_text` / `read_text_lines`: UTF-8, universal newlines (CRLF and CR read as
LF), so line ends never change a document's tokens; text fields of table rows are taken as stored.
Used by the perplexity eval (documents to score) and the retrieval evals (haystack text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llqa.datafiles import PARQUET_EXPORT, Layout, Listing, find_hub, local_listing
from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX, hub_reachable
from llqa.io import read_text, read_text_lines

TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
DEFAULT_GLOB = "*.txt"


@dataclass
class Document:
    id: str  # stable within its source: file name, `file:row`, or the dataset's own id
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def is_table(path: Path) -> bool:
    return path.name.lower().endswith(TABLE_SUFFIXES)


def load_texts(
    path: str | Path, text_field: str = "text", id_field: str | None = None, pattern: str = DEFAULT_GLOB
) -> list[Document]:
    """Documents from a text file (one document), a folder (files matching `pattern` — comma-separated
    globs — searched recursively, sorted by path: a text file is one document, a table one per row), or a
    jsonl/json/parquet table (one document per row)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LlqaError(f"--data {path}: no such file or directory", "check the path")
    if path.is_dir():
        return _load_folder(path, pattern, text_field, id_field)
    if is_table(path):
        return list(_table_documents(path, text_field, id_field))
    text = read_text(path)
    if not text.strip():
        raise LlqaError(f"{path} is empty", "pass a file with text in it")
    return [Document(path.name, text, {"path": str(path)})]


def _load_folder(path: Path, pattern: str, text_field: str, id_field: str | None) -> list[Document]:
    """Every file matching one of the comma-separated globs: a table gives its rows, a text file itself."""
    files = sorted({p for g in pattern.split(",") if g.strip() for p in path.rglob(g.strip()) if p.is_file()})
    if not files:
        raise LlqaError(f"{path} has no files matching '{pattern}'", "pass another folder or --glob")
    docs = []
    for f in files:
        name = str(f.relative_to(path))
        if is_table(f):
            for d in _table_documents(f, text_field, id_field):
                d.id = d.id if id_field else f"{name}:{d.id.rsplit(':', 1)[1]}"
                docs.append(d)
            continue
        text = read_text(f)
        if text.strip():  # an empty file in a folder is skipped; a folder of only empty files is an error
            docs.append(Document(name, text, {"path": str(f)}))
    if not docs:
        raise LlqaError(f"every file matching '{pattern}' in {path} is empty", "pass a folder with text in it")
    return docs


def _table_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LlqaError(f"{path} is not a readable parquet file ({e})", "check the file") from None
        yield from table.to_pylist()
        return
    lines = read_text_lines(path)
    first = next(lines, None)
    if first is None:
        raise LlqaError(f"{path} is empty", "pass a file with rows in it")
    if first.lstrip().startswith("[") and path.name.lower().endswith((".json", ".json.gz")):
        try:
            rows = json.loads("\n".join([first, *lines]))  # a JSON array instead of JSON lines
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path} is not JSON (line {e.lineno}: {e.msg})", "fix the file") from None
        yield from (r for r in rows if isinstance(r, dict))
        return
    for n, line in enumerate([first], start=1):
        yield _json_row(path, n, line)
    for n, line in enumerate(lines, start=2):
        if line.strip():
            yield _json_row(path, n, line)


def _json_row(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise LlqaError(f"{path} line {n} is not JSON ({e.msg})", "fix or drop that line") from None
    if not isinstance(row, dict):
        raise LlqaError(f"{path} line {n} is not a JSON object", "write one object per line") from None
    return row


def _table_documents(path: Path, text_field: str, id_field: str | None) -> Iterator[Document]:
    any_row = False
    for i, row in enumerate(_table_rows(path)):
        any_row = True
        yield row_document(row, i, text_field, id_field, where=str(path), default_id=f"{path.name}:{i}")
    if not any_row:
        raise LlqaError(f"{path} has no rows", "pass a file with rows in it")


def row_document(
    row: dict[str, Any], index: int, text_field: str, id_field: str | None, where: str, default_id: str
) -> Document:
    """One table row as a Document; a missing or non-string text field is a user error naming the fields."""
    if text_field not in row:
        raise LlqaError(
            f"{where} row {index} has no field '{text_field}' (fields: {', '.join(map(str, row))})",
            "pass the right one with --text-field",
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise LlqaError(
            f"{where} row {index}: field '{text_field}' is {type(text).__name__}, not text",
            "pass the text column with --text-field",
        )
    if id_field is not None and id_field not in row:
        raise LlqaError(f"{where} row {index} has no field '{id_field}'", "pass the right one with --id-field")
    doc_id = str(row[id_field]) if id_field else default_id
    meta = {k: v for k, v in row.items() if k != text_field and _small(v)}
    return Document(doc_id, text, meta)


def _small(value: Any) -> bool:
    """Metadata worth keeping in result files: scalars and short strings/dicts, never another long text."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return len(json.dumps(value, default=str)) <= 500


# --------------------------------------------------------------------------- hub datasets


@dataclass(frozen=True)
class HubDataset:
    repo: str
    split: str
    text_field: str
    id_field: str | None
    about: str
    # the file layouts that hold the split, in order of preference (llqa/datafiles.py): only these files are
    # downloaded, never the other splits
    layouts: tuple[Layout, ...] = ()


PG19 = HubDataset(
    "emozilla/pg19-test",
    "test",
    "text",
    "short_book_title",
    "PG19 test split (100 books), parquet copy of deepmind/pg19",
    (
        Layout("Parquet", {"test": ("data/test-*.parquet",)}),
        Layout("Parquet export", {"test": ("default/test/*.parquet",)}, revision=PARQUET_EXPORT),
    ),
)
PROOF_PILE = HubDataset(
    "hoskinson-center/proof-pile",
    "test",
    "text",
    None,
    "proof-pile test split (arXiv math, formal math libraries, textbooks, ...)",
    # `main` holds a loading script (refused by datasets >= 4); the export's default config has train
    # (~270k rows, GBs) / validation / test: only test's files are read
    (Layout("Parquet export", {"test": ("default/test/*.parquet",)}, revision=PARQUET_EXPORT),),
)


def _hub_files(spec: HubDataset, layouts: list[Layout]) -> tuple[Listing, list[str]]:
    """The split's files as local paths: listed on the hub and downloaded (only those files) into the HF cache,
    or, with no network, found in that cache."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if hub_reachable():
        _, listing, found = find_hub(spec.repo, layouts, spec.repo)
        paths = [
            hf_hub_download(spec.repo, rel, repo_type="dataset", revision=listing.commit) for rel in found[spec.split]
        ]
        folder = Path(paths[0]).parents[len(Path(found[spec.split][0]).parts) - 1]  # .../snapshots/<commit>
        return Listing(listing.files, folder=folder, repo=spec.repo, commit=listing.commit, ref=listing.ref), found[
            spec.split
        ]
    for layout in layouts:
        try:
            folder = Path(
                snapshot_download(
                    spec.repo,
                    repo_type="dataset",
                    revision=layout.revision,
                    allow_patterns=list(layout.parts[spec.split]),
                    local_files_only=True,
                )
            )
        except Exception:  # not in the cache (huggingface_hub raises several types): try the next layout
            continue
        listing = local_listing(folder)
        found = listing.match(layout)
        if found is not None:
            return Listing(
                listing.files, folder=folder, repo=spec.repo, commit=folder.name, ref=layout.revision
            ), found[spec.split]
    raise LlqaError("the hub cannot be reached and it is not in the local cache")


def layout_files(spec: HubDataset, folder: Path) -> list[Path] | None:
    """The split's files when `folder` is a download of the dataset (`huggingface-cli download REPO
    [--revision refs/convert/parquet] --local-dir folder`): the other splits' files are not read."""
    listing = local_listing(folder)
    for layout in spec.layouts:
        found = listing.match(layout)
        if found is not None:
            return [folder / rel for rel in found[spec.split]]
    return None


def load_hub_dataset(spec: HubDataset, revision: str | None = None, flag: str = "--data"):
    """The hub split as a `datasets.Dataset` (random access: the proof-pile protocol samples rows), read with
    `datasets.load_dataset("parquet", data_files=...)` from the split's files only (downloaded once into the HF
    cache; from that cache when the hub is unreachable). `revision` replaces each layout's own revision.

    Returns (dataset, info) where info records repo, split, the revision and commit read and the files."""
    import datasets

    layouts = [replace(lay, revision=revision) if revision else lay for lay in spec.layouts]
    fix = f"{OFFLINE_FIX}: {flag} PATH (a jsonl/parquet file or folder in the same schema, text in '{spec.text_field}')"
    try:
        listing, files = _hub_files(spec, layouts)
        ds = datasets.load_dataset("parquet", data_files=[listing.location(f) for f in files], split="train")
    except LlqaError as e:
        raise LlqaError(f"dataset '{spec.repo}' ({spec.split} split) could not be loaded: {e.what}", fix) from None
    except Exception as e:  # downloads and parquet reads raise many types
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LlqaError(f"dataset '{spec.repo}' ({spec.split} split) could not be loaded: {first}", fix) from None
    info = {
        "repo": spec.repo,
        "split": spec.split,
        "revision": listing.revision_read,
        "files": files,
        "fingerprint": getattr(ds, "_fingerprint", None),
        "rows": len(ds),
        "offline_cache": not hub_reachable(),
    }
    return ds, info


def hub_documents(ds, spec: HubDataset, indices=None, text_field: str | None = None) -> Iterator[Document]:
    """Rows of a loaded hub split as Documents; `indices` picks rows (in that order)."""
    text_field = text_field or spec.text_field
    if text_field not in ds.column_names:
        raise LlqaError(
            f"dataset '{spec.repo}' has no field '{text_field}' (fields: {', '.join(ds.column_names)})",
            "pass the right one with --text-field",
        )
    id_field = spec.id_field if spec.id_field in ds.column_names else None
    for i in indices if indices is not None else range(len(ds)):
        row = ds[int(i)]
        doc = row_document(row, int(i), text_field, None, where=spec.repo, default_id=f"{spec.split}:{i}")
        if id_field:
            doc.meta["title"] = row[id_field]
        yield doc
