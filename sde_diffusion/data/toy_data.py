"""2-D toy distributions for the MLP: each generator is f(n, generator) -> [n, 2] float32
points, roughly within [-4, 4], registered in TOY_DATA (datasets.py serves them by name)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..processes.distributions import GaussianMixture
from ..utils import Registry

TOY_DATA: Registry[Callable[[int, Optional[torch.Generator]], torch.Tensor]] = Registry("toy dataset")


def _uniform(n: int, generator, *shape) -> torch.Tensor:
    return torch.rand((n,) + shape, generator=generator)


def _normal(n: int, generator, *shape) -> torch.Tensor:
    return torch.randn((n,) + shape, generator=generator)


@TOY_DATA.register("moons")
def moons(n: int, generator=None) -> torch.Tensor:
    """Two interleaved half circles (upper: centre (0, 0); lower: centre (1, 0.5)), centred
    and doubled to span about [-3, 3] x [-1.5, 1.5]."""
    angle = math.pi * _uniform(n, generator)
    lower = _uniform(n, generator) < 0.5
    upper_arc = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower_arc = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(lower[:, None], lower_arc, upper_arc) + 0.05 * _normal(n, generator, 2)
    return 2 * (points - torch.tensor([0.5, 0.25]))


@TOY_DATA.register("swiss_roll")
def swiss_roll(n: int, generator=None) -> torch.Tensor:
    """The 2-D swiss roll r(t) = t (cos t, sin t), t in [1.5 pi, 4.5 pi], divided by 5 so that
    it fits in a radius of about 2.8."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5
    return points + 0.05 * _normal(n, generator, 2)


@TOY_DATA.register("checkerboard")
def checkerboard(n: int, generator=None) -> torch.Tensor:
    """Uniform on the 8 'black' unit squares ((row + column) even) of a 4 x 4 board on [-2, 2]^2."""
    column = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + column % 2
    corner = torch.stack([column, row], dim=1).to(torch.float32) - 2
    return corner + _uniform(n, generator, 2)


@TOY_DATA.register("rings")
def rings(n: int, generator=None) -> torch.Tensor:
    """Four concentric circles of radii 0.75, 1.5, 2.25, 3, each chosen with probability
    proportional to its radius so that density along the curves is the same on every ring."""
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0])
    radius = radii[torch.multinomial(radii, n, replacement=True, generator=generator)]
    angle = 2 * math.pi * _uniform(n, generator)
    points = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return points + 0.08 * _normal(n, generator, 2)


def toy_mixture() -> GaussianMixture:
    """The mixture behind the 'gmm' toy data: 8 Gaussians of std 0.25 on a circle of radius
    2.5, with weights proportional to 1..8 so that a model must get the mode weights right,
    not only their positions. Evaluation can use its exact density and score."""
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 2.5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, [0.25] * 8)


@TOY_DATA.register("gmm")
def gmm(n: int, generator=None) -> torch.Tensor:
    """Samples of `toy_mixture()`."""
    return toy_mixture().sample(n, generator=generator).to(torch.float32)
