"""benchmarks/fsdp_plan.py: the per-GPU memory plan for FSDP. Invariants of its arithmetic only — the
plan's agreement with a measurement is reported in benchmarks/train_fsdp.md, never asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
fp = load_benchmark("fsdp_plan")


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_shards_cover_every_row_once_as_torch_chunk_splits(dim0, world):
    rows = fp.rank_rows(dim0, world)
    assert sum(rows) == dim0 and len(rows) == world
    assert all(0 <= r <= fp.shard_rows(dim0, world) for r in rows)
    assert 0 <= world * fp.shard_rows(dim0, world) - dim0 < world  # padding: less than one row per rank
    chunks = [len(c) for c in torch.arange(dim0).chunk(world)]
    assert rows == chunks + [0] * (world - len(chunks))


@pytest.fixture(scope="module")
def tiny():
    step_module, config = fp.build("tiny", 256)
    return step_module, config, fp.params_of(step_module)


def test_params_are_the_trainers_trainable_set(tiny):
    step_module, _, params = tiny
    trainable = [p for p in params if p.trainable]
    assert sum(p.numel for p in trainable) == step_module.model.get_nb_trainable_parameters()[0]
    assert all(p.bytes_per == 4 for p in trainable) and all(p.bytes_per == 2 for p in params if not p.trainable)
    assert {p.unit for p in params} == {"root", "layer.0", "layer.1"}
    assert any(".modules_to_save." in p.name and p.unit == "root" for p in trainable)  # LoRA+ embedding copy


def test_one_rank_holds_everything(tiny):
    _, config, params = tiny
    one = fp.plan(params, config, 256, world=1)
    assert one["base_shard"] == sum(p.numel * 2 for p in params if not p.trainable)
    n_trainable = sum(p.numel for p in params if p.trainable)
    assert (one["trainable_params"], one["grads"], one["adamw"]) == (4 * n_trainable, 4 * n_trainable, 8 * n_trainable)
    assert one["gathered_root"] == sum(p.numel * 2 for p in params if p.unit == "root")
    assert one["total"] == sum(one[k] for k in fp.COMPONENTS)


@pytest.mark.parametrize("world", [2, 3, 8, 64])
def test_shards_sum_to_the_whole_up_to_padding(tiny, world):
    _, config, params = tiny
    one, many = fp.plan(params, config, 256, 1), fp.plan(params, config, 256, world)
    frozen = [p for p in params if not p.trainable]
    padding_bound = sum(world * math.prod(p.shape[1:]) * p.bytes_per for p in frozen)
    assert 0 <= world * many["base_shard"] - one["base_shard"] < padding_bound
    for key in ("trainable_params", "grads", "adamw"):
        assert many[key] * world >= one[key] and many[key] <= one[key]
    # what is gathered, kept unsharded or saved per sequence is whole on every rank (padding aside)
    assert many["gathered_root"] >= one["gathered_root"]
    for key in ("root_grad_unsharded", "checkpoints", "transient"):
        assert many[key] == one[key]
    assert many["total"] == sum(many[k] for k in fp.COMPONENTS)


def test_per_sequence_memory_grows_linearly_with_ctx(tiny):
    _, config, params = tiny
    short, long = fp.plan(params, config, 4096, 2, chunk=512), fp.plan(params, config, 8192, 2, chunk=512)
    assert long["checkpoints"] == 2 * short["checkpoints"]
    assert fp.layer_working_bytes(config, 8192) == 2 * fp.layer_working_bytes(config, 4096)
    assert long["base_shard"] == short["base_shard"] and long["gathered_layers"] == short["gathered_layers"]


def test_the_trainers_fsdp2_sharding_matches_the_arithmetic(tmp_path):
    """The script shards the tiny model with trainer.fsdp.shard over a fake process group (a subprocess: the
    group is global state) and checks every local shard; world 3 leaves padded shards."""
    pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fsdp_plan.py"),
            "--runs",
            "tiny@256/2,tiny@256/3",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = json.loads((tmp_path / "plan.json").read_text())["runs"]
    assert [r["world"] for r in runs] == [2, 3]
    assert all(r["fsdp2_checked"] is True for r in runs)
    assert "total" in proc.stdout
