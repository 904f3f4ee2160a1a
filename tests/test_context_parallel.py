"""S2-Attn under context parallelism on CPU: gloo ranks, each holding one shard of the sequence, against
S2-Attn over the whole sequence in one process — the attention alone (forward and the gradients of q, k, v)
on 2 and 4 ranks, and a tiny Llama's loss and weight gradients on 2 ranks. Plus the sharding plan's
refusals and the targets' alignment across shard boundaries."""

from __future__ import annotations

import contextlib

import pytest
import torch

from llqa.errors import LlqaError
from tests.conftest import build_tiny_llama, free_ports, spawn_gloo_ranks, tiny_train_config
from trainer.context_parallel import context_parallel_plan, shard_batch
from trainer.s2attn import s2_attention

N, G = 64, 16  # 4 groups of 16: 2 ranks hold 2 groups each, 4 ranks one each


@contextlib.contextmanager
def _gloo_group(rank: int, world: int, port: int):
    """This rank's gloo process group, torn down however the body ends. Ranks meet at a barrier before the
    teardown, and a rank whose body raised still destroys its group: one that exited with the group alive
    died of SIGABRT ("terminate called without an active exception"), which hid the Python error behind it."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _qkv(heads, kv_heads, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, N, 8, generator=g)
    k = torch.randn(2, kv_heads, N, 8, generator=g)
    v = torch.randn(2, kv_heads, N, 8, generator=g)
    weight = torch.randn(2, N, heads, 8, generator=g)
    return q, k, v, weight


def _attention_worker(rank: int, world: int, port: int, out, heads: int, kv_heads: int) -> None:
    from trainer.context_parallel import ContextParallelGroup, s2_attention_shard

    with _gloo_group(rank, world, port):
        q, k, v, weight = _qkv(heads, kv_heads)
        shard = N // world
        s, e = rank * shard, (rank + 1) * shard
        local = [x[:, :, s:e].clone().requires_grad_() for x in (q, k, v)]
        o = s2_attention_shard(*local, G, ContextParallelGroup.of())
        (o * weight[:, s:e]).sum().backward()
        torch.save({"out": o.detach(), "grads": [x.grad for x in local]}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("heads", [(4, 4), (6, 3)], ids=["mha", "gqa"])
def test_sharded_s2_equals_whole_sequence(tmp_path, world, heads):
    ranks = spawn_gloo_ranks(
        _attention_worker, (world, free_ports(1)[0], tmp_path, *heads), tmp_path, nprocs=world, timeout_s=120
    )
    q, k, v, weight = (x.requires_grad_() if i < 3 else x for i, x in enumerate(_qkv(*heads)))
    want = s2_attention(q, k, v, G)
    (want * weight).sum().backward()
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks], dim=1), want.detach(), rtol=1e-5, atol=1e-6)
    for i, full in enumerate((q, k, v)):
        got = torch.cat([r["grads"][i] for r in ranks], dim=2)
        torch.testing.assert_close(got, full.grad, rtol=1e-5, atol=1e-6, msg=f"grad {'qkv'[i]}")


def _model_loss(model, ids, targets, positions):
    from trainer.loss import chunked_causal_lm_loss, lm_head_of

    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    weight, bias, softcap = lm_head_of(model)
    return chunked_causal_lm_loss(hidden, weight, targets, bias=bias, softcap=softcap, aligned=True)


def _tiny_s2_model():
    from trainer.s2attn import enable_s2_attention

    model = build_tiny_llama(512, seed=5, max_position_embeddings=N).train()
    enable_s2_attention(model, group_ratio=G / N, backend="sdpa")
    return model


def _batch():
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 512, (2, N), generator=g)
    labels = ids.clone()
    labels[0, :10] = -100  # some positions unscored, as an SFT prompt is
    return ids, labels


def _model_worker(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    from trainer.context_parallel import ContextParallelGroup, context_parallel_loss, sharded_s2

    with _gloo_group(rank, world, port):
        cp = ContextParallelGroup.of()
        model = _tiny_s2_model()
        ids, labels = _batch()
        local_ids, targets, positions = shard_batch(ids, labels, context_parallel_plan(N, world, "s2", G / N), rank)
        with sharded_s2(cp):
            mean, count = _model_loss(model, local_ids, targets, positions)
            loss = context_parallel_loss(mean * count, count, cp)
            loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad
        torch.save({"loss": total, "grads": grads}, out / f"rank{rank}.pt")


def test_tiny_llama_loss_and_gradients_equal_one_process(tmp_path):
    """Global position ids, targets aligned across the shard boundary, the token-weighted loss over both
    ranks and the weights' gradients summed over them: exactly the one-process S2-Attn step."""
    ranks = spawn_gloo_ranks(_model_worker, (2, free_ports(1)[0], tmp_path), tmp_path, nprocs=2, timeout_s=180)
    model = _tiny_s2_model()
    ids, labels = _batch()
    from trainer.loss import causal_lm_loss

    loss, _ = causal_lm_loss(model, ids, labels)
    loss.backward()
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- plans and refusals


