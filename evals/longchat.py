"""LongChat's LongEval topic and line retrieval, scored automatically.

Test cases are LongChat's own files (DachengLi1/LongChat, longeval/evaluation):
- `N_topics.jsonl`: `test_id`, `prompt` (N concatenated conversations, then "What is the first topic
  we discussed?"), `topics` (in order; the gold answer is `topics[0]`), `prompt_length`.
- `N_lines.jsonl`: `prompt` (N lines "line <name>: REGISTER_CONTENT is <number>", then a question
  about one line), `expected_number`, `correct_line`, `num_lines`, `random_idx`, `token_size`.

Scoring (no GPT judge needed):
- topics: `match` — the gold topic, normalised (lower case, punctuation and the articles a/an/the
  removed, whitespace collapsed), occurs as a contiguous word sequence in the normalised answer;
  `f1` — SQuAD-style token F1 between the normalised answer and gold. An optional judge command
  (`--judge-cmd`) adds a third verdict; it is never required.
- lines: correct when the last integer in the generated text equals `expected_number` (LongChat's rule).
Accuracy per N is the mean over the evaluated cases of N (skipped over-long cases are counted apart).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import socket
import string
import subprocess
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from evals.generation import CHAT_TEMPLATE_MODES, OVERLONG_POLICIES, check_choice, last_integer
from evals.harness import Case, GenerationOptions, TaskContext, run_task
from llqa.errors import LlqaError
from llqa.io import atomic_write_text, read_text_lines

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llqa.models import LoadedModel

TASKS = ("topics", "lines")
REQUIRED_FIELDS = {"topics": ("prompt", "topics"), "lines": ("prompt", "expected_number")}
# Downloaded by default: the files known to exist at UPSTREAM_COMMIT (others, e.g. --sizes 20, are tried
# on request; a missing one is an error that suggests --generate).
PUBLISHED_SIZES = {"topics": (1, 5, 10), "lines": (200, 300, 400)}
DEFAULT_MAX_NEW_TOKENS = {"topics": 50, "lines": 100}  # what LongChat's eval.py generates
DEFAULT_CASES = 50  # test cases per file in LongChat's published sets
UPSTREAM_COMMIT = "4b5faa52fda961b8ea5125b15ae984ff0d1c0f9d"
UPSTREAM_URL = f"https://raw.githubusercontent.com/DachengLi1/LongChat/{UPSTREAM_COMMIT}/longeval/evaluation"
URL_ENV = "LLQA_LONGCHAT_URL"  # a mirror (or file:// copy) of longeval/evaluation

SEMANTICS = {
    "topics": (
        "LongChat topic retrieval. One greedy answer per test case (chat template when applied). "
        "match: the gold topic (topics[0]), normalised (lower case, punctuation and a/an/the removed, "
        "whitespace collapsed), occurs as a contiguous word sequence in the normalised answer. f1: SQuAD "
        "token F1 between the normalised answer and gold. accuracy = mean match over evaluated cases of "
        "each N; mean_f1 likewise; judge_accuracy only when --judge-cmd was given. mean_prompt_tokens: "
        "mean full prompt length (template included, before any truncation) over all cases of N; "
        "skipped cases (longer than the context) are counted, not scored."
    ),
    "lines": (
        "LongChat line retrieval. One greedy answer per test case (chat template when applied). "
        "correct: the last integer in the generated text equals expected_number (LongChat's rule). "
        "accuracy = correct / evaluated cases of each N. mean_prompt_tokens: mean full prompt length "
        "(template included, before any truncation) over all cases of N; skipped cases (longer than "
        "the context) are counted, not scored."
    ),
}

TOPICS_HEADER = (
    "Below is a record of our previous conversation on {n} different topics. You are the ASSISTANT, and "
    "I am the USER. At the beginning of each topic, the USER will say 'I would like to discuss the topic "
    "of <TOPIC>'. Memorize each <TOPIC>. At the end of the record, I will ask you to retrieve the first "
    "topic. Now the record start. "
)
TOPICS_QUESTION = (
    " Now the record ends. What is the first topic we discussed? Only give me the topic name. "
    "Do not summarize yourself."
)
LINES_HEADER = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
    "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
    "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
    "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n"
)
LINE = "line {name}: REGISTER_CONTENT is <{number}>\n"
LINES_QUESTION = "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number. "
LINE_NUMBER_RANGE = (1, 50_000)

# Line names are "adjective-noun" pairs like LongChat's (which draws them from the `wonderwords`
# package); a fixed list keeps generation offline and reproducible: 80 x 80 = 6,400 distinct names.
_ADJECTIVES = """able acid angry ashen bad bitter blue bold brave brief bright broad busy calm cheap chilly
clean clever cold cool crisp cruel curly damp dark dear deep dry dull eager early easy empty faint fair
fancy fast fierce fine firm flat fond fresh full giant glad gold good grand great green grey happy hard
harsh heavy high hollow huge humble icy idle jolly keen kind large late lazy light livid""".split()
_NOUNS = """acorn anchor apple arch badge bagel banjo barn basket beach beetle bell bench blade boat
bottle brick bridge broom bucket button cabin camel candle canoe carpet castle cellar chair cloud coat
comet copper cradle crown desk dragon drum eagle engine falcon fence field flute forest fossil fountain
garden glove goat guitar hammer harbor helmet hill island jacket kettle kite ladder lamp lantern lemon
magnet marble meadow mirror needle oven paddle parrot pencil pillow planet""".split()


# --------------------------------------------------------------------------- scoring


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> list[str]:
    """Lower case, punctuation to spaces, articles a/an/the dropped, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def topic_match(answer: str, gold: str) -> bool:
    """The normalised gold topic occurs as a contiguous word sequence in the normalised answer."""
    a, g = normalize_answer(answer), normalize_answer(gold)
    if not g:
        return False
    return any(a[i : i + len(g)] == g for i in range(len(a) - len(g) + 1))


