"""Every hub loader against the file layouts the hub holds today, recreated on disk: the same folder and file
names, the same columns (parquet written by `datasets` with the features of each dataset's own loading script,
so the files carry the hub's Arrow schema). Each layout is read twice through the same code: as a local copy
(what `huggingface-cli download` puts on disk) and as the hub, with `HfApi.dataset_info` answering from the
folder and `hf://` URLs mapped onto it — only the bytes' transport is left untested (no network here)."""

import json
import types
from pathlib import Path

import datasets
import pytest
from datasets import Features, Sequence, Value

from llqa import datafiles
from llqa.errors import LlqaError
from longqa.recipe import load_recipe
from longqa.sources import load_source

LEVAL = Features(
    {
        "instructions": [Value("string")],
        "input": Value("string"),
        "outputs": [Value("string")],
        "source": Value("string"),
        "evaluation": Value("string"),
    }
)
QASPER = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "abstract": Value("string"),
        "full_text": Sequence({"section_name": Value("string"), "paragraphs": [Value("string")]}),
        "qas": Sequence(
            {
                "question": Value("string"),
                "question_id": Value("string"),
                "nlp_background": Value("string"),
                "topic_background": Value("string"),
                "paper_read": Value("string"),
                "search_query": Value("string"),
                "question_writer": Value("string"),
                "answers": Sequence(
                    {
                        "answer": {
                            "unanswerable": Value("bool"),
                            "extractive_spans": Sequence(Value("string")),
                            "yes_no": Value("bool"),
                            "free_form_answer": Value("string"),
                            "evidence": Sequence(Value("string")),
                            "highlighted_evidence": Sequence(Value("string")),
                        },
                        "annotation_id": Value("string"),
                        "worker_id": Value("string"),
                    }
                ),
            }
        ),
        "figures_and_tables": Sequence({"caption": Value("string"), "file": Value("string")}),
    }
)
NARRATIVEQA = Features(
    {
        "document": {
            "id": Value("string"),
            "kind": Value("string"),
            "url": Value("string"),
            "file_size": Value("int32"),
            "word_count": Value("int32"),
            "start": Value("string"),
            "end": Value("string"),
            "summary": {
                "text": Value("string"),
                "tokens": Sequence(Value("string")),
                "url": Value("string"),
                "title": Value("string"),
            },
            "text": Value("string"),
        },
        "question": {"text": Value("string"), "tokens": Sequence(Value("string"))},
        "answers": [{"text": Value("string"), "tokens": Sequence(Value("string"))}],
    }
)
ARXIV = Features({"article": Value("string"), "abstract": Value("string")})
PG19 = Features(
    {
        "short_book_title": Value("string"),
        "publication_date": Value("int32"),
        "url": Value("string"),
        "text": Value("string"),
    }
)
PROOF_PILE = Features({"text": Value("string"), "meta": Value("string")})


def parquet(path: Path, rows: list[dict], features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def download_extras(root: Path, repo: str) -> None:
    """What `huggingface-cli download --local-dir` leaves beside the data: the card, .gitattributes, and its
    own `.cache/huggingface/` metadata folder."""
    (root / "README.md").write_text(f"# {repo}\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs\n")
    meta = root / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "README.md.metadata").write_text("0123abcd\netag\n1700000000\n")


