import torch

from sde_diffusion.distributions import GaussianMixture


def mixture_2d() -> GaussianMixture:
    """Three well separated components of different widths and weights."""
    return GaussianMixture([0.2, 0.3, 0.5], [[-3.0, 0.0], [3.0, 2.0], [0.0, -3.0]], [0.3, 0.5, 0.8])


def mixture_32d() -> GaussianMixture:
    """The oracle's sharp case: stds 0.05-0.3 around means spread over several units."""
    generator = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(4, 32, generator=generator, dtype=torch.float64)
    return GaussianMixture([0.1, 0.2, 0.3, 0.4], means, [0.05, 0.1, 0.2, 0.3])

