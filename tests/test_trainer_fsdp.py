"""Sharded data parallelism (`--parallel fsdp`, FSDP2): two gloo processes on CPU, as
`torchrun --nproc-per-node 2` starts them, against one process training the same global batch.

One spawn of 2 ranks runs, on a tiny model with tied embeddings (the LoRA+ embedding copy is shared with
the LM head), `--method longlora` (LoRA+ and S2-Attn, gradient checkpointing) and `--method full`:
- longlora: 2 steps, stop (as if killed), resume to step 4 on 2 ranks; rank 0 first copies the stopped run,
  which then resumes in ONE process; and a run stopped by ONE process resumes on the 2 ranks;
- full: 2 steps;
- `random:tiny`: 1 step, whose base copy in the run directory must equal the weights the ranks drew.
Every end state (losses, checkpointed trainable weights and AdamW moments, the final adapter/model) must
equal the single-process run's to fp32 tolerance."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from llqa.errors import LlqaError
from tests.conftest import assert_tensor_dicts_close, free_ports, spawn_gloo_ranks
from trainer.config import TrainConfig
from trainer.fsdp import base_name, is_sharded
from trainer.loop import run_training
from trainer.runlog import read_log

CTX = 64


def _cfg(out, model, data, **kw) -> TrainConfig:
    base = dict(
        task="train",
        out=str(out),
        model=str(model),
        ctx=CTX,
        data=[str(data)],
        method="longlora",
        max_steps=4,
        batch_size=4,
        lr=2e-3,
        warmup_steps=2,
        save_every=2,
        device="cpu",
        dtype="float32",
        seed=11,
        parallel="fsdp",
        max_grad_norm=0.1,
    )  # 0.1: clipping binds (the global norm is larger)
    return TrainConfig(**{**base, **kw})


def _worker(rank: int, world: int, ports: list[int], root, model, data) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    launches = iter(ports)  # each run_training is a launch of its own (its own rendezvous), as torchrun's would be

    def run(cfg):
        os.environ["MASTER_PORT"] = str(next(launches))
        return run_training(cfg)

    first = run(_cfg(root / "fsdp", model, data, stop_after=2))
    if rank == 0:  # the stopped 2-rank run, to be resumed by one process
        shutil.copytree(root / "fsdp", root / "one-resume")
    done = run(_cfg(root / "fsdp", model, data, resume=True))
    from_one = run(_cfg(root / "from-one", model, data, resume=True))  # stopped by one process, resumed on 2
    full = run(_cfg(root / "full", model, data, method="full", max_steps=2))
    rnd = run(_cfg(root / "random", "random:tiny", data, max_steps=1))  # shards drawn on each rank, base gathered
    shards = {
        base_name(n): p.to_local().detach().clone() for n, p in rnd.model.named_parameters() if base_name(n) is not None
    }
    torch.save(
        {
            "sharded": is_sharded(done.model) and is_sharded(full.model),
            "losses": first.losses + done.losses,
            "full": full.losses,
            "from_one": from_one.losses,
            "shards": shards,
            "finished": done.finished and from_one.finished and full.finished,
        },
        root / f"rank{rank}.pt",
    )


def _spawn(tmp_path, model, data) -> list[dict]:
    return spawn_gloo_ranks(_worker, (2, free_ports(5), tmp_path, model, data), tmp_path)


def _checkpoint(run, step: int = 4) -> tuple[dict, dict]:
    ckpt = run / "checkpoints" / f"step-{step:06d}"
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    moments = {f"{i}.{k}": v for i, s in opt.items() for k, v in s.items() if k != "step"}
    return load_file(str(ckpt / "trainable.safetensors")), moments


def test_fsdp_on_two_gloo_ranks_trains_like_one_process_and_resumes_across_counts(tmp_path, tied_tiny_and_essay):
    model, data = tied_tiny_and_essay
    run_training(_cfg(tmp_path / "from-one", model, data, stop_after=2))  # one process, stopped at step 2
    ranks = _spawn(tmp_path, model, data)
    assert all(r["finished"] and r["sharded"] for r in ranks)
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 4
    base = load_file(str(tmp_path / "random" / "base" / "model.safetensors"))
    assert base.keys() == ranks[0]["shards"].keys()
    for name, weight in base.items():  # the saved random base is exactly the weights the ranks drew, in order
        assert torch.equal(weight, torch.cat([r["shards"][name] for r in ranks])), name

    single = run_training(_cfg(tmp_path / "single", model, data))
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    want = _checkpoint(tmp_path / "single")
    for run in ("fsdp", "from-one"):  # 2 ranks throughout; 1 process then 2 ranks
        for got, exp in zip(_checkpoint(tmp_path / run), want, strict=True):
            assert_tensor_dicts_close(got, exp)
    # the final adapter is the single-process format, with the same weights
    assert_tensor_dicts_close(
        load_file(str(tmp_path / "fsdp" / "adapter_model.safetensors")),
        load_file(str(tmp_path / "single" / "adapter_model.safetensors")),
    )
    untrained = load_file(str(tmp_path / "fsdp" / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert any(not torch.equal(untrained[n], w) for n, w in want[0].items())  # the comparison can fail

    # the checkpoint written by 2 ranks resumes in 1 process to the same end state
    resumed = run_training(_cfg(tmp_path / "one-resume", model, data, resume=True))
    assert resumed.finished and resumed.steps == 4
    for got, exp in zip(_checkpoint(tmp_path / "one-resume"), want, strict=True):
        assert_tensor_dicts_close(got, exp)
    log = read_log(tmp_path / "fsdp")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["world_size"] == 2 for r in log)
    assert json.loads((tmp_path / "fsdp" / "train_config.json").read_text())["engine"] == "fsdp"
    assert all(r["grad_norm"] > 0.1 for r in log)  # the clipped steps agree, so the sharded norm is the global one

    # full fine-tuning: every weight sharded and trained
    full = run_training(_cfg(tmp_path / "single-full", model, data, method="full", max_steps=2))
    torch.testing.assert_close(torch.tensor(ranks[0]["full"]), torch.tensor(full.losses), rtol=1e-5, atol=1e-6)
    assert_tensor_dicts_close(
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "single-full" / "model.safetensors")),
    )


def test_fsdp_refuses_what_it_does_not_support(tmp_path):
    from trainer.fsdp import check_combination

    with pytest.raises(LlqaError, match="--compile default is not supported with --parallel fsdp") as err:
        check_combination(_cfg(tmp_path, "m", tmp_path, compile="default"), torch.device("cpu"))
    assert "--parallel ddp" in err.value.fix
    with pytest.raises(LlqaError, match="--offload-activations is not supported with --parallel fsdp"):
        check_combination(_cfg(tmp_path, "m", tmp_path, offload_activations=True), torch.device("cpu"))
    check_combination(_cfg(tmp_path, "m", tmp_path, compile="auto"), torch.device("cpu"))  # auto: off under FSDP
    with pytest.raises(LlqaError, match="--parallel zero3 is not an engine"):
        _cfg(tmp_path, "m", tmp_path, parallel="zero3")


def test_engine_choice():
    from trainer.distributed import DistInfo, choose_engine

    cpu = torch.device("cpu")
    assert choose_engine(_cfg("o", "m", "d", parallel="fsdp"), DistInfo(), cpu) == "single"  # one process
    assert choose_engine(_cfg("o", "m", "d", parallel="fsdp"), DistInfo(0, 2), cpu) == "fsdp"
    assert choose_engine(_cfg("o", "m", "d", parallel="auto"), DistInfo(0, 2), cpu) == "ddp"  # no GPU memory limit


def test_base_names_of_peft_parameters():
    from trainer.fsdp import base_name

    assert (
        base_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
        == "model.layers.0.self_attn.q_proj.weight"
    )
    assert base_name("base_model.model.model.embed_tokens.original_module.weight") == "model.embed_tokens.weight"
    assert base_name("base_model.model.lm_head.weight") == "lm_head.weight"
    assert base_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert base_name("base_model.model.model.norm.modules_to_save.default.weight") is None
    assert base_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"  # --method full


def test_accelerate_launch_starts_the_fsdp_ranks(tmp_path, tied_tiny_and_essay):
    """The documented `accelerate launch --multi_gpu --num_processes N -m cli ...` (accelerate's torchrun launch;
    on a host without GPUs its ranks join over gloo) trains with 2 FSDP ranks."""
    import subprocess

    model, data = tied_tiny_and_essay
    cmd = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "cli",
        "train",
        "--model",
        str(model),
        "--ctx",
        str(CTX),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--parallel",
        "fsdp",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = read_log(tmp_path / "run")
    assert [r["world_size"] for r in log] == [2] and (tmp_path / "run" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_fsdp_benchmark_runs_on_cpu(tmp_path):
    """benchmarks/train_fsdp.py end to end at a tiny size: 2 gloo ranks, sft on generated pairs, train 1 step,
    then --resume to 2 (about 30 s)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "train_fsdp.py"),
            "--nproc",
            "2",
            "--runs",
            "tiny@256",
            "--task",
            "sft",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "summary.json").read_text())["runs"][0]
    assert run["resume_ok"] and run["steps"] == 2 and run["nproc"] == 2 and run["task"] == "sft"
    assert run["tokens_per_s"] > 0 and run["model_flops_per_step"] > 0


