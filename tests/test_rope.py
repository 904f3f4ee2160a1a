"""Context extension methods (`llqa.rope`) against transformers' own RoPE code, on the RoPE fields of real
checkpoints: every method's frequencies, composition re-derived from the original, the original context
decided from evidence (LongLoRA's and llqa's conventions), refusals, PI's numbers unchanged, and the legacy
config keys an older (transformers 4.x) reader needs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_llama_config
from llqa import rope as R
from llqa.errors import LlqaError
from llqa.models import RopeOptions, add_legacy_rope_keys, checkpoint_rope, extend_context

# ----------------------------------------------------------------------------- real configs
# Only the fields RoPE reads (and the shape fields transformers needs to build the config), exactly as the
# checkpoints' config.json files have them.

# meta-llama/Llama-3.1-8B config.json. The llama3 block is the one published with every Llama-3.1 model
# (the same values appear verbatim in configs vendored by many repositories, e.g. lucasnewman/mlx-audio's
# llama_configs.py); Llama-3.2-1B/3B carry factor 32.0 with the same other fields.
LLAMA_31_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
}
# Qwen/Qwen2.5-7B-Instruct config.json (as printed by ms-swift's model_info log of that checkpoint, with
# transformers 4.56.1): no scaling at 32,768, θ = 1e6.
QWEN25_7B_INSTRUCT = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "sliding_window": 131072,
    "use_sliding_window": False,
}
# The block Qwen's model cards (Qwen2/2.5 Instruct; Qwen3 with "rope_type") tell users to add for 128k.
QWEN_YARN_BLOCK = {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
# Qwen/Qwen3-8B config.json: max_position_embeddings 40,960 (32,768 + 8,192 of output, per its model card),
# θ = 1e6, explicit head_dim, no scaling.
QWEN3_8B = {
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "head_dim": 128,
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000,
    "rope_scaling": None,
}
# mistralai/Mistral-7B-v0.1 config.json: 32,768 positions, θ = 1e4, a 4,096-token sliding window
# (transformers' MistralConfig documents its defaults as this checkpoint's).
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
}
# Yukang/Llama-2-13b-longlora-32k-ft: LongLoRA's fine-tune.py (dvlab-research/LongLoRA) sets
# `config.rope_scaling = {"type": "linear", "factor": ceil(model_max_length / orig_ctx_len)}` and leaves
# max_position_embeddings at Llama-2's 4096, and the model is saved with that config.
LONGLORA_13B_32K = {
    "model_type": "llama",
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "num_key_value_heads": 40,
    "vocab_size": 32001,
    "max_position_embeddings": 4096,
    "rope_scaling": {"factor": 8.0, "type": "linear"},
    "rope_theta": 10000.0,
}
# LongQLoRA-Llama2-7b-8k: LongQLoRA's script/merge_lora.py (yangjianxin1/LongQLoRA) sets the same linear
# block with factor ceil(8192 / 4096) = 2 on Llama-2-7b's config and saves the merged model with it.
LONGQLORA_7B_8K = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rope_scaling": {"factor": 2.0, "type": "linear"},
    "rope_theta": 10000.0,
}
UNSCALED = {"qwen2.5-7b": QWEN25_7B_INSTRUCT, "qwen3-8b": QWEN3_8B, "mistral-7b": MISTRAL_7B}


def make(doc: dict, **overrides):
    """The config transformers builds from a config.json with these fields."""
    from transformers import AutoConfig

    doc = json.loads(json.dumps({**doc, **overrides}))  # a deep copy: transformers edits rope dicts in place
    return AutoConfig.for_model(doc.pop("model_type"), **doc)


def model_inv_freq(config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """What the model's own rotary embedding module runs with (after one forward pass of `seq_len`)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    cls = {
        "llama": LlamaRotaryEmbedding,
        "qwen2": Qwen2RotaryEmbedding,
        "qwen3": Qwen3RotaryEmbedding,
        "mistral": MistralRotaryEmbedding,
    }[config.model_type]
    module = cls(config)
    if seq_len is not None:  # dynamic NTK updates from the longest position of the pass
        module(torch.zeros(1, 1, 1), torch.tensor([[seq_len - 1]]))
    return module.inv_freq.clone(), float(module.attention_scaling)


