"""LongChat topics and lines: the real LongEval files, scoring rules, generated test cases in the
same format, bad input, download and judge hooks, and runs through the CLI on a tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from evals.longchat import (
    LINES_HEADER,
    LINES_QUESTION,
    LongEvalConfig,
    downloaded_testcases,
    find_testcase_files,
    generate_lines_cases,
    generate_topics_cases,
    line_verdict,
    load_testcases,
    normalize_answer,
    parse_verdict,
    prepare_testcases,
    read_conversations,
    run_judge,
    summarize,
    token_f1,
    topic_match,
    topics_prompt,
    write_testcases,
)
from llqa.errors import LlqaError

runner = CliRunner()


@pytest.fixture(scope="module")
def longeval(shared_data) -> Path:
    return shared_data / "longchat_longeval" / "evaluation"


# --------------------------------------------------------------------------- scoring rules


@pytest.mark.parametrize(
    "answer, gold, match",
    [
        (
            "The first topic we discussed is the benefits of reading for pleasure.",
            "The benefits of reading for pleasure",
            True,
        ),
        ("THE BENEFITS OF READING FOR PLEASURE", "The benefits of reading for pleasure", True),  # case
        ("benefits of reading, for pleasure!", "The benefits of reading for pleasure", True),  # punctuation, article
        ("The pleasure of reading books", "The benefits of reading for pleasure", False),  # a paraphrase: no match
        ("reading for pleasure", "The benefits of reading for pleasure", False),  # part of the topic only
        ("", "The psychology of happiness", False),
        ("the psychology of happinessness", "The psychology of happiness", False),  # words, not characters
    ],
)
def test_topic_match(answer, gold, match):
    assert topic_match(answer, gold) is match


def test_token_f1_rewards_overlap_and_paraphrase_partially():
    gold = "The benefits of reading for pleasure"
    assert token_f1(gold, gold) == 1.0
    assert token_f1("BENEFITS of Reading for pleasure.", gold) == 1.0
    para = token_f1("The pleasure of reading books", gold)
    assert 0.0 < para < 1.0
    assert token_f1("something else entirely", gold) == 0.0
    assert token_f1("", gold) == 0.0
    # a long answer containing the gold still matches, but its F1 drops with its length
    long = "I think that the first topic we discussed was the benefits of reading for pleasure, yes."
    assert topic_match(long, gold) and token_f1(long, gold) < 0.7


def test_normalize_answer():
    assert normalize_answer("The Psychology, of an  Apple!") == ["psychology", "of", "apple"]


@pytest.mark.parametrize(
    "output, expected, correct, parsed",
    [
        ("The <REGISTER_CONTENT> in line torpid-kid is 2416.", 2416, True, 2416),
        ("<2416>", 2416, True, 2416),
        ("I don't know.", 2416, False, None),  # no integer
        ("2416, or maybe 3119", 2416, False, 3119),  # several integers: the last counts (LongChat's rule)
        ("line 7 holds 2416", 2416, True, 2416),
        ("2,416", 2416, False, 416),
    ],
)
def test_line_verdict(output, expected, correct, parsed):
    assert line_verdict(output, expected) == (correct, parsed)


# --------------------------------------------------------------------------- the real LongChat files


def test_real_files_load_and_score_canned_answers(longeval):
    topics = find_testcase_files(longeval, "topics")
    lines = find_testcase_files(longeval, "lines")
    assert set(topics) == {1, 5, 10} and set(lines) == {200, 300, 400}
    for n, path in topics.items():
        cases = load_testcases(path, "topics")
        assert len(cases) == 50 and all(len(c["topics"]) == n for c in cases)
        for c, other in zip(cases, cases[1:] + cases[:1], strict=True):
            gold = c["topics"][0]
            assert topic_match(f"The first topic we discussed was: {gold.lower()}.", gold)
            if normalize_answer(other["topics"][0]) != normalize_answer(gold):
                assert not topic_match(other["topics"][0], gold)
    for n, path in lines.items():
        cases = load_testcases(path, "lines")
        assert len(cases) == 50 and all(c["num_lines"] == n for c in cases)
        for c in cases:
            name = c["random_idx"][0]
            assert c["correct_line"] in c["prompt"] and f"in line {name}?" in c["prompt"]
            assert line_verdict(
                f"The <REGISTER_CONTENT> in line {name} is {c['expected_number']}.", c["expected_number"]
            ) == (True, c["expected_number"])
            assert not line_verdict(
                f"{c['expected_number']} is not it, it is {c['expected_number'] + 1}", c["expected_number"]
            )[0]


def test_our_prompt_format_rebuilds_every_published_topics_case(longeval):
    """The generator's format is LongChat's: every published topics prompt is rebuilt exactly from
    the conversations it names."""
    conversations = dict(read_conversations(longeval / "topics" / "conversations.jsonl"))
    for n, path in find_testcase_files(longeval, "topics").items():
        for c in load_testcases(path, "topics"):
            assert topics_prompt([conversations[t] for t in c["topics"]]) == c["prompt"], (n, c["test_id"])


def test_our_prompt_format_rebuilds_published_lines_cases(longeval):
    for path in find_testcase_files(longeval, "lines").values():
        for c in load_testcases(path, "lines")[:5]:
            lines = [line + "\n" for line in c["prompt"].split("\n") if line.startswith("line ")]
            assert len(lines) == c["num_lines"]
            rebuilt = LINES_HEADER + "".join(lines) + LINES_QUESTION.format(name=c["random_idx"][0])
            assert rebuilt == c["prompt"]


# --------------------------------------------------------------------------- generated test cases


def test_generated_topics_cases(longeval, tmp_path):
    conversations = read_conversations(longeval / "topics" / "conversations.jsonl")
    cases = generate_topics_cases(conversations, 3, 4, seed=7)
    assert cases == generate_topics_cases(conversations, 3, 4, seed=7)
    assert cases != generate_topics_cases(conversations, 3, 4, seed=8)
    by_topic = dict(conversations)
    for i, c in enumerate(cases):
        assert c["test_id"] == i and len(set(c["topics"])) == 3
        assert c["prompt"] == topics_prompt([by_topic[t] for t in c["topics"]])
    write_testcases(tmp_path / "3_topics.jsonl", cases)
    assert load_testcases(tmp_path / "3_topics.jsonl", "topics") == cases
    with pytest.raises(LlqaError, match="conversations"):
        generate_topics_cases(conversations, len(conversations) + 1, 1, seed=0)


def test_documents_become_conversations(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps({"title": "Tides", "text": "The moon pulls the sea."}) + "\n")
    [(topic, conv)] = read_conversations(f)
    assert topic == "Tides" and conv.startswith("USER: I would like to discuss the topic of Tides.")


def test_generated_lines_cases(smollm2_tokenizer, tmp_path):
    cases = generate_lines_cases(30, 3, seed=1, tokenizer=smollm2_tokenizer)
    assert cases == generate_lines_cases(30, 3, seed=1, tokenizer=smollm2_tokenizer)
    for c in cases:
        name, pos = c["random_idx"]
        lines = [line for line in c["prompt"].split("\n") if line.startswith("line ")]
        names = [line.split(":")[0][5:] for line in lines]
        assert len(lines) == c["num_lines"] == 30 and len(set(names)) == 30
        assert names[pos] == name and lines[pos] + "\n" == c["correct_line"]
        assert f"<{c['expected_number']}>" in c["correct_line"] and 1 <= c["expected_number"] <= 50_000
        assert c["prompt"].startswith(LINES_HEADER) and c["prompt"].endswith(LINES_QUESTION.format(name=name))
        assert c["token_size"] == len(smollm2_tokenizer(c["prompt"], add_special_tokens=False)["input_ids"])
    write_testcases(tmp_path / "30_lines.jsonl", cases)
    assert load_testcases(tmp_path / "30_lines.jsonl", "lines") == cases


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"test_id": 0, "prompt": "p", "topics": ["a"]}\n{"test_id": 1, "prompt": \n', r"\.jsonl:2 is not valid JSON"),
        ('{"test_id": 0, "prompt": "p"}\n', "lacks field.*topics"),
        ('{"test_id": 0, "topics": ["a"]}\n', "lacks field.*prompt"),
        ('{"prompt": "p", "topics": []}\n', "non-empty list"),
        ("[1, 2]\n", "not a JSON object"),
        ("\n\n", "no test case"),
    ],
)
def test_bad_topics_files(tmp_path, content, match):
    f = tmp_path / "5_topics.jsonl"
    f.write_text(content)
    with pytest.raises(LlqaError, match=match):
        load_testcases(f, "topics")


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"prompt": "p", "expected_number": "many"}\n', "must be an integer"),
        ('{"prompt": "p"}\n', "lacks field.*expected_number"),
    ],
)
def test_bad_lines_files(tmp_path, content, match):
    f = tmp_path / "5_lines.jsonl"
    f.write_text(content)
    with pytest.raises(LlqaError, match=match):
        load_testcases(f, "lines")


def test_bad_conversations_file(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"name": "x"}\n')
    with pytest.raises(LlqaError, match="topic"):
        read_conversations(f)
    with pytest.raises(LlqaError, match="no such file"):
        read_conversations(tmp_path / "missing.jsonl")


def test_config_checks():
    with pytest.raises(LlqaError):
        LongEvalConfig(task="needles")
    with pytest.raises(LlqaError, match="topics only"):
        LongEvalConfig(task="lines", judge_cmd="judge")
    assert LongEvalConfig(task="lines").max_new_tokens == 100
    assert LongEvalConfig(task="topics").max_new_tokens == 50


# --------------------------------------------------------------------------- download and judge


def test_download_from_a_mirror_and_offline_error(longeval, tmp_path, monkeypatch):
    monkeypatch.setenv("LLQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLQA_LONGCHAT_URL", longeval.as_uri())
    files = downloaded_testcases("lines", [200])
    assert load_testcases(files[200], "lines")[0]["num_lines"] == 200
    monkeypatch.setenv("LLQA_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setenv("LLQA_LONGCHAT_URL", "https://raw.githubusercontent.com/x/y")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlqaError, match="--testcases DIR"):
        downloaded_testcases("topics", [1])


def test_prepare_reads_what_the_folder_has_and_generates_the_rest(longeval, tmp_path, monkeypatch):
    cfg = LongEvalConfig(
        task="topics",
        testcases=str(longeval),
        sizes=[1, 2],
        generate=True,
        cases=3,
        conversations=str(longeval / "topics" / "conversations.jsonl"),
    )
    files = prepare_testcases(cfg, tmp_path)
    assert files[1] == longeval / "topics" / "testcases" / "1_topics.jsonl"  # published: read, not generated
    assert files[2] == tmp_path / "testcases" / "2_topics.jsonl"
    assert [len(c["topics"]) for c in load_testcases(files[2], "topics")] == [2, 2, 2]
    with pytest.raises(LlqaError, match="has no topics file for N = \\[7\\]"):
        prepare_testcases(LongEvalConfig(task="topics", testcases=str(longeval), sizes=[7]), tmp_path)
    # no --conversations and no network: one clear error
    monkeypatch.setenv("LLQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlqaError, match="cannot be reached"):
        prepare_testcases(LongEvalConfig(task="topics", sizes=[3], generate=True), tmp_path / "other")
    # without --testcases the published files come from LongChat's repository (here a file:// mirror)
    monkeypatch.setenv("LLQA_LONGCHAT_URL", longeval.as_uri())
    files = prepare_testcases(LongEvalConfig(task="lines", sizes=[300]), tmp_path / "dl")
    assert load_testcases(files[300], "lines")[0]["num_lines"] == 300


def test_judge_hook(tmp_path):
    script = tmp_path / "judge.py"
    script.write_text(
        "import json, sys\nd = json.load(sys.stdin)\n"
        "print(json.dumps({'correct': d['gold'].lower() in d['answer'].lower()}))\n"
    )
    cmd = f"{sys.executable} {script}"
    assert run_judge(cmd, {"gold": "Tides", "answer": "it was tides"}) is True
    assert run_judge(cmd, {"gold": "Tides", "answer": "it was bread"}) is False
    with pytest.raises(LlqaError, match="exited with"):
        run_judge(f"{sys.executable} -c 'import sys; sys.exit(3)'", {})
    assert parse_verdict("Yes.") is True and parse_verdict("no, wrong") is False
    with pytest.raises(LlqaError, match="no verdict"):
        parse_verdict("maybe")


def test_a_failing_judge_keeps_the_generations(tiny_llama_dir, longeval, tmp_path):
    from evals.longchat import run_longeval
    from llqa.models import load_model

    loaded = load_model(str(tiny_llama_dir), dtype="float32", device="cpu")
    broken = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    cfg = LongEvalConfig(
        task="topics",
        testcases=str(longeval),
        sizes=[1],
        limit=2,
        max_new_tokens=2,
        overlong="middle",
        judge_cmd=broken,
    )
    [row] = run_longeval(loaded, cfg, tmp_path, progress=False)
    assert row["evaluated"] == 2 and row["judge_errors"] == 2 and row["judge_accuracy"] is None
    cells = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert all(c["output"] is not None and c["judge"] is None and "exited with 3" in c["judge_error"] for c in cells)


def test_summary_per_n():
    recs = [
        {"n": 5, "prompt_tokens": 100, "correct": True, "f1": 1.0},
        {"n": 5, "prompt_tokens": 300, "correct": False, "f1": 0.5, "judge": True},
        {"n": 10, "prompt_tokens": 900, "skipped": True},
    ]
    rows = {r["n"]: r for r in summarize(recs, "topics")}
    assert rows[5]["accuracy"] == 0.5 and rows[5]["mean_f1"] == 0.75 and rows[5]["mean_prompt_tokens"] == 200
    assert rows[5]["judge_accuracy"] == 1.0
    assert rows[10]["accuracy"] is None and rows[10]["skipped"] == 1


# --------------------------------------------------------------------------- runs through the CLI


def test_cli_lines_generate_run_and_resume(tiny_llama_dir, tmp_path):
    out = tmp_path / "lines"
    args = [
        "eval",
        "lines",
        "--model",
        str(tiny_llama_dir),
        "--generate",
        "--sizes",
        "3,6",
        "--cases",
        "2",
        "--max-new-tokens",
        "4",
        "--chat-template",
        "none",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert (out / "testcases" / "3_lines.jsonl").is_file() and (out / "lines_accuracy.png").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "lines" and "last integer" in result["semantics"]
    assert [row["n"] for row in result["summary"]["by_n"]] == [3, 6]
    assert all(row["evaluated"] == 2 for row in result["summary"]["by_n"])
    cells = (out / "cells.jsonl").read_text()
    r = runner.invoke(cli.app, args)  # resume: nothing new to run, same cells
    assert r.exit_code == 0 and (out / "cells.jsonl").read_text() == cells


def test_cli_topics_real_cases_overlong_skip_and_middle(tiny_llama_dir, longeval, tmp_path):
    base = [
        "eval",
        "topics",
        "--model",
        str(tiny_llama_dir),
        "--testcases",
        str(longeval),
        "--sizes",
        "1",
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--no-progress",
    ]
    r = runner.invoke(cli.app, [*base, "--out", str(tmp_path / "skip")])
    assert r.exit_code == 0, r.output
    [row] = json.loads((tmp_path / "skip" / "result.json").read_text())["summary"]["by_n"]
    assert row["skipped"] == 2 and row["accuracy"] is None and row["mean_prompt_tokens"] > 256  # ctx 256
    judge = tmp_path / "judge.py"
    judge.write_text("import json, sys\njson.load(sys.stdin)\nprint('yes')\n")
    r = runner.invoke(
        cli.app,
        [*base, "--overlong", "middle", "--judge-cmd", f"{sys.executable} {judge}", "--out", str(tmp_path / "mid")],
    )
    assert r.exit_code == 0, r.output
    [row] = json.loads((tmp_path / "mid" / "result.json").read_text())["summary"]["by_n"]
    assert row["evaluated"] == row["truncated"] == 2 and 0.0 <= row["accuracy"] <= 1.0
    assert row["judge_accuracy"] == 1.0  # the judge's verdicts are reported beside, never instead of, match
    cells = [json.loads(line) for line in (tmp_path / "mid" / "cells.jsonl").read_text().splitlines()]
    assert all("gold" in c and "f1" in c and c["judge"] is True for c in cells)


def test_cli_longeval_errors(tmp_path):
    r = runner.invoke(cli.app, ["eval", "topics", "--testcases", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "holds no N_topics.jsonl" in str(r.exception)
    r = runner.invoke(cli.app, ["eval", "lines", "--generate", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--sizes" in str(r.exception)
