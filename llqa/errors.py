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

    def __reduce__(self):
        # pickled whole (its fix and any subclass attributes), not rebuilt from `args` alone: an error raised
        # in a worker process (RULER's cases are built in forked workers) reaches the user as it was raised
        return _rebuilt, (type(self), self.what, dict(self.__dict__))


def _rebuilt(cls: type[LlqaError], what: str, state: dict) -> LlqaError:
    error = cls.__new__(cls)
    Exception.__init__(error, what)
    error.__dict__.update(state)
    return error
