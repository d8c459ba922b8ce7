"""Clean stops: SIGTERM (what schedulers and `kill` send) and SIGINT (Ctrl-C) during training
end the current step, save the resume checkpoint and exit with 128 + the signal's number (143,
130), the status schedulers read as "terminated by that signal".

The handlers only record the signal; the trainer looks at it between steps (`StopRequest`), so a
signal never interrupts a half-done optimizer step or checkpoint write, and a second signal
while the checkpoint is being saved changes nothing.
"""
from __future__ import annotations

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(Exception):
    """Training saved its state and stopped because of a signal."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; resume with the same command")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Context manager recording SIGTERM/SIGINT while it is active (the previous handlers come
    back at exit). Outside the main thread signals cannot be caught; it then records nothing."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
