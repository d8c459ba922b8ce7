"""Runs that go wrong after the config check, table-driven like tests/test_bad_input.py (whose
driver and helpers this file reuses): solvers asked for the impossible, memory that is not
there, crafted or damaged checkpoints, values that would silently give the same result as
another. Each case is `main.py` in a forked child; it ends with one line on stderr and a
non-zero exit (or, where the run may go on, a warning naming what happened and exit 0), and
every file present before is byte-identical after it or was set aside under the name the
message gives. Below the table: signals (SIGHUP, a second Ctrl-C while saving, SIGTERM while
sampling writes), the temporaries a killed run leaves, and what the sample names carry."""
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import test_bad_input
from conftest import HANG_TIMEOUT_S
from sde_diffusion.files import checkpoints
from test_bad_input import ROOT, TOY, _argv, _tree, trained_workdir  # noqa: F401 - a fixture
from test_fault_injection import ARGS, last_logged_step, start, wait_for_step

TINY = ["--config.model.width=16", "--config.model.num_blocks=1", "--config.data.num_points=1000"]
CONDITIONAL = [*TINY, "--config.data.dataset=gmm", "--config.model.num_classes=8"]
FOLDER = "--config=configs/vp_folder.py"


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious file (never unpickled here)."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


class _Evaluates:
    def __reduce__(self):
        return eval, ("1 + 1",)


def _crafted(kind: str):
    """A checkpoint's contents that torch's weights-only reader refuses, each in another way."""
    if kind == "dtype":  # a numpy dtype outside the allowed ones, rebuilt by BUILD from a state
        return {"step": 10**6, "model": {}, "ema": {}, "x": np.dtype("complex64")}
    return {"step": 10**6, "model": {}, "ema": {}, "x": _Evaluates()}


def _setup(case: str, workdir: Path, tmp: Path) -> None:
    """What a case does to its copy of the trained workdir before the run."""
    if case in ("dtype newest", "eval newest"):
        torch.save(_crafted(case.split()[0]), checkpoints.snapshot_path(workdir, 10**6))
    elif case == "dtype chosen":
        torch.save(_crafted("dtype"), checkpoints.snapshot_path(workdir, 30))
    elif case == "damaged preemption":
        path = checkpoints.preemption_path(workdir)
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "stale temporaries":
        for name in ("samples/.samples_20_ddim_10steps_64x_seed42.npz.k3x9q2.tmp",
                     "samples/.samples_20_ddim_10steps_64x_seed42.png.a81bz0.tmp",
                     "eval/.eval_20_ode_64x_seed42.json.zz01.tmp", ".config.json.qq12.tmp"):
            (workdir / name).parent.mkdir(exist_ok=True)
            (workdir / name).write_bytes(b"half written" * 1000)


def _prepare_inputs(tmp: Path) -> None:
    with open(tmp / "os_system.pth", "wb") as file:  # a plain pickle, not a torch zip file
        pickle.dump({"model": _RunsCode()}, file, protocol=4)
    (tmp / "images").mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp / "images" / f"{index}.png")


ODE = ["--mode=sample", "--config.sampling.method=ode"]
NO_WEIGHTS_ONLY_ADVICE = "weights_only"  # torch's advice to load with weights_only=False: never passed on