def token_f1(answer: str, gold: str) -> float:
    """SQuAD token F1 of the normalised answer against the normalised gold (0 when either is empty)."""
    a, g = normalize_answer(answer), normalize_answer(gold)
    common = sum((Counter(a) & Counter(g)).values())
    if not a or not g or common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(g)
    return 2 * precision * recall / (precision + recall)


def line_verdict(output: str, expected: int) -> tuple[bool, int | None]:
    """(correct, parsed): the last integer of the output against expected_number."""
    predicted = last_integer(output)
    return predicted == int(expected), predicted


# --------------------------------------------------------------------------- test case files


def check_task(task: str) -> str:
    return check_choice("task", task, TASKS)


def load_testcases(path: str | Path, task: str) -> list[dict]:
    """Test cases of one LongChat file; a malformed line or a missing field is a user error naming it."""
    check_task(task)
    path = Path(path)
    cases = []
    for n, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlqaError(
                f"{path}:{n} is not valid JSON ({e.msg})", "fix or delete that line (one JSON object per line)"
            ) from None
        if not isinstance(case, dict):
            raise LlqaError(f"{path}:{n} is not a JSON object", "one JSON object per line")
        missing = [f for f in REQUIRED_FIELDS[task] if f not in case]
        if missing:
            raise LlqaError(
                f"{path}:{n} lacks field(s) {', '.join(missing)} of a LongChat {task} test case",
                f"each line needs {', '.join(REQUIRED_FIELDS[task])}",
            )
        _check_case(case, task, f"{path}:{n}")
        case.setdefault("test_id", len(cases))
        cases.append(case)
    if not cases:
        raise LlqaError(f"{path} holds no test case", "point --testcases at LongChat's files or use --generate")
    return cases


def _check_case(case: dict, task: str, where: str) -> None:
    if not isinstance(case["prompt"], str) or not case["prompt"].strip():
        raise LlqaError(f"{where}: `prompt` must be a non-empty string", "fix the test case")
    if task == "topics":
        topics = case["topics"]
        if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t.strip() for t in topics):
            raise LlqaError(f"{where}: `topics` must be a non-empty list of topic names", "fix the test case")
    else:
        try:
            case["expected_number"] = int(case["expected_number"])
        except (TypeError, ValueError):
            raise LlqaError(f"{where}: `expected_number` must be an integer", "fix the test case") from None


