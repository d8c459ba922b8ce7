"""Every long phase says when it starts and when it ends: the study's reference ODE (with its
cost up front, and a switch that skips it), the study's rows, the classifier judge's fitting,
FID statistics of a split, an image folder's cache build; and nothing draws carriage-return bars
into a log that is not a terminal."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_TIMEOUT_S
from PIL import Image
from test_fid_reference import CountingExtractor, as_batches
from test_sample_quality import random_images

from sde_diffusion.data.datasets import load_dataset
from sde_diffusion.evaluation import fid_reference
from sde_diffusion.evaluation.judges import cached_judge

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config=configs/vp_toy.py", "--config.training.n_iters=20", "--config.training.snapshot_freq=20",
         "--config.training.snapshot_sampling=False", "--config.training.batch_size=64",
         "--config.data.dataset=gmm", "--config.data.num_points=1000", "--config.model.width=32",
         "--config.model.num_blocks=1", "--config.study.num_samples=100", "--config.study.nfe=(4,6)",
         "--config.study.samplers=('ddim',)"]


def main_py(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("phases") / "run"
    result = main_py(f"--workdir={workdir}", "--mode=train", *TRAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_the_study_announces_its_reference_ode_with_its_cost_and_logs_each_row(workdir):
    # the toy MLP predicts the noise, so ddim is stochastic unless eta=0 (no reference ODE then)
    result = main_py(f"--workdir={workdir}", "--mode=study", "--config.study.samplers=('ddim eta=0',)")
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stderr
    assert "\r" not in log and "\r" not in result.stdout  # a file, not a terminal: no bars
    start = next(line for line in log.splitlines() if "study: the reference ODE first" in line)
    assert "1 adaptive RK45 solve(s) at rtol=atol=1e-05 of 100 samples" in start
    assert "the whole grid's 10" in start and "study.reference=False skips it" in start
    done = next(line for line in log.splitlines() if "study: reference ODE done in" in line)
    assert "NFE " in done
    assert log.index("reference ODE first") < log.index("reference ODE done") < log.index("study: 1/2 ddim eta=0 at NFE 4")
    assert "study: 2/2 ddim eta=0 at NFE 6: ok" in log
    rows = Path(json.loads(result.stdout.strip().splitlines()[-1])["csv"]).read_text()
    assert "ode_rms" in rows.splitlines()[0]


def test_study_reference_false_skips_the_solve_and_names_its_own_files(workdir):
    with_reference = sorted((workdir / "study").glob("*.csv"))
    result = main_py(f"--workdir={workdir}", "--mode=study", "--config.study.reference=False",
                     "--config.study.samplers=('ddim eta=0',)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reference ODE" not in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "ode_rms" not in Path(report["csv"]).read_text().splitlines()[0]
    assert Path(report["csv"]) not in with_reference  # the study with the reference keeps its files


def test_fitting_a_classifier_judge_logs_start_and_end(caplog):
    images = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(200) % 4
    with caplog.at_level(logging.INFO):
        cached_judge(images, labels, hidden=8, max_iter=2)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("fitting the classifier judge on 200 training images (2 epochs") for m in messages)
    assert any(m.startswith("fitted the classifier judge in") for m in messages)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cached_judge(images, labels, hidden=8, max_iter=2)  # read from the cache: nothing to announce
    assert not any("classifier judge" in record.getMessage() for record in caplog.records)


def test_fid_statistics_of_a_split_log_start_and_end(tmp_path, caplog):
    images = random_images(12, seed=2)
    with caplog.at_level(logging.INFO):
        fid_reference.split_statistics(as_batches(images), 12, CountingExtractor(), "x", tmp_path, "set")
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("FID reference set: Inception statistics of 12 images") for m in messages)
    assert any(m.startswith("FID reference set: done in") for m in messages)


def test_an_image_folder_cache_build_logs_start_and_end(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    with caplog.at_level(logging.INFO):
        load_dataset("folder", "train", root=tmp_path, image_size=8, num_channels=3)
    messages = [record.getMessage() for record in caplog.records]
    start = next(i for i, m in enumerate(messages) if m.startswith("caching the train split of"))
    assert any(m.startswith("cached the train split of") for m in messages[start + 1:])