class FakeHub:
    """`hub.add(repo, revision, folder)` publishes a folder as the repo at that revision (commit = folder name);
    `calls` records what `datasets.load_dataset` was asked for: (builder, {split: files}, streaming)."""

    def __init__(self, monkeypatch):
        self.repos: dict[tuple[str, str | None], Path] = {}
        self.calls: list[tuple[str, list[str], bool]] = []
        real_load = datasets.load_dataset
        hub = self

        def dataset_info(api, repo, revision=None, **kw):
            from huggingface_hub.errors import RevisionNotFoundError

            folder = hub.repos.get((repo, revision))
            if folder is None:
                err = RevisionNotFoundError.__new__(RevisionNotFoundError)
                Exception.__init__(err, f"no revision {revision}")
                raise err
            files = datafiles.local_listing(folder).files
            return types.SimpleNamespace(sha=folder.name, siblings=[types.SimpleNamespace(rfilename=f) for f in files])

        def load_dataset(builder, data_files=None, split=None, streaming=False, **kw):
            parts = data_files if isinstance(data_files, dict) else {"": list(data_files)}
            hub.calls.append((builder, parts, streaming))
            local = {k: [hub.local(f) for f in fs] for k, fs in parts.items()}
            local = local if isinstance(data_files, dict) else local[""]
            return real_load(builder, data_files=local, split=split, streaming=streaming, **kw)

        import huggingface_hub

        monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        monkeypatch.setattr("longqa.sources.hub_reachable", lambda: True)
        monkeypatch.setattr("evals.texts.hub_reachable", lambda: True)

    def add(self, repo: str, revision: str | None, folder: Path) -> None:
        self.repos[(repo, revision)] = folder

    def local(self, url: str) -> str:
        if not url.startswith("hf://datasets/"):
            return url
        repo_at, _, rel = url[len("hf://datasets/") :].partition("/")
        repo_at += "/" + rel.split("/", 1)[0]
        rel = rel.split("/", 1)[1]
        repo, commit = repo_at.split("@")
        folder = next(f for (r, _), f in self.repos.items() if r == repo and f.name == commit)
        return str(folder / rel)


@pytest.fixture
def hub(monkeypatch):
    return FakeHub(monkeypatch)


def both(tmp_path, hub, name, repo, revision, build, options):
    """Build the layout once under tmp/hub/<commit>/ and once as a local copy; load each; return both."""
    commit = "c0ffee" + name
    hub_root = tmp_path / "hub" / commit
    build(hub_root)
    hub.add(repo, revision, hub_root)
    local_root = tmp_path / "src" / name
    build(local_root)
    download_extras(local_root, repo)
    from_hub = load_source(name, options, None)
    local = load_source(name, options, tmp_path / "src")
    return from_hub, local, commit


# --------------------------------------------------------------------------- L-Eval


def leval_row(text: str, q: str, a: str) -> dict:
    return {"instructions": [q], "input": text, "outputs": [a], "source": "x", "evaluation": "f1"}


def test_leval_parquet_export_selects_tasks_by_their_folders(tmp_path, hub):
    def build(root):
        parquet(root / "scientific_qa/test/0000.parquet", [leval_row("A Title\nWe use relu.", "What?", "relu")], LEVAL)
        parquet(root / "quality/test/0000.parquet", [leval_row("A STORY\nBy ME\nOnce.", "Who is he?", "Me")], LEVAL)
        parquet(root / "gsm100/test/0000.parquet", [leval_row("Math", "2+2?", "4")], LEVAL)  # not asked for

    from_hub, local, commit = both(
        tmp_path, hub, "leval", "L4NLP/LEval", "refs/convert/parquet", build, {"tasks": ["scientific_qa", "quality"]}
    )
    for data in (from_hub, local):
        assert sorted(q.answer for q in data.qas) == ["Me", "relu"]
        assert {d.doc_type for d in data.documents.values()} == {"paper", "novel"}
        assert "Parquet export" in data.origin
    assert from_hub.revision == f"refs/convert/parquet@{commit}" and local.revision.startswith("sha256:")
    hub_calls = [c for c in hub.calls if "hf://" in str(c[1])]
    assert [c[1] for c in hub_calls] == [
        {
            "scientific_qa": [f"hf://datasets/L4NLP/LEval@{commit}/scientific_qa/test/0000.parquet"],
            "quality": [f"hf://datasets/L4NLP/LEval@{commit}/quality/test/0000.parquet"],
        }
    ]  # each task by its files (no config name), pinned to the commit listed; gsm100 never read
    assert all(builder == "parquet" and streaming for builder, _, streaming in hub.calls)


