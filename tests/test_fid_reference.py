"""FID's reference statistics: a whole split streamed in chunks gives exactly the statistics of
all its features at once, is cached under a digest of the images and the extractor (read back,
rebuilt when one image changes), and `--mode eval` uses it and says so; clean-fid's published
statistics are never fetched unless allowed."""
import json

import numpy as np
import pytest
import torch
from test_sample_quality import _StandInInception, no_network, random_images  # noqa: F401 (a fixture)

from sde_diffusion.evaluation import fid_reference
from sde_diffusion.app.config import ConfigError, build_model
from sde_diffusion.app.modes import run_eval
from sde_diffusion.app.validation import validate_config
from sde_diffusion.files.checkpoints import save_checkpoint, snapshot_path
from sde_diffusion.training.ema import EMA
from sde_diffusion.evaluation.sample_quality import INCEPTION_FILENAME, ReferenceStatistics, fid_kid, image_features


class CountingExtractor(torch.nn.Module):
    """A feature extractor with full-rank features (means and products of channel values)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.proj = torch.nn.Linear(12, 16)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        self.calls += 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)
        return torch.tanh(self.proj(pooled))


def as_batches(images_uint8):
    data = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    return lambda indices: data[indices]


def test_chunked_statistics_equal_those_of_all_features_and_are_cached_by_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_reference, "CHUNK", 7)
    monkeypatch.setattr(fid_reference, "KID_FEATURES", 10)
    images = random_images(30, seed=3)
    extractor = CountingExtractor()
    stats = fid_reference.split_statistics(as_batches(images), 30, extractor, "x", tmp_path, "set")
    every = image_features(images, feature_extractor=extractor).astype(np.float64)
    # float32 features: batches of 7 and of 64 round differently in the last bits
    np.testing.assert_allclose(stats.mean, every.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.cov, np.cov(every, rowvar=False), rtol=1e-5, atol=1e-7)
    assert stats.count == 30 and stats.kid_features.shape == (10, 16)
    rows = {tuple(np.round(row, 5)) for row in every.astype(np.float32)}
    assert all(tuple(np.round(row, 5)) in rows for row in stats.kid_features)
    (cached,) = tmp_path.glob("fid_reference_set_*.npz")

    extractor.calls = 0
    again = fid_reference.split_statistics(as_batches(images), 30, extractor, "x", tmp_path, "set")
    assert extractor.calls == 0 and np.array_equal(again.cov, stats.cov)
    changed = images.copy()
    changed[17, 0, 0, 0] ^= 1  # one value of one image
    fid_reference.split_statistics(as_batches(changed), 30, extractor, "x", tmp_path, "set")
    assert extractor.calls > 0 and len(list(tmp_path.glob("fid_reference_set_*.npz"))) == 2
    fid_reference.split_statistics(as_batches(images), 30, extractor, "other weights", tmp_path, "set")
    assert len(list(tmp_path.glob("fid_reference_set_*.npz"))) == 3 and cached.exists()


def test_fid_against_statistics_equals_fid_against_the_features():
    rng = np.random.default_rng(0)
    samples, reference = rng.normal(size=(300, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    stats = ReferenceStatistics(reference.mean(axis=0), np.cov(reference, rowvar=False), reference, 400)
    direct, via = fid_kid(samples, reference), fid_kid(samples, stats)
    assert via["fid"] == pytest.approx(direct["fid"], rel=1e-9) and via["kid"] == pytest.approx(direct["kid"], rel=1e-6)
    assert direct["fid"] > 0.3


def test_cleanfid_statistics_are_not_fetched_unless_allowed(no_network):
    with pytest.raises(FileNotFoundError, match=r"no_such_set_clean_train_32\.npz.*download_inception"):
        fid_reference.cleanfid_statistics("no_such_set", "train", 32)


@pytest.fixture
def npz_workdir(tmp_path):
    """An untrained 16x16 RGB network on an .npz data set, and a stand-in Inception file."""
    from configs.vp_digits import get_config

    images = random_images(40, seed=4)
    np.savez(tmp_path / "images.npz", x=images)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_StandInInception()), str(tmp_path / INCEPTION_FILENAME))
    config = get_config()
    config.data.update(dataset="npz", root=str(tmp_path / "images.npz"), num_channels=3, image_size=16)
    config.model.update(nf=32, ch_mult=(1,), attn_resolutions=())
    config.sampling.update(method="dpm_solver++", steps=2, batch_size=8)
    config.eval.update(num_samples=8, inception_path=str(tmp_path / INCEPTION_FILENAME))
    model = build_model(config)
    save_checkpoint(snapshot_path(tmp_path / "work", 1),
                    {"model": model.state_dict(), "ema": EMA(model, 0.9).state_dict(), "step": 1})
    return config, tmp_path / "work"


def test_eval_compares_with_the_cached_training_split_and_says_so(npz_workdir):
    config, workdir = npz_workdir
    validate_config(config, "eval")
    report = run_eval(config, workdir)
    (cached,) = (workdir / "eval").glob("fid_reference_npz_train_16_*.npz")
    assert "whole npz training split" in report["fid_reference"] and report["fid"] > 0
    with np.load(cached) as saved:
        assert int(saved["count"]) > 30  # the training split, not the test split's few
    stamp = cached.stat().st_mtime_ns
    assert run_eval(config, workdir)["fid"] == pytest.approx(report["fid"], rel=1e-9)
    assert cached.stat().st_mtime_ns == stamp
    config.eval.fid_reference = "test"
    on_test = run_eval(config, workdir)
    assert on_test["fid_reference"] == "the npz test split" and on_test["fid"] != pytest.approx(report["fid"])
    assert json.loads(next((workdir / "eval").glob("eval_1*.json")).read_text())["fid"] == on_test["fid"]


@pytest.mark.parametrize("value", ["training", "cleanfid:cifar10", "cleanfid::train"])
def test_an_unknown_fid_reference_is_a_config_error(npz_workdir, value):
    config, _ = npz_workdir
    config.eval.fid_reference = value
    with pytest.raises(ConfigError, match="eval.fid_reference"):
        validate_config(config, "eval")


def test_eval_without_a_path_fetches_inception_once_into_the_cache_when_allowed(npz_workdir, monkeypatch):
    import io
    import urllib.request

    from sde_diffusion.evaluation.sample_quality import inception_cache_file

    config, workdir = npz_workdir
    stand_in = (workdir.parent / INCEPTION_FILENAME).read_bytes()
    config.eval.update(inception_path="", fid_reference="test")
    monkeypatch.setenv("SDE_DIFFUSION_CACHE", str(workdir.parent / "cache"))
    config.eval.download_inception = False  # the default, and not in the cache: one line saying where
    with pytest.raises(FileNotFoundError) as refused:
        run_eval(config, workdir)
    assert "\n" not in str(refused.value) and inception_cache_file() in str(refused.value)
    assert not (workdir / "eval").exists() or not list((workdir / "eval").glob("eval_*.json"))

    fetched = []

    def serve(url, timeout=None):
        fetched.append(url)
        return io.BytesIO(stand_in)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    config.eval.download_inception = True  # the opt-in
    first = run_eval(config, workdir)
    assert fetched == ["https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"]
    assert open(inception_cache_file(), "rb").read() == stand_in
    assert run_eval(config, workdir)["fid"] == pytest.approx(first["fid"], rel=1e-9) and len(fetched) == 1
    config.eval.inception_path = str(workdir.parent / INCEPTION_FILENAME)  # the same file given by path: same FID
    assert run_eval(config, workdir)["fid"] == pytest.approx(first["fid"], rel=1e-9) and len(fetched) == 1
