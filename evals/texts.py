"""Documents for the evals: a .txt file, a folder of text files, jsonl/parquet rows, or a hub dataset.

Every loader returns `Document`s (id, text, meta) and fails with one `LlqaError` line on bad input:
an empty file, text that is not UTF-8, a missing text field, a hub dataset that cannot be reached.
Files are read by `llqa.io.read_text` / `read_text_lines`: UTF-8, universal newlines (CRLF and CR read as
LF), so line ends never change a document's tokens; text fields of table rows are taken as stored.
Used by the perplexity eval (documents to score) and the retrieval evals (haystack text).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


PG19 = HubDataset(
    "emozilla/pg19-test",
    "test",
    "text",
    "short_book_title",
    "PG19 test split (100 books), parquet copy of deepmind/pg19",
)
PROOF_PILE = HubDataset(
    "hoskinson-center/proof-pile",
    "test",
    "text",
    None,
    "proof-pile test split (arXiv math, formal math libraries, textbooks, ...)",
)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Without a network, make `datasets` read its cache only: it fails at once instead of retrying ~25 s."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hf_constants

    saved = datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE = saved


def load_hub_dataset(spec: HubDataset, revision: str | None = None, flag: str = "--data"):
    """The hub split as a `datasets.Dataset` (from the local cache when the hub is unreachable).

    Returns (dataset, info) where info records repo, split, revision and the cache fingerprint."""
    import datasets

    offline = not hub_reachable()
    # script-based repos (proof-pile) no longer load with `datasets` >= 4; the hub's parquet conversion does
    revisions = [revision] if revision else [None, "refs/convert/parquet"]
    ds = error = None
    for rev in revisions:
        try:
            with _hub_offline(offline):
                ds = datasets.load_dataset(spec.repo, split=spec.split, revision=rev)
            revision = rev
            break
        except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
            error = e
    if ds is None:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        where = "the hub cannot be reached and it is not in the local cache" if offline else first
        raise LlqaError(
            f"dataset '{spec.repo}' ({spec.split} split) could not be loaded: {where}",
            f"{OFFLINE_FIX}: {flag} PATH (a jsonl/parquet file or folder in the same schema, "
            f"text in '{spec.text_field}')",
        )
    info = {
        "repo": spec.repo,
        "split": spec.split,
        "revision": revision or "main",
        "fingerprint": getattr(ds, "_fingerprint", None),
        "rows": len(ds),
        "offline_cache": offline,
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
