"""Trainer pieces without a training run: config checks, packing, sample order, SFT encoding, the LoRA+
trainable set, tied-embedding save/reload/merge, checkpoint atomicity, the OOM message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llqa.errors import LlqaError
from tests.conftest import build_tiny_llama
from trainer import data as D
from trainer.config import TrainConfig
from trainer.lora import norm_module_names, prepare_trainable, trainable_names

# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers(tmp_path):
    cfg = TrainConfig(task="train", out=str(tmp_path), data=["x"], ctx=8192)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.warmup_steps, cfg.max_steps) == (
        2e-5,
        0.9,
        0.95,
        0.0,
        20,
        1000,
    )
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.grad_accum) == (64, 1, 64)
    assert (cfg.method, cfg.attn, cfg.group_ratio, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (
        "longlora",
        "s2",
        0.25,
        8,
        16,
        0.0,
    )
    assert cfg.gradient_checkpointing and cfg.dtype == "auto"
    assert TrainConfig(task="sft", out="o", data=["x"], ctx=8192, method="lora+").attn == "full"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ctx=100), "multiple of 8"),  # S2-Attn with ratio 1/4 needs ctx % 8 == 0
        (dict(ctx=100, group_ratio=1 / 3), "multiple of 6"),
        (dict(method="qlora"), "--method qlora"),
        (dict(attn="flash"), "--attn flash"),
        (dict(data=[]), "needs data"),
        (dict(batch_size=6, micro_batch_size=4), "multiple of --micro-batch-size"),
        (dict(lr=-1.0), "--lr must be a number >= 0, got -1.0"),
        (dict(lr=float("nan")), "--lr must be a number >= 0, got nan"),
        (dict(lr=float("inf")), "--lr must be a number >= 0, got inf"),
        (dict(lora_dropout=2.0), r"--lora-dropout must be a number in \[0, 1\), got 2.0"),
        (dict(lora_dropout=1.0), r"--lora-dropout must be a number in \[0, 1\)"),
        (dict(beta2=1.0), r"--beta2 must be a number in \[0, 1\)"),
        (dict(group_ratio=0.0), r"--group-ratio must be a number in \(0, 1\]"),
        (dict(max_grad_norm=float("nan")), "--max-grad-norm must be a number >= 0"),
        (dict(weight_decay=-0.1), "--weight-decay must be a number >= 0"),
        (dict(max_steps=0), "--max-steps must be a number > 0, got 0"),
        (dict(warmup_steps=-1), "--warmup-steps must be a number >= 0"),
        (dict(dataset="org/x"), "both --data and --dataset"),
    ],
)
def test_config_rejects_bad_input(kwargs, message):
    with pytest.raises(LlqaError, match=message):
        TrainConfig(**{"task": "train", "out": "o", "data": ["x"], "ctx": 8192, **kwargs})


def test_config_s2_ctx_rule_and_full_attention_exemption():
    TrainConfig(task="train", out="o", data=["x"], ctx=104)  # 104 = 13 × 8
    TrainConfig(task="train", out="o", data=["x"], ctx=100, attn="full")


def test_resume_differences_ignore_only_harmless_fields():
    a = TrainConfig(task="train", out="o", data=["x"], ctx=8192)
    b = TrainConfig(task="train", out="o", data=["x"], ctx=8192, max_steps=5, save_every=1, resume=True)
    assert a.differences(b) == []
    assert a.differences(TrainConfig(task="train", out="o", data=["x"], ctx=8192, lr=1e-4)) == ["lr"]


# --------------------------------------------------------------------------- train data


def test_pack_is_a_prefix_of_the_concatenation_in_ctx_pieces():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
    seqs = list(D.pack(docs, ctx=4))
    assert [s.tolist() for s in seqs] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # tail [9, 10, 11] dropped
    assert len(list(D.pack(docs, ctx=4, limit=1))) == 1
    assert list(D.pack([[1, 2]], ctx=4)) == []


def test_documents_end_with_eos_and_pack_into_a_cached_file(tmp_path, smollm2_tokenizer, shared_data):
    essays = sorted((shared_data / "paul_graham_essays").rglob("*.txt"))[:3]
    texts = list(D.read_documents(essays))
    toks = list(D.document_tokens(texts, smollm2_tokenizer))
    assert all(t[-1] == smollm2_tokenizer.eos_token_id for t in toks)
    meta = {"k": 1}
    packed, info = D.build_packed(texts, smollm2_tokenizer, 128, needed=5, out_dir=tmp_path, meta=meta)
    assert len(packed) == info["sequences"] == 5
    flat = [i for t in toks for i in t]
    np.testing.assert_array_equal(packed.tokens.reshape(-1), flat[: 5 * 128])
    again, _ = D.build_packed(iter(()), smollm2_tokenizer, 128, needed=5, out_dir=tmp_path, meta=meta)
    assert len(again) == 5  # reused, nothing re-tokenized
    with pytest.raises(LlqaError, match="fewer than --ctx"):
        D.build_packed(["short"], smollm2_tokenizer, 128, needed=5, out_dir=tmp_path / "b", meta={})


def test_read_documents_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "beta"}) + "\n\n" + json.dumps({"body": "gamma"}) + "\n")
    import pandas as pd

    pd.DataFrame({"body": ["delta"]}).to_parquet(tmp_path / "c.parquet")
    assert list(D.read_documents([tmp_path], text_field="body")) == ["alpha", "beta", "gamma", "delta"]
    with pytest.raises(LlqaError, match="no field 'text'"):
        list(D.read_documents([tmp_path / "b.jsonl"]))
    with pytest.raises(LlqaError, match="no such file"):
        list(D.read_documents([tmp_path / "missing.txt"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlqaError, match="holds no"):
        list(D.read_documents([tmp_path / "empty"]))


def test_line_ends_pack_the_same_tokens_and_binary_files_are_refused(tmp_path, smollm2_tokenizer, shared_data):
    """`--data` text is read as the evals read it: CRLF, CR and LF copies of a novel pack into the same token
    ids; a binary or non-UTF-8 file is refused with its byte offset (it used to train on U+FFFD)."""
    text = (shared_data / "gutenberg_novels" / "pg11.txt").read_text()[:3000]
    packed = []
    for name, end in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text.replace("\n", end).encode())
        (doc,) = D.read_documents([path])
        assert doc == text
        data, _ = D.build_packed([doc], smollm2_tokenizer, 64, needed=4, out_dir=tmp_path / name, meta={})
        packed.append(data.tokens.copy())
    np.testing.assert_array_equal(packed[0], packed[1])
    np.testing.assert_array_equal(packed[0], packed[2])
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    with pytest.raises(LlqaError, match=r"weights.bin is not UTF-8 text \(byte 132: b'\\x80'\)"):
        list(D.read_documents([blob]))
    latin = tmp_path / "items.jsonl"
    latin.write_bytes(b'{"text": "ok"}\r\n{"text": "caf\xe9"}\r\n')
    with pytest.raises(LlqaError, match=r"items.jsonl is not UTF-8 text \(line 2, byte 29: b'\\xe9'"):
        list(D.read_documents([latin]))


def test_hub_dataset_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline and not cached
    with pytest.raises(LlqaError, match="not in the local cache and the hub cannot be reached"):
        list(D.hub_documents("llqa-nonexistent/dataset-xyz", None, "train", "text"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(D, "hub_reachable", lambda: False)  # no network, no offline mode asked for
    with pytest.raises(LlqaError, match="needs the hub"):
        list(D.hub_documents("llqa-nonexistent/dataset-xyz", None, "train", "text"))


def test_sample_order_epochs_are_permutations_and_deterministic():
    n = 7
    order = [D.sample_index(p, n, seed=3, shuffle=True) for p in range(3 * n)]
    for e in range(3):
        assert sorted(order[e * n : (e + 1) * n]) == list(range(n))
    assert order[:n] != order[n : 2 * n]  # each epoch its own order
    assert order == [D.sample_index(p, n, seed=3, shuffle=True) for p in range(3 * n)]
    assert [D.sample_index(p, n, 0, shuffle=False) for p in range(n + 2)] == [*range(n), 0, 1]


def test_collate_pads_to_the_s2_multiple_with_masked_labels():
    items = [(np.arange(5), np.arange(5)), (np.arange(3), np.array([-100, 1, 2]))]
    ids, labels, mask = D.collate(items, pad_id=9, multiple=8)
    assert ids.shape == (2, 8) and mask.sum(1).tolist() == [5, 3]
    assert (labels[mask == 0] == -100).all() and (ids[mask == 0] == 9).all()
    ids, labels, mask = D.collate([(np.arange(8), np.arange(8))], pad_id=0, multiple=8)
    assert mask is None


# --------------------------------------------------------------------------- sft data


@pytest.mark.parametrize("template", ["chat", "inst"])
def test_sft_labels_mask_the_prompt_and_score_the_answer(smollm2_tokenizer, template):
    tok = smollm2_tokenizer
    tpl = D.PromptTemplate(tok, template)
    ids, labels, status = tpl.encode("Who wrote the essay?", "Paul Graham.", ctx=512)
    assert status == "ok"
    answer = labels != -100
    first = int(answer.argmax())
    assert not answer[:first].any() and answer[first:].all()  # prompt masked, answer scored to the end
    np.testing.assert_array_equal(labels[answer], ids[answer])
    text = tok.decode(ids[first:])
    assert text.startswith("Paul Graham.")
    prompt = tok.decode(ids[:first])
    assert "Who wrote the essay?" in prompt
    if template == "inst":
        assert prompt.endswith("[INST]Who wrote the essay?[/INST]") and ids[-1] == tok.eos_token_id
    else:
        assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
        assert text.rstrip().endswith("<|im_end|>")


def test_sft_long_items_lose_the_instruction_middle_or_are_skipped(smollm2_tokenizer):
    tpl = D.PromptTemplate(smollm2_tokenizer, "inst")
    instruction = "BEGIN " + "filler " * 300 + "QUESTION: what is it?"
    ids, labels, status = tpl.encode(instruction, "An answer.", ctx=64)
    assert status == "truncated" and len(ids) == 64
    prompt = smollm2_tokenizer.decode(ids[labels == -100])
    assert "BEGIN" in prompt and "what is it?" in prompt
    assert tpl.encode("q", "long answer " * 100, ctx=64) is None
    stats = D.build_sft(
        [
            ("f", 1, {"instruction": instruction, "output": "An answer."}),
            ("f", 2, {"instruction": "q", "output": "long answer " * 100}),
        ],
        smollm2_tokenizer,
        "inst",
        64,
    ).stats
    assert (stats["items"], stats["truncated_middle"], stats["skipped_too_long"]) == (1, 1, 1)


def test_sft_bad_items_are_clear_errors(tmp_path, smollm2_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(LlqaError, match="record 1: missing or empty field"):
        D.build_sft(D.read_sft_items([bad]), smollm2_tokenizer, "auto", 128)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LlqaError, match="no sft item"):
        D.build_sft(D.read_sft_items([empty]), smollm2_tokenizer, "auto", 128)
    build = tmp_path / "build"
    build.mkdir()
    (build / "train.jsonl").write_text(json.dumps({"instruction": "q", "input": "ctx", "output": "a"}) + "\n")
    (records,) = list(D.read_sft_items([build]))
    assert D.sft_instruction(records[2], "x") == ("q\n\nctx", "a")


# --------------------------------------------------------------------------- what is trained

VOCAB = 256


@pytest.mark.parametrize("method", ["lora", "lora+", "longlora", "full"])
def test_trainable_set_of_each_method(method):
    model = build_tiny_llama(VOCAB)
    n_norms = len(norm_module_names(model))
    assert n_norms == 2 * 2 + 1  # two per layer + the final norm
    trained = prepare_trainable(model, method)
    names = trainable_names(trained)
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    rest = sorted(set(names) - set(lora))
    if method == "full":
        assert len(names) == len(list(trained.parameters())) and not lora
        return
    assert len(lora) == 2 * 4 * 2  # layers × {q,k,v,o} × {A,B}
    assert {n.split(".self_attn.")[1].split(".")[0] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    if method == "lora":
        assert rest == []
    else:  # LoRA+: exactly the input embedding and every norm besides LoRA
        assert len(rest) == 1 + n_norms
        assert sum("embed_tokens" in n for n in rest) == 1 and sum("norm" in n for n in rest) == n_norms
    assert all(p.dtype == torch.float32 for p in trained.parameters() if p.requires_grad)


def test_lora_plus_with_tied_embeddings_saves_reloads_and_merges_exactly(tmp_path):
    from peft import PeftModel

    trained = prepare_trainable(build_tiny_llama(VOCAB, seed=1, tie_word_embeddings=True), "lora+")
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    base = trained.get_base_model()
    emb = base.get_input_embeddings().modules_to_save["default"].weight
    head = base.get_output_embeddings().modules_to_save["default"].weight
    assert emb is head  # the tie survives LoRA+
    ids = torch.randint(0, VOCAB, (1, 24))
    trained.eval()
    want = trained(ids).logits
    trained.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build_tiny_llama(VOCAB, seed=1, tie_word_embeddings=True), tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, want, rtol=0, atol=0)
    merged = reloaded.merge_and_unload()
    assert merged.get_input_embeddings().weight is merged.get_output_embeddings().weight
    torch.testing.assert_close(merged(ids).logits, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- checkpoints, errors


def test_incomplete_checkpoint_is_ignored(tmp_path):
    from trainer.checkpoint import latest_checkpoint

    (tmp_path / "checkpoints" / ".tmp-step-000004-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000003").mkdir()  # no state.json: never completed
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints" / "step-000002").mkdir()
    (tmp_path / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-000002"


def test_oom_message_names_what_to_lower():
    from trainer.loop import oom_error

    cfg = TrainConfig(
        task="train",
        out="o",
        data=["x"],
        ctx=65536,
        method="full",
        attn="full",
        micro_batch_size=2,
        batch_size=4,
        gradient_checkpointing=False,
    )
    msg = str(oom_error(cfg, torch.device("cpu")))
    for hint in (
        "--ctx below 65536",
        "--attn s2",
        "gradient checkpointing",
        "--micro-batch-size 1",
        "--method longlora",
        "--loss-chunk",
    ):
        assert hint in msg


def test_lr_schedule_is_linear_warmup_then_constant():
    from trainer.model import lr_factor

    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0


def test_bf16_training_keeps_fp32_master_weights_and_bf16_activations():
    from trainer.model import prepare_model

    model = build_tiny_llama(VOCAB).to(torch.bfloat16)
    cfg = TrainConfig(task="train", out="o", data=["x"], ctx=64, method="lora+")
    trained = prepare_model(cfg, model)
    assert trained.training and not trained.get_base_model().config.use_cache
    emb = trained.get_input_embeddings()
    assert emb.modules_to_save["default"].weight.dtype == torch.float32
    assert emb(torch.tensor([[1, 2]])).dtype == torch.bfloat16  # the residual stream stays bf16
    frozen = [p for p in trained.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)


def test_the_s2_backend_option_reaches_the_model_and_may_change_on_resume():
    """--s2-backend is recorded on the model's config for S2-Attn to read (one checked list of kernels), and a
    resumed run may switch it: every kernel computes the same attention up to rounding."""
    from trainer.config import RESUMABLE_CHANGES, S2_BACKENDS
    from trainer.model import prepare_model
    from trainer.s2attn import BACKENDS

    assert S2_BACKENDS is BACKENDS and "s2_backend" in RESUMABLE_CHANGES
    cfg = TrainConfig(task="train", out="o", data=["x"], ctx=64, s2_backend="sdpa-padded")
    trained = prepare_model(cfg, build_tiny_llama(VOCAB))
    assert trained.get_base_model().config.s2_backend == "sdpa-padded"
    with pytest.raises(LlqaError, match="--s2-backend fast is not an S2-Attn kernel"):
        TrainConfig(task="train", out="o", data=["x"], ctx=64, s2_backend="fast")
    with pytest.raises(LlqaError, match="but this run trains with full attention"):
        TrainConfig(task="train", out="o", data=["x"], ctx=64, method="lora+", s2_backend="varlen")
    # context parallelism has its own SDPA path for the shards: a kernel it would ignore is refused
    TrainConfig(task="train", out="o", data=["x"], ctx=64, context_parallel=2, s2_backend="sdpa")
    with pytest.raises(LlqaError, match="--s2-backend varlen would be ignored"):
        TrainConfig(task="train", out="o", data=["x"], ctx=64, context_parallel=2, s2_backend="varlen")
