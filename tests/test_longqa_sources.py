"""Every source module driven by fixture files in its dataset's real schema (written here)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llqa.errors import LlqaError
from longqa.recipe import load_recipe
from longqa.schema import fix_mojibake
from longqa.sources import arxiv, check_available, load_source, longalpaca, narrativeqa, qasper

STORY = (
    "*** START OF THIS PROJECT ***\nLicence header.\nCHAPTER I\nBuck did not read the newspapers. "
    "He lived at a big house in the sun-kissed Santa Clara Valley.\nTHE END\nMore licence text."
)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_narrativeqa_hub_schema(tmp_path):
    doc = {
        "id": "d1",
        "kind": "gutenberg",
        "url": "u",
        "file_size": 1,
        "word_count": 20,
        "start": "CHAPTER I",
        "end": "THE END",
        "text": STORY,
        "summary": {
            "text": "Buck is stolen and taken north.",
            "tokens": [],
            "url": "w",
            "title": "The Call of the Wild (novel)",
        },
    }
    rows = [
        {
            "document": doc,
            "question": {"text": "Who is Buck?", "tokens": []},
            "answers": [{"text": "A dog.", "tokens": []}, {"text": "A big dog", "tokens": []}],
        },
        {
            "document": doc,
            "question": {"text": "Where does Buck live?", "tokens": []},
            "answers": [{"text": "", "tokens": []}, {"text": "Santa Clara Valley", "tokens": []}],
        },
    ]
    _jsonl(tmp_path / "narrativeqa" / "test.jsonl", rows)
    _jsonl(tmp_path / "narrativeqa" / "train.jsonl", [dict(rows[0], document=dict(doc, id="d2"))])
    data = load_source("narrativeqa", {"splits": ["test"]}, tmp_path)
    assert list(data.documents) == ["d1"]  # train.jsonl not read
    d = data.documents["d1"]
    assert d.title == "The Call of the Wild" and d.doc_type == "novel"
    assert d.text.startswith("CHAPTER I") and d.text.endswith("THE END")  # licence cut away
    qas = {q.question: q for q in data.qas}
    assert qas["Summarize the story."].category == "summary"
    assert qas["Who is Buck?"].answer == "A dog."
    assert qas["Where does Buck live?"].answer == "Santa Clara Valley"  # first non-empty answer
    assert data.revision.startswith("sha256:")


def test_narrativeqa_repository_layout(tmp_path):
    root = tmp_path / "narrativeqa"
    (root / "stories").mkdir(parents=True)
    (root / "documents.csv").write_text(
        "document_id,set,kind,story_url,story_file_size,wiki_url,wiki_title,story_word_count,story_start,story_end\n"
        "d1,test,gutenberg,u,1,w,Call (novel),20,CHAPTER I,THE END\n"
        "d2,test,movie,u,1,w,No Text,20,A,B\n"
        "d3,train,movie,u,1,w,Train Doc,20,A,B\n"
    )
    (root / "stories" / "d1.content").write_text(STORY)
    _jsonl(root / "test_qaps_3000.jsonl", [{"document_id": "d1", "question": "Who is Buck?", "answers": ["A dog."]}])
    _jsonl(root / "test_summaries.jsonl", [{"document_id": "d1", "summary": "Buck goes northâ\x80\x94far north."}])
    data = load_source("narrativeqa", {"splits": ["test"]}, tmp_path)
    assert list(data.documents) == ["d1"]
    assert any("no local story text" in n for n in data.notes)
    summary = next(q for q in data.qas if q.category == "summary")
    assert summary.answer == "Buck goes north\u2014far north."  # mojibake repaired


def _qasper_row():
    return {
        "id": "1909.0001",
        "title": "A Paper",
        "abstract": "We study things.",
        "full_text": {
            "section_name": ["Introduction", "Method"],
            "paragraphs": [["Intro text about social media."], ["We use a relu activation.", "More."]],
        },
        "qas": {
            "question": ["What activation do they use?", "Is it good?", "Unanswerable one?", "Free?"],
            "question_id": ["q1", "q2", "q3", "q4"],
            "answers": [
                {
                    "answer": [
                        {
                            "unanswerable": False,
                            "extractive_spans": ["relu activation"],
                            "yes_no": None,
                            "free_form_answer": "",
                            "evidence": [],
                            "highlighted_evidence": [],
                        }
                    ],
                    "annotation_id": ["a"],
                    "worker_id": ["w"],
                },
                {
                    "answer": [
                        {
                            "unanswerable": False,
                            "extractive_spans": [],
                            "yes_no": True,
                            "free_form_answer": "",
                            "evidence": [],
                            "highlighted_evidence": [],
                        }
                    ],
                    "annotation_id": ["a"],
                    "worker_id": ["w"],
                },
                {
                    "answer": [
                        {
                            "unanswerable": True,
                            "extractive_spans": [],
                            "yes_no": None,
                            "free_form_answer": "",
                            "evidence": [],
                            "highlighted_evidence": [],
                        }
                    ],
                    "annotation_id": ["a"],
                    "worker_id": ["w"],
                },
                {
                    "answer": [
                        {
                            "unanswerable": False,
                            "extractive_spans": ["not in paper"],
                            "yes_no": None,
                            "free_form_answer": "",
                            "evidence": [],
                            "highlighted_evidence": [],
                        }
                    ],
                    "annotation_id": ["a"],
                    "worker_id": ["w"],
                },
            ],
        },
    }


def test_qasper_hub_schema_parquet(tmp_path):
    (tmp_path / "qasper").mkdir()
    pq.write_table(pa.Table.from_pylist([_qasper_row()]), tmp_path / "qasper" / "train-00000-of-00001.parquet")
    data = load_source("qasper", {"splits": ["train"]}, tmp_path)
    d = data.documents["1909.0001"]
    assert d.doc_type == "paper" and "Abstract\nWe study things." in d.text and "Method\nWe use a relu" in d.text
    got = {q.question: (q.answer, q.answer_type) for q in data.qas}
    assert got == {
        "What activation do they use?": ("relu activation", "extractive"),
        "Is it good?": ("Yes", "yes_no"),
        "Free?": ("not in paper", "abstractive"),
    }  # a span absent from the text is not extractive


def test_qasper_original_release(tmp_path):
    row = _qasper_row()
    orig = {
        "title": row["title"],
        "abstract": row["abstract"],
        "full_text": [{"section_name": "Introduction", "paragraphs": ["Intro text."]}],
        "qas": [
            {
                "question": "Is it good?",
                "question_id": "q2",
                "answers": [
                    {
                        "answer": {
                            "unanswerable": False,
                            "extractive_spans": [],
                            "yes_no": False,
                            "free_form_answer": "",
                            "evidence": [],
                        }
                    }
                ],
            }
        ],
    }
    (tmp_path / "qasper").mkdir()
    (tmp_path / "qasper" / "qasper-dev-v0.3.json").write_text(json.dumps({"1909.0002": orig}))
    data = load_source("qasper", {"splits": ["validation"]}, tmp_path)
    assert [(q.doc_id, q.answer) for q in data.qas] == [("1909.0002", "No")]


def test_arxiv_removes_the_abstract(tmp_path):
    abstract = "we show that long context models can read whole papers well ."
    article = f"{abstract}\nthe transport of charge in graphene is studied here .\nwe conclude ."
    _jsonl(
        tmp_path / "arxiv" / "train.jsonl",
        [{"article": article, "abstract": abstract}, {"article": "", "abstract": "x"}],
    )
    data = load_source("arxiv", {"splits": ["train"]}, tmp_path)
    (doc,) = data.documents.values()
    assert "long context models" not in doc.text and doc.text.startswith("the transport")
    (qa,) = data.qas
    assert qa.category == "summary" and qa.answer == abstract and qa.question == arxiv.SUMMARY_QUESTION


def test_leval_tasks_and_doc_types(tmp_path):
    _jsonl(
        tmp_path / "leval" / "Closed-ended-tasks" / "sci_fi.jsonl",
        [
            {
                "input": "THE QUANTUM JUMP\nBy ROBERT WICKS\nCaptain Brandon was a pioneer.",
                "instructions": ["1.\tBrandon is a pioneer, True or False? Answer based on the document."],
                "outputs": ["True [fact: False]"],
                "source": "SFGram",
                "evaluation": "exam",
            }
        ],
    )
    _jsonl(
        tmp_path / "leval" / "Open-ended-tasks" / "scientific_qa.jsonl",
        [
            {
                "input": "Introduction\nWe use relu.",
                "instructions": ["What activation?"],
                "outputs": ["relu"],
                "source": "qasper",
                "evaluation": "f1",
            }
        ],
    )
    data = load_source("leval", {"tasks": ["sci_fi", "scientific_qa"]}, tmp_path)
    types = {d.doc_type for d in data.documents.values()}
    assert types == {"novel", "paper"}
    qa = next(q for q in data.qas if q.answer_type == "yes_no")
    assert qa.question.startswith("Brandon") and qa.answer == "True"
    novel = next(d for d in data.documents.values() if d.doc_type == "novel")
    assert novel.title == "THE QUANTUM JUMP"
    with pytest.raises(LlqaError, match=r"leval layout \(one <task>.jsonl per task, but nothing for quality\)"):
        load_source("leval", {"tasks": ["sci_fi", "quality"]}, tmp_path)
    with pytest.raises(LlqaError, match="no document type"):
        load_source("leval", {"tasks": ["gsm100"]}, tmp_path)


def test_longalpaca_takes_framed_items_apart(tmp_path):
    recipe = load_recipe("longqa-3k")
    paper = recipe.framing["paper"].format(document="Deep nets are studied here.", question="What is studied?")
    book = recipe.framing["novel"].format(
        title="Uncle Silas", document="Maud lived at Knowl.", question="Where did Maud live?"
    )
    rows = [
        {"instruction": paper, "output": "Deep nets.", "file": "paper_1"},
        {"instruction": book.replace("\n", "\n\n"), "output": "At Knowl.", "file": "book_1"},
        {"instruction": "Give three tips for staying healthy.", "output": "Eat.", "file": "alpaca"},
    ]
    (tmp_path / "longalpaca").mkdir()
    (tmp_path / "longalpaca" / "LongAlpaca-12k.json").write_text(json.dumps(rows))
    data = load_source("longalpaca", {"framing": recipe.framing}, tmp_path)
    docs = sorted((d.doc_type, d.title, d.text) for d in data.documents.values())
    assert docs[0][0] == "novel" and docs[0][1] == "Uncle Silas" and docs[0][2] == "Maud lived at Knowl."
    assert docs[1][0] == "paper" and docs[1][2] == "Deep nets are studied here."
    assert sorted(q.question for q in data.qas) == ["What is studied?", "Where did Maud live?"]
    assert any("1 rows" in n for n in data.notes)
    assert longalpaca.framing_pattern(recipe.framing["paper"]).fullmatch(paper)


def test_offline_without_local_copy_names_each_dataset_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr("longqa.sources.hub_reachable", lambda: False)
    with pytest.raises(LlqaError) as e:
        check_available(["qasper", "arxiv"], tmp_path)
    msg = str(e.value)
    assert "allenai/qasper" in msg and "ccdv/arxiv-summarization" in msg and str(tmp_path) in msg
    with pytest.raises(LlqaError, match=r"narrativeqa \(deepmind/narrativeqa\).*--source-dir"):
        check_available(["narrativeqa"], None)
    (tmp_path / "qasper").mkdir()
    with pytest.raises(LlqaError) as e:  # a local copy satisfies its source; only arxiv is missing
        check_available(["qasper", "arxiv"], tmp_path)
    assert "arxiv" in str(e.value) and "allenai/qasper" not in str(e.value)


def test_fix_mojibake_is_idempotent_and_keeps_real_accents():
    assert fix_mojibake("Chimène — café") == "Chimène — café"
    assert fix_mojibake("10Â\xa0million") == "10\xa0million"
    assert fix_mojibake(fix_mojibake("wrestlerâ\x80\x94but")) == "wrestler\u2014but"


def test_narrativeqa_story_text_strips_html():
    raw = "<html><body><pre>INT. HOUSE - NIGHT<br>Mark &amp; Nora talk.</pre></body></html>"
    assert narrativeqa.story_text(raw) == "INT. HOUSE - NIGHT\nMark & Nora talk."
    assert qasper.pick_answer([{"unanswerable": True}], "x") is None
