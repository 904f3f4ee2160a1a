"""The model loader: Position Interpolation, source resolution, the embedded default model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_llama, tiny_llama_config
from llqa.errors import LlqaError
from llqa.models import (
    RANDOM_SHAPES,
    RopeOptions,
    checkpoint_rope,
    describe,
    extend_context,
    load_model,
    resolve,
)


def original_ctx_opts(n):
    return RopeOptions(original_ctx=n)


def apply_position_interpolation(config, ctx):
    """The model's config at `ctx` by the default method (Position Interpolation for these models)."""
    return extend_context(config, ctx)[0]


def rope_of(config):
    rope = checkpoint_rope(config)
    return rope.params["rope_type"], rope.factor


def _rotary_cos_sin(config, positions):
    """cos/sin of the model's own rotary embedding module at the given (float) positions."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, len(positions), config.hidden_size)
    return rope(x, torch.tensor([positions], dtype=torch.float32))


# ----------------------------------------------------------------------------- Position Interpolation


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_pi_rotary_at_p_equals_unscaled_at_p_over_f(factor):
    base = tiny_llama_config(100, max_position_embeddings=256)
    scaled = apply_position_interpolation(base, 256 * factor)
    positions = [0.0, 1.0, 7.0, 100.0, 255.0 * factor]
    cos_s, sin_s = _rotary_cos_sin(scaled, positions)
    cos_b, sin_b = _rotary_cos_sin(base, [p / factor for p in positions])
    torch.testing.assert_close(cos_s, cos_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(sin_s, sin_b, rtol=0, atol=1e-5)
    assert scaled.max_position_embeddings == 256 * factor
    assert rope_of(scaled) == ("linear", float(factor))


def test_pi_composes_by_multiplying_with_checkpoint_scaling():
    # A checkpoint already extended x4 (native context now 1024) taken to 2048 ends at x8, not x2.
    # (it says so: llqa writes the extended context into max_position_embeddings and records the original)
    already = apply_position_interpolation(tiny_llama_config(100, max_position_embeddings=256), 1024)
    assert rope_of(already) == ("linear", 4.0)
    further = extend_context(already, 2048, original_ctx_opts(256))[0]
    assert rope_of(further) == ("linear", 8.0)
    direct = apply_position_interpolation(tiny_llama_config(100, max_position_embeddings=256), 2048)
    cos_a, _ = _rotary_cos_sin(further, [0.0, 5.0, 2047.0])
    cos_b, _ = _rotary_cos_sin(direct, [0.0, 5.0, 2047.0])
    torch.testing.assert_close(cos_a, cos_b)


@pytest.mark.parametrize("ctx", [None, 1, 128, 256])
def test_ctx_at_or_below_native_leaves_model_unchanged(ctx):
    base = tiny_llama_config(100, max_position_embeddings=256)
    out = apply_position_interpolation(base, ctx)
    assert out.to_dict() == base.to_dict()
    assert out is not base  # a copy: the caller's config is never mutated


def test_pi_does_not_mutate_input_config():
    base = tiny_llama_config(100, max_position_embeddings=256)
    apply_position_interpolation(base, 4096)
    assert base.max_position_embeddings == 256 and rope_of(base) == ("default", 1.0)


@pytest.mark.parametrize("ctx", [0, -5])
def test_non_positive_ctx_is_a_user_error(ctx):
    with pytest.raises(LlqaError, match="--ctx must be a positive"):
        apply_position_interpolation(tiny_llama_config(100), ctx)


def test_another_method_than_the_checkpoints_is_refused():
    cfg = tiny_llama_config(
        100, max_position_embeddings=256, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    )
    with pytest.raises(LlqaError, match="carries dynamic RoPE.*--rope pi would stack"):
        extend_context(cfg, 1024, RopeOptions(method="pi"))


def test_local_model_dir_loads_with_pi(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir), ctx=1024, dtype="float32", device="cpu")
    assert lm.info.native_ctx == 256 and lm.info.target_ctx == 1024 and lm.info.rope_factor == 4.0
    assert lm.info.kv_heads == 2 and lm.info.heads == 4 and lm.info.layers == 2
    assert lm.model.config.max_position_embeddings == 1024
    native = load_model(str(tiny_llama_dir), dtype="float32", device="cpu")
    ids = torch.arange(5, 40)[None]
    with torch.no_grad():
        a, b = lm.model(ids).logits, native.model(ids).logits
    assert not torch.allclose(a, b)  # the rotary positions really changed


def test_peft_adapter_dir_resolves_its_base(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_llama_dir)
    source = resolve(str(tmp_path / "adapter"))
    assert source.kind == "peft" and source.base.location == str(tiny_llama_dir)
    loaded = load_model(str(tmp_path / "adapter"), dtype="float32", device="cpu")
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, peft_model.eval()(ids).logits)
    assert loaded.info.adapter == str(tmp_path / "adapter")


def test_llqa_run_file_sets_default_ctx(tiny_llama_dir, tmp_path):
    import shutil

    run = tmp_path / "merged"
    shutil.copytree(tiny_llama_dir, run)
    (run / "llqa_model.json").write_text(json.dumps({"base_model": str(tiny_llama_dir), "ctx": 512}))
    info = describe(str(run), device="cpu")
    assert info.target_ctx == 512 and info.rope_factor == 2.0


def test_random_shape_builds_without_weights():
    lm = load_model("random:tiny", dtype="float32", device="cpu")
    assert lm.info.layers == 2 and lm.info.kv_heads == 2
    assert lm.model.config.vocab_size == len(lm.tokenizer)


# ----------------------------------------------------------------------------- errors


def test_unknown_alias():
    with pytest.raises(LlqaError, match="unknown model 'llama-9000'"):
        resolve("llama-9000")


def test_missing_path():
    with pytest.raises(LlqaError, match="no such file or directory"):
        resolve("./does/not/exist")


def test_dir_without_model(tmp_path):
    with pytest.raises(LlqaError, match="no config.json"):
        resolve(str(tmp_path))


def test_uncached_hub_model_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(LlqaError, match="not in the local Hugging Face cache") as e:
        resolve("7b")
    assert "HF_HOME" in str(e.value)


def test_bad_device_and_dtype(tiny_llama_dir):
    with pytest.raises(LlqaError, match="--dtype"):
        describe(str(tiny_llama_dir), dtype="int3", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LlqaError, match="no CUDA GPU"):
            describe(str(tiny_llama_dir), device="cuda")


# ----------------------------------------------------------------------------- the real default model


def test_smollm2_resolves_offline_to_gguf_or_cache():
    source = resolve("smollm2-135m")
    assert source.kind in {"gguf", "hf"}
    assert "SmolLM2" in source.note


def test_smollm2_conversion_is_cached_by_checksum(smollm2):
    from llqa.models import cache_dir, files_location

    source = resolve("smollm2-135m")
    if source.kind != "gguf":
        pytest.skip("hub weights in cache; GGUF path not used")
    location = files_location(source)
    assert location.startswith(str(cache_dir() / "gguf"))
    meta = json.loads(open(f"{location}/llqa_source.json").read())
    assert meta["sha256"].startswith(location.rsplit("/", 1)[-1])


def test_smollm2_real_model_shape(smollm2):
    info = smollm2.info
    assert (info.layers, info.heads, info.kv_heads, info.native_ctx) == (30, 9, 3, 8192)
    assert 130e6 < info.params < 140e6


def test_smollm2_finite_loss_on_real_text(smollm2, shared_data):
    text = (shared_data / "gutenberg_novels" / "pg1342.txt").read_text(encoding="utf-8")[20000:40000]
    ids = smollm2.tokenizer(text, return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        loss = smollm2.model(ids, labels=ids).loss
    assert torch.isfinite(loss)
    assert 1.0 < loss.exp().item() < 80.0  # a real LM on real prose, not a random one (~49k)


def test_smollm2_greedy_continues_factual_prompt(smollm2):
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = smollm2.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_build_tiny_llama_is_deterministic():
    a, b = build_tiny_llama(100, seed=3), build_tiny_llama(100, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


# ----------------------------------------------------------------------------- bad files, checked before work


def test_a_gguf_that_is_not_gguf_is_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    with pytest.raises(LlqaError, match="is not a GGUF file"):
        resolve(str(bad))
    monkeypatch.setenv("LLQA_SMOLLM2_GGUF", str(bad))
    with pytest.raises(LlqaError, match="LLQA_SMOLLM2_GGUF=.*is not a GGUF file"):
        resolve("smollm2-135m")


@pytest.mark.parametrize("where", ["file", "/proc/llqa-cache"])
def test_an_unusable_llqa_cache_fails_before_dequantizing(tmp_path, monkeypatch, where):
    """A GGUF file the cache has never seen, so it would be converted (tens of seconds for a real one)."""
    from llqa.models import files_location

    gguf = tmp_path / "new.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(64))  # the magic bytes pass; any conversion would be a bug here
    cache = tmp_path / "cache-file" if where == "file" else Path(where)
    if where == "file":
        cache.write_text("x")
    monkeypatch.setenv("LLQA_CACHE", str(cache))

    def never(*a, **k):
        raise AssertionError("dequantization started before the cache was checked")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", never)
    with pytest.raises(LlqaError, match="GGUF cache") as e:
        files_location(resolve(str(gguf)))
    assert "LLQA_CACHE" in e.value.fix


# --------------------------------------------------------------------------- the weights' fingerprint


def _bump_first_tensor(path):
    """Rewrite a safetensors file with its first tensor changed: same names, shapes and size."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_weights_fingerprint_follows_contents_not_paths(tiny_llama_dir, tiny_run, tmp_path):
    """A copy keeps the fingerprint (contents, not paths or times); changed weights of the same size change
    it; an adapter's covers its base too; random weights have none."""
    import shutil

    from llqa.models import resolve, weights_fingerprint

    original = weights_fingerprint(resolve(str(tiny_llama_dir)))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    assert original and weights_fingerprint(resolve(str(copy))) == original
    before = (copy / "model.safetensors").stat().st_size
    _bump_first_tensor(copy / "model.safetensors")
    assert (copy / "model.safetensors").stat().st_size == before
    assert weights_fingerprint(resolve(str(copy))) != original

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    trained = weights_fingerprint(resolve(str(run)))
    _bump_first_tensor(run / "adapter_model.safetensors")
    assert trained and weights_fingerprint(resolve(str(run))) != trained
    assert weights_fingerprint(resolve("random:tiny")) is None


