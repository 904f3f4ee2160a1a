"""Passkey retrieval: prompt construction (exact length, key at depth), grid, effective context window,
haystack input errors, resume, CLI, and the real SmolLM2 end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import cli
from evals.generation import prompt_frame
from evals.passkey import (
    FILLER,
    KEY_LINE,
    QUESTION,
    TASK,
    PasskeyBuilder,
    PasskeyConfig,
    cell_key,
    default_lengths,
    edit_distance,
    effective_context_window,
    haystack_stream,
    near_miss,
    read_haystack,
    run_passkey,
    summarize,
    trial_key,
)
from llqa.errors import LlqaError

runner = CliRunner()


# --------------------------------------------------------------------------- pure pieces


def test_default_lengths_are_32_uniform_up_to_ctx():
    lengths = default_lengths(8192)
    assert len(lengths) == 32 and lengths[-1] == 8192 and lengths[0] == 256
    assert {b - a for a, b in zip(lengths, lengths[1:], strict=False)} == {256}


@pytest.mark.parametrize(
    "acc, threshold, expected",
    [
        ({1000: 1.0, 2000: 0.5, 3000: 0.2}, 0.2, 3000),  # threshold reached exactly counts
        ({1000: 1.0, 2000: 0.1, 3000: 1.0}, 0.2, 1000),  # a later recovery does not count (every length <= k)
        ({1000: 0.0, 2000: 1.0}, 0.2, 0),  # the shortest already fails
        ({3000: 0.9, 1000: 0.9, 2000: 0.9}, 0.95, 0),
        ({3000: 0.9, 1000: 0.9, 2000: 0.9}, 0.5, 3000),  # order of the dict does not matter
    ],
)
def test_effective_context_window(acc, threshold, expected):
    assert effective_context_window(acc, threshold) == expected


def test_trial_keys_are_seeded_five_digit_and_cell_specific():
    keys = {trial_key(0, n, d, t) for n in (1024, 2048) for d in (0.0, 0.5) for t in range(10)}
    assert all(10_000 <= k <= 99_999 for k in keys)
    assert len(keys) > 35  # 40 cells; collisions are possible but rare
    assert trial_key(3, 1024, 0.5, 2) == trial_key(3, 1024, 0.5, 2)
    assert trial_key(3, 1024, 0.5, 2) != trial_key(4, 1024, 0.5, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depths=[1.5]),
        dict(depths=[]),
        dict(trials=0),
        dict(lengths=[0]),
        dict(threshold=2.0),
        dict(chat_template="yes"),
        dict(overlong="cut"),
        dict(max_new_tokens=0),
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(LlqaError):
        PasskeyConfig(**kwargs)


def test_summary_counts_skipped_apart():
    recs = [
        {"length": 100, "depth": 0.0, "correct": True},
        {"length": 100, "depth": 1.0, "correct": False},
        {"length": 200, "depth": 0.0, "skipped": True},
    ]
    s = summarize(recs, 0.2)
    assert s["evaluated"] == 2 and s["skipped"] == 1 and s["accuracy"] == 0.5
    by_len = {r["length"]: r for r in s["by_length"]}
    assert by_len[100]["accuracy"] == 0.5 and by_len[200]["accuracy"] is None and by_len[200]["skipped"] == 1
    assert s["effective_context_window"] == 100


@pytest.mark.parametrize(
    "a,b,d",
    [
        ("", "", 0),
        ("90684", "90684", 0),
        ("90684", "9064", 1),
        ("57305", "5705", 1),
        ("60176", "60170", 1),
        ("90684", "906845", 1),
        ("12345", "54321", 4),
        ("", "123", 3),
        ("kitten", "sitting", 3),
    ],
)
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == edit_distance(b, a) == d


def test_edit_distance_obeys_the_triangle_inequality():
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("0123") for _ in range(rng.randint(0, 6))) for _ in range(40)]
    for a, b, c in zip(words, words[1:], words[2:], strict=False):
        assert edit_distance(a, c) <= edit_distance(a, b) + edit_distance(b, c)
        assert edit_distance(a, b) >= abs(len(a) - len(b))


@pytest.mark.parametrize(
    "record,near",
    [
        ({"key_value": 90684, "predicted": 9064, "correct": False}, True),  # a digit dropped
        ({"key_value": 90684, "predicted": 90634, "correct": False}, True),  # a digit changed
        ({"key_value": 90684, "predicted": 906844, "correct": False}, True),  # a digit added
        ({"key_value": 90684, "predicted": 968, "correct": False}, False),  # two digits dropped
        ({"key_value": 90684, "predicted": 90684, "correct": True}, False),  # correct is not a miss
        ({"key_value": 90684, "predicted": None, "correct": False}, False),  # no integer at all
        ({"length": 100, "depth": 0.0, "correct": False}, False),  # a record from before the diagnostic
    ],
)
def test_near_miss(record, near):
    assert near_miss(record) is near


def test_summary_counts_near_misses_apart_from_accuracy():
    recs = [
        {"length": 100, "depth": 0.0, "key_value": 11111, "predicted": 11111, "correct": True},
        {"length": 100, "depth": 0.0, "key_value": 22222, "predicted": 2222, "correct": False},
        {"length": 100, "depth": 1.0, "key_value": 33333, "predicted": 45, "correct": False},
        {"length": 200, "depth": 0.0, "key_value": 44444, "predicted": 44445, "correct": False},
        {"length": 300, "depth": 0.0, "skipped": True},
    ]
    s = summarize(recs, 0.2)
    assert s["accuracy"] == 0.25 and s["near_misses"] == 2 and s["accuracy_one_edit"] == 0.75
    by_len = {r["length"]: r for r in s["by_length"]}
    assert by_len[100]["near_misses"] == 1 and by_len[100]["accuracy_one_edit"] == pytest.approx(2 / 3)
    assert by_len[200]["accuracy"] == 0.0 and by_len[200]["accuracy_one_edit"] == 1.0
    assert by_len[300]["accuracy_one_edit"] is None
    assert s["effective_context_window"] == 100  # near misses never count for the window


# --------------------------------------------------------------------------- prompt construction


@pytest.mark.parametrize("template", [False, True])
@pytest.mark.parametrize("length", [150, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_prompt_has_exact_length_and_key_at_depth(smollm2_tokenizer, template, length, depth):
    tok = smollm2_tokenizer
    frame = prompt_frame(tok, template)
    builder = PasskeyBuilder(tok, frame, haystack_stream(tok, "filler", length))
    p = builder.build(length, depth, 48213)
    assert len(p.ids) == length  # tolerance 0: built from token pieces
    # the key line sits where the builder says, after `depth` of the filler (to the nearest token)
    key_text = tok.decode(p.ids[p.key_start : p.key_start + p.key_len])
    assert key_text.strip() == KEY_LINE.format(key=48213)
    assert abs(p.filler_before - depth * p.filler_total) <= 0.5
    assert p.key_start == len(builder.head) + p.filler_before
    text = tok.decode(p.ids)
    assert TASK in text and text.count("48213") == 2
    assert text.rstrip().endswith(QUESTION) or (template and QUESTION in text[-80:])
    # the ids are what tokenizing the text gives back: the length is the text's real length
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == length


def test_depth_orders_the_key(smollm2_tokenizer):
    tok = smollm2_tokenizer
    builder = PasskeyBuilder(tok, prompt_frame(tok, False), haystack_stream(tok, "filler", 2000))
    starts = [builder.build(2000, d, 11111).key_start for d in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert starts == sorted(starts) and starts[0] < starts[-1]


def test_length_shorter_than_fixed_parts_is_a_user_error(smollm2_tokenizer):
    tok = smollm2_tokenizer
    builder = PasskeyBuilder(tok, prompt_frame(tok, True), haystack_stream(tok, "filler", 100))
    with pytest.raises(LlqaError, match="shorter than the prompt without filler"):
        builder.build(20, 0.5, 12345)


def test_haystack_folder_text_is_used_and_repeated(smollm2_tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("Zebras graze quietly near the river bank every morning.")
    (tmp_path / "b.txt").write_text("")  # an empty file in a folder is skipped
    tok = smollm2_tokenizer
    stream = haystack_stream(tok, str(tmp_path), 500)
    assert len(stream) >= 500
    p = PasskeyBuilder(tok, prompt_frame(tok, False), stream).build(400, 0.5, 23456)
    text = tok.decode(p.ids)
    assert "Zebras graze" in text and FILLER not in text and len(p.ids) == 400


def test_haystack_real_essays(smollm2_tokenizer, shared_data):
    text = read_haystack(shared_data / "paul_graham_essays", max_chars=20_000)
    assert len(text) >= 20_000
    stream = haystack_stream(smollm2_tokenizer, str(shared_data / "paul_graham_essays"), 3000)
    assert len(stream) >= 3000


@pytest.mark.parametrize(
    "setup, match", [("empty", "no files matching"), ("blank", "empty"), ("missing", "no such file")]
)
def test_bad_haystack_is_a_user_error(tmp_path, setup, match):
    folder = tmp_path / "hay"
    if setup != "missing":
        folder.mkdir()
    if setup == "blank":
        (folder / "a.txt").write_text("   \n")
    with pytest.raises(LlqaError, match=match):
        read_haystack(folder)


# --------------------------------------------------------------------------- runs (tiny model)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def test_run_writes_results_and_resumes(tiny_loaded, tmp_path, monkeypatch):
    cfg = PasskeyConfig(lengths=[120, 200, 300], depths=[0.0, 1.0], trials=2, chat_template="none", max_new_tokens=4)
    summary = run_passkey(tiny_loaded, cfg, tmp_path, progress=False)
    # native ctx 256: the 300-token prompts are skipped and counted, never scored
    assert summary["skipped"] == 4 and summary["evaluated"] == 8
    assert {r["length"] for r in summary["by_length_depth"]} == {120, 200}
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["task"] == "passkey" and "first integer" in result["semantics"]
    assert result["config"]["chat_template_applied"] is False and result["config"]["ctx"] == 256
    for png in ("passkey_heatmap.png", "passkey_accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in (tmp_path / "result.csv").read_text().splitlines()[0]
    cells = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert all(c["tokens"] == c["length"] for c in cells)
    assert all(c["correct"] == (c["predicted"] == c["key_value"]) for c in cells if not c["skipped"])

    # resume: every cell is done, so nothing is generated again and the summary is the same
    import evals.harness as harness

    def no_generation(model, tok, prompts, *a, **k):
        assert not prompts, "a finished cell was generated again"
        return iter(())

    monkeypatch.setattr(harness, "generate_greedy", no_generation)
    assert run_passkey(tiny_loaded, cfg, tmp_path, progress=False) == summary
    # a different configuration in the same folder is refused, naming what differs
    with pytest.raises(LlqaError, match="different configuration: .*depths, .*lengths, .*differ"):
        run_passkey(tiny_loaded, PasskeyConfig(lengths=[120], depths=[0.5], trials=1), tmp_path, progress=False)


def test_overlong_middle_truncates_instead_of_skipping(tiny_loaded, tmp_path):
    cfg = PasskeyConfig(
        lengths=[300], depths=[0.0], trials=1, chat_template="none", overlong="middle", max_new_tokens=2
    )
    summary = run_passkey(tiny_loaded, cfg, tmp_path, progress=False)
    assert summary["skipped"] == 0 and summary["truncated"] == 1 and summary["evaluated"] == 1


def test_ctx_below_native_bounds_the_grid(tiny_loaded, tmp_path):
    cfg = PasskeyConfig(depths=[0.5], trials=1, chat_template="none", max_new_tokens=2)
    summary = run_passkey(tiny_loaded, cfg, tmp_path / "grid", progress=False, ctx=192)
    lengths = [r["length"] for r in summary["by_length"]]
    assert max(lengths) == 192 and summary["skipped"] == 0  # 32 uniform lengths up to --ctx, short ones dropped
    assert set(lengths) <= set(default_lengths(192))
    cfg = PasskeyConfig(lengths=[120, 200], depths=[0.5], trials=1, chat_template="none", max_new_tokens=2)
    summary = run_passkey(tiny_loaded, cfg, tmp_path / "over", progress=False, ctx=150)
    assert summary["skipped"] == 1 and summary["evaluated"] == 1


def test_cli_passkey_happy_path_and_errors(tiny_llama_dir, tmp_path):
    out = tmp_path / "pk"
    args = [
        "eval",
        "passkey",
        "--model",
        str(tiny_llama_dir),
        "--lengths",
        "128,256",
        "--depths",
        "0,0.5",
        "--trials",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert "effective context window" in r.output
    assert (out / "passkey_heatmap.png").is_file() and (out / "result.csv").is_file()
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert cell_key(128, 0.0, 0) in {c["key"] for c in cells} and len(cells) == 4
    for bad, match in [
        (["--depths", "0,x"], "comma-separated"),
        (["--haystack", str(tmp_path / "nope")], "no such file"),
    ]:
        r = runner.invoke(cli.app, [*args[:-3], *bad, "--out", str(tmp_path / "bad"), "--no-progress"])
        assert r.exit_code != 0 and match in str(r.exception)


# --------------------------------------------------------------------------- the real model


def _smollm2_passkey(smollm2, tmp_path, lengths, depths, trials):
    cfg = PasskeyConfig(lengths=lengths, depths=depths, trials=trials, chat_template="none")
    summary = run_passkey(smollm2, cfg, tmp_path, progress=False)
    assert (tmp_path / "passkey_heatmap.png").stat().st_size > 1000
    return summary, {r["length"]: r["accuracy"] for r in summary["by_length"]}


def test_smollm2_passkey_1k_2k(smollm2, tmp_path):
    """The real SmolLM2-135M-Instruct finds the key (measured: every cell correct at 1k-4k, depths 0 and
    0.5, two trials, without the chat template; with it, SmolLM2 answers in prose and rarely gives the
    number). Four prompts at 1k-2k: SmolLM2's prefill on 2 CPU cores is the cost (one 4k prompt costs
    more than the three shorter ones together); the slow test below covers 1k-4k."""
    summary, by_len = _smollm2_passkey(smollm2, tmp_path, [1024, 2048], [0.0, 0.5], 1)
    assert by_len[2048] >= 0.8 and by_len[1024] >= 0.5
    assert summary["effective_context_window"] == 2048


@pytest.mark.slow
def test_smollm2_passkey_1k_to_4k(smollm2, tmp_path):
    summary, by_len = _smollm2_passkey(smollm2, tmp_path, [1024, 2048, 4096], [0.0, 0.5], 2)  # measured: 12/12
    assert summary["accuracy"] >= 0.8 and min(by_len.values()) >= 0.5
    assert summary["effective_context_window"] == 4096


# --------------------------------------------------------------------------- protocols


def longlora_prompt(n_prefix_chars: int, n_suffix_chars: int, pass_key: int) -> str:
    """LongLoRA's passkey_retrivial.py `generate_prompt_landmark`, its strings verbatim, with the random
    prefix length and key given instead of drawn (dvlab-research/LongLoRA)."""
    task_description = (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there."
    )
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    garbage_inf = " ".join([garbage] * 5000)
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    final_question = "What is the pass key? The pass key is"
    lines = [
        task_description,
        garbage_inf[:n_prefix_chars],
        information_line,
        garbage_inf[:n_suffix_chars],
        final_question,
    ]
    return "\n".join(lines)


@pytest.mark.parametrize("depth", [0.0, 1.0])
def test_longlora_protocol_reproduces_longlora_prompt_text(smollm2_tokenizer, depth):
    from evals.passkey import PROTOCOLS

    tok = smollm2_tokenizer
    builder = PasskeyBuilder(tok, prompt_frame(tok, False), haystack_stream(tok, "filler", 600), PROTOCOLS["longlora"])
    p = builder.build(600, depth, 4321)
    filler = tok.decode(builder.filler[: p.filler_total])
    before, after = (0, len(filler)) if depth == 0.0 else (len(filler), 0)
    assert tok.decode(p.ids) == longlora_prompt(before, after, 4321)
    assert len(p.ids) == 600


def test_protocol_keys_and_wording():
    from evals.passkey import PROTOCOLS

    keys = {trial_key(0, 1024, 0.5, t, PROTOCOLS["longlora"].key_range) for t in range(200)}
    assert min(keys) >= 1 and max(keys) <= 49_999 and any(k < 10_000 for k in keys)
    assert "memorize it." in PROTOCOLS["llqa"].task and "memorize them." in PROTOCOLS["longlora"].task
    with pytest.raises(LlqaError, match="--protocol"):
        PasskeyConfig(protocol="landmark")


def test_longlora_run_records_its_protocol_and_csv_depth_stays_numeric(tiny_loaded, tmp_path):
    import csv

    cfg = PasskeyConfig(lengths=[120], depths=[0.0, 1.0], trials=2, chat_template="none", max_new_tokens=2)
    cfg.protocol = "longlora"
    run_passkey(tiny_loaded, cfg, tmp_path, progress=False)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["config"]["protocol"] == "longlora" and "memorize them" in result["data"]["task"]
    assert "1-49,999" in result["semantics"]
    cells = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert all(c["tokens"] == 120 and 1 <= c["key_value"] <= 49_999 for c in cells)
    rows = list(csv.DictReader((tmp_path / "result.csv").open()))
    assert [r["depth"] for r in rows] == ["", "0.0", "1.0"]  # the per-length row: empty, not "all"


def test_changed_haystack_is_refused_like_a_changed_configuration(tiny_loaded, tmp_path):
    hay = tmp_path / "hay.txt"
    hay.write_text("Zebras graze quietly near the river bank every morning. " * 20)
    cfg = PasskeyConfig(
        lengths=[120], depths=[0.5], trials=1, chat_template="none", max_new_tokens=2, haystack=str(hay)
    )
    run_passkey(tiny_loaded, cfg, tmp_path / "out", progress=False)
    fp = json.loads((tmp_path / "out" / "result.json").read_text())["inputs_fingerprint"]
    [cell] = [json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    assert len(fp) == 16 and len(cell["fingerprint"]) == 16
    run_passkey(tiny_loaded, cfg, tmp_path / "out", progress=False)  # same inputs: resumes
    hay.write_text("Otters float on their backs holding hands while they sleep. " * 20)
    with pytest.raises(LlqaError, match="different configuration"):
        run_passkey(tiny_loaded, cfg, tmp_path / "out", progress=False)


def test_cli_zero_new_tokens_all_skipped_and_protocol(tiny_llama_dir, tmp_path, capsys):
    from conftest import llqa_call

    base = ["eval", "passkey", "--model", str(tiny_llama_dir), "--depths", "0.5", "--trials", "1", "--no-progress"]
    code, out, err = llqa_call(capsys, *base, "--lengths", "120", "--max-new-tokens", "0", "--out", str(tmp_path / "a"))
    assert code == 2 and "--max-new-tokens must be positive, got 0" in err and "Traceback" not in err + out
    # every length above the context: no window to report, said in words (never "None tokens")
    code, out, err = llqa_call(capsys, *base, "--lengths", "300", "--out", str(tmp_path / "b"))
    assert code == 0 and "no length was evaluated" in out and "None" not in out
    args = ("--lengths", "120", "--max-new-tokens", "2", "--protocol", "longlora", "--out", str(tmp_path / "c"))
    code, out, err = llqa_call(capsys, *base, *args)
    assert code == 0 and "effective context window" in out
    config = json.loads((tmp_path / "c" / "result.json").read_text())["config"]
    assert config["protocol"] == "longlora"
    # passkey is a completion prompt: no chat template unless asked for (the tokenizer has one)
    assert config["chat_template"] == "none" and config["chat_template_applied"] is False
