"""Atomic training checkpoints: everything a resumed run needs to end with the same weights.

`RUN_DIR/checkpoints/step-000100/` holds
- `trainable.safetensors`  every trainable parameter by name (LoRA matrices, LoRA+ embeddings and
                           norms, or all weights for `--method full`), in their fp32 master dtype;
- `optimizer.pt`           AdamW state (moments, step counts) and the LR scheduler state;
- `rng.pt`                 Python, NumPy, torch CPU and CUDA generator states;
- `state.json`             optimizer step, samples consumed (the data position), loss history tail.
It is written into a hidden temporary directory and renamed into place, so a crash leaves either
the complete checkpoint or none; the newest `keep` checkpoints are kept.

A run folder may come from someone else, so loading it must never run code: both `.pt` files hold only
tensors, numbers, strings and containers and are read with `torch.load(weights_only=True)` (the NumPy
generator's key is stored as a tensor for that reason). Older checkpoints stored it as a NumPy array; they are
still read with `weights_only=True`, allowing NumPy's array constructor and nothing else. A damaged file stops the
resume with one line naming it and the previous checkpoint, before anything is restored.
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
    """Every generator's state in types `torch.load(weights_only=True)` reads: no NumPy arrays."""
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
        | {"has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (
            numpy_state["bit_generator"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # a tuple with a NumPy array: a checkpoint of an older llqa
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _safe_load(path: Path) -> Any:
    """`torch.load` that never runs code from the file: tensors, numbers, strings, containers, and NumPy arrays
    (older llqa checkpoints kept the NumPy generator's key as one)."""
    import torch

    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed np.core
    numpy_array = [np.ndarray, np.dtype, np.dtypes.UInt32DType, core.multiarray._reconstruct]
    with torch.serialization.safe_globals(numpy_array):
        return torch.load(path, map_location="cpu", weights_only=True)


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


def damaged(path: Path, file: str, why: str) -> LlqaError:
    """The error for a checkpoint file that cannot be read: names it and what to do (the previous checkpoint)."""
    path = Path(path)
    earlier = [d for d in checkpoint_dirs(path.parent.parent) if d.name < path.name]
    fix = (
        f"delete {path} and --resume again to continue from the previous checkpoint {earlier[-1].name}"
        if earlier
        else f"no earlier checkpoint is left: delete {path} and start the run afresh"
    )
    return LlqaError(f"checkpoint file {path / file} is damaged ({why})", fix)


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


# What an older llqa's rng.pt (a NumPy state tuple) needs beyond plain data; NumPy 2 renamed numpy.core.
_NUMPY_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType"}
_NUMPY_GLOBALS |= {f"numpy.{core}.multiarray._reconstruct" for core in ("core", "_core")}


def check_checkpoint(path: Path) -> int:
    """A quick look at every file of a checkpoint before a resume loads the model: state.json parsed, the
    safetensors header (it covers the whole file, so truncation shows), the `.pt` archives' structure and the
    globals their pickles would need. Returns the step; damage is a `damaged` error, named before the slow part."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    state = _read_state(path)
    try:
        with safe_open(str(path / "trainable.safetensors"), "pt"):
            pass
    except Exception as e:  # SafetensorError has no stable import path
        raise damaged(path, "trainable.safetensors", _brief(e)) from None
    for file in ("optimizer.pt", "rng.pt"):
        try:
            needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path / file))
        except Exception as e:  # not a torch archive, truncated zip, missing file
            raise damaged(path, file, _brief(e)) from None
        unknown = needed - _NUMPY_GLOBALS
        if unknown:
            raise damaged(path, file, f"it would run code to load: {', '.join(sorted(unknown))[:120]}")
    return state["step"]


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "consumed" not in state:
            raise ValueError("no step and data position")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise damaged(path, "state.json", _brief(e)) from None
    return state


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state.json, trainable weights, optimizer + scheduler state, RNG state) of the checkpoint in `path`, every
    file read and checked before anything is restored; a damaged file is a `damaged` error."""
    from safetensors.torch import load_file

    state = _read_state(path)
    loaded = {}
    for file, read in (("trainable.safetensors", lambda p: load_file(str(p))), ("optimizer.pt", _safe_load)):
        try:
            loaded[file] = read(path / file)
        except Exception as e:  # safetensors, pickle and zip errors have no common base class
            raise damaged(path, file, _brief(e)) from None
    opt = loaded["optimizer.pt"]
    if not isinstance(opt, dict) or not {"optimizer", "scheduler"} <= opt.keys():
        raise damaged(path, "optimizer.pt", "no optimizer and scheduler state")
    try:
        rng = _safe_load(path / "rng.pt")
    except Exception as e:
        raise damaged(path, "rng.pt", _brief(e)) from None
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= rng.keys():
        raise damaged(path, "rng.pt", "no generator states")
    return state, loaded["trainable.safetensors"], opt, rng


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns its state.json. Every process reads the
    whole checkpoint; under FSDP each keeps its shard, so a checkpoint resumes on any number of ranks."""
    import torch

    state, weights, opt, rng = read_checkpoint(Path(path))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise LlqaError(
            f"checkpoint {path} does not match the model ({len(missing)} trainable weights missing, "
            f"{len(unknown)} unknown)",
            "resume with the same --model and --method",
        )
    bad_shape = [n for n, w in weights.items() if tuple(w.shape) != tuple(params[n].shape)]
    if bad_shape:
        raise LlqaError(
            f"checkpoint {path} does not match the model ({bad_shape[0]} has shape "
            f"{tuple(weights[bad_shape[0]].shape)}, the model {tuple(params[bad_shape[0]].shape)})",
            "resume with the same --model and --method",
        )
    ordered = [p for group in optimizer.param_groups for p in group["params"]]  # state ids index this order
    try:
        opt["optimizer"]["state"] = {
            i: {k: like_param(v, ordered[int(i)]) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in opt["optimizer"]["state"].items()
        }
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise damaged(path, "optimizer.pt", f"does not fit this run's optimizer: {_brief(e)}") from None
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(like_param(w, params[n]))
    set_rng_state(rng)
    return state
