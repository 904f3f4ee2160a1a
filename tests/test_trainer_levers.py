"""The speed/memory levers leave the training step's result unchanged: offloading the gradient
checkpoints to CPU memory (reentrant checkpointing + trainer.offload's hooks) and forcing an SDPA kernel."""

from __future__ import annotations

import pytest
import torch

from llqa.errors import LlqaError
from tests.conftest import train_step_grads
from trainer.config import TrainConfig


@pytest.mark.parametrize("method", ["longlora", "lora"])  # lora: frozen embeddings, inputs made to require grad
def test_offloaded_checkpoints_give_the_same_step(tmp_path, method):
    loss, want, _ = train_step_grads(tmp_path / "a", method=method)
    loss_off, got, _ = train_step_grads(tmp_path / "b", method=method, offload_activations=True)
    assert loss_off == pytest.approx(loss, rel=1e-6)
    lora_b = [n for n in want if "lora_B" in n]
    assert lora_b and all(want[n].abs().sum() > 0 for n in lora_b)  # gradients reached every layer's LoRA
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


def test_forced_sdpa_kernel_gives_the_same_step(tmp_path):
    loss, want, _ = train_step_grads(tmp_path / "a", method="lora+", attn="full")
    loss_math, got, _ = train_step_grads(tmp_path / "b", method="lora+", attn="full", sdpa_backend="math")
    assert loss_math == pytest.approx(loss, rel=1e-5)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_lever_options_are_checked():
    with pytest.raises(LlqaError, match="--sdpa-backend fast is not an SDPA backend"):
        TrainConfig(task="train", out="o", data=["x"], ctx=8192, sdpa_backend="fast")
    with pytest.raises(LlqaError, match="gradient checkpointing is off"):
        TrainConfig(task="train", out="o", data=["x"], ctx=8192, offload_activations=True, gradient_checkpointing=False)
    a = TrainConfig(task="train", out="o", data=["x"], ctx=8192)
    assert a.differences(TrainConfig(task="train", out="o2", data=["x"], ctx=8192, offload_activations=True)) == []