# (case id, argv with {workdir} / {tmp}, the workdir: "trained" / "conditional" (a copy of that
#  trained run) or "missing", what must come of it: ("error", text of the one line) or
#  ("warning", text of a warning line, exit 0); a case id _setup knows prepares the copy)
CASES = [
    ("snr negative", [TOY, *TINY, "--mode=sample", "--config.sampling.snr=-1.0"], "trained",
     ("error", "config.sampling.snr: must be a positive finite number, got -1.0")),
    ("snr zero", [TOY, *TINY, "--mode=sample", "--config.sampling.snr=0.0"], "trained", ("error", "config.sampling.snr")),
    ("max_nfe zero", [TOY, *TINY, *ODE, "--config.sampling.max_nfe=0"], "trained",
     ("error", "config.sampling.max_nfe: must be a positive integer")),
    ("bpd_max_nfe zero", [TOY, *TINY, "--mode=likelihood", "--config.eval.bpd_max_nfe=0"], "trained",
     ("error", "config.eval.bpd_max_nfe")),
    ("image size 1 of a folder", [FOLDER, "--config.data.root={tmp}/images", "--config.data.image_size=1"], "missing",
     ("error", "config.data.image_size")),
    ("ode at 1e-14, default cap", [TOY, *TINY, *ODE, "--config.sampling.rtol=1e-14", "--config.sampling.atol=1e-14",
                                   "--config.sampling.num_samples=16"], "trained",
     ("error", "ode sampler (RK45) stopped at t = ")),
    ("ode at 1e-14, max_nfe 300", [TOY, *TINY, *ODE, "--config.sampling.rtol=1e-14", "--config.sampling.atol=1e-14",
                                   "--config.sampling.max_nfe=300"], "trained",
     ("error", "after 300 score evaluations: max_nfe=300 reached (rtol=1e-14, atol=1e-14); loosen rtol/atol or raise "
               "max_nfe (set by --config.sampling.rtol, --config.sampling.atol, --config.sampling.max_nfe)")),
    ("ode torchdiffeq at 1e-14", [TOY, *TINY, *ODE, "--config.sampling.solver=dopri5", "--config.sampling.rtol=1e-14",
                                  "--config.sampling.atol=1e-14", "--config.sampling.max_nfe=300"], "trained",
     ("error", "ode sampler (dopri5) stopped at")),
    ("adaptive_sde at 1e-9", [TOY, *TINY, "--mode=sample", "--config.sampling.method=adaptive_sde",
                              "--config.sampling.rtol=1e-9", "--config.sampling.atol=1e-9"], "trained",
     ("error", "adaptive_sde sampler stopped at t = 1 (of 1 -> 0.001) after 4 score evaluations: its step fell below "
               "the resolution of torch.float32 times (rtol=1e-09, atol=1e-09); loosen rtol/atol")),
    ("adaptive_sde past max_nfe", [TOY, *TINY, "--mode=sample", "--config.sampling.method=adaptive_sde",
                                   "--config.sampling.max_nfe=10"], "trained",
     ("error", "adaptive_sde sampler stopped at t = ")),
    ("guidance 1e30 with ode", [TOY, *CONDITIONAL, *ODE, "--config.sampling.guidance_scale=1e30"], "conditional",
     ("error", "ode sampler (RK45) stopped at t = 1 (of 1 -> 0.001) after")),
    ("likelihood at 1e-14", [TOY, *TINY, "--mode=likelihood", "--config.eval.bpd_rtol=1e-14",
                             "--config.eval.bpd_atol=1e-14", "--config.eval.bpd_max_nfe=60"], "trained",
     ("error", "likelihood ODE (RK45) stopped at t = ")),
    ("out of memory", [TOY, *TINY, "--mode=sample", "--config.sampling.method=ddim",
                       "--config.sampling.num_samples=1000000000000", "--config.sampling.batch_size=1000000000000"],
     "trained", ("error", "out of memory in --mode sample on cpu with sampling.batch_size=1000000000000: lower "
                          "--config.sampling.batch_size")),
    ("dtype chosen", [TOY, *TINY, "--mode=sample", "--config.eval.checkpoint=30"], "trained",
     ("error", "it rebuilds a numpy.dtypes.Complex64DType from a stored state")),
    ("dtype newest", [TOY, *TINY, "--mode=sample", "--config.sampling.method=ddim", "--config.sampling.steps=5"],
     "trained", ("warning", "skipping unreadable checkpoint: cannot load checkpoint {workdir}/checkpoints/"
                            "checkpoint_1000000.pth: it rebuilds a numpy.dtypes.Complex64DType")),
    ("eval newest", [TOY, *TINY, "--mode=sample", "--config.sampling.method=ddim", "--config.sampling.steps=5"],
     "trained", ("warning", "it names the Python global builtins.eval, which is not a tensor")),
    ("plain pickle with os.system", ["--config=configs/published/vp_cifar10_ddpm.py", "--mode=sample",
                                     "--config.eval.reference_checkpoint={tmp}/os_system.pth"], "missing",
     ("error", "cannot load reference checkpoint {tmp}/os_system.pth: it is a plain pickle (instruction 149 is not "
               "one of a tensor file), naming the Python global posix.system")),
    ("damaged preemption", [TOY, *TINY, "--config.training.n_iters=40", "--config.training.batch_size=64"], "trained",
     ("warning", "moved the unreadable {workdir}/checkpoints-meta/checkpoint.pth to "
                 "{workdir}/checkpoints-meta/checkpoint.pth.unreadable")),
    ("stale temporaries", [TOY, *TINY, "--mode=sample", "--config.sampling.method=ddim", "--config.sampling.steps=5"],
     "trained", ("warning", "removed {workdir}/samples/.samples_20_ddim_10steps_64x_seed42.npz.k3x9q2.tmp, left by an "
                            "interrupted write")),
]


