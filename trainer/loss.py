"""Causal-LM cross-entropy without materialising full-vocabulary logits for the whole sequence.

The plain Hugging Face loss (`model(input_ids, labels=...)`) builds [N × vocab] logits, upcasts them
to fp32 and keeps them for backward: at 64k tokens and SmolLM2's 49,152-token vocabulary that is
12.9 GB for the fp32 logits alone, plus their gradient. Here the loss is computed from the final
hidden states and the LM-head weight `chunk_size` tokens at a time, and each chunk's gradients with
respect to the hidden states and the head weight are computed right away in the forward pass
(softmax − one-hot, two matmuls), so at most one chunk's logits exist at any time and backward only
scales the stored gradients (the fused linear-cross-entropy idea of Liger-Kernel / Apple's CCE,
written here in plain torch: no recomputation, 3 matmuls per chunk instead of 4).

Which tokens are scored, exactly as in transformers' `ForCausalLMLoss`: labels are aligned with
`input_ids` (position t's label is token t) and shifted inside, so the hidden state at t predicts
label t+1; labels equal to `ignore_index` (-100) are not scored; the result is the mean of the
per-token negative log-likelihood over the scored tokens (fp32), returned with their count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llqa.models import unwrapped

IGNORE_INDEX = -100
DEFAULT_CHUNK = 4096  # 4096 tokens × 49,152 vocab × 4 B = 0.8 GB of fp32 logits per chunk


def _logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.dtype]:
    """(fp32 logits, tanh of the soft-cap or None, dtype the head computed in) of one chunk: the head runs
    in the model's dtype (bf16 under autocast), as the HF head does, and the loss in fp32."""
    raw = F.linear(hidden, weight, bias)  # (T, V)
    logits = raw.float()
    if softcap is None:
        return logits, None, raw.dtype
    tanh = (logits / softcap).tanh_()  # Gemma-2-style final logit soft-capping, as the model's head applies it
    return tanh * softcap, tanh, raw.dtype


def _chunk_nll_sum(hidden, weight, bias, target, softcap) -> torch.Tensor:
    logits, _, _ = _logits(hidden, weight, bias, softcap)
    return F.cross_entropy(logits, target, reduction="sum")


class _FusedLinearNLL(torch.autograd.Function):
    """Sum of the NLL of `target` under softmax(hidden @ weight.T + bias), chunk by chunk, with the
    gradients computed in forward (the logits of a chunk are dropped before the next one)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk: int, softcap):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], target[start : start + chunk]
            logits, tanh, dtype = _logits(h, weight, bias, softcap)
            lse = torch.logsumexp(logits, dim=-1)  # (T,)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d(sum NLL)/d(logits) = softmax − one-hot
            g[torch.arange(len(t), device=t.device), t] -= 1
            if tanh is not None:
                g *= 1 - tanh * tanh
            g = g.to(dtype)  # the gradient enters the head's matmuls in the head's dtype, as in autograd
            if need_h:
                grad_h[start : start + chunk] = g @ weight.to(dtype)
            if need_w:
                grad_w += (g.T @ h.to(dtype)).float()
            if need_b:
                grad_b += g.float().sum(0)
            del logits, g
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.needs = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [
            (next(saved) * grad_out).to(dt) if need else None for need, dt in zip(ctx.needs, ctx.dtypes, strict=True)
        ]
        return (*grads, None, None, None)


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    aligned: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL over scored tokens, number of scored tokens) for hidden (B, N, H), weight (V, H), labels (B, N).

    `aligned=True`: labels are already the next-token targets of each position (position t predicts
    labels[t]), as a context-parallel shard gets them; by default position t predicts labels[t + 1].

    Equal to the HF causal-LM loss in value and gradient (see the module doc for the scored tokens).
    Only scored positions enter the LM head, so SFT with a long prompt and a short answer pays for
    the answer tokens only. With no scored token the loss is 0 (still attached to the graph).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree")
    if aligned:
        h, target = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    else:
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B·(N-1), H): position t predicts label t+1
        target = labels[:, 1:].reshape(-1)
    scored = (target != ignore_index).nonzero().squeeze(1)
    count = scored.numel()
    if count == 0:
        return hidden.sum() * 0.0, torch.zeros((), dtype=torch.long, device=hidden.device)
    h = h.index_select(0, scored)
    target = target.index_select(0, scored)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (h, weight, bias))
    if grad:
        total = _FusedLinearNLL.apply(h, weight, bias, target, chunk_size, softcap)
    else:
        total = sum(
            _chunk_nll_sum(h[s : s + chunk_size], weight, bias, target[s : s + chunk_size], softcap)
            for s in range(0, count, chunk_size)
        )
    return total / count, torch.tensor(count, device=hidden.device)


def lm_head_of(model) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """(weight, bias, softcap) of a causal LM's output head, for `chunked_causal_lm_loss`.

    Works through PEFT wrappers: `get_output_embeddings()` returns the module the forward pass
    uses, and a head wrapped by PEFT (`modules_to_save`) exposes the active copy's weight.
    """
    base = unwrapped(model)
    head = base.get_output_embeddings()
    active = getattr(head, "modules_to_save", None)
    if active is not None and getattr(head, "active_adapter", None):
        name = head.active_adapter if isinstance(head.active_adapter, str) else head.active_adapter[0]
        if name in active:
            head = active[name]
    config = getattr(base.config, "text_config", base.config)
    softcap = getattr(config, "final_logit_softcapping", None)
    return head.weight, getattr(head, "bias", None), softcap


def causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    aligned: bool = False,
    **forward_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the decoder of `model` (a HF causal LM, PEFT-wrapped or not) and return the chunked loss.

    The decoder is the model's `base_model` (e.g. `LlamaModel` inside `LlamaForCausalLM`); calling it
    directly skips the model's own head, whose [N × vocab] logits are what this module avoids.
    """
    base = unwrapped(model)
    decoder = base.base_model
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    weight, bias, softcap = lm_head_of(model)
    return chunked_causal_lm_loss(
        out.last_hidden_state, weight, labels, bias=bias, chunk_size=chunk_size, softcap=softcap, aligned=aligned
    )


class CausalLMLoss(torch.nn.Module):
    """A causal LM and its chunked loss as one module: forward(ids, labels, mask) -> (mean NLL, scored tokens).

    The training step calls this rather than `causal_lm_loss` directly, so that a data-parallel wrapper
    (DDP) put around it sees the whole forward pass and reduces the gradients of every trainable weight.
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int = DEFAULT_CHUNK):
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        aligned: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`position_ids` and `aligned` targets: a context-parallel shard (`trainer.context_parallel`)."""
        return causal_lm_loss(
            self.model,
            input_ids,
            labels,
            attention_mask=attention_mask,
            chunk_size=self.chunk_size,
            aligned=aligned,
            position_ids=position_ids,
        )
