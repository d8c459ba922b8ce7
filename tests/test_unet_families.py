"""score_sde's DDPM++ / NCSN++ (`ncsnpp`) and EDM's `SongUNet` are one computation in two weight
layouts (docs/architecture.md, "One U-Net family or two"): through the role mapping of
benchmarks/unet_families.py they have the same parameters and the same outputs, in both directions,
on random weights and on the reference implementations' own files. `ddpm` is `ncsnpp` with DDPM's
blocks where every GroupNorm has 32 groups, and not otherwise."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("unet_families", ROOT / "benchmarks" / "unet_families.py")
families = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(families)

requires_fixtures = pytest.mark.skipif(not (families.REFERENCE.is_dir() and families.EDM.is_dir()),
                                       reason="reference / EDM fixtures not found")

NCSNPP_SKIP_PYRAMIDS = dict(families.NCSNPP, progressive_input="input_skip", progressive="output_skip")


def test_same_parameters_at_the_published_cifar10_widths():
    for args in (families.DDPMPP, families.NCSNPP):
        ours = families.NCSNpp(**args)
        song = families.SongUNet(**families.song_unet_args(args))
        assert families.count(ours) == families.count(song)
        # The shapes differ only where attention's four NIN matrices are EDM's qkv and proj convs.
        only_ours, only_song = families.unmatched(ours, song)
        channels = {shape[0] for shape in only_ours}
        assert set(only_ours) == {shape for c in channels for shape in ((c,), (c, c))}
        assert set(only_song) == {shape for c in channels for shape in ((c, c, 1, 1), (3 * c,), (3 * c, c, 1, 1))}
        families.ncsnpp_to_song_unet(ours, song)  # uses every tensor of both, once
    assert families.count(families.NCSNpp(**families.DDPMPP)) == 61_804_419


@pytest.mark.parametrize("args", [families.DDPMPP, dict(families.NCSNPP, scale_by_sigma=True), NCSNPP_SKIP_PYRAMIDS],
                         ids=["ddpmpp", "ncsnpp", "ncsnpp_skip_pyramids"])
def test_forward_equal_through_the_mapping(args):
    """float32: equal to its rounding (the label embeddings' frequencies are computed in another
    order); float64 with one shared embedding: equal to EDM's float32 attention weights."""
    single = families.forward_difference(families.tiny(args), torch.float32)
    assert single["max_abs"] < 5e-5 * single["scale"]
    double = families.forward_difference(families.tiny(args), torch.float64)
    assert double["same_embedding"] < 1e-7 * double["scale"]


@requires_fixtures
@pytest.mark.parametrize("name", ["ddpmpp_vp_cifar10_continuous", "ncsnpp_ve_cifar10_continuous",
                                  "ncsnpp_ve_skip_pyramids_as_saved"])
def test_reference_checkpoints_run_as_song_unets(name):
    network, model = families.reference_network(name)
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items() if k in families.DDPMPP}
    result = families.forward_difference(args, source=network)
    assert result["max_abs"] < 2e-5 * result["scale"]


@requires_fixtures
@pytest.mark.parametrize("name", ["edm_vp_ddpmpp", "edm_edm_ddpmpp"])
def test_edm_pickles_run_as_ncsnpp(name):
    result = families.edm_fixture_through_ncsnpp(name)
    assert result["ncsnpp"] < 5e-6 * result["scale"]


def test_ddpm_is_ncsnpp_with_ddpm_blocks_only_at_32_groups():
    wide, narrow = families.ddpm_as_ncsnpp(nf=128), families.ddpm_as_ncsnpp(nf=32)
    assert wide["same_layout"] and wide["max_abs"] == 0.0
    # nf 32: ddpm normalises over 32 groups, ncsnpp over channels // 4 = 8: another network.
    assert narrow["same_layout"] and narrow["max_abs"] > 0.1 * narrow["scale"]
