"""What a run says: a start line, progress lines when stdout is a file, an end line; the
"already trained" line; and the one-line messages a new user meets first."""
import logging
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S

from sde_diffusion.data.datasets import load_dataset
from sde_diffusion.app.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config=configs/vp_toy.py", "--config.data.dataset=gmm", "--config.data.num_points=1000",
        "--config.model.width=16", "--config.model.num_blocks=1", "--config.training.batch_size=64",
        "--config.training.log_freq=20", "--config.training.snapshot_freq=60",
        "--config.training.snapshot_sampling=False", "--config.training.progress_seconds=0"]


def main_py(*args, stdout_file: Path = None):
    """main.py with stdout into a file (as under nohup or a scheduler); returns (code, stdout, stderr)."""
    args = sorted(args, key=lambda arg: not arg.startswith("--config="))  # absl wants the file first
    with open(stdout_file or Path("/dev/null"), "w") as out:
        result = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.PIPE,
                                text=True, timeout=HANG_TIMEOUT_S)
    return result.returncode, stdout_file.read_text() if stdout_file else "", result.stderr


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_into_a_file_says_start_progress_end_and_already_trained(tmp_path):
    workdir = tmp_path / "run"
    code, _, log = main_py(f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=60",
                           "--config.threads=1", *TINY, stdout_file=tmp_path / "out.txt")
    assert code == 0, log
    lines = log.strip().splitlines()
    assert re.search(r"train configs/vp_toy.py in .*run: cpu, 1 threads, [\d,]+ parameters, starting at step 0$",
                     lines[0]), log
    progress = [line for line in lines if re.search(r"train: step \d+/60, loss [\d.]+, [\d.]+ steps/s, ETA", line)]
    assert [re.search(r"step (\d+)/", line).group(1) for line in progress] == ["20", "40", "60"], log
    assert re.search(rf"trained to step 60: loss [\d.]+, [\d.]+ s, checkpoints in {workdir}/checkpoints$",
                     lines[-1]), log

    before = files_of(workdir)
    code, _, log = main_py(f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=60", *TINY)
    assert code == 0, log
    assert log.strip().splitlines()[-1].endswith(
        "already trained to step 60; raise --config.training.n_iters to continue"), log
    assert files_of(workdir) == before  # config.json and metrics untouched

    code, _, log = main_py(f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=80", *TINY)
    assert code == 0, log
    assert re.search(rf"resuming from step 60 of {workdir}/checkpoints-meta/checkpoint.pth$",
                     log.strip().splitlines()[0]), log
    assert "trained to step 80" in log.strip().splitlines()[-1], log


def test_sampling_into_a_file_says_what_runs_progress_and_where_the_result_is(tmp_path):
    workdir = tmp_path / "run"
    assert main_py(f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=20", *TINY)[0] == 0
    code, out, log = main_py(f"--workdir={workdir}", "--mode=sample", "--config.sampling.num_samples=30",
                             "--config.sampling.batch_size=10", "--config.sampling.steps=20", *TINY,
                             stdout_file=tmp_path / "out.txt")
    assert code == 0, log
    lines = log.strip().splitlines()
    assert re.search(r"checkpoint step 20, 30 samples with pc predictor=euler_maruyama corrector=none, 20 steps "
                     r"on the uniform grid to eps=0.001$", lines[0]), log  # vp_toy's pc set-up
    assert [re.search(r"sample (\d+)/30", line).group(1) for line in lines if "sampling: sample" in line] == \
        ["10", "20", "30"], log
    assert lines[-1].endswith(f"written to {workdir}/samples/samples_20_pc_euler_maruyama_none_20steps_30x_batch10_seed42.npz"), log
    assert '"num_samples": 30' in out  # the report stays on stdout


def test_progress_lines_come_at_the_rarer_of_every_n_units_and_every_t_seconds(caplog):
    caplog.set_level(logging.INFO)
    shown = Progress("work", total=10, every=3, seconds=0.0)
    for done in range(1, 11):
        shown.update(done, loss=1.0 / done)
    steps = [int(re.search(r"step (\d+)/10", r.getMessage()).group(1)) for r in caplog.records]
    assert steps == [3, 6, 9, 10]  # every 3 units, and the last
    caplog.clear()
    shown = Progress("work", total=10, every=1, seconds=3600.0)
    for done in range(1, 11):
        shown.update(done)
    assert len(caplog.records) == 1 and "step 10/10" in caplog.records[0].getMessage()  # only the end


@pytest.mark.parametrize("flag, message", [
    ("--config.sampling.methd=ode", "error: --config.sampling.methd: no such field (did you mean "
                                    "--config.sampling.method?)"),
    ("--config.training.n_iter=5", "error: --config.training.n_iter: no such field (did you mean "
                                   "--config.training.n_iters?)"),
    ("--config.sampling.zzz=1", "error: --config.sampling.zzz: no such field in the config file"),
])
def test_a_misspelt_field_names_the_flag_and_the_field_meant(tmp_path, flag, message):
    code, _, log = main_py("--config=configs/vp_toy.py", f"--workdir={tmp_path / 'run'}", "--mode=train", flag)
    assert code == 1 and log.strip() == message
    assert not (tmp_path / "run").exists()


def test_image_data_without_files_names_both_flags(tmp_path):
    code, _, log = main_py("--config=configs/vp_cifar10.py", f"--workdir={tmp_path / 'run'}", "--mode=train")
    assert code == 1 and len(log.strip().splitlines()) == 1, log
    assert "--config.data.root=DIR" in log and "--config.data.download=True" in log, log
    assert not (tmp_path / "run").exists()


def test_negative_thread_count_is_refused(tmp_path):
    code, _, log = main_py("--config=configs/vp_toy.py", f"--workdir={tmp_path / 'run'}", "--mode=train",
                           "--config.threads=-1")
    assert code == 1 and log.strip().startswith("error: config.threads:"), log


@pytest.fixture
def offline(monkeypatch):
    """No network, as on a machine without internet, whatever the machine running the test has."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name, source", [("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
                                          ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")])
def test_a_failed_download_says_what_from_where_and_leaves_nothing(tmp_path, offline, name, source):
    pytest.importorskip("torchvision")
    new_root = tmp_path / "new"
    with pytest.raises(OSError, match=f"could not download {name} from .*{re.escape(source)}.* into {new_root}"):
        load_dataset(name, "train", root=new_root, download=True)
    assert not new_root.exists()
    kept_root = tmp_path / "kept"
    kept_root.mkdir()
    (kept_root / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="Name or service not known"):
        load_dataset(name, "train", root=kept_root, download=True)
    assert [p.name for p in kept_root.rglob("*")] == ["notes.txt"]


def test_help_shows_the_usage_lines_as_written():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT_S)
    usage = result.stdout.split("flags:")[0]
    assert "--mode sample \\\n        --config.sampling.method=ode" in usage, usage
    assert not any("     " in line.strip() for line in usage.splitlines()), usage