@pytest.fixture(scope="module")
def conditional_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("conditional") / "run"
    command = [sys.executable, "main.py", TOY, f"--workdir={workdir}", "--mode=train", *CONDITIONAL,
               "--config.training.n_iters=20", "--config.training.snapshot_freq=20",
               "--config.training.snapshot_sampling=False", "--config.training.batch_size=64"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, trained_workdir, conditional_workdir):  # noqa: F811
    """case id -> (exit code, stderr, workdir before, workdir after, workdir, tmp)."""
    tmp = tmp_path_factory.mktemp("bad_runs")
    _prepare_inputs(tmp)
    argvs, workdirs = [], []
    for index, (name, args, state, _) in enumerate(CASES):
        workdir = tmp / f"case{index}" / "run"
        if state != "missing":
            workdir.parent.mkdir()
            source = trained_workdir if state == "trained" else conditional_workdir
            subprocess.run(["cp", "-a", str(source), str(workdir)], check=True)
            _setup(name, workdir, tmp)
        argvs.append(_argv(args, workdir, tmp))
        workdirs.append(workdir)
    before = [_tree(w) if w.is_dir() else None for w in workdirs]
    cases_file = tmp / "cases.json"
    cases_file.write_text(json.dumps(argvs))
    driver = subprocess.run([sys.executable, test_bad_input.__file__, str(cases_file)], cwd=ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout.strip().splitlines()[-1])
    after = [_tree(w) if w.is_dir() else None for w in workdirs]
    return {case[0]: (result["code"], result["stderr"], b, a, w, tmp)
            for case, result, b, a, w in zip(CASES, results, before, after, workdirs)}


def _set_aside(message: str) -> dict:
    """{original: the name it was moved to} for each "moved the unreadable X to Y" of a run."""
    return {original: moved for original, moved in re.findall(r"moved the unreadable (\S+) to (\S+)", message)}


