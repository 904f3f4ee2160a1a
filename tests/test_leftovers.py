"""Nothing lost, nothing left behind: `llqa build` and `llqa merge` refuse to replace what they should not,
and what a killed build or merge leaves (its temporary folder, named after its PID) is removed by the next
run of the same command, while a live process's folder is kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llqa.errors import LlqaError
from longqa.build import build
from longqa.recipe import load_recipe
from trainer.merge import merge_run

REPO = Path(__file__).resolve().parents[1]
FRAMING = "[framing]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in load_recipe("longqa-3k").framing.items())


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, shared_data):
    """(recipe, source dir): six L-Eval style stories cut from real essays, two human-style questions each."""
    root = tmp_path_factory.mktemp("tiny-longqa")
    essays = sorted((shared_data / "paul_graham_essays").rglob("*.txt"))[:6]
    rows = [
        {
            "input": " ".join(e.read_text(encoding="utf-8")[:3000].split()),
            "instructions": [f"Where does the narrator go in part {i}?", f"Which town is named in part {i}?"],
            "outputs": [f"Place {i}.", f"Town {i}."],
        }
        for i, e in enumerate(essays)
    ]
    (root / "src" / "leval").mkdir(parents=True)
    (root / "src" / "leval" / "sci_fi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = root / "tiny.toml"
    recipe.write_text(
        'name = "tiny"\nmin_tokens = 100\nmax_tokens = 20000\nmax_per_doc = 4\ntest_fraction = 0.3\n'
        '[quotas.novel]\ndetail = 8\n[sources.leval]\ntasks = ["sci_fi"]\n' + FRAMING
    )
    return recipe, root / "src"


def _build(tiny_sources, out, **kw):
    recipe, src = tiny_sources
    return build(load_recipe(recipe), out, source_dir=src, seed=1, **kw)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the process ended before it could be killed"
        assert time.monotonic() < deadline, "the process never reached the point to kill it at"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_build_is_replaced_only_with_overwrite_and_a_foreign_folder_never(tiny_sources, tmp_path):
    out = tmp_path / "longqa"
    _build(tiny_sources, out)
    (out / "notes.md").write_text("my notes")
    with pytest.raises(LlqaError, match="already holds a build") as e:
        _build(tiny_sources, out)
    assert "--overwrite" in e.value.fix and (out / "notes.md").read_text() == "my notes"
    _build(tiny_sources, out, overwrite=True)
    assert not (out / "notes.md").exists() and (out / "manifest.json").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(LlqaError, match="not an llqa build"):
        _build(tiny_sources, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_build_has_the_permissions_of_plain_files_and_folders(tiny_sources, tmp_path):
    old = os.umask(0o022)
    try:
        out = _build(tiny_sources, tmp_path / "longqa").out
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}


@pytest.mark.parametrize("bad", ["file", "/proc/llqa-longqa"])
def test_a_build_into_an_unusable_out_is_one_line(tiny_sources, tmp_path, bad):
    out = tmp_path / "f" if bad == "file" else Path(bad)
    if bad == "file":
        out.write_text("x")
    with pytest.raises(LlqaError, match="--out"):
        _build(tiny_sources, out)


KILLED_BUILD = """
import sys, time
import longqa.build as b
from longqa.recipe import load_recipe

real = b.write_parquet
def slow(path, rows):
    real(path, rows)
    time.sleep(600)  # killed here: the temporary folder holds half a build
