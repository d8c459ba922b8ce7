"""The Frechet distance between Gaussians (`evaluation.frechet`): closed forms where the covariances
commute, and clean-fid's own `frechet_distance` (scipy's general matrix square root) elsewhere,
full rank or not."""
import numpy as np
import pytest
from cleanfid import fid as cleanfid_fid

from sde_diffusion.evaluation.frechet import frechet_distance


def test_commuting_covariances_have_the_closed_form():
    # diagonal: d^2 = |mu_1 - mu_2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 0.0])
    mu_1, mu_2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    # b's zero variance: an eigenvalue that is 0 to rounding (1e-16) enters as its root (1e-8)
    assert frechet_distance(mu_1, np.diag(a), mu_2, np.diag(b)) == pytest.approx(expected, rel=1e-7)
    # the same after a common rotation; and a Gaussian against itself
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    rotated = frechet_distance(q @ mu_1, q @ np.diag(a) @ q.T, q @ mu_2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-7)
    assert abs(frechet_distance(mu_1, q @ np.diag(a) @ q.T, mu_1, q @ np.diag(a) @ q.T)) < 1e-10


@pytest.mark.parametrize("samples", [200, 12], ids=["full rank", "rank 11 of 64"])
def test_equals_clean_fids_frechet_distance(samples):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((samples, 64)) @ rng.standard_normal((64, 64)) * 0.3
    y = rng.standard_normal((300, 64)) + 0.1
    statistics = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    ours, theirs = frechet_distance(*statistics), cleanfid_fid.frechet_distance(*statistics)
    assert ours == pytest.approx(theirs, rel=1e-8) and ours > 1


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="two Gaussians"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
