"""A small real LongQA build from ../shared/data (NarrativeQA whole books and summaries, L-Eval papers and
stories), validated; determinism, split by document, quota shortfalls, the dataset card."""

import json
import re

import pytest
from typer.testing import CliRunner

from cli import app, main
from longqa.build import assign_splits
from longqa.recipe import load_recipe

# the shipped framing strings, as TOML (JSON string escapes are valid TOML)
FRAMING = "[framing]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in load_recipe("longqa-3k").framing.items())

SMALL = (
    """
name = "small-real"
description = "A small LongQA build over the shared local data (tests)."
min_tokens = 4096
max_tokens = 262144   # whole NarrativeQA books (41k-212k tokens) fit
max_per_doc = 12
test_fraction = 0.25

[quotas.paper]
summary = 3
detail = 20
relation = 2

[quotas.novel]
summary = 4
character = 10
relation = 5
detail = 20


[sources.narrativeqa]
splits = ["test"]

[sources.leval]
tasks = ["scientific_qa", "paper_assistant", "sci_fi", "quality"]
"""
    + FRAMING
)


def _run(args):
    """The CLI as the console script runs it: (exit code, output)."""
    result = CliRunner().invoke(app, args, standalone_mode=True, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipe") / "small-real.toml"
    p.write_text(SMALL)
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory, recipe_path, shared_data):
    out = tmp_path_factory.mktemp("build") / "longqa"
    code, output = _run(
        ["build", "--recipe", str(recipe_path), "--source-dir", str(shared_data), "--out", str(out), "--seed", "3"]
    )
    assert code == 0, output
    return out


def _items(out, split):
    lines = (out / f"{split}.jsonl").read_text().splitlines()  # one item per line, even for str.splitlines
    return [json.loads(line) for line in lines]


def test_small_real_build_fills_the_recipe_and_validates(built, tmp_path):
    manifest = json.loads((built / "manifest.json").read_text())
    items = _items(built, "train") + _items(built, "test")
    assert len(items) == 64 == manifest["counts"]["total"]
    assert all(v["built"] == v["quota"] for v in manifest["cells"].values())
    assert {it["source"] for it in items} == {"narrativeqa", "leval"}
    whole_books = [it for it in items if it["source"] == "narrativeqa"]
    assert any(it["category"] == "summary" for it in whole_books)
    assert max(it["n_tokens"] for it in whole_books) > 40_000  # whole books, not excerpts
    novel = next(it for it in items if it["doc_type"] == "novel")
    assert novel["instruction"].startswith(f"Below is some paragraphs in the book, {novel['title']}. ")
    assert novel["instruction"].endswith(f"\n The book ends. \n{novel['question']}")
    assert all(manifest["recipe"]["min_tokens"] <= it["n_tokens"] <= manifest["recipe"]["max_tokens"] for it in items)
    assert set(manifest["files"]) == {"train.jsonl", "test.jsonl", "train.parquet", "test.parquet", "README.md"}
    assert manifest["sources"]["narrativeqa"]["revision"].startswith("sha256:")
    # bad source items (longqa/hygiene.py) are dropped and counted by reason, never framed
    assert manifest["dropped"]["misaligned_document"] == 8 and manifest["dropped"]["not_a_story"] == 41
    assert manifest["dropped"]["repeated_question"] >= 9
    assert not any(it["doc_id"] == "leval-scientific_qa-153504cbc00a95a2" for it in items)
    assert all("<!--" not in it["instruction"] and "Introduction" not in it["title"] for it in items)
    assert {it["title"] for it in items if it["doc_type"] == "paper"} == {"(untitled)"}
    report = tmp_path / "report.json"
    code, output = _run(["validate", str(built), "--report", str(report)])
    assert code == 0, output
    rep = json.loads(report.read_text())
    assert rep["ok"] and rep["errors"] == 0 and "n_tokens recount" in rep["checked"]


def test_split_is_by_document(built):
    train, test = _items(built, "train"), _items(built, "test")
    assert train and test
    assert not {it["doc_id"] for it in train} & {it["doc_id"] for it in test}
    assert all(it["split"] == "train" for it in train) and all(it["split"] == "test" for it in test)


