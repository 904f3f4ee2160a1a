"""llqa/io.py: atomic writes end with plain-write permissions, output folders are checked, leftovers of dead
processes are removed and live ones kept, and one run at a time holds an output folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile

import pytest

from llqa.errors import LlqaError
from llqa.io import (
    LOCK_FILE,
    OutLock,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    pid_alive,
    plain_permissions,
    remove_dead_leftovers,
    umask,
    writable_dir,
    writable_file,
)


@pytest.fixture(params=[0o022, 0o027, 0o002])
def with_umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(with_umask):
    assert umask() == with_umask
    assert umask() == with_umask


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path, with_umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for write, name in [
        (lambda p: atomic_write_text(p, "x"), "a.txt"),
        (lambda p: atomic_write_json(p, {"a": 1}), "a.json"),
        (lambda p: atomic_write_csv(p, [{"a": 1}]), "a.csv"),
    ]:
        write(tmp_path / name)
        assert _mode(tmp_path / name) == _mode(plain) == 0o666 & ~with_umask


def test_an_atomic_rewrite_keeps_the_files_own_mode(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    atomic_write_json(path, {"new": True})
    assert _mode(path) == 0o640 and "new" in path.read_text()


def test_a_mkdtemp_directory_gets_the_mode_mkdir_gives(tmp_path, with_umask):
    made = tmp_path / "made"
    made.mkdir()
    tmp = plain_permissions(tempfile.mkdtemp(dir=tmp_path))
    assert _mode(tmp) == _mode(made) == 0o777 & ~with_umask


def test_writable_dir_accepts_existing_and_new_folders(tmp_path):
    assert writable_dir(tmp_path) == tmp_path
    assert writable_dir(tmp_path / "a" / "b").is_dir()
    assert not (new := tmp_path / "c" / "d").exists() and writable_dir(new, create=False) == new
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # the probe is gone


@pytest.mark.parametrize("create", [True, False])
def test_writable_dir_refuses_with_one_line(tmp_path, create):
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "below", "cannot be written"),
        ("/proc/llqa-out", "cannot be written"),
    ]
    for path, needle in cases:
        with pytest.raises(LlqaError) as e:
            writable_dir(path, "--out", create=create)
        assert needle in e.value.what and "--out" in e.value.what and e.value.fix


def test_writable_file_refuses_a_directory_and_an_unwritable_place(tmp_path):
    with pytest.raises(LlqaError, match="is a directory"):
        writable_file(tmp_path, "--report")
    with pytest.raises(LlqaError, match="cannot be written"):
        writable_file("/proc/llqa/report.json", "--report")
    assert writable_file(tmp_path / "new" / "r.json", "--report").name == "r.json"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    assert not pid_alive(dead) and pid_alive(live)
    for name in (f".out.tmp-{dead}-abc", f".out.tmp-{live}-def", ".out.tmp-nopid", f".other.tmp-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.bin").write_bytes(b"x")
    removed = remove_dead_leftovers(tmp_path, ".out.tmp-")
    assert [p.name for p in removed] == [f".out.tmp-{dead}-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".out.tmp-{live}-def", ".out.tmp-nopid", f".other.tmp-{dead}"]
    )


HOLD = """
import sys, time
from llqa.io import OutLock
with OutLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LlqaError) as e:
            OutLock(out).acquire()
        assert f"PID {holder.pid}" in e.value.what and "in use" in e.value.what
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert (out / LOCK_FILE).exists()
    with OutLock(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(LlqaError, match=f"PID {os.getpid()}"):
            OutLock(out).acquire()  # a second open file is a second holder, even in one process
    with OutLock(out):  # released on exit
        pass


def test_the_lock_refuses_an_output_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlqaError, match="is a file"):
        OutLock(tmp_path / "f").acquire()
