"""S2-Attn (Shifted Sparse Attention, LongLoRA arXiv 2309.12307) as a pure function, plugged into
transformers through its documented `AttentionInterface` / `AttentionMaskInterface` registries.

The rule, for one sequence of N tokens and group size G (= N × group ratio, default 1/4):
- the unshifted heads attend causally inside the groups [0, G), [G, 2G), ..., [N−G, N);
- the shifted heads (the "second half", see `shifted_heads`) attend causally inside
  [0, G/2), [G/2, 3G/2), ..., [N−3G/2, N−G/2), [N−G/2, N): the groups moved by half a group, with
  the two half groups at the ends kept apart. LongLoRA's roll formulation instead joins the last
  half group with the first one, letting tokens [0, G/2) see the sequence's last tokens (a leak
  from the future); here no token ever attends to a later one.
- with `segment_ids` (packed or padded batches) every piece above is further cut at segment
  boundaries, so no token attends across segments.

Length rule: N must be a multiple of G and G must be even (half-group shift); with a group ratio
p/q that means N must be a multiple of `s2_length_multiple(ratio)` (8 for 1/4). Other lengths raise
`LlqaError` naming that multiple — the group size is never switched silently; pad (the padding is
masked, see below) or pick --ctx accordingly.

GQA: the split between unshifted and shifted heads runs along KV heads, so the query heads that
share a KV head get the same shift and K/V are never repeated (`enable_gqa`, or flash-attn's native
GQA). The shifted query heads are those of KV heads [Hkv // 2, Hkv) — for multi-head attention
exactly LongLoRA's heads [H // 2, H); with one KV head (MQA) query heads [Hq // 2, Hq).

Backends (`backend=`):
- `sdpa`: torch SDPA, each group one dense causal call (groups folded into the batch dimension as
  views of the projections — for batch 1; larger batches copy the shifted middle once — no N×N or
  N×G mask is ever built; segmented batches run one causal call per piece). Runs everywhere (CPU,
  fp32, dropout); three attention calls per layer for the shifted heads' pieces.
- `sdpa-padded`: torch SDPA, one dense causal call per layer: every group of both head halves is one
  batch entry holding one KV head and its query heads, and the shifted heads' two end half groups are
  padded after their tokens to whole groups (a padded key comes after every real query of its group,
  so causal attention stays exact; padded queries' outputs are dropped). Costs one group per shifted
  KV head more attention FLOPs (1/8 more at ratio 1/4) and a copy of Q, K and V, for two SDPA calls
  fewer per layer. Unsegmented batches with more than one KV head; others run as `sdpa`. Opt-in: on an
  H200 it is no faster than `sdpa` at 16k and slower at 32k/64k, eager or compiled (benchmarks/s2attn.md).
- `varlen`: a variable-length flash kernel — flash-attn's `flash_attn_varlen_func` when installed,
  else torch's own FlashAttention-2 varlen kernel called as its aten op (`_flash_attention_forward`:
  grouped K/V heads read as they are, dropout supported), else torch's public
  `torch.nn.attention.varlen.varlen_attn` (where that has no `enable_gqa`, as in torch 2.11, grouped
  K/V heads are repeated for it). The heads are folded into the token dimension — one unit per KV head
  with its query heads, unit-major (a copy of Q, K, V and the output) — and every piece of every unit
  is one varlen sequence (`cu_seqlens`): no masks, segments for free, one kernel call per layer for all
  heads. Few calls matter because at 16k a small model's training step is bound by the host's kernel
  launches, not by the GPU (benchmarks/s2attn.md). `flash` names the flash-attn package alone.
- `auto` (the default): flash-attn's varlen kernel when installed (CUDA, fp16/bf16); else, on CUDA in
  fp16/bf16, `varlen` on torch's kernel for small calls and `sdpa` for large ones — the call's attention work
  (batch × query heads × head dim × N × group size) against `VARLEN_MAX_WORK` (`auto_prefers_varlen`): small
  calls leave a step bound by the host's kernel launches, where one call per layer wins (SmolLM2-135M up to
  ~24k tokens, SmolLM2-360M at 16k); large ones leave it bound by the GPU, where cuDNN's kernel behind SDPA is
  faster than torch's FlashAttention-2 and needs no copies (135M from 28k, Llama-3.2-1B/3B and 7B at 16k;
  benchmarks/s2attn.md). Elsewhere (CPU, fp32) `sdpa`.

Training only: in eval mode (`module.training` False) — and so in generation — the attention
function hands over to transformers' own SDPA attention with the exact mask SDPA would get.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import weakref
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from llqa.errors import LlqaError
from llqa.models import unwrapped

if TYPE_CHECKING:  # heavy imports stay out of `llqa --help`
    import torch

# Set while a context-parallel forward runs (`trainer.context_parallel.sharded_s2`): (the group of ranks,
# the shard attention function). The layers then see this rank's shard of the sequence.
_context_parallel: tuple[Any, Any] | None = None

S2_ATTN_NAME = "llqa_s2"
FULL_ATTN_NAME = "sdpa"
BACKENDS = ("auto", "varlen", "flash", "sdpa", "sdpa-padded")
RATIO_ATTR = "s2_group_ratio"  # on model.config: the group ratio in use while S2-Attn is enabled
BACKEND_ATTR = "s2_backend"
# `auto` without flash-attn runs torch's varlen kernel up to this attention work per call (batch × query heads ×
# head dim × N × group size), SDPA above it: below, the step is bound by the host's kernel launches, which the
# varlen backend's one call per layer saves; above, by the GPU, where SDPA's cuDNN kernel is faster than torch's
# FlashAttention-2 and needs no copy of Q, K, V. Set between the measured cases on an H200 (benchmarks/s2attn.md,
# "Which backend `auto` picks"): varlen faster up to 8.7e10 (SmolLM2-135M at 24k), level at 1.0e11 (SmolLM2-360M
# at 20k), SDPA faster from 1.18e11 on (SmolLM2-135M at 28k, Llama-3.2-1B at 16k).
VARLEN_MAX_WORK = 94 * 10**9


# --------------------------------------------------------------------------- sizes and head split


def _ratio(group_ratio: float) -> Fraction:
    ratio = Fraction(group_ratio).limit_denominator(1 << 16)
    if not 0 < ratio <= 1:
        raise LlqaError(f"--group-ratio must be in (0, 1], got {group_ratio}", "e.g. --group-ratio 0.25")
    return ratio


_ratio_parts_seen: dict[float, tuple[int, int]] = {}


def _ratio_parts(group_ratio: float) -> tuple[int, int]:
    """(numerator, denominator) of the checked group ratio, kept in a module dict after the first call.

    Every layer asks for its group size inside a compiled layer (`--compile`), where dynamo cannot trace
    Fraction's comparisons: torch 2.11 gave up on the whole attention forward and ran it eagerly in every
    layer (several graphs per layer instead of one). `enable_s2_attention` fills the entry eagerly; a
    compiled layer reads it as a constant."""
    parts = _ratio_parts_seen.get(group_ratio)
    if parts is None:
        ratio = _ratio(group_ratio)
        parts = _ratio_parts_seen[group_ratio] = (ratio.numerator, ratio.denominator)
    return parts


def s2_length_multiple(group_ratio: float) -> int:
    """The smallest multiple every sequence length must be for `group_ratio`: N × ratio must be an
    even whole number of tokens (a group of whole tokens, shifted by half a group)."""
    numerator, denominator = _ratio_parts(group_ratio)
    return denominator if numerator % 2 == 0 else 2 * denominator


def s2_group_size(n_tokens: int, group_ratio: float) -> int:
    """G = N × group_ratio, or an LlqaError naming the length multiple S2-Attn needs."""
    multiple = s2_length_multiple(group_ratio)
    numerator, denominator = _ratio_parts(group_ratio)
    if n_tokens % multiple:
        raise LlqaError(
            f"S2-Attn with group ratio {numerator}/{denominator} needs sequence lengths that are a multiple of "
            f"{multiple}, got {n_tokens} tokens",
            f"use --ctx (or pad sequences to) a multiple of {multiple}, change --group-ratio, or use --attn full",
        )
    return n_tokens * numerator // denominator


def shifted_heads(n_heads: int, n_kv_heads: int) -> int:
    """Index of the first shifted query head (heads [index, n_heads) are shifted).

    Split along KV heads so query heads sharing a KV head share a shift: KV heads [Hkv // 2, Hkv)
    are shifted. With Hkv == Hq this is LongLoRA's `num_heads // 2`; with one KV head every query
    head reads the same K/V, so the split is at Hq // 2."""
    if n_kv_heads == 1:
        return n_heads // 2
    return (n_kv_heads // 2) * (n_heads // n_kv_heads)


def partition(n_tokens: int, group_size: int, shifted: bool) -> list[int]:
    """Boundaries [0, ..., N] of the causal pieces: groups, or groups shifted by G/2 with the two half
    groups at the ends kept apart (never wrapped around)."""
    if not shifted:
        return list(range(0, n_tokens + 1, group_size))
    half = group_size // 2
    return [0, *range(half, n_tokens - half + 1, group_size), n_tokens]


def segment_boundaries(segment_ids: torch.Tensor) -> list[list[int]]:
    """Per batch row, the positions where a new run of equal segment ids starts (0 excluded, N
    excluded): a segment is a maximal run of equal ids."""
    change = segment_ids[:, 1:] != segment_ids[:, :-1]  # (B, N-1)
    rows, cols = change.nonzero(as_tuple=True)
    out: list[list[int]] = [[] for _ in range(segment_ids.shape[0])]
    for r, c in zip(rows.tolist(), (cols + 1).tolist(), strict=True):
        out[r].append(c)
    return out


_per_tensor: dict[str, tuple[Any, Any]] = {}


def _once_per_tensor(name: str, tensor, fn):
    """`fn(tensor)`, computed once while that tensor object lives. Every layer of a forward (and its
    recomputation under gradient checkpointing) receives the same mask tensor from transformers;
    deriving segments from it reads values on the host, which would otherwise stall the GPU once
    per layer instead of once per forward."""
    ref, value = _per_tensor.get(name, (None, None))
    if ref is not None and ref() is tensor:
        return value
    value = fn(tensor)
    _per_tensor[name] = (weakref.ref(tensor), value)
    return value


def _boundaries(segment_ids: torch.Tensor) -> list[list[int]]:
    return _once_per_tensor("boundaries", segment_ids, segment_boundaries)


# --------------------------------------------------------------------------- the pure function


def s2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group_size: int,
    *,
    segment_ids: torch.Tensor | None = None,
    shift: bool = True,
    scale: float | None = None,
    dropout: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Shifted sparse attention. q: (B, Hq, N, D); k, v: (B, Hkv, N, D) with Hq a multiple of Hkv.

    Returns (B, N, Hq, D) — the layout transformers' attention functions return (the caller merges
    heads with a reshape). `segment_ids` (B, N): tokens attend only inside runs of equal ids.
    `shift=False` gives plain grouped causal attention; one group (G = N) without shift equals
    causal SDPA. `scale` defaults to 1/sqrt(D). See the module doc for the exact rule.
    """
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    if k.shape != (B, Hkv, N, D) or v.shape[:3] != (B, Hkv, N) or Hq % Hkv:
        raise ValueError(f"s2_attention: bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if group_size <= 0 or N % group_size or (shift and group_size % 2):
        raise LlqaError(
            f"S2-Attn group size {group_size} does not tile {N} tokens"
            + (" with a half-group shift (it must be even)" if shift else ""),
            "use a sequence length that is a multiple of the (even) group size",
        )
    if segment_ids is not None and segment_ids.shape != (B, N):
        raise ValueError(f"segment_ids must be (B, N) = {(B, N)}, got {tuple(segment_ids.shape)}")
    varlen = _varlen_kernel(backend, q, dropout, scale, group_size)
    if varlen is not None:
        return _varlen_s2(varlen, q, k, v, group_size, segment_ids, shift, scale, dropout)
    if backend == "sdpa-padded" and Hkv > 1 and (segment_ids is None or not any(_boundaries(segment_ids))):
        return _sdpa_s2_padded(q, k, v, group_size, shift, scale, dropout)
    return _sdpa_s2(q, k, v, group_size, segment_ids, shift, scale, dropout)


def _head_halves(q, k, v, shift: bool):
    """[(q, k, v, shifted)] per head half, each in (B, N, H, D) layout (views, no copies).

    Pieces are taken with `split`, never by slicing: the backward of a split is one concatenation
    of the pieces' gradients, where every slice would allocate and zero a full-size gradient."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, N, H, D)
    Hq, Hkv = q.shape[1], k.shape[1]
    sq = shifted_heads(Hq, Hkv)
    if not shift or sq == 0:
        return [(qt, kt, vt, shift)]
    q0, q1 = qt.split([sq, Hq - sq], dim=2)
    if Hkv == 1:  # MQA: both halves read the one KV head
        return [(q0, kt, vt, False), (q1, kt, vt, True)]
    skv = sq // (Hq // Hkv)
    (k0, k1), (v0, v1) = kt.split([skv, Hkv - skv], dim=2), vt.split([skv, Hkv - skv], dim=2)
    return [(q0, k0, v0, False), (q1, k1, v1, True)]


# --------------------------------------------------------------------------- SDPA backend


def _sdpa(q, k, v, scale, dropout):
    """Causal SDPA on (B, L, H, D) views; returns (B, L, H, D)."""
    import torch.nn.functional as F

    gqa = q.shape[2] != k.shape[2]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout,
        is_causal=True,
        scale=scale,
        enable_gqa=gqa,
    )
    return out.transpose(1, 2)


