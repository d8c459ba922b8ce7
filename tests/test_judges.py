"""The digits judge: a classifier fitted on the bundled digits, and the Frechet distance in its
feature space that `--mode eval` reports for digit samples."""
import pytest
import torch

from sde_diffusion.data.datasets import load_digits
from sde_diffusion.evaluation.judges import DigitsJudge
from sde_diffusion.evaluation.sample_quality import digits_scores


@pytest.fixture(scope="module")
def judge():
    return DigitsJudge(16)


def test_judge_classifies_held_out_digits(judge):
    test = load_digits("test", image_size=16)
    assert judge.accuracy(test.data, test.labels) > 0.9
    assert judge.features(test.data).shape == (len(test.data), 64)


def test_judge_is_deterministic(judge):
    test = load_digits("test", image_size=16)
    again = DigitsJudge(16)
    assert (again.features(test.data) == judge.features(test.data)).all()


def test_digit_distance_ranks_real_over_blurred_over_noise():
    train, test = load_digits("train", image_size=16), load_digits("test", image_size=16)
    real = digits_scores(train.data[:269], test.data, 16)["fd_digits"]
    blurred = torch.nn.functional.avg_pool2d(train.data[:269], 5, stride=1, padding=2)
    blurry = digits_scores(blurred, test.data, 16)["fd_digits"]
    noise = digits_scores(torch.rand(269, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
                          test.data, 16)["fd_digits"]
    # measured: 1.85 (the finite-sample bias of 269 vs 269 images), 7.3, 46.8
    assert real < 0.5 * blurry and blurry < 0.3 * noise, (real, blurry, noise)


def test_judge_rejects_wrong_shapes(judge):
    with pytest.raises(ValueError, match="expected images"):
        judge.features(torch.zeros(3, 1, 8, 8))


def test_cached_judge_fits_once_and_reads_the_same_weights_back(tmp_path, monkeypatch):
    from sde_diffusion.evaluation.judges import cached_judge
    from sde_diffusion.evaluation.sample_quality import quality_metric

    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path))
    train, test = load_digits("train", image_size=8), load_digits("test", image_size=8)
    fitted = cached_judge(train.data, train.labels, hidden=32, max_iter=200)
    stored = list((tmp_path / "judges").glob("judge_*.npz"))
    assert len(stored) == 1
    again = cached_judge(train.data, train.labels, hidden=32, max_iter=200)  # read, not refitted
    assert (again.features(test.data) == fitted.features(test.data)).all()
    assert again.accuracy(test.data, test.labels) > 0.85
    cached_judge(train.data[:-1], train.labels[:-1], hidden=32, max_iter=200)  # other data: another entry
    assert len(list((tmp_path / "judges").glob("judge_*.npz"))) == 2
    metric, key = quality_metric("classifier", test.data, "cpu", judge=fitted, floor=train.data[:len(test.data)])
    real, noise = metric(train.data[-len(test.data):]), metric(torch.rand(len(test.data), 1, 8, 8))
    assert key == "fd_classifier" and real["fd_classifier_floor"] < 0.2 * noise["fd_classifier"]
    assert real["fd_classifier"] < 0.2 * noise["fd_classifier"]
