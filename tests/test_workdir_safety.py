"""One workdir, one writer, one history, with real processes: a second trainer on a busy workdir
is refused while the first is unaffected; a sampler may read beside a trainer; SIGTERM and
SIGINT at seeded moments save, exit 143 / 130 and resume to a run bitwise equal to one never
interrupted; what an interrupted checkpoint write left is removed on the next start."""
import fcntl
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import HANG_TIMEOUT_S
from sde_diffusion.files import checkpoints
from sde_diffusion.app import workdir_lock as lock_module
from sde_diffusion.app.workdir_lock import LOCK_NAME, WorkdirBusyError, WorkdirLock
from test_fault_injection import (ARGS, N_ITERS, PREEMPTION_FREQ, ROOT, assert_same_state, last_logged_step,
                                  logged, start, wait_for_step)


def without_timing(records):
    return [{key: value for key, value in record.items() if key != "steps_per_s"} for record in records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A run never interrupted, the reference every test compares with."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    process = start(workdir)
    assert process.wait(timeout=HANG_TIMEOUT_S) == 0, process.stderr.read()[-2000:]
    return workdir


def assert_same_run(workdir: Path, straight: Path) -> None:
    assert checkpoints.snapshot_steps(workdir) == checkpoints.snapshot_steps(straight)
    for step in checkpoints.snapshot_steps(straight):
        assert_same_state(checkpoints.load_checkpoint(checkpoints.snapshot_path(workdir, step)),
                          checkpoints.load_checkpoint(checkpoints.snapshot_path(straight, step)))
    assert_same_state(checkpoints.load_checkpoint(checkpoints.preemption_path(workdir)),
                      checkpoints.load_checkpoint(checkpoints.preemption_path(straight)))
    assert without_timing(logged(workdir)) == without_timing(logged(straight))


def leftovers(workdir: Path) -> list:
    return sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*")
                  if path.name.endswith(".tmp") or path.name == LOCK_NAME)


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir):
        assert (workdir / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
            WorkdirLock(workdir).acquire()
    assert not workdir.exists()  # created by the lock, left empty: removed again
    workdir.mkdir()
    with WorkdirLock(workdir):
        pass
    assert workdir.is_dir() and not any(workdir.iterdir())  # an existing folder stays, without the lock file


def test_a_run_refused_before_the_holder_wrote_its_pid_still_names_it(tmp_path, monkeypatch):
    """The window CI hit: the holder has the flock but is descheduled before writing its pid."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    handle = os.open(workdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    late_write = threading.Timer(0.3, lambda: os.write(handle, b"4242\n"))
    late_write.start()
    try:
        with pytest.raises(WorkdirBusyError, match="pid 4242,"):
            WorkdirLock(workdir).acquire()
    finally:
        late_write.join()
        os.close(handle)
    monkeypatch.setattr(lock_module, "PID_PATIENCE_S", 0.05)
    handle = os.open(workdir / LOCK_NAME, os.O_RDWR | os.O_TRUNC)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(WorkdirBusyError, match="pid unknown"):  # a holder that never writes, after the wait
            WorkdirLock(workdir).acquire()
    finally:
        os.close(handle)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                               "from sde_diffusion.app.workdir_lock import WorkdirLock;"
                               f"lock = WorkdirLock({str(workdir)!r}).acquire(); print('held', flush=True);"
                               "time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
        WorkdirLock(workdir).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (workdir / LOCK_NAME).exists()  # the file stays behind, but nobody holds it
    with WorkdirLock(workdir):
        pass


def test_second_trainer_is_refused_and_the_first_is_unaffected(tmp_path, straight):
    workdir = tmp_path / "run"
    first = start(workdir)
    wait_for_step(first, workdir, 2 * PREEMPTION_FREQ + 1)  # a checkpoint exists: a reader can start
    # Paused, so that it surely holds the workdir while the others start, on any machine's speed;
    # a paused process keeps its lock as a busy one does.
    first.send_signal(signal.SIGSTOP)
    assert first.poll() is None, "the first run ended before the second could start"
    second = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *ARGS, "--config.optim.lr=1e-3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    # a reader writes only its own new files and may run beside the trainer
    reader_args = [arg for arg in ARGS if not arg.startswith("--mode=")]
    reader = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *reader_args, "--mode=sample",
                             "--config.sampling.method=ddim", "--config.sampling.steps=10",
                             "--config.sampling.num_samples=16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=HANG_TIMEOUT_S) == 0, first.stderr.read()[-2000:]

    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(workdir) in lines[0] and f"pid {first.pid}" in lines[0], second.stderr
    assert reader.returncode == 0, reader.stderr[-2000:]
    assert list((workdir / "samples").glob("samples_*_ddim_eta1_10steps_*.npz"))
    assert_same_run(workdir, straight)
    assert leftovers(workdir) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_saves_stops_and_resumes_bitwise_equal(tmp_path, straight, signum, status):
    rng = random.Random(15 + signum)
    workdir = tmp_path / "run"
    stops = []
    for trial in range(3):
        process = start(workdir)
        target = last_logged_step(workdir) + 1 + rng.randrange(2 * PREEMPTION_FREQ)
        wait_for_step(process, workdir, min(target, N_ITERS - 5))
        assert process.poll() is None, f"trial {trial}: the run finished before the signal"
        process.send_signal(signum)
        if trial == 1:  # a second signal while the first one's checkpoint is being written changes nothing
            process.send_signal(signum)
        code, stderr = process.wait(timeout=HANG_TIMEOUT_S), process.stderr.read()
        assert code == status, stderr[-2000:]
        stopped_at = checkpoints.latest_checkpoint(workdir)["step"]
        name = signal.Signals(signum).name
        assert f"stopped by {name} at step {stopped_at}; resume with the same command" in stderr.splitlines()[-1]
        # every step is logged (log_freq 1): none was done after the saved one, none is lost
        assert last_logged_step(workdir) == stopped_at
        assert "Traceback" not in stderr
        stops.append(stopped_at)
        assert leftovers(workdir) == []
    process = start(workdir)
    assert process.wait(timeout=HANG_TIMEOUT_S) == 0, process.stderr.read()[-2000:]
    print("stopped at steps:", stops)
    assert stops == sorted(set(stops)), stops  # each start got further
    assert_same_run(workdir, straight)


def test_temporaries_of_an_interrupted_write_are_removed_on_the_next_start(tmp_path, straight):
    workdir = tmp_path / "run"
    process = start(workdir)
    wait_for_step(process, workdir, PREEMPTION_FREQ + 1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # what a write killed before its rename leaves: never a name that loads as a checkpoint
    partial = checkpoints.preemption_path(workdir).with_name("checkpoint.pth.k3x9q2.tmp")
    partial.write_bytes(b"PK\x03\x04 half a zip")
    snapshot_partial = workdir / checkpoints.SNAPSHOT_DIR / "checkpoint_100.pth.a81bz0.tmp"
    snapshot_partial.parent.mkdir(exist_ok=True)
    snapshot_partial.write_bytes(b"PK\x03\x04")
    assert checkpoints.latest_checkpoint(workdir)["step"] >= PREEMPTION_FREQ
    process = start(workdir)
    assert process.wait(timeout=HANG_TIMEOUT_S) == 0
    stderr = process.stderr.read()
    assert f"removed {partial}" in stderr and f"removed {snapshot_partial}" in stderr
    assert leftovers(workdir) == []
    assert_same_run(workdir, straight)


def test_two_trainers_started_together_one_runs_one_is_refused(tmp_path, straight):
    workdir = tmp_path / "run"
    runs = [start(workdir), start(workdir)]  # the second with the same command: only the lock can tell
    results = [(process.wait(timeout=HANG_TIMEOUT_S), process.stderr.read()) for process in runs]
    codes = sorted(code for code, _ in results)
    if codes == [0, 0]:  # on a very uneven machine one may start only after the other finished:
        assert any("already trained to step" in stderr for _, stderr in results), results  # then it trains nothing
    else:
        assert codes == [0, 1], results
        refused = next(stderr for code, stderr in results if code == 1).strip().splitlines()
        winner = next(process for process, (code, _) in zip(runs, results) if code == 0)
        assert len(refused) == 1 and f"pid {winner.pid}" in refused[0] and str(workdir) in refused[0], refused
    assert_same_run(workdir, straight)
    assert leftovers(workdir) == []