def _grouped(x, count: int, size: int):
    """x (B, count·size, H, D) as (B·count, size, H, D): a view for B = 1 (the long-context case)."""
    B, _, H, D = x.shape
    return x.reshape(B * count, size, H, D)


def _sdpa_pieces_dense(q, k, v, cuts: list[int], scale, dropout):
    """Pieces without segments: the full groups in one batched call, the two end half groups (shifted
    heads) in a second one."""
    import torch

    B, N = q.shape[:2]
    first, last = cuts[1] - cuts[0], cuts[-1] - cuts[-2]
    size = cuts[2] - cuts[1] if len(cuts) > 2 else first
    if first == size:  # equal pieces: unshifted groups, or the two halves of a single shifted group
        out = _sdpa(*(_grouped(x, len(cuts) - 1, size) for x in (q, k, v)), scale, dropout)
        return out.reshape(B, N, *out.shape[2:])
    heads, mids, tails = zip(*(x.split([first, N - first - last, last], dim=1) for x in (q, k, v)), strict=True)
    count = len(cuts) - 3
    mid = _sdpa(*(_grouped(x, count, size) for x in mids), scale, dropout).reshape(B, N - first - last, *q.shape[2:])
    # [0, G/2) and [N - G/2, N) in the batch dimension of one call
    head, tail = _sdpa(*(torch.cat(pair) for pair in zip(heads, tails, strict=True)), scale, dropout).split(B)
    return torch.cat([head, mid, tail], dim=1)


