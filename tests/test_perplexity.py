"""The perplexity engine on a tiny fp32 model: equal to brute force, to LongLoRA's mean, batching-invariant,
resumable, data-parallel; the proof-pile sample; byte counts for bits per byte."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evals.perplexity import (
    Job,
    PerplexityConfig,
    local_documents,
    plan_batches,
    run,
    sample_long_documents,
    text_fingerprint,
    tokenize,
)
from evals.texts import Document
from evals.windows import Window, windows
from llqa.errors import LlqaError

TEXT_A = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing "
    "to do: once or twice she had peeped into the book her sister was reading, but it had no pictures "
    "or conversations in it, “and what is the use of a book,” thought Alice “without pictures or "
    "conversations?” — naïve café, Ünïcödé, 日本語."
)
TEXT_B = (
    "So she was considering in her own mind (as well as she could, for the hot day made her feel very "
    "sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of "
    "getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her."
)
DOCS = [Document("a", TEXT_A), Document("b", TEXT_B), Document("c", TEXT_A[:200] + TEXT_B[:150])]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def brute_force_nll(model, ids: np.ndarray, ws: list[Window]) -> tuple[float, list[float]]:
    """Every scored token by its own plain forward over exactly its context: (NLL sum, per-window means)."""
    total, means = 0.0, []
    with torch.no_grad():
        for w in ws:
            nlls = []
            for t in range(w.first_scored, w.end):
                ctx = torch.tensor(ids[w.start : t][None])
                logp = model(ctx, logits_to_keep=1).logits[0, -1].double().log_softmax(-1)
                nlls.append(-logp[int(ids[t])].item())
            total += sum(nlls)
            means.append(sum(nlls) / len(nlls))
    return total, means


@pytest.mark.parametrize(("scoring", "bos"), [("sliding", "never"), ("sliding", "always"), ("disjoint", "never")])
def test_equals_brute_force(tiny, tmp_path, scoring, bos):
    cfg = PerplexityConfig(lengths=[24, 40], stride=7, scoring=scoring, bos=bos)
    out = run(tiny, DOCS[:2], cfg, tmp_path, batch_tokens=64, show_progress=False)
    for row in out.rows:
        total, means, tokens = 0.0, [], 0
        for doc in DOCS[:2]:
            s = tokenize(tiny.tokenizer, doc, bos=bos == "always")
            ws = windows(len(s.ids), row["length"], 7, scoring)
            t, m = brute_force_nll(tiny.model, s.ids, ws)
            total, means, tokens = total + t, means + m, tokens + sum(w.n_scored for w in ws)
        assert row["scored_tokens"] == tokens
        assert row["ppl"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
        assert row["window_ppl"] == pytest.approx(math.exp(sum(means) / len(means)), rel=1e-5)


def test_all_tokens_equals_longlora_eval_py(tiny, tmp_path):
    """LongLoRA eval.py (`get_as_batch` + `evaluate`, transcribed at --batch_size 1): HF's mean loss of each
    window x (labels = x) over starts range(0, n - L, S) less the last, averaged over windows."""
    length, stride = 32, 8
    out = run(
        tiny,
        DOCS[:1],
        PerplexityConfig(lengths=[length], stride=stride, scoring="all-tokens", bos="never"),
        tmp_path,
        show_progress=False,
    )
    data = tokenize(tiny.tokenizer, DOCS[0], bos=False).ids
    all_ix = list(range(0, len(data) - length, stride))
    all_ix.pop()
    losses = []
    with torch.no_grad():
        for i in all_ix:
            x = torch.from_numpy(data[i : i + length].astype(np.int64))[None]
            losses.append(tiny.model(input_ids=x, labels=x.contiguous()).loss.item())
    row = out.rows[0]
    assert row["windows"] == len(losses) > 3
    assert row["window_ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert row["ppl"] == pytest.approx(row["window_ppl"], rel=1e-5)  # equal-size windows: both means agree
    assert row["scored_tokens"] == len(losses) * (length - 1)


def test_disjoint_equals_harness_loglikelihood_rolling(tiny, tmp_path):
    """lm-evaluation-harness HFLM.loglikelihood_rolling, transcribed: the token list without special tokens,
    the BOS as prefix token, windows from get_rolling_token_windows + make_disjoint_window at max_length
    L - 1, each scored on the last len(continuation) logits of its input. The sum is llqa's NLL sum with
    --bos always at L, and every token of the document is scored, the first one too."""
    from test_windows import harness_windows

    length = 24
    out = run(
        tiny,
        DOCS[:1],
        PerplexityConfig(lengths=[length], scoring="disjoint", bos="always"),
        tmp_path,
        show_progress=False,
    )
    token_list = tiny.tokenizer(DOCS[0].text, add_special_tokens=False)["input_ids"]
    stream = [tiny.tokenizer.bos_token_id, *token_list]  # stream[p] for the harness's positions
    total = 0.0
    with torch.no_grad():
        for w in harness_windows(len(stream), length - 1):
            inp = torch.tensor([stream[w.start : w.end - 1]])
            logp = tiny.model(inp).logits[0].double().log_softmax(-1)
            cont = range(w.first_scored, w.end)
            total -= sum(logp[t - w.start - 1, stream[t]].item() for t in cont)
    row = out.rows[0]
    assert row["scored_tokens"] == len(token_list) and row["windows"] > 2
    assert row["nll_per_token"] * row["scored_tokens"] == pytest.approx(total, rel=1e-5)


def test_batching_and_concat(tiny, tmp_path):
    cfg = PerplexityConfig(lengths=[16, 32], stride=5)
    one = run(tiny, DOCS, cfg, tmp_path / "one", batch_tokens=1, show_progress=False)
    many = run(tiny, DOCS, cfg, tmp_path / "many", batch_tokens=10_000, show_progress=False)
    math_sdpa = run(tiny, DOCS, cfg, tmp_path / "math", sdpa_backend="math", show_progress=False)
    for a, b, c in zip(one.rows, many.rows, math_sdpa.rows, strict=True):
        assert a["scored_tokens"] == b["scored_tokens"] == c["scored_tokens"]
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5) and c["ppl"] == pytest.approx(b["ppl"], rel=1e-5)
    with pytest.raises(LlqaError, match="--sdpa-backend"):
        run(tiny, DOCS, cfg, tmp_path / "bad", sdpa_backend="fastest", show_progress=False)
    cat = run(tiny, DOCS, PerplexityConfig(lengths=[32], stride=5, concat=True), tmp_path / "cat", show_progress=False)
    n = [len(tokenize(tiny.tokenizer, d, bos=False).ids) for d in DOCS]
    assert cat.rows[0]["documents"] == 1 and cat.rows[0]["scored_tokens"] == sum(n) - 1  # one stream


def test_bits_per_byte_counts_the_scored_text(tiny, tmp_path):
    doc = DOCS[0]
    with_bos = tokenize(tiny.tokenizer, doc, bos=True)
    assert with_bos.scored_bytes(1, len(with_bos.ids)) == len(doc.text.encode())  # BOS: every byte predicted
    plain = tokenize(tiny.tokenizer, doc, bos=False)
    first = tiny.tokenizer.decode(plain.ids[:1])
    assert plain.scored_bytes(1, len(plain.ids)) == len(doc.text.encode()) - len(first.encode())
    cut = tokenize(tiny.tokenizer, doc, bos=False, max_tokens=20)
    kept = tiny.tokenizer.decode(plain.ids[:20])
    assert len(cut.ids) == 20 and cut.scored_bytes(0, 20) == len(kept.encode())
    out = run(tiny, [doc], PerplexityConfig(lengths=[32], stride=8, bos="always"), tmp_path, show_progress=False)
    row = out.rows[0]
    assert row["scored_bytes"] == len(doc.text.encode())
    assert row["bits_per_byte"] == pytest.approx(
        row["nll_per_token"] * row["scored_tokens"] / math.log(2) / row["scored_bytes"]
    )


def test_resume_skips_finished_cells(tiny, tmp_path):
    cfg = PerplexityConfig(lengths=[24], stride=6)
    fresh = run(tiny, DOCS, cfg, tmp_path / "fresh", batch_tokens=16, show_progress=False)
    log = tmp_path / "resumed" / "cells.jsonl"

    def interrupt_after_first_cell(n):
        if log.exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            tiny,
            DOCS,
            cfg,
            tmp_path / "resumed",
            batch_tokens=16,
            show_progress=False,
            on_batch=interrupt_after_first_cell,
        )
    logged = log.read_text().splitlines()
    assert 0 < len(logged) < 3
    rest = []
    resumed = run(tiny, DOCS, cfg, tmp_path / "resumed", batch_tokens=16, show_progress=False, on_batch=rest.append)
    total = []
    run(tiny, DOCS, cfg, tmp_path / "count", batch_tokens=16, show_progress=False, on_batch=total.append)
    assert 0 < len(rest) < len(total)  # only the unfinished cells were scored again
    assert [r["ppl"] for r in resumed.rows] == pytest.approx([r["ppl"] for r in fresh.rows], rel=1e-9)
    again = []
    run(tiny, DOCS, cfg, tmp_path / "resumed", show_progress=False, on_batch=again.append)
    assert again == []  # everything was done
    with pytest.raises(LlqaError, match="different configuration"):
        run(tiny, DOCS, PerplexityConfig(lengths=[24], stride=5), tmp_path / "resumed", show_progress=False)


def test_data_parallel_ranks_share_cells_and_rank0_merges(tiny, tmp_path, monkeypatch):
    """Two ranks as torchrun would start them (run one after the other here): each scores every other cell
    into its own log, rank 0 waits for all cells and writes the result."""
    cfg = PerplexityConfig(lengths=[16, 24], stride=6)
    single = run(tiny, DOCS, cfg, tmp_path / "single", show_progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    r1 = run(tiny, DOCS, cfg, tmp_path / "dp", show_progress=False)
    assert r1.result_path is None and not (tmp_path / "dp" / "result.json").exists()
    rank1 = [json.loads(x)["key"] for x in (tmp_path / "dp" / "rank1" / "cells.jsonl").read_text().splitlines()]
    assert len(rank1) == 3  # 6 cells, every other one
    monkeypatch.setenv("RANK", "0")
    r0 = run(tiny, DOCS, cfg, tmp_path / "dp", show_progress=False, poll_s=0.01)
    assert [r["ppl"] for r in r0.rows] == pytest.approx([r["ppl"] for r in single.rows], rel=1e-9)
    result = json.loads(r0.result_path.read_text())
    assert result["cells"] == 6 and result["data"]["world_size"] == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # a plain resume of the same directory finds every cell
    again = []
    run(tiny, DOCS, cfg, tmp_path / "dp", show_progress=False, on_batch=again.append)
    assert again == []


def test_plan_batches_groups_equal_lengths_within_budget():
    jobs = [
        Job(0, Window(0, 8, 1)),
        Job(0, Window(3, 11, 8)),
        Job(1, Window(0, 5, 1)),
        Job(0, Window(6, 14, 11)),
        Job(1, Window(0, 5, 1)),
    ]
    batches = plan_batches(jobs, batch_tokens=16)
    assert [[j.window.length for j in b] for b in batches] == [[8, 8], [8], [5, 5]]
    assert sorted(map(id, (j for b in batches for j in b))) == sorted(map(id, jobs))
    assert plan_batches(jobs[:1], batch_tokens=1) == [[jobs[0]]]  # a window longer than the budget still runs


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lengths": [128], "stride": 256}, "not longer than the stride"),
        ({"lengths": [256], "stride": 256}, "not longer than the stride"),
        ({"lengths": [128], "stride": 256, "scoring": "all-tokens"}, "smaller than the stride"),
        ({"lengths": [1]}, "too short"),
        ({"lengths": []}, "no window length"),
        ({"lengths": [512], "scoring": "rolling"}, "--scoring rolling"),
        ({"lengths": [512], "bos": "sometimes"}, "--bos sometimes"),
        ({"lengths": [512], "ctx": 256}, "--ctx 256 is shorter"),
        ({"lengths": [2048, 100_000_000]}, "window length 100,000,000 is longer than the 16,777,216 tokens"),
    ],
)
def test_config_errors(kwargs, needle):
    with pytest.raises(LlqaError, match=needle):
        PerplexityConfig(**kwargs)


def test_proof_pile_sample_is_seeded_uniform_and_recorded(tmp_path, smollm2_tokenizer, shared_data):
    """PI's protocol on a local file in proof-pile's schema (`text`, `meta`)."""
    book = (shared_data / "gutenberg_novels" / "pg11.txt").read_text()
    sizes = [50, 3000, 400, 5000, 2500, 100, 4000, 3500, 20]
    path = tmp_path / "proofpile_test.jsonl"
    with open(path, "w") as f:
        for i, n in enumerate(sizes):
            f.write(json.dumps({"text": book[i * 100 : i * 100 + n], "meta": {"set_name": "test", "i": i}}) + "\n")
    rows, _ = local_documents(path)

    def n_tokens(doc):
        return len(smollm2_tokenizer(doc.text, add_special_tokens=False)["input_ids"])

    long_enough = {d.id for d in rows if n_tokens(d) >= 500}
    assert len(long_enough) == 5
    picked, info = sample_long_documents(len(rows), rows.__getitem__, n_tokens, 3, 500, seed=7)
    again, _ = sample_long_documents(len(rows), rows.__getitem__, n_tokens, 3, 500, seed=7)
    assert [d.id for d in picked] == [d.id for d in again] == info["document_ids"]
    assert len(picked) == 3 and {d.id for d in picked} <= long_enough
    assert info["seed"] == 7 and info["min_tokens"] == 500 and picked[0].meta["meta"]["set_name"] == "test"
    draws = {
        tuple(d.id for d in sample_long_documents(len(rows), rows.__getitem__, n_tokens, 3, 500, s)[0])
        for s in range(20)
    }
    assert len(draws) > 3  # the seed matters
    everything, info = sample_long_documents(len(rows), rows.__getitem__, n_tokens, 10, 500, seed=0)
    assert {d.id for d in everything} == long_enough and info["selected"] == 5  # fewer than asked: all of them


def test_dense_kv_attention_for_cudnn_equals_sdpa_and_is_used():
    """With a cuDNN preference, GQA models score through `_dense_kv_sdpa` (K/V heads repeated: cuDNN takes no
    enable_gqa) for the scoring forward only; the numbers equal plain SDPA's."""
    from transformers import AttentionInterface

    from conftest import build_tiny_llama
    from evals.perplexity import DENSE_KV_ATTENTION, WindowScorer, _dense_kv_sdpa

    model = build_tiny_llama(1000)
    x = torch.randint(0, 1000, (3, 40), generator=torch.Generator().manual_seed(0))
    plain = WindowScorer(model, sdpa_backend="auto")
    dense = WindowScorer(model, sdpa_backend="cudnn")
    assert plain.attn_impl is None and dense.attn_impl == DENSE_KV_ATTENTION
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return _dense_kv_sdpa(*args, **kwargs)

    AttentionInterface.register(DENSE_KV_ATTENTION, spy)
    try:
        got = dense.score(x, [1, 5, 39])
    finally:
        AttentionInterface.register(DENSE_KV_ATTENTION, _dense_kv_sdpa)
    assert len(calls) == model.config.num_hidden_layers
    assert model.config._attn_implementation == "sdpa"  # restored after the forward
    assert torch.allclose(got, plain.score(x, [1, 5, 39]), rtol=1e-6)


