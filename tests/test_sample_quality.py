"""Sample-quality metrics against closed forms, scipy, and clean-fid's own file-based path.

Image metrics run with a small fixed random-projection feature extractor in place of Inception
(whose weights are not downloaded in tests); Inception loading is tested with a stand-in
TorchScript file of the same layout, with all network access made to fail the test.
"""
import math
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
import scipy.stats
import torch
from cleanfid import fid as cleanfid_fid
from PIL import Image

from sde_diffusion.evaluation.sample_quality import (INCEPTION_FILENAME, energy_distance, fid_kid, image_features,
                                    load_inception, sliced_wasserstein)


# Deprecations inside third-party code this module relies on: clean-fid's `frechet_distance`
# passes scipy's `sqrtm(disp=...)`; clean-fid's Inception is a TorchScript file.
pytestmark = [pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")]


def expected_abs_projection(dim: int) -> float:
    """E|theta_1| for theta uniform on the unit sphere of R^dim: Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)).
    The SW_1 between a set and its copy shifted by c is |c| times this (2|c|/pi for D = 2)."""
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def gaussian_set(n, dim, seed):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- sliced Wasserstein ----------------------------------------------------------------------


def test_sliced_wasserstein_is_zero_for_identical_sets():
    a = gaussian_set(300, 3, 0)
    assert sliced_wasserstein(a, a.clone(), generator=1) == 0.0
    # Order does not matter: the distance is between empirical distributions.
    assert sliced_wasserstein(a, a[torch.randperm(300)], generator=1) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_shifted_copy_in_1d_is_exactly_the_shift(p):
    # In 1-D every direction is +-1, so each projected distance is the shift itself, for any p.
    a = gaussian_set(200, 1, 0)
    assert sliced_wasserstein(a, a + 0.7, n_projections=8, generator=0, p=p) == pytest.approx(0.7, rel=1e-12)
    # A fixed direction on one axis of a 2-D set sees only that axis' shift.
    a2 = gaussian_set(200, 2, 1)
    shift = torch.tensor([0.7, -2.0], dtype=torch.float64)
    axis = torch.tensor([[1.0, 0.0]])
    assert sliced_wasserstein(a2, a2 + shift, directions=axis) == pytest.approx(0.7, rel=1e-12)


@pytest.mark.parametrize("dim", [2, 5])
def test_shifted_copy_matches_the_closed_form_average_over_directions(dim):
    a = gaussian_set(50, dim, 2)
    shift = torch.linspace(-1.0, 2.0, dim, dtype=torch.float64)
    expected = shift.norm().item() * expected_abs_projection(dim)
    if dim == 2:
        assert expected == pytest.approx(2 * shift.norm().item() / math.pi)
    value = sliced_wasserstein(a, a + shift, n_projections=40_000, generator=3)
    # Monte Carlo over directions only: |<theta, c>| has std below |c|, so 40k directions
    # give a relative error well under 1%.
    assert value == pytest.approx(expected, rel=0.01)


def test_unequal_sizes_are_exact_not_truncated():
    u = gaussian_set(37, 1, 4)
    v = 0.5 + 2.0 * gaussian_set(101, 1, 5)
    # W_1 in 1-D against scipy's exact CDF-based computation.
    w1 = scipy.stats.wasserstein_distance(u[:, 0].numpy(), v[:, 0].numpy())
    assert sliced_wasserstein(u, v, n_projections=4, generator=0) == pytest.approx(w1, rel=1e-10)
    # W_2 against the equal-size formula on copies blown up to a common size: repeating every
    # point of u M times and of v N times leaves both distributions unchanged.
    uu = u[:, 0].repeat_interleave(101).sort().values
    vv = v[:, 0].repeat_interleave(37).sort().values
    w2 = (uu - vv).pow(2).mean().sqrt().item()
    assert sliced_wasserstein(u, v, n_projections=4, generator=0, p=2) == pytest.approx(w2, rel=1e-10)
    # A truncated comparison would call these equal; the distributions are not.
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[0.0], [1.0], [1.0]])
    assert sliced_wasserstein(a, b, n_projections=1) == pytest.approx(1 / 6)


