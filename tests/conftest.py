"""Shared fixtures: tiny random Llama models (GQA, fp32, CPU, seconds) and the real SmolLM2.

The tiny models use the default model's real tokenizer (vocab 49,152), so every pipeline that
tokenizes text can run on them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=1,
               eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def build_tiny_llama(vocab_size: int = 49152, seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size, **overrides),
                                             attn_implementation="sdpa")
    return model.float().eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from llqa.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved tiny random Llama (2 layers, 4 heads / 2 KV heads, native ctx 256) with the real
    SmolLM2 tokenizer: loadable by `--model <dir>` like any local model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(smollm2_tokenizer)).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, fp32 on CPU, loaded once per session."""
    from llqa.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_llqa(*args: str, env: dict | None = None, timeout: float = 600):
    """Run the installed CLI in a subprocess (exactly what a user runs): returns CompletedProcess."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