def _sdpa_pieces_segmented(q, k, v, cuts: list[int], bounds: list[list[int]], scale, dropout):
    """One causal call per (batch row, piece ∩ segment): views only, never a mask."""
    import torch

    rows = []
    for b, (qb, kb, vb) in enumerate(zip(q.split(1), k.split(1), v.split(1), strict=True)):
        edges = sorted(set(cuts).union(bounds[b]))
        lengths = [e - s for s, e in zip(edges, edges[1:], strict=False)]
        pieces = zip(qb.split(lengths, dim=1), kb.split(lengths, dim=1), vb.split(lengths, dim=1), strict=True)
        rows.append(torch.cat([_sdpa(qp, kp, vp, scale, dropout) for qp, kp, vp in pieces], dim=1))
    return torch.cat(rows)


def _sdpa_s2(q, k, v, group_size, segment_ids, shift, scale, dropout):
    import torch

    N = q.shape[2]
    bounds = _boundaries(segment_ids) if segment_ids is not None else None
    if bounds is not None and not any(bounds):
        bounds = None
    outs = []
    for qh, kh, vh, shifted in _head_halves(q, k, v, shift):
        cuts = partition(N, group_size, shifted)
        if bounds is None:
            outs.append(_sdpa_pieces_dense(qh, kh, vh, cuts, scale, dropout))
        else:
            outs.append(_sdpa_pieces_segmented(qh, kh, vh, cuts, bounds, scale, dropout))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, N, Hq, D)


