"""How often llqa's question categories agree with a careful reader's, on 503 hand-labelled questions.

    python benchmarks/longqa_categories.py                 # print the figures (all, dev, held-out)
    python benchmarks/longqa_categories.py --write benchmarks/longqa_categories.md

The labels (`benchmarks/longqa_categories/labels.jsonl`, made as its README says) are compared with
`longqa.categories.categorize(question, doc_type)`. Figures:
- overall agreement: the share of items whose rule category equals the reader's label;
- per category, two shares: recall (of the items the reader put in the category, how many the rules
  put there too) and precision (of the items the rules put in the category, how many the reader put
  there too); a category is only as good as the lower of the two;
- the confusion matrix, rows = reader, columns = rules.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from llqa.io import atomic_write_text  # noqa: E402
from longqa.categories import categorize  # noqa: E402
from longqa.schema import CATEGORIES  # noqa: E402

LABELS = HERE / "longqa_categories" / "labels.jsonl"
COMMAND = "python benchmarks/longqa_categories.py --write benchmarks/longqa_categories.md"
# Measured by hand before the rules changed (not recomputed): the record a regression is judged against.
HISTORY = [
    "Rules before the labels (commit 16102c9, no `generation` category, so its 46 items counted as misses):",
    "80.5% overall (405/503); relation 64.5% recall / 45.5% precision, character 72.6% / 91.4%,",
    "detail 93.9% / 81.6%, summary 96.2% / 100%.",
    "",
    "First measurement of the rules developed on dev (commit fff384c): 97.4% all, 98.8% dev, 94.6% held-out",
    "(relation 66.7% / 75.0% there). After it, the held-out disagreements had been seen; two general fixes",
    "then came from a spot check of unlabelled questions (the kin phrase must be the one asked about:",
    '"Kitty\'s husband doing ..." is not a relation; "what" + a love word needs a person noun: "What girl',
    'does X fall in love with" but not "What does Emilie find out after being married"). They moved one',
    "held-out item (q336) to agreement.",
]


def load_labels(path: Path = LABELS) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def predict(rows: list[dict]) -> list[str]:
    return [categorize(r["question"], r["doc_type"]) for r in rows]


def agreement(rows: list[dict], predicted: list[str]) -> dict:
    """Overall share of agreement, and per category recall and precision (None where nothing to divide)."""
    pairs = Counter((r["label"], p) for r, p in zip(rows, predicted, strict=True))
    per = {}
    for c in CATEGORIES:
        labelled = sum(n for (lab, _), n in pairs.items() if lab == c)
        ruled = sum(n for (_, p), n in pairs.items() if p == c)
        per[c] = {
            "labelled": labelled,
            "ruled": ruled,
            "agree": pairs[(c, c)],
            "recall": pairs[(c, c)] / labelled if labelled else None,
            "precision": pairs[(c, c)] / ruled if ruled else None,
        }
    agree = sum(pairs[(c, c)] for c in CATEGORIES)
    return {"n": len(rows), "agree": agree, "overall": agree / len(rows) if rows else None, "per_category": per}


def confusion(rows: list[dict], predicted: list[str]) -> list[list[int]]:
    pairs = Counter((r["label"], p) for r, p in zip(rows, predicted, strict=True))
    return [[pairs[(lab, p)] for p in CATEGORIES] for lab in CATEGORIES]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def report(rows: list[dict]) -> str:
    predicted = predict(rows)
    parts = {s: [i for i, r in enumerate(rows) if r["split"] == s] for s in ("dev", "heldout")}
    lines = [
        "# LongQA category agreement with a reader",
        "",
        f"Command: `{COMMAND}` (CPU only, runs in about a second). Date: {dt.date.today().isoformat()}.",
        "Labels: `benchmarks/longqa_categories/labels.jsonl`, 503 real questions from every question source in",
        "`../shared/data`, labelled by a reader before the rules were measured (how: its README). The rules were",
        "developed on `dev`; `heldout` (every third item) was only measured.",
        "",
        "| set | items | agree | overall | " + " | ".join(f"{c} (recall / precision)" for c in CATEGORIES) + " |",
        "|---|---|---|---|" + "---|" * len(CATEGORIES),
    ]
    for name, idx in (("all", range(len(rows))), ("dev", parts["dev"]), ("heldout", parts["heldout"])):
        sub, pred = [rows[i] for i in idx], [predicted[i] for i in idx]
        a = agreement(sub, pred)
        cells = [
            f"{_pct(p['recall'])} / {_pct(p['precision'])} (n={p['labelled']})" for p in a["per_category"].values()
        ]
        lines.append(f"| {name} | {a['n']} | {a['agree']} | {_pct(a['overall'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Recall: of the items the reader put in a category, the share the rules put there too. Precision: of",
        "the items the rules put in a category, the share the reader put there too. Held-out figures per category",
        "rest on few items (see n); `tests/test_longqa_categories.py` holds the figures on all items to >= 90%",
        "overall and >= 80% recall and precision per category.",
        "",
        "## Confusion matrix (all items; rows = reader, columns = rules)",
        "",
        "| reader \\ rules | " + " | ".join(CATEGORIES) + " |",
        "|---|" + "---|" * len(CATEGORIES),
    ]
    for c, row in zip(CATEGORIES, confusion(rows, predicted), strict=True):
        lines.append(f"| {c} | " + " | ".join(str(n) for n in row) + " |")
    lines += ["", "## History", "", *HISTORY]
    misses = [(r, p) for r, p in zip(rows, predicted, strict=True) if r["label"] != p]
    lines += [
        "",
        f"## Disagreements ({len(misses)})",
        "",
        "| id | split | reader | rules | question |",
        "|---|---|---|---|---|",
    ]
    for r, p in misses:
        q = " ".join(r["question"].split())[:110].replace("|", "/")
        lines.append(f"| {r['id']} | {r['split']} | {r['label']} | {p} | {q} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--write", type=Path, help="also write the report (Markdown) here")
    args = ap.parse_args(argv)
    text = report(load_labels(args.labels))
    print(text)
    if args.write:
        atomic_write_text(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
