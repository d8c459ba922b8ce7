"""The denoiser D(x, t) = E[x_0 | x_t = x]: the one interface between what predicts (a network
behind its preconditioning, an exact oracle) and what uses the prediction (samplers, the
likelihood, guidance, conditioning).

Under a process with x_t = alpha(t) x_0 + sigma(t) eps, Tweedie's formula ties the denoiser to
the score (Efron 2011; Karras et al. 2022, eq. 3 in scaled variables):

    score(x, t) = (alpha D(x, t) - x) / sigma^2,     eps(x, t) = (x - alpha D(x, t)) / sigma,

so one of D or the score determines everything else. A `Denoiser` holds the one its source gives
natively (a network: D; an exact mixture oracle: the score) and derives the others here, the
only place these conversions are written. The noise level is the process's sigma(t) / alpha(t)
at time t; D takes the time, which the process maps to that level, because samplers walk time
grids.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .sdes import SDE, ScoreFn
from ..utils import append_dims

# f(x, t, class_labels=None) -> tensor like x; t a [B] tensor in x's dtype.
Prediction = Callable[..., torch.Tensor]


class Denoiser:
    """D(x, t[, class_labels]) under `sde`, with the score and the noise derived from it.

    Made from a native denoiser (`Denoiser(sde, denoise=...)`, what networks give) or a native
    score (`Denoiser.from_score`, what exact oracles give); the other quantity is derived by
    Tweedie's formula, so neither a network nor an oracle pays a round trip. t: a float, a 0-d
    or a [B] tensor. class_labels [B] are passed on to the source only when given.

    family: the model family samplers declare settings for (`sampling.registry.SamplerTraits.
    family_options`): for a network trained here, what it predicts (its row of
    `models.preconditioning`'s table: "noise", "v", ...); for a published network, where it comes
    from ("edm", "diffusers", "score_sde"), which is sampled as its authors sample it; None for an
    exact oracle."""

    def __init__(self, sde: SDE, denoise: Optional[Prediction] = None, *, score: Optional[Prediction] = None,
                 family: Optional[str] = None):
        if (denoise is None) == (score is None):
            raise ValueError("a Denoiser needs exactly one of denoise and score")
        self.sde, self._denoise, self._score, self.family = sde, denoise, score, family

    @classmethod
    def from_score(cls, score_fn: ScoreFn, sde: SDE) -> "Denoiser":
        return cls(sde, score=score_fn)

    def _coefs(self, x: torch.Tensor, t: torch.Tensor):
        alpha, sigma = self.sde.marginal_coefs(t.to(torch.float64))
        return append_dims(alpha.to(x.dtype), x.ndim), append_dims(sigma.to(x.dtype), x.ndim)

    @staticmethod
    def _call(function: Prediction, x, t, class_labels):
        return function(x, t) if class_labels is None else function(x, t, class_labels)

    def __call__(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """E[x_0 | x_t = x]."""
        t = time_batch(t, x)
        if self._denoise is not None:
            return self._call(self._denoise, x, t, class_labels)
        alpha, sigma = self._coefs(x, t)
        return (x + sigma ** 2 * self._call(self._score, x, t, class_labels)) / alpha

    def score(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """grad log p_t(x)."""
        t = time_batch(t, x)
        if self._score is not None:
            return self._call(self._score, x, t, class_labels)
        alpha, sigma = self._coefs(x, t)
        return (alpha * self._call(self._denoise, x, t, class_labels) - x) / sigma ** 2

    def noise(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """E[eps | x_t = x]."""
        t = time_batch(t, x)
        alpha, sigma = self._coefs(x, t)
        if self._score is not None:
            return -sigma * self._call(self._score, x, t, class_labels)
        return (x - alpha * self._call(self._denoise, x, t, class_labels)) / sigma

    def map(self, wrap: Callable[[Prediction], Prediction]) -> "Denoiser":
        """The same kind of Denoiser with its native function replaced by wrap(native): counting,
        guidance and changes of variables act on whatever the source computes."""
        if self._denoise is not None:
            return Denoiser(self.sde, wrap(self._denoise), family=self.family)
        return Denoiser(self.sde, score=wrap(self._score), family=self.family)


def time_batch(t, x: torch.Tensor) -> torch.Tensor:
    """t (a float, a 0-d or a [B] tensor) as a [B] tensor in x's dtype and device."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def as_denoiser(source: Union[Denoiser, ScoreFn], sde: SDE) -> Denoiser:
    """A Denoiser as it is; any other callable is taken as a score function score_fn(x, t)."""
    return source if isinstance(source, Denoiser) else Denoiser.from_score(source, sde)


class CountedDenoiser(Denoiser):
    """A Denoiser that counts the (batched) calls of its source: the number of function
    evaluations (NFE) every sampler reports, whichever quantity it asks for."""

    def __init__(self, denoiser: Denoiser):
        self.calls = 0

        def counting(function: Prediction) -> Prediction:
            def counted(*args):
                self.calls += 1
                return function(*args)
            return counted
        inner = denoiser.map(counting)
        super().__init__(inner.sde, inner._denoise, score=inner._score, family=inner.family)
