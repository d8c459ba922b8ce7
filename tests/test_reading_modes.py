"""Reading modes from the workdir alone: `main.py --workdir W --mode sample` starts from the
config.json W's training run stored; the command line changes only what the weights allow, and
a refused flag leaves every byte of the workdir as it was. List fields take comma-separated values."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config=configs/vp_toy.py", "--config.training.n_iters=40", "--config.training.snapshot_freq=40",
         "--config.training.snapshot_sampling=False", "--config.training.batch_size=64",
         "--config.data.dataset=gmm", "--config.data.num_points=1000", "--config.model.width=32",
         "--config.model.num_blocks=1", "--config.sampling.steps=20", "--config.sampling.num_samples=200",
         "--config.sampling.batch_size=200", "--config.eval.num_samples=200", "--config.eval.batch_size=200",
         "--config.eval.bpd_num_images=50"]


def main_py(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def checksums(folder: Path) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reading") / "run"
    result = main_py(f"--workdir={workdir}", "--mode=train", *TRAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_sample_from_the_workdir_alone_uses_its_stored_config(workdir, tmp_path):
    # from another folder, so that nothing is found relative to the repository
    result = main_py(f"--workdir={workdir}", "--mode=sample", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["step"] == 40 and report["num_samples"] == 200 and report["nfe"] == 20  # the stored sampling.*
    assert report["npz"].endswith("samples_40_pc_euler_maruyama_none_20steps_200x_seed42.npz")
    assert np.load(report["npz"])["samples"].shape == (200, 2)
    assert f"sample {workdir / 'config.json'} in {workdir}" in result.stderr  # the start line names it
    # reading fields may change: the sampler, a typed-but-unset option, the seed
    result = main_py(f"--workdir={workdir}", "--mode=sample", "--config.sampling.method=dpm_solver++",
                     "--config.sampling.steps=6", "--config.sampling.order=3", "--config.seed=7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert last_json(result.stdout)["npz"].endswith("samples_40_dpm_solver++_order3_eta0.5_karras_6steps_200x_seed7.npz")


@pytest.mark.parametrize("mode, key", [("eval", "sliced_wasserstein"), ("likelihood", "nats_per_point")])
def test_eval_and_likelihood_from_the_workdir_alone(workdir, mode, key):
    result = main_py(f"--workdir={workdir}", f"--mode={mode}", "--config.sampling.steps=10")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["step"] == 40 and (key in report or report.get("metric") == key)


def test_study_from_the_workdir_alone(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=study", "--config.study.num_samples=100",
                     "--config.study.nfe=(4,)", "--config.study.samplers=('ddim',)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert last_json(result.stdout)["rows"] == 1


@pytest.mark.parametrize("flags, named", [
    (["--config.model.width=64"], "--config.model.width (stored: 32)"),
    (["--config.data.num_channels=3", "--config.training.sde=vesde"], "--config.data.num_channels"),
    (["--config.training.batch_size=8"], "--config.training.batch_size (stored: 64)"),
])
def test_a_weights_changing_flag_is_refused_and_writes_nothing(workdir, flags, named):
    before = checksums(workdir)
    result = main_py(f"--workdir={workdir}", "--mode=sample", *flags)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert "may change only seed, device, threads" in lines[0] and "sampling.*" in lines[0]
    assert checksums(workdir) == before


def test_with_config_a_weights_changing_flag_is_refused_as_before(workdir):
    before = checksums(workdir)
    result = main_py(f"--workdir={workdir}", "--mode=sample", *TRAIN, "--config.model.width=64")
    assert result.returncode == 1
    assert "was trained with another config (model.width: 32 -> 64)" in result.stderr.strip().splitlines()[-1]
    assert checksums(workdir) == before


def test_without_config_a_workdir_with_no_stored_config_is_refused(tmp_path):
    result = main_py(f"--workdir={tmp_path / 'new'}", "--mode=sample", "--config.sampling.method=ddim")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --config is required: {tmp_path / 'new'} holds no config.json " \
                                    "(what a training run stores) to start from"
    assert not (tmp_path / "new").exists()


def test_train_without_config_resumes_from_the_stored_config(tmp_path):
    workdir = tmp_path / "run"
    assert main_py(f"--workdir={workdir}", "--mode=train", *TRAIN).returncode == 0
    result = main_py(f"--workdir={workdir}", "--mode=train", "--config.training.n_iters=60",
                     "--config.training.snapshot_freq=60")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed" in result.stderr.lower() or "step 40" in result.stderr
    assert (workdir / "checkpoints" / "checkpoint_60.pth").exists()
    before = checksums(workdir)
    result = main_py(f"--workdir={workdir}", "--mode=train", "--config.optim.warmup=3")
    assert result.returncode == 1 and "--config.optim.warmup (stored: 200)" in result.stderr
    assert "a train run from it may change only threads, device, training.n_iters" in result.stderr
    assert checksums(workdir) == before


def test_list_fields_take_comma_separated_values(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=study", "--config.study.num_samples=100",
                     "--config.study.samplers=ddim, heun schedule=karras", "--config.study.nfe=4,6")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["rows"] == 4
    specs = [line.split("|")[1].strip() for line in Path(report["md"]).read_text().splitlines()[4:]]
    assert specs == ["ddim eta=1", "ddim eta=1", "heun schedule=karras", "heun schedule=karras"]  # ddim: the family's eta
    result = main_py(f"--workdir={workdir}", "--mode=eval", "--config.eval.seeds=1, 2",
                     "--config.sampling.method=ddim", "--config.sampling.steps=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert last_json(result.stdout)["seeds"] == [1, 2]
