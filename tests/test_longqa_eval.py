"""`llqa eval longqa`: prompts exactly as sft trains on them, SQuAD F1 and ROUGE-L on worked examples, the
middle cut counted, scores per category and doc_type, the judge hook, a run on a build's real layout."""

from __future__ import annotations

import json
import sys

import pytest

from evals.longqa import LongQAEvalConfig, LongQATask, read_split, rouge_l, run_template, squad_f1, squad_normalize
from llqa.errors import LlqaError
from llqa.prompts import PromptTemplate


def test_squad_normalisation_and_f1_worked_examples():
    # SQuAD v1.1 evaluate-v1.1.py: lower, drop punctuation (not to spaces), drop a/an/the, fix whitespace
    assert squad_normalize("The  Denver Broncos' win!") == "denver broncos win"
    assert squad_normalize("don't") == "dont"
    assert squad_f1("The Broncos won!", "broncos") == pytest.approx(2 * 0.5 * 1 / 1.5)  # P 1/2, R 1
    assert squad_f1("Denver Broncos", "the denver broncos") == 1.0
    assert squad_f1("Carolina", "Denver Broncos") == 0.0
    assert squad_f1("x b b", "b b c d") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))  # counts clip


def test_rouge_l_worked_examples():
    # LCS of 6-token texts: "the cat on the mat" (5 tokens): P = R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Dogs running", "the dog runs") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))  # stems match
    assert rouge_l("", "anything") == 0.0


def _item(i: int, category: str, doc_type: str, document: str, question: str, output: str) -> dict:
    """An item with LongQA's fields in the build's order (longqa.schema.ITEM_FIELDS)."""
    instruction = f"Read the document below and answer the question.\n\n{document}\n\nQuestion: {question}"
    return {
        "id": f"src-{i:04d}",
        "instruction": instruction,
        "output": output,
        "category": category,
        "doc_type": doc_type,
        "source": "src",
        "doc_id": f"doc{i}",
        "title": f"Title {i}",
        "question": question,
        "answer_type": "abstractive",
        "n_tokens": len(instruction.split()),
        "split": "test",
    }


@pytest.fixture
def build(tmp_path):
    items = [
        _item(0, "detail", "paper", "The sky over the lab was green.", "What colour was the sky?", "green"),
        _item(1, "summary", "novel", "A story. " * 200, "Summarise the story.", "It is a story."),
        _item(2, "character", "novel", "Anna met Bob.", "Who met Bob?", "Anna"),
    ]
    d = tmp_path / "build"
    d.mkdir()
    (d / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "train.jsonl").write_text(json.dumps(_item(9, "detail", "paper", "x", "y?", "z")) + "\n")
    return d


@pytest.mark.parametrize("template", ["chat", "inst"])
def test_prompt_is_sfts_prompt(smollm2_tokenizer, template):
    tpl = PromptTemplate(smollm2_tokenizer, template)
    instruction = "Read this.\n\nSome text.\n\nQuestion: what?"
    ids, labels, _ = tpl.encode(instruction, "An answer.", ctx=512)
    prompt, cut = tpl.prompt(instruction, 512, reserve=128)
    assert prompt == ids[labels == -100].tolist() and not cut  # the tokens sft trains the answer after


def test_long_instruction_loses_its_middle_as_sft_cuts_it(smollm2_tokenizer):
    tpl = PromptTemplate(smollm2_tokenizer, "inst")
    instruction = "BEGIN " + "filler " * 300 + "QUESTION: what is it?"
    prompt, cut = tpl.prompt(instruction, 100, reserve=20)
    assert cut and len(prompt) == 80
    text = smollm2_tokenizer.decode(prompt)
    assert "BEGIN" in text and text.endswith("QUESTION: what is it?[/INST]")
    ids, labels, status = tpl.encode(instruction, "x" * 10, ctx=100)  # sft: the same rule, the answer reserved
    assert status == "truncated" and len(ids) == 100


def test_read_split_and_errors(build, tmp_path):
    items, path = read_split(build, "test")
    assert path.name == "test.jsonl" and [x["id"] for x in items] == ["src-0000", "src-0001", "src-0002"]
    with pytest.raises(LlqaError, match="no test.jsonl"):
        read_split(tmp_path, "test")
    with pytest.raises(LlqaError, match="no such"):
        read_split(tmp_path / "missing", "test")
    with pytest.raises(LlqaError, match="--template"):
        LongQAEvalConfig(str(build), template="alpaca")


