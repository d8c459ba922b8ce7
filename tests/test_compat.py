"""Loading score_sde_pytorch checkpoints (`sde_diffusion.compat`): the fixtures made by the
reference code itself reproduce its outputs with the EMA weights, wrong configs and unsafe or
broken files stop with clear errors, and every published config family round-trips through the
reference layout."""
import copy
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import torch
from torch import nn

from sde_diffusion.checkpoints import CheckpointError
from sde_diffusion.compat import (ChainIndexConditioned, load_reference_checkpoint, read_reference_checkpoint,
                                  reference_key_map, reference_noise_table, reference_units)
from sde_diffusion.app.config import ConfigError
from sde_diffusion.app.validation import validate_config
from sde_diffusion.models import get_model
from sde_diffusion.models.blocks import BigGANResnetBlock, Combine, ResnetBlock
from sde_diffusion.models.layers import AttentionBlock, GaussianFourierProjection
from sde_diffusion.models.resampling import Downsample, Upsample
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"reference fixtures not found at {FIXTURES}")
# fixture -> its twin in configs/published
TWINS = {"ddpm_vp_cifar10": "vp_cifar10_ddpm",
         "ddpmpp_vp_cifar10_continuous": "vp_cifar10_ddpmpp_continuous",
         "ncsnpp_ve_cifar10_continuous": "ve_cifar10_ncsnpp_continuous"}
# score_sde's families (configs/published/edm_* read EDM's pickles: tests/test_edm.py)
PUBLISHED = sorted(p.stem for p in (ROOT / "configs" / "published").glob("*_cifar10_*.py")
                   if not p.stem.startswith("edm_"))
# the fields the fixtures shrank to stay fast
REDUCED = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "image_size")


def published_config(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / "published" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def fixture_config(name):
    return ml_collections.ConfigDict(json.loads((FIXTURES / f"{name}.json").read_text()))


def run(model, name):
    expected = dict(np.load(FIXTURES / f"{name}.npz"))
    with torch.no_grad():
        out = model(torch.from_numpy(expected["x"]), torch.from_numpy(expected["labels"]))
    return (out - torch.from_numpy(expected["out"])).abs().max().item()


# --------------------------------------------------------------------------- the fixtures


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_fixture_reproduced_with_the_ema_weights(name):
    model = load_reference_checkpoint(FIXTURES / f"{name}.pth", fixture_config(name))
    assert run(model, name) < 1e-5
    # The loaded parameters are the shadow tensors themselves, not the raw weights.
    shadow = torch.load(FIXTURES / f"{name}.pth", weights_only=True)["ema"]["shadow_params"]
    assert len(shadow) == len(list(model.parameters()))
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), shadow))


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_our_names_are_the_reference_keys(name):
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    names = list(reference_key_map(get_model(fixture_config(name))).values())
    assert names == [key for key in checkpoint["model"] if key != "module.sigmas"]


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_raw_weights_miss_the_reference_output(name):
    # Load the raw (non-averaged) weights through the same names: the output is far off, so the
    # 1e-5 agreement above proves the EMA weights were taken.
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    model = get_model(fixture_config(name)).eval()
    model.load_state_dict({ours: checkpoint["model"][reference]
                           for ours, reference in reference_key_map(model).items()})
    assert run(model, name) > 1e-3


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_published_twin_matches_the_fixture_config_field_for_field(name):
    """The twin in configs/published, shrunk to the fixture's width, has every model, data and
    training field of the reference config that built the fixture, and reproduces its output."""
    reference, ours = fixture_config(name), published_config(TWINS[name])
    for section in ("model", "data", "training"):
        for field, value in reference[section].items():
            if field in REDUCED:
                ours[section][field] = value
            elif field == "dataset":
                assert ours.data.dataset == value.lower()
            else:
                mine = ours[section][field]
                assert (list(mine) if isinstance(mine, (list, tuple)) else mine) == value, (section, field)
    validate_config(ours)
    assert run(load_reference_checkpoint(FIXTURES / f"{name}.pth", ours), name) < 1e-5


# ------------------------------------------------------------------------------- errors


