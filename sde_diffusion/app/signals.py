"""Clean stops: SIGTERM (what schedulers and `kill` send), SIGINT (Ctrl-C) and SIGHUP (a closed
terminal or ssh session) during training end the current step, save the resume checkpoint and
exit with 128 + the signal's number (143, 130, 129), the status schedulers read as "terminated
by that signal".

The handlers only record the signal; the trainer looks at it between steps (`StopRequest`), so a
signal never interrupts a half-done optimizer step or checkpoint write, and a second signal
while the checkpoint is being saved changes nothing. Once a stop was recorded the signals stay
ignored after the trainer returns (`StoppedBySignal.restore_handlers` puts the previous handlers
back for a caller that carries on): a second Ctrl-C while the process exits would otherwise
raise KeyboardInterrupt inside an exit callback and print a traceback after the saved stop.

The other modes have nothing to save on the way out: `interrupted_by_signals` turns SIGTERM,
SIGINT and SIGHUP into `Interrupted` (a KeyboardInterrupt, as Ctrl-C's is), so the temporary
files of the outputs being written are removed on the way out (`output_files.atomic_write`) and
main.py exits with 143 / 130 / 129 in one line.
"""
from __future__ import annotations

import signal
import threading
from typing import Optional

import torch

from ..training import distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StoppedBySignal(Exception):
    """Training saved its state and stopped because of a signal."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.previous_handlers: dict = {}  # set by StopRequest on its way out
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; resume with the same command")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def restore_handlers(self) -> None:
        """Put back the handlers that were active before training (they stay ignored otherwise)."""
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}


def _install(handler) -> dict:
    """`handler` for every stop signal; the handlers it replaced (none off the main thread, where
    Python cannot set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in SIGNALS}


class StopRequest:
    """Context manager recording SIGTERM/SIGINT/SIGHUP while it is active. At exit the previous
    handlers come back, unless the exit is a StoppedBySignal: then the signals stay ignored
    (module docstring). Outside the main thread signals cannot be caught; it then records nothing."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        self._previous = _install(self._record)
        return self

    def on_any_rank(self, device) -> bool:
        """Whether this process or (under torchrun) any other recorded a signal: every rank asks
        at the same point, so that all stop there together."""
        if not distributed.active():
            return self.signum is not None
        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=device)
        return bool(distributed.mean_over_ranks(flag).item() > 0)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if isinstance(exc, StoppedBySignal) and self._previous:
            for signum in self._previous:
                signal.signal(signum, signal.SIG_IGN)
            exc.previous_handlers = dict(self._previous)
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous.clear()


class Interrupted(KeyboardInterrupt):
    """A stop signal outside training, raised where the program was (as Ctrl-C's KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class interrupted_by_signals:  # noqa: N801 - used as a `with` statement, like contextlib's
    """While active, SIGTERM, SIGINT and SIGHUP raise `Interrupted`; the first makes every later
    one ignored, so cleaning up is never cut short. The previous handlers come back at exit
    unless a signal arrived (the process is then ending)."""

    def __init__(self):
        self._previous = {}

    def _raise(self, signum, frame) -> None:
        self._ignore_all()
        raise Interrupted(signum)

    def _ignore_all(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def __enter__(self) -> "interrupted_by_signals":
        self._previous = _install(self._raise)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if isinstance(exc, KeyboardInterrupt) and self._previous:
            self._ignore_all()
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous.clear()