def test_plan_splits_at_group_boundaries():
    plan = context_parallel_plan(262_144, 2)
    assert (plan.shard, plan.group_size) == (131_072, 65_536) and plan.bounds(1) == (131_072, 262_144)
    assert context_parallel_plan(262_144, 4).shard == 65_536
    assert context_parallel_plan(262_144, 8, "s2", 0.125).shard == 32_768
    assert context_parallel_plan(262_144, 8, "full").shard == 32_768


@pytest.mark.parametrize(
    "args, what, fix",
    [
        ((262_144, 8), "4 groups per sequence", "--context-parallel 1 or 2 or 4"),
        ((4096, 3), "cannot each hold whole groups", "--context-parallel 1 or 2 or 4"),
        ((1000, 2), "multiple of 16", "--ctx 992, 1,008"),
        ((1002, 2, "full"), "4 load-balanced chunks", "--ctx 1,000, 1,004"),
        ((4096, 0), "at least 1", "--context-parallel 2"),
    ],
)
def test_plan_refusals_name_the_nearest_valid_choice(args, what, fix):
    with pytest.raises(LlqaError) as e:
        context_parallel_plan(*args)
    assert what in e.value.what and fix in e.value.fix


def test_targets_are_aligned_across_the_shard_boundary():
    ids = torch.arange(16)[None]
    labels = ids.clone()
    plan = context_parallel_plan(16, 2)
    first, t0, p0 = shard_batch(ids, labels, plan, 0)
    second, t1, p1 = shard_batch(ids, labels, plan, 1)
    assert t0[0, -1].item() == second[0, 0].item()  # the last token of shard 0 predicts the first of shard 1
    assert t1[0, -1].item() == -100 and p1[0].tolist() == list(range(8, 16))


# --------------------------------------------------------------------------- llqa train --context-parallel


def _train_cfg(out, model, data, **kw):
    return tiny_train_config(out, model, data, **{"method": "longlora", "batch_size": 4, "lr": 2e-3, "save_every": 2,
                                                  "seed": 11, **kw})  # fmt: skip


def _train_worker(rank: int, world: int, port: int, root, model, data, context_parallel: int, extra: dict) -> None:
    import os

    from trainer.loop import run_training

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    done = run_training(_train_cfg(root / "cp", model, data, context_parallel=context_parallel, **extra))
    # the trained weights as the run wrote them (the single-process format, also under FSDP)
    from safetensors.torch import load_file

    weights = load_file(root / "cp" / "adapter_model.safetensors")
    torch.save({"losses": done.losses, "weights": weights, "finished": done.finished}, root / f"rank{rank}.pt")


