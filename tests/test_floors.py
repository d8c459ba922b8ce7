"""The real-data floor of a classifier FD is measured at the run's own sample count: the floor
reported for N samples is the FD of N training images against the test reference (the mean of
FLOOR_DRAWS draws, with their spread), not the floor of a whole split. The bundled digits need
no download."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sde_diffusion.app.metrics import quality_metric_for
from sde_diffusion.app.plan import make_plan
from sde_diffusion.data.datasets import load_digits
from sde_diffusion.evaluation.judges import FLOOR_DRAWS, DigitsJudge, floor_indices
from sde_diffusion.evaluation.sample_quality import fid_kid

ROOT = Path(__file__).resolve().parents[1]


def digits_config(seed: int):
    spec = importlib.util.spec_from_file_location("vp_digits", ROOT / "configs" / "vp_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.seed, config.device = seed, "cpu"
    return config


def independent_floor(count: int, seed: int, image_size: int = 16):
    """The FD of `count` training digits (the draws floor_indices names) against the test split,
    computed here from the judge's features with fid_kid, as a user would."""
    train, test = load_digits("train", image_size=image_size), load_digits("test", image_size=image_size)
    judge = DigitsJudge(image_size)
    values = [fid_kid(judge.features(train.data[floor_indices(len(train), count, seed, draw)]),
                      judge.features(test.data))["fid"] for draw in range(FLOOR_DRAWS)]
    return float(np.mean(values)), float(np.std(values, ddof=1))


@pytest.mark.parametrize("count", [64, 500])
def test_the_floor_reported_for_n_samples_is_the_fd_of_n_training_images(count):
    config = digits_config(seed=3)
    plan = make_plan(config)
    test = plan.dataset("test").data
    metric, key = quality_metric_for(plan, test)
    assert key == "fd_digits"
    samples = torch.rand(count, 1, 16, 16)
    scores = metric(samples)
    mean, spread = independent_floor(count, seed=3)
    assert scores["fd_digits_floor_samples"] == count
    assert scores["fd_digits_floor"] == pytest.approx(mean, rel=1e-9)
    assert scores["fd_digits_floor_spread"] == pytest.approx(spread, rel=1e-9) and spread > 0
    # the floor is the run's own: another sample count (the study's) gets its own floor
    assert metric(samples[:32])["fd_digits_floor_samples"] == 32


def test_the_floor_falls_with_the_sample_count_so_a_split_floor_would_flatter():
    floors = {count: independent_floor(count, seed=0)[0] for count in (64, 1000)}
    assert floors[64] > 1.5 * floors[1000]  # measured 3.11 vs 1.47 (the 270 test digits bias both)
    # a draw is a plain permutation of the training split under the stated seed
    assert torch.equal(floor_indices(100, 10, 5, 2), torch.randperm(100, generator=torch.Generator().manual_seed(7))[:10])
    assert len(floor_indices(100, 500, 0, 0)) == 100  # never more images than the split has
