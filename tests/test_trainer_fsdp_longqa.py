"""The 8-GPU FSDP sft path (benchmarks/train_fsdp.md) at a tiny size, on CPU: `llqa build` (the real LongQA
builder, L-Eval sci_fi from ../shared/data) -> `llqa sft --model random:<shape> --method longlora --parallel fsdp`
on that build under `torchrun --nproc-per-node 2` (gloo) for N steps -> a new launch with `--resume` to 2N
steps -> the final adapter as `--model RUN` in `llqa eval perplexity`. Only the shape, the context and the
device differ from those 8-GPU commands: a random base drawn shard by shard and copied into RUN/base, reloaded
by rank 0 and scattered on resume; the checkpoint gathered from, and re-sharded over, 2 ranks.
The numerical equality of FSDP with one process is tested in tests/test_trainer_fsdp.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli import app
from longqa.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
N = 2  # steps per launch
CTX = 256  # items (whole sci-fi stories) lose the middle of their instruction to fit, as 64k items would at 13B

RECIPE = (
    """
name = "fsdp-tiny"
description = "A tiny LongQA build (L-Eval sci_fi) for the FSDP sft path test."
min_tokens = 256
max_tokens = 262144
max_per_doc = 4
test_fraction = 0.25

[quotas.novel]
detail = 8

[sources.leval]
tasks = ["sci_fi"]
"""
    + "[framing]\n"
    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in load_recipe("longqa-3k").framing.items())
)


def _cli(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _torchrun_sft(build: Path, run: Path, max_steps: int, *extra: str) -> None:
    """One launch of the real CLI under torchrun, 2 ranks (gloo on CPU), as the 8-GPU command but tiny."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cli",
        "sft",
        "--model",
        "random:tiny",
        "--ctx",
        str(CTX),
        "--data",
        str(build),
        "--out",
        str(run),
        "--method",
        "longlora",
        "--parallel",
        "fsdp",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch-size",
        "4",
        "--save-every",
        str(N),
        "--warmup-steps",
        "1",
        "--lr",
        "1e-3",
        "--max-steps",
        str(max_steps),
        *extra,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _raw_log(run: Path) -> list[dict]:
    """log.jsonl as written (a resumed run appends; a restarted one would log its steps again from 1)."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _adam_steps(ckpt: Path) -> set[int]:
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    return {int(s["step"]) for s in state.values()}


def _ppl(model: Path, essay: Path, out: Path) -> tuple[dict, float]:
    _cli(
        [
            "eval",
            "perplexity",
            "--model",
            str(model),
            "--data",
            str(essay),
            "-L",
            str(CTX),
            "-S",
            str(CTX // 2),
            "--max-tokens",
            "768",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    result = json.loads((out / "result.json").read_text())
    return result["model"], result["summary"][str(CTX)]["ppl"]


def test_longqa_build_sft_fsdp_two_ranks_resume_then_eval(tmp_path, shared_data):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    build, run = tmp_path / "longqa", tmp_path / "run"
    _cli(["build", "--recipe", str(recipe), "--source-dir", str(shared_data), "--out", str(build), "--seed", "3"])
    n_train = len((build / "train.jsonl").read_text().splitlines())
    assert n_train > 0

    _torchrun_sft(build, run, N)  # launch 1: steps 1..N, checkpoint N
    first = _raw_log(run)
    assert [r["step"] for r in first] == list(range(1, N + 1))
    assert (run / "checkpoints" / f"step-{N:06d}" / "trainable.safetensors").is_file()
    assert (run / "base" / "config.json").is_file()  # the random base, gathered from the shards
    config = json.loads((run / "train_config.json").read_text())
    assert config["engine"] == "fsdp" and config["world_size"] == 2
    assert config["data"]["items"] == n_train and config["data"]["answer_tokens"] > 0  # the build's train split

    _torchrun_sft(build, run, 2 * N, "--resume")  # launch 2: reloads RUN/base and checkpoint N, steps N+1..2N
    log = _raw_log(run)
    assert log[:N] == first and [r["step"] for r in log[N:]] == list(range(N + 1, 2 * N + 1))
    assert all(r["world_size"] == 2 and math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in log)
    ckpts = run / "checkpoints"
    assert _adam_steps(ckpts / f"step-{N:06d}") == {N}
    assert _adam_steps(ckpts / f"step-{2 * N:06d}") == {2 * N}  # AdamW continued from the checkpoint's moments
    at_n = load_file(str(ckpts / f"step-{N:06d}" / "trainable.safetensors"))
    at_2n = load_file(str(ckpts / f"step-{2 * N:06d}" / "trainable.safetensors"))
    assert at_n.keys() == at_2n.keys() and any(not torch.equal(at_n[k], at_2n[k]) for k in at_n)
    assert json.loads((run / "llqa_model.json").read_text())["steps"] == 2 * N

    # the final adapter (gathered to the single-process format) is a model for the evals
    essay = sorted((shared_data / "paul_graham_essays").rglob("*.txt"))[0]
    info, ppl = _ppl(run, essay, tmp_path / "ppl-run")
    assert info["adapter"] == str(run) and str(run / "base") in info["source"]
    _, base_ppl = _ppl(run / "base", essay, tmp_path / "ppl-base")
    assert math.isfinite(ppl) and ppl != pytest.approx(base_ppl, rel=1e-6)  # the trained adapter is applied