def _error(path, config):
    with pytest.raises(CheckpointError) as info:
        load_reference_checkpoint(path, config)
    return str(info.value)


@requires_fixtures
def test_wrong_family_names_the_first_offending_key():
    message = _error(FIXTURES / "ddpm_vp_cifar10.pth", fixture_config("ncsnpp_ve_cifar10_continuous"))
    assert "does not fit the network built from this config" in message
    # ddpm's second dense layer sits where NCSN++'s first one (after the Fourier features) does
    assert ("checkpoint key 'module.all_modules.1.weight' has shape [128, 128], the network built "
            "from the config expects [128, 64]") in message
    assert "missing from the checkpoint: 'module.all_modules.0.W'" in message
    assert "the network does not have: 'module.all_modules.0.weight'" in message


@requires_fixtures
def test_other_width_names_the_first_offending_key():
    config = fixture_config("ncsnpp_ve_cifar10_continuous")
    config.model.nf = 16
    message = _error(FIXTURES / "ncsnpp_ve_cifar10_continuous.pth", config)
    assert ("checkpoint key 'module.all_modules.0.W' has shape [32], the network built from the "
            "config expects [16] (its 'fourier_projection.frequencies')") in message


@requires_fixtures
def test_more_blocks_than_the_file_lists_missing_keys(tmp_path):
    config = fixture_config("ddpmpp_vp_cifar10_continuous")
    config.model.num_res_blocks = 2
    assert "missing from the checkpoint" in _error(FIXTURES / "ddpmpp_vp_cifar10_continuous.pth", config)


@requires_fixtures
def test_extra_missing_key_and_short_ema_are_named(tmp_path):
    name = "ddpmpp_vp_cifar10_continuous"
    config, checkpoint = fixture_config(name), torch.load(FIXTURES / f"{name}.pth", weights_only=True)

    extra = copy.deepcopy(checkpoint)
    extra["model"]["module.all_modules.99.weight"] = torch.zeros(3)
    torch.save(extra, tmp_path / "extra.pth")
    assert "1 checkpoint key(s) the network does not have: 'module.all_modules.99.weight'" in _error(
        tmp_path / "extra.pth", config)

    missing = copy.deepcopy(checkpoint)
    del missing["model"]["module.all_modules.5.Conv_2.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    assert "missing from the checkpoint: 'module.all_modules.5.Conv_2.bias'" in _error(
        tmp_path / "missing.pth", config)

    short = copy.deepcopy(checkpoint)
    short["ema"]["shadow_params"].pop()
    torch.save(short, tmp_path / "short.pth")
    assert "EMA has 153 shadow tensors, but its network has 154 parameters" in _error(
        tmp_path / "short.pth", config)


@requires_fixtures
def test_ve_noise_table_must_match_the_config():
    config = fixture_config("ncsnpp_ve_cifar10_continuous")
    config.model.sigma_max = 100
    message = _error(FIXTURES / "ncsnpp_ve_cifar10_continuous.pth", config)
    assert "'module.sigmas' (1000 levels from 50 to 0.01)" in message and "sigma_max=100," in message


