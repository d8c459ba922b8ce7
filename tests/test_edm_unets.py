"""EDM's U-Nets as trainable networks of the registry (`models.edm_unets`): the same modules, with
the same weight names, as EDM's pickles hold, so a network trained here and one published by EDM
are one family; `configs/edm_cifar10.py` trains EDM's SongUNet through main.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HANG_TIMEOUT_S
from sde_diffusion.published.edm import load_edm_network
from sde_diffusion.models import get_model_class
from sde_diffusion.models.edm_precond import edm_denoiser
from sde_diffusion.models.preconditioning import denoiser_from_model
from sde_diffusion.processes.sdes import VESDE

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "edm"
requires_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"EDM fixtures not found at {FIXTURES}")
NETWORK_ARGUMENTS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout",
                     "embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter")


def registered_twin(name: str):
    """The registry's network built with a fixture pickle's constructor arguments, carrying the
    pickled network's weights, and the pickled (EMA) network itself."""
    kwargs = json.loads((FIXTURES / f"{name}.json").read_text())["kwargs"]
    published = load_edm_network(FIXTURES / f"{name}.pkl")
    model_type = {"SongUNet": "song_unet", "DhariwalUNet": "dhariwal_unet"}[kwargs["model_type"]]
    cls = get_model_class(model_type)
    own = {key: value for key, value in kwargs.items() if key in NETWORK_ARGUMENTS
           and key in cls.__init__.__code__.co_varnames}
    network = cls(image_size=kwargs["img_resolution"], num_channels=kwargs["img_channels"],
                  num_classes=kwargs["label_dim"], **own).eval()
    network.load_state_dict(published.model.state_dict(), strict=True)  # the same names and shapes
    return network, published


@requires_fixtures
@pytest.mark.parametrize("name", ["edm_edm_ddpmpp", "edm_edm_adm_cond"])
def test_a_registered_network_takes_an_edm_pickles_weights_and_gives_its_denoiser(name):
    """Loaded with the pickle's weights, `song_unet` / `dhariwal_unet` behind the `edm` row of the
    preconditioning table is EDM's D: the fixture's expected `denoised` to float32 precision."""
    network, published = registered_twin(name)
    expected = np.load(FIXTURES / f"{name}.npz")
    x, sigma = torch.from_numpy(expected["x"]), torch.from_numpy(expected["sigma"])
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    t = sde.time_of_log_snr(-2 * torch.log(sigma.double())).float()  # VE: sigma(t) = sigma, alpha = 1
    labels = None
    if published.label_dim:
        labels = torch.from_numpy(expected["class_labels"]).argmax(1)
    with torch.no_grad():
        ours = denoiser_from_model(network, sde, parameterization="edm")(x, t, labels)
        theirs = edm_denoiser(published, sde, num_classes=published.label_dim)(x, t, labels)
    scale = np.abs(expected["denoised"]).max()
    np.testing.assert_allclose(ours.numpy(), expected["denoised"], atol=1e-5 * scale)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5 * scale)


def test_the_class_input_is_edms_one_hot_with_no_label_as_zeros():
    network = get_model_class("song_unet")(image_size=8, num_channels=1, num_classes=3, model_channels=16,
                                           channel_mult=(1,), num_blocks=1, attn_resolutions=(), dropout=0.0)
    x, labels = torch.randn(4, 1, 8, 8), torch.rand(4)
    with torch.no_grad():
        torch.nn.init.normal_(network.map_label.weight)
        none, null = network(x, labels), network(x, labels, torch.full((4,), 3))
        classes = network(x, labels, torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(none, null)  # index num_classes is "no label", as None is
    torch.testing.assert_close(classes[3], null[3])
    assert not torch.allclose(classes[:3], null[:3])


def test_edm_cifar10_trains_edms_songunet_through_main_and_samples_it(tmp_path):
    """configs/edm_cifar10.py at a tiny width on the bundled digits: train, then sample with its
    Heun default; the checkpoint's weights carry SongUNet's names."""
    small = ["--config=configs/edm_cifar10.py", f"--workdir={tmp_path / 'run'}", "--config.data.dataset=digits",
             "--config.data.num_channels=1", "--config.data.image_size=16", "--config.model.model_channels=16",
             "--config.model.channel_mult=(1,2)", "--config.model.num_blocks=1", "--config.model.attn_resolutions=(8,)",
             "--config.training.batch_size=8", "--config.training.n_iters=3", "--config.training.snapshot_freq=3",
             "--config.training.snapshot_sampling=False", "--config.optim.warmup=0", "--config.sampling.steps=4",
             "--config.sampling.num_samples=4", "--config.sampling.batch_size=4"]
    for mode in ("train", "sample"):
        result = subprocess.run([sys.executable, "main.py", *small, f"--mode={mode}"], cwd=ROOT, capture_output=True,
                                text=True, timeout=HANG_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    samples = np.load(report["npz"])["samples"] if "npz" in report else None
    assert report["nfe"] == 7  # Heun, 4 steps: 2 * 4 - 1
    if samples is not None:
        assert samples.shape == (4, 1, 16, 16) and np.isfinite(samples).all()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_3.pth", weights_only=True)
    assert "enc.16x16_conv.weight" in checkpoint["model"] and "map_noise.freqs" not in checkpoint["model"]