def reference(doc: dict, params: dict, seq_len: int | None = None, **overrides):
    """transformers' ROPE_INIT_FUNCTIONS on a config whose rope parameters are written here by hand."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = make(doc, rope_scaling=None, **overrides)
    config.rope_parameters = params
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)


def dim_of(doc: dict) -> int:
    return doc.get("head_dim") or doc["hidden_size"] // doc["num_attention_heads"]


# ----------------------------------------------------------------------------- every method = transformers


@pytest.mark.parametrize("name", UNSCALED)
@pytest.mark.parametrize("method", ["pi", "yarn", "dynamic", "theta"])
def test_every_method_runs_transformers_own_rope(name, method):
    """4× the checkpoint's context by each method: the model's rotary module runs exactly the frequencies
    (and attention scaling) transformers computes for that method's parameters written by hand."""
    doc = UNSCALED[name]
    native, theta = doc["max_position_embeddings"], float(doc["rope_theta"])
    target = 4 * native
    config, before, after = extend_context(make(doc), target, RopeOptions(method))
    assert before.method == "none" and after.method == method and after.ctx == target
    got, got_scale = model_inv_freq(config, seq_len=target)
    if method == "pi":
        want, want_scale = reference(doc, {"rope_type": "linear", "factor": 4.0, "rope_theta": theta})
    elif method == "yarn":
        want, want_scale = reference(
            doc, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": native, "rope_theta": theta}
        )
        assert want_scale == pytest.approx(0.1 * math.log(4) + 1)  # YaRN's attention temperature
    elif method == "dynamic":
        want, want_scale = reference(doc, {"rope_type": "dynamic", "factor": 4.0, "rope_theta": theta}, target)
        assert config.max_position_embeddings == native  # transformers reads the original from it
    else:  # NTK-aware θ: the base transformers' dynamic NTK picks at the target length with factor 1
        want, want_scale = reference(doc, {"rope_type": "dynamic", "factor": 1.0, "rope_theta": theta}, target)
        d = dim_of(doc)
        assert after.theta == pytest.approx(theta * 4 ** (d / (d - 2)))
        assert config.rope_parameters["rope_type"] == "default"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert got_scale == pytest.approx(want_scale)
    if method != "theta":
        assert config.rope_parameters["rope_theta"] == theta  # θ is never lost


