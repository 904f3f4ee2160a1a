"""Context parallelism for S2-Attn: one sequence split across N ranks at group boundaries.

S2-Attn's groups are local, which is what makes it cheap to shard. With the sequence cut into N contiguous
shards whose length is a multiple of the group size G:

- the unshifted heads attend inside groups that lie wholly on one rank: no communication at all;
- the shifted heads attend inside pieces moved by G/2, so the piece [b − G/2, b + G/2) around each shard
  boundary b straddles two ranks. Its queries in [b − G/2, b) (on the earlier rank) read only keys before
  themselves, all local; its queries in [b, b + G/2) (on the later rank) also read the earlier rank's last
  G/2 keys and values. So each rank sends its last G/2 tokens' K and V of the shifted KV heads to the next
  rank, once per layer — a point-to-point "halo", `HaloExchange` — and in the backward pass the gradients
  of that halo travel back the same way and are added where they came from.

Per layer and rank that is 2 × B × G/2 × (shifted KV heads) × head_dim elements each way (Llama-2-7B at
256k on 2 ranks, G = 64k: 2 × 32k × 16 heads × 128 × 2 bytes = 256 MiB forward, the same backward), against
ring attention's (N − 1)/N of the whole K and V per layer. Queries never travel.

The result equals S2-Attn on the whole sequence (`trainer.s2attn.s2_attention`), forward and backward;
the loss is the token-weighted mean over all ranks (`context_parallel_loss`), and the gradients of the
weights, which every rank holds whole, are summed over the ranks. Sharding rules and refusals:
`context_parallel_plan`.

Not covered here: full attention under context parallelism (torch's `context_parallel` ring attention,
which needs CUDA kernels), packed or padded batches (segments) under S2 — refused with one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llqa.errors import LlqaError
from trainer import s2attn
from trainer.loss import IGNORE_INDEX
from trainer.s2attn import _head_halves, _ratio, _sdpa_pieces_segmented, partition, s2_group_size, s2_length_multiple

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ContextParallelPlan:
    """How one sequence of `tokens` tokens is split over `world` ranks."""

    tokens: int
    world: int
    shard: int  # tokens per rank (contiguous: rank r holds [r·shard, (r+1)·shard))
    group_size: int | None  # S2-Attn's G (None for full attention)

    def bounds(self, rank: int) -> tuple[int, int]:
        return rank * self.shard, (rank + 1) * self.shard


def _nearest(tokens: int, multiple: int) -> str:
    below = tokens // multiple * multiple
    above = below + multiple
    return ", ".join(f"{n:,}" for n in (below, above) if n > 0)


def context_parallel_plan(tokens: int, world: int, attn: str = "s2", group_ratio: float = 0.25) -> ContextParallelPlan:
    """The shard plan, or one LlqaError naming the nearest lengths (or rank counts) that split.

    - S2-Attn: every shard must hold whole groups (shard a multiple of G), so `world` can be at most the
      number of groups (1 / group ratio: 4 at the default 1/4); the length must be a multiple of
      world × S2-Attn's own length multiple.
    - full attention: torch's causally load-balanced ring splits the sequence into 2 × world chunks, so the
      length must be a multiple of 2 × world."""
    if world < 1:
        raise LlqaError(f"--context-parallel must be at least 1, got {world}", "e.g. --context-parallel 2")
    if attn == "full":
        multiple = 2 * world
        if tokens % multiple:
            raise LlqaError(
                f"context parallelism over {world} ranks with full attention splits a sequence into {multiple} "
                f"load-balanced chunks, which {tokens:,} tokens do not divide into",
                f"use --ctx {_nearest(tokens, multiple)}",
            )
        return ContextParallelPlan(tokens, world, tokens // world, None)
    ratio = _ratio(group_ratio)
    groups = ratio.denominator // ratio.numerator if ratio.numerator == 1 else 0  # groups per sequence
    if not groups or groups % world:
        valid = [w for w in range(1, groups + 1) if groups % w == 0] if groups else [1]
        raise LlqaError(
            f"S2-Attn at group ratio {ratio} makes {groups or 'a fractional number of'} groups per sequence, and "
            f"{world} context-parallel ranks cannot each hold whole groups",
            f"use --context-parallel {' or '.join(map(str, valid))}, or a smaller --group-ratio (1/8: up to 8 ranks)",
        )
    multiple = s2_length_multiple(group_ratio) * world
    if tokens % multiple:
        raise LlqaError(
            f"S2-Attn over {world} context-parallel ranks needs sequence lengths that are a multiple of {multiple}, "
            f"got {tokens:,} tokens",
            f"use --ctx {_nearest(tokens, multiple)}",
        )
    group = s2_group_size(tokens, group_ratio)
    shard = tokens // world
    return ContextParallelPlan(tokens, world, shard, group)


def shard_batch(input_ids, labels, plan: ContextParallelPlan, rank: int, ignore_index: int = IGNORE_INDEX):
    """(local ids, local targets, local position ids) of rank `rank` for a batch of whole sequences.

    Targets are next-token labels aligned with the positions (target[t] = labels[t + 1], the last position
    of the sequence ignored), made before the split: the last token of one shard predicts the first label
    of the next. Position ids are global, so RoPE sees every token where it sits in the sequence."""
    import torch

    if input_ids.shape[1] != plan.tokens:
        raise ValueError(f"batch of {input_ids.shape[1]} tokens, plan for {plan.tokens}")
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
    s, e = plan.bounds(rank)
    positions = torch.arange(s, e, device=input_ids.device).expand(input_ids.shape[0], -1)
    return input_ids[:, s:e], targets[:, s:e], positions


# --------------------------------------------------------------------------- the halo exchange


@dataclass(frozen=True)
class ContextParallelGroup:
    """The ranks one sequence is split over: `ranks` in sequence order, this process's index `index`."""

    group: Any  # a torch.distributed ProcessGroup (None: the default group)
    ranks: tuple[int, ...]
    index: int

    @property
    def world(self) -> int:
        return len(self.ranks)

    @classmethod
    def of(cls, group=None) -> ContextParallelGroup:
        import torch.distributed as dist

        ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(dist.get_world_size()))
        return cls(group, ranks, ranks.index(dist.get_rank()))


