"""EDM's U-Nets as trainable networks of the registry (`models.edm_unets`): the same modules, with
the same weight names, as EDM's pickles hold, so a network trained here and one published by EDM
are one family; `configs/edm_cifar10.py` trains EDM's SongUNet through main.py."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HANG_TIMEOUT_S
from sde_diffusion.published.edm import load_edm_network
from sde_diffusion.models import get_model_class
from sde_diffusion.models.edm_networks import DhariwalUNet, SongUNet
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
        # EDM starts each branch's last conv at 1e-5 of Xavier, where labels move the output by ~1e-5 of it
        for name, parameter in network.named_parameters():
            if name.endswith(("conv1.weight", "aux_conv.weight")):
                torch.nn.init.normal_(parameter, std=0.1)
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


# ------------------------------------------------------------------ fresh weights: EDM's init
# Karras et al. 2022's networks (NVlabs/edm training/networks.py) draw each layer from a fan-scaled
# distribution times a per-layer factor. The closed forms, from the weight's fans (channels x
# kernel^2 for a convolution): xavier_uniform on +-sqrt(6 / (fan_in + fan_out)), kaiming_uniform on
# +-sqrt(3 / fan_in), kaiming_normal with std sqrt(1 / fan_in); a uniform on +-a has std a / sqrt(3).

def _fans(shape):
    taps = math.prod(shape[2:])
    return shape[1] * taps, shape[0] * taps


def _layer(name):
    return name.rsplit(".", 2)[-2]  # "dec.16x16_block0.conv1.weight" -> "conv1"


def _song_recipe(name, weight_shape):
    """SongUNet: (kind, distribution, scale): xavier_uniform, zero biases, 1e-5 for each branch's
    last layer (UNetBlock conv1 and proj, the output aux_conv), sqrt(0.2) for qkv."""
    if name.endswith(".bias"):
        return "zero bias", "zero", 0.0
    fan_in, fan_out = _fans(weight_shape)
    bound = math.sqrt(6 / (fan_in + fan_out))
    if _layer(name).endswith(("conv1", "proj", "aux_conv")):
        return "xavier x 1e-5", "uniform", bound * 1e-5
    if _layer(name) == "qkv":
        return "xavier x sqrt(0.2)", "uniform", bound * math.sqrt(0.2)
    return "xavier", "uniform", bound


def _adm_recipe(name, weight_shape):
    """DhariwalUNet: weights and biases kaiming_uniform x sqrt(1/3), i.e. +-1 / sqrt(fan_in) of the
    weight; conv1, proj, out_conv and map_augment zero; map_label kaiming_normal x sqrt(label_dim)."""
    fan_in, _ = _fans(weight_shape)
    if _layer(name) in ("conv1", "proj", "out_conv", "map_augment"):
        return "zero", "zero", 0.0
    if _layer(name) == "map_label":
        return "label N(0, 1)", "normal", math.sqrt(1 / fan_in) * math.sqrt(fan_in)
    kind = "kaiming bias" if name.endswith(".bias") else "kaiming"
    return kind, "uniform", math.sqrt(3 / fan_in) * math.sqrt(1 / 3)


def _fresh(cls, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)  # EDM draws on the global generator; so do these networks
        return cls(**kwargs)


def _check_init(network, recipe):
    """Every parameter against its closed form: a uniform's max |w| within [0.8, 1] of its bound
    (P(max < 0.8 bound) = 0.8^n < 1e-6 for n >= 64), zeros exactly zero, GroupNorm 1 and 0; per
    kind, the n values over their scale pooled have the closed-form std (uniform 1/sqrt(3), normal 1)
    within 5 standard errors of a sample std, sqrt((kurtosis - 1) / 4n) relative (kurtosis 9/5
    uniform, 3 normal). Returns the count of tensors per kind."""
    params = dict(network.named_parameters())
    pooled, counts = {}, {}
    for name, value in params.items():
        value = value.detach().double()
        if _layer(name).startswith("norm") or _layer(name).endswith("_norm"):
            assert torch.equal(value, torch.full_like(value, 1.0 if name.endswith("weight") else 0.0)), name
            continue
        weight_shape = params[name[:-len("bias")] + "weight"].shape if name.endswith(".bias") else value.shape
        kind, distribution, scale = recipe(name, weight_shape)
        counts[kind] = counts.get(kind, 0) + 1
        if distribution == "zero":
            assert value.abs().max().item() == 0.0, name
            continue
        if distribution == "uniform":
            largest = value.abs().max().item() / scale
            assert largest <= 1 + 1e-6 and (value.numel() < 64 or largest >= 0.8), (name, largest)
        pooled.setdefault((kind, distribution), []).append(value.flatten() / scale)
    for (kind, distribution), values in pooled.items():
        values = torch.cat(values)
        closed, kurtosis = (1 / math.sqrt(3), 9 / 5) if distribution == "uniform" else (1.0, 3.0)
        error = math.sqrt((kurtosis - 1) / (4 * values.numel()))
        assert abs(values.std().item() / closed - 1) < 5 * error, (kind, values.std().item() / closed, error)
    return counts


@pytest.mark.parametrize("encoder, decoder", [("standard", "standard"), ("skip", "skip"), ("residual", "skip")])
def test_a_fresh_song_unet_is_drawn_as_edms(encoder, decoder):
    """Xavier-uniform at EDM's fans, zero biases; conv1, proj and aux_conv at 1e-5 of their Xavier
    bound (|w| < 3e-6 here, where plain Xavier reaches 0.2), qkv at sqrt(0.2) of it."""
    network = _fresh(SongUNet, img_resolution=16, in_channels=3, out_channels=3, label_dim=10, augment_dim=9,
                     model_channels=32, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(8,),
                     embedding_type="fourier", channel_mult_noise=2, encoder_type=encoder, decoder_type=decoder,
                     resample_filter=(1, 3, 3, 1))
    counts = _check_init(network, _song_recipe)
    # 14 UNetBlocks' conv1 (5 encoder, 9 decoder), 4 attention proj, one aux_conv per output level
    assert counts["xavier x 1e-5"] == 14 + 4 + (2 if decoder == "skip" else 1)
    assert counts["xavier x sqrt(0.2)"] == 4
    last = [p for n, p in network.named_parameters() if n.endswith("weight") and _layer(n).endswith(
        ("conv1", "proj", "aux_conv"))]
    assert max(p.abs().max().item() for p in last) < 3e-6


def test_a_fresh_dhariwal_unet_is_drawn_as_edms():
    """Weights and biases uniform on +-1/sqrt(fan_in); each branch's last layer and the output conv
    exactly zero, so a fresh ADM outputs zeros (its D(x) starts at c_skip x); label weights N(0, 1)."""
    network = _fresh(DhariwalUNet, img_resolution=16, in_channels=3, out_channels=3, label_dim=10, augment_dim=9,
                     model_channels=32, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(8,))
    counts = _check_init(network, _adm_recipe)
    # weight and bias of 14 blocks' conv1, of 6 attention blocks' proj (at 8x8, 64 channels: one head) and of
    # out_conv; map_augment's weight
    assert counts["zero"] == 2 * (14 + 6 + 1) + 1 and counts["label N(0, 1)"] == 1
    assert counts["kaiming bias"] >= 30
    with torch.no_grad():
        out = network.eval()(torch.randn(2, 3, 16, 16), torch.rand(2), torch.eye(10)[:2])
    assert torch.count_nonzero(out) == 0


def test_the_registered_song_unet_starts_as_edms_cifar10_network():
    """`song_unet` at `configs/edm_cifar10.py`'s layout (32x32, channel_mult 2,2,2, 4 blocks,
    attention at 16), narrower: 33 blocks' conv1, 6 proj and the aux_conv near zero."""
    network = _fresh(get_model_class("song_unet"), image_size=32, num_channels=3, model_channels=32,
                     channel_mult=(2, 2, 2), num_blocks=4)
    counts = _check_init(network, _song_recipe)
    assert counts["xavier x 1e-5"] == 33 + 6 + 1 and counts["xavier x sqrt(0.2)"] == 6
