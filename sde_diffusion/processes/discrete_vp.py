"""A variance-preserving process given by a table of discrete betas: DDPM's chain as diffusers'
schedulers define it (linear, scaled-linear, cosine or trained betas), in continuous time.

The table alpha_bar_i = prod_{j <= i} (1 - beta_j), i = 0 .. N-1 (Ho et al. 2020, eq. 4) is
read as noise levels s_i = sqrt((1 - alpha_bar_i) / alpha_bar_i) (sigma / alpha, Karras et al.
2022's sigma) at times t_i = (i + 1) / N, with s = 0 at t = 0. Between the table's points s is
linear in t, as diffusers interpolates sigmas between integer timesteps (EulerDiscreteScheduler),
so that a fractional timestep means the same noise level here and there. Then

    alpha(t) = 1 / sqrt(1 + s^2),  sigma(t) = s / sqrt(1 + s^2),

and the forward SDE with these marginals is VP's dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw
(Song et al. 2021, eq. 11) with beta(t) = -d log alpha^2 / dt = 2 s s' / (1 + s^2), piecewise
smooth. A network trained on the table is conditioned on the fractional index t N - 1 (clamped
to [0, N - 1]), exactly i at t_i: diffusers' timestep.

The betas are computed in float32, as diffusers computes them, so that alpha_bar is the table
its schedulers use bit for bit; everything after that is float64.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch

from .chains import Chain
from .sdes import SDE, register_sde
from ..utils import Registry

BETA_SCHEDULES: Registry = Registry("beta schedule")
COSINE_MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: clip betas to prevent singularities near T


@BETA_SCHEDULES.register("linear")
def linear_betas(N: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM's betas, linear from beta_start to beta_end (Ho et al. 2020, sec. 4)."""
    return torch.linspace(beta_start, beta_end, N, dtype=torch.float32)


@BETA_SCHEDULES.register("scaled_linear")
def scaled_linear_betas(N: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end) (latent diffusion's schedule)."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=torch.float32) ** 2


@BETA_SCHEDULES.register("squaredcos_cap_v2")
def cosine_betas(N: int, beta_start: float = 0.0, beta_end: float = 0.0) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, eq. 17, offset 0.008) as betas of N steps,
    beta_i = 1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), each at most 0.999; the beta
    arguments are unused, as in diffusers."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), COSINE_MAX_BETA) for i in range(N)]
    return torch.tensor(betas, dtype=torch.float32)


class TableChain(Chain):
    """DDPM's steps at the table's levels, or at N of them evenly spaced from the first to the
    last (respacing, Nichol & Dhariwal 2021, sec. 4)."""

    def __init__(self, sde, N: int):
        super().__init__(sde, N)
        size = sde.table_size
        self.positions = (torch.arange(size) if self.N == size else torch.tensor([size - 1]) if self.N == 1 else
                          torch.round(torch.linspace(0, size - 1, self.N, dtype=torch.float64)).long())

    def time(self, index):
        return self.sde.table_time(self.positions.to(index.device)[index])

    def step_index(self, t):
        # The chain step whose level is the first at or above t (1e-9 absorbs rounding of t).
        times = self.sde.table_time(self.positions).to(t.device)
        return torch.searchsorted(times, t.to(torch.float64) - 1e-9).clamp(0, self.N - 1)

    def _alpha_bars(self, index):
        """(alpha_bar at chain step i, at step i - 1; 1 before the first)."""
        table = self.sde.alphas_cumprod.to(index.device)
        positions = self.positions.to(index.device)
        now = table[positions[index]]
        before = torch.where(index > 0, table[positions[(index - 1).clamp(min=0)]], torch.ones_like(now))
        return now, before

    def coefs(self, index):
        # DDPM's forward step between the chain's levels: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z.
        now, before = self._alpha_bars(index)
        beta = 1 - now / before
        return torch.sqrt(1 - beta) - 1, torch.sqrt(beta)

    def ancestral_coefs(self, index):
        # DDPM's sampler (Ho et al. 2020, Algorithm 2): x_{i-1} = (x_i + beta_i score) / sqrt(alpha_i) + sqrt(beta_i) z.
        now, before = self._alpha_bars(index)
        beta = 1 - now / before
        return 1 / torch.sqrt(1 - beta), beta / torch.sqrt(1 - beta), torch.sqrt(beta)

    def langevin_alpha(self, index):
        now, before = self._alpha_bars(index)
        return now / before

    def noise_labels(self, t):
        return self.sde.noise_labels(t)


