"""EDM's network pickles (`sde_diffusion.published.edm`): the fixtures written by NVlabs/edm's own
code reproduce its denoiser outputs; files that carry anything but data are refused without
running it (marker files); the denoiser's score under this package's SDEs is Tweedie's, and the
samplers run on it."""
import json
import re
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import mixture_32d
from sde_diffusion.files.checkpoints import CheckpointError
from sde_diffusion.published.edm import load_edm_network, read_edm_pickle
from sde_diffusion.models.edm_precond import EDMPrecond, VPPrecond, edm_denoiser
from sde_diffusion.sampling import sample
from sde_diffusion.processes.sdes import VESDE, VPSDE

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "edm"
requires_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"EDM fixtures not found at {FIXTURES}")
NAMES = ["edm_vp_ddpmpp", "edm_edm_ddpmpp", "edm_edm_adm_cond"]


def expected(name):
    data = {key: torch.from_numpy(value) for key, value in np.load(FIXTURES / f"{name}.npz").items()}
    data["class_labels"] = data["class_labels"] if data["class_labels"].numel() else None
    return data


@requires_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_fixture_denoiser_reproduced(name):
    network = load_edm_network(FIXTURES / f"{name}.pkl")
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    assert type(network).__name__ == meta["precond"] and not network.training
    data = expected(name)
    with torch.no_grad():
        denoised = network(data["x"], data["sigma"], data["class_labels"])
    # float32 precision relative to the output's scale (up to 350 at sigma = 80 for VP, whose
    # output is x - sigma F)
    error = (denoised - data["denoised"]).abs().amax(dim=(1, 2, 3)) / data["denoised"].abs().amax(dim=(1, 2, 3))
    assert error.max() < 1e-5, error
    if data["class_labels"] is not None:  # the class matters: another label moves the output
        with torch.no_grad():
            other = network(data["x"], data["sigma"], data["class_labels"].roll(1, dims=1))
        assert (other - denoised).abs().max() > 1e-3


# ------------------------------------------------------------------------- refused files
def _marker_payload(marker: Path, length: int) -> str:
    code = f"open({str(marker)!r}, 'w').write('ran')#"
    assert len(code) <= length
    return code + " " * (length - len(code))


@requires_fixtures
def test_source_with_added_code_is_refused_and_never_run(tmp_path):
    original = (FIXTURES / "edm_edm_ddpmpp.pkl").read_bytes()
    first_line = read_edm_pickle(FIXTURES / "edm_edm_ddpmpp.pkl")["ema"].source.splitlines()[0]
    folder = Path(tempfile.mkdtemp(prefix="m"))  # a short path: the payload replaces one line in place
    marker = folder / "m"
    payload = _marker_payload(marker, len(first_line))
    tampered = original.replace(first_line.encode(), payload.encode())
    assert tampered != original and len(tampered) == len(original)
    path = tmp_path / "tampered.pkl"
    path.write_bytes(tampered)
    source = read_edm_pickle(path)["ema"].source
    # the payload is live: the stored source, run as EDM's loader runs it, writes the marker
    try:
        exec(compile(source, "networks.py", "exec"), {})  # noqa: S102 - the point of the test
    except ImportError:  # the rest of EDM's module needs its own packages; the first line ran
        pass
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="not the EDM networks.py this package reimplements") as refused:
        load_edm_network(path)
    assert len(str(refused.value).splitlines()) == 1 and "\x1b" not in str(refused.value)
    network = load_edm_network(path, allow_unknown_source=True)  # loads as data, still runs nothing
    assert not marker.exists()
    data = expected("edm_edm_ddpmpp")
    with torch.no_grad():
        assert (network(data["x"], data["sigma"]) - data["denoised"]).abs().max() < 1e-5
    os.rmdir(folder)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class _PersistentLike:
    """Pickles as EDM's persistent-object records do: a call of
    torch_utils.persistence._reconstruct_persistent_obj(meta)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


def _reconstruct_persistent_obj(meta):  # what the pickle names; never called by the loader
    raise AssertionError("the loader called the file's reconstruct function")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


@pytest.fixture
def fake_persistence(monkeypatch):
    """A `torch_utils.persistence` module, so that pickle writes the global EDM's files name."""
    import types
    module = types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(__import__("sys").modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(__import__("sys").modules, "torch_utils.persistence", module)


def test_any_other_global_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    live = pickle.dumps({"ema": _Evil(marker)})
    pickle.loads(live)  # a plain unpickle runs the payload
    assert marker.exists()
    marker.unlink()
    (tmp_path / "evil.pkl").write_bytes(live)
    with pytest.raises(CheckpointError, match="names the Python global builtins.exec") as refused:
        read_edm_pickle(tmp_path / "evil.pkl")
    assert not marker.exists() and len(str(refused.value).splitlines()) == 1


def test_unknown_class_record_is_refused(tmp_path, fake_persistence):
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Backdoor", "state": {}}
    (tmp_path / "unknown.pkl").write_bytes(pickle.dumps({"ema": _PersistentLike(meta)}))
    with pytest.raises(CheckpointError, match="'Backdoor', which is not one of EDM's network classes"):
        read_edm_pickle(tmp_path / "unknown.pkl")


def test_not_a_network_pickle_and_missing_file(tmp_path):
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="not an EDM network pickle"):
        read_edm_pickle(tmp_path / "list.pkl")
    (tmp_path / "text.pkl").write_text("not a pickle at all")
    with pytest.raises(CheckpointError, match="cannot load EDM network pickle"):
        read_edm_pickle(tmp_path / "text.pkl")
    with pytest.raises(CheckpointError, match="no EDM network pickle at"):
        read_edm_pickle(tmp_path / "absent.pkl")


