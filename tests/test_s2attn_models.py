"""S2-Attn inside transformers models (tiny random Llama, Qwen2, Mistral; fp32 CPU): registered through
the AttentionInterface, eval and generation equal plain SDPA, packing and padding respected in
training, no future leak through a whole model, PEFT models, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from llqa.errors import LlqaError
from tests.conftest import build_tiny_llama
from trainer.s2attn import S2_ATTN_NAME, disable_s2_attention, enable_s2_attention

VOCAB = 128
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)


def build(family: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    if family == "llama":
        return build_tiny_llama(VOCAB, seed, **overrides)
    config_class = {"qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    extra = {"sliding_window": None} if family == "mistral" else {}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config_class(**{**SMALL, **extra, **overrides}), attn_implementation="sdpa"
    )
    return model.float().eval()


def pair(family: str, ratio: float = 0.25, **overrides):
    """(plain SDPA model, the same weights with S2-Attn enabled)."""
    plain = build(family, **overrides)
    s2 = copy.deepcopy(plain)
    enable_s2_attention(s2, group_ratio=ratio)
    return plain, s2


def ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, input_ids, **kw):
    # no KV cache: transformers reads packed sequences from position_ids only without one (as in training)
    return model(input_ids=input_ids, use_cache=False, **kw).logits


FAMILIES = ["llama", "qwen2", "mistral"]


@pytest.mark.parametrize("family", FAMILIES)
def test_registered_and_switched_through_the_interface(family):
    from transformers import AttentionInterface

    plain, s2 = pair(family)
    assert s2.config._attn_implementation == S2_ATTN_NAME and s2.config.s2_group_ratio == 0.25
    assert S2_ATTN_NAME in AttentionInterface()
    assert plain.config._attn_implementation == "sdpa"
    disable_s2_attention(s2)
    assert s2.config._attn_implementation == "sdpa" and not hasattr(s2.config, "s2_group_ratio")


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_equals_full_attention(family):
    """Eval mode hands over to transformers' SDPA with the exact mask: padded and packed batches."""
    plain, s2 = pair(family)
    x = ids(2, 32)
    pad = torch.ones(2, 32, dtype=torch.long)
    pad[1, :5] = 0  # left padding
    pad[0, 28:] = 0  # right padding
    packed_pos = torch.cat([torch.arange(12), torch.arange(20)])[None].expand(2, -1)
    with torch.no_grad():
        for kw in ({}, {"attention_mask": pad}, {"position_ids": packed_pos}):
            torch.testing.assert_close(logits(s2, x, **kw), logits(plain, x, **kw), atol=1e-5, rtol=1e-5)
        s2.train()  # train mode really is different: guards against S2 never being called
        assert not torch.allclose(logits(s2, x), logits(plain, x), atol=1e-3)


def test_generation_equals_full_attention():
    plain, s2 = pair("llama")
    x = ids(2, 10, seed=1)
    pad = torch.ones_like(x)
    pad[0, :3] = 0
    kw = dict(attention_mask=pad, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(s2.generate(x, **kw), plain.generate(x, **kw))


@pytest.mark.parametrize("family", FAMILIES)
def test_training_packed_sequences_stay_apart(family):
    """Two documents packed into one row (position_ids restart, no mask) give each document's logits
    exactly as when it is alone: G = 64 × 1/4 = 16 packed, 32 × 1/2 = 16 alone, same pieces."""
    _, s2 = pair(family, ratio=0.25)
    s2.train()
    a, b = ids(1, 32, seed=2), ids(1, 32, seed=3)
    pos = torch.cat([torch.arange(32), torch.arange(32)])[None]
    packed = logits(s2, torch.cat([a, b], dim=1), position_ids=pos)
    enable_s2_attention(s2, group_ratio=0.5)
    torch.testing.assert_close(packed[:, :32], logits(s2, a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 32:], logits(s2, b), atol=1e-5, rtol=1e-5)


def test_training_padding_is_masked():
    """Left padding (its own segment) and right padding leave the real tokens' logits as without it:
    N = 64, G = 16 padded; the 48 real tokens alone with ratio 1/3 have G = 16 and the same pieces."""
    _, s2 = pair("llama", ratio=0.25)
    s2.train()
    real = ids(2, 48, seed=4)
    x = torch.zeros(2, 64, dtype=torch.long)
    x[0, 16:], x[1, :48] = real[0], real[1]
    mask = (torch.arange(64) >= 16).long()[None].repeat(2, 1)
    mask[1] = (torch.arange(64) < 48).long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    padded = logits(s2, x, attention_mask=mask, position_ids=pos)
    enable_s2_attention(s2, group_ratio=1 / 3)
    alone = logits(s2, real)
    torch.testing.assert_close(padded[0, 16:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1, :48], alone[1], atol=1e-5, rtol=1e-5)


def test_no_future_leak_through_the_model():
    _, s2 = pair("llama")
    s2.train()
    emb = s2.get_input_embeddings()(ids(1, 32, seed=5)).detach().requires_grad_()
    for t in (1, 5, 17, 29):
        s2(inputs_embeds=emb).logits[0, t].sum().backward()
        assert emb.grad[0, t + 1 :].abs().max().item() == 0.0 and emb.grad[0, : t + 1].abs().max().item() > 0
        emb.grad = None


def test_peft_model_with_gradient_checkpointing():
    from peft import LoraConfig, get_peft_model

    base = build("qwen2")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    enable_s2_attention(model, group_ratio=0.25)
    assert base.config._attn_implementation == S2_ATTN_NAME
    model.train()
    x = ids(1, 32, seed=6)
    model(input_ids=x, labels=x).loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in lora_grads)
    disable_s2_attention(model)
    assert base.config._attn_implementation == "sdpa"


