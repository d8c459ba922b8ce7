"""Forward SDEs dx = f(x, t) dt + g(t) dw and their discretizations (Song et al. 2021).

Every SDE here has a drift linear in x, f(x, t) = f(t) x, and a Gaussian transition kernel
p_t(x_t | x_0) = N(m(t) x_0, s(t)^2 I). The classes therefore expose those scalar
coefficients as functions of a [B] time tensor (`drift_coef`, `diffusion`, `marginal_coefs`),
and build the tensor-valued API of the reference code (`sde`, `marginal_prob`) on top, for
inputs of any shape [B, ...]. Samplers precompute the coefficients on their time grid once and
never call back into these classes inside the loop.

A process's discrete Markov chain of `N` steps (DDPM's for VP, SMLD/NCSN's for VE) is its own
object, `sde.chain` (`chains`).
"""
from __future__ import annotations

import abc
import inspect
import math
from typing import Callable, Optional, Tuple

import torch

from ..utils import Registry, append_dims, batch_sum
from .chains import Chain, DDPMChain, EulerChain, SMLDChain

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SDES: Registry = Registry("SDE")
register_sde = SDES.register

def get_sde(name: str, **kwargs) -> "SDE":
    """Build a registered SDE by name, e.g. get_sde("vpsde", beta_max=20.)."""
    return SDES.get_or_raise(name)(**kwargs)


def _as_time(t, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=dtype, device=device)


# Continuous-time networks see t * 999 as their noise label, the reference code's convention,
# so that continuous and discrete DDPM-style networks see labels on the same 0..999 scale.
CONTINUOUS_LABEL_SCALE = 999.0


class SDE(abc.ABC):
    """A forward SDE on [0, T] with linear drift; N is the length of its chain (`chain`) and
    the default number of sampling steps."""

    T: float = 1.0
    # What a network trained under this SDE outputs unless told otherwise: "noise", the noise z
    # of x_t = m(t) x_0 + s(t) z, or "score" (`models.preconditioning`).
    default_parameterization: str = "noise"
    # Whether the chain is a published training chain (DDPM's, SMLD's): discrete-time training
    # and ancestral sampling need one. The chain's class (`chains`):
    has_training_chain: bool = False
    chain_class: type = Chain

    @classmethod
    def from_config(cls, settings) -> "SDE":
        """Built from a config's `model` section: `num_scales` is N, the constructor's other
        parameters are read by name."""
        names = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "N")]
        return cls(N=settings["num_scales"], **{name: settings[name] for name in names if name in settings})

    def noise_labels(self, t: torch.Tensor, *, continuous: bool = True) -> torch.Tensor:
        """A network's conditioning input for time t ([B]): t * 999 in continuous time, the
        chain's label in discrete time."""
        return t * CONTINUOUS_LABEL_SCALE if continuous else self.chain.noise_labels(t)

    @property
    def chain(self) -> Chain:
        """The discrete chain of this process's N steps (built once)."""
        if getattr(self, "_chain", None) is None or self._chain.N != self.N:
            self._chain = self.chain_class(self, self.N)
        return self._chain

    def __init__(self, N: int):
        if int(N) < 1:
            raise ValueError(f"N must be a positive number of steps, got {N}")
        self.N = int(N)

    # -- scalar coefficients, functions of a [B] time tensor --------------------------------
    @abc.abstractmethod
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) with f(x, t) = f(t) x."""

    @abc.abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)."""

    @abc.abstractmethod
    def marginal_coefs(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(m(t), s(t)) with p_t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)."""

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(m(t)^2 / s(t)^2), decreasing in t: the time variable of DDIM and
        DPM-Solver (Lu et al. 2022, sec. 3.1)."""
        mean_coef, std = self.marginal_coefs(t)
        return 2 * (torch.log(mean_coef) - torch.log(std))

    @abc.abstractmethod
    def time_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The inverse of `log_snr`: the time t with lambda(t) = log_snr."""

    def noise_level(self, t) -> torch.Tensor:
        """sigma(t) / alpha(t) = exp(-lambda(t) / 2): the std of the noise on the data's scale."""
        t = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        return torch.exp(-0.5 * self.log_snr(t))

    def time_of_noise_level(self, level: float) -> float:
        """The time whose noise level sigma/alpha is `level`; 0 where the process never goes as
        low (VE's noise level never falls below sigma_min)."""
        log_snr = torch.tensor(-2.0 * math.log(level), dtype=torch.float64)
        return max(0.0, float(self.time_of_log_snr(log_snr)))

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that p_T is close to."""

    def sde(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) ([B, ...]) and diffusion g(t) ([B])."""
        t = _as_time(t, x)
        return append_dims(self.drift_coef(t), x.ndim) * x, self.diffusion(t)

    def marginal_prob(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean ([B, ...]) and std ([B]) of p_t(x_t | x_0 = x)."""
        mean_coef, std = self.marginal_coefs(_as_time(t, x))
        return append_dims(mean_coef, x.ndim) * x, std

    def prior_sampling(self, shape, generator: Optional[torch.Generator] = None,
                       dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return noise * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, in nats."""
        dim = z[0].numel()
        var = self.prior_std ** 2
        return -0.5 * dim * math.log(2 * math.pi * var) - batch_sum(z ** 2) / (2 * var)

    def with_steps(self, N: int) -> "SDE":
        """The same process with its chain respaced to N steps."""
        if int(N) == self.N:
            return self
        return type(self)(**{**self._init_kwargs(), "N": int(N)})

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)

    def _init_kwargs(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._init_kwargs().items())
        return f"{type(self).__name__}({args})"


