"""Per-image seeds, as NVlabs/edm's `generate.py --seeds=0-63` draws them (`sampling.seeds`).

Image k's latent (unit variance, [C, H, W]) is the first draw of a `torch.Generator` on the
run's device seeded with k (mod 2^32), and for a class-conditional network its class is the
next draw of the same generator, `randint(num_classes)`: so an image is the same whatever the
batch it is drawn in, the number of processes or the other seeds. The sampler starts from
x_T = latent * the process's prior std (`sampling.sample(latents=...)`), EDM's
`latents * t_steps[0]`. A stochastic sampler's own noise (churn, eta) comes from the run's
generator (`seed`), one stream per batch, not from the image's.
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

import torch

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_seeds(text) -> List[int]:
    """'0-63' or '1,2,5-10' -> the seeds in order (generate.py's `parse_int_list`); ValueError
    for anything else, an empty list or a descending range."""
    if isinstance(text, (list, tuple)):
        seeds = [int(seed) for seed in text]
    else:
        seeds = []
        for part in str(text).replace(" ", "").split(","):
            match = _RANGE.match(part)
            if match:
                first, last = int(match.group(1)), int(match.group(2))
                if last < first:
                    raise ValueError(f"the range {part!r} runs backwards")
                seeds.extend(range(first, last + 1))
            elif part.isdigit():
                seeds.append(int(part))
            else:
                raise ValueError(f"expected seeds like '0-63' or '1,2,5-10', got {text!r}")
    if not seeds or min(seeds) < 0:
        raise ValueError(f"expected non-negative seeds like '0-63' or '1,2,5-10', got {text!r}")
    return seeds


def seeds_tag(seeds: Sequence[int]) -> str:
    """'0-63' or '1-2_5-10': the seeds as ranges, for file names."""
    runs, start = [], 0
    for index in range(1, len(seeds) + 1):
        if index == len(seeds) or seeds[index] != seeds[index - 1] + 1:
            first, last = seeds[start], seeds[index - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = index
    return "_".join(runs)


def seeded_latents(seeds: Sequence[int], shape: Sequence[int], num_classes: int = 0,
                   device=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(unit latents [len(seeds), *shape], class indices [len(seeds)] or None): one generator per
    seed on `device`, a latent, then for num_classes > 0 a class, as generate.py draws them."""
    latents, labels = [], []
    for seed in seeds:
        generator = torch.Generator(device or "cpu").manual_seed(int(seed) % (1 << 32))
        latents.append(torch.randn(tuple(shape), generator=generator, device=device))
        if num_classes:
            labels.append(torch.randint(num_classes, size=[], generator=generator, device=device))
    return torch.stack(latents), (torch.stack(labels).cpu() if num_classes else None)
