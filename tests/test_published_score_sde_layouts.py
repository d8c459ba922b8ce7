"""Every score_sde network family round-trips through the reference checkpoint layout: the index
each of our layers gets in the reference's flat module list is the reference's (written down from
its construction loops), and a checkpoint in that layout loads the EMA weights exactly."""
import copy
import itertools

import pytest
import torch

from sde_diffusion.app.validation import validate_config
from sde_diffusion.published.score_sde import ChainIndexConditioned, load_reference_checkpoint, reference_noise_table
from sde_diffusion.published.score_sde_layout import reference_layout, to_reference
from sde_diffusion.models import get_model
from test_published_score_sde import PUBLISHED, published_config


def shrink(config, image_size=16):
    """The same family at test size: widths and image size cut down, structure kept."""
    config = copy.deepcopy(config)
    config.model.nf = 32 if config.model.name == "ddpm" else 16
    config.model.dropout = 0.0
    config.data.image_size = image_size
    config.model.attn_resolutions = tuple(image_size // 16 * r for r in config.model.attn_resolutions)
    config.model.num_res_blocks = 3 if config.model.num_res_blocks == 8 else 2  # deep stays deeper
    return config


def to_reference_layout(source, averaged, table):
    """The checkpoint the reference code would write for `source` with the EMA weights of
    `averaged`: its shadow list holds the trainable tensors in the order of the state dict
    (all but the noise table and the Fourier features' fixed `W`, entry 0)."""
    weights = {"module.sigmas": table, **to_reference(source)}
    ema = to_reference(averaged)
    shadow = [ema[key].clone() for key in weights if key not in ("module.sigmas", "module.all_modules.0.W")]
    return {"model": weights, "optimizer": {}, "step": 7,
            "ema": {"decay": 0.999, "num_updates": 7, "shadow_params": shadow}}


def round_trip(config, tmp_path):
    torch.manual_seed(0)
    source = get_model(config).eval()
    averaged = copy.deepcopy(source)
    with torch.no_grad():  # random weights everywhere (branches start near zero)
        for param, average in zip(source.parameters(), averaged.parameters()):
            param.add_(0.05 * torch.randn_like(param))
            average.copy_(param + 0.05 * torch.randn_like(param))
    table = reference_noise_table(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
    torch.save(to_reference_layout(source, averaged, table), tmp_path / "checkpoint.pth")
    loaded = load_reference_checkpoint(tmp_path / "checkpoint.pth", config)
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
# input_skip, more levels and other attention resolutions): every pyramid pair DDPM++ / NCSN++
# publish, with FIR on and off.
VARIANTS = [
    dict(progressive=progressive, progressive_input=progressive_input, fir=fir,
         embedding_type=("fourier", "positional")[i // 2 % 2],
         ch_mult=((1, 2), (1, 1, 2, 2, 2), (2, 1, 2))[i % 3], attn_resolutions=((8,), (16, 4), ())[i % 3])
    for i, (progressive, progressive_input, fir) in enumerate(itertools.product(
        ("none", "output_skip"), ("none", "input_skip", "residual"), (False, True)))
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_ncsnpp_families_round_trip_and_follow_the_reference_module_list(options, tmp_path):
    config = shrink(published_config("ve_cifar10_ncsnpp_continuous"))
    config.model.update(options)
    config.model.num_res_blocks = 1
    model = get_model(config)
    assert [kind for kind, _ in reference_layout(model)] == reference_module_list(config)
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
    assert [kind for kind, _ in reference_layout(model)] == reference_module_list(config)
    round_trip(config, tmp_path)


@pytest.mark.parametrize("ch_mult, attn, with_conv", [((1, 2), (8,), True), ((1, 2, 2), (16, 4), False)])
def test_ddpm_families_round_trip_and_follow_the_reference_module_list(ch_mult, attn, with_conv, tmp_path):
    config = shrink(published_config("vp_cifar10_ddpm"))
    config.model.update(dict(ch_mult=ch_mult, attn_resolutions=attn, resamp_with_conv=with_conv))
    model = get_model(config)
    assert [kind for kind, _ in reference_layout(model)] == reference_module_list(config)
    round_trip(config, tmp_path)


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
