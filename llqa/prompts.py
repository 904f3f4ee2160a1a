"""How an instruction item (LongAlpaca / LongQA: `instruction`, optional `input`, `output`) becomes a prompt.

One definition for the two places that must agree: `llqa sft` trains on these prompts (`trainer.data`) and
`llqa eval longqa` asks them (`evals.longqa`), so a model is scored on exactly the prompt format it was
fine-tuned on.

The prompt is the instruction in the model's chat template (one user turn + the generation prompt) or
LongLoRA's `[INST]{instruction}[/INST]` (with the tokenizer's BOS); the answer is the output followed by the
template's end of turn (chat) or EOS (inst). An instruction too long for the context loses its middle: its
first ceil(room / 2) and last floor(room / 2) tokens are kept (LongBench's rule), so a question at either
end survives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llqa.errors import LlqaError

IGNORE_INDEX = -100
TEMPLATES = ("auto", "chat", "inst")


def sft_instruction(rec: Any, where: str) -> tuple[str, str]:
    """(instruction, output) of one record, with a clear error for missing or empty fields."""
    if not isinstance(rec, dict):
        raise LlqaError(f"{where}: a record must be a JSON object", 'use {"instruction": ..., "output": ...}')
    missing = [k for k in ("instruction", "output") if not isinstance(rec.get(k), str) or not rec[k].strip()]
    if missing:
        raise LlqaError(
            f"{where}: missing or empty field(s) {', '.join(missing)}",
            "every sft item needs non-empty 'instruction' and 'output' strings",
        )
    instruction = rec["instruction"]
    if isinstance(rec.get("input"), str) and rec["input"].strip():
        instruction = f"{instruction}\n\n{rec['input']}"
    return instruction, rec["output"]


def middle_cut(ids: list[int], room: int) -> list[int]:
    """The first ceil(room / 2) and last floor(room / 2) of `ids` when longer than `room`, else `ids`."""
    if len(ids) <= room:
        return ids
    return ids[: room - room // 2] + ids[len(ids) - room // 2 :] if room // 2 else ids[:room]


class PromptTemplate:
    """Token pieces around an instruction: prefix + instruction + suffix = prompt; answer + end = target."""

    def __init__(self, tokenizer, template: str):
        if template not in TEMPLATES:
            raise LlqaError(f"--template {template} is not a template", "use auto, chat or inst")
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise LlqaError("--template chat: the tokenizer has no chat template", "use --template inst or auto")
        self.kind = "chat" if template == "chat" or (template == "auto" and has_chat) else "inst"
        self.tokenizer = tokenizer
        marker = "\u2063INSTRUCTION\u2063"  # invisible separators: never produced by real text
        if self.kind == "chat":
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
            )
            full = tokenizer.apply_chat_template(
                [{"role": "user", "content": marker}, {"role": "assistant", "content": "\u2063ANSWER\u2063"}],
                tokenize=False,
            )
            if not full.startswith(prompt) or "\u2063ANSWER\u2063" not in full:
                raise LlqaError(
                    "the chat template does not render a prompt that the answer continues", "use --template inst"
                )
            prefix, suffix = prompt.split(marker)
            end = full[len(prompt) :].split("\u2063ANSWER\u2063", 1)[1]
            self.prefix = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            self.end = tokenizer(end.rstrip("\n"), add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        else:
            suffix = "[/INST]"
            self.prefix = tokenizer("[INST]", add_special_tokens=True)["input_ids"]
            self.end = [tokenizer.eos_token_id]
        self.suffix = tokenizer(suffix, add_special_tokens=False)["input_ids"]

    def prompt(self, instruction: str, ctx: int, reserve: int) -> tuple[list[int], bool] | None:
        """(prompt ids, whether the instruction lost its middle) such that the prompt plus `reserve` tokens
        (the answer to train on, or the tokens to generate) fit in `ctx`; None when the template and
        `reserve` alone leave no room for the instruction."""
        instr = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        room = ctx - len(self.prefix) - len(self.suffix) - reserve
        if room < 1:
            return None
        kept = middle_cut(instr, room)
        return [*self.prefix, *kept, *self.suffix], len(kept) < len(instr)

    def encode(self, instruction: str, output: str, ctx: int) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(input_ids, labels, 'ok'|'truncated') or None when the answer alone does not fit in ctx."""
        answer = self.tokenizer(output, add_special_tokens=False)["input_ids"] + self.end
        framed = self.prompt(instruction, ctx, len(answer))
        if framed is None:
            return None
        prompt, truncated = framed
        ids = np.asarray(prompt + answer, dtype=np.int64)
        labels = ids.copy()
        labels[: len(prompt)] = IGNORE_INDEX
        return ids, labels, "truncated" if truncated else "ok"