def test_oom_under_several_processes_suggests_fsdp(monkeypatch, tmp_path):
    from trainer.loop import oom_error

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "--parallel fsdp" in str(oom_error(_cfg(tmp_path, "m", tmp_path, parallel="ddp"), torch.device("cpu")))
    assert "--parallel fsdp" not in str(oom_error(_cfg(tmp_path, "m", tmp_path), torch.device("cpu")))  # fsdp already
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "--parallel fsdp" not in str(oom_error(_cfg(tmp_path, "m", tmp_path, parallel="ddp"), torch.device("cpu")))


def _stop_worker(rank: int, world: int, port: int, root, model, data) -> None:
    """Only rank 1 gets SIGTERM (after rank 0 has logged 2 steps); both ranks must stop after the same step."""
    import signal
    import threading
    import time

    from trainer.stop import TrainingInterrupted

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    run = root / "stopped"

    def signal_when_two_steps_are_logged():
        while not (run / "log.jsonl").exists() or len(read_log(run)) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    if rank == 1:
        threading.Thread(target=signal_when_two_steps_are_logged, daemon=True).start()
    try:
        result = run_training(_cfg(run, model, data, max_steps=100_000, save_every=100_000))
        outcome = {"finished": result.finished}
    except TrainingInterrupted as e:
        outcome = {"exit_code": e.exit_code, "message": str(e)}
    torch.save(outcome, root / f"rank{rank}.pt")


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, tied_tiny_and_essay):
    model, data = tied_tiny_and_essay
    ranks = spawn_gloo_ranks(_stop_worker, (2, free_ports(1)[0], tmp_path, model, data), tmp_path)
    assert [r.get("exit_code") for r in ranks] == [143, 143], ranks  # rank 0 got no signal: it followed rank 1
    last = read_log(tmp_path / "stopped")[-1]["step"]
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) == [f"step-{last:06d}"]
    assert all(f"after step {last}," in r["message"] for r in ranks)
