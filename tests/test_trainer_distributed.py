"""Data-parallel training: two gloo processes on CPU, as `torchrun --nproc-per-node 2` starts them.

One spawn of 2 ranks trains a tiny LoRA+ model (tied embeddings) 2 steps, stops (as if killed), then
resumes to step 4; rank 0 copies the stopped run first, and that copy resumes in ONE process. All three
end states must equal a single-process run of the same global batch (4 sequences per step)."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import assert_tensor_dicts_close, free_ports, spawn_gloo_ranks, tiny_train_config
from trainer.config import TrainConfig
from trainer.distributed import micro_batches_per_rank, rank_slice
from trainer.loop import run_training
from trainer.runlog import read_log

CTX = 64


def _cfg(out, model, data, **kw) -> TrainConfig:
    return tiny_train_config(
        out,
        model,
        data,
        **{
            "ctx": CTX,
            "max_steps": 4,
            "batch_size": 4,
            "lr": 2e-3,
            "warmup_steps": 2,
            "save_every": 2,
            "seed": 11,
            **kw,
        },
    )


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, ports: tuple[int, int], root, model, data) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0])
    )
    torch.set_num_threads(1)
    first = run_training(_cfg(root / "ddp", model, data, stop_after=2))
    if rank == 0:  # the stopped 2-rank run, to be resumed by one process
        shutil.copytree(root / "ddp", root / "single-resume")
    os.environ["MASTER_PORT"] = str(ports[1])  # a second launch, as a second torchrun would be
    done = run_training(_cfg(root / "ddp", model, data, resume=True))
    torch.save(
        {"losses": first.losses + done.losses, "weights": _trainable(done.model), "finished": done.finished},
        root / f"rank{rank}.pt",
    )


def test_two_gloo_ranks_train_like_one_process_and_resume_on_two_and_one(tmp_path, tied_tiny_and_essay):
    model, data = tied_tiny_and_essay
    ranks = spawn_gloo_ranks(_worker, (2, tuple(free_ports(2)), tmp_path, model, data), tmp_path, timeout_s=240)
    assert all(r["finished"] for r in ranks)
    # both ranks hold exactly the same weights (DDP reduced the gradients) and report the same global loss
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 4
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in ranks)
    for name, w in ranks[0]["weights"].items():
        assert torch.equal(w, ranks[1]["weights"][name]), name

    single = run_training(_cfg(tmp_path / "single", model, data))
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    want = _trainable(single.model)
    assert_tensor_dicts_close(ranks[0]["weights"], want)
    assert any(
        not torch.equal(want[n], w)
        for n, w in _trainable(run_training(_cfg(tmp_path / "untrained", model, data, max_steps=1)).model).items()
    )  # the comparison can fail

    # the checkpoint written under 2 ranks resumes in 1 process to the same end state
    resumed = run_training(_cfg(tmp_path / "single-resume", model, data, resume=True))
    assert resumed.finished and resumed.steps == 4
    assert_tensor_dicts_close(_trainable(resumed.model), want)
    log = read_log(tmp_path / "ddp")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 and r["tokens"] == 4 * CTX for r in log)  # global tokens of the step


def test_global_batch_is_split_by_rank():
    items = list(range(8))
    assert [rank_slice(items, r, 2) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sum((rank_slice(items, r, 4) for r in range(4)), []) == items
    assert micro_batches_per_rank(64, 1, 8) == 8 and micro_batches_per_rank(64, 2, 2) == 16


def test_batch_not_divisible_by_world_is_a_clear_error():
    from llqa.errors import LlqaError

    with pytest.raises(LlqaError, match="not a multiple of --micro-batch-size 2 × 3 processes") as err:
        micro_batches_per_rank(8, 2, 3)
    assert "divisible by 6" in err.value.fix


@pytest.mark.slow
def test_multi_gpu_script_runs_under_torchrun_on_cpu(tmp_path):
    """The documented launch (`torchrun ... -m cli train`, then `--resume`) through the benchmark script,
    2 gloo ranks on CPU with a tiny model (about 20 s)."""
    import json
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NPROC": "2", "MODEL": "random:tiny", "CTX": "256"}
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "train_multi_gpu.sh"), str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resume_ok"] and summary["steps"] == 4 and summary["nproc"] == 2
    assert "resume worked" in proc.stdout
