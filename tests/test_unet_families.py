"""One DDPM++ / NCSN++ implementation for both weight layouts (docs/architecture.md, "One U-Net
family or two"): `ncsnpp` is EDM's SongUNet, so it has EDM's tensors under EDM's names, and EDM's
own pickles run as `ncsnpp` (score_sde's checkpoints: test_published_score_sde*.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sde_diffusion.models.edm_networks import SongUNet
from sde_diffusion.models.ncsnpp import NCSNpp

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("unet_families", ROOT / "benchmarks" / "unet_families.py")
families = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(families)

requires_edm_fixtures = pytest.mark.skipif(not families.EDM.is_dir(), reason=f"EDM fixtures not found at {families.EDM}")


def _layout(model):
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


@pytest.mark.parametrize("score_sde, edm", [
    (families.DDPMPP, dict(embedding_type="positional")),
    (families.NCSNPP, dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                           resample_filter=(1, 3, 3, 1))),
    (dict(families.NCSNPP, progressive_input="input_skip", progressive="output_skip"),
     dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="skip", decoder_type="skip",
          resample_filter=(1, 3, 3, 1))),
], ids=["ddpmpp", "ncsnpp", "ncsnpp_skip_pyramids"])
def test_ncsnpp_has_edm_songunets_tensors_under_its_names(score_sde, edm):
    with torch.device("meta"):
        ours = NCSNpp(**score_sde)
        theirs = SongUNet(img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
                          channel_mult=(1, 2, 2, 2), num_blocks=4, attn_resolutions=(16,), **edm)
    assert _layout(ours) == _layout(theirs)
    if score_sde is families.DDPMPP:  # Song et al. 2021's DDPM++ for CIFAR-10
        assert families.count(ours) == 61_804_419


@requires_edm_fixtures
@pytest.mark.parametrize("name", families.EDM_DDPMPP_FIXTURES)
def test_edm_pickles_run_as_ncsnpp(name):
    """Loaded by name, under EDM's preconditioning: D as EDM computes it, to float32 rounding of
    the label embedding (ncsnpp computes score_sde's sinusoids, EDM the same frequencies in another
    order, on labels up to ~1000)."""
    result = families.edm_pickle_as_ncsnpp(name)
    assert result["ncsnpp"] < 5e-6 * result["scale"]
    assert result["song_unet"] < 1e-6 * result["scale"]