class ReverseSDE:
    """The reverse-time SDE dx = [f - g^2 score] dt + g dw_bar (Song et al. 2021, eq. 6), or its
    probability-flow ODE dx = [f - g^2 score / 2] dt (eq. 13) when `probability_flow`."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N, self.T = forward.N, forward.T
        self._score_weight = 0.5 if probability_flow else 1.0

    def sde(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x)
        drift, g = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - append_dims(g ** 2, x.ndim) * score * self._score_weight
        return drift, torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x)
        f, G = self.forward.chain.discretize(x, t)
        f = f - append_dims(G ** 2, x.ndim) * self.score_fn(x, t) * self._score_weight
        return f, torch.zeros_like(G) if self.probability_flow else G


class _LinearBetaSDE(SDE):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t ** 2 * (self.beta_max - self.beta_min)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def time_of_alpha_bar(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Invert VP's exp(-int_0^t beta) = alpha_bar: the root of a quadratic in t."""
        a, b, c = 0.5 * (self.beta_max - self.beta_min), self.beta_min, torch.log(alpha_bar)
        if a == 0:
            return -c / b
        return (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)

    def _init_kwargs(self):
        return dict(beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)


@register_sde("vpsde")
class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE, dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (Song et al. 2021,
    eq. 11); its chain is DDPM's."""

    prior_std = 1.0
    has_training_chain = True
    chain_class = DDPMChain

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def marginal_coefs(self, t):
        # Song et al. 2021, eq. 29; expm1 keeps the std accurate for t near 0.
        log_mean = -0.5 * self.integrated_beta(t)
        return torch.exp(log_mean), torch.sqrt(-torch.expm1(2 * log_mean))

    def time_of_log_snr(self, log_snr):
        # alpha_bar / (1 - alpha_bar) = exp(lambda), so alpha_bar = sigmoid(lambda).
        return self.time_of_alpha_bar(torch.sigmoid(log_snr))

@register_sde("subvpsde")
class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 12): VP's drift, diffusion
    sqrt(beta(t) (1 - exp(-2 int_0^t beta))), whose marginal variances never exceed VP's."""

    prior_std = 1.0
    chain_class = EulerChain

    def diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t)))

    def marginal_coefs(self, t):
        # Song et al. 2021, eq. 30: mean exp(-B/2), std 1 - exp(-B) with B = int_0^t beta.
        integral = self.integrated_beta(t)
        return torch.exp(-0.5 * integral), -torch.expm1(-integral)

    def time_of_log_snr(self, log_snr):
        # With a = exp(-B/2), the root of r a^2 + a - r = 0 for r = exp(lambda / 2) = a / (1 - a^2),
        # written as 2r / (1 + sqrt(1 + 4 r^2)) to stay accurate when r is small or large.
        r = torch.exp(0.5 * log_snr)
        mean_coef = 2 * r / (1 + torch.sqrt(1 + 4 * r * r))
        return self.time_of_alpha_bar(mean_coef ** 2)

@register_sde("vesde")
class VESDE(SDE):
    """Variance exploding SDE dx = sqrt(d sigma(t)^2 / dt) dw with the geometric
    sigma(t) = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021, eq. 9); its chain is
    SMLD/NCSN's with geometric noise levels."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    default_parameterization = "score"
    has_training_chain = True
    chain_class = SMLDChain

    @property
    def prior_std(self):
        return self.sigma_max

    def noise_labels(self, t, *, continuous=True):
        """The marginal std sigma(t), continuous and discrete alike (sigma_i on chain step i)."""
        return self.marginal_coefs(t)[1]

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal_coefs(self, t):
        # The perturbation kernel has variance sigma(t)^2 - sigma(0)^2 strictly; like the
        # reference code we take sigma(t)^2 so that p_0 is the data smoothed by sigma_min.
        return torch.ones_like(t), self.sigma(t)

    def time_of_log_snr(self, log_snr):
        # sigma = exp(-lambda / 2) = sigma_min (sigma_max / sigma_min)^t.
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio

    def _init_kwargs(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
