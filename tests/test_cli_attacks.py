"""The CLI under attack: every command with its bad inputs, run in this process exactly as `llqa` runs them.

Each case asserts: a non-zero exit code, exactly one line on stderr (and nothing on stdout) that starts with
`error:`, names the problem (the case's needle) and the fix (after " — "), no traceback, and no file outside
`--out` created, changed or removed. The inputs live in one shared folder that is compared before and after
every case. Tiny models and CPU only; every case fails before any model weights load.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import llqa_call

LATIN1 = "Caf\xe9 cr\xe8me, na\xefve fa\xe7ade.\n".encode("latin-1") * 20


@dataclass
class Case:
    id: str
    args: list[str]
    needle: str
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None  # a function name below: prepares this case's inputs in its folder


# --------------------------------------------------------------------------- the world the cases run in


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir, tiny_run, shared_data):
    w = tmp_path_factory.mktemp("attack-world")
    (w / "book.txt").write_text("A short book about nothing in particular. " * 30)
    (w / "latin1.txt").write_bytes(LATIN1)
    (w / "latin1.jsonl").write_bytes(b'{"instruction": "' + LATIN1[:40] + b'", "output": "x"}\n')
    (w / "a-file").write_text("I am a file, not a folder.")
    (w / "bad.gguf").write_text("not GGUF at all")
    (w / "empty").mkdir()
    (w / "mine").mkdir()
    (w / "mine" / "thesis.tex").write_text("years of work")
    (w / "broken.toml").write_text("name = [unterminated")
    (w / "not-json.jsonl").write_text("this is not json\n")
    cases = w / "testcases"
    cases.mkdir()
    (cases / "1_topics.jsonl").write_bytes(LATIN1)
    (cases / "200_lines.jsonl").write_bytes(LATIN1)
    (w / "longeval").symlink_to(shared_data / "longchat_longeval" / "evaluation", target_is_directory=True)
    shutil.copytree(tiny_run, w / "run")
    (w / "run" / ".llqa.lock").unlink(missing_ok=True)
    (w / "adapter-only").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tiny_run / name, w / "adapter-only" / name)
    (w / "tiny").symlink_to(tiny_llama_dir, target_is_directory=True)
    build = w / "build"
    build.mkdir()
    (build / "manifest.json").write_text("{}")
    (build / "train.jsonl").write_text("")
    return w


def _snapshot(root: Path, skip: Path | None) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):  # symlinks to shared data are not followed
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames.clear()
            continue
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            if skip is not None and (path == skip or skip in path.parents):
                continue
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


# --------------------------------------------------------------------------- per-case preparations


def damaged_run(case_dir: Path, world: Path, what: str) -> Path:
    run = case_dir / "run"
    shutil.copytree(world / "run", run, symlinks=True)
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    target = {
        "trainable": ckpt / "trainable.safetensors",
        "optimizer": ckpt / "optimizer.pt",
        "state": ckpt / "state.json",
        "rng": ckpt / "rng.pt",
        "adapter": run / "adapter_model.safetensors",
        "adapter_config": run / "adapter_config.json",
        "run_file": run / "llqa_model.json",
    }[what]
    if target.suffix == ".json":
        target.write_text('{"broken": ')
    elif what == "optimizer":
        target.write_bytes(b"garbage garbage garbage")
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return run


TRAIN = ["train", "--model", "{world}/tiny", "--ctx", "64", "--data", "{world}/book.txt", "--device", "cpu"]
SFT = ["sft", "--model", "{world}/tiny", "--ctx", "64", "--device", "cpu"]
# the options `tiny_run` was trained with: its model and data are read from its train_config.json
RESUME = ["train", "--model", "{run_model}", "--ctx", "64", "--data", "{run_data}", "--device", "cpu"]
RESUME += ["--method", "lora+", "--batch-size", "1", "--warmup-steps", "1", "--save-every", "1"]
RESUME += ["--dtype", "float32", "--resume", "--max-steps"]
PPL = ["eval", "perplexity", "--model", "{world}/tiny", "--data", "{world}/book.txt", "--device", "cpu"]
PG19 = ["eval", "pg19", "--model", "{world}/tiny", "--data", "{world}/book.txt", "--device", "cpu"]
PROOF = ["eval", "proof-pile", "--model", "{world}/tiny", "--data", "{world}/empty", "--device", "cpu"]
PASSKEY = ["eval", "passkey", "--model", "{world}/tiny", "--lengths", "128", "--device", "cpu"]
TOPICS = ["eval", "topics", "--model", "{world}/tiny", "--testcases", "{world}/longeval/topics", "--device", "cpu"]
LINES = ["eval", "lines", "--model", "{world}/tiny", "--testcases", "{world}/longeval/lines", "--device", "cpu"]
VALIDATE = ["validate", "{world}/build", "--no-recount"]
BUILD = ["build", "--source-dir", "{world}/empty"]
MERGE = ["merge", "{world}/run"]
REPORT = ["report", "{world}/run"]
OUT = ["--out", "{out}"]

# Every command that writes a folder, with the arguments it needs to get as far as writing it.
WRITERS = {
    "train": [*TRAIN],
    "sft": [*SFT, "--data", "{world}/latin1.jsonl"],
    "perplexity": PPL,
    "pg19": PG19,
    "proof-pile": PROOF,
    "passkey": PASSKEY,
    "topics": TOPICS,
    "lines": LINES,
    "build": BUILD,
    "merge": MERGE,
    "report": REPORT,
}


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append

    # usage errors: an unknown option and a value of the wrong type, for every command
    every = {
        "models": ["models"],
        "info": ["info"],
        "validate": VALIDATE,
        "train": [*TRAIN, *OUT],
        "sft": [*SFT, *OUT],
        "merge": [*MERGE, *OUT],
        "report": [*REPORT, *OUT],
        "build": [*BUILD, *OUT],
        "perplexity": [*PPL, *OUT],
        "pg19": [*PG19, *OUT],
        "proof-pile": [*PROOF, *OUT],
        "passkey": [*PASSKEY, *OUT],
        "topics": [*TOPICS, *OUT],
        "lines": [*LINES, *OUT],
    }
    for name, args in every.items():
        add(Case(f"{name}-unknown-option", [*args, "--frobnicate"], "No such option: --frobnicate"))
    for name, args, option in [
        ("info", every["info"], "--ctx"),
        ("validate", every["validate"], "--ctx"),
        ("train", every["train"], "--max-steps"),
        ("sft", every["sft"], "--batch-size"),
        ("build", every["build"], "--seed"),
        ("perplexity", every["perplexity"], "--stride"),
        ("pg19", every["pg19"], "--stride"),
        ("proof-pile", every["proof-pile"], "--num-docs"),
        ("passkey", every["passkey"], "--trials"),
        ("topics", every["topics"], "--cases"),
        ("lines", every["lines"], "--limit"),
    ]:
        add(Case(f"{name}-{option[2:]}-not-a-number", [*args, option, "lots"], f"Invalid value for '{option}'"))
    add(Case("train-lr-not-a-number", [*every["train"], "--lr", "fast"], "Invalid value for '--lr'"))
    add(Case("train-missing-ctx", ["train", "--data", "{world}/book.txt", *OUT], "Missing option '--ctx'"))
    add(Case("train-missing-out", ["train", "--data", "{world}/book.txt", "--ctx", "64"], "Missing option '--out'"))
    add(Case("merge-missing-out", MERGE, "Missing option '--out'"))
    add(Case("report-no-paths", ["report", *OUT], "Missing argument 'PATH'"))
    add(Case("validate-no-path", ["validate"], "Missing argument 'path'"))
    add(Case("lines-has-no-judge", [*every["lines"], "--judge-cmd", "python j.py"], "No such option: --judge-cmd"))
    add(Case("no-such-command", ["frobnicate"], "No such command 'frobnicate'"))
    add(Case("eval-no-such-command", ["eval", "frobnicate"], "No such command 'frobnicate'"))

    # --out (or --report) that is a file, or a place nobody can write, for every command that writes
    for name, args in WRITERS.items():
        add(Case(f"{name}-out-is-a-file", [*args, "--out", "{world}/a-file"], "a-file is a file"))
        add(Case(f"{name}-out-unwritable", [*args, "--out", "/proc/llqa-attack"], "cannot be written"))
        add(Case(f"{name}-out-below-a-file", [*args, "--out", "{world}/a-file/x"], "cannot be written"))
    add(Case("validate-report-is-a-dir", [*VALIDATE, "--report", "{world}/empty"], "--report"))
    add(Case("validate-report-unwritable", [*VALIDATE, "--report", "/proc/llqa/r.json"], "cannot be written"))

    # numbers out of range, NaN and infinity (training: every numeric option)
    for option, value, needle in [
        ("--lr", "nan", "--lr must be a number >= 0, got nan"),
        ("--lr", "inf", "--lr must be a number >= 0, got inf"),
        ("--lr", "-1e-5", "--lr must be a number >= 0"),
        ("--lora-dropout", "2", "--lora-dropout must be a number in [0, 1)"),
        ("--lora-dropout", "-0.1", "--lora-dropout must be a number in [0, 1)"),
        ("--lora-dropout", "nan", "--lora-dropout must be a number in [0, 1)"),
        ("--beta1", "1", "--beta1 must be a number in [0, 1)"),
        ("--beta2", "-0.5", "--beta2 must be a number in [0, 1)"),
        ("--beta2", "nan", "--beta2 must be a number in [0, 1)"),
        ("--weight-decay", "-1", "--weight-decay must be a number >= 0"),
        ("--weight-decay", "inf", "--weight-decay must be a number >= 0"),
        ("--warmup-steps", "-1", "--warmup-steps must be a number >= 0"),
        ("--max-steps", "0", "--max-steps must be a number > 0"),
        ("--batch-size", "0", "--batch-size must be a number > 0"),
        ("--micro-batch-size", "0", "--micro-batch-size must be a number > 0"),
        ("--max-grad-norm", "nan", "--max-grad-norm must be a number >= 0"),
        ("--max-grad-norm", "-1", "--max-grad-norm must be a number >= 0"),
        ("--loss-chunk", "0", "--loss-chunk must be a number > 0"),
        ("--save-every", "0", "--save-every must be a number > 0"),
        ("--keep-checkpoints", "0", "--keep-checkpoints must be a number > 0"),
        ("--log-every", "-2", "--log-every must be a number > 0"),
        ("--group-ratio", "0", "--group-ratio must be a number in (0, 1]"),
        ("--group-ratio", "1.5", "--group-ratio must be a number in (0, 1]"),
        ("--offload-fraction", "2", "--offload-fraction must be a number in [0, 1]"),
        ("--offload-fraction", "nan", "--offload-fraction must be a number in [0, 1]"),
        ("--lora-r", "0", "--lora-r must be a number > 0"),
        ("--lora-alpha", "-16", "--lora-alpha must be a number > 0"),
    ]:
        add(Case(f"train{option}={value}", [*TRAIN, *OUT, option, value], needle))
    for option, value, needle in [
        ("--lr", "nan", "--lr must be a number >= 0"),
        ("--lora-dropout", "2", "--lora-dropout must be a number in [0, 1)"),
        ("--max-steps", "-3", "--max-steps must be a number > 0"),
        ("--group-ratio", "nan", "--group-ratio must be a number in (0, 1]"),
    ]:
        add(Case(f"sft{option}={value}", [*SFT, "--data", "{world}/book.txt", *OUT, option, value], needle))
    for args, needle in [
        (["--ctx", "0"], "--ctx must be between 1 and"),
        (["--ctx", "-4096"], "--ctx must be between 1 and"),
    ]:
        for name in ("info", "train", "perplexity", "passkey", "topics", "lines"):
            base = {"info": ["info", "--model", "{world}/tiny"], "train": TRAIN, "perplexity": PPL}.get(name)
            base = base or {"passkey": PASSKEY, "topics": TOPICS, "lines": LINES}[name]
            tail = [] if name == "info" else OUT
            add(Case(f"{name}-ctx{args[1]}", [*base, *tail, *args], needle))
    for args, needle in [
        (["--stride", "0"], "--stride"),
        (["--batch-tokens", "0"], "--batch-tokens must be positive"),
        (["--lengths", "abc"], "--lengths abc is not a comma-separated list of integers"),
        (["--lengths", "0"], "window length 0 is too short"),
        (["--scoring", "everything"], "--scoring"),
        (["--bos", "sometimes"], "--bos"),
        (["--compile", "turbo"], "--compile turbo is not a compile mode"),
    ]:
        add(Case(f"perplexity{args[0]}={args[1]}", [*PPL, *OUT, *args], needle))
    add(Case("perplexity-max-docs-0", [*PPL, *OUT, "--max-docs", "0"], "--max-docs must be at least 1"))
    add(Case("pg19-max-docs-0", [*PG19, *OUT, "--max-docs", "0"], "--max-docs must be at least 1"))
    add(Case("info-ctx-huge", ["info", "--model", "{world}/tiny", "--ctx", "100000000000"], "--ctx must be between 1"))
    add(Case("proof-pile-num-docs-0", [*PROOF, *OUT, "--num-docs", "0"], "--num-docs must be >= 1"))
    add(Case("proof-pile-min-tokens-1", [*PROOF, *OUT, "--min-tokens", "1"], "--min-tokens >= 2"))
    add(Case("pg19-compile-bogus", [*PG19, *OUT, "--compile", "turbo"], "--compile turbo is not a compile mode"))
    for args, needle in [
        (["--trials", "0"], "--trials"),
        (["--threshold", "2"], "--threshold must lie in [0, 1]"),
        (["--threshold", "nan"], "--threshold must lie in [0, 1]"),
        (["--depths", "2"], "--depths"),
        (["--depths", "half"], "--depths half is not a comma-separated list of numbers"),
        (["--lengths", "many"], "--lengths many is not a comma-separated list of integers"),
        (["--batch-tokens", "0"], "--batch-tokens"),
        (["--chat-template", "fancy"], "--chat-template"),
        (["--overlong", "explode"], "--overlong"),
        (["--haystack", "{world}/no-such-folder"], "--haystack"),
    ]:
        add(Case(f"passkey{args[0]}={args[1].rsplit('/')[-1]}", [*PASSKEY, *OUT, *args], needle))
    for name, base in (("topics", TOPICS), ("lines", LINES)):
        for args, needle in [
            (["--cases", "0"], "--cases must be positive"),
            (["--limit", "0"], "--limit must be positive"),
            (["--limit", "-1"], "--limit must be positive"),
            (["--sizes", "0"], "--sizes must be positive"),
            (["--sizes", "ten"], "--sizes ten is not a comma-separated list of integers"),
            (["--sizes", "7"], "has no"),
            (["--chat-template", "fancy"], "--chat-template"),
            (["--overlong", "explode"], "--overlong"),
            (["--batch-tokens", "0"], "--batch-tokens"),
        ]:
            add(Case(f"{name}{args[0]}={args[1]}", [*base, *OUT, *args], needle))

    # data that cannot be read: missing, not UTF-8, not JSON, not a GGUF, an unusable cache
    add(Case("topics-testcases-latin1", [*TOPICS, *OUT, "--testcases", "{world}/testcases"], "is not UTF-8 text"))
    add(Case("lines-testcases-latin1", [*LINES, *OUT, "--testcases", "{world}/testcases"], "is not UTF-8 text"))
    add(Case("topics-testcases-missing", [*TOPICS, *OUT, "--testcases", "{world}/nope"], "--testcases"))
    add(Case("topics-testcases-empty", [*TOPICS, *OUT, "--testcases", "{world}/empty"], "holds no N_topics.jsonl"))
    add(Case("lines-testcases-empty", [*LINES, *OUT, "--testcases", "{world}/empty"], "holds no N_lines.jsonl"))
    add(
        Case(
            "topics-judge-unterminated",
            [*TOPICS, *OUT, "--judge-cmd", "python 'unterminated"],
            "cannot be split into a command",
        )
    )
    add(Case("topics-judge-empty", [*TOPICS, *OUT, "--judge-cmd", " "], "--judge-cmd is empty"))
    add(
        Case(
            "topics-conversations-missing",
            [
                *TOPICS,
                *OUT,
                "--conversations",
                "{world}/nope.jsonl",
                "--generate",
                "--sizes",
                "3",
                "--testcases",
                "{world}/empty",
            ],
            "--conversations",
        )
    )
    add(Case("sft-data-latin1", [*SFT, *OUT, "--data", "{world}/latin1.jsonl"], "is not UTF-8 text"))
    add(Case("sft-data-not-json", [*SFT, *OUT, "--data", "{world}/not-json.jsonl"], "is not valid JSON"))
    add(Case("sft-data-txt", [*SFT, *OUT, "--data", "{world}/book.txt"], "sft data must be .json or .jsonl"))
    add(Case("sft-data-missing", [*SFT, *OUT, "--data", "{world}/nope.jsonl"], "no such file or directory"))
    add(Case("sft-no-data", [*SFT, *OUT], "needs data"))
    add(Case("train-data-missing", [*TRAIN[:-4], "--data", "{world}/nope.txt", "--device", "cpu", *OUT], "nope.txt"))
    add(Case("train-data-and-dataset", [*TRAIN, *OUT, "--dataset", "org/x"], "both --data and --dataset"))
    add(Case("perplexity-data-missing", [*PPL[:4], "--data", "{world}/nope.txt", *OUT], "nope.txt"))
    add(Case("perplexity-data-latin1", [*PPL[:4], "--data", "{world}/latin1.txt", *OUT], "UTF-8"))
    add(Case("perplexity-data-empty-folder", [*PPL[:4], "--data", "{world}/empty", *OUT], "empty"))
    for name, base in (("info", ["info"]), ("perplexity", [*PPL[:2], "--data", "{world}/book.txt", *OUT])):
        add(Case(f"{name}-model-not-gguf", [*base, "--model", "{world}/bad.gguf"], "is not a GGUF file"))
        add(Case(f"{name}-model-unknown", [*base, "--model", "gpt-17"], "unknown model 'gpt-17'"))
        add(Case(f"{name}-model-missing-path", [*base, "--model", "./no/such/dir"], "no such file or directory"))
        add(Case(f"{name}-model-random-huge", [*base, "--model", "random:huge"], "unknown random shape"))
        add(Case(f"{name}-model-text-file", [*base, "--model", "{world}/book.txt"], "a file must be a .gguf model"))
        add(Case(f"{name}-model-empty-dir", [*base, "--model", "{world}/empty"], "directory has no config.json"))
    add(Case("info-env-gguf-not-gguf", ["info"], "is not a GGUF file", env={"LLQA_SMOLLM2_GGUF": "{world}/bad.gguf"}))
    add(Case("info-env-gguf-missing", ["info"], "no such file", env={"LLQA_SMOLLM2_GGUF": "{world}/nope.gguf"}))
    add(
        Case(
            "info-cache-is-a-file",
            ["info", "--model", "{case}/copy.gguf"],
            "GGUF cache",
            env={"LLQA_CACHE": "{world}/a-file"},
            setup="fresh_gguf",
        )
    )
    add(
        Case(
            "info-cache-unwritable",
            ["info", "--model", "{case}/copy.gguf"],
            "GGUF cache",
            env={"LLQA_CACHE": "/proc/llqa-cache"},
            setup="fresh_gguf",
        )
    )
    add(Case("info-dtype", ["info", "--model", "{world}/tiny", "--dtype", "int3"], "--dtype"))
    add(Case("info-device", ["info", "--model", "{world}/tiny", "--device", "tpu"], "--device"))

    # training: bad choices, runs that would mix, resumes that cannot continue
    for option, value in [
        ("--method", "qlora"),
        ("--attn", "flash"),
        ("--parallel", "mpi"),
        ("--sdpa-backend", "fastest"),
        ("--s2-backend", "fastest"),
        ("--compile", "turbo"),
        ("--dtype", "float16"),
    ]:
        add(Case(f"train{option}={value}", [*TRAIN, *OUT, option, value], option))
    add(Case("sft-template", [*SFT, "--data", "{world}/latin1.jsonl", *OUT, "--template", "xml"], "--template xml"))
    add(Case("train-s2-ctx", [*TRAIN[:4], "100", *TRAIN[5:], *OUT], "multiple of 8"))
    add(Case("train-s2-varlen-on-cpu", [*TRAIN, *OUT, "--s2-backend", "varlen"], "runs on CUDA"))
    add(Case("train-micro-batch", [*TRAIN, *OUT, "--batch-size", "3", "--micro-batch-size", "2"], "not a multiple"))
    add(Case("train-on-an-adapter", [*TRAIN[:2], "{world}/adapter-only", *TRAIN[3:], *OUT], "is a LoRA adapter"))
    add(Case("train-into-a-run", [*TRAIN, "--out", "{world}/run"], "already holds a training run"))
    add(Case("train-resume-nothing", [*TRAIN, "--resume", *OUT], "holds no training run"))
    add(Case("train-resume-other-options", [*TRAIN, "--resume", "--out", "{world}/run"], "the options differ"))
    add(
        Case(
            "train-resume-past-max-steps",
            [*RESUME, "1", "--out", "{world}/run"],
            "has already done 2 steps",
        )
    )
    for what, file in [
        ("trainable", "trainable.safetensors"),
        ("optimizer", "optimizer.pt"),
        ("state", "state.json"),
        ("rng", "rng.pt"),
    ]:
        add(
            Case(
                f"train-resume-damaged-{what}",
                [*RESUME, "2", "--out", "{case}/run"],
                f"{file} is damaged",
                setup=f"damaged_{what}",
            )
        )

    # merge: outputs that would destroy the run, damaged runs
    add(Case("merge-into-the-run", [*MERGE, "--out", "{world}/run", "--overwrite"], "is the run"))
    add(Case("merge-inside-the-run", [*MERGE, "--out", "{world}/run/merged"], "lies inside the run"))
    add(Case("merge-around-the-run", [*MERGE, "--out", "{world}", "--overwrite"], "contains the run"))
    add(Case("merge-out-not-empty", [*MERGE, "--out", "{world}/mine"], "exists and is not empty"))
    add(Case("merge-not-a-run", ["merge", "{world}/empty", *OUT], "is not an llqa training run"))
    add(Case("merge-missing-run", ["merge", "{world}/nope", *OUT], "is not an llqa training run"))
    for what, file in [
        ("adapter", "adapter_model.safetensors"),
        ("adapter_config", "adapter_config.json"),
        ("run_file", "llqa_model.json"),
    ]:
        add(Case(f"merge-damaged-{what}", ["merge", "{case}/run", *OUT], f"{file} is damaged", setup=f"damaged_{what}"))
    add(Case("merge-dtype", [*MERGE, *OUT, "--dtype", "int3"], "--dtype"))

    # build and validate
    add(Case("build-into-a-foreign-folder", [*BUILD, "--out", "{world}/mine", "--overwrite"], "not an llqa build"))
    add(Case("build-over-a-build", [*BUILD, "--out", "{world}/build"], "already holds a build"))
    add(Case("build-recipe-missing", [*BUILD, *OUT, "--recipe", "no-such-recipe"], "no-such-recipe"))
    add(Case("build-recipe-broken", [*BUILD, *OUT, "--recipe", "{world}/broken.toml"], "broken.toml"))
    add(Case("validate-missing", ["validate", "{world}/nope"], "nope"))
    add(Case("validate-ctx-0", [*VALIDATE, "--ctx", "0"], "--ctx must be between 1 and"))
    add(Case("validate-show-negative", [*VALIDATE, "--show", "-1"], "--show"))
    add(Case("passkey-zero-new-tokens", [*PASSKEY, *OUT, "--max-new-tokens", "0"], "--max-new-tokens"))
    ruler = ["eval", "ruler", "--model", "{world}/tiny", "--device", "cpu", *OUT]
    add(Case("ruler-lengths-not-numbers", [*ruler, "--lengths", "4k"], "--lengths 4k"))
    add(Case("ruler-haystack-missing", [*ruler, "--lengths", "4096", "--haystack", "{world}/nope"], "--haystack"))
    add(Case("ruler-threshold-out-of-range", [*ruler, "--lengths", "4096", "--threshold", "150"], "--threshold"))
    add(Case("ruler-unknown-task", [*ruler, "--lengths", "4096", "--tasks", "nosuch"], "--tasks"))
    longqa = ["eval", "longqa", "--model", "{world}/tiny", "--device", "cpu", *OUT]
    add(Case("longqa-build-missing", [*longqa, "{world}/nope"], "no such LongQA build"))
    add(Case("longqa-not-a-build", [*longqa, "{world}/empty"], "holds no test.jsonl"))

    # report
    add(Case("report-missing-path", ["report", "{world}/nope", *OUT], "nope"))
    add(Case("report-bad-name", [*REPORT, *OUT, "--name", "no-equals-sign"], "--name"))
    return c


CASES = _cases()


def fresh_gguf(case_dir: Path, world: Path) -> None:
    (case_dir / "copy.gguf").write_bytes(b"GGUF" + os.urandom(32))  # never seen by any cache


for _what in ("trainable", "optimizer", "state", "rng", "adapter", "adapter_config", "run_file"):
    globals()[f"damaged_{_what}"] = lambda case_dir, world, _w=_what: damaged_run(case_dir, world, _w)


def test_there_are_enough_cases_and_every_command_is_attacked():
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.args[0] if c.args[0] != "eval" else c.args[1] for c in CASES}
    assert commands >= {"models", "info", "validate", "train", "sft", "merge", "report", "build"}
    assert commands >= {"perplexity", "pg19", "proof-pile", "passkey", "topics", "lines", "ruler", "longqa"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_clear_line(case, world, tmp_path, capsys, monkeypatch):
    case_dir = world / "cases" / case.id
    case_dir.mkdir(parents=True)
    try:
        if case.setup:
            globals()[case.setup](case_dir, world)
        run_config = json.loads((world / "run" / "train_config.json").read_text())["config"]
        places = {
            "{world}": str(world),
            "{case}": str(case_dir),
            "{out}": str(case_dir / "out"),
            "{run_model}": run_config["model"],
            "{run_data}": run_config["data"][0],
        }

        def fill(s: str) -> str:
            for k, v in places.items():
                s = s.replace(k, v)
            return s

        args = [fill(a) for a in case.args]
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None  # inside it, anything goes

        for k, v in case.env.items():
            monkeypatch.setenv(k, fill(v))
        monkeypatch.chdir(case_dir)
        before = _snapshot(world, skip=out)
        code, stdout, stderr = llqa_call(capsys, *args)
        assert code != 0, (stdout, stderr)
        assert "Traceback" not in stdout + stderr, stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and not stdout.strip(), (stdout, stderr)
        line = lines[0]
        assert line.startswith("error:"), line
        assert fill(case.needle) in line, line
        assert " — " in line and line.split(" — ", 1)[1].strip(), f"no fix named: {line}"
        assert _snapshot(world, skip=out) == before, "a file outside --out changed"
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)


def test_a_second_eval_into_a_busy_out_names_the_holder(world, tmp_path, capsys):
    from llqa.io import OutLock

    out = tmp_path / "busy"
    with OutLock(out):
        code, stdout, stderr = llqa_call(capsys, *PASSKEY, "--out", str(out))
    assert code == 2 and f"PID {os.getpid()}" in stderr and "in use by another llqa run" in stderr


def test_ctrl_c_on_an_eval_prints_the_interrupted_line(world, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("llqa.models.load_model", interrupted)
    code, stdout, stderr = llqa_call(capsys, *PASSKEY, "--out", str(tmp_path / "pk"))
    assert code == 130 and "interrupted" in stderr and "resume" in stderr and "Traceback" not in stderr


def test_the_world_is_what_the_cases_expect(world):
    assert json.loads((world / "run" / "llqa_model.json").read_text())["steps"] == 2