# ----------------------------------------------------------------- the score of a denoiser
class _ExactDenoiser(torch.nn.Module):
    """D(y; sigma) of a Gaussian mixture, from its exact score under `sde` at the time whose
    noise level s / alpha is sigma (Tweedie)."""

    def __init__(self, mixture, sde):
        super().__init__()
        self.mixture, self.sde = mixture, sde

    def forward(self, y, sigma, class_labels=None):
        t = self.sde.time_of_log_snr(-2 * torch.log(sigma.double())).float()
        alpha, std = (c[:, None] for c in self.sde.marginal_coefs(t))
        x = alpha * y
        return (x + std ** 2 * self.mixture.score_fn(self.sde)(x, t)) / alpha


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.002, sigma_max=80.0)], ids=["vp", "ve"])
def test_denoiser_score_is_the_exact_score(sde):
    mixture = mixture_32d()
    x = sde.prior_sampling((64, 32), generator=torch.Generator().manual_seed(0)) * 0.5
    t = torch.linspace(0.05, 0.95, 64)
    exact = mixture.score_fn(sde)(x, t)
    via_denoiser = edm_denoiser(_ExactDenoiser(mixture, sde), sde).score(x, t)
    torch.testing.assert_close(via_denoiser, exact, rtol=2e-3, atol=2e-3)


def test_preconditioning_coefficients_follow_the_paper():
    """Karras et al. 2022, table 1: EDM's c_skip + c_out^2 / sigma_data^2 ... and VP's sigma(t)."""
    sigma = torch.tensor([0.002, 0.5, 5.0, 80.0]).reshape(-1, 1, 1, 1)
    precond = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=16,
                         channel_mult=[1], num_blocks=1, attn_resolutions=[])
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    data = 0.5
    torch.testing.assert_close(c_skip * (sigma ** 2 + data ** 2), torch.full_like(sigma, data ** 2))
    torch.testing.assert_close(c_in ** 2 * (sigma ** 2 + data ** 2), torch.ones_like(sigma))
    torch.testing.assert_close(c_out ** 2, (sigma * data) ** 2 / (sigma ** 2 + data ** 2))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    vp = VPPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1], num_blocks=1,
                   attn_resolutions=[])
    t = torch.tensor([1e-3, 0.3, 1.0])
    alpha, std = VPSDE(beta_min=0.1, beta_max=20.0).marginal_coefs(t)
    torch.testing.assert_close(vp.time_of_sigma(std / alpha), t, rtol=1e-4, atol=1e-6)