def test_llama31_is_extended_by_its_own_llama3_rule_not_stacked():
    """Llama-3.1 (llama3 ×8, 8k → 128k) to 256k: factor 16 re-derived from the original 8k, every other
    llama3 field and θ kept; frequencies = transformers' llama3 on those parameters."""
    config, before, after = extend_context(make(LLAMA_31_8B), 262144)
    assert (before.method, before.ctx, before.original.ctx, before.factor) == ("llama3", 131072, 8192, 8.0)
    want = {
        "rope_type": "llama3",
        "factor": 16.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    assert config.rope_parameters == want and config.max_position_embeddings == 262144
    torch.testing.assert_close(model_inv_freq(config)[0], reference(LLAMA_31_8B, want)[0])
    assert extend_context(make(LLAMA_31_8B), 131072)[0].rope_parameters == make(LLAMA_31_8B).rope_parameters


def test_qwen_yarn_checkpoint_is_extended_from_its_original():
    """Qwen2.5 with its model card's YaRN block (×4 from 32k, max_position_embeddings left at 32768) serves
    131,072 tokens; 262,144 is YaRN ×8 from 32k — not ×8 on top of ×4."""
    qwen = make(QWEN25_7B_INSTRUCT, rope_scaling=QWEN_YARN_BLOCK)
    unchanged, before, _ = extend_context(qwen, 131072)
    assert (before.method, before.ctx, before.original.ctx) == ("yarn", 131072, 32768)
    assert unchanged.rope_parameters == qwen.rope_parameters
    config, _, after = extend_context(qwen, 262144)
    assert config.rope_parameters == {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
    }
    torch.testing.assert_close(model_inv_freq(config)[0], reference(QWEN25_7B_INSTRUCT, config.rope_parameters)[0])


def test_qwen3_yarn_from_its_stated_original_matches_the_model_card():
    """Qwen3 serves 40,960 positions but was pretrained at 32,768 (its model card): told so, `--rope yarn
    --ctx 131072` writes exactly the card's block (with θ)."""
    config, _, _ = extend_context(make(QWEN3_8B), 131072, RopeOptions("yarn", original_ctx=32768))
    card = {k: v for k, v in QWEN_YARN_BLOCK.items() if k != "type"}
    assert config.rope_parameters == {**card, "rope_type": "yarn", "rope_theta": 1000000}


@pytest.mark.parametrize("method", ["pi", "yarn", "dynamic", "theta", "llama3"])
@pytest.mark.parametrize("name", UNSCALED)
def test_composition_is_idempotent(name, method):
    """Native → 2× → 4× equals native → 4×: from the Rope (pure functions) and from the config an llqa run
    writes (its record keeps the original)."""
    doc = UNSCALED[name]
    native = doc["max_position_embeddings"]
    start = checkpoint_rope(make(doc))
    direct = R.extend(start, 4 * native, method)
    assert R.extend(R.extend(start, 2 * native, method), 4 * native, method) == direct
    half, _, mid = extend_context(make(doc), 2 * native, RopeOptions(method))
    again, _, _ = extend_context(half, 4 * native, source=run_source({"rope": mid.record()}))
    assert again.rope_parameters == direct.params
    assert again.max_position_embeddings == direct.max_position_embeddings


def run_source(record: dict):
    from llqa.models import ModelSource

    return ModelSource("run", "hf", "run", "an llqa run", trained_ctx=record.get("ctx"), record=record)


def test_theta_extension_of_a_plain_checkpoint_composes_without_a_record():
    """A θ-raised checkpoint looks native at its new context; raising again multiplies to the same θ."""
    doc = MISTRAL_7B
    once, _, _ = extend_context(make(doc), 65536, RopeOptions("theta"))
    twice, _, _ = extend_context(once, 131072, RopeOptions("theta"))
    direct, _, _ = extend_context(make(doc), 131072, RopeOptions("theta"))
    assert twice.rope_parameters["rope_theta"] == pytest.approx(direct.rope_parameters["rope_theta"], rel=1e-12)


def test_explicit_rope_theta_overrides_the_rule():
    config, _, after = extend_context(make(MISTRAL_7B), 65536, RopeOptions("theta", theta=1e6))
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6} and after.label() == "theta θ=1e+06"


# ----------------------------------------------------------------------------- the original context


def test_longlora_checkpoint_without_evidence_is_refused_with_the_question():
    """LongLoRA keeps 4096 beside ×8: `--ctx 32768` must not become ×64; nothing in the config says which
    convention it follows, so llqa asks."""
    config = make(LONGLORA_13B_32K)
    with pytest.raises(LlqaError) as e:
        extend_context(config, 32768)
    assert "--rope-original-ctx 4096 or --rope-original-ctx 512" in str(e.value) and "\n" not in str(e.value)
    unchanged, before, _ = extend_context(config, 4096)  # inside both readings: nothing to decide
    assert unchanged.rope_parameters == config.rope_parameters and before.ambiguous == (4096, 512)


