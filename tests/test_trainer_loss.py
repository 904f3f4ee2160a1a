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