def test_missing_truncated_and_foreign_files(tmp_path):
    config = fixture_config("ddpm_vp_cifar10") if FIXTURES.is_dir() else None
    with pytest.raises(CheckpointError, match="no reference checkpoint at"):
        read_reference_checkpoint(tmp_path / "absent.pth")

    torch.save({"model": {"conv_in.weight": torch.zeros(1)}, "ema": {"shadow_params": []}, "step": 1},
               tmp_path / "ours.pth")
    with pytest.raises(CheckpointError, match="'conv_in.weight' lacks the 'module.' prefix"):
        read_reference_checkpoint(tmp_path / "ours.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict with 'model' and 'ema' entries"):
        read_reference_checkpoint(tmp_path / "tensor.pth")

    if config is not None:
        data = (FIXTURES / "ddpm_vp_cifar10.pth").read_bytes()
        (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
        assert "cannot load reference checkpoint" in _error(tmp_path / "truncated.pth", config)


class _Payload:
    """Unpickling this opens (creates) `marker`: code run by merely loading a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious_checkpoint(path, marker):
    torch.save({"model": {"module.all_modules.0.weight": torch.zeros(1)}, "ema": {"shadow_params": []},
                "step": _Payload(marker)}, path)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    # The payload is live: a full unpickle runs it.
    _malicious_checkpoint(tmp_path / "live.pth", tmp_path / "live_marker")
    torch.load(tmp_path / "live.pth", weights_only=False)
    assert (tmp_path / "live_marker").exists()

    _malicious_checkpoint(tmp_path / "evil.pth", tmp_path / "marker")
    with pytest.raises(CheckpointError, match="cannot load reference checkpoint") as refused:
        read_reference_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "marker").exists()
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "\x1b" not in message
    assert "names the Python global" in message and "would run code from the file" in message


# ------------------------------------------------------------- every family, round trip


def shrink(config, image_size=16):
    """The same family at test size: widths and image size cut down, structure kept."""
    config = copy.deepcopy(config)
    config.model.nf = 32 if config.model.name == "ddpm" else 16
    config.model.dropout = 0.0
    config.data.image_size = image_size
    config.model.attn_resolutions = tuple(image_size // 16 * r for r in config.model.attn_resolutions)
    config.model.num_res_blocks = 3 if config.model.num_res_blocks == 8 else 2  # deep stays deeper
    return config


def to_reference_layout(model, shadow, table):
    """The checkpoint the reference code would write for `model` with EMA tensors `shadow`."""
    state = model.state_dict()
    weights = {"module.sigmas": table}
    weights.update({reference: state[ours].clone() for ours, reference in reference_key_map(model).items()})
    return {"model": weights, "optimizer": {}, "step": 7,
            "ema": {"decay": 0.999, "num_updates": 7, "shadow_params": [s.clone() for s in shadow]}}


def round_trip(config, tmp_path):
    torch.manual_seed(0)
    source = get_model(config).eval()
    with torch.no_grad():  # random weights everywhere (init_scale=0 would zero some branches)
        for param in source.parameters():
            param.add_(0.05 * torch.randn_like(param))
    shadow = [p.detach() + 0.05 * torch.randn_like(p) for p in source.parameters()]
    table = reference_noise_table(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
    torch.save(to_reference_layout(source, shadow, table), tmp_path / "checkpoint.pth")
    loaded = load_reference_checkpoint(tmp_path / "checkpoint.pth", config)

    averaged = copy.deepcopy(source)
    with torch.no_grad():
        for param, value in zip(averaged.parameters(), shadow):
            param.copy_(value)
    size = config.data.image_size
    x = torch.rand(2, config.data.num_channels, size, size)
    sigma = torch.tensor([0.5, 20.0])
    with torch.no_grad():
        if isinstance(loaded, ChainIndexConditioned):
            index = torch.tensor([100, 900])  # the chain levels sigmas[i] map back to label i
            averaged.scale_by_sigma = False
            expected = averaged(x, index.float()) / table[index].float().reshape(2, 1, 1, 1)
            got = loaded(x, table[index].float())
        else:
            labels = torch.tensor([3.0, 700.0]) if config.training.sde != "vesde" else sigma
            expected, got = averaged(x, labels), loaded(x, labels)
            assert (source(x, labels) - got).abs().max() > 1e-4  # raw weights would differ
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_validate_and_round_trip(name, tmp_path):
    config = published_config(name)
    validate_config(config)
    assert (config.data.image_size, tuple(config.model.ch_mult), config.model.nf) == (32, (1, 2, 2, 2), 128)
    round_trip(shrink(config), tmp_path)


# Families beyond the published CIFAR-10 ones (CelebA-HQ, FFHQ, LSUN use output_skip,
# input_skip, more levels and other attention resolutions).
VARIANTS = [
    dict(progressive=progressive, progressive_input=progressive_input, fir=fir,
         progressive_combine=("sum", "cat")[i % 2], embedding_type=("fourier", "positional")[i // 2 % 2],
         resblock_type="biggan" if i % 3 else "ddpm", resamp_with_conv=i % 4 != 1,
         ch_mult=((1, 2), (1, 1, 2, 2, 2), (2, 1, 2))[i % 3], attn_resolutions=((8,), (16, 4), ())[i % 3],
         conditional=i != 5)
    for i, (progressive, progressive_input, fir) in enumerate(itertools.product(
        ("none", "output_skip", "residual"), ("none", "input_skip", "residual"), (False, True)))
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_ncsnpp_families_round_trip_and_follow_the_reference_module_list(options, tmp_path):
    config = shrink(published_config("ve_cifar10_ncsnpp_continuous"))
    config.model.update(options)
    config.model.num_res_blocks = 1
    model = get_model(config)
    assert [kind(unit) for _, unit in reference_units(model)] == reference_module_list(config)
    round_trip(config, tmp_path)


# The model sections of the reference's high-resolution NCSN++ configs (configs/ve/bedroom_,
# church_, celebahq_256_, ffhq_256_ncsnpp_continuous.py: 7 levels at 256 px; celebahq_ and
# ffhq_ncsnpp_continuous.py: 8 levels at 1024 px), at reduced width and image size.
HIGH_RESOLUTION = {
    "256px": dict(nf=8, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, image_size=64),
    "1024px": dict(nf=4, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, image_size=128),
}


@pytest.mark.parametrize("name", list(HIGH_RESOLUTION))
def test_high_resolution_ncsnpp_layouts_follow_the_reference(name, tmp_path):
    layout = dict(HIGH_RESOLUTION[name])
    config = published_config("ve_cifar10_ncsnpp_continuous")
    config.data.image_size = layout.pop("image_size")
    config.model.update(layout, attn_resolutions=(16,), fir=True, skip_rescale=True, resblock_type="biggan",
                        progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
                        embedding_type="fourier", scale_by_sigma=True, dropout=0.0, sigma_max=378.0, num_scales=2000)
    validate_config(config)
    model = get_model(config)
    assert [kind(unit) for _, unit in reference_units(model)] == reference_module_list(config)
    round_trip(config, tmp_path)


@pytest.mark.parametrize("ch_mult, attn, with_conv", [((1, 2), (8,), True), ((1, 2, 2), (16, 4), False)])
def test_ddpm_families_round_trip_and_follow_the_reference_module_list(ch_mult, attn, with_conv, tmp_path):
    config = shrink(published_config("vp_cifar10_ddpm"))
    config.model.update(dict(ch_mult=ch_mult, attn_resolutions=attn, resamp_with_conv=with_conv))
    model = get_model(config)
    assert [kind(unit) for _, unit in reference_units(model)] == reference_module_list(config)
    round_trip(config, tmp_path)


def kind(unit):
    kinds = [(GaussianFourierProjection, "fourier"), (nn.Linear, "dense"), (Combine, "combine"),
             ((ResnetBlock, BigGANResnetBlock), "resnet"), (AttentionBlock, "attention"),
             (Downsample, "down"), (Upsample, "up"), (nn.GroupNorm, "norm"), (nn.Conv2d, "conv")]
    return next(name for cls, name in kinds if isinstance(unit, cls))


def reference_module_list(config):
    """The kinds of the entries of the reference network's `all_modules`, written down from the
    construction loops of score_sde_pytorch's models/ncsnpp.py and models/ddpm.py, independently
    of our module tree: the index each of our layers gets must be the reference's."""
    model, levels = config.model, len(config.model.ch_mult)
    sizes = [config.data.image_size // 2 ** i for i in range(levels)]
    ncsnpp = model.name == "ncsnpp"
    biggan = ncsnpp and model.resblock_type == "biggan"
    progressive = model.progressive if ncsnpp else "none"
    progressive_input = model.progressive_input if ncsnpp else "none"
    kinds = ["fourier"] if ncsnpp and model.embedding_type == "fourier" else []
    kinds += ["dense", "dense"] if (model.conditional or not ncsnpp) else []
    kinds += ["conv"]
    for level in range(levels):
        for _ in range(model.num_res_blocks):
            kinds += ["resnet"] + (["attention"] if sizes[level] in model.attn_resolutions else [])
        if level != levels - 1:
            kinds += ["resnet" if biggan else "down"]
            # input_skip's parameter-free pyramid_downsample is an attribute outside all_modules;
            # residual's pyramid_downsample has a convolution and is appended
            kinds += {"input_skip": ["combine"], "residual": ["down"], "none": []}[progressive_input]
    kinds += ["resnet", "attention", "resnet"]
    for level in reversed(range(levels)):
        kinds += ["resnet"] * (model.num_res_blocks + 1)
        kinds += ["attention"] if sizes[level] in model.attn_resolutions else []
        if progressive != "none":
            coarsest = level == levels - 1
            if progressive == "output_skip":  # its pyramid_upsample is outside all_modules too
                kinds += ["norm", "conv"]
            else:
                kinds += (["norm", "conv"] if coarsest else ["up"])
        if level != 0:
            kinds += ["resnet" if biggan else "up"]
    kinds += [] if progressive == "output_skip" else ["norm", "conv"]
    return kinds


def test_chain_index_wrapper_feeds_the_reference_index():
    """Discrete VE (ve/cifar10_ncsnpp): at each chain level sigma_i the network sees label i and
    its output is divided by sigma_i; between levels the nearest level is taken."""
    table = reference_noise_table(0.01, 50.0, 10)
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, labels):
            seen.append(labels.clone())
            return torch.ones_like(x)

    wrapper = ChainIndexConditioned(Recorder(), table, scale_by_sigma=True)
    sigmas = torch.cat([table, (table[3] * table[4]).sqrt().reshape(1) * 1.01])
    out = wrapper(torch.zeros(11, 1, 2, 2), sigmas.float())
    assert seen[0].tolist() == list(range(10)) + [3]  # the geometric midpoint nudged up -> level 3
    torch.testing.assert_close(out[:, 0, 0, 0], 1 / table[[*range(10), 3]].float())


# ----------------------------------------------------------------------------- main.py

FIXTURE_SIZE = ["--config.data.image_size=16", "--config.model.nf=32", "--config.model.ch_mult=(1,2)",
                "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(8,)",
                "--config.device=cpu"]


def main_py(workdir, *args, config="configs/published/vp_cifar10_ddpmpp_continuous.py"):
    command = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@requires_fixtures
def test_main_samples_from_a_reference_checkpoint(tmp_path):
    result = main_py(tmp_path / "run", "--mode=sample", *FIXTURE_SIZE,
                     f"--config.eval.reference_checkpoint={FIXTURES / 'ddpmpp_vp_cifar10_continuous.pth'}",
                     "--config.sampling.steps=5", "--config.sampling.num_samples=4",
                     "--config.sampling.batch_size=4")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["step"] == "reference_1234" and report["nfe"] == 5
    samples = np.load(report["npz"])["samples"]
    assert samples.shape == (4, 3, 16, 16) and np.isfinite(samples).all()


@requires_fixtures
def test_main_stops_with_one_line_when_the_config_does_not_fit(tmp_path):
    workdir = tmp_path / "run"
    result = main_py(workdir, "--mode=sample", *FIXTURE_SIZE,
                     f"--config.eval.reference_checkpoint={FIXTURES / 'ddpm_vp_cifar10.pth'}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "does not fit the network built from this config" in lines[0]
    assert not workdir.exists()


@pytest.mark.parametrize("fields, mode, message", [
    (dict(reference_checkpoint="/nonexistent/checkpoint_8.pth"), "sample", "no such file"),
    (dict(reference_checkpoint=__file__), "train", "is read by sample, likelihood, eval and study"),
    (dict(reference_checkpoint=__file__, checkpoint=8), "sample", "not both"),
])
def test_reference_checkpoint_field_is_validated(fields, mode, message):
    config = published_config("vp_cifar10_ddpmpp_continuous")
    config.eval.update(fields)
    with pytest.raises(ConfigError, match=f"config.eval.reference_checkpoint: .*{message}"):
        validate_config(config, mode)
    config.model.name = "mlp"
    config.eval.update(dict(checkpoint=0, reference_checkpoint=__file__))
    with pytest.raises(ConfigError, match="ddpm or ncsnpp networks"):
        validate_config(config, "sample")
