"""torch's CPU threads fitted to the cores other processes leave free (`config.threads = 0`).

torch starts one intra-op thread per core, and its OpenMP threads spin while they wait for each
other. Beside another busy process that is the worst case: a thread that lost its core holds up
the others at every barrier while they spin, and a toy training run beside one two-thread job
went 9x slower instead of 2x (docs/threads.md). Spinning less does not fix it without slowing
the idle machine, and one thread would cost a third of the idle speed; so the thread count
follows the machine: every few seconds the other processes' CPU time on the cores this process
may use (Linux's /proc/stat, less this process's own time) says how many cores they keep busy,
and torch gets the rest (at least one). Where /proc/stat is missing the count stays at the
number of usable cores. A set `config.threads`, or OMP_NUM_THREADS in the environment, turns all
this off (torch then keeps that count).

Results of convolution networks differ in the last bits between thread counts (the toy MLP's do
not): a run that must repeat bit for bit on a busy machine sets `config.threads`.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from absl import logging

CHECK_SECONDS = 2.0    # how often the count is reconsidered (the first time after 1 s)
SPARE_CORE = 0.25      # others' load below k + 0.75 cores still leaves core k + 1 to us
_state: Optional["_Share"] = None


def _busy_seconds(cores: List[int]) -> Optional[float]:
    """CPU seconds spent busy on `cores` since boot (/proc/stat), or None where unreadable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    wanted, busy = {f"cpu{core}" for core in cores}, 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal (guest time is inside user already)
            values = [int(value) for value in fields[1:9]]
            busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # less idle and iowait
    return busy / ticks


def usable_cores() -> List[int]:
    """The cores this process may run on (its affinity; every core where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def threads_for(others: float, cores: int) -> int:
    """Threads for this process when other processes keep `others` of its `cores` busy."""
    return max(1, min(cores, cores - math.floor(others + SPARE_CORE)))


class _Share:
    def __init__(self, cores: List[int]):
        self.cores = cores
        self.last: Tuple[float, float, float] = self._reading()
        self.next_check = self.last[0] + 1.0

    def _reading(self) -> Tuple[float, float, float]:
        return time.monotonic(), _busy_seconds(self.cores), time.process_time()

    def adapt(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        reading = self._reading()
        if reading[1] is None:  # /proc/stat unreadable now: keep the count, try again later
            self.next_check = now + CHECK_SECONDS
            return
        wall, busy, own = (after - before for after, before in zip(reading, self.last))
        self.last, self.next_check = reading, now + CHECK_SECONDS
        others = max(busy - own, 0.0) / max(wall, 1e-9)
        threads = threads_for(others, len(self.cores))
        if threads != torch.get_num_threads():
            logging.info("threads: %d -> %d (other processes keep %.1f of %d cores busy)",
                         torch.get_num_threads(), threads, others, len(self.cores))
            torch.set_num_threads(threads)


def start() -> None:
    """torch's threads = the usable cores, then fitted to what other processes leave free at
    each `adapt()` (where /proc/stat can be read); nothing where OMP_NUM_THREADS is set."""
    global _state
    _state = None
    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = usable_cores()
    torch.set_num_threads(len(cores))
    _state = _Share(cores) if _busy_seconds(cores) is not None else None


def adapt() -> None:
    """Reconsider the thread count if `start()` turned fitting on and the last check is a few
    seconds old; cheap enough to call after every step."""
    if _state is not None:
        _state.adapt()
