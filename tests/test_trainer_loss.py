"""The chunked loss equals transformers' own causal-LM loss, in value and in gradient."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build_tiny_llama
from trainer.loss import causal_lm_loss, chunked_causal_lm_loss

VOCAB = 512


def _batch(seed=0, b=2, n=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, n), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100  # a masked prompt
    labels[1, 25:] = -100  # masked padding at the end
    return ids, labels


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_loss_equals_hf_loss_and_grads(chunk):
    ids, labels = _batch()
    ref_model = build_tiny_llama(VOCAB, seed=3)
    ours_model = build_tiny_llama(VOCAB, seed=3)
    ref = ref_model(input_ids=ids, labels=labels).loss
    ref.backward()
    ours, count = causal_lm_loss(ours_model, ids, labels, chunk_size=chunk)
    ours.backward()
    assert count.item() == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(ref_model.named_parameters(), ours_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_tied_head_gradient_reaches_embedding():
    ids, labels = _batch(1)
    ref_model = build_tiny_llama(VOCAB, seed=4, tie_word_embeddings=True)
    ours_model = build_tiny_llama(VOCAB, seed=4, tie_word_embeddings=True)
    ref_model(input_ids=ids, labels=labels).loss.backward()
    causal_lm_loss(ours_model, ids, labels, chunk_size=5)[0].backward()
    emb = ours_model.get_input_embeddings().weight
    assert emb is ours_model.get_output_embeddings().weight
    torch.testing.assert_close(emb.grad, ref_model.get_input_embeddings().weight.grad, rtol=1e-5, atol=1e-7)


def test_chunked_loss_pure_function_invariants():
    torch.manual_seed(0)
    hidden = torch.randn(1, 9, 8, requires_grad=True)
    weight = torch.randn(11, 8)
    labels = torch.randint(0, 11, (1, 9))
    # by hand: mean NLL of label t+1 under softmax(hidden_t @ W^T) over all 8 predicted positions
    logp = torch.log_softmax(hidden[0, :-1] @ weight.T, dim=-1)
    manual = -logp.gather(1, labels[0, 1:, None]).mean()
    loss, count = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=3)
    torch.testing.assert_close(loss, manual)
    assert count.item() == 8
    # no scored token: zero loss, still differentiable
    none, count = chunked_causal_lm_loss(hidden, weight, torch.full_like(labels, -100))
    none.backward()
    assert none.item() == 0.0 and count.item() == 0 and hidden.grad.abs().sum() == 0
    with pytest.raises(ValueError):
        chunked_causal_lm_loss(hidden, weight, labels[:, :5])


def test_fused_gradients_bias_softcap_and_grad_scaling_match_autograd():
    """Reference: plain autograd through full fp32 logits (+ bias, soft-capping), for every input."""
    torch.manual_seed(1)
    hidden = torch.randn(2, 13, 8, requires_grad=True)
    weight = torch.randn(17, 8, requires_grad=True)
    bias = torch.randn(17, requires_grad=True)
    labels = torch.randint(0, 17, (2, 13))
    labels[1, :4] = -100
    for softcap in (None, 2.0):
        logits = torch.nn.functional.linear(hidden[:, :-1], weight, bias)
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 17), labels[:, 1:].reshape(-1))
        ref_grads = torch.autograd.grad(3 * ref, (hidden, weight, bias))
        ours, _ = chunked_causal_lm_loss(hidden, weight, labels, bias=bias, chunk_size=5, softcap=softcap)
        grads = torch.autograd.grad(3 * ours, (hidden, weight, bias))
        torch.testing.assert_close(ours, ref)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r)


def test_bf16_autocast_loss_and_grads_close_to_hf():
    ids, labels = _batch(2)
    ref_model = build_tiny_llama(VOCAB, seed=6)
    ours_model = build_tiny_llama(VOCAB, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = ref_model(input_ids=ids, labels=labels).loss
        ours, _ = causal_lm_loss(ours_model, ids, labels, chunk_size=16)
    ref.backward()
    ours.backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    for p, q in zip(ref_model.parameters(), ours_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0.05, atol=2e-3)