def test_leval_main_branch_jsonl_when_there_is_no_export(tmp_path, hub):
    def build(root):
        (root / "LEval" / "Exam").mkdir(parents=True)
        (root / "LEval.py").write_text("# loading script\n")
        (root / "LEval" / "Exam" / "sci_fi.jsonl").write_text(
            json.dumps(leval_row("THE JUMP\nBy X\nText.", "1.\tX is Y, True or False?", "True [fact: False]")) + "\n"
        )

    from_hub, local, commit = both(tmp_path, hub, "leval", "L4NLP/LEval", None, build, {"tasks": ["sci_fi"]})
    assert [q.answer for q in from_hub.qas] == [q.answer for q in local.qas] == ["True"]
    assert from_hub.revision == f"main@{commit}"


# --------------------------------------------------------------------------- QASPER


def qasper_row(paper_id: str, question: str) -> dict:
    answer = {
        "unanswerable": False,
        "extractive_spans": [],
        "yes_no": None,
        "free_form_answer": "They use relu.",
        "evidence": [],
        "highlighted_evidence": [],
    }
    return {
        "id": paper_id,
        "title": f"Paper {paper_id}",
        "abstract": "We study activations.",
        "full_text": {"section_name": ["Introduction"], "paragraphs": [["We use relu."]]},
        "qas": {
            "question": [question],
            "question_id": ["q"],
            "nlp_background": [""],
            "topic_background": [""],
            "paper_read": [""],
            "search_query": [""],
            "question_writer": ["w"],
            "answers": [{"answer": [answer], "annotation_id": ["a"], "worker_id": ["w"]}],
        },
        "figures_and_tables": {"caption": [], "file": []},
    }


def test_qasper_parquet_export_reads_only_the_recipe_splits(tmp_path, hub):
    def build(root):
        for split in ("train", "validation", "test"):
            parquet(root / f"qasper/{split}/0000.parquet", [qasper_row(f"{split}-1", f"In {split}?")], QASPER)

    opts = {"splits": ["validation", "test"]}
    from_hub, local, commit = both(tmp_path, hub, "qasper", "allenai/qasper", "refs/convert/parquet", build, opts)
    for data in (from_hub, local):
        assert sorted(data.documents) == ["test-1", "validation-1"]
        assert sorted((q.question, q.answer) for q in data.qas) == [
            ("In test?", "They use relu."),
            ("In validation?", "They use relu."),
        ]
    assert from_hub.revision == f"refs/convert/parquet@{commit}"
    assert not any("train" in f for _, parts, _ in hub.calls for files in parts.values() for f in files)


# --------------------------------------------------------------------------- NarrativeQA


def narrativeqa_row(doc_id: str, question: str) -> dict:
    story = "START\nBuck lived in the Santa Clara Valley.\nEND\nLicence."
    return {
        "document": {
            "id": doc_id,
            "kind": "gutenberg",
            "url": "u",
            "file_size": 1,
            "word_count": 9,
            "start": "START",
            "end": "END",
            "summary": {"text": "Buck is stolen.", "tokens": ["Buck"], "url": "w", "title": "Buck (novel)"},
            "text": story,
        },
        "question": {"text": question, "tokens": question.split()},
        "answers": [{"text": "In a valley.", "tokens": []}, {"text": "Santa Clara", "tokens": []}],
    }


def test_narrativeqa_parquet_on_main(tmp_path, hub):
    def build(root):
        parquet(root / "data/train-00000-of-00024.parquet", [narrativeqa_row("tr", "Where?")], NARRATIVEQA)
        parquet(root / "data/train-00001-of-00024.parquet", [narrativeqa_row("tr2", "Where?")], NARRATIVEQA)
        parquet(
            root / "data/test-00000-of-00008.parquet", [narrativeqa_row("te", "Where does Buck live?")], NARRATIVEQA
        )

    from_hub, local, commit = both(
        tmp_path, hub, "narrativeqa", "deepmind/narrativeqa", None, build, {"splits": ["test"]}
    )
    for data in (from_hub, local):
        assert list(data.documents) == ["te"] and data.documents["te"].title == "Buck"
        assert data.documents["te"].text == "START\nBuck lived in the Santa Clara Valley.\nEND"
        assert {q.question: q.answer for q in data.qas} == {
            "Where does Buck live?": "In a valley.",
            "Summarize the story.": "Buck is stolen.",
        }
    assert from_hub.revision == f"main@{commit}"
    assert all(streaming for _, _, streaming in hub.calls)  # every row repeats its book: streamed, never cached


