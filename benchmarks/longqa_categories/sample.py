"""Draw the seeded sample of real questions that a reader labels for the category benchmark.

    python benchmarks/longqa_categories/sample.py > benchmarks/longqa_categories/sample.jsonl

Questions are read the way the build reads them (L-Eval through `longqa.sources.leval`, so numbering
is stripped exactly as in a build; NarrativeQA's test questions from `test_qaps_3000.jsonl` with
`clean_text`), then drawn per source stratum with a fixed seed. The per-stratum sizes favour the small
paper sources so that every category, `generation` included, gets at least 25 items. NarrativeQA's
"Summarize the story." items are left out: the source fixes their category, no rule decides it.
Every item gets `split` "dev" or "heldout" (a fixed third held out while the rules were developed).
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from longqa.schema import clean_text  # noqa: E402
from longqa.sources import load_source  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SEED = 2026
SIZES = {"scientific_qa": 64, "paper_assistant": 69, "quality": 60, "sci_fi": 30, "narrativeqa": 160}
# A second draw, made after the first was labelled and `relation` had 20 items: more of the two novel
# sources, every drawn item labelled (not only the relations), so the sample stays a random one per stratum.
TOP_UP = {"quality": 30, "narrativeqa": 90}


def leval_items(task: str) -> list[dict]:
    data = load_source("leval", {"tasks": [task]}, DATA)
    return [
        dict(
            source=f"leval/{task}",
            doc_type=data.documents[qa.doc_id].doc_type,
            doc_id=qa.doc_id,
            title=data.documents[qa.doc_id].title[:100],
            question=qa.question,
            answer=qa.answer[:300],
        )
        for qa in data.qas
    ]


def narrativeqa_items() -> list[dict]:
    nqa = DATA / "narrativeqa"
    with open(nqa / "documents.csv", encoding="utf-8", newline="") as f:
        titles = {r["document_id"]: r["wiki_title"] for r in csv.DictReader(f)}
    out = []
    for line in open(nqa / "test_qaps_3000.jsonl", encoding="utf-8"):
        r = json.loads(line)
        out.append(
            dict(
                source="narrativeqa",
                doc_type="novel",
                doc_id=r["document_id"],
                title=titles.get(r["document_id"], ""),
                question=clean_text(r["question"]),
                answer=" | ".join(clean_text(a) for a in r["answers"])[:300],
            )
        )
    return out


def main() -> None:
    rng = random.Random(SEED)
    pools = {t: leval_items(t) for t in ("scientific_qa", "paper_assistant", "quality", "sci_fi")}
    pools["narrativeqa"] = narrativeqa_items()
    n = 0
    for sizes in (SIZES, TOP_UP):
        for stratum, size in sizes.items():
            pool = pools[stratum]
            drawn = rng.sample(range(len(pool)), min(size, len(pool)))
            for i in drawn:
                n += 1
                item = {"id": f"q{n:03d}", **pool[i], "split": "heldout" if n % 3 == 0 else "dev"}
                print(json.dumps(item, ensure_ascii=False))
            pools[stratum] = [x for i, x in enumerate(pool) if i not in set(drawn)]


if __name__ == "__main__":
    main()