@pytest.mark.parametrize(("doc", "serves"), [(LONGLORA_13B_32K, 32768), (LONGQLORA_7B_8K, 8192)])
def test_longlora_convention_once_told(doc, serves):
    opts = RopeOptions(original_ctx=4096)
    same, before, _ = extend_context(make(doc), serves, opts)
    factor = doc["rope_scaling"]["factor"]
    assert before.ctx == serves and same.rope_parameters["factor"] == factor  # ×8 at 32k (was ×64)
    further, _, _ = extend_context(make(doc), 2 * serves, opts)
    assert further.rope_parameters["factor"] == 2 * factor and further.max_position_embeddings == 2 * serves


def test_llqa_convention_is_read_from_the_run_record():
    """An llqa merged model stores the trained context in max_position_embeddings (PI ×4: 1024 from 256):
    with its record (old records carry only ctx) it serves 1024, and 2048 is ×8."""
    merged = extend_context(tiny_llama_config(100, max_position_embeddings=256), 1024)[0]
    for record in ({"ctx": 1024}, {"ctx": 1024, "rope": checkpoint_rope(merged, {"ctx": 1024}).record()}):
        source = run_source(record)
        same, before, _ = extend_context(merged, 1024, source=source)
        assert before.ctx == 1024 and before.original.ctx == 256 and same.rope_parameters["factor"] == 4.0
        assert extend_context(merged, 2048, source=source)[0].rope_parameters["factor"] == 8.0


# ----------------------------------------------------------------------------- refusals: one line each


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and " — " in text  # what went wrong — how to fix it
    return text


def test_another_method_than_the_checkpoints_is_refused_naming_both():
    with pytest.raises(LlqaError) as e:
        extend_context(make(LLAMA_31_8B), 262144, RopeOptions("yarn"))
    assert "carries llama3" in one_line(e) and "--rope yarn" in str(e.value) and "--rope llama3" in str(e.value)


def test_longrope_and_per_layer_rope_are_refused():
    from transformers import Gemma3TextConfig

    phi3 = make(
        {**MISTRAL_7B, "model_type": "phi3", "max_position_embeddings": 131072, "partial_rotary_factor": 1.0},
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0] * 64,
            "long_factor": [2.0] * 64,
            "original_max_position_embeddings": 4096,
        },
    )
    with pytest.raises(LlqaError) as e:
        extend_context(phi3, 262144)
    assert "longrope" in one_line(e)
    with pytest.raises(LlqaError) as e:
        extend_context(Gemma3TextConfig(), 262144)
    assert "per-layer" in one_line(e)


def test_bad_rope_options_are_refused():
    config = make(MISTRAL_7B)
    for opts, words in [
        (RopeOptions("ntk"), "--rope ntk is not a method"),
        (RopeOptions("yarn", theta=1e6), "--rope-theta sets θ for --rope theta"),
        (RopeOptions("theta", theta=-1.0), "--rope-theta must be a positive"),
    ]:
        with pytest.raises(LlqaError) as e:
            extend_context(config, 65536, opts)
        assert words in one_line(e)


def test_dynamic_ntk_is_refused_for_training():
    from trainer.config import TrainConfig

    with pytest.raises(LlqaError) as e:
        TrainConfig(task="train", out="x", ctx=512, data=["x"], rope="dynamic")
    assert "cannot be trained" in one_line(e)


# ----------------------------------------------------------------------------- today's PI, unchanged


def test_pi_numbers_are_unchanged():
    """Golden values from the Position Interpolation loader before `llqa.rope` existed (same seed, same
    tokens): the parameters and the loss of a tiny random model at ×3.90625."""
    from transformers import AutoModelForCausalLM

    config, _, _ = extend_context(tiny_llama_config(49152, max_position_embeddings=256), 1000)
    assert config.rope_parameters == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 3.90625}
    assert config.max_position_embeddings == 1000
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()
    ids = (torch.arange(1000) * 7919 % 49152)[None]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss == pytest.approx(10.815971374511719, rel=1e-6, abs=0)


