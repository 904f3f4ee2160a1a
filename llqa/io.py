"""Files in and out: the one text reader every command uses, and atomic result files.

Reading text (`read_text`, `read_text_lines`): UTF-8 only (a leading UTF-8 BOM is dropped), with
universal newlines: CRLF and a lone CR are read as LF, as Python's text mode, `datasets` and the Hugging
Face perplexity recipe read files, so a file with Windows or old Mac line ends gives the same text, tokens
and numbers as its LF copy. Bytes that are not UTF-8 are refused with one line naming the file and the byte
offset: no reader decodes lossily. Text inside a JSON or parquet field is taken as stored (an escaped CR
there is data, not a line end).

Writing (`atomic_write_*`): a killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError

# how text files are read, as result files record it
TEXT_READING = "UTF-8 (BOM dropped), universal newlines: CRLF and CR read as LF"


def universal_newlines(text: str) -> str:
    """CRLF and lone CR as LF: what `open(path, newline=None)` does while reading."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _not_utf8(path: Path, bad: bytes, offset: int, line: int | None = None) -> LlqaError:
    where = f"line {line}, " if line is not None else ""
    return LlqaError(
        f"{path} is not UTF-8 text ({where}byte {offset}: {bad[:1]!r})",
        f"convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}`",
    )


def _cannot_read(path: Path, e: Exception) -> LlqaError:
    return LlqaError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}", "check the path and its permissions")


def _open_binary(path: Path):
    """The file's bytes; a `.gz` file decompressed."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text (see the module docstring); non-UTF-8 bytes are a user error naming the offset."""
    path = Path(path)
    try:
        with _open_binary(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise _cannot_read(path, e) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        raise _not_utf8(path, raw[bom + e.start :], bom + e.start) from None
    return universal_newlines(text)


def read_text_lines(path: str | os.PathLike) -> Iterator[str]:
    """The file's lines without their line ends, read as `read_text` reads the whole file but one line at a
    time (JSON lines files may be larger than memory)."""
    path = Path(path)
    offset, number = 0, 0
    try:
        with _open_binary(path) as f:
            for raw in f:  # split at LF; lone CRs are split below
                bom = 3 if offset == 0 and raw.startswith(b"\xef\xbb\xbf") else 0
                try:
                    text = raw[bom:].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(path, raw[bom + e.start :], offset + bom + e.start, number + 1) from None
                offset += len(raw)
                pieces = universal_newlines(text).split("\n")
                if pieces[-1] == "":  # the line end of the last piece
                    pieces.pop()
                for piece in pieces:
                    number += 1
                    yield piece
    except (OSError, EOFError) as e:
        raise _cannot_read(path, e) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: list[str] | None = None
) -> Path:
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record and fsync it: the resume log of long runs (a torn last line is ignored on read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Records of a resume log; a line torn by a crash (not valid JSON) is skipped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
