"""Range checks for numeric options: one rule, one message, used by every config that takes numbers.

`check_range("--lr", 2e-5, low=0, low_open=True)` returns the value or raises `LlqaError` with one line naming
the option, the allowed range and an example. NaN and infinities are refused everywhere: no option of llqa
means anything at them, and NaN passes every `<`/`>` test, so a plain `if x < 0` would let it through.
"""

from __future__ import annotations

import math

from llqa.errors import LlqaError


def _interval(low, high, low_open, high_open) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(
    option: str,
    value: float | int | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: str | None = None,
):
    """`value` if it is a finite number within the bounds (None passes: an unset option); else one `LlqaError`."""
    if value is None:
        return value
    inside = math.isfinite(value)
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        rule = (
            "a finite number"
            if low is None and high is None
            else f"a number {_interval(low, high, low_open, high_open)}"
        )
        raise LlqaError(f"{option} must be {rule}, got {value}", f"e.g. {option} {example}" if example else None)
    return value
