"""What a long run says while it runs: a tqdm bar on a terminal, log lines everywhere else.

tqdm draws nothing useful into a file or a pipe (nohup, a scheduler, CI, `| tee`), so when
stdout is not a terminal the progress goes out as absl log lines instead: one when at least
`every` units were done since the last line and at least `seconds` have passed, whichever
comes later, so a fast run does not flood its log and a slow one still reports every interval.
"""
from __future__ import annotations

import sys
import time

import torch
from absl import logging
from tqdm import tqdm

from . import cpu_share


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


class Progress:
    """Progress of `total` units of work named `what`, starting at `initial` done.

    `update(done, **fields)` after each unit (done = units finished so far, fields = values to
    show, e.g. loss). Quiet (`enabled=False`) on the processes other than rank 0."""

    def __init__(self, what: str, total: int, initial: int = 0, unit: str = "step", every: int = 1,
                 seconds: float = 30.0, enabled: bool = True):
        self.what, self.total, self.unit = what, total, unit
        self.every, self.seconds, self.enabled = max(int(every), 1), float(seconds), enabled
        self.start_time = self.last_time = time.perf_counter()
        self.initial = self.last_done = initial
        self.fields = {}
        self.bar = None
        if enabled and stdout_is_terminal():
            self.bar = tqdm(total=total, initial=initial, desc=what, dynamic_ncols=True, mininterval=1.0)

    def rate(self, done: int) -> float:
        """Units per second since the start (of this process's share of the work)."""
        return (done - self.initial) / max(time.perf_counter() - self.start_time, 1e-9)

    def tick(self, done: int) -> None:
        """Moves the bar only: for units between those `update` reports (a log line there would
        show stale values)."""
        cpu_share.adapt()
        if self.enabled and self.bar is not None:
            self.bar.update(done - self.bar.n)

    def update(self, done: int, **fields) -> None:
        """`done` units finished; `fields` (e.g. loss) are shown from now on until updated."""
        cpu_share.adapt()  # every unit of every long phase passes here
        if not self.enabled:
            return
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if fields:
                self.bar.set_postfix({name: _shown(value) for name, value in self.fields.items()}, refresh=False)
            return
        now = time.perf_counter()
        if done == self.last_done or done < self.total and (done - self.last_done < self.every
                                                            or now - self.last_time < self.seconds):
            return
        self.last_time, self.last_done = now, done
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = "".join(f", {name} {_shown(value)}" for name, value in self.fields.items())
        logging.info("%s: %s %d/%d%s, %.3g %ss/s, ETA %s", self.what, self.unit, done, self.total, shown, rate,
                     self.unit, _duration(eta) if eta != float("inf") else "unknown")

    def close(self) -> float:
        """Ends the bar; returns the seconds since the start."""
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start_time


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def say(message: str, *args) -> None:
    """One line about what runs or what came of it (absl's log: stderr, with a timestamp)."""
    logging.info(message, *args)


def announce(what: str, config_file: str, workdir, device, details: str) -> None:
    """The line a run starts with: what runs, from which config, where, on what (and, under
    torchrun, on how many processes: the threads are each one's)."""
    from ..training import distributed

    processes = distributed.world_size()
    say("%s %s in %s: %s%s, %d threads, %s", what, config_file or "(config)", workdir, device,
        f" x {processes} processes (torchrun)" if processes > 1 else "", torch.get_num_threads(), details)
