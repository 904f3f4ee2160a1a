"""Training runs end to end on a tiny model (tied embeddings, native context 32, trained at 64 so
Position Interpolation applies): overfitting, resume == uninterrupted, reload and merge round trips,
NaN stop, OOM message, S2-Attn training, logs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llqa.errors import LlqaError
from llqa.models import RUN_FILE, load_model
from tests.conftest import build_tiny_llama
from trainer.checkpoint import checkpoint_dirs, latest_checkpoint
from trainer.config import TrainConfig
from trainer.loop import TrainingStopped, run_training
from trainer.runlog import read_log

CTX = 64


@pytest.fixture(scope="module")
def tied_tiny_dir(tmp_path_factory, smollm2_tokenizer):
    """Tiny Llama with tied input/output embeddings (like SmolLM2) and a native context of 32 tokens."""
    path = tmp_path_factory.mktemp("tied-tiny")
    build_tiny_llama(
        len(smollm2_tokenizer), seed=5, tie_word_embeddings=True, max_position_embeddings=32
    ).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def essay(shared_data, tmp_path_factory):
    """A few hundred tokens of real text (one Paul Graham essay, cut)."""
    src = sorted((shared_data / "paul_graham_essays").rglob("*.txt"))[0]
    path = tmp_path_factory.mktemp("essay") / "essay.txt"
    path.write_text(src.read_text()[:2500])
    return path


def _cfg(tmp_path, model, data, **kw):
    base = dict(
        task="train",
        out=str(tmp_path / "run"),
        model=str(model),
        ctx=CTX,
        data=[str(data)],
        method="lora+",
        max_steps=4,
        batch_size=2,
        lr=2e-3,
        warmup_steps=2,
        save_every=2,
        device="cpu",
        dtype="float32",
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_model_overfits_one_sequence(tmp_path, tied_tiny_dir, essay):
    """30 steps on a single 64-token sequence: the loss falls at least 3× (from ~10.8 = ln 49152)."""
    one = tmp_path / "one.txt"
    one.write_text(essay.read_text()[:400])
    cfg = _cfg(tmp_path, tied_tiny_dir, one, max_steps=30, batch_size=1, lr=1e-2, save_every=100)
    result = run_training(cfg)
    assert result.data["sequences"] == 1
    assert result.losses[0] > 10.0
    assert result.losses[-1] < result.losses[0] / 3, result.losses


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, tied_tiny_dir, essay):
    """Dropout on (RNG state matters), 2 micro-batches per step, shuffled epochs over few sequences."""
    kw = dict(lora_dropout=0.1, max_steps=4, save_every=2)
    full = run_training(_cfg(tmp_path / "a", tied_tiny_dir, essay, **kw))
    first = run_training(_cfg(tmp_path / "b", tied_tiny_dir, essay, stop_after=2, **kw))
    assert not first.finished and first.steps == 2
    assert [c.name for c in checkpoint_dirs(tmp_path / "b" / "run")] == ["step-000002"]
    resumed = run_training(_cfg(tmp_path / "b", tied_tiny_dir, essay, resume=True, **kw))
    assert resumed.finished and resumed.steps == 4
    assert resumed.losses == full.losses[2:]
    want, got = _trainable(full.model), _trainable(resumed.model)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    a = load_file(str(tmp_path / "a" / "run" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_log(tmp_path / "b" / "run")]
    assert steps == [1, 2, 3, 4]


def test_run_dir_reloads_and_merges_to_the_same_logits(tmp_path, tied_tiny_dir, essay):
    from transformers import AutoModelForCausalLM

    from trainer.merge import merge_run

    result = run_training(_cfg(tmp_path, tied_tiny_dir, essay, max_steps=2))
    run = tmp_path / "run"
    ids = torch.randint(0, 1000, (1, CTX))
    trained = result.model.eval()
    with torch.no_grad():
        want = trained(input_ids=ids).logits
    run_file = json.loads((run / RUN_FILE).read_text())
    assert run_file["ctx"] == CTX and run_file["base_model"] == str(tied_tiny_dir.resolve())
    loaded = load_model(str(run), dtype="float32", device="cpu")
    assert loaded.info.target_ctx == CTX and loaded.info.rope_factor == 2.0  # PI from the run's ctx
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, want, rtol=0, atol=0)
    out = merge_run(run, tmp_path / "merged", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert plain.config.max_position_embeddings == CTX
    assert plain.config.rope_parameters["rope_type"] == "linear" and plain.config.rope_parameters["factor"] == 2.0
    assert plain.get_input_embeddings().weight is plain.get_output_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    # trained embeddings and norms are in place: the merged model differs from the base
    base = AutoModelForCausalLM.from_pretrained(tied_tiny_dir, dtype=torch.float32)
    assert not torch.equal(base.get_input_embeddings().weight, plain.get_input_embeddings().weight)
    assert not torch.equal(base.model.norm.weight, plain.model.norm.weight)
    with pytest.raises(LlqaError, match="not empty"):
        merge_run(run, tmp_path / "merged")


def test_run_files_config_logs_and_tensorboard(tmp_path, tied_tiny_dir, essay):
    run_training(_cfg(tmp_path, tied_tiny_dir, essay, max_steps=2, method="lora"))
    run = tmp_path / "run"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["config"]["method"] == "lora" and saved["config"]["lr"] == 2e-3 and saved["grad_accum"] == 2
    assert saved["steps_done"] == 2 and "answer tokens only" in saved["semantics"]
    assert saved["model"]["target_ctx"] == CTX
    assert saved["trainable"]["parameters"] == 2 * 4 * 8 * (64 + 64) - 2 * 2 * 8 * 32  # LoRA A+B, GQA k/v
    records = read_log(run)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["tokens"] == 2 * CTX and r["tokens_per_s"] > 0 and r["loss"] > 0 for r in records)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert {"train/lr", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    with pytest.raises(LlqaError, match="already holds a training run"):
        run_training(_cfg(tmp_path, tied_tiny_dir, essay, max_steps=2, method="lora"))
    with pytest.raises(LlqaError, match="options differ"):
        run_training(_cfg(tmp_path, tied_tiny_dir, essay, max_steps=2, method="lora", lr=1.0, resume=True))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tied_tiny_dir, essay, monkeypatch):
    import trainer.loss

    real = trainer.loss.causal_lm_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, count = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), count  # step 3's first micro-batch

    monkeypatch.setattr(trainer.loss, "causal_lm_loss", poisoned)
    with pytest.raises(TrainingStopped, match=r"loss is nan at step 3.*step-000002") as err:
        run_training(_cfg(tmp_path, tied_tiny_dir, essay, max_steps=4, save_every=1, keep_checkpoints=5))
    assert "--lr" in err.value.fix
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step-000002"
    assert not (run / "adapter_model.safetensors").exists()
    ckpt = load_file(str(latest_checkpoint(run) / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in ckpt.values())


def test_cuda_oom_becomes_a_clear_error(tmp_path, tied_tiny_dir, essay, monkeypatch):
    import trainer.loop

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer.loop, "train_step", oom)
    with pytest.raises(LlqaError, match="out of memory training at --ctx 64") as err:
        run_training(_cfg(tmp_path, tied_tiny_dir, essay))
    assert "--ctx below 64" in err.value.fix


def test_longlora_trains_with_s2_attention(tmp_path, tied_tiny_dir, essay):
    """--method longlora: S2-Attn during training (group 16 of 64 tokens), full attention after."""
    from trainer.s2attn import S2_ATTN_NAME

    cfg = _cfg(tmp_path, tied_tiny_dir, essay, method="longlora", max_steps=6, lr=1e-2, save_every=100)
    assert cfg.attn == "s2"
    seen = []
    import trainer.loss

    real = trainer.loss.causal_lm_loss

    def spy(model, *args, **kwargs):
        seen.append(model.get_base_model().config._attn_implementation)
        return real(model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer.loss, "causal_lm_loss", spy)
    try:
        result = run_training(cfg)
    finally:
        mp.undo()
    assert set(seen) == {S2_ATTN_NAME}
    assert result.losses[-1] < result.losses[0]
    assert result.model.get_base_model().config._attn_implementation != S2_ATTN_NAME  # disabled after training
    loaded = load_model(str(tmp_path / "run"), dtype="float32", device="cpu")
    ids = torch.randint(0, 1000, (1, CTX))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits, rtol=0, atol=0
        )


def test_sft_trains_on_answers(tmp_path, tied_tiny_dir):
    items = [{"instruction": f"Question {i}: what is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(4)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in items))
    cfg = TrainConfig(
        task="sft",
        out=str(tmp_path / "run"),
        model=str(tied_tiny_dir),
        ctx=CTX,
        data=[str(data)],
        method="longlora",
        max_steps=3,
        batch_size=2,
        micro_batch_size=2,
        lr=1e-2,
        save_every=100,
        device="cpu",
        dtype="float32",
    )
    result = run_training(cfg)
    assert result.finished and result.data["items"] == 4 and result.data["template"] == "chat"
    assert result.data["skipped_too_long"] == 0
    records = read_log(tmp_path / "run")
    assert all(r["tokens"] < 2 * CTX for r in records)  # padding is not counted as tokens


def test_real_smollm2_sft_step_and_reload(tmp_path):
    """The real SmolLM2-135M-Instruct (tied embeddings, chat template): one LoRA+ SFT step at 128 tokens,
    then `--model RUN_DIR` reloads to the trained model's logits."""
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"instruction": "What is the capital of France?", "output": "Paris."}) + "\n")
    cfg = TrainConfig(
        task="sft",
        out=str(tmp_path / "run"),
        model="smollm2-135m",
        ctx=128,
        data=[str(data)],
        method="longlora",
        max_steps=1,
        batch_size=1,
        lr=1e-3,
        device="cpu",
        dtype="float32",
    )
    result = run_training(cfg)
    assert result.finished and 0 < result.losses[0] < 10 and result.data["template"] == "chat"
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2]])
    with torch.no_grad():
        want = result.model.eval()(input_ids=ids).logits
        got = load_model(str(tmp_path / "run"), dtype="float32", device="cpu").model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_full_fine_tuning_saves_a_standalone_model_at_the_new_context(tmp_path, tied_tiny_dir, essay):
    from transformers import AutoModelForCausalLM

    from trainer.merge import merge_run

    result = run_training(_cfg(tmp_path, tied_tiny_dir, essay, method="full", max_steps=2, lr=1e-3))
    run = tmp_path / "run"
    assert not (run / "adapter_config.json").exists() and (run / "config.json").is_file()
    ids = torch.randint(0, 1000, (1, CTX))
    with torch.no_grad():
        want = result.model.eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
        assert plain.config.max_position_embeddings == CTX and plain.config.rope_parameters["factor"] == 2.0
        torch.testing.assert_close(plain(input_ids=ids).logits, want, rtol=0, atol=0)
        loaded = load_model(str(run), dtype="float32", device="cpu")
        assert loaded.info.target_ctx == CTX
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, want, rtol=0, atol=0)
    merged = merge_run(run, tmp_path / "merged", dtype="float32")
    assert (merged / "config.json").is_file()
