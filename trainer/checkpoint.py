"""Atomic training checkpoints: everything a resumed run needs to end with the same weights.

`RUN_DIR/checkpoints/step-000100/` holds
- `trainable.safetensors`  every trainable parameter by name (LoRA matrices, LoRA+ embeddings and
                           norms, or all weights for `--method full`), in their fp32 master dtype;
- `optimizer.pt`           AdamW state (moments, step counts) and the LR scheduler state;
- `rng.pt`                 Python, NumPy, torch CPU and CUDA generator states;
- `state.json`             optimizer step, samples consumed (the data position), loss history tail.
It is written into a hidden temporary directory and renamed into place, so a crash leaves either
the complete checkpoint or none; the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llqa.errors import LlqaError
from trainer.dtensor import full_tensor, like_param, trainable_state

if TYPE_CHECKING:
    import torch

CHECKPOINTS = "checkpoints"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [d for d in root.glob("step-*") if (d / "state.json").is_file()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_training_state(model: torch.nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable weights by name, optimizer state_dict) as full CPU tensors: the single-process format, whatever
    the engine. FSDP-sharded tensors are all-gathered, so under `--parallel fsdp` every rank must call this."""
    weights = trainable_state(model)
    opt = optimizer.state_dict()
    opt["state"] = {
        i: {k: full_tensor(v).cpu() if hasattr(v, "cpu") else v for k, v in s.items()} for i, s in opt["state"].items()
    }
    return weights, opt


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
    write: bool = True,
) -> Path | None:
    """Write checkpoint `state['step']` atomically and prune to the newest `keep`. With sharded (FSDP) weights
    every rank calls this (the state is gathered) and only the one with `write` writes."""
    import torch
    from safetensors.torch import save_file

    weights, opt_state = full_training_state(model, optimizer)
    if not write:
        return None
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": opt_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        for f in tmp.iterdir():  # contents on disk before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step after a crash between rename and prune
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns its state.json. Every process reads the
    whole checkpoint; under FSDP each keeps its shard, so a checkpoint resumes on any number of ranks."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise LlqaError(
            f"checkpoint {path} does not match the model ({len(missing)} trainable weights missing, "
            f"{len(unknown)} unknown)",
            "resume with the same --model and --method",
        )
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(like_param(w, params[n]))
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    ordered = [p for group in optimizer.param_groups for p in group["params"]]  # state ids index this order
    opt["optimizer"]["state"] = {
        i: {k: like_param(v, ordered[int(i)]) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in opt["optimizer"]["state"].items()
    }
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=False))
    return json.loads((path / "state.json").read_text())
