"""Gaussian mixtures with exact perturbed scores: sampler studies with the model error removed.

Under any SDE of `sde_diffusion.processes.sdes` the transition kernel is N(m(t) x_0, s(t)^2 I), so the
perturbed marginal of a mixture of N(mu_k, diag(v_k)) is again a mixture, of
N(m(t) mu_k, diag(m(t)^2 v_k + s(t)^2)), with the same weights. Its score is exact.

Read as a labelled data set whose classes are the components, the mixture also gives the exact
class-conditional score (component y alone, perturbed: a Gaussian) and the exact Bayes
classifier (`responsibilities`), the oracles of classifier-free guidance.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .sdes import SDE


class GaussianMixture:
    """sum_k w_k N(mu_k, diag(std_k^2)) in D dimensions.

    weights: [K] (normalized here); means: [K, D]; stds: [K] (isotropic) or [K, D] (diagonal).
    Points may be given with any trailing shape whose size is D (e.g. images), as [B, ...].
    """

    def __init__(self, weights, means, stds, dtype: torch.dtype = torch.float64):
        weights = torch.as_tensor(weights, dtype=dtype)
        means = torch.as_tensor(means, dtype=dtype)
        stds = torch.as_tensor(stds, dtype=dtype)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        K, D = means.shape
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        if stds.ndim == 1:
            stds = stds[:, None].expand(K, D)
        if stds.shape != (K, D) or (stds <= 0).any():
            raise ValueError(f"stds must be positive, of shape [{K}] or [{K}, {D}]")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds.contiguous()
        self.num_components, self.dim = K, D
        self.isotropic = bool((self.stds == self.stds[:, :1]).all())

    def to(self, dtype=None, device=None) -> "GaussianMixture":
        """A copy with parameters in `dtype` on `device` (for GPU or float32 studies)."""
        mixture = GaussianMixture.__new__(GaussianMixture)
        mixture.__dict__.update(self.__dict__)
        for name in ("weights", "means", "stds"):
            setattr(mixture, name, getattr(self, name).to(dtype=dtype, device=device))
        return mixture

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               return_components: bool = False):
        """n samples [n, D] (and their component indices when `return_components`)."""
        device = self.means.device
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim), generator=generator, dtype=self.means.dtype, device=device)
        x = self.means[components] + self.stds[components] * noise
        return (x, components) if return_components else x

    # -- densities of the mixture perturbed to time t (t=None: the mixture itself) ----------
    # Computed in the mixture's dtype (float64 by default) whatever the dtype of x, so that a
    # float32 sampler study measures the sampler and not the oracle's rounding. Isotropic
    # components take a matrix-product path that never forms [B, K, D] tensors.
    def _coefs(self, x, sde: Optional[SDE], t):
        batch, dtype, device = x.shape[0], self.means.dtype, self.means.device
        if sde is None:
            ones = torch.ones(batch, dtype=dtype, device=device)
            return ones, torch.zeros_like(ones)
        t = torch.as_tensor(t, dtype=dtype, device=device).expand(batch)
        return sde.marginal_coefs(t)

    def _log_probs_and_precisions(self, flat, mean_coef, std):
        """log w_k + log N(x; m mu_k, var) per component ([B, K]) and 1 / var, whose shape
        is [B, K] for isotropic components and [B, K, D] otherwise."""
        m, s2 = mean_coef[:, None], std[:, None] ** 2
        if self.isotropic:
            variances = m ** 2 * self.stds[None, :, 0] ** 2 + s2  # [B, K]
            squared_distances = ((flat ** 2).sum(1, keepdim=True) - 2 * m * (flat @ self.means.T)
                                 + m ** 2 * (self.means ** 2).sum(1)).clamp_min(0)
            quadratic = squared_distances / variances
            log_det = self.dim * torch.log(variances)
        else:
            variances = m[:, :, None] ** 2 * self.stds ** 2 + s2[:, :, None]  # [B, K, D]
            quadratic = ((flat[:, None, :] - m[:, :, None] * self.means) ** 2 / variances).sum(-1)
            log_det = torch.log(variances).sum(-1)
        log_probs = torch.log(self.weights) - 0.5 * (quadratic + log_det + self.dim * math.log(2 * math.pi))
        return log_probs, 1.0 / variances

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.dim).to(self.means.dtype)

    def log_prob(self, x: torch.Tensor, sde: Optional[SDE] = None, t=None) -> torch.Tensor:
        """log p(x) per sample, or log p_t(x) of the mixture perturbed by `sde` to time t."""
        log_probs, _ = self._log_probs_and_precisions(self._flat(x), *self._coefs(x, sde, t))
        return torch.logsumexp(log_probs, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sde: Optional[SDE] = None, t=None) -> torch.Tensor:
        """Posterior probabilities of the components given x, [B, K]: the Bayes classifier."""
        log_probs, _ = self._log_probs_and_precisions(self._flat(x), *self._coefs(x, sde, t))
        return torch.softmax(log_probs, dim=1)

    def score(self, x: torch.Tensor, sde: Optional[SDE] = None, t=None) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) (m mu_k - x) / var_k, same shape and dtype as x."""
        flat = self._flat(x)
        mean_coef, std = self._coefs(x, sde, t)
        log_probs, precisions = self._log_probs_and_precisions(flat, mean_coef, std)
        resp = torch.softmax(log_probs, dim=1)
        if self.isotropic:
            weighted = resp * precisions  # [B, K]
            score = mean_coef[:, None] * (weighted @ self.means) - weighted.sum(1, keepdim=True) * flat
        else:
            weighted = resp[:, :, None] * precisions  # [B, K, D]
            score = (weighted * (mean_coef[:, None, None] * self.means - flat[:, None, :])).sum(1)
        return score.reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score(x, t) of p_t under `sde`, for any sampler or the likelihood."""
        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score(x, sde, t)
        return score

    # -- the components as classes -------------------------------------------------------------
    def class_score(self, x: torch.Tensor, class_labels: torch.Tensor, sde: Optional[SDE] = None,
                    t=None) -> torch.Tensor:
        """grad_x log p_t(x | y) for component y = class_labels[b] of each sample: p_t(x | y) =
        N(m(t) mu_y, diag(m(t)^2 std_y^2 + s(t)^2)), so the score is (m mu_y - x) / var_y."""
        flat = self._flat(x)
        mean_coef, std = self._coefs(x, sde, t)
        labels = torch.as_tensor(class_labels, device=self.means.device).long()
        m = mean_coef[:, None]
        variances = m ** 2 * self.stds[labels] ** 2 + std[:, None] ** 2
        score = (m * self.means[labels] - flat) / variances
        return score.reshape(x.shape).to(x.dtype)

    def class_score_fn(self, sde: SDE, class_labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact conditional score(x, t) of p_t(x | y), y = class_labels [B] (or one label)."""
        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            labels = torch.as_tensor(class_labels).expand(x.shape[0])
            return self.class_score(x, labels, sde, t)
        return score

    def guided_log_density(self, x: torch.Tensor, label: int, guidance_scale: float) -> torch.Tensor:
        """log p(x | y) + w log p(y | x), unnormalised: the density classifier-free guidance with
        scale w aims at (Ho & Salimans 2022, sec. 3.2), at t = 0."""
        log_probs, _ = self._log_probs_and_precisions(self._flat(x), *self._coefs(x, None, None))
        log_joint = log_probs[:, label]                       # log w_y + log N_y(x)
        log_posterior = log_joint - torch.logsumexp(log_probs, dim=1)
        return log_joint - torch.log(self.weights[label]) + guidance_scale * log_posterior

    # -- how far samples are from the mixture ----------------------------------------------
    def component_statistics(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights [K], means [K, D] and stds [K, D] of samples x, each sample shared among the
        components by its exact posterior probability (a hard assignment when they are apart)."""
        flat = self._flat(x)
        resp = self.responsibilities(flat)
        mass = resp.sum(0).clamp_min(1e-12)
        means = resp.T @ flat / mass[:, None]
        variances = (resp.T @ flat ** 2) / mass[:, None] - means ** 2
        return mass / flat.shape[0], means, variances.clamp_min(0).sqrt()

    def sample_errors(self, x: torch.Tensor) -> dict:
        """Errors of samples x against the mixture, as tests and benchmarks report them:
        - weight: largest |estimated - true| component weight;
        - mean: largest (over components) RMS over dims of the mean error in units of the std;
        - std: largest (over components) |mean over dims of estimated / true std - 1|;
        - logp_gap: E_x[log p] - E_p[log p], the mean log-density of the samples minus the
          mixture's own (its negative entropy, by Monte Carlo): > 0 when samples are too
          concentrated, < 0 when spread out or off the components."""
        weights, means, stds = self.component_statistics(x)
        flat = self._flat(x)
        return {
            "weight": (weights - self.weights).abs().max().item(),
            "mean": (((means - self.means) / self.stds) ** 2).mean(1).sqrt().max().item(),
            "std": ((stds / self.stds).mean(1) - 1).abs().max().item(),
            "logp_gap": self.log_prob(flat).mean().item() - self.mean_log_prob(),
        }

    def mean_log_prob(self, n: int = 200_000) -> float:
        """E_p[log p] by Monte Carlo with a fixed seed, computed once."""
        if getattr(self, "_mean_log_prob", None) is None:
            generator = torch.Generator(device=self.means.device).manual_seed(0)
            self._mean_log_prob = self.log_prob(self.sample(n, generator=generator)).mean().item()
        return self._mean_log_prob
