"""The command line as users type it: train, then sample / likelihood / eval / study on the
checkpoint; bad input exits non-zero with one line on stderr and writes nothing."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config.training.n_iters=200", "--config.training.snapshot_freq=200",
         "--config.training.snapshot_sampling=False", "--config.data.dataset=gmm",
         "--config.data.num_points=2000", "--config.model.width=64", "--config.model.num_blocks=1",
         "--config.sampling.steps=100", "--config.sampling.num_samples=500",
         "--config.sampling.batch_size=500", "--config.eval.num_samples=500",
         "--config.eval.bpd_num_images=200", "--config.eval.batch_size=200"]


def main_py(*args, config="configs/vp_toy.py"):
    command = [sys.executable, "main.py", f"--config={config}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    result = main_py(f"--workdir={workdir}", "--mode=train", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_sample_mode_writes_npz_and_png(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=sample", *SMALL, "--config.sampling.method=ode")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["step"] == 200 and report["num_samples"] == 500 and report["nfe"] > 10
    samples = np.load(report["npz"])["samples"]
    assert samples.shape == (500, 2) and np.isfinite(samples).all()
    assert Path(report["png"]).stat().st_size > 10_000


def test_sample_mode_takes_fast_samplers_and_schedules(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=sample", *SMALL, "--config.sampling.method=dpm_solver++",
                     "--config.sampling.steps=12", "--config.sampling.schedule=logsnr", "--config.sampling.order=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["nfe"] == 12 and report["npz"].endswith("samples_200_dpm_solver++_order3_eta0.5_logsnr_12steps_500x_seed42.npz")
    first = np.load(report["npz"])["samples"]
    assert np.isfinite(first).all()
    # another step count on the same checkpoint writes its own files and leaves these alone
    result = main_py(f"--workdir={workdir}", "--mode=sample", *SMALL, "--config.sampling.method=dpm_solver++",
                     "--config.sampling.steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert last_json(result.stdout)["npz"].endswith("samples_200_dpm_solver++_eta0.5_karras_6steps_500x_seed42.npz")
    assert np.array_equal(np.load(report["npz"])["samples"], first)
    # so do another number of samples and another seed
    for extra, name in ((["--config.sampling.num_samples=100"], "samples_200_dpm_solver++_eta0.5_karras_6steps_100x_seed42.npz"),
                        (["--config.seed=7"], "samples_200_dpm_solver++_eta0.5_karras_6steps_500x_seed7.npz")):
        result = main_py(f"--workdir={workdir}", "--mode=sample", *SMALL, "--config.sampling.method=dpm_solver++",
                         "--config.sampling.steps=6", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        assert last_json(result.stdout)["npz"].endswith(name)
    assert len(list((workdir / "samples").glob("samples_200_dpm_solver++_eta0.5_karras_6steps_*.npz"))) == 3


def test_study_mode_on_the_checkpoint_writes_table_csv_and_plot(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=study", *SMALL, "--config.study.num_samples=300",
                     "--config.study.nfe=(5,10)",
                     "--config.study.samplers=('ddim schedule=quadratic','dpm_solver++ order=2 schedule=logsnr')")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["rows"] == 4
    table = Path(report["md"]).read_text()
    # the row names the eta this family runs dpm_solver++ with
    assert table.count("| dpm_solver++ order=2 schedule=logsnr eta=0.5 |") == 2 and "sliced_wasserstein" in table
    assert Path(report["png"]).stat().st_size > 10_000 and Path(report["csv"]).is_file()
    kept = {path.name: path.read_bytes() for path in (workdir / "study").iterdir()}
    result = main_py(f"--workdir={workdir}", "--mode=study", *SMALL, "--config.study.num_samples=300",
                     "--config.study.nfe=(5,)", "--config.study.samplers=('ddim',)")
    assert result.returncode == 0, result.stderr[-2000:]
    other = last_json(result.stdout)  # another grid on the same checkpoint: its own files, the first kept
    assert Path(other["csv"]).name not in kept and all((workdir / "study" / name).read_bytes() == content
                                                       for name, content in kept.items())
    assert Path(report["csv"]).name.startswith("study_200_300samples_")


def test_study_mode_on_the_oracle_needs_no_checkpoint(tmp_path):
    workdir = tmp_path / "oracle"
    result = main_py(f"--workdir={workdir}", "--mode=study", *SMALL, "--config.study.oracle=True",
                     "--config.study.num_samples=500", "--config.study.nfe=(20,)",
                     "--config.study.samplers=('dpm_solver++ order=3 schedule=logsnr',)")
    assert result.returncode == 0, result.stderr[-2000:]
    (written,) = (workdir / "study").glob("study_oracle_500samples_*.csv")
    with open(written) as handle:
        (row,) = list(csv.DictReader(handle))
    # the exact score of the gmm data: 20 DPM-Solver++(3M) steps put the 8 components' weights
    # within 0.05 of the truth with 500 samples (measured 0.02)
    assert row["status"] == "ok" and int(row["nfe"]) == 20 and float(row["weight"]) < 0.05, row


def test_likelihood_mode_reports_a_finite_nll(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=likelihood", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    # The mixture's own entropy is about 2.3 nats; a 200-step model is worse but not absurdly so.
    assert report["metric"] == "nats_per_point" and report["num"] == 200
    assert 2.0 < report["mean"] < 6.0, report
    assert report["trace"] == "exact"  # the toy configs' default: 2-D, as cheap as Hutchinson's
    first = workdir / "eval" / "likelihood_200_exact_rtol3e-05_atol3e-05_200items.json"
    assert json.loads(first.read_text()) == report
    kept = first.read_bytes()
    result = main_py(f"--workdir={workdir}", "--mode=likelihood", *SMALL, "--config.eval.bpd_trace=hutchinson")
    assert result.returncode == 0, result.stderr[-2000:]
    estimated = last_json(result.stdout)  # another call on the same checkpoint: its own file, the first kept
    assert (workdir / "eval" / "likelihood_200_hutchinson_rtol3e-05_atol3e-05_200items.json").is_file()
    assert first.read_bytes() == kept and estimated["trace"] == "hutchinson" and estimated["num"] == 200
    # the same 200 points; Hutchinson's estimate of the divergence is unbiased, so the means agree
    # well within the spread over points (measured: 0.0008 nats apart, stderr 0.055)
    assert abs(estimated["mean"] - report["mean"]) < 0.25 * report["stderr"], (report, estimated)


def test_eval_mode_reports_sliced_wasserstein(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=eval", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert 0 < report["sliced_wasserstein"] < 0.5, report
    assert report["weights"] == "ema" and report["seeds"] == [42] and report["num_samples"] == 500
    assert report["sampler"].startswith("pc ") and report["nfe"] > 0 and "test split" in report["reference"]


def test_eval_over_seeds_reports_mean_and_spread(workdir):
    flags = [f"--workdir={workdir}", "--mode=eval", *SMALL, "--config.sampling.method=ddim",
             "--config.sampling.steps=20"]
    several = last_json(main_py(*flags, "--config.eval.seeds=(1,2,3)").stdout)
    values = several["sliced_wasserstein_per_seed"]
    assert len(values) == 3 and len(set(values)) == 3  # other seeds, other samples
    assert several["sliced_wasserstein"] == pytest.approx(sum(values) / 3)
    assert several["sliced_wasserstein_std"] == pytest.approx(float(np.std(values, ddof=1)))
    alone = last_json(main_py(*flags, "--config.eval.seeds=(2,)").stdout)
    assert alone["sliced_wasserstein"] == pytest.approx(values[1], rel=1e-6)  # seed 2 alone: the same samples
    # each set of seeds keeps its own report
    written = {path.name: json.loads(path.read_text()) for path in (workdir / "eval").glob("eval_200_ddim_*.json")}
    assert written == {"eval_200_ddim_eta1_20steps_500x_seed1-2-3.json": several, "eval_200_ddim_eta1_20steps_500x_seed2.json": alone}


@pytest.mark.parametrize("args, message", [
    (["--config.training.sde=vpsdee"], "config.training.sde"),
    (["--config.training.batch_size=0"], "config.training.batch_size"),
    (["--config.sampling.method=magic"], "config.sampling.method"),
    (["--config.data.dataset=cifar10"], "data.root"),
    (["--config.data.dataset=cifar10", "--config.data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--config.study.samplers=('ddim eta',)"], "config.study.samplers"),
    (["--config.study.nfe=(10,0)"], "config.study.nfe"),
    (["--config.sampling.labels=3"], "config.sampling.labels"),
    (["--config.data.dataset=gmm", "--config.model.num_classes=8", "--config.sampling.labels=8"],
     "config.sampling.labels"),
    (["--config.data.dataset=gmm", "--config.model.num_classes=8", "--config.sampling.guidance_scale=-1"],
     "config.sampling.guidance_scale"),
])
def test_bad_config_exits_with_one_line_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = main_py(f"--workdir={workdir}", "--mode=train", *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not workdir.exists()


def test_sampling_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = main_py(f"--workdir={tmp_path / 'empty'}", "--mode=sample")
    assert result.returncode != 0
    assert "no checkpoint" in result.stderr and "--mode train" in result.stderr
    assert not (tmp_path / "empty").exists()


def test_checkpoint_of_another_model_is_a_clear_error(workdir):
    result = main_py(f"--workdir={workdir}", "--mode=sample", *SMALL, "--config.model.width=32")
    assert result.returncode != 0
    assert "trained with another config (model.width: 64 -> 32)" in result.stderr.strip().splitlines()[-1]


def test_class_conditional_train_then_guided_sample(tmp_path):
    """A class-conditional MLP on the labelled 8-Gaussian mixture, trained from the command
    line, samples the requested component: the exact Bayes classifier assigns most guided
    samples of label 3 to component 3 (chance: its weight 4/36; measured: 1.00 at w = 1)."""
    import torch

    from sde_diffusion.data.toy_data import toy_mixture

    workdir = tmp_path / "cond"
    conditional = [*SMALL, "--config.model.num_classes=8", "--config.optim.warmup=0", "--config.training.n_iters=400",
                   "--config.training.snapshot_freq=400"]
    result = main_py(f"--workdir={workdir}", "--mode=train", *conditional)
    assert result.returncode == 0, result.stderr[-2000:]
    result = main_py(f"--workdir={workdir}", "--mode=sample", *conditional, "--config.sampling.labels=3",
                     "--config.sampling.guidance_scale=1", "--config.sampling.method=dpm_solver++",
                     "--config.sampling.steps=20", "--config.sampling.schedule=logsnr")
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json(result.stdout)
    assert report["guidance_scale"] == 1.0 and report["npz"].endswith("_w1_labels3_500x_seed42.npz")
    saved = np.load(report["npz"])
    assert (saved["labels"] == 3).all() and saved["samples"].shape == (500, 2)
    assigned = toy_mixture().responsibilities(torch.from_numpy(saved["samples"]).double()).argmax(1)
    assert (assigned == 3).double().mean().item() > 0.8