@pytest.mark.parametrize(
    "world, context_parallel, extra",
    [(2, 2, {}), (4, 2, {}), (2, 2, {"parallel": "fsdp"})],
    ids=["cp2", "dp2xcp2", "cp2-fsdp"],
)
def test_train_with_context_parallel_equals_one_process(tmp_path, tied_tiny_and_essay, world, context_parallel, extra):
    """`llqa train --method longlora --context-parallel 2` under 2 gloo ranks (and 2 × 2 with data parallelism,
    and under FSDP): the same losses and written adapter as one process on the same global batch."""
    from safetensors.torch import load_file

    from trainer.loop import run_training

    model, data = tied_tiny_and_essay
    args = (world, free_ports(1)[0], tmp_path, model, data, context_parallel, extra)
    ranks = spawn_gloo_ranks(_train_worker, args, tmp_path, nprocs=world, timeout_s=300)
    run_training(_train_cfg(tmp_path / "single", model, data))
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    losses = [r["losses"] for r in ranks]
    assert all(r["finished"] for r in ranks) and all(x == losses[0] for x in losses)
    from trainer.runlog import read_log

    want = [r["loss"] for r in read_log(tmp_path / "single")]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert ranks[0]["weights"].keys() == single.keys()
    for name, w in single.items():
        torch.testing.assert_close(ranks[0]["weights"][name], w, rtol=1e-4, atol=1e-5, msg=name)


def _sft_data(root, essay) -> str:
    import json

    words = essay.read_text().split()
    items = [
        {"instruction": " ".join(words[i * 7 : i * 7 + 6 + 3 * i]) + "?", "output": " ".join(words[i : i + 2 + i % 3])}
        for i in range(8)
    ]
    path = root / "sft.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return str(path)


def _sft_worker(rank: int, world: int, port: int, root, model, data) -> None:
    import os

    from trainer.loop import run_training

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    cfg = _train_cfg(root / "cp", model, data, task="sft", context_parallel=2, micro_batch_size=2)
    done = run_training(cfg)
    torch.save({"losses": done.losses, "finished": done.finished}, root / f"rank{rank}.pt")


def test_sft_with_context_parallel_equals_one_process(tmp_path, tied_tiny_and_essay, monkeypatch):
    """SFT's right-padded items of varying length: padded to a width that splits into whole groups per rank,
    they train like one process padding to the same width (the padding is unscored and, under causal
    attention, read by no real token)."""
    from safetensors.torch import load_file

    from trainer.config import TrainConfig
    from trainer.loop import run_training

    model, essay = tied_tiny_and_essay
    data = _sft_data(tmp_path, essay)
    ranks = spawn_gloo_ranks(_sft_worker, (2, free_ports(1)[0], tmp_path, model, data), tmp_path, timeout_s=300)
    monkeypatch.setattr(TrainConfig, "pad_multiple", property(lambda self: 16))  # the width the 2 ranks padded to
    single = run_training(_train_cfg(tmp_path / "single", model, data, task="sft", micro_batch_size=2))
    assert all(r["finished"] for r in ranks) and single.data["items"] == 8
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    want = load_file(tmp_path / "single" / "adapter_model.safetensors")
    got = load_file(tmp_path / "cp" / "adapter_model.safetensors")
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-5, msg=name)


def test_context_parallel_refusals():
    with pytest.raises(LlqaError, match="full attention"):
        _train_cfg("/tmp/x", "m", "d", method="lora+", context_parallel=2)
    with pytest.raises(LlqaError, match="make 4 groups|4 groups per sequence"):
        _train_cfg("/tmp/x", "m", "d", context_parallel=8)
    with pytest.raises(LlqaError, match="--context-parallel"):
        _train_cfg("/tmp/x", "m", "d", context_parallel=0)


def test_context_parallel_needs_its_processes(tmp_path, tied_tiny_and_essay):
    from trainer.loop import run_training

    model, data = tied_tiny_and_essay
    with pytest.raises(LlqaError, match="--context-parallel 2 splits each sequence over 2 processes, but 1 process"):
        run_training(_train_cfg(tmp_path / "one", model, data, context_parallel=2))
