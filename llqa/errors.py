"""The one error type for user mistakes.

Library code raises `LlqaError(what, fix)`; the CLI prints it as one line and exits with code 2 (or the
subclass's own code).
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlqaError(Exception):
    """A problem the user can fix: bad input, missing data, no network. Never a bug in llqa.

    A subclass for an ending that is not a mistake (a run stopped on request) changes the CLI's `label` and
    `exit_code`."""

    label = "error"
    exit_code = 2

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what