def test_sliced_wasserstein_rises_monotonically_with_the_shift():
    a = gaussian_set(400, 2, 6)
    b = gaussian_set(300, 2, 7)
    direction = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    values = [sliced_wasserstein(a, b + s * direction, generator=8) for s in [0.0, 0.5, 1.0, 2.0, 4.0]]
    assert all(x < y for x, y in zip(values, values[1:])), values
    assert values[0] < 0.1  # two samples of one Gaussian


def test_sliced_wasserstein_is_reproducible_with_a_seed_and_rejects_bad_shapes():
    a, b = gaussian_set(100, 3, 0), gaussian_set(80, 3, 1)
    assert sliced_wasserstein(a, b, generator=5) == sliced_wasserstein(a, b, generator=5)
    with pytest.raises(ValueError, match="D"):
        sliced_wasserstein(a, b[:, :2])


# -- energy distance -------------------------------------------------------------------------


def test_energy_distance_is_the_square_of_scipys():
    # scipy.stats.energy_distance(u, v) = sqrt(2 int (F_u - F_v)^2) = sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|),
    # i.e. the square root of the E-statistic returned here (both over the empirical distributions).
    u = gaussian_set(60, 1, 0)
    v = 0.3 + gaussian_set(45, 1, 1)
    expected = scipy.stats.energy_distance(u[:, 0].numpy(), v[:, 0].numpy()) ** 2
    assert energy_distance(u, v) == pytest.approx(expected, rel=1e-10)
    # Chunking the pairwise sums does not change the value.
    assert energy_distance(u, v, chunk_size=7) == pytest.approx(expected, rel=1e-10)


def test_energy_distance_zero_for_identical_sets_and_closed_form_for_two_points():
    a = gaussian_set(50, 4, 2)
    assert energy_distance(a, a.flip(0)) == pytest.approx(0.0, abs=1e-12)
    # One point each, at distance r: 2r - 0 - 0.
    assert energy_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])) == pytest.approx(10.0)


# -- Frechet distance and FID/KID on features ------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    # For diagonal S_i = diag(s_i^2) the matrix square root is elementwise:
    # |mu_1 - mu_2|^2 + sum_k (s_1k - s_2k)^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    value = cleanfid_fid.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert value == pytest.approx(expected, rel=1e-8)


def test_fid_kid_on_gaussian_features_matches_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -0.5, 0.0])
    s1, s2 = np.ones(4), np.array([1.0, 2.0, 1.0, 0.5])
    f1 = mu1 + s1 * rng.normal(size=(20_000, 4))
    f2 = mu2 + s2 * rng.normal(size=(20_000, 4))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # 1.25 + 1.25
    scores = fid_kid(f1, f2, kid_subsets=10, kid_subset_size=500)
    assert scores["fid"] == pytest.approx(expected, rel=0.05)
    assert scores["kid"] > 0.05
    same = fid_kid(f1, f1.copy(), kid_subsets=10, kid_subset_size=500)
    assert abs(same["fid"]) < 1e-6
    assert abs(same["kid"]) < 0.01 * scores["kid"]


def test_kid_is_reproducible_and_leaves_numpys_random_stream_alone():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(300, 5)), 0.2 + rng.normal(size=(300, 5))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = fid_kid(f1, f2, kid_subsets=5, kid_subset_size=100, seed=4)
    assert (np.random.get_state()[1] == before).all()
    assert fid_kid(f1, f2, kid_subsets=5, kid_subset_size=100, seed=4) == first


# -- images through clean-fid with a small feature extractor ---------------------------------


