"""EDM as EDM samples it: `configs/published/edm_*.py` through `main.py --mode sample`, and the
Python API with generate.py's unit latents, reproduce NVlabs/edm's `edm_sampler` (Heun, 18
steps, rho 7, sigma 0.002 to 80 clamped to the network's own range) on the shared fixtures'
`<name>_edm_sampler.npz` (written by EDM's own code), with generate.py's per-image seeds.

The VE-preconditioned network has no fixture written by EDM's code (EDM is not installed here).
Its pickle is made from the VP fixture's bytes (the top record's class VPPrecond -> VEPrecond,
its stored sigma_min / sigma_max -> VEPrecond's 0.02 / 100; the same SongUNet records), its
denoiser is checked at the network level (x + sigma F(x, log(sigma / 2)) with the inner network
of the VP fixture, which reproduces EDM's), and its expected samples come from
`reference_edm_sampler` below, a line-by-line reading of generate.py's `edm_sampler` that is
itself checked against EDM's outputs on the three fixtures."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HANG_TIMEOUT_S
from sde_diffusion.app.image_seeds import parse_seeds, seeded_latents
from sde_diffusion.models.edm_precond import edm_denoiser
from sde_diffusion.published.edm import edm_sampling_process, load_edm_network
from sde_diffusion.sampling import sample

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "edm"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"EDM fixtures not found at {FIXTURES}")
NAMES = ["edm_edm_ddpmpp", "edm_edm_adm_cond", "edm_vp_ddpmpp"]
CONFIGS = {"edm_edm_ddpmpp": "edm_cifar10", "edm_edm_adm_cond": "edm_cifar10_cond", "edm_vp_ddpmpp": "edm_cifar10",
           "edm_ve_ddpmpp": "edm_cifar10"}
TOLERANCE = 1e-5  # of the largest output magnitude (the bound)


def reference_edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18,
                          sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0, S_min=0.0, S_max=float("inf"),
                          S_noise=1.0):
    """generate.py's edm_sampler as written there (float64 state, the network in float32;
    round_sigma is the identity for these preconditionings)."""
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    index = torch.arange(num_steps, dtype=torch.float64)
    t_steps = (sigma_max ** (1 / rho) + index / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        denoised = net(x_hat, t_hat.expand(len(x_hat)), class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net(x_next, t_next.expand(len(x_hat)), class_labels).to(torch.float64)
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * (x_next - denoised) / t_next)
    return x_next


def ve_pickle(folder: Path) -> Path:
    """The VP fixture as a VEPrecond pickle (module docstring): equal-length byte edits."""
    data = (FIXTURES / "edm_vp_ddpmpp.pkl").read_bytes()
    edits = [(b"\x8c\x09VPPrecond", b"\x8c\x09VEPrecond")]
    for key, value in ((b"sigma_min", 0.02), (b"sigma_max", 100.0)):
        start = data.index(b"\x8c\x09" + key + b"\x94G")
        old = data[start:start + 13 + 8]
        edits.append((old, old[:13] + struct.pack(">d", value)))
    for old, new in edits:
        assert data.count(old) == 1 and len(old) == len(new)
        data = data.replace(old, new)
    path = folder / "edm_ve_ddpmpp.pkl"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (pickle, the network, {latents, class_labels, heun18}) for the three fixtures and
    the VE pickle (its heun18 from `reference_edm_sampler` on generate.py's seeds 0-3)."""
    folder = tmp_path_factory.mktemp("edm_ve")
    found = {}
    for name in NAMES:
        data = {key: torch.from_numpy(value) for key, value in np.load(FIXTURES / f"{name}_edm_sampler.npz").items()}
        found[name] = (FIXTURES / f"{name}.pkl", load_edm_network(FIXTURES / f"{name}.pkl"), data)
    path = ve_pickle(folder)
    network = load_edm_network(path)
    latents, _ = seeded_latents(range(4), (3, 16, 16))
    with torch.no_grad():
        heun18 = reference_edm_sampler(network, latents)
    found["edm_ve_ddpmpp"] = (path, network, {"latents": latents, "class_labels": torch.zeros(0), "heun18": heun18})
    return found


