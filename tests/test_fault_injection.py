"""Preemption, for real: `main.py --mode train` is killed with SIGKILL during start-up and at
seeded random steps (placed by the run's progress, not the clock), then started again on the
same workdir, until it completes. Every restart resumes, loses at most one preemption interval,
and the finished run (model, EMA, optimizer, step, data order, RNG states, and the logged
losses) is bitwise equal to a run that was never interrupted."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from sde_diffusion.files import checkpoints
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
N_ITERS, PREEMPTION_FREQ = 300, 20
ARGS = ["--config=configs/vp_toy.py", "--mode=train", "--config.data.dataset=gmm",
        f"--config.training.n_iters={N_ITERS}", f"--config.training.snapshot_freq_for_preemption={PREEMPTION_FREQ}",
        "--config.training.snapshot_freq=100", "--config.training.log_freq=1", "--config.training.eval_freq=50",
        "--config.training.snapshot_sampling=False", "--config.training.batch_size=64",
        "--config.data.num_points=1000", "--config.model.width=32", "--config.model.num_blocks=1"]


def start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged(workdir: Path) -> list:
    """The complete lines of metrics.jsonl (a kill can cut the last one short)."""
    path = workdir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def last_logged_step(workdir: Path) -> int:
    return max((record["step"] for record in logged(workdir)), default=0)


def kill(process: subprocess.Popen) -> bool:
    """SIGKILL, no chance to clean up; False if the run had already finished."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def wait_for_step(process: subprocess.Popen, workdir: Path, step: int, deadline_s: float = HANG_TIMEOUT_S) -> None:
    """Until the run has logged `step` (or ended). The deadline only turns a hung run into a
    failure instead of a hung suite; it is far beyond the run's time on a loaded machine."""
    give_up = time.monotonic() + deadline_s
    while process.poll() is None and last_logged_step(workdir) < step:
        assert time.monotonic() < give_up, f"no step {step} after {deadline_s} s"
        time.sleep(0.01)


def assert_same_state(mine: dict, theirs: dict) -> None:
    assert mine["step"] == theirs["step"] and mine["data_stream"] == theirs["data_stream"]
    assert mine["skipped_steps"] == theirs["skipped_steps"]
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), key
    for a, b in zip(mine["ema"]["shadow_params"], theirs["ema"]["shadow_params"], strict=True):
        assert torch.equal(a, b)
    assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    for index, state in theirs["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(mine["optimizer"]["state"][index][key], value), (index, key)
    for key in ("torch", "generator"):
        assert torch.equal(mine["rng"][key], theirs["rng"][key]), key


def test_sigkilled_training_resumes_and_ends_bitwise_equal(tmp_path):
    straight = tmp_path / "straight"
    finished = start(straight)
    assert finished.wait(timeout=HANG_TIMEOUT_S) == 0, finished.stderr.read()[-2000:]

    rng = random.Random(6)
    workdir = tmp_path / "killed"
    # Every kill is placed by the run's own progress (steps logged), never by the clock, so the
    # test means the same on an idle and on a loaded machine. First a kill during start-up:
    # right after the process starts, while the interpreter is still importing.
    process = start(workdir)
    assert kill(process), "the run finished before it could be killed at start-up"
    state = checkpoints.latest_checkpoint(workdir) if workdir.exists() else None
    startup = (last_logged_step(workdir), state["step"] if state else 0)
    resumes = []  # (last step logged before the kill, step the next start resumes from)
    for trial in range(4):
        process = start(workdir)
        if trial == 0:  # any step of the first two preemption intervals
            target = 1 + rng.randrange(2 * PREEMPTION_FREQ)
        else:  # some steps past the first checkpoint this start writes
            # logging step s + 1 comes after saving the checkpoint of step s
            target = last_logged_step(workdir) + PREEMPTION_FREQ + 1 + rng.randrange(2 * PREEMPTION_FREQ)
        wait_for_step(process, workdir, min(target, N_ITERS - 5))
        assert kill(process), f"trial {trial}: the run finished before it could be killed"
        state = checkpoints.latest_checkpoint(workdir) if workdir.exists() else None
        resumes.append((last_logged_step(workdir), state["step"] if state else 0))
    finished = start(workdir)
    assert finished.wait(timeout=HANG_TIMEOUT_S) == 0, finished.stderr.read()[-2000:]

    print("(last step logged before the kill, step resumed from):", startup, resumes)
    for last_logged, resumed_from in [startup, *resumes]:  # at most one preemption interval lost per kill
        assert 0 <= last_logged - resumed_from <= PREEMPTION_FREQ, resumes
    assert len({resumed for _, resumed in resumes[1:]}) == 3, resumes  # every later trial got further
    assert checkpoints.snapshot_steps(workdir) == checkpoints.snapshot_steps(straight) == [100, 200, 300]
    for step in (100, 200, 300):
        assert_same_state(checkpoints.load_checkpoint(checkpoints.snapshot_path(workdir, step)),
                          checkpoints.load_checkpoint(checkpoints.snapshot_path(straight, step)))
    assert_same_state(checkpoints.load_checkpoint(checkpoints.preemption_path(workdir)),
                      checkpoints.load_checkpoint(checkpoints.preemption_path(straight)))
    # metrics.jsonl: every step once, in order, with the uninterrupted run's losses
    without_timing = lambda records: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]  # noqa: E731
    assert without_timing(logged(workdir)) == without_timing(logged(straight))
