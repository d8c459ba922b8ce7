"""Loading score_sde_pytorch checkpoints (`sde_diffusion.published.score_sde`): the fixtures made by the
reference code itself reproduce its outputs with the EMA weights, wrong configs and unsafe or
broken files stop with clear errors (every family's layout: test_published_score_sde_layouts.py)."""
import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import torch
from torch import nn

from sde_diffusion.files.checkpoints import CheckpointError
from sde_diffusion.published.score_sde import (ChainIndexConditioned, load_reference_checkpoint, read_reference_checkpoint,
                                               reference_noise_table)
from sde_diffusion.published.score_sde_layout import from_reference, to_reference
from sde_diffusion.app.config import ConfigError
from sde_diffusion.app.validation import validate_config
from sde_diffusion.models import get_model
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
    # The loaded parameters are the shadow tensors themselves, not the raw weights: written back
    # in the reference's layout they are its shadow list, tensor for tensor and in its order.
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    shadow = checkpoint["ema"]["shadow_params"]
    ours = to_reference(model)
    trainable = [key for key in checkpoint["model"] if key not in ("module.sigmas", "module.all_modules.0.W")]
    assert len(shadow) == len(trainable) and len(shadow) > 100
    assert all(torch.equal(ours[key], s) for key, s in zip(trainable, shadow))


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_our_names_are_the_reference_keys(name):
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    names = list(to_reference(get_model(fixture_config(name))))
    assert names == [key for key in checkpoint["model"] if key != "module.sigmas"]


@requires_fixtures
@pytest.mark.parametrize("name", list(TWINS))
def test_raw_weights_miss_the_reference_output(name):
    # Load the raw (non-averaged) weights through the same names: the output is far off, so the
    # 1e-5 agreement above proves the EMA weights were taken.
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    model = get_model(fixture_config(name)).eval()
    model.load_state_dict(from_reference(model, checkpoint["model"]))
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
            "config expects [16] (its 'map_noise.freqs')") in message


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
    assert re.fullmatch(r"reference_ddpmpp_vp_cifar10_continuous_1234_[0-9a-f]{8}", report["step"])
    assert report["nfe"] == 5
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


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_a_plain_pickle_with_os_system_is_refused_in_one_line_without_torchs_advice(tmp_path):
    """Not a torch file at all: torch's reader stops at the pickle's first instruction and
    advises weights_only=False; the refusal names the global the file would call instead."""
    marker = tmp_path / "pwned"
    import pickle
    with open(tmp_path / "evil.pth", "wb") as file:
        pickle.dump({"model": _System(f"touch {marker}"), "ema": {}, "step": 1}, file, protocol=4)
    with pytest.raises(CheckpointError) as refused:
        load_reference_checkpoint(tmp_path / "evil.pth", published_config("vp_cifar10_ddpm"))
    message = str(refused.value)
    assert message == (f"cannot load reference checkpoint {tmp_path / 'evil.pth'}: it is a plain pickle (instruction "
                       f"149 is not one of a tensor file), naming the Python global posix.system: loading it would "
                       f"run code from the file, so it is refused")
    assert not marker.exists()


def test_two_published_files_of_one_name_and_step_never_share_outputs(tmp_path):
    """Output names call a published network by its file's name, step and contents: a copy is the
    same network (the same names), a file with one changed byte another."""
    from sde_diffusion.app.trained import reference_tag

    weights = {"model": {"module.w": torch.arange(6.0)}, "ema": {}, "step": 26}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        torch.save(weights, tmp_path / folder / "checkpoint_26.pth")
    weights["model"]["module.w"][3] = 0.5
    (tmp_path / "c").mkdir()
    torch.save(weights, tmp_path / "c" / "checkpoint_26.pth")
    a, b, c = (reference_tag(tmp_path / folder / "checkpoint_26.pth", 26) for folder in "abc")
    assert a == b and a != c and re.fullmatch(r"reference_checkpoint_26_26_[0-9a-f]{8}", a)