b.write_parquet = slow
b.build(load_recipe(sys.argv[1]), sys.argv[2], source_dir=sys.argv[3], seed=1)
"""


def test_a_killed_build_leaves_a_folder_the_next_build_removes(tiny_sources, tmp_path):
    recipe, src = tiny_sources
    out = tmp_path / "longqa"
    live = tmp_path / f".longqa.tmp-{os.getppid()}-x"  # a build still running elsewhere: kept
    live.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(recipe), str(out), str(src)], cwd=REPO)
    mine = f".longqa.tmp-{proc.pid}-"
    _kill_when(proc, lambda: any((p / "train.parquet").exists() for p in tmp_path.glob(mine + "*")))
    assert not out.exists() and len(list(tmp_path.glob(mine + "*"))) == 1
    _build(tiny_sources, out)
    assert (out / "manifest.json").is_file()
    assert not list(tmp_path.glob(mine + "*")) and live.is_dir()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


@pytest.mark.parametrize(
    ("out", "where"), [(".", "is"), ("./merged", "lies inside"), ("..", "contains")], ids=["same", "inside", "parent"]
)
def test_merge_refuses_an_out_that_is_inside_or_contains_the_run(run_copy, out, where):
    before = sorted(p.relative_to(run_copy) for p in run_copy.rglob("*"))
    with pytest.raises(LlqaError) as e:
        merge_run(run_copy, run_copy / out, overwrite=True)
    assert where in e.value.what and "outside the run" in e.value.fix
    assert sorted(p.relative_to(run_copy) for p in run_copy.rglob("*")) == before


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("adapter_model.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        ("adapter_config.json", lambda p: p.write_text('{"base_model_name_or_path": ')),
        ("llqa_model.json", lambda p: p.write_bytes(b"\x00\xff")),
    ],
)
def test_merge_of_a_damaged_run_names_the_file_and_the_checkpoint(run_copy, tmp_path, file, damage):
    damage(run_copy / file)
    with pytest.raises(LlqaError) as e:
        merge_run(run_copy, tmp_path / "merged")
    assert str(run_copy / file) in e.value.what and "damaged" in e.value.what
    assert "--resume" in e.value.fix and "step-000002" in e.value.fix
    assert not (tmp_path / "merged").exists()


KILLED_MERGE = """
import sys, time
import trainer.merge as m

def stop(*a, **k):
    time.sleep(600)  # killed here: the weights are written, the run file not yet
m.atomic_write_json = stop
m.merge_run(sys.argv[1], sys.argv[2], dtype="float32")
"""


def test_a_killed_merge_leaves_a_folder_the_next_merge_removes(run_copy, tmp_path):
    out = tmp_path / "merged"
    stale = tmp_path / f".merged.merging-{_dead_pid()}"  # an older killed merge
    stale.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MERGE, str(run_copy), str(out)], cwd=REPO)
    mine = tmp_path / f".merged.merging-{proc.pid}"
    _kill_when(proc, lambda: (mine / "config.json").exists())
    assert not out.exists() and mine.is_dir()
    merge_run(run_copy, out, dtype="float32")
    assert (out / "config.json").is_file() and not mine.exists() and not stale.exists()


def _ppl_result(folder: Path, spec: str, ppl: float) -> Path:
    folder.mkdir(parents=True)
    doc = {
        "task": "perplexity",
        "model": {"spec": spec},
        "config": {"data": "book.txt", "scoring": "sliding", "stride": 256, "documents": 1},
        "data": {"source": "book.txt", "documents": ["book.txt"]},
        "summary": {"64": {"ppl": ppl}, "128": {"ppl": ppl * 0.9}},
    }
    (folder / "result.json").write_text(json.dumps(doc))
    return folder


KILLED_REPORT = """
import sys, time
import report as r

def stop(*a, **k):
    time.sleep(600)  # killed here: the new plots are rendered, the markdown not yet
r.atomic_write_text = stop
r.write_report([sys.argv[1]], sys.argv[2])
"""


def test_a_killed_report_leaves_the_previous_one_whole_and_the_next_run_cleans_up(tmp_path):
    from report import write_report

    first = _ppl_result(tmp_path / "first" / "a", "random:tiny", 20.0)
    second = _ppl_result(tmp_path / "second" / "b", "random:small-other", 30.0)
    out = tmp_path / "report"
    write_report([first], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert any(n.endswith(".png") for n in before)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_REPORT, str(second), str(out)], cwd=REPO)
    stage = out / f".report-{proc.pid}"
    _kill_when(proc, lambda: any(stage.glob("*.png")))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p != stage} == before  # the old report, whole
    rep = write_report([second], out)
    assert not stage.exists() and "random:small-other" in rep.markdown.read_text()
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", *(p.name for p in rep.plots)}