def _entries(x, groups: int, size: int):
    """x (B, kv, h, groups·size, D) as (B·kv·groups, h, size, D): one batch entry per (row, KV head, group)."""
    B, kv, h, _, D = x.shape
    return x.unflatten(3, (groups, size)).movedim(3, 2).reshape(B * kv * groups, h, size, D)


def _padded_ends(x, half: int):
    """x (..., N, D) as (..., N + 2·half, D): half zero rows after the first half group and after the last."""
    import torch

    first, rest = x.split([half, x.shape[-2] - half], dim=-2)
    pad = x.new_zeros(*x.shape[:-2], half, x.shape[-1])
    return torch.cat([first, pad, rest, pad], dim=-2)


def _sdpa_s2_padded(q, k, v, group_size, shift, scale, dropout):
    """The `sdpa-padded` backend (dense batches, Hkv > 1): one causal SDPA call per layer. Returns (B, N, Hq, D)."""
    import torch
    import torch.nn.functional as F

    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    r, G = Hq // Hkv, group_size
    n = N // G
    skv = shifted_heads(Hq, Hkv) // r if shift else Hkv  # KV heads [0, skv) unshifted
    per_kv = (q.unflatten(1, (Hkv, r)), k.unsqueeze(2), v.unsqueeze(2))  # (B, Hkv, heads per KV head, N, D)
    batched = []
    for x in per_kv:
        still, moved = x.split([skv, Hkv - skv], dim=1)
        parts = [_entries(still, n, G)] if skv else []
        if skv < Hkv:
            parts.append(_entries(_padded_ends(moved, G // 2), n + 1, G))
        batched.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    out = F.scaled_dot_product_attention(*batched, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=r > 1)
    halves = []
    for kv, groups, first in ((skv, n, True), (Hkv - skv, n + 1, False)):
        if not kv:
            continue
        o, out = out.split([B * kv * groups, out.shape[0] - B * kv * groups])
        o = o.reshape(B, kv, groups, r, G, D).movedim(2, 3).flatten(3, 4)  # (B, kv, r, groups·G, D)
        if not first:  # drop the padding: real tokens are [0, G/2) and [G, N + G/2)
            o = torch.cat([o[..., : G // 2, :], o[..., G : N + G // 2, :]], dim=-2)
        halves.append(o)
    full = halves[0] if len(halves) == 1 else torch.cat(halves, dim=1)  # (B, Hkv, r, N, D)
    return full.flatten(1, 2).transpose(1, 2)  # (B, N, Hq, D)


# --------------------------------------------------------------------------- varlen backend


_probed: dict[str, Any] = {}


def _probe_once(fn):
    """`fn()` computed once per process and then read from a module dict (`.cache_clear()` forgets it).

    Not `functools.cache`: under torch.compile (`--compile` compiles every decoder layer) dynamo ignores that
    cache and traces the function's body — importlib, inspect, an op schema's text, none of which belongs in
    a graph. A dict entry filled before compilation (`enable_s2_attention` probes eagerly) is read as a
    constant of the graph instead."""

    def probed():
        if fn.__name__ not in _probed:
            _probed[fn.__name__] = fn()
        return _probed[fn.__name__]

    probed.cache_clear = lambda: _probed.pop(fn.__name__, None)
    probed.__name__, probed.__doc__ = fn.__name__, fn.__doc__
    return probed


@_probe_once
def flash_attn_available() -> bool:
    """flash-attn importable (probed once; never required)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:  # a broken build (ABI mismatch) counts as absent
        return False
    return True


@_probe_once
def _torch_varlen_params() -> frozenset[str]:
    """The keyword parameters of torch's `varlen_attn` (empty when this torch has none). Its causal
    switch moved from `is_causal` (torch 2.10) to `window_size=(-1, 0)` (2.11); native GQA came
    later (`enable_gqa`), and a custom softmax scale needs `scale`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def _torch_varlen_fits(q, scale) -> bool:
    params = _torch_varlen_params()
    if not params or not ({"window_size", "is_causal"} & params):
        return False
    return scale is None or "scale" in params or math.isclose(scale, q.shape[-1] ** -0.5)


def _torch_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """torch's `varlen_attn` behind flash-attn's `flash_attn_varlen_func` calling convention (no
    dropout: torch's kernel has none, so `auto` never picks it when dropout is on)."""
    from torch.nn.attention.varlen import varlen_attn

    params = _torch_varlen_params()
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kw["is_causal"] = causal
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # a torch without native GQA here: one copy of K and V per query head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if softmax_scale is not None and "scale" in params:
        kw["scale"] = softmax_scale
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def _aten_flash_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """torch's FlashAttention-2 varlen kernel called as the aten op that `varlen_attn` and SDPA's flash path
    wrap, behind flash-attn's `flash_attn_varlen_func` calling convention. Called directly it takes grouped
    K/V heads as they are (the kernel reads each KV head for its query heads; `varlen_attn` of torch 2.11
    cannot be told, so K and V were repeated for it), supports dropout, and costs one autograd node with no
    Python custom-op layer around it: per call, less host time, which is what a small model's step at 16k
    is bound by (benchmarks/s2attn.md)."""
    out = _aten_flash_forward()(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, False, scale=softmax_scale)
    return out[0]


def _aten_flash_forward():
    """The aten op itself (indirect so tests can check the plumbing with a pure-torch stand-in on CPU)."""
    import torch

    return torch.ops.aten._flash_attention_forward


@_probe_once
def _aten_flash_varlen_available() -> bool:
    """This torch's aten op has the varlen signature `_aten_flash_varlen_func` calls (torch >= 2.1 built
    with CUDA flash attention)."""
    import torch

    try:
        schema = str(_aten_flash_forward().default._schema)
    except (AttributeError, RuntimeError):
        return False
    return "cum_seq_q" in schema and "float? scale" in schema and torch.backends.cuda.is_flash_attention_available()


def _check_backend_name(backend: str) -> None:
    """A known backend whose package is installed, or one line saying what to use instead."""
    if backend not in BACKENDS:
        raise LlqaError(f"unknown S2-Attn backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")
    if backend == "flash" and not flash_attn_available():
        raise LlqaError(
            "the flash S2-Attn backend needs flash-attn, which is not installed",
            "pip install flash-attn (or llqa[flash]), or use the varlen or sdpa backend",
        )


def check_backend(backend: str, device, dtype) -> bool:
    """Whether a flash kernel can run S2-Attn on this device and compute dtype; a backend that needs one and
    cannot have it (or an unknown backend) is refused with one line. The trainer asks before loading a model."""
    import torch

    _check_backend_name(backend)
    fits = torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if backend in ("flash", "varlen") and not fits:
        raise LlqaError(
            f"the {backend} S2-Attn backend runs on CUDA in float16/bfloat16 only",
            "use --dtype bfloat16 on a GPU, or the sdpa backend",
        )
    return fits


def attention_work(q, group_size: int) -> int:
    """One S2 call's attention work up to a constant: batch × query heads × head dim × N × group size, for
    `q` (B, Hq, N, D) — the quantity `VARLEN_MAX_WORK` is set in."""
    B, Hq, N, D = q.shape
    return B * Hq * D * N * group_size


def auto_prefers_varlen(q, group_size: int) -> bool:
    """`auto`'s choice without flash-attn: torch's varlen kernel when the call's `attention_work` is at most
    `VARLEN_MAX_WORK`, else SDPA."""
    return attention_work(q, group_size) <= VARLEN_MAX_WORK


def _varlen_kernel(backend: str, q, dropout: float, scale: float | None, group_size: int | None = None):
    """The varlen function `backend` runs on (flash-attn's or torch's), or None for the SDPA backend.
    `group_size` (the S2 group at q's length) lets `auto` weigh the call's work; without it `auto` takes only
    flash-attn's kernel."""
    fits = check_backend(backend, q.device, q.dtype)
    if backend in ("sdpa", "sdpa-padded"):
        return None
    if fits and flash_attn_available():
        return _flash_attn_func()
    if backend == "auto":
        small = group_size is not None and auto_prefers_varlen(q, group_size)
        return _aten_flash_varlen_func if fits and small and _aten_flash_varlen_available() else None
    if fits and _aten_flash_varlen_available():  # backend == "varlen"
        return _aten_flash_varlen_func
    if dropout or not _torch_varlen_fits(q, scale):  # backend == "varlen"
        raise LlqaError(
            "the varlen S2-Attn backend needs flash-attn or a torch with torch.nn.attention.varlen, "
            "and no attention dropout",
            "pip install flash-attn, upgrade torch, or use the sdpa backend",
        )
    return _torch_varlen_func


def kernel_name(backend: str, q, group_size: int, dropout: float = 0.0, scale: float | None = None) -> str:
    """What S2-Attn's `backend` runs a call with query `q` (B, Hq, N, D) and group `group_size` on, in words:
    `auto` resolved as the call itself resolves it. Raises the call's own `LlqaError` where the backend cannot run."""
    kernel = _varlen_kernel(backend, q, dropout, scale, group_size)
    if kernel is None:
        padded = backend == "sdpa-padded"
        return "torch SDPA (1 call per layer, end half groups padded)" if padded else "torch SDPA (3 calls per layer)"
    names = {_torch_varlen_func: "torch varlen_attn", _aten_flash_varlen_func: "torch flash varlen (aten op)"}
    return names.get(kernel, "flash-attn varlen") + ", 1 call per layer"


def _flash_attn_func():
    """flash-attn's documented varlen entry point (indirect so tests can check the plumbing with a
    pure-torch stand-in of the same API when flash-attn is absent)."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def fold_units(n_heads: int, n_kv_heads: int, shift: bool) -> tuple[int, int]:
    """(units, first shifted unit) of the folded varlen layout (`_varlen_s2`).

    A unit is one KV head with its query heads (one query head each under MQA, whose one KV head is then
    read by every unit; without a shift all heads are one unit); units [first, units) are shifted, the
    split of `shifted_heads`."""
    if not shift:
        return 1, 1
    if n_kv_heads == 1:
        return n_heads, shifted_heads(n_heads, 1)
    return n_kv_heads, shifted_heads(n_heads, n_kv_heads) // (n_heads // n_kv_heads)


def folded_starts(
    batch: int, n_tokens: int, group_size: int, units: int, first_shifted: int, bounds: tuple[tuple[int, ...], ...]
) -> tuple[tuple[int, ...], int]:
    """(cumulative starts, longest piece) of the folded layout: unit u, batch row b holds tokens
    [(u·B + b)·N, (u·B + b + 1)·N), cut at that unit's pieces (`partition`) and at the row's segment
    boundaries (`bounds`, one tuple per row; empty tuples for an unsegmented batch)."""
    starts: list[int] = []
    for unit in range(units):
        cuts = partition(n_tokens, group_size, unit >= first_shifted)[:-1]
        for row in range(batch):
            base = (unit * batch + row) * n_tokens
            starts += [base + c for c in sorted(set(cuts).union(bounds[row]))]
    starts.append(units * batch * n_tokens)
    return tuple(starts), max(e - s for s, e in zip(starts, starts[1:], strict=False))


@lru_cache(maxsize=64)
def _folded_cu_seqlens(batch, n_tokens, group_size, units, first_shifted, bounds, device):
    """(`cu_seqlens` as an int32 device tensor, longest piece) of a folded layout, made once per layout and
    device: every layer of a forward (and its recomputation) reuses them instead of copying a host list to
    the GPU. `bounds` None: no segments."""
    import torch

    starts, longest = folded_starts(batch, n_tokens, group_size, units, first_shifted, bounds or ((),) * batch)
    return torch.tensor(starts, dtype=torch.int32, device=device), longest


@_probe_once
def _folded_layout():
    """`_folded_cu_seqlens` as a compile-time constant (`torch.compiler.assume_constant_result`: its result
    depends on its arguments only): in a compiled layer dynamo calls it while tracing and keeps the tensor in
    the graph, where it would otherwise trace through the lru_cache (with a warning to the user) and build the
    tensor in every call. The marker goes on a plain function around the cache, since dynamo handles an
    lru_cache wrapper as a case of its own. `enable_s2_attention` makes it before any compilation."""
    import torch

    return torch.compiler.assume_constant_result(lambda *layout: _folded_cu_seqlens(*layout))


def _fold(x, units: int):
    """x (B, units·h, N, D) as (units·B·N, h, D): unit-major, then row, then token (one copy unless units is 1)."""
    B, H, N, D = x.shape
    return x.unflatten(1, (units, H // units)).permute(1, 0, 3, 2, 4).reshape(units * B * N, H // units, D)


def _unfold(x, batch: int, n_tokens: int):
    """The folded output (units·B·N, h, D) back as (B, N, units·h, D), contiguous."""
    units = x.shape[0] // (batch * n_tokens)
    return x.view(units, batch, n_tokens, *x.shape[1:]).permute(1, 2, 0, 3, 4).reshape(batch, n_tokens, -1, x.shape[-1])


def _varlen_s2(varlen, q, k, v, group_size, segment_ids, shift, scale, dropout):
    """One varlen kernel call per layer for all heads. The heads are folded into the token dimension
    (`_fold`: one unit per KV head with its query heads), so each unit carries its own pieces — shifted or
    not — in one `cu_seqlens`. The fold costs a copy of Q, K, V and the output, one elementwise kernel each;
    one call per head half on views instead costs more host time, which is what bounds a small model's step at
    16k (benchmarks/s2attn.md). Measured there too: the same fold as one autograd.Function was slower on the
    host than these few recorded ops."""
    B, Hq, N, D = q.shape
    units, first_shifted = fold_units(Hq, k.shape[1], shift)
    bounds = None if segment_ids is None else tuple(map(tuple, _boundaries(segment_ids)))
    cu, longest = _folded_layout()(B, N, group_size, units, first_shifted, bounds, q.device)
    if k.shape[1] == 1 and units > 1:  # MQA: every unit reads the one KV head (expand's backward sums)
        k, v = k.expand(B, units, N, D), v.expand(B, units, N, D)
    packed = (_fold(x, units) for x in (q, k, v))
    out = varlen(*packed, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scale, causal=True)
    return _unfold(out, B, N)


# --------------------------------------------------------------------------- transformers integration
#
# Masks: transformers builds one mask per forward through the mask function registered under the
# attention implementation's name. For S2-Attn we register `_s2_mask`, which for a whole-sequence
# forward (no cached prefix) returns a compact (B, N) int32 *segment code* instead of a (B, 1, N, N)
# mask: code[b, i] = s ≥ 0 for a real token of segment s, −1 − s for a padding token of segment s;
# None when the batch is plain causal (one segment per row, no padding). The segments come from
# the mask function transformers composed (causal, packed sequences from position_ids resets), probed
# on O(N) index pairs. Any other case (a KV cache, sliding windows shorter than a segment, custom mask
# functions) gets exactly the mask SDPA would get; S2-Attn refuses those in training.


def _s2_mask(*args: Any, **kw: Any):
    from transformers.masking_utils import sdpa_mask

    def exact():
        return sdpa_mask(*args, **kw)

    if args or kw.get("use_vmap"):
        return exact()
    if "cache_position" in kw:  # transformers versions that pass query positions instead of a length
        q_pos = kw["cache_position"]
        n = q_pos.shape[0]
        starts_at_zero = n > 0 and int(q_pos[0]) == 0
    else:
        n, q_offset = kw.get("q_length"), kw.get("q_offset", 0)
        starts_at_zero = isinstance(q_offset, int) and q_offset == 0
    kv_length, kv_offset = kw.get("kv_length"), kw.get("kv_offset", 0)
    padding = kw.get("attention_mask")
    if not (starts_at_zero and kv_length == n and kv_offset == 0 and n and n > 1):
        return exact()
    if padding is not None and (padding.ndim != 2 or padding.shape[-1] != n):
        return exact()
    device = kw.get("device") or (padding.device if padding is not None else "cpu")
    code = _segment_code(kw.get("mask_function"), kw["batch_size"], n, padding, device)
    # None means "plain causal", which SDPA reads as is_causal; a caller that disallowed that skip
    # (transformers does for packed batches, which never get here as None) gets the exact mask
    if code is NotImplemented or (code is None and not kw.get("allow_is_causal_skip", True)):
        return exact()
    return code


def _segment_code(mask_function, batch: int, n: int, padding, device):
    """The compact segment code (see above) of a mask function, None for plain causal, or
    NotImplemented when the mask is not causal attention within contiguous segments."""
    import torch

    if mask_function is None:
        return NotImplemented
    b = torch.arange(batch, device=device)[:, None]  # (B, 1)
    h = torch.zeros(1, 1, dtype=torch.long, device=device)
    i = torch.arange(n, device=device)[None, :]  # (1, N)
    try:

        def allowed(q, kv):
            return mask_function(b, h, q, kv).expand(batch, q.shape[-1]).to(torch.bool)

        diagonal, below, above = allowed(i, i), allowed(i[:, 1:], i[:, :-1]), allowed(i[:, :-1], i[:, 1:])
        starts = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), ~below], dim=1)
        first = torch.where(starts, i, 0).cummax(dim=1).values  # (B, N) first token of each token's segment
        reaches_start = allowed(i.expand(batch, n), first)
    except Exception:  # not an index-based mask function
        return NotImplemented
    if not (diagonal.all() and reaches_start.all()) or above.any():
        return NotImplemented  # e.g. a sliding window shorter than a segment
    pad = None if padding is None else ~padding.to(device=device, dtype=torch.bool)
    if not starts[:, 1:].any() and (pad is None or not pad.any()):
        return None
    seg = starts.cumsum(dim=1, dtype=torch.int32) - 1
    return seg if pad is None else torch.where(pad, -1 - seg, seg)


def _is_segment_code(mask) -> bool:
    import torch

    return (
        isinstance(mask, torch.Tensor)
        and mask.ndim == 2
        and not mask.dtype.is_floating_point
        and mask.dtype != torch.bool
    )


def _decode(code):
    """(segment ids, padding flags) from a segment code."""
    import torch

    pad = code < 0
    return torch.where(pad, -1 - code, code), pad


def sdpa_mask_from_code(code) -> torch.Tensor:
    """The (B, 1, N, N) boolean mask SDPA gets for the same batch: causal, inside a segment, padding
    keys masked (what `transformers.masking_utils.sdpa_mask` builds from the same inputs)."""
    import torch

    seg, pad = _decode(code)
    i = torch.arange(code.shape[1], device=code.device)
    causal = i[None, :] <= i[:, None]
    return (causal & (seg[:, :, None] == seg[:, None, :]) & ~pad[:, None, :])[:, None]


def training_segments(code) -> torch.Tensor | None:
    """Segment ids for S2-Attn in training, or None when every row is one causal run.

    Padding forms its own segments, so no real token sees a pad and no pad sees a real token. A run of
    padding at the end of a row is joined to the segment before it instead: under causal attention
    no real token reads a later position, so this changes no real token's output or gradient, and a
    right-padded single sequence keeps the fast unsegmented path."""
    import torch

    if code is None:
        return None
    seg, pad = _decode(code)
    n = code.shape[1]
    # a token is in the trailing padding run iff it and every later token is padding
    trailing = pad.flip(1).int().cumprod(dim=1).flip(1).bool()
    last_real = torch.where(trailing, -1, seg).amax(dim=1, keepdim=True)
    # ids: 2·segment for real tokens, 2·segment + 1 for padding (separate runs), trailing → last real
    ids = torch.where(pad, 2 * seg + 1, 2 * seg)
    ids = torch.where(trailing & (last_real >= 0), 2 * last_real, ids)
    if n and bool((ids == ids[:, :1]).all()):
        return None
    return ids


def s2_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """The function registered in transformers' AttentionInterface under S2_ATTN_NAME.

    Training (`module.training`): S2-Attn with G = N × `config.s2_group_ratio`, segments from the mask
    (see `_s2_mask`). Eval and generation: transformers' own SDPA attention, with the exact mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    code = attention_mask if _is_segment_code(attention_mask) else None
    if not module.training:
        mask = sdpa_mask_from_code(code) if code is not None else attention_mask
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    if (
        (attention_mask is not None and code is None)
        or key.shape[2] != query.shape[2]
        or not getattr(module, "is_causal", True)
    ):
        raise LlqaError(
            "S2-Attn in training needs causal self-attention over whole sequences; this forward "
            "has a KV cache, a sliding-window layer or a custom attention mask",
            "train without past_key_values, disable the sliding window, or use --attn full",
        )
    config = getattr(module, "config", None)
    ratio = getattr(config, RATIO_ATTR, None)
    if ratio is None:
        raise LlqaError(
            "the model's attention is set to S2-Attn but no group ratio is recorded on its config",
            "switch it on with trainer.s2attn.enable_s2_attention(model)",
        )
    if _context_parallel is not None:
        cp, shard_attention = _context_parallel
        if code is not None:
            raise LlqaError(
                "S2-Attn under context parallelism takes whole sequences without a mask; this batch is packed or "
                "padded with one",
                "pass right-padded rows without their mask (trainer.loop does), or train without --context-parallel",
            )
        group = s2_group_size(query.shape[2] * cp.world, ratio)
        return shard_attention(query, key, value, group, cp, scale=scaling, dropout=dropout), None
    out = s2_attention(
        query,
        key,
        value,
        s2_group_size(query.shape[2], ratio),
        segment_ids=None if code is None else _once_per_tensor("segments", code, training_segments),
        scale=scaling,
        dropout=dropout,
        backend=getattr(config, BACKEND_ATTR, "auto"),
    )
    return out, None


def register_s2_attention() -> None:
    """Register the attention and mask functions under S2_ATTN_NAME (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(S2_ATTN_NAME, s2_attention_forward)
    AttentionMaskInterface.register(S2_ATTN_NAME, _s2_mask)


def enable_s2_attention(model, group_ratio: float = 0.25, backend: str = "auto") -> None:
    """Switch `model` (a transformers model or a PeftModel) to S2-Attn in training.

    Records the ratio and backend on `model.config` (`s2_group_ratio`, `s2_backend`) and selects the
    registered implementation with transformers' `set_attn_implementation`. Eval mode keeps full
    attention, so evaluation needs no switch back; `disable_s2_attention` restores plain SDPA."""
    _ratio_parts(group_ratio)  # checked, and kept for the compiled layers
    _check_backend_name(backend)
    register_s2_attention()
    for probe in (flash_attn_available, _torch_varlen_params, _aten_flash_varlen_available, _folded_layout):
        probe()  # eagerly, before any compilation: compiled layers read the answers as constants
    base = unwrapped(model)
    setattr(base.config, RATIO_ATTR, float(group_ratio))
    setattr(base.config, BACKEND_ATTR, backend)
    base.set_attn_implementation(S2_ATTN_NAME)
    if base.config._attn_implementation != S2_ATTN_NAME:
        raise LlqaError(
            f"{type(base).__name__} does not route its attention through transformers' "
            "AttentionInterface, so S2-Attn cannot be switched on",
            "use --attn full",
        )


def disable_s2_attention(model) -> None:
    """Back to transformers' SDPA attention; the S2 settings are removed from the config (so a saved or
    merged model carries none)."""
    base = unwrapped(model)
    base.set_attn_implementation(FULL_ATTN_NAME)
    for attr in (RATIO_ATTR, BACKEND_ATTR):
        if hasattr(base.config, attr):
            delattr(base.config, attr)
