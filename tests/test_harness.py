"""The generation-eval harness with a task written only against its interface: cells, resume, over-long
policies, per-case budgets, result files; and the task registry."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from evals.harness import Case, GenerationOptions, Task, run_task
from evals.tasks import TASKS
from llqa.errors import LlqaError


@dataclass
class EchoTask:
    """Cases ask to continue a word list; an answer is 'correct' when it is non-empty (a random model)."""

    sizes: tuple[int, ...] = (5, 40, 400)
    name: str = "echo"
    default_max_new_tokens: int = 3
    stop_when = None

    def semantics(self, ctx):
        return "echo: correct when the answer is non-empty"

    def config(self):
        return {"sizes": list(self.sizes)}

    def build_cases(self, ctx):
        cases = [Case(f"n={n}", text="apple " * n, reference=n, meta={"n": n}) for n in self.sizes]
        ids = ctx.encode("pear pear")
        return [*cases, Case("ids", ids=ids, reference=0, meta={"n": 0, "tokens": len(ids)}, max_new_tokens=1)]

    def score(self, case, answer):
        return {"correct": bool(answer), "echo": case.reference}

    def summarise(self, records):
        done = [r for r in records if not r["skipped"]]
        return {"evaluated": len(done), "skipped": len(records) - len(done)}

    def rows(self, summary):
        return [summary]

    def data(self):
        return {"words": "apple"}

    def plots(self, out_dir, summary, ctx):
        return []


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_dir):
    from llqa.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32", device="cpu")


def test_a_task_written_against_the_interface_runs_and_resumes(tiny_loaded, tmp_path, monkeypatch):
    task = EchoTask()
    assert isinstance(task, Task)
    result = run_task(tiny_loaded, task, GenerationOptions(chat_template="none"), tmp_path, progress=False)
    assert result.summary == {"evaluated": 3, "skipped": 1}  # 400 apples > ctx 256: skipped, counted
    cells = {c["key"]: c for c in map(json.loads, (tmp_path / "cells.jsonl").read_text().splitlines())}
    assert cells["n=400"]["skipped"] and "output" not in cells["n=400"]
    assert cells["n=5"]["prompt_tokens"] == len(tiny_loaded.tokenizer("apple " * 5)["input_ids"])
    assert "prompt_tokens" not in cells["ids"]  # a case given as ids records its own length
    assert cells["n=40"]["echo"] == 40 and cells["n=40"]["truncated"] is False
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["task"] == "echo" and doc["config"]["sizes"] == [5, 40, 400] and doc["data"] == {"words": "apple"}
    assert doc["config"]["max_new_tokens"] == 3 and doc["config"]["chat_template_applied"] is False
    # where the time went: one line per batch, summed in result.json (budget 3: the 5- and 40-apple prompts,
    # too unequal to share a batch; budget 1: the ids case)
    batches = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    assert [b["rows"] for b in batches] == [1, 1, 1] and not any(b["padded"] for b in batches)
    assert all(0 <= b["first_token_s"] <= b["seconds"] and b["new_tokens"] >= 1 for b in batches)
    assert sum(b["new_tokens"] for b in batches) <= 3 + 3 + 1  # a batch may stop at EOS
    totals = doc["generation_time"]
    assert totals["batches"] == 3 and totals["out_of_memory_retries"] == 0
    assert totals["decoding_steps"] == sum(b["new_tokens"] for b in batches)

    import evals.harness as harness

    def no_generation(model, tok, prompts, *a, **k):
        assert not prompts, "a finished cell was generated again"
        return iter(())

    monkeypatch.setattr(harness, "generate_greedy", no_generation)
    again = run_task(tiny_loaded, task, GenerationOptions(chat_template="none"), tmp_path, progress=False)
    assert again.summary == result.summary
    with pytest.raises(LlqaError, match="different configuration"):
        run_task(tiny_loaded, EchoTask(sizes=(5,)), GenerationOptions(chat_template="none"), tmp_path)
    # cells decoded before the decoding became plain greedy (no record of it) are not resumed into
    run_json = tmp_path / "run.json"
    old = json.loads(run_json.read_text())
    assert old["config"]["decoding"].startswith("greedy")
    del old["config"]["decoding"]
    run_json.write_text(json.dumps(old))
    with pytest.raises(LlqaError, match="decoding differ"):
        run_task(tiny_loaded, task, GenerationOptions(chat_template="none"), tmp_path)


def test_overlong_middle_and_bad_options(tiny_loaded, tmp_path):
    opts = GenerationOptions(chat_template="none", overlong="middle")
    result = run_task(tiny_loaded, EchoTask(sizes=(400,)), opts, tmp_path, progress=False)
    assert result.summary == {"evaluated": 2, "skipped": 0}
    [cell] = [c for c in map(json.loads, (tmp_path / "cells.jsonl").read_text().splitlines()) if c["key"] == "n=400"]
    assert cell["truncated"] is True and cell["prompt_tokens"] > 256
    for bad, match in [
        (dict(chat_template="yes"), "--chat-template"),
        (dict(overlong="cut"), "--overlong"),
        (dict(max_new_tokens=0), "--max-new-tokens must be positive"),
        (dict(batch_tokens=-1), "--batch-tokens"),
    ]:
        with pytest.raises(LlqaError, match=match):
            GenerationOptions(**bad)


def test_registry_lists_every_task_with_a_report_spec():
    assert list(TASKS) == ["passkey", "topics", "lines", "ruler", "longqa"]
    doc = {"summary": {"by_n": [{"n": 5, "accuracy": 0.5, "mean_f1": 0.7}, {"n": 10, "accuracy": None}]}}
    assert TASKS["topics"].report.series(doc) == {"accuracy": {5: 0.5, 10: None}, "f1": {5: 0.7}}
    doc = {"summary": {"effective_context_window": 4096, "by_length": [{"length": 1024, "accuracy": 1.0}]}}
    assert TASKS["passkey"].report.headline(doc) == ("effective context window", 4096)
    doc = {
        "summary": {
            "effective_length": 4096,
            "by_task_length": [{"task": "vt", "length": 4096, "score": 90.0}],
            "by_length": [{"length": 4096, "average": 90.0}],
        }
    }
    assert TASKS["ruler"].report.series(doc) == {"vt": {4096: 90.0}, "average": {4096: 90.0}}
    assert TASKS["ruler"].report.headline(doc) == ("effective length", 4096)


def test_changed_inputs_are_refused_like_a_changed_configuration(tiny_loaded, tmp_path):
    @dataclass
    class Words(EchoTask):
        word: str = "apple"

        def build_cases(self, ctx):
            return [Case(f"n={n}", text=f"{self.word} " * n, reference=n, meta={"n": n}) for n in self.sizes]

    opts = GenerationOptions(chat_template="none", max_new_tokens=1)
    first = run_task(tiny_loaded, Words(sizes=(5, 6)), opts, tmp_path, progress=False)
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["inputs_fingerprint"] == doc["config"]["inputs_fingerprint"] == first.fingerprint
    with pytest.raises(LlqaError, match="different configuration"):  # same config(), other text
        run_task(tiny_loaded, Words(sizes=(5, 6), word="pear"), opts, tmp_path, progress=False)
    # a logged cell whose own fingerprint disagrees (e.g. copied in from another run) is refused too
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    forged = {**json.loads(lines[0]), "fingerprint": "0" * 16}
    (tmp_path / "cells.jsonl").write_text("\n".join([json.dumps(forged), *lines[1:]]) + "\n")
    with pytest.raises(LlqaError, match="different configuration"):
        run_task(tiny_loaded, Words(sizes=(5, 6)), opts, tmp_path, progress=False)


def test_a_registered_task_is_tabulated_by_the_report_with_no_report_code(tmp_path, monkeypatch):
    from evals.harness import ReportSpec
    from evals.tasks import TaskEntry, _per
    from report import write_report

    spec = ReportSpec(
        "Echo retrieval",
        "words",
        _per("by_n", "n", {"accuracy": "acc", "f1": "f1"}),
        headline=lambda doc: ("longest", doc["summary"]["longest"]),
    )
    entry = TaskEntry("echo", "Echo", "repeats words", spec, "by_n", ())
    monkeypatch.setitem(TASKS, "echo", entry)
    monkeypatch.setattr("report.inputs.KNOWN_TASKS", ("perplexity", *TASKS))
    monkeypatch.setattr("report.summary.KNOWN_TASKS", ("perplexity", *TASKS))
    for name, acc in [("a", 0.5), ("b", 1.0)]:
        doc = {
            "task": "echo",
            "model": {"spec": f"model-{name}"},
            "config": {"sizes": [5, 40], "ctx": 256},
            "semantics": "echo: correct when the answer is non-empty",
            "summary": {"longest": 5, "by_n": [{"n": 5, "acc": acc, "f1": None}, {"n": 40, "acc": 0.0, "f1": None}]},
        }
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "result.json").write_text(json.dumps(doc))
    rep = write_report([tmp_path / "in"], tmp_path / "rep")
    [table] = [t for t in rep.tables if t.kind == "echo"]
    assert table.title == "Echo retrieval: accuracy per words"
    assert table.columns == ["run", "ctx", "longest", "5", "40"]  # the headline, then one column per x
    assert sorted(r[3] for r in table.rows) == [0.5, 1.0] and {r[2] for r in table.rows} == {5}
    assert "echo_f1" not in [t.kind for t in rep.tables]  # a series with no value gets no table
    assert "other" not in [t.kind for t in rep.tables]  # not under "Other results"
