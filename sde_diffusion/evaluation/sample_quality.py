"""Sample-quality metrics: distances between sample sets, from 2-D toys to images.

Low-dimensional sets (torch tensors [N, D]):
  * `sliced_wasserstein` -- the average over random directions of the exact 1-D Wasserstein
    distance between the projected sets (Rabin et al. 2011; Bonneel et al. 2015).
  * `energy_distance` -- Szekely & Rizzo's E-statistic, a closed form over pairwise distances.

Images (uint8 numpy [N, H, W, C]) go through clean-fid (Parmar et al. 2022, "On Aliased Resizing
and Surprising Subtleties in GAN Evaluation"), whose functions are reused rather than restated:
its resizer (`cleanfid.resize.build_resizer`), its batched feature pass
(`cleanfid.fid.get_batch_features`), its Inception wrapper (`InceptionV3W`) and its KID
(`cleanfid.fid.kernel_distance`); its FID formula is computed by `frechet.frechet_distance`
(the same number without a general matrix square root). The Inception weights are read
from a local file only; nothing here downloads.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Union

import numpy as np
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.downloads_helper import inception_url as INCEPTION_URL
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer

from ..utils import Seed, make_generator
from .frechet import frechet_distance

# clean-fid's loader joins this fixed name to a folder (`InceptionV3W.__init__`).
INCEPTION_FILENAME = "inception-2015-12-05.pt"

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ReferenceStatistics:
    """A reference set for FID and KID kept as its feature mean and covariance plus a subset of
    its features (KID's subsets are drawn from them), and how many images it summarises."""
    mean: np.ndarray
    cov: np.ndarray
    kid_features: np.ndarray
    count: int


# -- low-dimensional sets -------------------------------------------------------------------


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, *, n_projections: int = 256,
                       generator: Seed = None, directions: Optional[torch.Tensor] = None,
                       p: float = 1.0) -> float:
    """Sliced Wasserstein-p distance between the empirical distributions of a [N, D] and b [M, D].

    SW_p(a, b) = ( E_theta[ W_p(<theta, a>, <theta, b>)^p ] )^(1/p), theta uniform on the unit
    sphere, estimated with `n_projections` random directions (or the given `directions` [P, D],
    normalized here, e.g. to reuse one set of directions across models). The default p = 1 is
    the average 1-D Wasserstein-1 distance, in the units of the data. Each 1-D distance is exact
    for any N and M (`_wasserstein_1d`); only the average over directions is Monte Carlo.

    Closed form to check against: for b = a + c, every 1-D distance is |<theta, c>|, so
    SW_1 = |c| E|theta_1| = |c| Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2))  (2|c|/pi for D = 2).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    # Double precision: the result is a reported number, and sets of this kind are small.
    a, b = a.detach().double(), b.to(a.device).detach().double()
    if directions is None:
        generator = make_generator(generator, a.device)
        directions = torch.randn(n_projections, a.shape[1], generator=generator,
                                 dtype=a.dtype, device=a.device)
    directions = directions.to(a)
    # A normalized standard Gaussian is uniform on the sphere.
    directions = directions / directions.norm(dim=1, keepdim=True)
    w_p = _wasserstein_1d(a @ directions.T, b @ directions.T, p)  # [P]
    return w_p.pow(p).mean().pow(1.0 / p).item()


def _wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Exact W_p between the empirical distributions of the columns of u [N, P] and v [M, P].

    W_p^p = int_0^1 |F_u^-1(q) - F_v^-1(q)|^p dq (the 1-D optimal plan is monotone). Both
    quantile functions are step functions, jumping at q = i/N and q = j/M; on each interval of
    the merged breakpoints both are constant, so the integral is a finite sum over at most
    N + M - 1 intervals. Breakpoints are kept as integers over the common denominator N*M
    (i*M and j*N) so equal fractions merge exactly.
    """
    n, m = u.shape[0], v.shape[0]
    u_sorted, v_sorted = u.sort(dim=0).values, v.sort(dim=0).values
    device = u.device
    breaks = torch.cat([torch.arange(n + 1, device=device) * m,
                        torch.arange(m + 1, device=device) * n]).unique()  # sorted, in [0, N*M]
    lower, width = breaks[:-1], breaks.diff().to(u.dtype) / (n * m)
    # On [lower, next break) the quantile of u is its sample number floor(lower / M), of v
    # floor(lower / N): no breakpoint of either lies strictly inside the interval.
    gap = (u_sorted[lower // m] - v_sorted[lower // n]).abs()  # [intervals, P]
    return (width[:, None] * gap.pow(p)).sum(dim=0).pow(1.0 / p)


def energy_distance(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int = 4096) -> float:
    """Squared energy distance between the empirical distributions of a [N, D] and b [M, D].

    D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|  (Szekely & Rizzo 2013, eq. 2.1), with X, X' ~ a and
    Y, Y' ~ b, all expectations over the empirical distributions (V-statistics, self-pairs
    included), so D^2 >= 0 and it is 0 exactly when the two sets are equal as multisets.
    In 1-D, D^2 = 2 int (F_a - F_b)^2; `scipy.stats.energy_distance` returns sqrt(D^2).
    Pairwise distances are summed `chunk_size` rows at a time to bound memory.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double(), b.to(a.device).detach().double()

    def mean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = sum(torch.cdist(x[i:i + chunk_size], y).sum() for i in range(0, len(x), chunk_size))
        return total / (len(x) * len(y))

    d2 = 2 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b)
    # Rounding can leave a tiny negative value for (near-)equal sets.
    return max(d2.item(), 0.0)


# -- images through clean-fid ----------------------------------------------------------------


def inception_cache_file() -> str:
    """Where clean-fid's Inception weights are kept once fetched: the package's cache folder."""
    from ..files.output_files import cache_folder

    return os.fspath(cache_folder() / "inception" / INCEPTION_FILENAME)


def fetch_inception(file: str) -> str:
    """Download clean-fid's Inception weights from INCEPTION_URL to `file`, written whole or not
    at all (clean-fid's own helper writes in place, so a broken download would stay). A failure
    is one FileNotFoundError line naming the URL and the file to place by hand."""
    import http.client
    import urllib.request

    from ..files.output_files import atomic_write

    def write(temporary):
        with open(temporary, "wb") as out:
            try:  # network errors are OSErrors too: kept apart, so they are not reported as disk errors
                response = urllib.request.urlopen(INCEPTION_URL, timeout=60)
            except (OSError, http.client.HTTPException) as error:
                raise _DownloadFailed(_reason(error)) from None
            with response:
                while True:
                    try:
                        chunk = response.read(1 << 20)
                    except (OSError, http.client.HTTPException) as error:
                        raise _DownloadFailed(_reason(error)) from None
                    if not chunk:
                        break
                    out.write(chunk)

    try:
        atomic_write(file, write)
    except Exception as error:  # noqa: BLE001 - offline, proxies, HTTP errors, a full disk alike
        reason = str(error) if isinstance(error, _DownloadFailed) else _reason(error)
        raise FileNotFoundError(f"could not download clean-fid's Inception weights from {INCEPTION_URL} ({reason}); "
                                f"place that file at {file} or set eval.inception_path to it") from None
    return file


class _DownloadFailed(Exception):
    """The network side of a download failed (not an OSError, which `atomic_write` reads as a disk error)."""


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # URLError wraps the socket error: name that
    return " ".join(str(reason if reason is not None else error).split()) or type(error).__name__


def load_inception(path: Optional[Union[str, os.PathLike]], device: Union[str, torch.device] = "cpu",
                   *, mode: str = "clean", download: bool = False) -> torch.nn.Module:
    """clean-fid's Inception-v3 feature extractor (2048-d pool3 features).

    `path` is the TorchScript file `inception-2015-12-05.pt` (or the folder holding it). Without
    one (None or "", the config's unset value) the file is looked for in the package's cache
    folder (`inception_cache_file`) and, with `download`, fetched there once; otherwise a missing
    file raises FileNotFoundError naming where to put it. It goes through clean-fid's own
    `InceptionV3W` with `download=False`: the same network and [0, 255] -> [-1, 1] scaling
    clean-fid uses. `mode` as in clean-fid: "clean" expects images already resized to 299x299
    (`image_features` does that); "legacy_tensorflow" resizes inside the network the way the
    TensorFlow FID code did.
    """
    if mode not in ("clean", "legacy_tensorflow"):
        raise ValueError(f"mode must be 'clean' or 'legacy_tensorflow' for Inception, got {mode!r}")
    file = os.fspath(path) if path is not None and os.fspath(path) != "" else None
    if file is None:
        cached = inception_cache_file()
        if os.path.isfile(cached):
            file = cached
        elif download:
            file = fetch_inception(cached)
        else:
            raise FileNotFoundError(
                f"clean-fid's Inception weights are needed and no path was given: download {INCEPTION_URL} to "
                f"{cached} (or let eval.download_inception=True fetch it there), or set eval.inception_path")
    if os.path.isdir(file):
        file = os.path.join(file, INCEPTION_FILENAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"clean-fid's Inception weights are needed and {file!r} does not exist: download {INCEPTION_URL} "
            f"(nothing is downloaded for a given path) and set eval.inception_path to the file")
    if os.path.basename(file) != INCEPTION_FILENAME:
        raise ValueError(f"clean-fid loads the Inception weights by the name {INCEPTION_FILENAME!r}; "
                         f"rename {file!r} or point eval.inception_path at its folder")
    model = InceptionV3W(os.path.dirname(file), download=False,
                         resize_inside=(mode == "legacy_tensorflow"))
    return model.to(device).eval()


class _ResizedImages(torch.utils.data.Dataset):
    """Images as clean-fid feeds them to a feature extractor: resized with `fn_resize` (a
    clean-fid resizer, HWC numpy in [0, 255] -> HWC), then float CHW in [0, 255]. The same steps
    as `cleanfid.utils.ResizeDataset.__getitem__`, on an in-memory array instead of files."""

    def __init__(self, images: np.ndarray, fn_resize: Callable[[np.ndarray], np.ndarray]):
        self.images, self.fn_resize = images, fn_resize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        resized = np.asarray(self.fn_resize(self.images[i]), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def image_features(images: np.ndarray, *, feature_extractor: FeatureExtractor, batch_size: int = 64,
                   device: Union[str, torch.device] = "cpu", mode: str = "clean",
                   fn_resize: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                   num_workers: int = 0) -> np.ndarray:
    """Features [N, F] (numpy) of uint8 images [N, H, W, 3] (or [N, H, W, 1], repeated to RGB).

    clean-fid's in-memory path (`cleanfid.fid.get_model_features`): each image is resized by
    `cleanfid.resize.build_resizer(mode)` -- for "clean", PIL bicubic to 299x299 on float
    channels, with no quantization after -- unless `fn_resize` replaces it (clean-fid's
    `custom_fn_resize` hook); batches of float [B, 3, H', W'] in [0, 255] then go through
    `feature_extractor` by `cleanfid.fid.get_batch_features`. `num_workers` resizes in parallel
    through a DataLoader, as clean-fid does for folders.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        # clean-fid's preprocessing assumes [0, 255]; a float image in [0, 1] would silently
        # give near-black images, so ask for the conversion explicitly.
        raise TypeError("images must be a uint8 numpy array in [0, 255] "
                        "(e.g. (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy())")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 3] or [N, H, W, 1], got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    dataset = _ResizedImages(images, build_resizer(mode) if fn_resize is None else fn_resize)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    features = [cleanfid_fid.get_batch_features(batch, feature_extractor, device) for batch in loader]
    return np.concatenate(features).reshape(len(images), -1)


def fid_kid(samples: np.ndarray, reference: Union[np.ndarray, ReferenceStatistics], *,
            feature_extractor: Optional[FeatureExtractor] = None,
            inception_path: Optional[Union[str, os.PathLike]] = None, batch_size: int = 64,
            device: Union[str, torch.device] = "cpu", mode: str = "clean",
            kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
            num_workers: int = 0) -> Dict[str, float]:
    """FID and KID between `samples` and `reference`, each either uint8 images [N, H, W, C]
    (featurized by `image_features`) or precomputed features [N, F] (e.g. of a dataset, kept);
    `reference` may also be `ReferenceStatistics` (a whole data split, `fid_reference`).

    The feature extractor is `feature_extractor` if given, else clean-fid's Inception from
    `inception_path` (`load_inception`), loaded only when some input is images.
    FID: the Frechet distance (`frechet.frechet_distance`) between Gaussians fitted to the two feature sets,
      |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))  (Heusel et al. 2017). Biased for small
      N, and needs N well above F for a full-rank covariance (N >= 10k for Inception's 2048).
    KID: `cleanfid.fid.kernel_distance`, the unbiased MMD^2 with the cubic polynomial kernel
      (x.y / F + 1)^3, averaged over `kid_subsets` random subsets of `kid_subset_size`
      (Binkowski et al. 2018); can be slightly negative when the sets match. The subsets are
      drawn with `seed`. The kernel is not scale-invariant: it is meant for order-1 features
      such as Inception's.
    """
    extractor = feature_extractor

    def features_of(x: np.ndarray) -> np.ndarray:
        nonlocal extractor
        if x.ndim == 2:
            return np.asarray(x, dtype=np.float64)
        if extractor is None:
            extractor = load_inception(inception_path, device, mode=mode)
        return image_features(x, feature_extractor=extractor, batch_size=batch_size, device=device,
                              mode=mode, num_workers=num_workers).astype(np.float64)

    sample_features = features_of(samples)
    if isinstance(reference, ReferenceStatistics):
        reference_features, mu_r, cov_r = reference.kid_features.astype(np.float64), reference.mean, reference.cov
    else:
        reference_features = features_of(reference)
        mu_r, cov_r = reference_features.mean(axis=0), np.cov(reference_features, rowvar=False)
    if sample_features.shape[1] != reference_features.shape[1]:
        raise ValueError(f"feature sizes differ: {sample_features.shape[1]} (samples) vs "
                         f"{reference_features.shape[1]} (reference)")
    if min(len(sample_features), len(reference_features)) < 2:
        raise ValueError("FID and KID need at least 2 samples in each set")
    mu_s, cov_s = sample_features.mean(axis=0), np.cov(sample_features, rowvar=False)
    fid = frechet_distance(mu_s, cov_s, mu_r, cov_r)
    with _numpy_seed(seed):
        kid = cleanfid_fid.kernel_distance(sample_features, reference_features,
                                           num_subsets=kid_subsets, max_subset_size=kid_subset_size)
    return {"fid": fid, "kid": float(kid)}


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block, then restore it: `kernel_distance` draws its
    subsets from `np.random` and takes no generator, and KID should be reproducible without
    disturbing the caller's random stream."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def quality_metric(kind: str, test: torch.Tensor, device, *, seed: int = 0, image_size: Optional[int] = None,
                   inception_path: Optional[str] = None, mixture=None, judge=None, floor=None,
                   download_inception: bool = False,
                   fid_reference: Optional[Callable[[FeatureExtractor], ReferenceStatistics]] = None):
    """(metric, main key): metric(samples in data space) -> scores against `test`, the metric
    of `eval` and `study`. kind "points" (2-D sets): sliced Wasserstein distance (plus
    `mixture.sample_errors` when the exact mixture is known); "digits": FD/KD in digit-classifier
    features (and FID/KID when `inception_path` is given); "classifier": FD/KD in the features
    of `judge` (`judges.cached_judge` of the data set's training split: MNIST,
    Fashion-MNIST); with `floor` (the training split's images) "digits" and "classifier" add the
    real-data floor at the scored sample count (`judges.RealDataFloor`: `fd_*_floor`, its
    `_spread` and `_samples`); "images": FID/KID with clean-fid's Inception against
    `test`, or against `fid_reference(extractor)` when given (a whole split's cached statistics:
    `fid_reference`). The feature extractors are loaded here, so missing Inception weights stop a
    run before any sampling."""
    from .judges import RealDataFloor

    if kind == "classifier":
        reference = judge.features(test)
        subset = min(1000, len(test))
        real_floor = RealDataFloor(judge, floor, reference, "fd_classifier", seed) if floor is not None else None

        def classifier_metric(x):
            scores = fid_kid(judge.features(x.cpu()), reference, kid_subset_size=min(subset, len(x)))
            result = {"fd_classifier": scores["fid"], "kd_classifier": scores["kid"]}
            return result if real_floor is None else {**result, **real_floor(len(x))}
        return classifier_metric, "fd_classifier"
    if kind == "points":
        def metric(x):
            scores = {"sliced_wasserstein": sliced_wasserstein(
                x.double().cpu(), test.double(), generator=torch.Generator().manual_seed(seed))}
            if mixture is not None:
                scores.update(mixture.sample_errors(x.double().cpu()))
            return scores
        return metric, "sliced_wasserstein"
    if kind not in ("digits", "images"):
        raise ValueError(f"unknown metric kind {kind!r}: points, digits or images")
    judge = extractor = reference = real_floor = None
    if kind == "digits":
        from .judges import DigitsJudge
        judge = DigitsJudge(image_size)  # fitted once, however many calls follow
        if floor is not None:
            real_floor = RealDataFloor(judge, floor, judge.features(test), "fd_digits", seed)
    if inception_path or kind == "images":
        extractor = load_inception(inception_path, device, download=download_inception)
        reference = fid_reference(extractor) if fid_reference is not None and kind == "images" else to_uint8_hwc(test)

    def metric(x):
        scores = {}
        if extractor is not None:
            scores.update(fid_kid(to_uint8_hwc(x.cpu()), reference, feature_extractor=extractor, device=device))
        if judge is not None:
            scores.update(digits_scores(x.cpu(), test, image_size, judge))
        if real_floor is not None:
            scores.update(real_floor(len(x)))
        return scores
    return metric, "fd_digits" if kind == "digits" else "fid"


def digits_scores(samples: torch.Tensor, test: torch.Tensor, image_size: int, judge=None) -> dict:
    """Frechet and kernel distances between samples and test digits in the feature space of
    the digits classifier (`judges`), the digit analogue of FID and KID. Pass `judge` to
    reuse a fitted classifier across calls."""
    from .judges import DigitsJudge

    judge = judge or DigitsJudge(image_size)
    scores = fid_kid(judge.features(samples), judge.features(test), kid_subset_size=min(1000, len(test)))
    return {"fd_digits": scores["fid"], "kd_digits": scores["kid"]}


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> uint8 [N, H, W, C], the layout clean-fid reads."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
