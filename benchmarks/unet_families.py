"""Are score_sde's DDPM++ / NCSN++ (`ncsnpp`) and EDM's `SongUNet` one network with two weight
layouts? And is score_sde's `ddpm` one of EDM's two U-Nets?

    python benchmarks/unet_families.py

Prints (about 10 s on one CPU thread; results in docs/architecture.md, "One U-Net family or two"):
1. parameter counts and the multisets of parameter shapes at the published CIFAR-10 widths
   (construction only): score_sde's DDPM++ (configs/published/*ddpmpp*), EDM's DDPM++
   (configs/edm_cifar10.py) and SongUNet built with score_sde's widths; `ddpm` beside both U-Nets;
2. whether tensors pair by creation order (same shapes), and the role mapping `ncsnpp_to_song_unet`
   that pairs them (module by module; attention's four [in, out] NIN matrices become EDM's fused,
   channel-interleaved qkv conv and its proj conv);
3. the forward difference through that mapping at a tiny width (16x16, 32 channels): random
   weights for DDPM++ and NCSN++ (Fourier, FIR, input/output pyramids), and the reference
   checkpoints of /work/shared/fixtures/reference, in float32 and float64.
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sde_diffusion.models import blocks, layers, resampling  # noqa: E402
from sde_diffusion.models.ddpm import DDPM  # noqa: E402
from sde_diffusion.models.edm_networks import DhariwalUNet, SongUNet, UNetBlock  # noqa: E402
from sde_diffusion.models.ncsnpp import NCSNpp  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "fixtures" / "reference"
EDM = ROOT.parent / "shared" / "fixtures" / "edm"

# score_sde's DDPM++ for CIFAR-10 (configs/published/common.py: ddpmpp) and NCSN++ (ncsnpp_ve).
DDPMPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), resblock_type="biggan",
              embedding_type="positional", fir=False, progressive="none", progressive_input="none",
              skip_rescale=True, scale_by_sigma=False)
NCSNPP = dict(DDPMPP, embedding_type="fourier", fir=True, progressive_input="residual")
# EDM's CIFAR-10 DDPM++ (configs/edm_cifar10.py; EDM's table 7: "redistribute capacity").
EDM_DDPMPP = dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,))


def song_unet_args(ncsnpp_args: dict, image_size: int = 32) -> dict:
    """The SongUNet arguments of an ncsnpp configuration (EDM's names for the same choices)."""
    a = ncsnpp_args
    if a["resblock_type"] != "biggan" or not a["skip_rescale"] or a.get("progressive_combine", "sum") != "sum":
        raise ValueError("SongUNet has BigGAN blocks with skip rescaling and summed pyramids only")
    if a["progressive"] == "residual":
        raise ValueError("SongUNet has no residual output pyramid")
    return dict(img_resolution=image_size, in_channels=3, out_channels=3, model_channels=a["nf"],
                channel_mult=a["ch_mult"], num_blocks=a["num_res_blocks"], attn_resolutions=a["attn_resolutions"],
                embedding_type=a["embedding_type"], channel_mult_noise=2 if a["embedding_type"] == "fourier" else 1,
                encoder_type={"none": "standard", "input_skip": "skip", "residual": "residual"}[a["progressive_input"]],
                decoder_type={"none": "standard", "output_skip": "skip"}[a["progressive"]],
                resample_filter=(1, 3, 3, 1) if a["fir"] else (1, 1))


# --- 1. counts and shapes -------------------------------------------------------------------

def shapes(model: nn.Module) -> Counter:
    return Counter(tuple(p.shape) for p in model.parameters())


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unmatched(a: nn.Module, b: nn.Module) -> tuple:
    """Shapes (with multiplicity) found only in a, only in b."""
    sa, sb = shapes(a), shapes(b)
    return sa - sb, sb - sa


def creation_order_pairs(a: nn.Module, b: nn.Module) -> int:
    """How many leading parameters of a and b have the same shape, pair by pair in creation order."""
    n = 0
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.shape != pb.shape:
            break
        n += 1
    return n


# --- 2. the role mapping --------------------------------------------------------------------

def _ncsnpp_units(net: NCSNpp):
    """ncsnpp's modules with parameters, in the order of SongUNet's enc/dec entries."""
    yield net.noise_mlp.dense_0
    yield net.noise_mlp.dense_1
    yield net.conv_in
    for level in net.down_levels:
        for block in level.blocks:
            yield block.resnet, block.attention
        if level.downsample is not None:
            yield level.downsample, None
            if net.progressive_input == "input_skip":
                yield level.pyramid_combine.projection
            elif net.progressive_input == "residual":
                yield level.pyramid_downsample.conv
    yield net.mid_resnet_1, net.mid_attention
    yield net.mid_resnet_2, None
    for level in net.up_levels:
        for i, block in enumerate(level.blocks):
            yield block, level.attention if i == len(level.blocks) - 1 else None
        if net.progressive == "output_skip":
            yield level.pyramid_norm
            yield level.pyramid_conv
        if level.upsample is not None:
            yield level.upsample, None
    if net.progressive != "output_skip":
        yield net.norm_out
        yield net.conv_out


def _song_units(net: SongUNet):
    yield net.map_layer0
    yield net.map_layer1
    for module in (*net.enc.values(), *net.dec.values()):
        if any(True for _ in module.parameters()):
            yield module


def _copy(song: nn.Module, ours: nn.Module, to_song: bool) -> None:
    """A linear / conv / norm layer's weight and bias, as they are (same layout in both)."""
    assert song.weight.shape == ours.weight.shape, (song, ours)
    if isinstance(ours, nn.GroupNorm):  # same normalisation, not only the same shapes
        assert (song.num_groups, song.eps) == (ours.num_groups, ours.eps), (song, ours)
    target, source = (song, ours) if to_song else (ours, song)
    target.weight.copy_(source.weight)
    target.bias.copy_(source.bias)


def _copy_block(song: UNetBlock, resnet: blocks.BigGANResnetBlock, attention, to_song: bool) -> None:
    for theirs, ours in (("norm0", "norm_in"), ("conv0", "conv_in"), ("affine", "noise_projection"),
                         ("norm1", "norm_out"), ("conv1", "conv_out")):
        _copy(getattr(song, theirs), getattr(resnet, ours), to_song)
    assert (song.skip is None) == (resnet.skip is None)
    if resnet.skip is not None:
        _copy(song.skip, resnet.skip, to_song)
    assert bool(song.num_heads) == (attention is not None)
    if attention is None:
        return
    _copy(song.norm2, attention.norm, to_song)
    c = attention.query.weight.shape[0]
    nins = (attention.query, attention.key, attention.value)
    # EDM's qkv output channel 3 * i + j is channel i of q (j = 0), k (1), v (2); NIN is [in, out].
    if to_song:
        song.qkv.weight.copy_(torch.stack([nin.weight.T for nin in nins], dim=1).reshape(3 * c, c, 1, 1))
        song.qkv.bias.copy_(torch.stack([nin.bias for nin in nins], dim=1).flatten())
        song.proj.weight.copy_(attention.output.weight.T.reshape(c, c, 1, 1))
        song.proj.bias.copy_(attention.output.bias)
    else:
        weight, bias = song.qkv.weight.reshape(c, 3, c), song.qkv.bias.reshape(c, 3)
        for j, nin in enumerate(nins):
            nin.weight.copy_(weight[:, j].T)
            nin.bias.copy_(bias[:, j])
        attention.output.weight.copy_(song.proj.weight.reshape(c, c).T)
        attention.output.bias.copy_(song.proj.bias)


@torch.no_grad()
def _map(ours: NCSNpp, song: SongUNet, to_song: bool) -> None:
    units, songs = list(_ncsnpp_units(ours)), list(_song_units(song))
    assert len(units) == len(songs), (len(units), len(songs))
    for unit, song_unit in zip(units, songs):
        if isinstance(song_unit, UNetBlock):
            _copy_block(song_unit, *unit, to_song)
        else:
            _copy(song_unit, unit, to_song)
    if ours.fourier_projection is not None:
        target, source = ((song.map_noise.freqs, ours.fourier_projection.frequencies) if to_song
                          else (ours.fourier_projection.frequencies, song.map_noise.freqs))
        target.copy_(source)
    assert count(song) == count(ours), (count(song), count(ours))


def song_unet_to_ncsnpp(source: SongUNet, target: NCSNpp) -> NCSNpp:
    """The inverse map: EDM's layout (a SongUNet, e.g. from an EDM pickle) into ncsnpp."""
    _map(target, source, to_song=False)
    return target


def ncsnpp_to_song_unet(source: NCSNpp, target: SongUNet) -> SongUNet:
    """Copy an ncsnpp network's weights into a SongUNet of the same configuration
    (`song_unet_args`), module by module; every parameter of both is used once."""
    _map(source, target, to_song=True)
    return target


def song_unet_inputs(net: NCSNpp, x: torch.Tensor, labels: torch.Tensor) -> tuple:
    """SongUNet's (x, noise label) for ncsnpp's: ncsnpp maps data in [0, 1] to [-1, 1] itself when
    not `centered` (score_sde's VE models), and takes sigma and embeds log(sigma) for Fourier
    features; SongUNet takes [-1, 1] and embeds what it is given (EDM's c_noise)."""
    x = x if net.centered else 2 * x - 1
    return x, torch.log(labels) if net.fourier_projection is not None else labels


# --- 3. forward difference ------------------------------------------------------------------

def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights moved away from initialisation (zero-initialised layers would hide a wrong map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny(args: dict) -> dict:
    return dict(args, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def forward_difference(ncsnpp_args: dict, dtype=torch.float32, source: NCSNpp = None, seed: int = 0) -> dict:
    """Max |ncsnpp(x, labels) - SongUNet(x, labels')| through the mapping on 16x16 images, with
    its scale, and the part left when both embed the label identically (one shared embedding)."""
    torch.manual_seed(seed)
    ours = source if source is not None else perturbed(NCSNpp(image_size=16, dropout=0.0, **ncsnpp_args), seed)
    song = ncsnpp_to_song_unet(ours, SongUNet(**song_unet_args(ncsnpp_args, 16), dropout=0.0).eval())
    ours, song = ours.to(dtype), song.to(dtype)
    # ncsnpp computes its positional embedding in float32 whatever its dtype (as the reference).
    cast = ours.noise_mlp.register_forward_pre_hook(lambda _, inputs: tuple(i.to(dtype) for i in inputs))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 3, 16, 16, generator=g, dtype=dtype)
    if ours.fourier_projection is not None:
        labels = torch.tensor([0.01, 0.5, 5.0, 50.0], dtype=dtype)  # sigma (VE)
    else:
        labels = torch.tensor([1e-3, 0.25, 0.5, 1.0], dtype=dtype) * 999  # t * 999 (VP)
    with torch.no_grad():
        a = ours(x, labels)
        b = song(*song_unet_inputs(ours, x, labels))
        if ours.scale_by_sigma:  # score_sde's output division (EDM's VEPrecond does it as c_out)
            b = b / labels.reshape(-1, 1, 1, 1)
        # The same network with SongUNet's embedding replaced by ncsnpp's, computed by ncsnpp.
        embedding = ours.fourier_projection(torch.log(labels)) if ours.fourier_projection is not None \
            else layers.sinusoidal_embedding(labels, ours.nf).to(dtype)
        flip = song.map_noise.forward
        song.map_noise.forward = lambda _: embedding.reshape(4, 2, -1).flip(1).reshape(embedding.shape)
        c = song(*song_unet_inputs(ours, x, labels))
        song.map_noise.forward = flip
        if ours.scale_by_sigma:
            c = c / labels.reshape(-1, 1, 1, 1)
    cast.remove()
    return dict(max_abs=(a - b).abs().max().item(), scale=a.abs().max().item(),
                same_embedding=(a - c).abs().max().item(), out_dtype=a.dtype)


def reference_network(name: str) -> NCSNpp:
    """An ncsnpp fixture of score_sde_pytorch with its EMA weights (published.score_sde)."""
    import json

    import ml_collections

    from sde_diffusion.published.score_sde import load_reference_checkpoint
    config = ml_collections.ConfigDict(json.loads((REFERENCE / f"{name}.json").read_text()))
    return load_reference_checkpoint(REFERENCE / f"{name}.pth", config), config.model.to_dict()


def ddpm_as_ncsnpp(nf: int, seed: int = 0) -> dict:
    """`ddpm` and `ncsnpp` with DDPM's blocks (resblock_type 'ddpm', no skip rescaling) on 8x8
    images: the same state dict names and shapes? max |difference| with ddpm's weights loaded."""
    torch.manual_seed(seed)
    args = dict(image_size=8, nf=nf, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
    ddpm = perturbed(DDPM(**args), seed)
    ours = NCSNpp(**args, resblock_type="ddpm", skip_rescale=False, embedding_type="positional").eval()
    same_layout = [(k, v.shape) for k, v in ddpm.state_dict().items()] == \
                  [(k, v.shape) for k, v in ours.state_dict().items()]
    ours.load_state_dict(ddpm.state_dict())
    x, labels = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 800.0])
    with torch.no_grad():
        a, b = ddpm(x, labels), ours(x, labels)
    return dict(same_layout=same_layout, max_abs=(a - b).abs().max().item(), scale=a.abs().max().item())


class _AsSongUNet(nn.Module):
    """An ncsnpp network called as EDM's preconditioning calls its SongUNet."""

    def __init__(self, net: NCSNpp):
        super().__init__()
        self.net = net

    def forward(self, x, noise_labels, class_labels=None):
        return self.net(x, noise_labels)


def edm_fixture_through_ncsnpp(name: str) -> dict:
    """An EDM pickle's SongUNet (DDPM++) mapped into ncsnpp and put back under its preconditioning:
    max |D - EDM's D| on the fixture's inputs, for ncsnpp and for the SongUNet as loaded."""
    import json

    import numpy as np

    from sde_diffusion.published.edm import load_edm_network
    kwargs = json.loads((EDM / f"{name}.json").read_text())["kwargs"]
    args = dict(DDPMPP, nf=kwargs["model_channels"], ch_mult=tuple(kwargs["channel_mult"]),
                num_res_blocks=kwargs["num_blocks"], attn_resolutions=tuple(kwargs["attn_resolutions"]))
    precond = load_edm_network(EDM / f"{name}.pkl")
    ours = song_unet_to_ncsnpp(precond.model, NCSNpp(image_size=kwargs["img_resolution"], dropout=0.0, **args)).eval()
    data = np.load(EDM / f"{name}.npz")
    x, sigma, expected = (torch.from_numpy(data[k]) for k in ("x", "sigma", "denoised"))
    with torch.no_grad():
        as_loaded = precond(x, sigma)
        precond.model = _AsSongUNet(ours)
        through_ncsnpp = precond(x, sigma)
    return dict(ncsnpp=(through_ncsnpp - expected).abs().max().item(),
                song_unet=(as_loaded - expected).abs().max().item(), scale=expected.abs().max().item())


def _fmt(counter: Counter) -> str:
    return ", ".join(f"{n}x{list(s)}" for s, n in sorted(counter.items())) or "none"


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    score_sde = NCSNpp(**DDPMPP)
    song_same = SongUNet(**song_unet_args(DDPMPP))
    edm = SongUNet(img_resolution=32, in_channels=3, out_channels=3, **EDM_DDPMPP)
    score_ncsnpp, song_ncsnpp = NCSNpp(**NCSNPP), SongUNet(**song_unet_args(NCSNPP))
    ddpm = DDPM(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
    song_ddpm_widths = SongUNet(**dict(song_unet_args(DDPMPP), num_blocks=2))
    adm_ddpm_widths = DhariwalUNet(img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
                                   channel_mult=(1, 2, 2, 2), num_blocks=2, attn_resolutions=(16,))

    print("## 1. Published CIFAR-10 widths (construction only)\n")
    print("| network | parameters | tensors | shapes only here (vs the row's partner) |")
    print("|---|---|---|---|")
    rows = [("score_sde DDPM++ (`ncsnpp`, nf 128, ch_mult 1,2,2,2)", score_sde, song_same),
            ("SongUNet at score_sde's widths (1,2,2,2)", song_same, score_sde),
            ("EDM DDPM++ (`song_unet`, configs/edm_cifar10.py, 2,2,2)", edm, score_sde),
            ("score_sde NCSN++ (Fourier, FIR, residual input pyramid)", score_ncsnpp, song_ncsnpp),
            ("SongUNet NCSN++ at the same widths", song_ncsnpp, score_ncsnpp),
            ("score_sde DDPM (`ddpm`, 2 blocks)", ddpm, song_ddpm_widths),
            ("SongUNet at DDPM's widths (2 blocks)", song_ddpm_widths, ddpm),
            ("DhariwalUNet (ADM) at DDPM's widths", adm_ddpm_widths, ddpm)]
    for name, model, partner in rows:
        only = shapes(model) - shapes(partner)
        shown = _fmt(only) if sum(only.values()) <= 6 else f"{sum(only.values())} tensors"
        print(f"| {name} | {count(model):,} | {sum(shapes(model).values())} | {shown} |")

    print("\n## 2. Tensor correspondence, score_sde DDPM++ -> SongUNet (1,2,2,2)\n")
    total = sum(1 for _ in score_sde.parameters())
    print(f"- same shape pair by pair in creation order: the first {creation_order_pairs(score_sde, song_same)} "
          f"of {total} tensors (ncsnpp creates the noise MLP first, then conv_in ...; SongUNet likewise, but "
          f"stops at the first attention)")
    only_a, only_b = unmatched(score_sde, song_same)
    print(f"- shapes only in ncsnpp: {_fmt(only_a)}")
    print(f"- shapes only in SongUNet: {_fmt(only_b)}")
    ncsnpp_to_song_unet(score_sde, song_same)
    ncsnpp_to_song_unet(score_ncsnpp, song_ncsnpp)
    print(f"- role mapping (`ncsnpp_to_song_unet`): every parameter of both used once, "
          f"{count(score_sde):,} = {count(song_same):,} (DDPM++), {count(score_ncsnpp):,} = {count(song_ncsnpp):,} "
          f"(NCSN++); transformed: per attention, NIN q, k, v [C, C] -> qkv [3C, C, 1, 1] (transposed, "
          f"interleaved), NIN out -> proj [C, C, 1, 1]")

    print("\n## 3. Forward difference through the mapping (16x16, 32 channels, ch_mult 1,2, weights perturbed)\n")
    print("| configuration | dtype | max abs difference | max abs output | with one shared label embedding |")
    print("|---|---|---|---|---|")
    cases = [("DDPM++ (positional, t*999)", tiny(DDPMPP), None),
             ("NCSN++ (Fourier of log sigma, FIR, residual input pyramid, / sigma)",
              dict(tiny(NCSNPP), scale_by_sigma=True), None),
             ("NCSN++ skip pyramids (input_skip, output_skip)",
              dict(tiny(NCSNPP), progressive_input="input_skip", progressive="output_skip"), None)]
    for fixture in ("ddpmpp_vp_cifar10_continuous", "ncsnpp_ve_cifar10_continuous", "ncsnpp_ve_skip_pyramids_as_saved"):
        if (REFERENCE / f"{fixture}.pth").exists():
            net, model_config = reference_network(fixture)
            args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_config.items() if k in DDPMPP}
            args.update(progressive_combine=model_config["progressive_combine"])
            cases.append((f"fixture `{fixture}` (reference EMA weights)", args, net))
    for name, args, source in cases:
        for dtype in (torch.float32, torch.float64):
            if source is not None and dtype == torch.float64:
                continue
            r = forward_difference(args, dtype, source=source)
            print(f"| {name} | {str(dtype).replace('torch.', '')} | {r['max_abs']:.2e} | {r['scale']:.3g} | "
                  f"{r['same_embedding']:.2e} |")
    print("\n## 4. EDM's pickles (EDM's layout) read into ncsnpp through the inverse mapping\n")
    print("| fixture | max abs difference of D from EDM's output: ncsnpp | the SongUNet as loaded | max abs D |")
    print("|---|---|---|---|")
    for fixture in ("edm_vp_ddpmpp", "edm_edm_ddpmpp"):
        if (EDM / f"{fixture}.pkl").exists():
            r = edm_fixture_through_ncsnpp(fixture)
            print(f"| `{fixture}` | {r['ncsnpp']:.2e} | {r['song_unet']:.2e} | {r['scale']:.3g} |")
    print("\n## 5. score_sde's `ddpm` against `ncsnpp` with DDPM's blocks (8x8, ch_mult 1,2, weights perturbed)\n")
    print("| nf | same state dict names and shapes | max abs difference | max abs output |")
    print("|---|---|---|---|")
    for nf in (128, 32):
        r = ddpm_as_ncsnpp(nf)
        print(f"| {nf} | {r['same_layout']} | {r['max_abs']:.2e} | {r['scale']:.3g} |")
    print(f"\n{time.perf_counter() - start:.1f} s on {torch.get_num_threads()} CPU thread, torch {torch.__version__}")


if __name__ == "__main__":
    main()