@requires_fixtures
@pytest.mark.parametrize("name, sde, method", [
    ("edm_edm_ddpmpp", VESDE(sigma_min=0.002, sigma_max=80.0), "heun"),
    ("edm_edm_adm_cond", VESDE(sigma_min=0.002, sigma_max=80.0), "dpm_solver++"),
    ("edm_vp_ddpmpp", VPSDE(beta_min=0.1, beta_max=20.0), "dpm_solver++"),
    ("edm_vp_ddpmpp", VPSDE(beta_min=0.1, beta_max=20.0), "pc"),
])
def test_samplers_run_on_a_fixture_network(name, sde, method):
    network = load_edm_network(FIXTURES / f"{name}.pkl")
    denoiser = edm_denoiser(network, sde, num_classes=network.label_dim)
    if network.label_dim:
        labels = torch.tensor([3, 7])
        denoiser = denoiser.map(lambda native: lambda x, t: native(x, t, labels))
    with torch.no_grad():
        x, nfe = sample(denoiser, sde, (2, 3, 16, 16), method, steps=6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all() and nfe > 0


# ------------------------------------------------------------------------ through main.py
ROOT = Path(__file__).resolve().parents[1]


def main_py(workdir, config, *flags):
    import subprocess
    import sys
    from conftest import HANG_TIMEOUT_S
    return subprocess.run([sys.executable, "main.py", f"--config=configs/published/{config}.py",
                           f"--workdir={workdir}", "--config.data.image_size=16", "--config.sampling.num_samples=4",
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@requires_fixtures
@pytest.mark.parametrize("name, config, flags, nfe", [
    ("edm_edm_ddpmpp", "edm_cifar10", [], 35),  # EDM's own sampler by default: Heun, 18 steps
    ("edm_edm_adm_cond", "edm_cifar10_cond", ["--config.sampling.method=dpm_solver++",
                                              "--config.sampling.steps=10", "--config.sampling.labels=3"], 10),
    ("edm_vp_ddpmpp", "edm_cifar10", ["--config.training.sde=vpsde", "--config.model.beta_min=0.1",
                                      "--config.model.beta_max=20.0", "--mode=sample"], 35),
])
def test_main_samples_from_an_edm_pickle(tmp_path, name, config, flags, nfe):
    result = main_py(tmp_path / "run", config, "--mode=sample",
                     f"--config.eval.reference_checkpoint={FIXTURES / f'{name}.pkl'}", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert re.fullmatch(f"reference_{name}_[0-9a-f]{{8}}", report["step"]) and report["nfe"] == nfe
    samples = np.load(report["npz"])["samples"]
    assert samples.shape == (4, 3, 16, 16) and np.isfinite(samples).all()


@requires_fixtures
@pytest.mark.parametrize("name, config, flags, message", [
    ("edm_vp_ddpmpp", "edm_cifar10", ["--config.training.sde=vesde"],
     "training.sde='vesde', but a VPPrecond runs under 'edm' or 'vpsde'"),
    ("edm_edm_adm_cond", "edm_cifar10", [], "model.num_classes=0, the network has 10"),
    ("edm_edm_ddpmpp", "edm_cifar10", ["--config.data.image_size=32"], "the network's 3/16"),
    ("edm_edm_ddpmpp", "vp_cifar10_ddpm", [], "model.name='edm'"),
    ("edm_edm_ddpmpp", "edm_cifar10", ["--mode=train"], "config.model.name"),
])
def test_main_refuses_an_edm_pickle_that_does_not_fit(tmp_path, name, config, flags, message):
    workdir = tmp_path / "run"
    result = main_py(workdir, config, "--mode=sample", f"--config.eval.reference_checkpoint={FIXTURES / f'{name}.pkl'}",
                     *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr
    assert not workdir.exists()


@requires_fixtures
@pytest.mark.parametrize("config, classes", [("edm_cifar10", 0), ("edm_cifar10_cond", 10), ("edm_ffhq_64", 0),
                                             ("edm_afhqv2_64", 0), ("edm_imagenet_64_cond", 1000)])
def test_edm_twins_validate_for_sampling(config, classes):
    import importlib.util
    from sde_diffusion.app.validation import validate_config

    spec = importlib.util.spec_from_file_location(config, ROOT / "configs" / "published" / f"{config}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = module.get_config()
    settings.eval.reference_checkpoint = str(FIXTURES / "edm_edm_ddpmpp.pkl")
    validate_config(settings, "sample")
    assert settings.model.num_classes == classes and settings.training.sde == "edm"
    assert (settings.model.sigma_min, settings.model.sigma_max) == (0.002, 80.0)
    assert settings.sampling.method == "heun" and settings.data.centered