@pytest.mark.parametrize("name, args, state, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_run_says_one_line_and_loses_nothing(outcomes, name, args, state, expected):
    code, stderr, before, after, workdir, tmp = outcomes[name]
    kind, text = expected[0], expected[1].format(workdir=workdir, tmp=tmp)
    assert "Traceback" not in stderr and NO_WEIGHTS_ONLY_ADVICE not in stderr, stderr
    lines = stderr.strip().splitlines()
    # a run that got going logged its start line (absl's "I1202 12:00:00.0 ..."): then one error line
    assert all(re.match(r"[IW]\d{4} ", line) for line in lines[:-1]), stderr
    if kind == "error":
        assert code != 0 and lines[-1].startswith("error:") and text in lines[-1], stderr
    else:
        assert code == 0, stderr[-3000:]
        assert any(text in line for line in stderr.splitlines()), stderr[-3000:]
    if state == "missing":
        assert after is None, sorted(after)
        return
    moved = {str(Path(original).relative_to(workdir)): str(Path(new).relative_to(workdir))
             for original, new in _set_aside(stderr).items()}
    removed = {str(Path(path).relative_to(workdir)) for path in re.findall(r"removed (\S+), left by an interrupted "
                                                                          r"write", stderr)}
    training = not any(arg.startswith("--mode=") for arg in args)  # it writes metrics, config, events
    for path, content in before.items():
        if training and not path.startswith("checkpoints"):
            continue
        if path in removed:
            assert path.endswith(".tmp") and path not in after
        elif path in moved:
            assert after[moved[path]][0] == content[0]  # set aside byte for byte, under the name said
        else:
            assert after.get(path, (None,))[0] == content[0], path  # every other file byte-identical


def test_stale_temporaries_are_all_removed_and_the_sample_written(outcomes):
    code, stderr, before, after, workdir, _ = outcomes["stale temporaries"]
    assert code == 0 and not [path for path in after if path.endswith(".tmp")], sorted(after)
    assert stderr.count("left by an interrupted write") == 4, stderr
    # the toy MLP predicts the noise, so ddim runs with that family's eta
    assert any(path.startswith("samples/samples_20_ddim_eta1_5steps") and path.endswith(".npz") for path in after)


def test_the_table_is_large_enough():
    assert len(CASES) >= 19 and len({case[0] for case in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------ signals


def test_sighup_saves_and_stops_like_sigterm(tmp_path):
    workdir = tmp_path / "run"
    process = start(workdir)
    wait_for_step(process, workdir, 25)
    assert process.poll() is None, "the run finished before the signal"
    process.send_signal(signal.SIGHUP)
    code, stderr = process.wait(timeout=HANG_TIMEOUT_S), process.stderr.read()
    assert code == 129, stderr[-2000:]
    stopped_at = checkpoints.latest_checkpoint(workdir)["step"]
    assert stopped_at >= 25 and last_logged_step(workdir) == stopped_at
    assert stderr.strip().splitlines()[-1].endswith(f"stopped by SIGHUP at step {stopped_at}; resume with the "
                                                    f"same command"), stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("first, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_more_signals_while_saving_and_exiting_change_nothing(tmp_path, first, status):
    """The first signal handled decides; Ctrl-C pressed again and again until the process is
    gone (the save, the exit callbacks) neither raises nor changes the exit status. (Python runs
    pending handlers in signal-number order: a SIGINT sent just after a SIGTERM may be handled
    first, and then it is the one that decides.)"""
    workdir = tmp_path / "run"
    process = start(workdir)
    wait_for_step(process, workdir, 25)
    assert process.poll() is None, "the run finished before the signal"
    process.send_signal(first)
    while process.poll() is None:
        try:
            process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.002)
    code, stderr = process.wait(timeout=HANG_TIMEOUT_S), process.stderr.read()
    assert code in (status, 130), stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    stopped_at = checkpoints.latest_checkpoint(workdir)["step"]
    name = signal.Signals(code - 128).name
    assert stderr.strip().splitlines()[-1].endswith(f"stopped by {name} at step {stopped_at}; resume with the same "
                                                    f"command"), stderr[-2000:]


def _sample_command(workdir: Path, *extra):
    return [sys.executable, "main.py", TOY, f"--workdir={workdir}", "--mode=sample", *TINY,
            "--config.sampling.method=ddim", "--config.sampling.steps=50", *extra]


def _wait_until_sigterm_is_caught(process) -> None:
    """Until main.py has set its SIGTERM handler (Linux's /proc/PID/status, SigCgt: the caught
    signals' mask) or has ended: before that a SIGTERM finds Python still importing torch, whose
    default action (-15) is not main.py's to change, and how long imports take depends on the load."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None and status.is_file():
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.01)


def test_sigterm_while_sampling_leaves_no_temporary_and_no_lone_file(tmp_path, trained_workdir):  # noqa: F811
    """SIGTERM at seeded moments of a `--mode sample` run (loading, sampling, writing): it exits
    143 with one line (or 0 when it had finished), never leaves a .tmp, and the .npz and .png
    of the call are both there or both absent."""
    rng = random.Random(26)
    for trial in range(4):
        workdir = tmp_path / f"run{trial}"
        subprocess.run(["cp", "-a", str(trained_workdir), str(workdir)], check=True)
        process = subprocess.Popen(_sample_command(workdir, "--config.sampling.num_samples=200000",
                                                   "--config.sampling.batch_size=200000"),
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_until_sigterm_is_caught(process)
        time.sleep(rng.uniform(0.0, 6.0))
        process.send_signal(signal.SIGTERM)
        code, stderr = process.wait(timeout=HANG_TIMEOUT_S), process.stderr.read()
        assert code in (0, 143) and "Traceback" not in stderr, stderr[-2000:]
        if code == 143:
            assert stderr.strip().splitlines()[-1] == "error: interrupted by SIGTERM; no output was left half-written"
        files = sorted(path.name for path in (workdir / "samples").glob("*")) if (workdir / "samples").is_dir() else []
        assert not [name for name in files if name.endswith(".tmp")], files
        assert len([name for name in files if name.endswith(".npz")]) == len([n for n in files if n.endswith(".png")])


def test_a_held_temporary_is_kept_and_an_unheld_one_removed(tmp_path, trained_workdir):  # noqa: F811
    """What a live writer holds (flock) beside the workdir's outputs is never taken by another
    run's start-up cleanup; what a killed writer left is."""
    from sde_diffusion.files.output_files import open_locked_temporary
    workdir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(trained_workdir), str(workdir)], check=True)
    (workdir / "samples").mkdir()
    handle, held = open_locked_temporary(workdir / "samples" / "samples_x.npz")
    left = workdir / "samples" / ".samples_y.npz.dead01.tmp"
    left.write_bytes(b"x")
    try:
        result = subprocess.run(_sample_command(workdir, "--config.sampling.steps=5"), cwd=ROOT, capture_output=True,
                                text=True, timeout=HANG_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-2000:]
        assert Path(held).exists() and not left.exists()
        assert f"removed {left}" in result.stderr and held not in result.stderr
    finally:
        os.close(handle)


# ------------------------------------------------------------------------ what names carry


def test_sample_names_carry_the_batch_size_where_it_changes_the_samples(tmp_path, trained_workdir):  # noqa: F811
    workdir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(trained_workdir), str(workdir)], check=True)
    drawn = {}
    for batch in (100, 500, 1000):
        result = subprocess.run(_sample_command(workdir, "--config.sampling.steps=5",
                                                "--config.sampling.num_samples=500",
                                                f"--config.sampling.batch_size={batch}"),
                                cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-2000:]
        npz = json.loads(result.stdout.strip().splitlines()[-1])["npz"]
        drawn[batch] = (Path(npz).name, np.load(npz)["samples"])
    assert drawn[100][0].endswith("_500x_batch100_seed42.npz") and drawn[500][0].endswith("_500x_seed42.npz")
    assert not np.array_equal(drawn[100][1], drawn[500][1])  # other samples, another name
    assert drawn[1000][0] == drawn[500][0] and np.array_equal(drawn[1000][1], drawn[500][1])  # one batch either way
    assert len(list((workdir / "samples").glob("*.npz"))) == 2
