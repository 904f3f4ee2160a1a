"""benchmarks/train_7b.py runs on CPU at a tiny size: every lever row, its FLOP counts, resumable results."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


def load_bench():
    return load_benchmark("train_7b")


def test_train_7b_benchmark_runs_on_cpu(tmp_path):
    bench = load_bench()
    args = [
        "--model",
        "random:tiny",
        "--lengths",
        "128,256",
        "--lever-lengths",
        "128",
        "--device",
        "cpu",
        "--levers",
        "base,hf-loss,offload,offload@256,sdpa-math,full-attn,no-checkpointing",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(args) == 0
    result = json.loads((tmp_path / "train_7b.json").read_text())
    rows = result["results"]
    assert set(rows) == {
        "base@128",
        "base@256",
        "hf-loss@128",
        "offload@128",
        "offload@256",
        "sdpa-math@128",
        "full-attn@128",
        "no-checkpointing@128",
    }
    assert all("error" not in r and r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in rows.values()), rows
    # lr 0 and the same tokens: every lever that leaves the math unchanged reports the base loss
    for key in ("hf-loss@128", "offload@128", "sdpa-math@128", "no-checkpointing@128"):
        assert abs(rows[key]["loss"] - rows["base@128"]["loss"]) < 1e-4, key
    assert rows["full-attn@128"]["loss"] != rows["base@128"]["loss"]  # S2 is a different attention
    r = rows["base@256"]
    hidden, layers, vocab = 64, 2, 49152  # random:tiny: 4 heads / 2 KV heads of 16, MLP 128, untied LM head
    per_layer = 2 * hidden * hidden + 2 * 32 * hidden + 3 * hidden * 128  # q,o; k,v (GQA); gate, up, down
    assert r["matmul_params"] == layers * per_layer + vocab * hidden  # LoRA matrices and the embedding excluded
    assert r["linear_flops"] == 4 * r["matmul_params"] * 256
    assert r["full_param_step_flops"] == 6 * r["matmul_params"] * 256
    assert r["attn_flops_full"] == 3 * 2 * 256**2 * hidden * layers
    assert r["attn_flops_s2"] == r["attn_flops_full"] / 4
    assert r["model_flops"] == r["linear_flops"] + r["attn_flops_s2"]
    assert (
        rows["full-attn@128"]["model_flops"]
        == rows["full-attn@128"]["linear_flops"] + rows["full-attn@128"]["attn_flops_full"]
    )
    # a rerun measures only what is missing
    before = (tmp_path / "train_7b.json").read_text()
    assert bench.main(args) == 0
    assert json.loads((tmp_path / "train_7b.json").read_text())["results"] == json.loads(before)["results"]


def test_combined_levers_are_parsed_and_checked():
    bench = load_bench()
    assert bench.lever_parts("compile+offload") == ["compile", "offload"]
    assert bench.lever_parts("base") == ["base"]
    for bad, why in [
        ("compile+fast", "unknown lever 'fast'"),
        ("offload+offload", "repeats"),
        ("base+compile", "combines with nothing"),
        ("sdpa-flash+sdpa-cudnn", "exclude each other"),
        ("offload+no-checkpointing", "exclude each other"),
        ("full-attn+s2-flash-attn", "exclude"),
    ]:
        with pytest.raises(ValueError, match=why):
            bench.lever_parts(bad)
    with pytest.raises(SystemExit):
        bench.main(["--levers", "compile+nope", "--out", "unused"])


def test_compile_and_offload_together_on_cpu(tmp_path):
    """`compile+offload@N` at two lengths in one command (the H100 command's shape), same loss as base."""
    import torch

    bench = load_bench()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    args = [
        "--model",
        "random:tiny",
        "--lengths",
        "128",
        "--device",
        "cpu",
        "--levers",
        "base,compile+offload@128,compile+offload@256",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(args) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the layers ran compiled, at both lengths
    rows = json.loads((tmp_path / "train_7b.json").read_text())["results"]
    assert set(rows) == {"base@128", "compile+offload@128", "compile+offload@256"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["compile+offload@128"]["lever"] == "compile+offload"
    assert abs(rows["compile+offload@128"]["loss"] - rows["base@128"]["loss"]) < 1e-4
    assert (
        rows["compile+offload@256"]["model_flops"]
        == rows["compile+offload@256"]["linear_flops"] + rows["compile+offload@256"]["attn_flops_s2"]
    )