# ----------------------------------------------------------------------------- an older reader


def legacy_rope(doc: dict, seq_len: int) -> tuple[torch.Tensor, float]:
    """The RoPE transformers 4.57 builds from a config.json dict, rewritten from its source: LlamaConfig
    reads `rope_theta` (default 10000.0) and `rope_scaling` (`type` accepted for `rope_type`) and ignores
    `rope_parameters`; modeling_rope_utils' _compute_{default,linear_scaling,dynamic_ntk,yarn,llama3}
    compute the frequencies (dynamic at the forward pass's `seq_len`)."""
    base = float(doc.get("rope_theta", 10000.0))
    scaling = doc.get("rope_scaling")
    dim = doc.get("head_dim") or doc["hidden_size"] // doc["num_attention_heads"]
    max_pos = doc["max_position_embeddings"]
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else "default"
    if kind == "dynamic":
        factor, seq = scaling["factor"], max(seq_len, max_pos)
        base = base * ((factor * seq / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if kind in ("default", "dynamic"):
        return inv, 1.0
    if kind == "linear":
        return inv / scaling["factor"], 1.0
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, out), 1.0
    assert kind == "yarn", kind
    factor = scaling["factor"]
    original = scaling.get("original_max_position_embeddings") or max_pos
    scale = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
    fast, slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = max(math.floor(correction_dim(fast)), 0), min(math.ceil(correction_dim(slow)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos)) * (1 - extrapolation) + (1.0 / pos) * extrapolation, scale


@pytest.mark.parametrize("method", ["pi", "yarn", "dynamic", "theta", "llama3"])
def test_an_older_reader_gets_the_same_rope_from_a_written_config(tmp_path, method):
    """The config.json llqa writes (merge, full runs) read the transformers 4.x way runs the RoPE transformers
    5 runs; without the legacy keys that reader would run θ = 10,000 and no scaling."""
    from transformers import AutoConfig

    config, _, after = extend_context(make(QWEN3_8B), 4 * 40960, RopeOptions(method))
    config.save_pretrained(tmp_path)
    bare = json.loads((tmp_path / "config.json").read_text())
    add_legacy_rope_keys(tmp_path / "config.json")
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["rope_theta"] == after.theta
    seq = after.ctx
    new, new_scale = model_inv_freq(AutoConfig.from_pretrained(tmp_path), seq_len=seq)
    old, old_scale = legacy_rope(doc, seq)
    torch.testing.assert_close(old, new, rtol=1e-5, atol=0)
    assert old_scale == pytest.approx(new_scale)
    stale, _ = legacy_rope({**bare, "rope_theta": bare.get("rope_theta", 10000.0)}, seq)
    assert not torch.allclose(stale, new, rtol=1e-3)  # what older readers ran before these keys were written


def test_info_reports_what_a_non_linear_checkpoint_carries(tmp_path):
    """A llama3 (or yarn) checkpoint is no longer reported as "factor 1": method, factor, θ and contexts are
    what its config says."""
    from llqa.models import describe

    tiny = {**LLAMA_31_8B, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
    make(tiny, num_hidden_layers=2, num_key_value_heads=2, vocab_size=100).save_pretrained(tmp_path)
    info = describe(str(tmp_path), device="cpu")
    assert (info.checkpoint_rope_method, info.checkpoint_rope_factor, info.checkpoint_rope_theta) == (
        "llama3",
        8.0,
        500000.0,
    )
    assert (info.native_ctx, info.target_ctx, info.rope_label) == (8192, 131072, "llama3 ×8")
    shape = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, vocab_size=100)
    make(LONGLORA_13B_32K, num_attention_heads=4, num_key_value_heads=4, **shape).save_pretrained(tmp_path)
    assert describe(str(tmp_path), device="cpu").original_ctx_candidates == [4096, 512]
