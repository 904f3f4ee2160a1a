"""Files in and out: the one text reader every command uses; files and folders that survive a kill and a
colleague's `ls`.

Reading text (`read_text`, `read_text_lines`): UTF-8 only (a leading UTF-8 BOM is dropped), with
universal newlines: CRLF and a lone CR are read as LF, as Python's text mode, `datasets` and the Hugging
Face perplexity recipe read files, so a file with Windows or old Mac line ends gives the same text, tokens
and numbers as its LF copy. Bytes that are not UTF-8 are refused with one line naming the file and the byte
offset: no reader decodes lossily. Text inside a JSON or parquet field is taken as stored (an escaped CR
there is data, not a line end).

Writing:
- Atomic writes (`atomic_write_*`): a killed run leaves either the old file or the new one, never half of one;
  the file ends with the permissions a plain `open(path, "w")` would give it (its old mode, else 0666 less the
  umask), not mkstemp's private 0600.
- `plain_permissions` does the same for a directory made by `tempfile.mkdtemp` (0700) before it is renamed
  into place.
- `writable_dir`: an output folder that is usable, checked before any work starts (one line, not a traceback
  an hour later).
- `remove_dead_leftovers`: temporary folders named after the process that made them, removed once that process
  is gone (a live run's are kept).
- `OutLock`: one run at a time writes into a folder; a second one is refused with the holder's PID.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import gzip
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llqa.errors import LlqaError


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def plain_file_mode(path: str | os.PathLike) -> int:
    """The mode `open(path, "w")` leaves: an existing file keeps its own, a new one gets 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~umask()


def plain_permissions(directory: str | os.PathLike) -> Path:
    """Give a directory made by `tempfile.mkdtemp` (0700) the mode `mkdir` gives: 0777 less the umask."""
    os.chmod(directory, 0o777 & ~umask())
    return Path(directory)


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
    mode = plain_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
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


# --------------------------------------------------------------------------- output folders


def writable_dir(path: str | os.PathLike, option: str = "--out", create: bool = True) -> Path:
    """`path` as an output directory: an existing directory, or one that can be made (made when `create`; else
    a file is made and removed in its nearest existing parent, to prove it could be). Anything else (a file
    there, a parent that is a file, no permission, a place like /proc) is one `LlqaError` naming `option`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LlqaError(f"{option} {path} is a file, not a directory", f"pass a directory to {option}")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        probe = next(p for p in (path, *path.parents) if p.exists())
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a parent is a file", str(probe))
        fd, tmp = tempfile.mkstemp(prefix=".llqa-probe-", dir=probe)  # os.access says yes to root everywhere
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise LlqaError(
            f"{option} {path} cannot be written ({e.strerror or e})", f"pass a directory you can write to {option}"
        ) from None
    return path


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """`path` as an output file: not a directory, and its folder writable (made if missing)."""
    path = Path(path)
    if path.is_dir():
        raise LlqaError(f"{option} {path} is a directory", f"pass a file name to {option}, e.g. {path}/report.json")
    writable_dir(path.parent, option, create=False)
    return path


# --------------------------------------------------------------------------- leftovers of killed runs


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this machine (as far as this user can tell)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_leftovers(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the entries of `parent` named `<prefix><PID>...` whose process is gone; returns them. A name
    without a PID after the prefix is left alone: it is not known to be dead."""
    parent, removed = Path(parent), []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        if not entry.name.startswith(prefix):
            continue
        m = re.match(r"\d+", entry.name[len(prefix) :])
        if m is None or pid_alive(int(m.group())) and int(m.group()) != os.getpid():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------- one run per output folder

LOCK_FILE = ".llqa.lock"


class OutLock:
    """An exclusive `fcntl.flock` on `DIR/.llqa.lock` for as long as a run writes into DIR.

    The kernel drops the lock when its holder dies, however it dies, so a lock left by a killed run is simply
    taken over; the file itself records the holder's PID for the message a second run prints. Use as a
    context manager; `release()` is idempotent."""

    def __init__(self, directory: str | os.PathLike, option: str = "--out"):
        self.directory = Path(directory)
        self.option = option
        self._fd: int | None = None

    def acquire(self) -> OutLock:
        writable_dir(self.directory, self.option)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LlqaError(
                f"{self.option} {self.directory} is in use by another llqa run (PID {holder})",
                "wait for it to finish (a rerun then resumes), or pass another " + self.option,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