def relative(x, reference) -> float:
    return float((x.double() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_reference_reading_of_edm_sampler_is_edms(cases, name):
    _, network, data = cases[name]
    labels = data["class_labels"] if data["class_labels"].numel() else None
    with torch.no_grad():
        assert relative(reference_edm_sampler(network, data["latents"], labels), data["heun18"]) < 2e-6


def test_ve_pickle_is_the_vp_network_under_ve_preconditioning(cases):
    _, vp, _ = cases["edm_vp_ddpmpp"]
    _, ve, _ = cases["edm_ve_ddpmpp"]
    assert type(ve).__name__ == "VEPrecond" and (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    x, sigma = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.02, 1.0, 80.0])
    with torch.no_grad():
        expected = x + sigma.reshape(-1, 1, 1, 1) * vp.model(x, torch.log(0.5 * sigma), None)
        torch.testing.assert_close(ve(x, sigma), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    # EDM's clamping: a VE network is sampled from 80 down to its own 0.02, the others to 0.002
    assert (edm_sampling_process(ve).sigma_min, edm_sampling_process(ve).sigma_max) == (0.02, 80.0)
    assert (edm_sampling_process(vp).sigma_min, edm_sampling_process(vp).sigma_max) == (0.002, 80.0)


def test_per_image_seeds_are_generate_pys(cases):
    for name in NAMES:
        _, network, data = cases[name]
        latents, labels = seeded_latents(parse_seeds("0-3"), (3, 16, 16), network.label_dim)
        assert torch.equal(latents, data["latents"])
        if network.label_dim:
            assert torch.equal(labels, data["class_labels"].argmax(dim=1))
    # an image is the same whatever the other seeds
    assert torch.equal(seeded_latents([2, 3], (3, 16, 16))[0], seeded_latents(parse_seeds("0-3"), (3, 16, 16))[0][2:])
    assert parse_seeds("1,2,5-7") == [1, 2, 5, 6, 7]
    for bad in ("", "3-1", "a", "-1"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


@pytest.mark.parametrize("name", NAMES + ["edm_ve_ddpmpp"])
def test_python_api_with_unit_latents(cases, name):
    _, network, data = cases[name]
    sde = edm_sampling_process(network)
    denoiser = edm_denoiser(network, sde, network.label_dim)
    if network.label_dim:
        labels = data["class_labels"].argmax(dim=1)
        denoiser = denoiser.map(lambda native: lambda x, t: native(x, t, labels))
    with torch.no_grad():
        x, nfe = sample(denoiser, sde, data["latents"].shape, "heun", steps=18, end_noise_level=sde.sigma_min,
                        latents=data["latents"])
    assert nfe == 35 and relative(x, data["heun18"]) < TOLERANCE


def test_churn_is_edms_given_the_same_noise(cases):
    _, network, data = cases["edm_edm_ddpmpp"]
    churn = dict(S_churn=30.0, S_min=0.01, S_max=1.0, S_noise=1.007)  # EDM's CIFAR-10 VP setting (table 5)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = reference_edm_sampler(
            network, data["latents"], randn_like=lambda x: torch.randn(x.shape, generator=generator).double(), **churn)
        sde = edm_sampling_process(network)
        x, _ = sample(edm_denoiser(network, sde), sde, data["latents"].shape, "heun", steps=18,
                      end_noise_level=sde.sigma_min, latents=data["latents"], generator=5, churn=30.0,
                      churn_min=0.01, churn_max=1.0, churn_noise=1.007)
    assert relative(x, expected) < TOLERANCE and relative(expected, data["heun18"]) > 1e-3


def main_py(workdir, config, *flags):
    return subprocess.run([sys.executable, "main.py", f"--config=configs/published/{config}.py", f"--workdir={workdir}",
                           "--mode=sample", "--config.data.image_size=16", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.mark.parametrize("name", NAMES + ["edm_ve_ddpmpp"])
def test_main_py_reproduces_edm_sampler_with_per_image_seeds(cases, tmp_path, name):
    path, network, data = cases[name]
    # batches of 3 and 1: an image is its seed's whatever the batch
    result = main_py(tmp_path / "run", CONFIGS[name], f"--config.eval.reference_checkpoint={path}",
                     "--config.sampling.seeds=0-3", "--config.sampling.batch_size=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nfe"] == 35 and report["npz"].endswith("_seeds0-3.npz"), report
    saved = np.load(report["npz"])
    error = relative(torch.from_numpy(saved["model_space"]), data["heun18"])
    print(f"{name}: main.py vs edm_sampler {error:.2e}")
    assert error < TOLERANCE
    expected = ((data["heun18"].clamp(-1, 1) + 1) / 2).numpy()  # what generate.py's PNGs hold, before rounding
    assert np.abs(saved["samples"] - expected).max() < TOLERANCE * float(data["heun18"].abs().max())
    if network.label_dim:
        assert (saved["labels"] == data["class_labels"].argmax(dim=1).numpy()).all()
    if name == "edm_ve_ddpmpp":
        assert "noise levels 80 to 0.02" in result.stderr


def test_main_py_churn_fields_reach_heun(cases, tmp_path):
    path, _, data = cases["edm_edm_ddpmpp"]
    flags = ["--config.sampling.churn=30", "--config.sampling.churn_min=0.01", "--config.sampling.churn_max=1",
             "--config.sampling.churn_noise=1.007", "--config.sampling.seeds=0-3"]
    result = main_py(tmp_path / "run", "edm_cifar10", f"--config.eval.reference_checkpoint={path}", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "churn30_churn_min0.01_churn_max1_churn_noise1.007" in report["npz"] and "_seeds0-3_seed" in report["npz"]
    assert relative(torch.from_numpy(np.load(report["npz"])["model_space"]), data["heun18"]) > 1e-3