def find_testcase_files(folder: str | Path, task: str) -> dict[int, Path]:
    """`N_<task>.jsonl` files under `folder` (searched recursively: LongChat's own tree works as is)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LlqaError(f"--testcases {folder}: not a folder", f"pass a folder holding N_{task}.jsonl files")
    found: dict[int, Path] = {}
    pattern = re.compile(rf"^(\d+)_{task}\.jsonl$")
    for f in sorted(folder.rglob(f"*_{task}.jsonl"), key=lambda p: (len(p.parts), str(p))):
        m = pattern.match(f.name)
        if m and int(m.group(1)) not in found:  # the shallowest file of each N wins
            found[int(m.group(1))] = f
    return found


def _base_url() -> str:
    return os.environ.get(URL_ENV, UPSTREAM_URL).rstrip("/")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    from llqa.hub import hub_offline_by_env

    parsed = urlparse(url)
    if parsed.scheme == "file":
        return True
    if hub_offline_by_env():
        return False
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def download(relative: str, target: Path) -> Path:
    """Fetch `relative` (under longeval/evaluation) into `target` once; offline is one clear error."""
    if target.is_file():
        return target
    url = f"{_base_url()}/{relative}"
    if not _reachable(url):
        raise LlqaError(
            f"LongChat's {relative} is not cached and {urlparse(url).hostname} cannot be reached",
            "pass --testcases DIR (LongChat's longeval/evaluation files), or --generate to write test cases offline",
        )
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise LlqaError(
            f"could not download {url} ({e})", "pass --testcases DIR, or --generate for sizes LongChat did not publish"
        ) from None
    atomic_write_text(target, data.decode("utf-8"))
    return target


def downloaded_testcases(task: str, sizes: Sequence[int]) -> dict[int, Path]:
    from llqa.models import cache_dir

    folder = cache_dir() / "longchat" / UPSTREAM_COMMIT / task / "testcases"
    return {n: download(f"{task}/testcases/{n}_{task}.jsonl", folder / f"{n}_{task}.jsonl") for n in sizes}


# --------------------------------------------------------------------------- generating test cases


def read_conversations(path: str | Path) -> list[tuple[str, str]]:
    """(topic, conversation) pairs from a jsonl file: LongChat's conversations.jsonl (`topic`,
    `conversation`), or documents (`title`, `text`) wrapped into a one-turn conversation."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlqaError(f"--conversations {path}: no such file", "pass a jsonl file of {topic, conversation}")
    out = []
    for n, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path}:{n} is not valid JSON ({e.msg})", "fix or delete that line") from None
        if isinstance(rec, dict) and isinstance(rec.get("topic"), str) and isinstance(rec.get("conversation"), str):
            out.append((rec["topic"], rec["conversation"]))
        elif isinstance(rec, dict) and isinstance(rec.get("title"), str) and isinstance(rec.get("text"), str):
            out.append((rec["title"], document_conversation(rec["title"], rec["text"])))
        else:
            raise LlqaError(
                f"{path}:{n} has neither `topic`+`conversation` nor `title`+`text`",
                "use LongChat's conversations.jsonl format",
            )
    if not out:
        raise LlqaError(f"{path} holds no conversation", "pass a jsonl file of {topic, conversation}")
    return out


def document_conversation(title: str, text: str) -> str:
    """A document as one conversation on its title, in the shape of LongChat's conversations."""
    return (
        f"USER: I would like to discuss the topic of {title}. \n ASSISTANT: {text.strip()} \n "
        f"USER: Great, this is the end of our discussion on the topic {title}, let's talk about the next topic."
    )


def topics_prompt(conversations: Sequence[str]) -> str:
    return TOPICS_HEADER.format(n=len(conversations)) + "".join(conversations) + TOPICS_QUESTION


def generate_topics_cases(conversations: Sequence[tuple[str, str]], n: int, cases: int, seed: int) -> list[dict]:
    """`cases` test cases of `n` distinct conversations each, drawn without replacement (seeded)."""
    if not 1 <= n <= len(conversations):
        raise LlqaError(
            f"cannot build {n}-topic test cases from {len(conversations)} conversations",
            f"use sizes between 1 and {len(conversations)}, or a larger --conversations file",
        )
    rng = random.Random(f"topics:{seed}:{n}")
    out = []
    for i in range(cases):
        chosen = rng.sample(range(len(conversations)), n)
        out.append(
            {
                "test_id": i,
                "prompt": topics_prompt([conversations[j][1] for j in chosen]),
                "topics": [conversations[j][0] for j in chosen],
                "prompt_length": -1,
            }
        )
    return out


def line_names(n: int, rng: random.Random) -> list[str]:
    pool = len(_ADJECTIVES) * len(_NOUNS)
    if n > pool:
        raise LlqaError(f"cannot name {n} lines (at most {pool})", f"use at most {pool} lines per test case")
    picks = rng.sample(range(pool), n)
    return [f"{_ADJECTIVES[p // len(_NOUNS)]}-{_NOUNS[p % len(_NOUNS)]}" for p in picks]