def test_template_recorded_by_an_sft_run(tmp_path):
    (tmp_path / "llqa_model.json").write_text(json.dumps({"task": "sft", "template": "inst", "ctx": 4096}))
    assert run_template(str(tmp_path)) == "inst"
    assert run_template("smollm2-135m") is None


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def test_run_scores_per_category_and_doc_type_with_a_judge(tiny_loaded, build, tmp_path):
    from evals.harness import GenerationOptions, run_task

    judge = tmp_path / "judge.py"
    judge.write_text(
        "import json, sys\nitem = json.load(sys.stdin)\nprint('yes' if item['test_id'].endswith('2') else 'no')\n"
    )
    cfg = LongQAEvalConfig(str(build), max_new_tokens=6, judge_cmd=f"{sys.executable} {judge}", template="inst")
    out = tmp_path / "out"
    result = run_task(
        tiny_loaded, LongQATask(cfg), GenerationOptions(chat_template="none"), out, progress=False, ctx=200
    )
    s = result.summary
    cells = {c["key"]: c for c in map(json.loads, (out / "cells.jsonl").read_text().splitlines())}
    assert set(cells) == {"src-0000", "src-0001", "src-0002"}
    for c in cells.values():
        assert c["f1"] == pytest.approx(squad_f1(c["output"], c["gold"]), abs=1e-6)
        assert c["rouge_l"] == pytest.approx(rouge_l(c["output"], c["gold"]), abs=1e-6)
        assert c["prompt_tokens"] + 6 <= 200
        assert c["judge"] is c["id"].endswith("2")
    assert [cells[k]["middle_cut"] for k in sorted(cells)] == [False, True, False]  # the 200-sentence story
    assert s["overall"]["middle_cut"] == 1 and s["overall"]["evaluated"] == 3
    assert s["overall"]["judge_accuracy"] == pytest.approx(1 / 3)
    assert s["overall"]["f1"] == pytest.approx(sum(c["f1"] for c in cells.values()) / 3)
    by_type = {r["name"]: r for r in s["by_doc_type"]}
    assert by_type["novel"]["items"] == 2 and by_type["novel"]["rouge_l"] == pytest.approx(
        (cells["src-0001"]["rouge_l"] + cells["src-0002"]["rouge_l"]) / 2
    )
    assert [r["name"] for r in s["by_category"]] == ["character", "detail", "summary"]
    saved = json.loads((out / "result.json").read_text())
    assert saved["task"] == "longqa" and "SQuAD token F1" in saved["semantics"]
    assert saved["config"]["template"] == "inst" and saved["data"]["file"].endswith("test.jsonl")
    assert (out / "result.csv").read_text().splitlines()[0].startswith("group,name,items,evaluated,middle_cut,f1")

    # llqa report: one row per run with the overall scores and F1 per category and doc_type
    from report import write_report

    (table,) = [t for t in write_report([out], tmp_path / "report").tables if t.kind == "longqa"]
    assert table.columns[3:8] == ["items", "middle cut", "F1", "ROUGE-L", "judge"]
    assert table.columns[8:] == ["F1 character", "F1 detail", "F1 summary", "F1 novel", "F1 paper"]
    row = table.rows[0]
    assert row[1:8] == [200, "inst", 3, 1, pytest.approx(s["overall"]["f1"]), pytest.approx(s["overall"]["rouge_l"]),
                        pytest.approx(1 / 3)]  # fmt: skip
    assert row[11] == pytest.approx(by_type["novel"]["f1"])


def test_budget_by_category_and_no_room(tiny_loaded, build, tmp_path):
    from evals.harness import GenerationOptions, run_task

    task = LongQATask(LongQAEvalConfig(str(build), template="inst"))
    with pytest.raises(LlqaError, match="no room"):  # 512 tokens for the summary item exceed ctx 256
        run_task(tiny_loaded, task, GenerationOptions(chat_template="none"), tmp_path / "o", progress=False, ctx=256)


def test_cli_longqa_happy_path_and_errors(tiny_llama_dir, build, tmp_path, capsys):
    from conftest import llqa_call

    common = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--no-progress"]
    out = tmp_path / "q"
    code, stdout, err = llqa_call(
        capsys, "eval", "longqa", str(build), *common, "--ctx", "200", "--max-new-tokens", "4", "--template", "inst",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "summary" in stdout and "novel" in stdout and "ROUGE-L" in stdout
    assert json.loads((out / "result.json").read_text())["summary"]["overall"]["middle_cut"] == 1
    code, _, err = llqa_call(capsys, "eval", "longqa", str(tmp_path / "nope"), *common, "--out", str(out))
    assert code == 2 and "no such LongQA build" in err
    code, stdout, _ = llqa_call(capsys, "eval", "longqa", "--help")
    assert code == 0 and "SQuAD token F1" in stdout
