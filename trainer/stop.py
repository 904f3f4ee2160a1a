"""Stopping a training run on request without losing work.

SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption notice, `timeout`, torchrun passing its own signal on)
does not kill the run mid-step. The step in flight finishes, the loop writes a checkpoint at that step, and the
run ends with `TrainingInterrupted`. The same command with `--resume` then continues from exactly that step.
A second signal stops at once, as Python would have without this handler, losing the steps since the
last checkpoint.

Under torchrun every rank gets the signal at a slightly different moment, so the loop decides to stop from the
maximum of every rank's flag (`trainer.loop`): all ranks stop after the same step and write one checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from llqa.errors import LlqaError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(LlqaError):
    """The run stopped on SIGINT/SIGTERM after a step, with a checkpoint at that step."""

    label = "stopped"

    def __init__(self, signum: int, step: int, checkpoint: str, resume: str):
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: training stopped after step {step}, checkpoint {checkpoint}",
            f"continue with the same command and {resume}",
        )
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopRequest:
    """While active (a context manager), SIGINT/SIGTERM set `signum` instead of interrupting the process.

    Only the main thread can own signal handlers; elsewhere (a test runner's worker thread) this is inert and
    signals keep their usual effect."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: stop now, the way the process would have stopped before
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(
            f"llqa: {signal.Signals(signum).name} received; finishing this step and writing a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