def test_same_inputs_and_seed_give_identical_bytes(built, recipe_path, shared_data, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # the same files under another path give the same bytes
    elsewhere.mkdir()
    for name in ("narrativeqa", "leval"):
        (elsewhere / name).symlink_to(shared_data / name, target_is_directory=True)
    again = tmp_path / "again"
    code, output = _run(
        ["build", "--recipe", str(recipe_path), "--source-dir", str(elsewhere), "--out", str(again), "--seed", "3"]
    )
    assert code == 0, output
    for name in ("train.jsonl", "test.jsonl", "train.parquet", "test.parquet", "README.md", "manifest.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    other = tmp_path / "other-seed"
    code, _ = _run(
        ["build", "--recipe", str(recipe_path), "--source-dir", str(shared_data), "--out", str(other), "--seed", "4"]
    )
    assert code == 0
    assert (other / "train.jsonl").read_bytes() != (built / "train.jsonl").read_bytes()


def test_load_dataset_reads_the_build(built, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = datasets.load_dataset(str(built), cache_dir=str(tmp_path))  # a fresh cache: no earlier build's rows
    assert set(ds) == {"train", "test"}
    assert ds["train"].num_rows == len(_items(built, "train"))
    assert set(ds["train"].column_names) >= {"instruction", "output", "category", "n_tokens"}
    card = (built / "README.md").read_text()
    assert card.startswith("---\n") and "path: train.jsonl" in card


def test_shortfall_fails_per_cell_unless_allow_short(recipe_path, shared_data, tmp_path, capsys):
    greedy = tmp_path / "greedy.toml"
    greedy.write_text(recipe_path.read_text().replace("character = 10", "character = 5000"))
    out = tmp_path / "short"
    with pytest.raises(SystemExit) as e:
        main(["build", "--recipe", str(greedy), "--source-dir", str(shared_data), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "novel/character" in err and "/5000" in err and "--allow-short" in err
    assert not out.exists()  # nothing half-written, nothing padded
    assert not list(tmp_path.glob(".short.tmp-*"))
    code, output = _run(
        ["build", "--recipe", str(greedy), "--source-dir", str(shared_data), "--out", str(out), "--allow-short"]
    )
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    cell = manifest["cells"]["novel/character"]
    assert 0 < cell["built"] <= cell["candidates"] < 5000
    assert manifest["allow_short"] and manifest["shortfalls"]
    code, output = _run(["validate", str(out)])
    assert code == 0, output  # a short build made with --allow-short is not an error


def test_offline_without_copies_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("longqa.sources.hub_reachable", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["build", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "allenai/qasper" in err and "deepmind/narrativeqa" in err and "--source-dir" in err
    assert "Traceback" not in err


def test_out_that_is_not_a_build_is_refused(tmp_path, recipe_path, shared_data, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["build", "--recipe", str(recipe_path), "--source-dir", str(shared_data), "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "not an llqa build" in capsys.readouterr().err


def test_assign_splits_hits_the_item_share_by_whole_clusters():
    sizes = {f"c{i}": 1 + i % 7 for i in range(300)}
    a = assign_splits(sizes, 0.2, seed=1)
    assert a == assign_splits(dict(reversed(list(sizes.items()))), 0.2, seed=1)  # order-free, seeded
    assert a != assign_splits(sizes, 0.2, seed=2)
    test_items = sum(n for c, n in sizes.items() if a[c] == "test")
    assert abs(test_items - 0.2 * sum(sizes.values())) <= 7  # within one cluster of the target
    assert set(assign_splits({"x": 1, "y": 1}, 0.0, 0).values()) == {"train"}
    assert sorted(assign_splits({"x": 5, "y": 5}, 0.01, 0).values()) == ["test", "train"]
    assert assign_splits({"x": 5}, 0.5, 0) == {"x": "train"}


def test_help_lists_the_shipped_recipe_and_shipped_recipe_loads():
    code, output = _run(["build", "--help"])
    assert code == 0 and "longqa-3k" in output
    r = load_recipe("longqa-3k")
    assert r.total == 3000 and set(r.sources) == {"narrativeqa", "qasper", "arxiv", "leval", "longalpaca"}
    code, output = _run(["validate", "--help"])
    assert code == 0 and "--ctx" in output


def test_near_duplicate_documents_never_straddle_the_split(tmp_path, shared_data):
    """The same book excerpts reach the build twice, under different ids and sources (NarrativeQA and
    L-Eval, one copy reformatted): each pair lands in one split, and validate finds no leak."""
    from longqa.build import build

    text = (shared_data / "narrativeqa" / "stories" / "pg215.txt").read_text(encoding="utf-8")
    parts = [text[i * 12_000 : (i + 1) * 12_000] for i in range(8)]
    nqa = []
    for i, part in enumerate(parts):
        doc = {
            "id": f"d{i}",
            "kind": "gutenberg",
            "start": "",
            "end": "",
            "text": part,
            "summary": {"text": f"Part {i} of the story of Buck.", "title": f"Buck {i}"},
        }
        nqa.append(
            {
                "document": doc,
                "question": {"text": f"What happens to Buck in part {i}?"},
                "answers": [{"text": f"Event {i}."}],
            }
        )
    leval = [
        {"input": " ".join(p.split()), "instructions": [f"Where is Buck in section {i}?"], "outputs": [f"Place {i}."]}
        for i, p in enumerate(parts)
    ]
    (tmp_path / "src" / "narrativeqa").mkdir(parents=True)
    (tmp_path / "src" / "leval").mkdir(parents=True)
    (tmp_path / "src" / "narrativeqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in nqa))
    (tmp_path / "src" / "leval" / "sci_fi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in leval))
    recipe = tmp_path / "dup.toml"
    recipe.write_text(
        'name = "dup"\nmin_tokens = 100\nmax_tokens = 20000\nmax_per_doc = 4\ntest_fraction = 0.5\n'
        '[quotas.novel]\ndetail = 16\nsummary = 8\n[sources.narrativeqa]\nsplits = ["test"]\n'
        '[sources.leval]\ntasks = ["sci_fi"]\n' + FRAMING
    )
    result = build(load_recipe(recipe), tmp_path / "out", source_dir=tmp_path / "src", seed=1)
    items = _items(tmp_path / "out", "train") + _items(tmp_path / "out", "test")
    assert len(items) == 24 and result.counts["document_clusters"] == 8  # 16 documents, 8 texts
    split_of_part = {}
    for it in items:
        part = int(re.search(r"\d+", it["output"]).group())  # "Event 3.", "Place 3.", "Part 3 of ..."
        split_of_part.setdefault(part, set()).add(it["split"])
    assert all(len(s) == 1 for s in split_of_part.values()) and len(split_of_part) == 8
    assert {s for v in split_of_part.values() for s in v} == {"train", "test"}
    code, output = _run(["validate", str(tmp_path / "out"), "--no-recount"])
    assert code == 0, output


def test_shipped_recipe_runs_every_source_from_local_copies(tmp_path, shared_data):
    """longqa-3k over local copies of all five sources (fixtures in each hub schema, real text from the
    shared data; L-Eval as it is): every source contributes, the set validates (short, by --allow-short)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longqa.build import build

    def text(path, start, n=40_000):
        return (shared_data / path).read_text(encoding="utf-8")[start : start + n]

    src = tmp_path / "src"
    for name in ("narrativeqa", "qasper", "arxiv", "longalpaca"):
        (src / name).mkdir(parents=True)
    (src / "leval").symlink_to(shared_data / "leval", target_is_directory=True)
    story = text("gutenberg_novels/pg11.txt", 2_000)
    doc = {
        "id": "alice",
        "kind": "gutenberg",
        "start": "",
        "end": "",
        "text": story,
        "summary": {"text": "Alice follows a rabbit down a hole.", "title": "Alice's Adventures in Wonderland"},
    }
    rows = [
        {"document": doc, "question": {"text": q}, "answers": [{"text": a}]}
        for q, a in [("Who is the Mad Hatter?", "A man at a tea party."), ("Why does Alice cry?", "She is lost.")]
    ]
    (src / "narrativeqa" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paras = [p for p in text("gutenberg_novels/pg1342.txt", 5_000, 60_000).split("\n\n") if p.strip()]
    paper = {
        "id": "p1",
        "title": "A Study",
        "abstract": "We study a text.",
        "full_text": {"section_name": ["Body"], "paragraphs": [paras]},
        "qas": {
            "question": ["How do they compare the two sisters?"],
            "question_id": ["q"],
            "answers": [
                {
                    "answer": [
                        {
                            "unanswerable": False,
                            "extractive_spans": [],
                            "yes_no": None,
                            "free_form_answer": "By their letters.",
                        }
                    ]
                }
            ],
        },
    }
    pq.write_table(pa.Table.from_pylist([paper]), src / "qasper" / "test.parquet")
    (src / "arxiv" / "train.jsonl").write_text(
        json.dumps({"article": text("gutenberg_novels/pg16.txt", 3_000), "abstract": "A boy who never grows up."})
        + "\n"
    )
    framing = load_recipe("longqa-3k").framing
    book = framing["novel"].format(
        title="Persuasion", document=text("gutenberg_novels/pg105.txt", 3_000), question="Who is Captain Wentworth?"
    )
    (src / "longalpaca" / "LongAlpaca-12k.json").write_text(
        json.dumps(
            [
                {"instruction": book, "output": "A naval officer Anne once refused.", "file": "book"},
                {"instruction": "Name three colours.", "output": "Red, green, blue.", "file": "alpaca"},
            ]
        )
    )
    result = build(load_recipe("longqa-3k"), tmp_path / "out", source_dir=src, allow_short=True)
    assert set(result.counts["by_source"]) == {"narrativeqa", "qasper", "arxiv", "leval", "longalpaca"}
    assert result.shortfalls and result.manifest["allow_short"]
    code, output = _run(["validate", str(tmp_path / "out")])
    assert code == 0, output


def test_a_document_bridging_two_partly_filled_clusters_never_overfills_one():
    """Clusters form as documents are reached. C near-duplicates both A and B, which are not near-duplicates of
    each other: once A and B hold more than max_per_doc items between them, C is left out (no cluster grows past
    max_per_doc); while they hold no more than that, C joins them into one cluster."""
    import dataclasses
    import random
    from collections import Counter

    from longqa import dedup
    from longqa.build import Selector
    from longqa.schema import Document

    rng = random.Random(0)
    words = [f"w{rng.randrange(10**9)}" for _ in range(3000)]
    docs = {
        name: Document(name, name, " ".join(words[a:b]), "novel", "test")
        for name, a, b in [("a", 0, 2000), ("b", 1000, 3000), ("c", 500, 2500)]
    }
    fp = {k: dedup.fingerprint(d.text) for k, d in docs.items()}
    pairs = {(a, b) for a, b, _ in dedup.near_duplicate_pairs(fp)}
    assert pairs == {("a", "c"), ("b", "c")}  # the shape the test needs: c bridges a and b
    recipe = dataclasses.replace(load_recipe("longqa-3k"), max_per_doc=3)

    def selector(taken_a: int, taken_b: int) -> Selector:
        sel = Selector(recipe, counter=None, progress=lambda name, total: lambda n: None, stats=Counter())
        sel.taken[sel.cluster(docs["a"])] += taken_a
        sel.taken[sel.cluster(docs["b"])] += taken_b
        return sel

    full = selector(2, 2)  # 4 items > max_per_doc 3: merging would overfill
    assert full.cluster(docs["c"]) is None and full.cluster(docs["c"]) is None
    assert full.stats["documents_bridging_full_clusters"] == 1
    assert full.cluster(docs["a"]) != full.cluster(docs["b"]) and max(full.taken.values()) == 2
    room = selector(1, 2)  # 3 items: one cluster of exactly max_per_doc
    root = room.cluster(docs["c"])
    assert root == room.cluster(docs["a"]) == room.cluster(docs["b"]) and room.taken[root] == 3


def test_build_dir_gets_the_umask_mode_and_loads_without_a_test_split(recipe_path, shared_data, tmp_path):
    """The build directory and its files get the mode the user's umask gives (not mkdtemp's 0700), and
    with test_fraction = 0 `datasets.load_dataset(dir)` still loads (the card lists only non-empty splits)."""
    import os
    import stat

    import datasets

    no_test = tmp_path / "no-test.toml"
    no_test.write_text(recipe_path.read_text().replace("test_fraction = 0.25", "test_fraction = 0"))
    out = tmp_path / "built"
    old = os.umask(0o027)
    try:
        code, output = _run(["build", "--recipe", str(no_test), "--source-dir", str(shared_data), "--out", str(out)])
    finally:
        os.umask(old)
    assert code == 0, output
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    assert (out / "test.jsonl").read_bytes() == b""
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train"} and ds["train"].num_rows == 64
    code, output = _run(["validate", str(out), "--no-recount"])
    assert code == 0, output