class RandomProjection(torch.nn.Module):
    """A fixed stand-in for Inception: average-pool to pool x pool, then a random linear map to F
    features, scaled by 1/255 to order-1 values like Inception's (KID's polynomial kernel is
    not scale-invariant). Records the batches it sees to check the preprocessing."""

    def __init__(self, features: int = 8, pool: int = 4, seed: int = 0):
        super().__init__()
        weight = torch.randn(3 * pool ** 2, features, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("weight", weight / (64 * math.sqrt(3 * pool ** 2)))
        self.pool = pool
        self.seen = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(x.shape), x.dtype, x.min().item(), x.max().item()))
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, self.pool).flatten(1)
        # Centre to [-0.5, 0.5] and rectify, so that, as with a real network's non-negative
        # features, pixel noise moves the feature means and not only their spread.
        return torch.relu((pooled - 127.5) @ self.weight)


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 images [n, size, size, 3]: upsampled random 4x4 colour blocks."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 226, size=(n, 4, 4, 3))
    return np.kron(blocks, np.ones((1, size // 4, size // 4, 1))).astype(np.uint8)


def test_image_features_match_clean_fids_own_folder_path(tmp_path):
    images = random_images(6, seed=1)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    extractor = RandomProjection()
    reference = cleanfid_fid.get_folder_features(str(tmp_path), extractor, num_workers=0, batch_size=4,
                                                 device=torch.device("cpu"), mode="clean", verbose=False)
    ours = image_features(images, feature_extractor=extractor, batch_size=4)
    np.testing.assert_array_equal(ours, reference)
    # clean mode: float batches at 299x299 in [0, 255].
    shape, dtype, low, high = extractor.seen[-1]
    assert shape[1:] == (3, 299, 299) and dtype == torch.float32 and 0 <= low and high <= 255


def test_image_features_grayscale_modes_and_input_checks():
    rgb = random_images(5, seed=2)
    gray = rgb[..., :1]
    extractor = RandomProjection()
    np.testing.assert_array_equal(image_features(gray, feature_extractor=extractor),
                                  image_features(np.repeat(gray, 3, axis=-1), feature_extractor=extractor))
    # legacy_tensorflow leaves resizing to the network: the extractor sees the native size.
    features = image_features(rgb, feature_extractor=extractor, mode="legacy_tensorflow", batch_size=2)
    assert features.shape == (5, 8) and extractor.seen[-1][0] == (1, 3, 16, 16)
    with pytest.raises(TypeError, match="uint8"):
        image_features(rgb / 255.0, feature_extractor=extractor)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        image_features(rgb[..., :2], feature_extractor=extractor)


def test_fid_kid_with_custom_extractor_is_zero_on_equal_sets_and_grows_with_noise():
    reference = random_images(100, seed=3)
    extractor = RandomProjection(features=16, pool=16)
    same = fid_kid(reference.copy(), reference, feature_extractor=extractor)
    assert abs(same["fid"]) < 1e-9
    # KID's unbiased MMD^2 assumes independent sets; a set against itself (one subset = the whole
    # set, m = N) gives exactly 2 (mean off-diagonal kernel - mean kernel), a small O(1/N)
    # negative number, not 0.
    f = image_features(reference, feature_extractor=extractor).astype(np.float64)
    m, kernel = len(f), (f @ f.T / f.shape[1] + 1) ** 3
    self_kid = 2 * (kernel.sum() - np.trace(kernel)) / (m * (m - 1)) - 2 * kernel.sum() / m ** 2
    assert same["kid"] == pytest.approx(self_kid, rel=1e-6) and -0.05 < same["kid"] < 0

    # Reference as precomputed features: featurized once, reused across noise levels.
    noise = np.random.default_rng(4).normal(size=reference.shape)
    scores = []
    for level in [0.0, 20.0, 40.0, 80.0]:
        noisy = np.clip(reference + level * noise, 0, 255).round().astype(np.uint8)
        scores.append(fid_kid(noisy, f, feature_extractor=extractor))
    fids, kids = [s["fid"] for s in scores], [s["kid"] for s in scores]
    assert all(x < y for x, y in zip(fids, fids[1:])), fids
    assert all(x < y for x, y in zip(kids, kids[1:])), kids
    assert fids[1] > 0.01 and fids[-1] > 0.3 and kids[-1] > 0

    shifted = np.clip(reference.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    shifted_scores = fid_kid(shifted, f, feature_extractor=extractor)
    assert shifted_scores["fid"] > 1.0 and shifted_scores["kid"] > 0.1
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_kid(reference, f[:, :4], feature_extractor=extractor)


# -- Inception from a local file, never downloaded -------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    monkeypatch.setattr(requests.sessions.Session, "request", fail)
    monkeypatch.setattr(requests, "get", fail)
    monkeypatch.setattr(socket, "create_connection", fail)


def test_missing_inception_file_raises_without_downloading(tmp_path, no_network):
    missing = tmp_path / "weights" / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as info:
        load_inception(missing, "cpu")
    message = str(info.value)
    assert str(missing) in message and "eval.inception_path" in message
    assert "https://nvlabs-fi-cdn.nvidia.com/" in message and INCEPTION_FILENAME in message
    assert "\n" not in message
    for unset in (None, ""):  # "" is the config's unset value
        with pytest.raises(FileNotFoundError, match="no path was given"):
            load_inception(unset, "cpu")
    # fid_kid needs Inception only for images; features alone never touch the file.
    with pytest.raises(FileNotFoundError):
        fid_kid(random_images(4), random_images(4, seed=1), inception_path=missing)
    rng = np.random.default_rng(0)
    fid_kid(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), inception_path=None)


class _StandInLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


class _StandInInception(torch.nn.Module):
    """The layout clean-fid's `InceptionV3W` expects of the TorchScript file: a `layers`
    submodule on [-1, 1] images at 299x299, and forward(x, return_features)."""

    def __init__(self):
        super().__init__()
        self.layers = _StandInLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def test_load_inception_reads_a_local_torchscript_file(tmp_path, no_network):
    torch.manual_seed(0)
    stand_in = _StandInInception()
    file = tmp_path / INCEPTION_FILENAME
    torch.jit.save(torch.jit.script(stand_in), str(file))
    images = random_images(3, seed=5)
    for path in (file, tmp_path):  # the file itself or its folder
        model = load_inception(path, "cpu")
        features = image_features(images, feature_extractor=model)
        assert features.shape == (3, 2048)
    # clean-fid's wrapper maps [0, 255] to [-1, 1] before the layers.
    resized = torch.stack([torch.from_numpy(cleanfid_fid.build_resizer("clean")(im).transpose(2, 0, 1).copy())
                           for im in images])
    with torch.no_grad():
        expected = stand_in.layers((resized - 128) / 128).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    other_name = tmp_path / "inception.pt"
    file.rename(other_name)
    with pytest.raises(ValueError, match=INCEPTION_FILENAME):
        load_inception(other_name, "cpu")


def test_inception_is_fetched_once_into_the_cache_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    import io as _io

    from sde_diffusion.evaluation.sample_quality import fetch_inception, inception_cache_file

    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    target = inception_cache_file()
    assert target.startswith(str(tmp_path / "cache")) and target.endswith(INCEPTION_FILENAME)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as refused:
        load_inception(None, "cpu", download=True)
    message = str(refused.value)
    assert "\n" not in message and "https://nvlabs-fi-cdn.nvidia.com/" in message and target in message
    assert "(network unreachable)" in message and "cannot write" not in message  # the network's fault, not the disk's
    assert not Path(target).parent.exists() or not any(Path(target).parent.iterdir())  # no partial file

    class _Response(_io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        return _Response(b"weights")

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    assert fetch_inception(target) == target and Path(target).read_bytes() == b"weights" and len(calls) == 1
    with pytest.raises(FileNotFoundError, match="no path was given"):  # without download, the message says where
        monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(tmp_path / "empty"))
        load_inception("", "cpu")
