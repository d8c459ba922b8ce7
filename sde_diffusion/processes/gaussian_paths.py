"""Gaussian diffusions beyond the 2021 SDEs, as SDEs of this package: EDM's (Karras et al. 2022),
the cosine VP schedule (Nichol & Dhariwal 2021) and the linear path of rectified flow / flow
matching (Liu et al. 2023; Lipman et al. 2023).

Each is a path x_t = alpha(t) x_0 + sigma(t) z. The forward SDE with these marginals has the
linear drift f(t) = d log alpha / dt and g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2 (Song et al.
2021, eq. 29 read backwards; Kingma et al. 2021, appendix A), so the reverse SDE, the
probability-flow ODE, every sampler and the likelihood come from the same code as for VP and VE.
Their discrete chain (used by `discretize`, i.e. the reverse-diffusion predictor) is the exact
Gaussian transition between N levels: uniform in time, or for EDM spaced as its sampler's
rho-7 grid, since uniform steps in sigma waste nearly all of them at high noise.
"""
from __future__ import annotations

import math

import torch

from .chains import Chain
from .sdes import SDE, register_sde


class PathChain(Chain):
    """A Gaussian path's chain: levels at fractions (i + 1) / N of the path's spacing from t_min
    to T (the first just above the data's end, the last at T, as DDPM's levels lie above the
    data), each step the exact Gaussian transition from the level below."""

    def time(self, index: torch.Tensor) -> torch.Tensor:
        return self.sde._time_at((index.to(torch.float64) + 1) / self.N)

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        fraction = self.sde._fraction_at(t.to(torch.float64))
        return (torch.ceil(fraction * self.N - 1e-4) - 1).long().clamp(0, self.N - 1)

    def coefs(self, index: torch.Tensor):
        # The step that made level i from level i - 1 (from t_min for i = 0): its alpha ratio
        # and the variance it adds.
        t_now, t_before = self.time(index), self.sde._time_at(index.to(torch.float64) / self.N)
        a_now, s_now = self.sde.marginal_coefs(t_now)
        a_before, s_before = self.sde.marginal_coefs(t_before)
        ratio = a_now / a_before
        variance = (s_now ** 2 - ratio ** 2 * s_before ** 2).clamp(min=0)
        return (ratio - 1).float(), variance.sqrt().float()


class GaussianPathSDE(SDE):
    """An SDE given by its marginal coefficients alpha(t), sigma(t) on [t_min, T]: subclasses give
    `marginal_coefs`, `drift_coef`, `diffusion` and `time_of_log_snr` in closed form."""

    t_min: float = 0.0  # the chain's levels lie above this time, up to T
    chain_class = PathChain

    @property
    def prior_std(self) -> float:
        return float(self.marginal_coefs(torch.tensor(self.T, dtype=torch.float64))[1])

    def _time_at(self, fraction: torch.Tensor) -> torch.Tensor:
        """The chain's time at `fraction` in [0, 1] of the way from t_min to T (uniform here)."""
        return self.t_min + (self.T - self.t_min) * fraction

    def _fraction_at(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.t_min) / (self.T - self.t_min)


@register_sde("edm")
class EDMSDE(GaussianPathSDE):
    """Karras et al. 2022: sigma(t) = t, alpha = 1 on [sigma_min, sigma_max]; dx = sqrt(2t) dw
    (their eq. 6 with sigma(t) = t). Like VE's, networks see sigma itself as their noise label
    and output the score (NCSN++ divides by sigma inside); EDM's own networks bring their
    preconditioning (`models.edm_precond`)."""

    default_parameterization = "score"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(N)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.t_min = self.sigma_max, self.sigma_min

    RHO = 7.0  # the chain's levels: Karras et al.'s rho-7 spacing of sigma (their eq. 5)

    def noise_labels(self, t, *, continuous=True):
        if not continuous:
            raise ValueError("the EDM process has no discrete training chain")
        return t

    def _time_at(self, fraction):
        low, high = self.sigma_min ** (1 / self.RHO), self.sigma_max ** (1 / self.RHO)
        return (low + fraction * (high - low)) ** self.RHO

    def _fraction_at(self, t):
        low, high = self.sigma_min ** (1 / self.RHO), self.sigma_max ** (1 / self.RHO)
        return (t ** (1 / self.RHO) - low) / (high - low)

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return torch.sqrt(2 * t)

    def marginal_coefs(self, t):
        return torch.ones_like(t), t

    def time_of_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr)

    def _init_kwargs(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}


@register_sde("rectified_flow")
class RectifiedFlowSDE(GaussianPathSDE):
    """The linear path alpha = 1 - t, sigma = t (flow matching with the optimal-transport path;
    rectified flow): f = -1 / (1 - t), g^2 = 2t / (1 - t). T stops short of 1, where alpha = 0
    and the log-SNR is -inf; the prior N(0, T^2) ignores alpha(T) = 1e-3 of the data."""

    def __init__(self, T: float = 0.999, N: int = 1000):
        if not 0 < T < 1:
            raise ValueError(f"need 0 < T < 1, got {T}")
        super().__init__(N)
        self.T = float(T)

    def drift_coef(self, t):
        return -1 / (1 - t)

    def diffusion(self, t):
        return torch.sqrt(2 * t / (1 - t))

    def marginal_coefs(self, t):
        return 1 - t, t

    def time_of_log_snr(self, log_snr):
        # log-SNR = 2 log((1 - t) / t)
        return torch.sigmoid(-0.5 * log_snr)

    def _init_kwargs(self):
        return {"T": self.T, "N": self.N}


@register_sde("cosine_vp")
class CosineVPSDE(GaussianPathSDE):
    """Nichol & Dhariwal 2021's cosine schedule in continuous time: alpha_bar(t) =
    cos^2(u(t)) / cos^2(u(0)), u(t) = (t + s) / (1 + s) pi / 2, s = 0.008; VP, so g^2 = -2 f with
    f = d log alpha / dt = -tan(u) pi / (2 (1 + s)). Their discrete betas are clipped at 0.999 near
    t = 1, where alpha_bar -> 0; here the process ends at T = 0.9946 (the end DPM-Solver uses for
    this schedule), where the log-SNR is about -11.3."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, N: int = 1000):
        super().__init__(N)
        self.s, self.T = float(s), float(T)
        self._log_cos_u0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _u(self, t):
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def noise_labels(self, t, *, continuous=True):
        if not continuous:
            raise ValueError("the cosine VP process has no discrete training chain here")
        return t * 999.0

    def drift_coef(self, t):
        return -torch.tan(self._u(t)) * math.pi / (2 * (1 + self.s))

    def diffusion(self, t):
        return torch.sqrt(-2 * self.drift_coef(t))

    def marginal_coefs(self, t):
        log_alpha = torch.log(torch.cos(self._u(t))) - self._log_cos_u0
        return torch.exp(log_alpha), torch.sqrt((-torch.expm1(2 * log_alpha)).clamp(min=0))  # rounding can give log alpha(0) > 0

    def time_of_log_snr(self, log_snr):
        alpha = torch.sqrt(torch.sigmoid(log_snr))  # alpha^2 / sigma^2 = exp(lambda), VP
        u = torch.arccos(alpha * math.exp(self._log_cos_u0))
        return u * 2 / math.pi * (1 + self.s) - self.s

    def _init_kwargs(self):
        return {"s": self.s, "T": self.T, "N": self.N}
