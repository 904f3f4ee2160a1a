"""What a training run directory promises: one run at a time writes into it, --resume says what it does when
there is nothing to continue, a run on a random base carries its base with it, and the adapter names its base
in a way that means something on another machine."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console

from llqa.errors import LlqaError
from llqa.io import OutLock
from llqa.models import RUN_FILE, load_model
from tests.conftest import tiny_train_config as _cfg
from trainer.loop import run_training


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_a_second_run_into_the_same_out_is_refused_with_the_holders_pid(tmp_path, tied_tiny_and_essay):
    model, essay = tied_tiny_and_essay
    with OutLock(tmp_path / "run"):  # a run in flight (here: this process, through another open file)
        with pytest.raises(LlqaError, match="is in use by another llqa run") as e:
            run_training(_cfg(tmp_path / "run", model, essay))
    assert "PID" in e.value.what and not (tmp_path / "run" / "train_config.json").exists()


def test_resume_before_the_first_checkpoint_says_it_starts_from_step_0(tmp_path, tied_tiny_and_essay):
    model, essay = tied_tiny_and_essay
    assert run_training(_cfg(tmp_path / "run", model, essay, stop_after=0)).steps == 0  # killed before step 1
    console, buf = _console()
    result = run_training(_cfg(tmp_path / "run", model, essay, max_steps=1, resume=True), console=console)
    assert result.finished and result.steps == 1
    assert "has no checkpoint yet, so training starts from step 0" in buf.getvalue()


def test_resume_with_max_steps_below_the_steps_done_is_refused(tiny_run, tmp_path, tied_tiny_and_essay):
    model, essay = tied_tiny_and_essay
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".llqa.lock"}
    with pytest.raises(LlqaError, match="has already done 2 steps") as e:
        run_training(_cfg(run, model, essay, max_steps=1, resume=True))
    assert "above 2" in e.value.fix
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".llqa.lock"} == before


def test_resume_of_a_finished_run_rewrites_its_final_files_and_says_so(tiny_run, tmp_path, tied_tiny_and_essay):
    model, essay = tied_tiny_and_essay
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    good = (run / "adapter_model.safetensors").read_bytes()
    (run / "adapter_model.safetensors").write_bytes(good[:100])  # damaged: merge would name --resume as the fix
    console, buf = _console()
    assert run_training(_cfg(run, model, essay, resume=True), console=console).finished
    assert "already reached --max-steps 2" in buf.getvalue()
    assert (run / "adapter_model.safetensors").read_bytes() == good


def test_the_adapter_names_a_local_base_by_its_absolute_path(tiny_run, tied_tiny_and_essay):
    model, _ = tied_tiny_and_essay
    adapter = json.loads((tiny_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model.resolve())


def test_a_run_on_a_random_base_keeps_it_relative_so_a_moved_copy_uses_its_own(tmp_path, tied_tiny_and_essay):
    import torch

    _, essay = tied_tiny_and_essay
    original = tmp_path / "original"
    run_training(_cfg(original, "random:tiny", essay, max_steps=1, save_every=1))
    assert json.loads((original / RUN_FILE).read_text())["base_model"] == "./base"
    assert json.loads((original / "adapter_config.json").read_text())["base_model_name_or_path"] == "random:tiny"
    ids = torch.tensor([[5, 6, 7, 8]])
    want = load_model(str(original), dtype="float32", device="cpu").model(ids).logits
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # the copy must not need the original
    got = load_model(str(moved), dtype="float32", device="cpu").model(ids).logits
    assert torch.equal(want, got)
