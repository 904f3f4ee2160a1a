"""S2-Attn as a pure function: equal to plain masked attention (forward and backward), no future leak,
the length rule, the head split, GQA without repeated K/V, and the flash-attn varlen plumbing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llqa.errors import LlqaError
from trainer import s2attn
from trainer.s2attn import (
    partition,
    s2_attention,
    s2_group_size,
    s2_length_multiple,
    shifted_heads,
    training_segments,
)

# --------------------------------------------------------------------------- reference


def run_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """Maximal runs of equal ids numbered 0, 1, ... per row."""
    change = torch.ones_like(segment_ids, dtype=torch.long)
    change[:, 0] = 0
    change[:, 1:] = (segment_ids[:, 1:] != segment_ids[:, :-1]).long()
    return change.cumsum(1)


def reference_s2(q, k, v, group_size, segment_ids=None, shift=True, scale=None):
    """Plain masked attention with an explicit boolean mask and softmax, K/V repeated, per head:
    token i sees j iff j <= i, i and j are in the same piece, and in the same segment run.
    Pieces: unshifted heads floor(i / G); shifted heads floor((i + G/2) / G) — the half groups at
    both ends are pieces of their own, nothing wraps around."""
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    k, v = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)
    pos = torch.arange(N)
    first_shifted = Hq // 2 if Hkv == 1 else (Hkv // 2) * (Hq // Hkv)
    runs = run_ids(segment_ids) if segment_ids is not None else torch.zeros(B, N, dtype=torch.long)
    same_run = runs[:, None, :, None] == runs[:, None, None, :]  # (B, 1, N, N)
    masks = []
    for h in range(Hq):
        piece = (pos + group_size // 2) // group_size if shift and h >= first_shifted else pos // group_size
        masks.append((piece[:, None] == piece[None, :]) & (pos[None, :] <= pos[:, None]))
    mask = torch.stack(masks)[None] & same_run  # (B, Hq, N, N)
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(D))
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (probs @ v).transpose(1, 2)  # (B, N, Hq, D)


def naive_roll_s2(q, k, v, group_size):
    """LongLoRA's roll formulation (the leaky one): shifted half rolled by −G/2, then grouped."""
    B, H, N, D = q.shape
    half = H // 2

    def grouped(x):
        h = x.shape[1]
        return x.reshape(B, h, N // group_size, group_size, D).transpose(1, 2).reshape(-1, h, group_size, D)

    outs = []
    for sl, roll in ((slice(0, half), 0), (slice(half, H), -(group_size // 2))):
        qs, ks, vs = (x[:, sl].roll(roll, dims=2) for x in (q, k, v))
        o = F.scaled_dot_product_attention(grouped(qs), grouped(ks), grouped(vs), is_causal=True)
        o = o.reshape(B, N // group_size, -1, group_size, D).transpose(1, 2).reshape(B, -1, N, D)
        outs.append(o.roll(-roll, dims=2))
    return torch.cat(outs, dim=1).transpose(1, 2)


def qkv(B, Hq, Hkv, N, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, N, D, generator=g, requires_grad=True) for h in (Hq, Hkv, Hkv)]


def grads(fn, q, k, v, weight):
    out = fn(q, k, v)
    (out * weight).sum().backward()
    result = out.detach(), *(x.grad.clone() for x in (q, k, v))
    for x in (q, k, v):
        x.grad = None
    return result


def assert_close_fwd_bwd(fn, ref, q, k, v):
    weight = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], generator=torch.Generator().manual_seed(1))
    for got, want, name in zip(
        grads(fn, q, k, v, weight), grads(ref, q, k, v, weight), ("out", "dq", "dk", "dv"), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


PACKED = [[0] * 5 + [1] * 19 + [2] * 8, [7] * 32]  # B=2, N=32: cuts inside and across pieces
LEFT_PAD = [[-1] * 6 + [3] * 26, [-1] * 3 + [0] * 10 + [-1] * 2 + [1] * 17]


# --------------------------------------------------------------------------- the pure function


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (8, 2), (4, 1), (9, 3), (1, 1), (12, 4)])
@pytest.mark.parametrize("group", [32, 16, 8])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("backend", ["sdpa", "sdpa-padded"])
def test_sdpa_backend_equals_masked_reference(heads, group, shift, backend):
    """Both SDPA layouts: three calls per layer, and one call with the end half groups padded (MQA and
    single-head models fall back to the first)."""
    q, k, v = qkv(2, *heads, N=32)
    assert_close_fwd_bwd(
        lambda *a: s2_attention(*a, group, shift=shift, backend=backend),
        lambda *a: reference_s2(*a, group, shift=shift),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("segments", [PACKED, LEFT_PAD], ids=["packed", "padded"])
@pytest.mark.parametrize("heads", [(4, 2), (6, 3), (4, 1)])
@pytest.mark.parametrize("group", [16, 8])
def test_segmented_equals_masked_reference(segments, heads, group):
    q, k, v = qkv(2, *heads, N=32, seed=2)
    seg = torch.tensor(segments)
    assert_close_fwd_bwd(
        lambda *a: s2_attention(*a, group, segment_ids=seg, backend="sdpa", scale=0.3),
        lambda *a: reference_s2(*a, group, segment_ids=seg, scale=0.3),
        q,
        k,
        v,
    )


def test_padded_layout_is_one_sdpa_call_per_layer(monkeypatch):
    """What `sdpa-padded` exists for: one attention call per layer where `sdpa` makes three (the host's
    cost per call bounds a small model's step at 16k). Segmented batches still cut at segments."""
    import torch.nn.functional as F

    real, calls = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    q, k, v = qkv(1, 9, 3, N=64)
    s2_attention(q, k, v, 16, backend="sdpa")
    assert len(calls) == 3
    calls.clear()
    s2_attention(q, k, v, 16, backend="sdpa-padded")
    # KV head 0's 3 query heads over 4 groups, KV heads 1-2's over 5 (the end half groups padded)
    assert calls == [torch.Size([1 * 4 + 2 * 5, 3, 16, 8])]
    calls.clear()
    s2_attention(q, k, v, 16, segment_ids=torch.tensor([[0] * 20 + [1] * 44]), backend="sdpa-padded")
    assert len(calls) > 3  # one call per (piece ∩ segment)


def test_one_group_without_shift_is_causal_sdpa():
    q, k, v = qkv(2, 4, 2, N=24)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(s2_attention(q, k, v, 24, shift=False), full, atol=1e-6, rtol=1e-5)


def test_s2_differs_from_full_attention():
    """Guards the reference tests against a degenerate S2 that is just causal attention."""
    q, k, v = qkv(1, 4, 2, N=32)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    assert not torch.allclose(s2_attention(q, k, v, 8), full, atol=1e-3)


def future_gradient(fn, N, t):
    q, k, v = qkv(1, 4, 2, N=N, seed=3)
    fn(q, k, v)[:, t].sum().backward()
    return max(x.grad[:, :, t + 1 :].abs().max().item() for x in (q, k, v))


@pytest.mark.parametrize("t", [0, 3, 4, 11, 20, 27, 30])
def test_no_future_leak(t):
    """d out[t] / d {q, k, v}[t' > t] is exactly zero, at every kind of position (first half group,
    group edges, last half group)."""
    assert future_gradient(lambda *a: s2_attention(*a, 8), 32, t) == 0.0


def test_naive_roll_leaks():
    """The same check catches LongLoRA's roll formulation: token 0 sees the last half group."""
    assert (
        future_gradient(
            lambda q, k, v: naive_roll_s2(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), 8), 32, 0
        )
        > 0
    )


def test_gqa_never_repeats_kv(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], kw.get("enable_gqa")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = qkv(1, 8, 2, N=32)
    s2_attention(q, k, v, 8)
    s2_attention(q, k, v, 8, segment_ids=torch.tensor([PACKED[0]]))
    assert calls and all(kv == 1 and hq == 4 and gqa for hq, kv, gqa in calls)


# --------------------------------------------------------------------------- rules


def test_length_rule_names_the_multiple():
    assert s2_length_multiple(0.25) == 8 and s2_length_multiple(0.5) == 4 and s2_length_multiple(1) == 2
    assert s2_length_multiple(2 / 3) == 3  # G = 2N/3 is even whenever N is a multiple of 3
    assert s2_group_size(65536, 0.25) == 16384
    with pytest.raises(LlqaError, match="multiple of 8, got 100"):
        s2_group_size(100, 0.25)
    with pytest.raises(LlqaError, match="group-ratio"):
        s2_group_size(64, 0)
    with pytest.raises(LlqaError, match="even"):
        s2_attention(*qkv(1, 2, 2, N=12), 6 // 2)


def test_group_size_uses_no_fraction_after_the_first_call(monkeypatch):
    """Every layer asks for its group size inside a compiled layer, where torch 2.11's dynamo could not trace
    Fraction's comparisons and ran the whole attention forward eagerly: once a ratio has been checked, the size
    is integer arithmetic on a kept (numerator, denominator)."""
    assert s2_group_size(64, 0.25) == 16
    monkeypatch.setattr(s2attn, "Fraction", None)  # any use of Fraction now fails
    assert s2_group_size(65536, 0.25) == 16384 and s2_length_multiple(0.25) == 8
    with pytest.raises(LlqaError, match="group ratio 1/4 needs sequence lengths that are a multiple of 8"):
        s2_group_size(100, 0.25)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa-padded"])
def test_training_forward_compiles_without_graph_breaks(backend):
    """S2-Attn's training forward traces into one graph (`fullgraph=True` raises at any graph break), as it must
    inside `--compile`'s compiled layers: group size, head split and pieces are constants of the graph."""
    module = torch.nn.Module()
    module.config = type("Config", (), {s2attn.RATIO_ATTR: 0.25, s2attn.BACKEND_ATTR: backend})()
    module.is_causal = True
    s2attn._ratio_parts(0.25)  # as enable_s2_attention does, eagerly
    torch._dynamo.reset()
    forward = torch.compile(
        lambda q, k, v: s2attn.s2_attention_forward(module, q, k, v, None, scaling=0.3)[0],
        backend="eager",
        fullgraph=True,
    )
    q, k, v = qkv(1, 6, 3, N=64, seed=4)
    torch.testing.assert_close(forward(q, k, v), reference_s2(q, k, v, 16, scale=0.3), atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_head_split_follows_kv_heads():
    assert shifted_heads(8, 8) == 4  # MHA: LongLoRA's heads [H // 2, H)
    assert shifted_heads(9, 9) == 4
    assert shifted_heads(8, 2) == 4 and shifted_heads(32, 8) == 16
    assert shifted_heads(9, 3) == 3  # SmolLM2: KV heads 1 and 2 (query heads 3..8) are shifted
    assert shifted_heads(4, 1) == 2 and shifted_heads(1, 1) == 0


def test_partition_never_wraps():
    assert partition(32, 8, False) == [0, 8, 16, 24, 32]
    assert partition(32, 8, True) == [0, 4, 12, 20, 28, 32]
    assert partition(8, 8, True) == [0, 4, 8]


def test_training_segments():
    code = torch.tensor([[0, 0, 0, -1, -1], [-1, -1, 0, 0, 0], [0, 0, 1, 1, -2]], dtype=torch.int32)
    ids = training_segments(code)
    assert ids[0].unique().numel() == 1  # right padding joins the sequence: harmless under causality
    assert run_ids(ids[1:2]).tolist() == [[0, 0, 1, 1, 1]]  # left padding is its own segment
    assert run_ids(ids[2:3]).tolist() == [[0, 0, 1, 1, 1]]
    assert training_segments(torch.tensor([[0, 0, -1]], dtype=torch.int32)) is None
    assert training_segments(None) is None


# --------------------------------------------------------------------------- flash-attn backend


def varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_varlen_func's documented contract in plain torch: q (total, Hq, D), k/v (total, Hkv, D),
    sequences delimited by cu_seqlens, causal inside each."""
    assert torch.equal(cu_q, cu_k) and causal and cu_q.dtype == torch.int32
    assert max_q == max(int(e - s) for s, e in zip(cu_q[:-1], cu_q[1:], strict=True))
    outs = []
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1)[None],
            k[s:e].transpose(0, 1)[None],
            v[s:e].transpose(0, 1)[None],
            is_causal=True,
            scale=softmax_scale,
            enable_gqa=True,
        )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("segments", [None, PACKED, LEFT_PAD], ids=["dense", "packed", "padded"])
def test_flash_plumbing_equals_reference(monkeypatch, segments):
    """Our cu_seqlens / head split / layout around flash_attn_varlen_func, checked with a pure-torch
    stand-in of its documented API (the real kernel is tested on GPU when installed)."""
    seg = None if segments is None else torch.tensor(segments)
    q, k, v = qkv(2, 6, 3, N=32, seed=4)
    assert_close_fwd_bwd(
        lambda *a: s2attn._varlen_s2(varlen_stand_in, *a, 8, seg, True, None, 0.0),
        lambda *a: reference_s2(*a, 8, segment_ids=seg),
        q,
        k,
        v,
    )


def torch_varlen_stand_in(causal_kw: str):
    """torch.nn.attention.varlen.varlen_attn's documented contract in plain torch, with the causal
    switch of torch 2.10 (`is_causal`) or of 2.11 and later (`window_size=(-1, 0)`)."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, enable_gqa=False, **kw):
        causal = kw["is_causal"] if causal_kw == "is_causal" else tuple(kw["window_size"]) == (-1, 0)
        assert enable_gqa == (q.shape[1] != k.shape[1])
        return varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal)

    if causal_kw == "is_causal":
        return lambda q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False, scale=None, enable_gqa=False: varlen_attn(
            q, k, v, cu_q, cu_k, max_q, max_k, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    return lambda q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, enable_gqa=False: varlen_attn(
        q, k, v, cu_q, cu_k, max_q, max_k, window_size=window_size, scale=scale, enable_gqa=enable_gqa
    )


@pytest.mark.parametrize("causal_kw", ["window_size", "is_causal"])
@pytest.mark.parametrize("segments", [None, PACKED], ids=["dense", "packed"])
def test_torch_varlen_adapter_equals_reference(monkeypatch, causal_kw, segments):
    """The adapter that puts torch's own varlen kernel behind flash-attn's calling convention: its
    causal switch (either torch API), GQA and the softmax scale, checked with a pure-torch stand-in."""
    import torch.nn.attention.varlen as torch_varlen

    monkeypatch.setattr(torch_varlen, "varlen_attn", torch_varlen_stand_in(causal_kw))
    s2attn._torch_varlen_params.cache_clear()
    try:
        seg = None if segments is None else torch.tensor(segments)
        q, k, v = qkv(2, 6, 3, N=32, seed=5)
        assert s2attn._torch_varlen_fits(q, 0.3)
        assert_close_fwd_bwd(
            lambda *a: s2attn._varlen_s2(s2attn._torch_varlen_func, *a, 8, seg, True, 0.3, 0.0),
            lambda *a: reference_s2(*a, 8, segment_ids=seg, scale=0.3),
            q,
            k,
            v,
        )
    finally:
        s2attn._torch_varlen_params.cache_clear()


def aten_flash_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *, scale=None):
    """aten::_flash_attention_forward's varlen contract in plain torch: (total, H, D) views with grouped K/V
    heads as they are, a 5-tuple whose first element is the output."""
    assert k.shape[1] < q.shape[1] or k.shape[1] == q.shape[1]  # never repeated for it
    assert dropout_p == 0.0 and return_debug_mask is False and q.stride(-1) == 1
    out = varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=is_causal)
    return out, None, None, None, None


@pytest.mark.parametrize(
    ("B", "heads", "segments"),
    [(2, (6, 3), None), (2, (6, 3), PACKED), (1, (9, 3), None), (1, (4, 4), None), (1, (5, 1), None)],
    ids=["gqa", "gqa-packed", "gqa-odd", "mha", "mqa-odd"],
)
def test_aten_flash_varlen_plumbing_equals_reference(monkeypatch, B, heads, segments):
    """The varlen backend on torch's aten flash op: heads folded into the token dimension, one kernel call per
    layer for all heads (no K/V repeat, the scale passed), checked with a pure-torch stand-in of the op's
    contract on CPU; the real kernel is tested on a GPU below."""
    calls = []

    def forward(*args, **kw):
        calls.append(args[0].shape)
        return aten_flash_stand_in(*args, **kw)

    monkeypatch.setattr(s2attn, "_aten_flash_forward", lambda: forward)
    seg = None if segments is None else torch.tensor(segments)[:B]
    q, k, v = qkv(B, *heads, N=32, seed=5)
    assert_close_fwd_bwd(
        lambda *a: s2attn._varlen_s2(s2attn._aten_flash_varlen_func, *a, 8, seg, True, 0.3, 0.0),
        lambda *a: reference_s2(*a, 8, segment_ids=seg, scale=0.3),
        q,
        k,
        v,
    )
    assert len(calls) == 1 and calls[0][0] == s2attn.fold_units(*heads, True)[0] * B * 32  # every head, one call


def test_folded_layout_is_a_constant_of_a_compiled_graph(recwarn):
    """Under torch.compile the layout's cu_seqlens is computed once while tracing and kept in the graph (one
    graph, no break; dynamo's lru_cache warning never reaches the user); the compiled call equals the eager one."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        return q * max_q + cu_q[-1]  # traceable: reads both parts of the layout

    s2attn._folded_layout()  # made eagerly, as enable_s2_attention does
    s2attn._folded_cu_seqlens.cache_clear()
    q, k, v = (x.detach() for x in qkv(1, 6, 3, N=32))
    compiled = torch.compile(
        lambda q, k, v: s2attn._varlen_s2(kernel, q, k, v, 8, None, True, None, 0.0), fullgraph=True, backend="eager"
    )
    for _ in range(3):
        got = compiled(q, k, v)
    assert torch.equal(got, s2attn._varlen_s2(kernel, q, k, v, 8, None, True, None, 0.0))
    info = s2attn._folded_cu_seqlens.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # traced once, then the eager call's lookup
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]


def test_folded_layout():
    """Units and cut points of the folded layout: GQA folds by KV head (KV heads [Hkv // 2, Hkv) shifted), MQA
    by query head, no shift folds nothing; every unit's row is cut at its own pieces and at the row's segments."""
    assert s2attn.fold_units(9, 3, True) == (3, 1)
    assert s2attn.fold_units(32, 32, True) == (32, 16)
    assert s2attn.fold_units(5, 1, True) == (5, 2)
    assert s2attn.fold_units(9, 3, False) == (1, 1)
    starts, longest = s2attn.folded_starts(1, 16, 8, 2, 1, ((),))
    assert starts == (0, 8, 16, 20, 28, 32) and longest == 8
    starts, longest = s2attn.folded_starts(2, 16, 8, 2, 1, ((3,), ()))
    assert starts == (0, 3, 8, 16, 24, 32, 35, 36, 44, 48, 52, 60, 64) and longest == 8


def test_torch_varlen_without_native_gqa_repeats_kv(monkeypatch):
    """torch 2.11's varlen_attn has no enable_gqa: K/V heads are repeated for it, same result."""
    import torch.nn.attention.varlen as torch_varlen

    def no_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        assert q.shape[1] == k.shape[1] == v.shape[1]
        causal = tuple(window_size) == (-1, 0)
        return varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal)

    monkeypatch.setattr(torch_varlen, "varlen_attn", no_gqa)
    s2attn._torch_varlen_params.cache_clear()
    try:
        q, k, v = qkv(1, 6, 3, N=32, seed=7)
        assert s2attn._torch_varlen_fits(q, None)
        assert_close_fwd_bwd(
            lambda *a: s2attn._varlen_s2(s2attn._torch_varlen_func, *a, 8, None, True, None, 0.0),
            lambda *a: reference_s2(*a, 8),
            q,
            k,
            v,
        )
    finally:
        s2attn._torch_varlen_params.cache_clear()
    monkeypatch.setattr(s2attn, "_torch_varlen_params", lambda: frozenset())
    assert not s2attn._torch_varlen_fits(q, None)  # a torch without varlen_attn


def test_backend_choice_on_cpu_and_refusals(monkeypatch):
    """On a CPU `auto` is SDPA; the explicit kernels refuse with one line instead of falling back silently."""
    q = qkv(1, 2, 2, N=8)[0]
    assert s2attn._varlen_kernel("auto", q, 0.0, None) is None
    assert s2attn._varlen_kernel("auto", q, 0.0, None, 4) is None
    assert s2attn._varlen_kernel("sdpa", q, 0.0, None) is None
    with pytest.raises(LlqaError, match="CUDA"):
        s2attn._varlen_kernel("varlen", q, 0.0, None)
    with pytest.raises(LlqaError, match="unknown S2-Attn backend"):
        s2attn._varlen_kernel("fast", q, 0.0, None)


def test_auto_picks_torch_varlen_for_small_calls_only(monkeypatch):
    """Where a flash kernel runs (CUDA, bf16 — stood in here) and flash-attn is absent, `auto` takes torch's
    varlen kernel while one call's work (B × Hq × D × N × G) is at most VARLEN_MAX_WORK, SDPA above it; by name,
    `sdpa` and `varlen` stay what they say. The threshold sits between the H200 measurements it comes from."""
    monkeypatch.setattr(s2attn, "check_backend", lambda backend, device, dtype: True)
    monkeypatch.setattr(s2attn, "flash_attn_available", lambda: False)
    monkeypatch.setattr(s2attn, "_aten_flash_varlen_available", lambda: True)

    def shape(batch, heads, n, dim):  # q's shape without its memory
        return torch.empty(()).expand(batch, heads, n, dim)

    def work(batch, heads, n, dim, group):
        return batch * heads * dim * n * group

    smollm2_135m_16k, llama_1b_16k = (1, 9, 16384, 64), (1, 32, 16384, 64)
    assert work(*smollm2_135m_16k, 4096) <= s2attn.VARLEN_MAX_WORK < work(*llama_1b_16k, 4096)
    assert work(1, 9, 24576, 64, 6144) <= s2attn.VARLEN_MAX_WORK < work(1, 9, 28672, 64, 7168)  # 135M: 24k / 28k
    varlen = s2attn._aten_flash_varlen_func
    assert s2attn._varlen_kernel("auto", shape(*smollm2_135m_16k), 0.0, None, 4096) is varlen
    assert s2attn._varlen_kernel("auto", shape(*llama_1b_16k), 0.0, None, 4096) is None
    assert s2attn._varlen_kernel("auto", shape(4, 9, 16384, 64), 0.0, None, 4096) is None  # four rows: 4× the work
    assert s2attn._varlen_kernel("auto", shape(*smollm2_135m_16k), 0.0, None) is None  # no group size: no rule
    assert s2attn._varlen_kernel("sdpa", shape(*smollm2_135m_16k), 0.0, None, 4096) is None
    assert s2attn._varlen_kernel("varlen", shape(*llama_1b_16k), 0.0, None, 4096) is varlen
    assert (
        s2attn.kernel_name("auto", shape(*smollm2_135m_16k), 4096) == "torch flash varlen (aten op), 1 call per layer"
    )
    assert s2attn.kernel_name("auto", shape(*llama_1b_16k), 4096) == "torch SDPA (3 calls per layer)"
    limit = s2attn.VARLEN_MAX_WORK
    monkeypatch.setattr(s2attn, "VARLEN_MAX_WORK", work(*smollm2_135m_16k, 4096))
    assert s2attn.auto_prefers_varlen(shape(*smollm2_135m_16k), 4096)  # at the threshold: still varlen
    assert not s2attn.auto_prefers_varlen(shape(1, 9, 16392, 64), 4096)
    monkeypatch.setattr(s2attn, "_aten_flash_varlen_available", lambda: False)  # a torch without the op
    monkeypatch.setattr(s2attn, "VARLEN_MAX_WORK", limit)
    assert s2attn._varlen_kernel("auto", shape(*smollm2_135m_16k), 0.0, None, 4096) is None


def test_auto_runs_varlen_through_s2_attention_where_it_fits(monkeypatch):
    """The choice is made on the real call: s2_attention with `auto` on a small call runs the folded varlen
    path (torch's kernel stood in on CPU) and equals the SDPA backend's result."""
    monkeypatch.setattr(s2attn, "check_backend", lambda backend, device, dtype: True)
    monkeypatch.setattr(s2attn, "flash_attn_available", lambda: False)
    monkeypatch.setattr(s2attn, "_aten_flash_varlen_available", lambda: True)
    calls = []

    def forward(*args, **kw):
        calls.append(args[0].shape)
        return aten_flash_stand_in(*args, **kw)

    monkeypatch.setattr(s2attn, "_aten_flash_forward", lambda: forward)
    q, k, v = qkv(1, 6, 2, N=32)
    out = s2attn.s2_attention(q, k, v, 8, backend="auto")
    assert len(calls) == 1 and calls[0][0] == 2 * 32  # one call, the two KV units folded into the tokens
    torch.testing.assert_close(out, s2attn.s2_attention(q, k, v, 8, backend="sdpa"))


def test_segments_are_read_once_per_forward(monkeypatch):
    """Every layer gets the same mask tensor: its segments and boundaries are derived (a host read)
    once, not once per layer."""
    calls = []
    real = s2attn.segment_boundaries
    monkeypatch.setattr(s2attn, "segment_boundaries", lambda ids: calls.append(1) or real(ids))
    seg = torch.tensor(PACKED)
    q, k, v = qkv(2, 6, 3, N=32, seed=6)
    first = s2_attention(q, k, v, 8, segment_ids=seg)
    for _ in range(3):
        torch.testing.assert_close(s2_attention(q, k, v, 8, segment_ids=seg), first)
    assert len(calls) == 1
    s2_attention(q, k, v, 8, segment_ids=seg.clone())  # a new mask is read again
    assert len(calls) == 2


def test_flash_backend_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(s2attn, "flash_attn_available", lambda: False)
    with pytest.raises(LlqaError, match="flash-attn"):
        s2_attention(*qkv(1, 2, 2, N=8), 4, backend="flash")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not s2attn.flash_attn_available(), reason="needs CUDA and flash-attn"
)
@pytest.mark.parametrize("segments", [None, PACKED], ids=["dense", "packed"])
def test_flash_kernel_equals_sdpa_backend(segments):
    q, k, v = (x.detach().cuda().bfloat16().requires_grad_() for x in qkv(2, 8, 2, N=32, D=64))
    seg = None if segments is None else torch.tensor(segments, device="cuda")
    flash = s2_attention(q, k, v, 8, segment_ids=seg, backend="flash")
    sdpa = s2_attention(q, k, v, 8, segment_ids=seg, backend="sdpa")
    torch.testing.assert_close(flash, sdpa, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("heads", [(9, 9), (9, 3)], ids=["mha", "gqa"])
@pytest.mark.parametrize("segments", [None, PACKED], ids=["dense", "packed"])
def test_varlen_kernel_equals_reference(heads, segments):
    """The varlen backend on its real kernel (flash-attn's, else torch's own flash op), forward and backward."""
    q, k, v = (x.detach().cuda().bfloat16().requires_grad_() for x in qkv(2, *heads, N=64, D=64))
    if not (
        s2attn.flash_attn_available() or s2attn._aten_flash_varlen_available() or s2attn._torch_varlen_fits(q, None)
    ):
        pytest.skip("no varlen kernel: neither flash-attn nor torch's flash op or varlen_attn")
    seg = None if segments is None else torch.tensor(segments, device="cuda").repeat_interleave(2, dim=1)
    out = s2_attention(q, k, v, 16, segment_ids=seg, backend="varlen")
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    q2, k2, v2 = (x.detach().float().cpu().requires_grad_() for x in (q, k, v))
    want = reference_s2(q2, k2, v2, 16, segment_ids=None if seg is None else seg.cpu())
    want_grads = torch.autograd.grad(want.square().sum(), (q2, k2, v2))
    torch.testing.assert_close(out.float().cpu(), want, atol=3e-2, rtol=3e-2)
    for got, exp in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.float().cpu(), exp, atol=6e-2, rtol=6e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_a_gpu_picks_by_work():
    """On a real GPU in bf16 (no flash-attn): `auto` runs torch's varlen kernel for a SmolLM2-135M call at 16k and
    SDPA for a Llama-3.2-1B one, and its small-call result equals the reference."""
    if s2attn.flash_attn_available() or not s2attn._aten_flash_varlen_available():
        pytest.skip("auto's rule applies without flash-attn, with torch's flash op")

    def shape(heads, n):
        return torch.empty((), device="cuda", dtype=torch.bfloat16).expand(1, heads, n, 64)

    assert s2attn._varlen_kernel("auto", shape(9, 16384), 0.0, None, 4096) is s2attn._aten_flash_varlen_func
    assert s2attn._varlen_kernel("auto", shape(32, 16384), 0.0, None, 4096) is None
    q, k, v = (x.detach().cuda().bfloat16() for x in qkv(1, 9, 3, N=64, D=64))
    want = reference_s2(*(x.float().cpu() for x in (q, k, v)), 16)
    torch.testing.assert_close(s2_attention(q, k, v, 16, backend="auto").float().cpu(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("segments", [None, PACKED], ids=["dense", "packed"])
@pytest.mark.parametrize("backend", ["sdpa", "sdpa-padded"])
def test_sdpa_backend_runs_on_the_flash_kernel(segments, backend):
    """Every SDPA call S2-Attn makes (views, GQA, causal, no mask; the padded layout's one call too) is one
    the flash kernel accepts: restricted to it, nothing falls back to the math kernel; the result equals the
    reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (x.detach().cuda().bfloat16().requires_grad_() for x in qkv(2, 9, 3, N=32, D=64))
    seg = None if segments is None else torch.tensor(segments, device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = s2_attention(q, k, v, 8, segment_ids=seg, backend=backend)
        out.sum().backward()
    want = reference_s2(
        *(x.detach().float().cpu() for x in (q, k, v)), 8, segment_ids=None if seg is None else seg.cpu()
    )
    torch.testing.assert_close(out.float().cpu(), want, atol=3e-2, rtol=3e-2)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_segments_and_sizes_equal_reference(data):
    """Property: any head layout, group count and packing/padding pattern equals the reference."""
    hkv = data.draw(st.sampled_from([1, 2, 3]))
    hq = hkv * data.draw(st.sampled_from([1, 2, 3]))
    groups = data.draw(st.sampled_from([1, 2, 3, 4]))
    group = 2 * data.draw(st.integers(1, 5))
    n = groups * group
    runs = data.draw(st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=1, max_size=2))
    seg = torch.tensor(runs)
    q, k, v = qkv(seg.shape[0], hq, hkv, N=n, seed=data.draw(st.integers(0, 99)))
    assert_close_fwd_bwd(
        lambda *a: s2_attention(*a, group, segment_ids=seg, backend="sdpa"),
        lambda *a: reference_s2(*a, group, segment_ids=seg),
        q,
        k,
        v,
    )
