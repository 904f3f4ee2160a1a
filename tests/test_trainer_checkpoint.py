"""Checkpoints are safe to load from a run folder someone else gave you, and damage is named, never a traceback.

A tiny two-layer module stands in for the model: the checkpoint code only sees named trainable parameters,
an AdamW optimizer and a LambdaLR scheduler, exactly as the training loop hands them over.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from llqa.errors import LlqaError
from trainer.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    loss = model(torch.randn(3, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _saved_run(tmp_path, steps=(1, 2)):
    model, optimizer, scheduler = _setup()
    for step in steps:
        _step(model, optimizer, scheduler)
        save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": step, "consumed": step}, keep=5)
    return model, optimizer, scheduler


def test_checkpoint_files_load_with_weights_only(tmp_path):
    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)  # no allowlist: nothing but plain data
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    assert {"optimizer", "scheduler"} <= opt.keys() and {"python", "numpy", "torch"} <= rng.keys()


def test_resume_restores_every_generator_and_the_optimizer_exactly(tmp_path):
    model, optimizer, scheduler = _saved_run(tmp_path)
    want_draws = (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(1).item())
    _step(model, optimizer, scheduler)
    want = [p.detach().clone() for p in model.parameters()]

    model2, optimizer2, scheduler2 = _setup(seed=1)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, optimizer2, scheduler2)
    assert state["step"] == 2
    got_draws = (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(1).item())
    assert got_draws == want_draws
    _step(model2, optimizer2, scheduler2)
    for a, b in zip(want, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_an_older_llqa_with_a_numpy_rng_state_still_resumes(tmp_path):
    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    np.random.seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, ckpt / "rng.pt")  # the former format: NumPy's state tuple with its uint32 array
    want = float(np.random.rand())
    np.random.seed(6)
    load_checkpoint(ckpt, *_setup())
    assert float(np.random.rand()) == want


class _RunsCode:
    def __reduce__(self):
        return (open, ("/tmp/llqa-pwned-by-checkpoint", "w"))


@pytest.mark.parametrize("file", ["optimizer.pt", "rng.pt"])
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, file):
    from pathlib import Path

    marker = Path("/tmp/llqa-pwned-by-checkpoint")
    marker.unlink(missing_ok=True)
    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    torch.save({"optimizer": _RunsCode(), "scheduler": {}, "python": _RunsCode()}, ckpt / file)
    with pytest.raises(LlqaError) as e:
        load_checkpoint(ckpt, *_setup())
    assert not marker.exists()
    assert file in e.value.what and "damaged" in e.value.what


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("trainable.safetensors", _truncate),
        ("trainable.safetensors", lambda p: p.write_bytes(b"")),
        ("optimizer.pt", lambda p: p.write_bytes(b"garbage, not a torch file")),
        ("optimizer.pt", _truncate),
        ("rng.pt", lambda p: p.write_bytes(b"\x00" * 10)),
        ("state.json", lambda p: p.write_text('{"step": 2, "consu')),
        ("state.json", lambda p: p.write_text("[]")),
        ("state.json", lambda p: p.write_bytes(b"\xff\xfe\x00")),
    ],
)
def test_a_damaged_checkpoint_names_the_file_and_the_previous_checkpoint(tmp_path, file, damage):
    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    damage(ckpt / file)
    model, optimizer, scheduler = _setup(seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(LlqaError) as e:
        load_checkpoint(ckpt, model, optimizer, scheduler)
    assert str(ckpt / file) in e.value.what and "damaged" in e.value.what
    assert "step-000001" in e.value.fix  # the previous checkpoint is offered
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)  # nothing restored from a half-read checkpoint


def test_a_damaged_only_checkpoint_says_none_is_left(tmp_path):
    _saved_run(tmp_path, steps=(1,))
    ckpt = latest_checkpoint(tmp_path)
    (ckpt / "state.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(LlqaError, match="state.json") as e:
        load_checkpoint(ckpt, *_setup())
    assert "no earlier checkpoint" in e.value.fix


def test_rng_state_holds_no_numpy_arrays():
    def walk(x):
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return all(walk(v) for v in x)
        return not isinstance(x, np.ndarray)

    assert walk(rng_state())


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("trainable.safetensors", _truncate),
        ("optimizer.pt", lambda p: p.write_bytes(b"garbage, not a torch file")),
        ("optimizer.pt", _truncate),
        ("rng.pt", lambda p: torch.save({"python": _RunsCode()}, p)),
        ("state.json", lambda p: p.write_text("{")),
    ],
)
def test_the_quick_check_before_a_resume_finds_the_same_damage(tmp_path, file, damage):
    from trainer.checkpoint import check_checkpoint

    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    assert check_checkpoint(ckpt) == 2
    damage(ckpt / file)
    with pytest.raises(LlqaError, match="damaged") as e:
        check_checkpoint(ckpt)
    assert str(ckpt / file) in e.value.what and "step-000001" in e.value.fix


def test_the_quick_check_accepts_an_older_numpy_rng_file(tmp_path):
    from trainer.checkpoint import check_checkpoint

    _saved_run(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, ckpt / "rng.pt"
    )
    assert check_checkpoint(ckpt) == 2