def test_length_not_a_multiple_is_a_clear_error():
    _, s2 = pair("llama", ratio=0.25)
    s2.train()
    with pytest.raises(LlqaError, match="multiple of 8, got 60 tokens"):
        logits(s2, ids(1, 60))


def test_sliding_window_refused_in_training_but_eval_is_exact():
    plain, s2 = pair("mistral", sliding_window=8)
    x = ids(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(logits(s2, x), logits(plain, x), atol=1e-5, rtol=1e-5)
    s2.train()
    with pytest.raises(LlqaError, match="sliding-window"):
        logits(s2, x)


def test_bad_settings_are_clear_errors():
    model = build("llama")
    with pytest.raises(LlqaError, match="group-ratio"):
        enable_s2_attention(model, group_ratio=1.5)
    with pytest.raises(LlqaError, match="backend"):
        enable_s2_attention(model, backend="triton")


def test_mask_function_returns_compact_segments_or_the_exact_mask():
    """What the registered mask function hands the attention: None (plain causal), a (B, N) segment
    code (padding / packing, whole sequence), else exactly SDPA's mask (cache, sliding window)."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    from trainer.s2attn import _s2_mask, sdpa_mask_from_code

    base = dict(
        batch_size=1,
        q_length=8,
        kv_length=8,
        q_offset=0,
        kv_offset=0,
        mask_function=causal_mask_function,
        attention_mask=None,
        allow_is_causal_skip=True,
        use_vmap=False,
        device=torch.device("cpu"),
    )
    assert _s2_mask(**base) is None
    pad = torch.tensor([[False, False, True, True, True, True, True, True]])
    code = _s2_mask(**{**base, "attention_mask": pad})
    assert code.tolist() == [[-1, -1, 0, 0, 0, 0, 0, 0]]
    assert torch.equal(sdpa_mask_from_code(code), sdpa_mask(**{**base, "attention_mask": pad}))
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])

    def packed(b, h, q, kv):  # what transformers composes from restarting position_ids
        return (kv <= q) & (seg[b, q] == seg[b, kv])

    def sliding(b, h, q, kv):
        return (kv <= q) & (q - kv < 3)

    code = _s2_mask(**{**base, "mask_function": packed, "allow_is_causal_skip": False})
    assert code.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    old_api = {k: v for k, v in base.items() if k not in ("q_length", "q_offset")}
    assert _s2_mask(**old_api, cache_position=torch.arange(8)) is None  # transformers passing positions
    cached = {**base, "q_length": 1, "kv_length": 9, "q_offset": 8, "attention_mask": torch.cat([pad, pad[:, -1:]], 1)}
    assert torch.equal(_s2_mask(**cached), sdpa_mask(**cached))
    window = {**base, "mask_function": sliding, "local_size": 3}
    assert torch.equal(_s2_mask(**window), sdpa_mask(**window))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_on_gpu_uses_only_the_flash_kernel():
    """A bf16 training step of a model (head dim 64, GQA) with S2-Attn, with SDPA restricted to the
    flash kernel: the layouts transformers hands over never force a math-kernel fallback."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = build("llama", hidden_size=256, intermediate_size=512).cuda().bfloat16()
    enable_s2_attention(model)
    model.train()
    x = ids(1, 512).cuda()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
    assert torch.isfinite(loss)
