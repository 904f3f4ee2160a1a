"""Causal-LM cross-entropy without materialising full-vocabulary logits for the whole sequence.

The plain Hugging Face loss (`model(input_ids, labels=...)`) builds [N × vocab] logits, upcasts them
to fp32 and keeps them for backward: at 64k tokens and SmolLM2's 49,152-token vocabulary that is
12.9 GB for the fp32 logits alone, plus their gradient. Here the loss is computed from the final
hidden states and the LM-head weight `chunk_size` tokens at a time; each chunk's logits are
recomputed in backward (`torch.utils.checkpoint`), so at most one chunk's logits exist at any time.

Which tokens are scored, exactly as in transformers' `ForCausalLMLoss`: labels are aligned with
`input_ids` (position t's label is token t) and shifted inside, so the hidden state at t predicts
label t+1; labels equal to `ignore_index` (-100) are not scored; the result is the mean of the
per-token negative log-likelihood over the scored tokens (fp32), returned with their count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
DEFAULT_CHUNK = 4096  # 4096 tokens × 49,152 vocab × 4 B = 0.8 GB of fp32 logits per chunk


def _chunk_nll_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   target: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Summed NLL of one chunk: logits in the model's dtype (as the HF head computes them), loss in fp32."""
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()  # (T, V)
    if softcap is not None:  # Gemma-2-style final logit soft-capping, as the model's own head applies it
        logits = softcap * (logits / softcap).tanh()
    return F.cross_entropy(logits, target, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                           bias: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                           ignore_index: int = IGNORE_INDEX,
                           softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL over scored tokens, number of scored tokens) for hidden (B, N, H), weight (V, H), labels (B, N).

    Equal to the HF causal-LM loss in value and gradient (see the module doc for the scored tokens).
    Only scored positions enter the LM head, so SFT with a long prompt and a short answer pays for
    the answer tokens only. With no scored token the loss is 0 (still attached to the graph).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree")
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B·(N-1), H): position t predicts label t+1
    target = labels[:, 1:].reshape(-1)
    scored = (target != ignore_index).nonzero().squeeze(1)
    count = scored.numel()
    if count == 0:
        return hidden.sum() * 0.0, torch.zeros((), dtype=torch.long, device=hidden.device)
    h = h.index_select(0, scored)
    target = target.index_select(0, scored)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        args = (h[start:start + chunk_size], weight, bias, target[start:start + chunk_size], softcap)
        if grad:  # keep only the chunk's inputs; its logits are recomputed in backward
            total = total + checkpoint(_chunk_nll_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_nll_sum(*args)
    return total / count, torch.tensor(count, device=hidden.device)


def lm_head_of(model) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """(weight, bias, softcap) of a causal LM's output head, for `chunked_causal_lm_loss`.

    Works through PEFT wrappers: `get_output_embeddings()` returns the module the forward pass
    uses, and a head wrapped by PEFT (`modules_to_save`) exposes the active copy's weight.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    active = getattr(head, "modules_to_save", None)
    if active is not None and getattr(head, "active_adapter", None):
        name = head.active_adapter if isinstance(head.active_adapter, str) else head.active_adapter[0]
        if name in active:
            head = active[name]
    config = getattr(base.config, "text_config", base.config)
    softcap = getattr(config, "final_logit_softcapping", None)
    return head.weight, getattr(head, "bias", None), softcap


def causal_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                   **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the decoder of `model` (a HF causal LM, PEFT-wrapped or not) and return the chunked loss.

    The decoder is the model's `base_model` (e.g. `LlamaModel` inside `LlamaForCausalLM`); calling it
    directly skips the model's own head, whose [N × vocab] logits are what this module avoids.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.base_model
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    weight, bias, softcap = lm_head_of(model)
    return chunked_causal_lm_loss(out.last_hidden_state, weight, labels, bias=bias, chunk_size=chunk_size,
                                  softcap=softcap)
