"""benchmarks/s2attn.py runs end to end on CPU at a tiny size and writes its result file."""

from __future__ import annotations

import json

import torch

from tests.conftest import load_benchmark
from trainer import s2attn


def load_bench():
    return load_benchmark("s2attn")


def test_benchmark_runs_on_cpu(tmp_path):
    bench = load_bench()
    assert (
        bench.main(
            [
                "--model",
                "random:tiny",
                "--lengths",
                "64",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--dtype",
                "float32",
                "--device",
                "cpu",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "s2attn.json").read_text())
    rows = {r["variant"]: r for r in result["results"] if "step_s" in r}
    assert set(rows) == {"full", "naive", "s2", "s2-sdpa", "s2-padded", "floor"}
    assert all(r["step_s"] > 0 for r in rows.values())
    assert rows["floor"]["kernel"].startswith("none") and rows["floor"]["group_size"] is None
    skipped = [r for r in result["results"] if "step_s" not in r]  # the varlen kernel needs CUDA
    assert [r["variant"] for r in skipped] == ["s2-varlen"] and skipped[0]["error"].startswith("unavailable")
    assert rows["s2"]["group_size"] == 16
    assert set(result["speedups"]) == {"naive@64", "s2@64", "s2-sdpa@64", "s2-padded@64", "floor@64"}
    # on a CPU `auto` is the SDPA backend; the one-call layout computes the same attention as the three-call one
    assert rows["s2"]["kernel"] == rows["s2-sdpa"]["kernel"] == "torch SDPA (3 calls per layer)"
    assert abs(rows["s2-padded"]["loss"] - rows["s2-sdpa"]["loss"]) < 1e-4
    # the attention variants train the same model on the same tokens: losses agree to a few percent
    losses = [r["loss"] for name, r in rows.items() if name != "floor"]
    assert max(losses) - min(losses) < 0.05 * max(losses)


def test_naive_baseline_is_the_leaky_roll():
    """The baseline really is LongLoRA's roll: token 0 of a shifted head sees the last tokens."""
    bench = load_bench()

    class Module:
        class config:
            s2_group_ratio = 0.25

    q, k, v = (torch.randn(1, 4, 32, 8, requires_grad=True) for _ in range(3))
    out, _ = bench.naive_roll_attention(Module, q, k, v, None)
    out[:, 0, 2:].sum().backward()  # a shifted head's first token
    assert k.grad[:, 2:, 28:].abs().sum() > 0


def test_backend_sweep_runs_on_cpu(tmp_path):
    """benchmarks/s2attn_backends.py: every case and variant measured in interleaved rounds, with the work per call
    and the backend `auto` resolves to (SDPA on a CPU)."""
    sweep = load_benchmark("s2attn_backends")
    args = ["--cases", "tiny@64,tiny@128", "--variants", "full,s2-sdpa,s2", "--steps", "1", "--rounds", "2"]
    assert sweep.main([*args, "--warmup", "0", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "s2attn_backends.json").read_text())
    rows = {(r["tokens"], r["variant"]): r for r in result["results"]}
    assert set(rows) == {(n, v) for n in (64, 128) for v in ("full", "s2-sdpa", "s2")}
    assert all(len(r["steps_s"]) == 2 and len(r["round_medians_s"]) == 2 for r in rows.values())
    assert rows[(128, "s2")]["work"] == 4 * 16 * 128 * 32  # tiny: 4 heads of 16 dims, group 128 / 4
    assert {r["auto_resolves"] for r in rows.values()} == {"sdpa"}
    assert "speedup_vs_full" in rows[(64, "s2")] and "speedup_vs_full" not in rows[(64, "full")]
    assert result["env"]["varlen_max_work"] == s2attn.VARLEN_MAX_WORK