def test_an_eval_does_not_resume_onto_other_weights(tiny_llama_dir, tmp_path):
    """The same --model path with re-made weights (a run trained again into its folder): resuming the
    eval's --out would mix cells of two models, so it is refused like any changed configuration."""
    import shutil

    from evals.harness import GenerationOptions, run_task
    from evals.passkey import PasskeyConfig, PasskeyTask
    from llqa.models import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    task = PasskeyTask(PasskeyConfig(lengths=[120], depths=[0.5], trials=1))
    opts = GenerationOptions(chat_template="none")
    out = tmp_path / "eval"
    first = load_model(str(model_dir), dtype="float32", device="cpu")
    assert first.info.weights and run_task(first, task, opts, out, progress=False) is not None
    assert run_task(load_model(str(model_dir), dtype="float32", device="cpu"), task, opts, out, progress=False)
    _bump_first_tensor(model_dir / "model.safetensors")
    with pytest.raises(LlqaError, match="different configuration: the model's weight files changed"):
        run_task(load_model(str(model_dir), dtype="float32", device="cpu"), task, opts, out, progress=False)


@pytest.mark.parametrize(
    ("shape", "vocab", "published"),
    [
        ("smollm2-135m", 49152, 134.5e6),
        ("smollm2-360m", 49152, 361.8e6),
        ("llama-3.2-1b", 128256, 1.236e9),
        ("llama-3.2-3b", 128256, 3.213e9),
        ("7b", 32000, 6.738e9),
    ],
)
def test_random_shapes_have_their_models_parameter_counts(shape, vocab, published):
    """Each `random:` shape is the architecture it names: with that model's own vocabulary, its parameter count is
    the published one (within 0.1%), built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **RANDOM_SHAPES[shape]))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) < 1e-3 * published