@register_sde("discrete_vp")
class DiscreteVP(SDE):
    """VP with the N-step chain of `beta_schedule` (BETA_SCHEDULES, from beta_start to beta_end)
    or of `trained_betas` (N of them): diffusers' `num_train_timesteps`, `beta_schedule`,
    `beta_start`, `beta_end`, `trained_betas`. `steps_offset` is the pipeline scheduler's offset
    of its "leading" timesteps (`published.diffusers`), kept with the process it belongs to."""

    has_training_chain = True
    chain_class = TableChain

    def __init__(self, N: int = 1000, beta_schedule: str = "linear", beta_start: float = 0.0001,
                 beta_end: float = 0.02, trained_betas: Optional[Sequence[float]] = None, steps_offset: int = 0):
        super().__init__(N)
        self.beta_schedule, self.beta_start, self.beta_end = beta_schedule, float(beta_start), float(beta_end)
        self.trained_betas = None if trained_betas is None else [float(b) for b in trained_betas]
        self.steps_offset = int(steps_offset)
        if self.trained_betas is not None:
            if len(self.trained_betas) != self.N:
                raise ValueError(f"trained_betas holds {len(self.trained_betas)} betas, N is {self.N}")
            betas = torch.tensor(self.trained_betas, dtype=torch.float32)
        else:
            betas = BETA_SCHEDULES.get_or_raise(beta_schedule)(self.N, self.beta_start, self.beta_end)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1): alpha_bar would reach 0 (a zero-SNR chain has no "
                             "finite noise level at T)")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)  # float32 products, as diffusers
        # Noise levels at t = 0, 1/N, ..., 1: the table with the data in front.
        self.levels = torch.cat([torch.zeros(1, dtype=torch.float64),
                                 ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()])
        self.table_size = self.N

    @property
    def prior_std(self) -> float:
        """sigma(T) = sqrt(1 - alpha_bar_{N-1}): diffusers' Euler schedulers start from noise of this
        std on x_T's scale (their init_noise_sigma, undone by scale_model_input)."""
        return float((1 - self.alphas_cumprod[-1]).sqrt())

    # -- the noise level s(t), linear between table points -----------------------------------
    def _segment(self, t: torch.Tensor):
        """(level at t, its slope ds/dt) for times t in [0, 1]."""
        levels = self.levels.to(device=t.device, dtype=t.dtype)
        position = (t * self.table_size).clamp(0, self.table_size)
        low = position.floor().clamp(max=self.table_size - 1).long()
        step = levels[low + 1] - levels[low]
        return levels[low] + (position - low) * step, step * self.table_size

    def marginal_coefs(self, t):
        level, _ = self._segment(t)
        alpha = torch.rsqrt(1 + level ** 2)
        return alpha, level * alpha

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = 2 s s' / (1 + s^2): -d log alpha_bar / dt of the interpolated table."""
        level, slope = self._segment(t)
        return 2 * level * slope / (1 + level ** 2)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def log_snr(self, t):
        return -2 * torch.log(self._segment(t)[0])

    def time_of_log_snr(self, log_snr):
        level = torch.exp(-0.5 * log_snr)
        levels = self.levels.to(device=level.device, dtype=level.dtype)
        low = (torch.searchsorted(levels, level.contiguous(), right=True) - 1).clamp(0, self.table_size - 1)
        position = low + (level - levels[low]) / (levels[low + 1] - levels[low])
        return (position / self.table_size).clamp(0, self.T)

    def noise_labels(self, t, *, continuous=True):
        """The fractional training-chain index t N - 1 (diffusers' timestep), continuous or not."""
        return (t * self.table_size - 1).clamp(0, self.table_size - 1)

    def table_time(self, index) -> torch.Tensor:
        """The time of (possibly fractional) table index i: (i + 1) / N."""
        return (torch.as_tensor(index, dtype=torch.float64) + 1) / self.table_size

    def with_steps(self, N: int) -> "DiscreteVP":
        """The same process (same table, times and labels) with a chain of N of the table's levels,
        evenly spaced from the first to the last (respacing, Nichol & Dhariwal 2021, sec. 4)."""
        N = int(N)
        if N == self.N:
            return self
        if not 1 <= N <= self.table_size:
            raise ValueError(f"a chain of {N} steps cannot be laid on a table of {self.table_size}")
        respaced = copy.copy(self)
        respaced.N = N
        return respaced

    def _init_kwargs(self):
        return dict(N=self.table_size, beta_schedule=self.beta_schedule, beta_start=self.beta_start,
                    beta_end=self.beta_end, trained_betas=self.trained_betas, steps_offset=self.steps_offset)

    def __repr__(self) -> str:
        source = "trained_betas" if self.trained_betas is not None else (
            f"{self.beta_schedule}, {self.beta_start:g}..{self.beta_end:g}")
        return f"DiscreteVP(N={self.table_size}, {source}, steps_offset={self.steps_offset})"
