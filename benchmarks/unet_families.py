"""One DDPM++ / NCSN++ implementation for both weight layouts: `ncsnpp` is EDM's SongUNet read
with score_sde's config names. What that gives, measured:

    python benchmarks/unet_families.py

Prints (a few seconds on one CPU thread; results in docs/architecture.md, "One U-Net family or two"):
1. parameter counts at the published CIFAR-10 widths (construction only, on the meta device):
   score_sde's DDPM++ and NCSN++ as `ncsnpp`, EDM's DDPM++ (configs/edm_cifar10.py), `ddpm`, and
   EDM's two U-Nets at DDPM's widths;
2. score_sde_pytorch's own checkpoints (/work/shared/fixtures/reference) loaded into `ncsnpp` and
   `ddpm` through the role map of `published.score_sde_layout`: max |output - the reference's|;
3. EDM's pickles (/work/shared/fixtures/edm) whose network is a DDPM++ SongUNet: the weights
   loaded into `ncsnpp` by name, under EDM's preconditioning: max |D - EDM's D|.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sde_diffusion.models.ddpm import DDPM  # noqa: E402
from sde_diffusion.models.edm_networks import DhariwalUNet, SongUNet  # noqa: E402
from sde_diffusion.models.ncsnpp import NCSNpp  # noqa: E402
from sde_diffusion.published.edm import load_edm_network  # noqa: E402
from sde_diffusion.published.score_sde import load_reference_checkpoint  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "fixtures" / "reference"
EDM = ROOT.parent / "shared" / "fixtures" / "edm"
# score_sde's DDPM++ for CIFAR-10 (configs/published/common.py: ddpmpp) and NCSN++ (ncsnpp_ve).
DDPMPP = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,))
NCSNPP = dict(DDPMPP, embedding_type="fourier", fir=True, progressive_input="residual")
REFERENCE_FIXTURES = ("ddpm_vp_cifar10", "ddpmpp_vp_cifar10_continuous", "ncsnpp_ve_cifar10_continuous")
EDM_DDPMPP_FIXTURES = ("edm_vp_ddpmpp", "edm_edm_ddpmpp")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_error(name: str) -> dict:
    """A score_sde fixture loaded with its EMA weights: max |ours - the reference's output|."""
    config = ml_collections.ConfigDict(json.loads((REFERENCE / f"{name}.json").read_text()))
    network = load_reference_checkpoint(REFERENCE / f"{name}.pth", config)
    data = np.load(REFERENCE / f"{name}.npz")
    with torch.no_grad():
        out = network(torch.from_numpy(data["x"]), torch.from_numpy(data["labels"]))
    expected = torch.from_numpy(data["out"])
    return dict(network=config.model.name, max_abs=(out - expected).abs().max().item(),
                scale=expected.abs().max().item())


class _CalledAsSongUNet(nn.Module):
    """`ncsnpp` called as EDM's preconditioning calls its SongUNet (c_noise as the label)."""

    def __init__(self, net: NCSNpp):
        super().__init__()
        self.net = net

    def forward(self, x, noise_labels, class_labels=None):
        return self.net(x, noise_labels)


def edm_pickle_as_ncsnpp(name: str) -> dict:
    """An EDM pickle's DDPM++ SongUNet, its weights loaded into `ncsnpp` by name and put back under
    EDM's preconditioning: max |D - EDM's D| for ncsnpp and for the SongUNet as loaded."""
    kwargs = json.loads((EDM / f"{name}.json").read_text())["kwargs"]
    precond = load_edm_network(EDM / f"{name}.pkl")
    ours = NCSNpp(image_size=kwargs["img_resolution"], nf=kwargs["model_channels"], dropout=0.0,
                  ch_mult=tuple(kwargs["channel_mult"]), num_res_blocks=kwargs["num_blocks"],
                  attn_resolutions=tuple(kwargs["attn_resolutions"]))
    ours.load_state_dict(precond.model.state_dict())  # EDM's names are ncsnpp's
    data = np.load(EDM / f"{name}.npz")
    x, sigma, expected = (torch.from_numpy(data[k]) for k in ("x", "sigma", "denoised"))
    with torch.no_grad():
        as_loaded = precond(x, sigma)
        precond.model = _CalledAsSongUNet(ours.eval())
        through_ncsnpp = precond(x, sigma)
    return dict(ncsnpp=(through_ncsnpp - expected).abs().max().item(),
                song_unet=(as_loaded - expected).abs().max().item(), scale=expected.abs().max().item())


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    with torch.device("meta"):
        rows = [("score_sde DDPM++ (`ncsnpp`, nf 128, ch_mult 1,2,2,2, 4 blocks)", NCSNpp(**DDPMPP)),
                ("score_sde NCSN++ (`ncsnpp`: Fourier, FIR, residual input pyramid)", NCSNpp(**NCSNPP)),
                ("EDM DDPM++ (`song_unet`, configs/edm_cifar10.py, ch_mult 2,2,2)",
                 SongUNet(img_resolution=32, in_channels=3, out_channels=3, channel_mult=(2, 2, 2))),
                ("score_sde DDPM (`ddpm`, 2 blocks)", DDPM(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                                          attn_resolutions=(16,))),
                ("SongUNet at DDPM's widths (2 blocks)", NCSNpp(**dict(DDPMPP, num_res_blocks=2))),
                ("DhariwalUNet (ADM) at DDPM's widths", DhariwalUNet(
                    img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
                    channel_mult=(1, 2, 2, 2), num_blocks=2, attn_resolutions=(16,)))]
    print("## 1. Published CIFAR-10 widths (construction only)\n")
    print("| network | parameters |\n|---|---|")
    for name, model in rows:
        print(f"| {name} | {count(model):,} |")

    print("\n## 2. score_sde_pytorch's checkpoints (EMA weights), float32\n")
    print("| fixture | network | max abs difference from the reference's output | max abs output |\n|---|---|---|---|")
    for name in REFERENCE_FIXTURES:
        if (REFERENCE / f"{name}.pth").exists():
            r = reference_error(name)
            print(f"| `{name}` | `{r['network']}` | {r['max_abs']:.2e} | {r['scale']:.3g} |")

    print("\n## 3. EDM's DDPM++ pickles, weights loaded into `ncsnpp` by name, float32\n")
    print("| fixture | max abs difference of D from EDM's: ncsnpp | the SongUNet as loaded | max abs D |")
    print("|---|---|---|---|")
    for name in EDM_DDPMPP_FIXTURES:
        if (EDM / f"{name}.pkl").exists():
            r = edm_pickle_as_ncsnpp(name)
            print(f"| `{name}` | {r['ncsnpp']:.2e} | {r['song_unet']:.2e} | {r['scale']:.3g} |")
    print(f"\n{time.perf_counter() - start:.1f} s on {torch.get_num_threads()} CPU thread, torch {torch.__version__}")


if __name__ == "__main__":
    main()