def _exchange(send, recv_like, to: int | None, frm: int | None, group):
    """Send `send` to global rank `to` and receive a tensor shaped like `recv_like` from `frm` (either may be
    None); both posted before either is waited on, so neighbours exchanging at once cannot deadlock."""
    import torch
    import torch.distributed as dist

    ops, out = [], torch.zeros_like(recv_like)
    if to is not None:
        ops.append(dist.P2POp(dist.isend, send.contiguous(), to, group))
    if frm is not None:
        ops.append(dist.P2POp(dist.irecv, out, frm, group))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return out


def _halo_function():
    import torch

    class HaloExchange(torch.autograd.Function):
        """tail (this rank's last G/2 tokens of the shifted heads' K and V) -> halo (the previous rank's
        tail; zeros on the first rank). Backward: the halo's gradient goes back to the previous rank, and
        this rank's tail receives the next rank's."""

        @staticmethod
        def forward(ctx, tail, cp: ContextParallelGroup):
            ctx.cp = cp
            nxt = cp.ranks[cp.index + 1] if cp.index + 1 < cp.world else None
            prev = cp.ranks[cp.index - 1] if cp.index > 0 else None
            return _exchange(tail, tail, nxt, prev, cp.group)

        @staticmethod
        def backward(ctx, grad_halo):
            cp = ctx.cp
            nxt = cp.ranks[cp.index + 1] if cp.index + 1 < cp.world else None
            prev = cp.ranks[cp.index - 1] if cp.index > 0 else None
            return _exchange(grad_halo, grad_halo, prev, nxt, cp.group), None

    return HaloExchange


def halo_exchange(tail: torch.Tensor, cp: ContextParallelGroup) -> torch.Tensor:
    return _halo_function().apply(tail, cp)


# --------------------------------------------------------------------------- S2-Attn on one shard


def s2_attention_shard(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group_size: int,
    cp: ContextParallelGroup,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """S2-Attn of this rank's shard. q: (B, Hq, n, D), k/v: (B, Hkv, n, D), the shard's n tokens (a multiple
    of the global group size G). Returns (B, n, Hq, D), equal to the shard's rows of `s2_attention` on the
    whole sequence."""
    import torch

    n, half = q.shape[2], group_size // 2
    if n % group_size or group_size % 2:
        raise LlqaError(
            f"a context-parallel shard of {n} tokens does not hold whole S2-Attn groups of {group_size}",
            "plan the split with trainer.context_parallel.context_parallel_plan",
        )
    outs = []
    for qh, kh, vh, shifted in _head_halves(q, k, v, True):
        if not shifted:
            outs.append(_pieces(qh, kh, vh, partition(n, group_size, False), scale, dropout))
            continue
        # the previous rank's last G/2 keys and values of these heads, in front of this shard's
        halo = halo_exchange(torch.stack([kh[:, -half:], vh[:, -half:]]), cp)
        if cp.index == 0:
            # the first rank has no halo (zeros), but its exchange must stay in the graph: its backward is
            # where this rank receives the gradient of its tail from the next rank
            out = _pieces(qh, kh, vh, partition(n, group_size, True), scale, dropout)
            outs.append(out + halo.sum() * 0)
            continue
        k_ext, v_ext = torch.cat([halo[0], kh], dim=1), torch.cat([halo[1], vh], dim=1)
        # queries for the halo positions only fill the layout: their rows are dropped and get no gradient
        q_ext = torch.cat([qh.new_zeros(qh.shape[0], half, *qh.shape[2:]), qh], dim=1)
        cuts = [*range(0, n + half, group_size), n + half]  # pieces of G from b − G/2; the last one G/2
        outs.append(_pieces(q_ext, k_ext, v_ext, cuts, scale, dropout)[:, half:])
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _pieces(q, k, v, cuts, scale, dropout):
    """Causal attention inside each piece [cuts[i], cuts[i+1]) of (B, L, H, D) tensors."""
    return _sdpa_pieces_segmented(q, k, v, cuts, [[] for _ in range(q.shape[0])], scale, dropout)


@contextmanager
def sharded_s2(cp: ContextParallelGroup) -> Iterator[None]:
    """While active, every S2-Attn layer (`trainer.s2attn`) in training attends over this rank's shard of
    the sequence with the halo exchange above; the model gets the shard's ids and global position ids."""
    previous, s2attn._context_parallel = s2attn._context_parallel, (cp, s2_attention_shard)
    try:
        yield
    finally:
        s2attn._context_parallel = previous


# --------------------------------------------------------------------------- the loss


def context_parallel_loss(nll_sum: torch.Tensor, scored: torch.Tensor, cp: ContextParallelGroup) -> torch.Tensor:
    """This rank's share of the token-weighted mean loss over the whole sequence: its NLL sum divided by the
    number of scored tokens on all ranks. Summed over the ranks (as the weights' gradients are) it is the
    single-process loss; its gradient needs no rescaling."""
    import torch.distributed as dist

    total = scored.detach().to(nll_sum.dtype).clone()
    dist.all_reduce(total, group=cp.group)
    return nll_sum / total.clamp(min=1)