# --------------------------------------------------------------------------- arXiv, LongAlpaca


def test_arxiv_parquet_configs_read_the_recipe_config_only(tmp_path, hub):
    abstract = "we study long context models in this work here ."

    def build(root):
        parquet(
            root / "section/train-00000-of-00014.parquet",
            [{"article": "sections\nbody .", "abstract": abstract}],
            ARXIV,
        )
        parquet(
            root / "document/train-00000-of-00014.parquet", [{"article": "whole body .", "abstract": abstract}], ARXIV
        )

    opts = {"config": "section", "splits": ["train"]}
    from_hub, local, _ = both(tmp_path, hub, "arxiv", "ccdv/arxiv-summarization", None, build, opts)
    for data in (from_hub, local):
        assert [d.text for d in data.documents.values()] == ["sections\nbody ."]
        assert "config section" in data.origin


def test_longalpaca_one_json_list(tmp_path, hub):
    framing = load_recipe("longqa-3k").framing
    book = framing["novel"].format(title="Persuasion", document="Anne lived at Kellynch.", question="Where?")

    def build(root):
        root.mkdir(parents=True, exist_ok=True)
        rows = [
            {"output": "At Kellynch.", "file": "b", "instruction": book},
            {"output": "x", "file": "a", "instruction": "Hi"},
        ]
        (root / "LongAlpaca-12k.json").write_text(json.dumps(rows, indent=4))

    from_hub, local, commit = both(
        tmp_path, hub, "longalpaca", "Yukang/LongAlpaca-12k", None, build, {"framing": framing}
    )
    for data in (from_hub, local):
        assert [(d.title, d.text) for d in data.documents.values()] == [("Persuasion", "Anne lived at Kellynch.")]
        assert [q.answer for q in data.qas] == ["At Kellynch."]
    assert hub.calls[0][0] == "json"


# --------------------------------------------------------------------------- folders that match nothing


@pytest.mark.parametrize(
    ("name", "options", "misnamed", "expected"),
    [
        ("leval", {"tasks": ["quality"]}, "quality.parquet", "quality/test/*.parquet"),
        ("qasper", {"splits": ["test"]}, "qasper_test.json", "qasper/test/*.parquet"),
        ("narrativeqa", {"splits": ["test"]}, "narrativeqa.parquet", "data/test-*.parquet"),
        ("arxiv", {"splits": ["train"], "config": "section"}, "arxiv.jsonl", "section/train-*.parquet"),
        ("longalpaca", {"framing": {}}, "LongAlpaca.json", "LongAlpaca-12k.json"),
    ],
)
def test_a_folder_matching_no_layout_is_one_error_naming_the_files(tmp_path, name, options, misnamed, expected):
    (tmp_path / name).mkdir()
    with pytest.raises(LlqaError) as empty:
        load_source(name, options, tmp_path)
    (tmp_path / name / misnamed).write_text("{}\n")
    with pytest.raises(LlqaError) as wrong:
        load_source(name, options, tmp_path)
    for e in (empty.value, wrong.value):
        assert f"holds no known {name} layout" in str(e) and expected in str(e) and "\n" not in str(e)
        assert "huggingface-cli download" in e.fix


def test_hub_that_cannot_be_listed_is_one_line(monkeypatch):
    import huggingface_hub

    def down(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nretrying")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", down)
    monkeypatch.setattr("longqa.sources.hub_reachable", lambda: True)
    with pytest.raises(LlqaError) as e:
        load_source("qasper", {"splits": ["test"]}, None)
    assert str(e.value).startswith("cannot list allenai/qasper's files on the hub (Failed to resolve")
    assert "\n" not in str(e.value)