# --------------------------------------------------------------------------- never silently wrong


def test_changed_text_is_refused_and_overwrite_scores_it_afresh(tiny, tmp_path):
    cfg = PerplexityConfig(lengths=[24], stride=6)
    first = run(tiny, DOCS, cfg, tmp_path / "out", show_progress=False)
    cells = [json.loads(x) for x in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    assert {c["text_sha256"] for c in cells} == {text_fingerprint(d.text) for d in DOCS}
    result = json.loads(first.result_path.read_text())
    assert result["data"]["text_sha256"]["a"] == text_fingerprint(TEXT_A)
    shorter = [Document("a", TEXT_A[:150]), *DOCS[1:]]
    with pytest.raises(LlqaError, match="different configuration: the text of a is not the text"):
        run(tiny, shorter, cfg, tmp_path / "out", show_progress=False)
    redone = run(tiny, shorter, cfg, tmp_path / "out", overwrite=True, show_progress=False)
    fresh = run(tiny, shorter, cfg, tmp_path / "fresh", show_progress=False)
    assert redone.rows[0]["ppl"] == pytest.approx(fresh.rows[0]["ppl"], rel=1e-9) != first.rows[0]["ppl"]
    concat = PerplexityConfig(lengths=[24], stride=6, concat=True)  # the joined stream is fingerprinted too
    run(tiny, DOCS, concat, tmp_path / "cat", show_progress=False)
    with pytest.raises(LlqaError, match="the text of the joined documents is not"):
        run(tiny, shorter, concat, tmp_path / "cat", show_progress=False)
    log = tmp_path / "cat" / "cells.jsonl"  # a log from before texts were fingerprinted: cannot be checked
    log.write_text(
        "".join(
            json.dumps({k: v for k, v in json.loads(x).items() if k != "text_sha256"}) + "\n"
            for x in log.read_text().splitlines()
        )
    )
    with pytest.raises(LlqaError, match="scored by an older llqa that did not record the documents' text"):
        run(tiny, DOCS, concat, tmp_path / "cat", show_progress=False)


def test_a_length_no_document_fills_is_not_measured(tiny, tmp_path):
    """A 5-token document at L=8192, and L=65,536 next to a measured length: rows that say so, with no
    number; the measured length keeps exactly its number."""
    five = Document("five", "one two three four five")
    assert len(tokenize(tiny.tokenizer, five, bos=False).ids) == 5
    out = run(tiny, [five], PerplexityConfig(lengths=[8192], stride=256), tmp_path / "five", show_progress=False)
    (row,) = out.rows
    assert row["reached"] is False and row["full_documents"] == 0 and row["documents"] == 1
    assert row["ppl"] is row["window_ppl"] is row["bits_per_byte"] is None and row["windows"] == 0
    assert out.warnings == [
        "L=8192: not measured — no document has a full window of 8,192 tokens (sliding needs at least L tokens; "
        "the longest has 5)"
    ]

    huge = run(tiny, DOCS, PerplexityConfig(lengths=[32, 65536], stride=8), tmp_path / "huge", show_progress=False)
    alone = run(tiny, DOCS, PerplexityConfig(lengths=[32], stride=8), tmp_path / "alone", show_progress=False)
    assert huge.rows[0]["ppl"] == pytest.approx(alone.rows[0]["ppl"], rel=1e-9) and huge.rows[0]["reached"]
    result = json.loads(huge.result_path.read_text())
    assert result["summary"]["65536"] == {
        "ppl": None,
        "window_ppl": None,
        "bits_per_byte": None,
        "scored_tokens": 0,
        "windows": 0,
        "documents": 3,
        "full_documents": 0,
        "reached": False,
    }
    assert result["warnings"][0].startswith("L=65536: not measured") and result["cells"] == 3
    csv_rows = (tmp_path / "huge" / "result.csv").read_text().splitlines()
    assert "reached" in csv_rows[0] and ",False," in csv_rows[2]


def test_a_length_some_documents_fill_counts_them(tiny, tmp_path):
    """Documents of 89, 65 and 80 tokens at L=72: two fill a window. sliding scores the short one with its
    whole text as context, all-tokens (LongLoRA) gives it no window; both say how many filled one."""
    n = [len(tokenize(tiny.tokenizer, d, bos=False).ids) for d in DOCS]
    assert n == [89, 65, 80]
    fates = {"sliding": "are scored with their whole text as context", "all-tokens": "get no window"}
    for scoring, stride, full in (("sliding", 4, 2), ("all-tokens", 4, 2)):
        out = run(tiny, DOCS, PerplexityConfig([72], stride, scoring), tmp_path / scoring, show_progress=False)
        row = out.rows[0]
        assert row["reached"] and row["documents"] == 3 and row["full_documents"] == full
        assert row["windows"] == sum(len(windows(k, 72, stride, scoring)) for k in n)
        assert out.warnings == [f"L=72: 1 of 3 documents are shorter than one full window; they {fates[scoring]}"]


def test_line_ends_do_not_change_the_numbers(tiny, tmp_path):
    """The same text with LF, CRLF and CR line ends (and a UTF-8 BOM): the same documents, token ids and
    perplexity; the result records how text files were read."""
    lines = [TEXT_A[:120], "", TEXT_B[:140], "  indented line", TEXT_A[120:]]
    results = {}
    for name, end in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        path = tmp_path / f"{name}.txt"
        path.write_bytes(("\ufeff" if name == "crlf" else "").encode() + end.join(lines).encode() + end.encode())
        docs, info = local_documents(path)
        assert docs[0].text == "\n".join(lines) + "\n"
        ids = tokenize(tiny.tokenizer, docs[0], bos=False).ids
        out = run(
            tiny, docs, PerplexityConfig(lengths=[32], stride=8), tmp_path / name, data_info=info, show_progress=False
        )
        results[name] = (ids.tolist(), out.rows[0]["ppl"], json.loads(out.result_path.read_text())["data"])
    assert results["lf"][:2] == results["crlf"][:2] == results["cr"][:2]
    assert "universal newlines" in results["cr"][2]["text_files"]
    shas = [list(r[2]["text_sha256"].values()) for r in results.values()]
    assert shas[0] == shas[1] == shas[2]


def test_max_docs_must_be_positive(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT_A)
    assert len(local_documents(tmp_path, max_docs=1)[0]) == 1
    with pytest.raises(LlqaError, match="--max-docs must be at least 1, got 0"):
        local_documents(tmp_path, max_docs=0)
