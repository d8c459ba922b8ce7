"""The discrete Markov chains that go with the processes: x_{i+1} = x_i + f_i x_i + G_i z,
i = 0 .. N-1, whose step i matches the process's noise level at `time(i)`.

A process (`sdes.SDE`) is continuous; its chain is a separate object (`sde.chain`, of the
process's N steps; `sde.with_steps(n).chain` respaced to n) with what discrete-time training,
PC's chain predictors (`reverse_diffusion`, `ancestral`) and the Langevin step size read:
- `DDPMChain`: DDPM's (Ho et al. 2020) on VP, linear betas respaced from 1000 steps;
- `SMLDChain`: SMLD/NCSN's geometric noise levels on VE (Song & Ermon 2019);
- `EulerChain`: where no chain was published (sub-VP), the Euler-Maruyama step of length T/N.
The Gaussian paths and diffusers' tables bring their own (`gaussian_paths`, `discrete_vp`).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ..utils import append_dims

# DDPM (Ho et al. 2020) defines its chain with 1000 steps; shorter VP chains are respaced
# from it (Nichol & Dhariwal 2021, sec. 4) so that no discrete beta can reach 1.
DDPM_STEPS = 1000


class Chain:
    """A process's chain of N steps; step i is taken at times t with floor(t (N - 1) / T) == i
    (the reference code's map) and scored at `time(i)`. The Euler-Maruyama step by default."""

    def __init__(self, sde, N: int):
        self.sde, self.N, self.T = sde, int(N), sde.T

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """floor(t (N - 1) / T), with a small tolerance so that t = i T / (N - 1) computed in
        floating point maps to i."""
        index = torch.floor(t * (max(self.N - 1, 1) / self.T) + 1e-4).long()
        return index.clamp(0, self.N - 1)

    def time(self, index: torch.Tensor) -> torch.Tensor:
        """The time whose perturbation kernel matches step `index`'s noise level: where samplers
        that take chain steps evaluate the score. i T / (N - 1) unless a chain knows better."""
        return index.to(torch.float64) * (self.T / max(self.N - 1, 1))

    def coefs(self, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(f_i, G_i) of step `index`: here the Euler-Maruyama step of length T / N at its time."""
        t = self.time(index)
        dt = self.T / self.N
        return self.sde.drift_coef(t) * dt, self.sde.diffusion(t) * math.sqrt(dt)

    def discretize(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """The step taken at times t ([B]): (f_i x, G_i)."""
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=x.dtype, device=x.device)
        f_coef, G = (c.to(x.dtype) for c in self.coefs(self.step_index(t)))
        return append_dims(f_coef, x.ndim) * x, G

    def ancestral_coefs(self, index: torch.Tensor):
        """(a_i, b_i, c_i) of the ancestral step x_{i-1} = a_i x_i + b_i score + c_i z."""
        raise ValueError(f"ancestral sampling is not defined for {type(self.sde).__name__}; "
                         "use the reverse_diffusion or euler_maruyama predictor")

    def langevin_alpha(self, index: torch.Tensor) -> torch.Tensor:
        """Scale of the Langevin corrector's step size at step `index` (1 unless the chain has one)."""
        return torch.ones(index.shape, dtype=torch.float64, device=index.device)

    def noise_labels(self, t: torch.Tensor) -> torch.Tensor:
        """A discrete-time network's label at time t."""
        raise ValueError(f"discrete time labels need a training chain; {type(self.sde).__name__} has none")


def ddpm_betas(beta_min: float, beta_max: float, N: int) -> torch.Tensor:
    """DDPM's linear betas beta(t_i) / N for N >= 1000 (exactly DDPM's at N = 1000); fewer steps
    keep every N-th point of the 1000-step alpha_bar and recompute the betas from the ratios,
    beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}, which always lie in (0, 1)."""
    fine_N = max(N, DDPM_STEPS)
    betas = torch.linspace(beta_min / fine_N, beta_max / fine_N, fine_N, dtype=torch.float64)
    if fine_N == N:
        return betas
    fine_alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    keep = (torch.tensor([fine_N - 1]) if N == 1 else
            torch.round(torch.arange(N, dtype=torch.float64) * (fine_N - 1) / (N - 1)).long())
    alpha_bar = fine_alpha_bar[keep]
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1.0 - alpha_bar / previous


class EulerChain(Chain):
    """Sub-VP's: Euler-Maruyama steps, with the DDPM chain's alphas scaling Langevin's step size
    (as the reference code does for sub-VP)."""

    def __init__(self, sde, N: int):
        super().__init__(sde, N)
        self.alphas = 1.0 - ddpm_betas(sde.beta_min, sde.beta_max, self.N)

    def langevin_alpha(self, index):
        return self.alphas.to(index.device)[index]


class DDPMChain(Chain):
    """DDPM's chain on VP: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""

    def __init__(self, sde, N: int):
        super().__init__(sde, N)
        self.betas = ddpm_betas(sde.beta_min, sde.beta_max, self.N)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    def coefs(self, index):
        beta = self.betas.to(index.device)[index]
        return torch.sqrt(1.0 - beta) - 1.0, torch.sqrt(beta)

    def time(self, index):
        # Step i turns x_{i+1} into x_i, so its score is the one at alpha_bar_i's noise level:
        # about (i + 1) T / N, which a grid ending at eps = 1/N hits only for N = 1000.
        return self.sde.time_of_alpha_bar(self.alpha_bar.to(index.device)[index])

    def ancestral_coefs(self, index):
        # DDPM's sampler (Ho et al. 2020, Algorithm 2) with eps = -sqrt(1 - alpha_bar) score:
        # x_{i-1} = (x_i + beta_i score) / sqrt(alpha_i) + sqrt(beta_i) z.
        beta = self.betas.to(index.device)[index]
        alpha = 1.0 - beta
        return 1.0 / torch.sqrt(alpha), beta / torch.sqrt(alpha), torch.sqrt(beta)

    def langevin_alpha(self, index):
        return self.alphas.to(index.device)[index]

    def noise_labels(self, t):
        """The (fractional) chain index whose alpha_bar equals alpha_bar(t), interpolating
        log alpha_bar over the chain: exactly i on step i (the label DDPM trains with),
        noise-level-consistent in between."""
        neg_log_alpha_bar = -torch.log(self.alpha_bar).to(t.device)  # increasing in i
        target = self.sde.integrated_beta(t.to(torch.float64))       # -log alpha_bar(t)
        upper = torch.searchsorted(neg_log_alpha_bar, target).clamp(1, self.N - 1)
        low_value, high_value = neg_log_alpha_bar[upper - 1], neg_log_alpha_bar[upper]
        fraction = (target - low_value) / (high_value - low_value)
        return (upper - 1 + fraction).clamp(0, self.N - 1)


class SMLDChain(Chain):
    """SMLD/NCSN's chain on VE: geometric noise levels sigma_0 = sigma_min .. sigma_{N-1} = sigma_max."""

    def __init__(self, sde, N: int):
        super().__init__(sde, N)
        self.sigmas = torch.exp(torch.linspace(math.log(sde.sigma_min), math.log(sde.sigma_max), self.N,
                                               dtype=torch.float64))

    def _sigma_pairs(self, index):
        sigmas = self.sigmas.to(index.device)
        previous = torch.where(index > 0, sigmas[(index - 1).clamp(min=0)], torch.zeros_like(sigmas[index]))
        return sigmas[index], previous

    def coefs(self, index):
        sigma, previous = self._sigma_pairs(index)
        return torch.zeros_like(sigma), torch.sqrt(sigma ** 2 - previous ** 2)

    def ancestral_coefs(self, index):
        # SMLD's ancestral step (Song et al. 2021, eq. 47): the posterior of x_{i-1} given x_i.
        sigma, previous = self._sigma_pairs(index)
        variance_step = sigma ** 2 - previous ** 2
        return (torch.ones_like(sigma), variance_step,
                torch.sqrt(previous ** 2 * variance_step / sigma ** 2))

    def noise_labels(self, t):
        """sigma(t), sigma_i on step i: NCSN's networks are conditioned on the noise level."""
        return self.sde.marginal_coefs(t)[1]