def test_hub_repo_without_any_known_layout(tmp_path, hub):
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "qasper.py").write_text("# a loading script only\n")
    hub.add("allenai/qasper", None, tmp_path / "c1")  # no refs/convert/parquet
    with pytest.raises(LlqaError, match=r"the hub's allenai/qasper holds no known qasper layout"):
        load_source("qasper", {"splits": ["test"]}, None)


# --------------------------------------------------------------------------- pg19, proof-pile


def test_pg19_and_proof_pile_read_the_test_files_only(tmp_path, hub):
    from evals.texts import PG19 as PG19_SPEC
    from evals.texts import PROOF_PILE as PROOF_SPEC
    from evals.texts import load_hub_dataset

    def hf_hub_download(repo, rel, repo_type=None, revision=None):
        folder = next(f for (r, _), f in hub.repos.items() if r == repo and f.name == revision)
        return str(folder / rel)

    import huggingface_hub

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    try:
        pg = tmp_path / "pg19" / "aaa111"
        parquet(
            pg / "data/test-00000-of-00001.parquet",
            [{"short_book_title": "Book", "publication_date": 1900, "url": "u", "text": "Once."}],
            PG19,
        )
        hub.add("emozilla/pg19-test", None, pg)
        pp = tmp_path / "proof" / "bbb222"
        for split in ("train", "validation", "test"):
            parquet(pp / f"default/{split}/0000.parquet", [{"text": f"{split} text", "meta": "{}"}], PROOF_PILE)
        hub.add("hoskinson-center/proof-pile", "refs/convert/parquet", pp)
        ds, info = load_hub_dataset(PG19_SPEC)
        assert ds[0]["text"] == "Once." and info["revision"] == "main@aaa111"
        ds, info = load_hub_dataset(PROOF_SPEC)
        assert [r["text"] for r in ds] == ["test text"] and info["revision"] == "refs/convert/parquet@bbb222"
        assert info["files"] == ["default/test/0000.parquet"]
        assert not any("train" in f for _, parts, _ in hub.calls for files in parts.values() for f in files)
    finally:
        monkeypatch.undo()


def test_proof_pile_download_folder_as_data_reads_test_only(tmp_path):
    """`--data DIR` holding `huggingface-cli download hoskinson-center/proof-pile --revision
    refs/convert/parquet`: the train and validation files are not read."""
    from evals.perplexity import local_documents
    from evals.texts import PROOF_PILE as PROOF_SPEC

    for split in ("train", "validation", "test"):
        parquet(tmp_path / f"default/{split}/0000.parquet", [{"text": f"{split} text", "meta": "{}"}], PROOF_PILE)
    download_extras(tmp_path, "hoskinson-center/proof-pile")
    docs, _ = local_documents(tmp_path, "text", pattern="*.parquet", spec=PROOF_SPEC)
    assert [(d.id, d.text) for d in docs] == [("default/test/0000.parquet:0", "test text")]


def test_offline_eval_reads_the_hf_cache(tmp_path, monkeypatch):
    """No network: the split's files come from the HF cache snapshot that an earlier online run filled."""
    from evals.texts import PROOF_PILE as PROOF_SPEC
    from evals.texts import load_hub_dataset

    cache = tmp_path / "hub"
    repo = cache / "datasets--hoskinson-center--proof-pile"
    (repo / "refs" / "refs" / "convert").mkdir(parents=True)  # how the cache stores revision refs/convert/parquet
    (repo / "refs" / "refs" / "convert" / "parquet").write_text("d00d" * 10)
    parquet(
        repo / "snapshots" / ("d00d" * 10) / "default/test/0000.parquet", [{"text": "cached", "meta": "{}"}], PROOF_PILE
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("evals.texts.hub_reachable", lambda: False)
    ds, info = load_hub_dataset(PROOF_SPEC)
    assert [r["text"] for r in ds] == ["cached"] and info["revision"] == "refs/convert/parquet@" + "d00d" * 10
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        LlqaError, match="could not be loaded: the hub cannot be reached and it is not in the local cache"
    ):
        load_hub_dataset(PROOF_SPEC)