def generate_lines_cases(n: int, cases: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> list[dict]:
    """`cases` test cases of `n` lines each, numbers in 1..50000, one line asked about (seeded)."""
    if n < 1:
        raise LlqaError(f"a lines test case needs at least one line, got {n}", "use sizes >= 1")
    rng = random.Random(f"lines:{seed}:{n}")
    out = []
    for i in range(cases):
        names = line_names(n, rng)
        numbers = [rng.randint(*LINE_NUMBER_RANGE) for _ in names]
        pick = rng.randrange(n)
        lines = [LINE.format(name=a, number=b) for a, b in zip(names, numbers, strict=True)]
        prompt = LINES_HEADER + "".join(lines) + LINES_QUESTION.format(name=names[pick])
        size = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if tokenizer is not None else -1
        out.append(
            {
                "test_id": i,
                "random_idx": [names[pick], pick],
                "expected_number": numbers[pick],
                "num_lines": n,
                "token_size": size,
                "correct_line": lines[pick],
                "prompt": prompt,
                "prompt_length": -1,
            }
        )
    return out


def write_testcases(path: str | Path, cases: Sequence[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases))


# --------------------------------------------------------------------------- judge hook


def run_judge(cmd: str, payload: dict, timeout: float = 300) -> bool:
    """Ask an external judge: `cmd` gets one JSON object on stdin (task, test_id, question, gold,
    answer) and prints a verdict: JSON {"correct": true|false}, or a first word yes/no, true/false,
    correct/incorrect, 1/0."""
    try:
        proc = subprocess.run(
            shlex.split(cmd), input=json.dumps(payload), capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlqaError(f"--judge-cmd {cmd!r} could not run ({e})", "check the command") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        raise LlqaError(f"--judge-cmd {cmd!r} exited with {proc.returncode}: {tail}", "fix the judge command")
    return parse_verdict(proc.stdout, cmd)


def parse_verdict(text: str, cmd: str = "judge") -> bool:
    text = text.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("correct"), bool):
            return obj["correct"]
    except json.JSONDecodeError:
        pass
    word = (text.split() or [""])[0].strip(string.punctuation).lower()
    verdicts = {
        "yes": True,
        "true": True,
        "correct": True,
        "1": True,
        "no": False,
        "false": False,
        "incorrect": False,
        "0": False,
    }
    if word not in verdicts:
        raise LlqaError(
            f"--judge-cmd {cmd!r} printed no verdict ({text[:60]!r})", 'print {"correct": true|false} or yes/no'
        )
    return verdicts[word]


# --------------------------------------------------------------------------- run


@dataclass
class LongEvalConfig:
    """One topics or lines run. `sizes` None: every N found (or LongChat's published Ns when downloading)."""

    task: str
    sizes: list[int] | None = None
    testcases: str | None = None  # folder of N_<task>.jsonl; None: download LongChat's (or --generate)
    generate: bool = False  # write test cases for sizes the folder lacks into <out>/testcases
    conversations: str | None = None  # source for generated topics (None: LongChat's, downloaded)
    cases: int = DEFAULT_CASES  # cases per generated file
    limit: int | None = None  # evaluate only the first `limit` cases of each N
    seed: int = 0
    chat_template: str = "auto"
    overlong: str = "skip"
    max_new_tokens: int | None = None  # None: LongChat's (topics 50, lines 100)
    batch_tokens: int | None = None
    judge_cmd: str | None = None

    def __post_init__(self):
        check_task(self.task)
        if self.sizes is not None:
            if not self.sizes or any(n <= 0 for n in self.sizes):
                raise LlqaError(f"--sizes must be positive, got {self.sizes}", "e.g. --sizes 1,5,10")
            self.sizes = sorted(set(int(n) for n in self.sizes))
        if self.cases <= 0:
            raise LlqaError(f"--cases must be positive, got {self.cases}", "e.g. --cases 50")
        if self.limit is not None and self.limit <= 0:
            raise LlqaError(f"--limit must be positive, got {self.limit}", "e.g. --limit 10")
        if self.judge_cmd is not None and self.task != "topics":
            raise LlqaError("--judge-cmd applies to topics only", "lines are scored exactly, drop --judge-cmd")
        if self.judge_cmd is not None:
            try:  # run without a shell: the command line is split as a POSIX shell would split it
                argv = shlex.split(self.judge_cmd)
            except ValueError as e:
                raise LlqaError(
                    f"--judge-cmd {self.judge_cmd!r} cannot be split into a command ({e})",
                    "close its quotes, e.g. --judge-cmd \"python judge.py --model 'gpt 4'\"",
                ) from None
            if not argv:
                raise LlqaError("--judge-cmd is empty", 'pass a command, e.g. --judge-cmd "python judge.py"')
        check_choice("--chat-template", self.chat_template, CHAT_TEMPLATE_MODES)
        check_choice("--overlong", self.overlong, OVERLONG_POLICIES)
        if self.max_new_tokens is None:
            self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS[self.task]
        if self.max_new_tokens <= 0:
            raise LlqaError(f"--max-new-tokens must be positive, got {self.max_new_tokens}", "e.g. 50")

    @property
    def generation_counts_tokens(self) -> bool:
        """Generated lines cases record their prompt's token count (LongChat's `token_size`): they need the
        tokenizer; topics cases do not."""
        return self.task == "lines"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_testcases(
    cfg: LongEvalConfig, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> dict[int, Path]:
    """The test-case file of every N to evaluate: from --testcases, generated into <out>/testcases
    (with --generate, for the Ns the folder lacks), or downloaded from LongChat's repository."""
    found = find_testcase_files(cfg.testcases, cfg.task) if cfg.testcases else {}
    if cfg.testcases and not found and not cfg.generate:
        raise LlqaError(
            f"--testcases {cfg.testcases} holds no N_{cfg.task}.jsonl file",
            f"point it at LongChat's {cfg.task}/testcases folder, or add --generate --sizes ...",
        )
    if cfg.generate:
        if not cfg.sizes:
            raise LlqaError("--generate needs --sizes (the Ns to write)", "e.g. --generate --sizes 15,20,25")
        missing = [n for n in cfg.sizes if n not in found]
        gen_dir = Path(out_dir) / "testcases"
        conversations = None
        for n in missing:
            target = gen_dir / f"{n}_{cfg.task}.jsonl"
            if not target.is_file():  # generated before (resume): the seed makes it identical
                if cfg.task == "topics":
                    if conversations is None:
                        source = cfg.conversations or downloaded_conversations()
                        conversations = read_conversations(source)
                    cases = generate_topics_cases(conversations, n, cfg.cases, cfg.seed)
                else:
                    cases = generate_lines_cases(n, cfg.cases, cfg.seed, tokenizer)
                write_testcases(target, cases)
            found[n] = target
        return {n: found[n] for n in cfg.sizes}
    if cfg.testcases:
        if cfg.sizes:
            absent = [n for n in cfg.sizes if n not in found]
            if absent:
                raise LlqaError(
                    f"--testcases {cfg.testcases} has no {cfg.task} file for N = {absent} (it has {sorted(found)})",
                    "drop those sizes, or add --generate to write them",
                )
            return {n: found[n] for n in cfg.sizes}
        return dict(sorted(found.items()))
    return downloaded_testcases(cfg.task, cfg.sizes or PUBLISHED_SIZES[cfg.task])


def downloaded_conversations() -> Path:
    from llqa.models import cache_dir

    folder = cache_dir() / "longchat" / UPSTREAM_COMMIT / "topics"
    return download("topics/conversations.jsonl", folder / "conversations.jsonl")


def summarize(records: Sequence[dict], task: str) -> list[dict]:
    """One row per N: cases, evaluated, skipped, truncated, accuracy (+ mean_f1 / judge for topics),
    mean_prompt_tokens over all cases of N."""
    by_n: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_n[r["n"]].append(r)
    rows = []
    for n, recs in sorted(by_n.items()):
        done = [r for r in recs if not r.get("skipped")]
        row = {
            "n": n,
            "cases": len(recs),
            "evaluated": len(done),
            "skipped": len(recs) - len(done),
            "truncated": sum(bool(r.get("truncated")) for r in done),
            "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in recs) / len(recs), 1),
            "accuracy": (sum(r["correct"] for r in done) / len(done)) if done else None,
        }
        if task == "topics":
            row["mean_f1"] = (sum(r["f1"] for r in done) / len(done)) if done else None
            judged = [r for r in done if r.get("judge") is not None]
            row["judge_accuracy"] = (sum(r["judge"] for r in judged) / len(judged)) if judged else None
            row["judge_errors"] = sum(bool(r.get("judge_error")) for r in done)
        rows.append(row)
    return rows


def _plot(out_dir: Path, task: str, rows: Sequence[dict], title: str) -> list[str]:
    from evals.plots import accuracy_vs_length

    done_rows = [r for r in rows if r["accuracy"] is not None]
    xs = [r["mean_prompt_tokens"] for r in done_rows]
    series = {f"{task} accuracy": (xs, [r["accuracy"] for r in done_rows])}
    if task == "topics":
        series["topics mean F1"] = (xs, [r["mean_f1"] for r in done_rows])
    accuracy_vs_length(
        out_dir / f"{task}_accuracy.png",
        series,
        title,
        xlabel="mean prompt length (tokens)",
        ylabel="accuracy / mean F1" if task == "topics" else "accuracy",
        annotations={f"{task} accuracy": [f"{r['n']} {task}" for r in done_rows]},
    )
    return [f"{task}_accuracy.png"]


@dataclass
class LongEvalTask:
    """LongChat topic or line retrieval as a harness task (`evals.harness.Task`); `cfg.task` says which."""

    cfg: LongEvalConfig
    files: dict[int, Path] = field(default_factory=dict)  # resolved by build_cases
    stop_when = None  # LongChat generates its full budget

    @property
    def name(self) -> str:
        return self.cfg.task

    @property
    def default_max_new_tokens(self) -> int:
        return DEFAULT_MAX_NEW_TOKENS[self.cfg.task]

    def options(self) -> GenerationOptions:
        c = self.cfg
        return GenerationOptions(c.chat_template, c.overlong, c.max_new_tokens, c.batch_tokens)

    def semantics(self, ctx: TaskContext) -> str:
        return SEMANTICS[self.cfg.task]

    def config(self) -> dict[str, Any]:
        resolved = {k: v for k, v in self.cfg.to_dict().items() if k != "batch_tokens"}
        return {**resolved, "files": {str(n): str(p) for n, p in self.files.items()}}

    def build_cases(self, ctx: TaskContext) -> list[Case]:
        self.files = prepare_testcases(self.cfg, ctx.out_dir, ctx.tokenizer)
        cases = []
        for n, path in self.files.items():
            for case in load_testcases(path, self.cfg.task)[: self.cfg.limit]:
                reference = case["topics"][0] if self.cfg.task == "topics" else case["expected_number"]
                cases.append(
                    Case(
                        f"n={n}|test_id={case['test_id']}",
                        text=case["prompt"],
                        reference=reference,
                        meta={"n": n, "test_id": case["test_id"]},
                    )
                )
        return cases

    def score(self, case: Case, answer: str) -> dict[str, Any]:
        if self.cfg.task == "lines":
            correct, predicted = line_verdict(answer, case.reference)
            return {"expected": case.reference, "predicted": predicted, "correct": correct}
        gold = case.reference
        rec = {"gold": gold, "correct": topic_match(answer, gold), "f1": round(token_f1(answer, gold), 4)}
        if self.cfg.judge_cmd:
            payload = {
                "task": "topics",
                "test_id": case.meta["test_id"],
                "question": "What is the first topic we discussed?",
                "gold": gold,
                "answer": answer,
            }
            # a failing judge never costs the generation: the cell is kept with the failure recorded
            try:
                rec["judge"] = run_judge(self.cfg.judge_cmd, payload)
            except LlqaError as e:
                rec["judge"], rec["judge_error"] = None, str(e)
        return rec

    def summarise(self, records: Sequence[dict]) -> dict[str, Any]:
        return {"by_n": summarize(records, self.cfg.task)}

    def rows(self, summary: dict) -> list[dict[str, Any]]:
        return summary["by_n"]

    def data(self) -> dict[str, Any]:
        return {"files": {str(n): str(p) for n, p in self.files.items()}}

    def plots(self, out_dir: Path, summary: dict, ctx: TaskContext) -> list[str]:
        task = self.cfg.task
        title = (
            f"LongChat {task}: {ctx.model_info.spec} @ ctx {ctx.ctx}, "
            f"{'chat template' if ctx.template else 'no template'}"
        )
        return _plot(out_dir, task, summary["by_n"], title)


def run_longeval(
    loaded: LoadedModel,
    cfg: LongEvalConfig,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    ctx: int | None = None,
    poll_s: float = 2.0,
) -> list[dict] | None:
    """Run (or resume) topics or lines through `evals.harness.run_task`; writes cells.jsonl,
    result.json/csv and an accuracy plot in out_dir and returns the rows per N (None on torchrun ranks
    other than 0). `ctx`: prompts above it are over-long (--overlong); None: the model's context."""
    task = LongEvalTask(cfg)
    result = run_task(
        loaded, task, task.options(), out_dir, overwrite=overwrite, progress=progress, ctx=ctx, poll_s=poll_s
    )
    return None if result is None else result.rows
