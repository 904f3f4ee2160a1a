"""Speed/memory levers of issue 7 leave the training step's result unchanged: offloading the gradient
checkpoints to CPU memory (reentrant checkpointing + save_on_cpu) and forcing an SDPA kernel."""

from __future__ import annotations

import pytest
import torch

from llqa.errors import LlqaError
from tests.conftest import build_tiny_llama
from trainer.config import TrainConfig
from trainer.loop import _optimizer, _prepare_model, train_step


def _step(tmp_path, method: str, **kw) -> tuple[float, dict[str, torch.Tensor]]:
    """One LoRA step on a fixed batch of 2 × 64 tokens; returns (loss, the gradients the optimizer received).
    Gradients, not updated weights: AdamW's first step divides each gradient by its own magnitude, which turns
    rounding noise in near-zero gradients into full-size updates."""
    cfg = TrainConfig(task="train", out=str(tmp_path), data=["x"], ctx=64, method=method, lr=0.1, warmup_steps=0,
                      batch_size=2, device="cpu", dtype="float32", **kw)
    torch.manual_seed(0)
    model = _prepare_model(cfg, build_tiny_llama(512, seed=1), torch.float32)
    params, opt, sched = _optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    real_step = opt.step

    def step(*a, **k):
        grads.update({names[id(p)]: p.grad.clone() for p in params})
        return real_step(*a, **k)

    opt.step = step
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(2))
    batches = [(ids[:1], ids[:1].clone(), None), (ids[1:], ids[1:].clone(), None)]
    loss, _ = train_step(model, params, opt, sched, batches, cfg, torch.device("cpu"), torch.float32, 0)
    return loss, grads


@pytest.mark.parametrize("method", ["longlora", "lora"])  # lora: frozen embeddings, inputs made to require grad
def test_offloaded_checkpoints_give_the_same_step(tmp_path, method):
    loss, want = _step(tmp_path / "a", method)
    loss_off, got = _step(tmp_path / "b", method, offload_activations=True)
    assert loss_off == pytest.approx(loss, rel=1e-6)
    lora_b = [n for n in want if "lora_B" in n]
    assert lora_b and all(want[n].abs().sum() > 0 for n in lora_b)  # gradients reached every layer's LoRA
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


def test_forced_sdpa_kernel_gives_the_same_step(tmp_path):
    loss, want = _step(tmp_path / "a", "lora+", attn="full")
    loss_math, got = _step(tmp_path / "b", "lora+", attn="full", sdpa_backend="math")
    assert loss_math == pytest.approx(loss, rel=1e-5)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_lever_options_are_checked():
    with pytest.raises(LlqaError, match="--sdpa-backend fast is not an SDPA backend"):
        TrainConfig(task="train", out="o", data=["x"], sdpa_backend="fast")
    with pytest.raises(LlqaError, match="gradient checkpointing is off"):
        TrainConfig(task="train", out="o", data=["x"], offload_activations=True, gradient_checkpointing=False)
    a = TrainConfig(task="train", out="o", data=["x"])
    assert a.differences(TrainConfig(task="train", out="o2", data=["x"], offload_activations=True)) == []
