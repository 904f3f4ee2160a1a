"""`llqa report` on result files made here by the real producers: a tiny LoRA run trained with `llqa train`,
perplexity from `llqa eval perplexity`, passkey from the passkey eval, all on a tiny random model (seconds).
Checks: the tables hold the result files' numbers, missing cells show as missing, runs line up across
tables, the PNGs are real, unknown and garbage files are listed (not fatal), user errors are one line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

import cli
from llqa.errors import LlqaError
from report import write_report
from report.inputs import MISSING
from report.runs import model_identity, moved_training_run, parse_names
from report.summary import training_cost
from report.tables import fmt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = (
    "the river ran past old stone houses while a quiet wind moved over fields of barley and the children "
    "counted boats that came down from the hills carrying wool salt iron letters and news of towns"
).split()


def _exit_code(*args) -> int:
    try:
        cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0
    return 0


def _llqa(capsys, *args) -> tuple[int, str]:
    code = _exit_code(*args)
    out = capsys.readouterr()
    return code, out.out + out.err


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def produced(tmp_path_factory, tiny_llama_dir):
    """Result files from the real producers. Layout under `root`:
    runs/lora (llqa train, 2 steps, PI ×2 to ctx 512), evals/{base-ppl, base-pi-ppl, lora-ppl, lora-passkey,
    lora-lines, base-pi-lines}."""
    root = tmp_path_factory.mktemp("report-inputs")
    rng = random.Random(0)
    doc = root / "held-out" / "novel.txt"
    doc.parent.mkdir()
    doc.write_text(" ".join(rng.choice(WORDS) for _ in range(2500)).capitalize() + ".\n")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # relative --model paths, as a user types them: the report resolves them from here

    def llqa(*args):
        assert _exit_code(*args) == 0, args

    tiny = str(tiny_llama_dir)
    llqa(
        "train",
        "--model",
        tiny,
        "--ctx",
        "512",
        "--method",
        "lora",
        "--data",
        doc,
        "--out",
        "runs/lora",
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    )
    ppl = [
        "eval",
        "perplexity",
        "--data",
        doc,
        "--stride",
        "48",
        "--max-tokens",
        "640",
        "--device",
        "cpu",
        "--no-progress",
    ]
    llqa(*ppl, "--model", tiny, "--lengths", "64,128", "--out", "evals/base-ppl")
    llqa(*ppl, "--model", tiny, "--lengths", "64,128,512", "--out", "evals/base-pi-ppl")
    llqa(*ppl, "--model", "runs/lora", "--lengths", "64,128,512", "--out", "evals/lora-ppl")
    gen = ["--chat-template", "none", "--device", "cpu", "--no-progress"]
    llqa(
        "eval",
        "passkey",
        "--model",
        "runs/lora",
        "--lengths",
        "160,320",
        "--depths",
        "0,1",
        "--trials",
        "1",
        "--out",
        "evals/lora-passkey",
        *gen,
    )
    lines = ["eval", "lines", "--generate", "--sizes", "2,4", "--cases", "2", "--max-new-tokens", "4", *gen]
    llqa(*lines, "--model", "runs/lora", "--out", "evals/lora-lines")
    llqa(*lines, "--model", tiny, "--ctx", "512", "--out", "evals/base-pi-lines")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def report(produced, tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("report")
    return write_report([produced / "runs", produced / "evals"], out, names=[f"{tiny_llama_dir}=base"])


def _table(rep, kind: str, n: int = 0) -> dict:
    return [t for t in rep.tables if t.kind == kind][n].to_dict()


def _row(table: dict, label: str) -> dict:
    rows = [r for r in table["rows"] if r[0] == label]
    assert len(rows) == 1, (label, table["rows"])
    return dict(zip(table["columns"], rows[0], strict=True))


def _md_row(md: str, label: str, after: str) -> list[str]:
    """Cells of the markdown row starting with `label` in the first table after heading text `after`."""
    section = md[md.index(after) :]
    line = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_runs_group_evals_by_model_and_rope(report, produced):
    labels = [r.label for r in report.runs]
    assert sorted(labels) == ["base", "base (PI ×2)", "lora"] and labels[-1] == "lora"  # references first
    lora = next(r for r in report.runs if r.label == "lora")
    assert lora.training is not None and lora.rope_factor == 2.0
    assert sorted(r.path.name for r in lora.results) == ["lora-lines", "lora-passkey", "lora-ppl"]
    assert lora.identity == str((produced / "runs" / "lora").resolve())


def test_perplexity_table_holds_each_results_ppl(report, produced):
    table = _table(report, "perplexity")
    assert table["columns"] == ["run", "ctx", "64", "128", "512"]
    md = report.markdown.read_text()
    for label, name in [("base", "base-ppl"), ("base (PI ×2)", "base-pi-ppl"), ("lora", "lora-ppl")]:
        summary = _json(produced / "evals" / name / "result.json")["summary"]
        row = _row(table, label)
        cells = _md_row(md, label, table["title"])
        for col, n in [("64", 64), ("128", 128), ("512", 512)]:
            want = summary[str(n)]["ppl"] if str(n) in summary else None
            assert row[col] == want
            assert cells[table["columns"].index(col)] == fmt(want)
    assert _row(table, "base")["512"] is None  # never evaluated at 512: a missing cell
    assert _md_row(md, "base", table["title"])[-1] == MISSING
    assert _row(table, "base")["ctx"] == 256 and _row(table, "base (PI ×2)")["ctx"] == 512


def test_passkey_tables_hold_the_summary(report, produced):
    summary = _json(produced / "evals" / "lora-passkey" / "result.json")["summary"]
    window = _row(_table(report, "passkey"), "lora")
    assert window["effective window"] == summary["effective_context_window"]
    assert window["accuracy"] == summary["accuracy"]
    assert window["within 1 edit"] == summary["accuracy_one_edit"] >= summary["accuracy"]
    assert window["trials/cell"] == 1 and window["depths"] == 2
    per_len = _row(_table(report, "passkey_by_length"), "lora")
    assert per_len == {"run": "lora", **{str(r["length"]): r["accuracy"] for r in summary["by_length"]}}
    assert "base" not in [r[0] for r in _table(report, "passkey")["rows"]]  # no passkey result: no row


def test_line_retrieval_table_holds_accuracy_per_n(report, produced):
    table = _table(report, "lines")
    for label, name in [("lora", "lora-lines"), ("base (PI ×2)", "base-pi-lines")]:
        by_n = {r["n"]: r for r in _json(produced / "evals" / name / "result.json")["summary"]["by_n"]}
        row = _row(table, label)
        assert sorted(by_n) == [2, 4] and row["ctx"] == 512
        assert row["run"] == label and row[table["columns"][2]] == by_n[2]["accuracy"]
        assert row[table["columns"][3]] == by_n[4]["accuracy"]
        assert table["columns"][2] == f"2 ({by_n[2]['mean_prompt_tokens']:,.0f} tok)"
    assert "base" not in [r[0] for r in table["rows"]]


def test_training_cost_from_the_step_log(report, produced):
    log = [json.loads(line) for line in (produced / "runs" / "lora" / "log.jsonl").read_text().splitlines()]
    row = _row(_table(report, "training"), "lora")
    assert row["steps"] == "2/2" and row["method"] == "lora" and row["ctx"] == 512
    assert row["tokens"] == sum(r["tokens"] for r in log) == 2 * 512
    assert row["train time"] == pytest.approx(sum(r["step_s"] for r in log))
    assert row["tokens/s"] == pytest.approx(row["tokens"] / row["train time"])
    assert row["final loss"] == pytest.approx(sum(r["loss"] for r in log) / 2)
    assert row["peak memory (GiB)"] is None  # CPU: no GPU memory measured
    md = report.markdown.read_text()
    assert _md_row(md, "lora", "## Training cost")[10] == MISSING


def test_training_cost_keeps_the_last_record_of_a_resumed_step(tmp_path):
    from report.inputs import read_training

    (tmp_path / "train_config.json").write_text(json.dumps({"config": {"max_steps": 2}}))
    recs = [
        {"step": 1, "loss": 9.0, "tokens": 10, "step_s": 5.0, "time": 100.0},
        {"step": 1, "loss": 3.0, "tokens": 10, "step_s": 1.0, "time": 200.0},  # re-logged after a resume
        {"step": 2, "loss": 1.0, "tokens": 10, "step_s": 1.0, "time": 201.0, "peak_mem_gib": 7.5},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 3, "lo')
    cost = training_cost(read_training(tmp_path))
    assert cost["steps"] == 2 and cost["tokens"] == 20 and cost["train_s"] == 2.0 and cost["tokens_per_s"] == 10.0
    assert cost["final_loss"] == 2.0 and cost["peak_mem_gib"] == 7.5 and cost["wall_s"] == 2.0


def test_pngs_are_written(report):
    names = sorted(p.name for p in report.plots)
    assert names == ["lines_accuracy_1.png", "loss.png", "passkey_heatmaps_1.png", "perplexity_1.png"]
    md = report.markdown.read_text()
    for p in report.plots:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
        assert f"]({p.name})" in md
    assert not [p for p in report.out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp file


def test_unknown_tasks_and_garbage_are_listed_not_fatal(produced, tmp_path, capsys):
    extra = tmp_path / "extra"
    (extra / "mystery").mkdir(parents=True)
    (extra / "mystery" / "result.json").write_text(
        json.dumps({"task": "mystery", "model": {"spec": "random:tiny"}, "summary": {"score": 1}})
    )
    (extra / "garbage").mkdir()
    (extra / "garbage" / "result.json").write_bytes(b"\x00\x01not json{")
    (extra / "notes.json").write_text("[1, 2]")
    code, out = _llqa(capsys, "report", produced / "evals", extra, extra / "notes.json", "--out", tmp_path / "rep")
    assert code == 0, out
    assert "not included" in out and "garbage" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| random:tiny | mystery |" in md  # unknown task: listed with its run
    assert "## Not included" in md and "notes.json`: not an llqa result" in md
    assert "garbage/result.json`: not" in md


@pytest.mark.parametrize(
    "doc",
    [
        {"task": "perplexity", "summary": {"64": {"ppl": "high"}}},
        {"task": "perplexity", "summary": {"sixty-four": {"ppl": 3.0}}},
        {"task": "passkey", "summary": {"by_length": [{"accuracy": 1.0}]}},
        {"task": "passkey", "summary": {"by_length_depth": [{"length": 8, "depth": "deep"}]}},
        {"task": "lines", "summary": {"by_n": [{"accuracy": 0.5}]}},
        {"task": "topics", "summary": {"by_n": [3]}},
    ],
    ids=["ppl-text", "ppl-key", "passkey-length", "passkey-depth", "lines-n", "topics-row"],
)
def test_malformed_results_of_known_tasks_are_listed_not_fatal(produced, tmp_path, doc):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text(json.dumps({**doc, "model": {"spec": "random:tiny"}}))
    rep = write_report([produced / "evals" / "lora-ppl", bad], tmp_path / "rep")
    assert [s.path for s in rep.skipped] == [bad / "result.json"]
    assert f"malformed {doc['task']} result" in rep.skipped[0].reason
    assert [r.label for r in rep.runs] == ["lora"]


def test_minimal_results_show_missing_cells(tmp_path):
    for task in ("perplexity", "passkey", "lines"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "result.json").write_text(json.dumps({"task": task, "model": {"spec": "random:tiny"}}))
    rep = write_report([tmp_path], tmp_path / "rep")
    assert [r.label for r in rep.runs] == ["random:tiny"] and not rep.skipped
    window = _row(_table(rep, "passkey"), "random:tiny")
    assert window["effective window"] is None and window["accuracy"] is None
    md = rep.markdown.read_text()
    assert "| random:tiny | — | — | — | — | — | — | — |" in md  # passkey window table: every cell missing
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in rep.plots)


def test_passkey_near_misses_of_an_older_result_come_from_its_cells(tmp_path):
    """A result.json written before llqa recorded near misses: the report recomputes them from cells.jsonl."""
    cells = [
        {
            "key": f"k{i}",
            "length": 64,
            "depth": 0.0,
            "trial": i,
            "key_value": 12345,
            "predicted": p,
            "correct": p == 12345,
            "skipped": False,
        }
        for i, p in enumerate([12345, 1245, 99, 12346])
    ]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    summary = {"accuracy": 0.25, "effective_context_window": 64, "by_length": [{"length": 64, "accuracy": 0.25}]}
    (tmp_path / "old" / "result.json").write_text(
        json.dumps({"task": "passkey", "model": {"spec": "random:tiny"}, "summary": summary, "config": {"trials": 4}})
    )
    window = _row(_table(write_report([tmp_path / "old"], tmp_path / "rep"), "passkey"), "random:tiny")
    assert window["accuracy"] == 0.25 and window["within 1 edit"] == 0.75


def test_perplexity_lengths_no_document_filled_are_marked_not_plotted(produced, tmp_path):
    """A length marked reached: false shows as 'not reached', never as a number, and stays off the plot; a
    result written before llqa marked it is recounted from its cells.jsonl (no cell with >= L tokens)."""
    doc = _json(produced / "evals" / "base-pi-ppl" / "result.json")
    new, old = tmp_path / "in" / "new", tmp_path / "in" / "old"
    for folder, spec in ((new, "random:tiny"), (old, "random:smollm2-135m")):
        folder.mkdir(parents=True)
        summary = {k: dict(v) for k, v in doc["summary"].items()}
        summary["512"] = {**summary["512"], "ppl": 123.0}  # as an older llqa wrote it
        if folder == new:
            summary["512"] = {**summary["512"], "ppl": None, "reached": False}
        else:
            for v in summary.values():
                v.pop("reached", None)
        cells = [{"key": f"d|{n}", "doc": "d", "length": n, "doc_tokens": 300} for n in (64, 128, 512)]
        (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
        (folder / "result.json").write_text(
            json.dumps({**doc, "model": {**doc["model"], "spec": spec}, "summary": summary})
        )
    rep = write_report([new, old], tmp_path / "rep")
    table = _table(rep, "perplexity")
    for label in ("random:tiny (PI ×2)", "random:smollm2-135m (PI ×2)"):
        row = _row(table, label)
        assert row["512"] == "not reached" and row["64"] == doc["summary"]["64"]["ppl"]
    assert "not reached: no document had a full window" in table["note"]
    assert "| not reached |" in rep.markdown.read_text()


def test_several_passkey_runs_and_a_long_loss_curve_plot(produced, tmp_path):
    import shutil

    for spec in ("random:tiny", "random:smollm2-135m"):  # the real passkey result, attributed to two models
        doc = _json(produced / "evals" / "lora-passkey" / "result.json")
        doc["model"] = {**doc["model"], "spec": spec}
        (tmp_path / "in" / spec).mkdir(parents=True)
        (tmp_path / "in" / spec / "result.json").write_text(json.dumps(doc))
    run = tmp_path / "in" / "long-run"
    shutil.copytree(produced / "runs" / "lora", run, ignore=shutil.ignore_patterns("checkpoints", "data", "base"))
    step = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    (run / "log.jsonl").write_text(
        "".join(json.dumps({**step, "step": i, "loss": 10 / i}) + "\n" for i in range(1, 61))
    )
    rep = write_report([tmp_path / "in"], tmp_path / "rep")
    pi = ["random:smollm2-135m (PI ×2)", "random:tiny (PI ×2)"]  # folders in name order; RoPE ×2, untrained
    assert [r.label for r in rep.runs] == [*pi, "long-run"]
    assert [r[0] for r in _table(rep, "passkey")["rows"]] == pi
    assert _row(_table(rep, "training"), "long-run")["steps"] == "60/2"
    sizes = {p.name: len(p.read_bytes()) for p in rep.plots}
    assert set(sizes) == {"passkey_heatmaps_1.png", "loss.png"} and min(sizes.values()) > 5_000


def test_second_report_replaces_the_first(report, produced):
    again = write_report([produced / "evals" / "lora-ppl"], report.out)
    assert [t.kind for t in again.tables] == ["runs", "perplexity"]
    assert "Passkey" not in again.markdown.read_text()
    assert sorted(p.name for p in report.out.glob("*.png")) == ["perplexity_1.png"]  # the old report's plots go


@pytest.mark.parametrize("case", ["only-garbage", "missing-path", "bad-name", "unmatched-name", "out-is-file"])
def test_user_errors_are_one_line_and_exit_2(produced, tmp_path, capsys, case):
    garbage = tmp_path / "g.json"
    garbage.write_text("not json")
    (tmp_path / "file").write_text("x")
    args = {
        "only-garbage": [garbage],
        "missing-path": [tmp_path / "nope"],
        "bad-name": [produced / "evals", "--name", "nolabel"],
        "unmatched-name": [produced / "evals", "--name", "random:tiny=x"],
        "out-is-file": [produced / "evals", "--out", tmp_path / "file"],
    }[case]
    if "--out" not in args:
        args += ["--out", tmp_path / "rep"]
    code, out = _llqa(capsys, "report", *args)
    assert code == 2, out
    assert out.startswith("error:") and len(out.strip().splitlines()) == 1 and "Traceback" not in out
    expected = {
        "only-garbage": "no llqa results found",
        "missing-path": "no such file",
        "bad-name": "PATH=LABEL",
        "unmatched-name": "no run scored or trained",
        "out-is-file": "is a file",
    }[case]
    assert expected in out


def test_name_by_result_dir_labels_just_that_run(produced, tmp_path, tiny_llama_dir):
    rep = write_report([produced / "evals"], tmp_path, names=[f"{produced / 'evals' / 'base-pi-ppl'}=PI only"])
    assert sorted(r.label for r in rep.runs) == sorted(["PI only", "lora", tiny_llama_dir.name])
    pi = next(r for r in rep.runs if r.label == "PI only")
    assert sorted(x.path.name for x in pi.results) == ["base-pi-lines", "base-pi-ppl"]


def test_relative_model_paths_resolve_from_the_results_when_run_elsewhere(produced, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the evals ran in `produced` with --model runs/lora
    rep = write_report([produced], tmp_path / "rep")
    lora = next(r for r in rep.runs if r.training is not None)
    assert lora.label == "lora" and len(lora.results) == 3


def test_results_scored_on_another_machine_join_their_training_run(produced, tmp_path):
    """Evals ran on a GPU host with --model /gpu-host/exp/runs/lora; the run directory and the result files were
    copied back: the results still line up with the training run (same row), and nothing else is claimed."""
    copy = tmp_path / "copied"
    shutil.copytree(produced / "runs", copy / "runs")
    shutil.copytree(produced / "evals", copy / "evals")
    for result in (copy / "evals").glob("lora-*/result.json"):
        doc = json.loads(result.read_text())
        doc["model"]["spec"] = "/gpu-host/exp/runs/lora"
        result.write_text(json.dumps(doc))
    rep = write_report([copy], tmp_path / "rep")
    lora = next(r for r in rep.runs if r.training is not None)
    assert lora.label == "lora" and sorted(x.path.name for x in lora.results) == [
        "lora-lines",
        "lora-passkey",
        "lora-ppl",
    ]
    assert moved_training_run("/gpu-host/exp/runs/lora", [copy / "runs" / "lora"]) == copy / "runs" / "lora"
    assert moved_training_run("/gpu-host/exp/runs/other", [copy / "runs" / "lora"]) is None
    assert moved_training_run("/h/a/lora", [tmp_path / "x" / "lora", tmp_path / "y" / "lora"]) is None  # ambiguous
    assert moved_training_run(str(copy / "runs" / "lora"), [tmp_path / "z" / "lora"]) is None  # exists here
    assert moved_training_run("smollm2-135m", [tmp_path / "smollm2-135m"]) is None  # an alias, not a path


def test_merged_model_belongs_to_its_training_run(tmp_path):
    run, merged = tmp_path / "run", tmp_path / "merged"
    run.mkdir()
    merged.mkdir()
    (merged / "llqa_model.json").write_text(json.dumps({"merged_from": str(run.resolve()), "ctx": 512}))
    assert model_identity(str(merged)) == model_identity(str(run)) == str(run.resolve())
    assert model_identity("smollm2-135m") == "smollm2-135m"


def test_parse_names():
    assert parse_names(["runs/a=LongLoRA", "x=y=z"]) == [("runs/a", "LongLoRA"), ("x=y", "z")]
    with pytest.raises(LlqaError):
        parse_names(["runs/a="])


def test_walk_skips_only_a_training_runs_own_folders(tmp_path):
    from report.inputs import collect

    result = json.dumps({"task": "mystery", "summary": {}})
    for d in ("evals/base", "evals/data", "run/checkpoints/step-1", "run/base"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "result.json").write_text(result)
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"config": {}}))
    found = collect([tmp_path])
    assert sorted(r.path.relative_to(tmp_path).as_posix() for r in found.results) == ["evals/base", "evals/data"]
    assert [t.path for t in found.trainings] == [tmp_path / "run"]


def test_cell_format():
    assert [fmt(None), fmt(float("nan")), fmt(26.0412), fmt(1667.3), fmt(7)] == [
        MISSING,
        MISSING,
        "26.04",
        "1,667",
        "7",
    ]
    assert [fmt(0.8, "pct"), fmt(32768, "int"), fmt(42.5, "time")] == ["80%", "32,768", "42.5 s"]
    assert fmt(3725.0, "time") == "1:02:05"
    assert fmt("n/a", "int") == "n/a"  # a hand-edited value of the wrong type is shown, not a crash


def _ppl_doc(spec: str, data: str, docs: list[str], ppl: float) -> dict:
    return {
        "task": "perplexity",
        "model": {"spec": spec},
        "config": {"data": data, "scoring": "sliding", "stride": 256, "max_tokens": 64, "documents": len(docs)},
        "data": {"source": data, "documents": docs},
        "summary": {"64": {"ppl": ppl}},
    }


def _lines_doc(spec: str, folder: str, acc: float) -> dict:
    return {
        "task": "lines",
        "model": {"spec": spec},
        "config": {"testcases": folder, "files": {"200": f"{folder}/200_lines.jsonl"}, "limit": 5},
        "summary": {"by_n": [{"n": 200, "accuracy": acc, "mean_prompt_tokens": 4000}]},
    }


def test_results_on_the_same_data_in_other_folders_share_a_table(tmp_path):
    """Scored on two machines (same folder and file names, other absolute paths): one table; other documents or
    another test-case folder: a table of their own."""
    docs = {
        "a": _ppl_doc("random:a", "/gpu/exp/heldout", ["x.txt", "y.txt"], 10.0),
        "b": _ppl_doc("random:b", "/tmp/exp400/heldout", ["x.txt", "y.txt"], 11.0),
        "c": _ppl_doc("random:c", "/tmp/exp400/heldout", ["x.txt", "z.txt"], 12.0),
        "la": _lines_doc("random:a", "/gpu/exp/testcases/lines", 0.5),
        "lb": _lines_doc("random:b", "/tmp/exp400/testcases/lines", 0.25),
        "lc": _lines_doc("random:c", "/tmp/exp400/other", 0.0),
    }
    for name, doc in docs.items():
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "result.json").write_text(json.dumps(doc))
    rep = write_report([tmp_path / "in"], tmp_path / "rep")
    ppl = [sorted(r[0] for r in t.rows) for t in rep.tables if t.kind == "perplexity"]
    assert sorted(ppl) == [["random:a", "random:b"], ["random:c"]]
    lines = [sorted(r[0] for r in t.rows) for t in rep.tables if t.kind == "lines"]
    assert sorted(lines) == [["random:a", "random:b"], ["random:c"]]


def test_cells_past_the_runs_context_are_marked(tmp_path):
    """The base model run past its own context (no PI): its perplexity and passkey cells beyond ctx carry †,
    in the markdown and in report.json; cells within ctx, and missing cells, do not."""
    from report.inputs import BEYOND

    model = {"spec": "random:tiny", "target_ctx": 128, "native_ctx": 128, "rope_factor": 1.0}
    ppl = _ppl_doc("random:tiny", "/x/heldout", ["a.txt"], 10.0)
    ppl["model"] = model
    ppl["summary"] = {"64": {"ppl": 10.0}, "128": {"ppl": 9.5}, "256": {"ppl": 300.0}}
    passkey = {
        "task": "passkey",
        "model": model,
        "config": {"ctx": 128, "trials": 1},
        "summary": {
            "effective_context_window": 128,
            "accuracy": 0.5,
            "by_length": [{"length": 128, "accuracy": 1.0}, {"length": 256, "accuracy": 0.0}],
        },
    }
    for name, doc in {"ppl": ppl, "passkey": passkey}.items():
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "result.json").write_text(json.dumps(doc))
    rep = write_report([tmp_path / "in"], tmp_path / "rep")
    md = rep.markdown.read_text()
    assert f"| random:tiny | 128 | 10.00 | 9.50 | 300.00{BEYOND} |" in md
    assert f"| random:tiny | 100% | 0%{BEYOND} |" in md
    tables = {t["kind"]: t for t in json.loads((rep.out / "report.json").read_text())["tables"]}
    assert tables["perplexity"]["beyond_ctx"] == [[0, 4]] and tables["passkey_by_length"]["beyond_ctx"] == [[0, 2]]
    assert tables["perplexity"]["rows"][0][4] == 300.0  # the number itself is untouched


def test_topic_retrieval_also_reports_token_f1(tmp_path, report):
    """Topics results carry mean token F1 per N: a second table beside accuracy. Lines have no F1: no table."""
    doc = {
        "task": "topics",
        "model": {"spec": "random:tiny"},
        "config": {"testcases": "/x/topics", "files": {"1": "/x/topics/1_topics.jsonl"}, "limit": 5},
        "summary": {
            "by_n": [
                {"n": 1, "accuracy": 0.2, "mean_f1": 0.4375, "mean_prompt_tokens": 600},
                {"n": 5, "accuracy": 0.0, "mean_f1": None, "mean_prompt_tokens": 2800},
            ]
        },
    }
    (tmp_path / "in" / "topics").mkdir(parents=True)
    (tmp_path / "in" / "topics" / "result.json").write_text(json.dumps(doc))
    rep = write_report([tmp_path / "in"], tmp_path / "rep")
    assert _row(_table(rep, "topics_f1"), "random:tiny") == {
        "run": "random:tiny",
        "ctx": None,
        "1 (600 tok)": 0.4375,
        "5 (2,800 tok)": None,
    }
    assert "| random:tiny | — | 0.44 | — |" in rep.markdown.read_text()
    assert "lines_f1" not in [t.kind for t in report.tables]
