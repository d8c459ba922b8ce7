"""Denoising score-matching losses. Each takes the model as a `Denoiser` (a network behind its
preconditioning) or a score function score_fn(x, t) (an exact oracle) and a batch of data, and
returns a scalar.
With `class_labels` [B] (class-conditional training) the model is called with them: the same
losses then fit the conditional predictions.
With `shard` the batch is one process's block of a global batch (see `_own_rows`).

For x_t = alpha(t) x_0 + sigma(t) z, the error of every quantity a network can predict (the
score, the noise, v, the flow's velocity, x_0) is a multiple of the denoiser's, D(x_t, t) - x_0,
so each continuous loss here is a weighting lambda(t) of ||D - x_0||^2 (`_denoising_error`) under
its own draw of times: dsm's lambda = SNR (its noise error; Vincent 2011, Song et al. 2021), v's,
x_0's, flow matching's and EDM's their own. The chain losses (`ddpm_loss`, `smld_loss`) keep
their published forms on the chain's noise levels.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Optional, Tuple, Union

import torch

from ..processes.denoiser import Denoiser, as_denoiser
from ..processes.sdes import SDE, VESDE, VPSDE, ScoreFn
from ..utils import Registry, append_dims, batch_sum, block_rows, randn

Model = Union[Denoiser, ScoreFn]  # a Denoiser, or a score function score_fn(x, t)

# The continuous-time objectives `training.loss` names: loss(model, sde, x, *, generator,
# class_labels, shard, **options); its other keyword options are read from config.training by
# name (`loss_options`), so a registered loss declares its settings by its signature.
LOSSES: Registry = Registry("loss")
register_loss = LOSSES.register
CALL_ARGUMENTS = ("generator", "class_labels", "shard", "step", "noise")  # given per step, not from the config


def loss_options(name: str) -> list:
    """The keyword options of loss `name` (its keyword-only arguments but the per-step ones)."""
    parameters = inspect.signature(LOSSES.get_or_raise(name)).parameters.values()
    return [p.name for p in parameters if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in CALL_ARGUMENTS]


def loss_takes(name: str, argument: str) -> bool:
    """Whether loss `name` takes the per-step `argument`: "step" (the training step, for a loss
    with a schedule over training: ECT) or "noise" (the noise paired with each sample: reflow)."""
    return argument in inspect.signature(LOSSES.get_or_raise(name)).parameters


def _score(model: Model, sde: SDE, x_t: torch.Tensor, t: torch.Tensor,
           class_labels: Optional[torch.Tensor]) -> torch.Tensor:
    return as_denoiser(model, sde).score(x_t, t, class_labels)


def _reduce(squares: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """Per-sample sum (or mean, with `reduce_mean`) over all dims but the batch."""
    per_sample = batch_sum(squares)
    return per_sample / squares[0].numel() if reduce_mean else per_sample


def _global_rows(x: torch.Tensor, shard: Optional[Tuple[int, int]]) -> int:
    return x.shape[0] * (shard[1] if shard else 1)


def _own_rows(values: torch.Tensor, shard: Optional[Tuple[int, int]]) -> torch.Tensor:
    """This shard's rows of times or noise drawn for the whole global batch.

    `shard` = (index, count): x is block `index` of `count` equal blocks of a global batch (one
    per process, `distributed.shard_rows`). Every process draws the global batch's times and
    noise from the same generator and keeps its block, so the processes together use exactly the
    draws of a one-process run, and their generators stay in step."""
    return values if shard is None else block_rows(values, *shard)


def _times(sde: SDE, x: torch.Tensor, eps: float, generator: Optional[torch.Generator],
           shard: Optional[Tuple[int, int]], time_sampling: str = "uniform") -> torch.Tensor:
    """t in (eps, T) for this shard's rows: uniform, or with "logit_normal" t = sigmoid(n),
    n ~ N(0, 1) (Esser et al. 2024, eq. 19, m = 0, s = 1) mapped into the same interval."""
    rows = _global_rows(x, shard)
    if time_sampling == "uniform":
        u = torch.rand(rows, generator=generator, dtype=x.dtype, device=x.device)
    elif time_sampling == "logit_normal":
        u = torch.sigmoid(torch.randn(rows, generator=generator, dtype=x.dtype, device=x.device))
    else:
        raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
    return _own_rows(u, shard) * (sde.T - eps) + eps


def _times_and_noise(sde: SDE, x: torch.Tensor, eps: float, generator: Optional[torch.Generator],
                     shard: Optional[Tuple[int, int]], time_sampling: str = "uniform") -> Tuple[torch.Tensor, torch.Tensor]:
    """t in (eps, T) (`_times`) and z ~ N(0, I) for this shard's rows, drawn in that order."""
    t = _times(sde, x, eps, generator, shard, time_sampling)
    return t, _own_rows(randn((_global_rows(x, shard),) + x.shape[1:], generator, x), shard)


def _min_snr_weight(sde: SDE, t: torch.Tensor, gamma: float, target: str) -> torch.Tensor:
    """Hang et al. 2023's Min-SNR-gamma weight (eq. 10 ff.) of a `target` error: min(SNR, gamma)
    / SNR for the noise, / (SNR + 1) for v, and min(SNR, gamma) itself for x_0."""
    snr = torch.exp(sde.log_snr(t))
    clamped = torch.clamp(snr, max=gamma)
    return {"noise": clamped / snr, "v": clamped / (snr + 1), "data": clamped}[target]


def _denoising_error(model: Model, sde: SDE, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                     class_labels: Optional[torch.Tensor], reduce_mean: bool) -> torch.Tensor:
    """||D(x_t, t) - x_0||^2 per sample, x_t = alpha x_0 + sigma z: what every continuous loss
    here weights by its own lambda(t) (each target's error is an affine function of D's)."""
    alpha, sigma = (append_dims(c, x.ndim) for c in sde.marginal_coefs(t))
    denoised = as_denoiser(model, sde)(alpha * x + sigma * z, t, class_labels)
    return _reduce((denoised - x) ** 2, reduce_mean)


@register_loss("dsm")
def dsm_loss(model: Model, sde: SDE, x: torch.Tensor, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, min_snr_gamma: float = 0.0, eps: float = 1e-5,
             generator: Optional[torch.Generator] = None,
             class_labels: Optional[torch.Tensor] = None,
             shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7), t ~ U(eps, T).

    Weighting lambda(t) = s(t)^2 by default, which makes each term || s score + z ||^2 / 2;
    `likelihood_weighting` uses lambda(t) = g(t)^2, for which the loss bounds the negative
    log-likelihood (Song et al. 2021b, "Maximum likelihood training", Theorem 1).
    `min_snr_gamma` > 0 weights each term by min(SNR, gamma) / SNR (Hang et al. 2023, Min-SNR-gamma,
    eq. 10): the default term is the noise prediction's error, and on a path with alpha^2 + sigma^2
    = 1 their x_0 and v weights min(SNR, gamma) and min(SNR, gamma) / (SNR + 1) are this same weight
    of it, so one option serves every parameterization.
    """
    if min_snr_gamma > 0 and likelihood_weighting:
        raise ValueError("min_snr_gamma and likelihood_weighting are two weightings: choose one")
    t, z = _times_and_noise(sde, x, eps, generator, shard)
    alpha, sigma = sde.marginal_coefs(t)
    snr = (alpha / sigma) ** 2  # the noise error is sqrt(SNR) times the x_0 error
    if likelihood_weighting:  # g^2 ||score error||^2, the score error alpha / sigma^2 times x_0's
        weight = sde.diffusion(t) ** 2 * snr / sigma ** 2
    elif min_snr_gamma > 0:
        weight = _min_snr_weight(sde, t, min_snr_gamma, "noise") * snr
    else:
        weight = snr
    return (0.5 * weight * _denoising_error(model, sde, x, t, z, class_labels, reduce_mean)).mean()


def prediction_loss(model: Model, sde: SDE, x: torch.Tensor, *, target: str = "v",
                    reduce_mean: bool = False, min_snr_gamma: float = 0.0, eps: float = 1e-5,
                    generator: Optional[torch.Generator] = None,
                    class_labels: Optional[torch.Tensor] = None,
                    shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The error of the predicted `target`, "v" (v = alpha eps - sigma x_0, Salimans & Ho 2022,
    eq. 2 ff.) or "data" (x_0), t ~ U(eps, T), as implied by the score (`models.parameterization`).
    On VP the v error is the noise error times 1 + 1/SNR and the x_0 error is it times 1/SNR, so
    this is dsm_loss with those weights. `min_snr_gamma` > 0 multiplies each term by Hang et al.
    2023's weight for the target (eq. 10 ff.): min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma)
    for x_0; on VP both give dsm_loss's Min-SNR-gamma objective."""
    if target not in ("v", "data"):
        raise ValueError(f"target must be 'v' or 'data', got {target!r}")
    t, z = _times_and_noise(sde, x, eps, generator, shard)
    alpha, sigma = sde.marginal_coefs(t)
    # v's error is -(alpha^2 + sigma^2) / sigma times x_0's; x_0's is itself
    weight = ((alpha ** 2 + sigma ** 2) / sigma) ** 2 if target == "v" else torch.ones_like(t)
    if min_snr_gamma > 0:
        weight = weight * _min_snr_weight(sde, t, min_snr_gamma, target)
    return (0.5 * weight * _denoising_error(model, sde, x, t, z, class_labels, reduce_mean)).mean()


def ddpm_loss(model: Model, sde: VPSDE, x: torch.Tensor, *, reduce_mean: bool = True,
              generator: Optional[torch.Generator] = None,
              class_labels: Optional[torch.Tensor] = None,
              shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """DDPM's simple loss || eps - eps_pred ||^2 (Ho et al. 2020, eq. 14) on the VP chain:
    step i ~ U{0..N-1}, x_i = sqrt(alpha_bar_i) x + sqrt(1 - alpha_bar_i) z, scored at the time of
    the same noise level, sde.chain.time(i), where chain samplers evaluate it; with eps_pred = -sqrt(1 - alpha_bar_i) score the residual is
    sqrt(1 - alpha_bar_i) score + z."""
    if not isinstance(sde, VPSDE):
        raise ValueError(f"the DDPM loss needs a VP SDE's chain, got {type(sde).__name__}")
    rows = _global_rows(x, shard)
    index = _own_rows(torch.randint(0, sde.N, (rows,), generator=generator, device=x.device), shard)
    alpha_bar = sde.chain.alpha_bar.to(device=x.device, dtype=x.dtype)[index]
    std = torch.sqrt(1 - alpha_bar)
    z = _own_rows(randn((rows,) + x.shape[1:], generator, x), shard)
    x_t = append_dims(torch.sqrt(alpha_bar), x.ndim) * x + append_dims(std, x.ndim) * z
    t = sde.chain.time(index).to(x.dtype)
    residual = _score(model, sde, x_t, t, class_labels) * append_dims(std, x.ndim) + z
    return _reduce(residual ** 2, reduce_mean).mean()


def smld_loss(model: Model, sde: VESDE, x: torch.Tensor, *, reduce_mean: bool = False,
              generator: Optional[torch.Generator] = None,
              class_labels: Optional[torch.Tensor] = None,
              shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """SMLD/NCSN's loss (Song & Ermon 2019, eq. 6) on the VE chain's noise levels: level i ~
    U{0..N-1}, x_i = x + sigma_i z, weighted by sigma_i^2 so the term is || sigma_i score + z ||^2 / 2;
    scored at the level's time sde.chain.time(i) = i T / (N - 1)."""
    if not isinstance(sde, VESDE):
        raise ValueError(f"the SMLD loss needs a VE SDE's noise levels, got {type(sde).__name__}")
    rows = _global_rows(x, shard)
    index = _own_rows(torch.randint(0, sde.N, (rows,), generator=generator, device=x.device), shard)
    sigma = sde.chain.sigmas.to(device=x.device, dtype=x.dtype)[index]
    z = _own_rows(randn((rows,) + x.shape[1:], generator, x), shard)
    x_t = x + append_dims(sigma, x.ndim) * z
    t = sde.chain.time(index).to(x.dtype)
    residual = _score(model, sde, x_t, t, class_labels) * append_dims(sigma, x.ndim) + z
    return (0.5 * _reduce(residual ** 2, reduce_mean)).mean()


@register_loss("edm")
def edm_loss(model: Model, sde: SDE, x: torch.Tensor, *, p_mean: float = -1.2, p_std: float = 1.2,
             sigma_data: float = 0.5, reduce_mean: bool = False, eps: float = 1e-5,
             generator: Optional[torch.Generator] = None, class_labels: Optional[torch.Tensor] = None,
             shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """EDM's training objective (Karras et al. 2022, eq. 2, table 1): noise levels with
    ln sigma ~ N(p_mean, p_std^2), the denoiser error ||D(x_t) - x_0||^2 weighted by
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2. On any process: sigma is the
    noise level s / alpha of the time whose log-SNR is -2 ln sigma (kept within [eps, T]), and
    D is the model's denoiser (x_0 in the unscaled variables)."""
    rows = _global_rows(x, shard)
    normal = _own_rows(randn((rows,), generator, x), shard)
    level = torch.exp(p_mean + p_std * normal)
    t = sde.time_of_log_snr(-2 * torch.log(level)).clamp(eps, sde.T)
    z = _own_rows(randn((rows,) + x.shape[1:], generator, x), shard)
    alpha, std = sde.marginal_coefs(t)
    sigma = std / alpha
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (0.5 * weight * _denoising_error(model, sde, x, t, z, class_labels, reduce_mean)).mean()


@register_loss("flow_matching")
def flow_matching_loss(model: Model, sde: SDE, x: torch.Tensor, *, reduce_mean: bool = False,
                       time_sampling: str = "uniform", eps: float = 1e-5,
                       generator: Optional[torch.Generator] = None,
                       class_labels: Optional[torch.Tensor] = None,
                       shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Conditional flow matching (Lipman et al. 2023, eq. 9; Liu et al. 2023): t ~ U(eps, T), the
    path's velocity u = alpha' x_0 + sigma' z as target of the velocity the score implies
    (`models.parameterization`); for rectified flow u = z - x_0. `time_sampling` "logit_normal"
    puts the training at mid-path instead of uniformly (`_times_and_noise`)."""
    from ..models.parameterization import path_coefs

    t, z = _times_and_noise(sde, x, eps, generator, shard, time_sampling)
    c = path_coefs(sde, t, t)  # [B] each
    # u's error is alpha' (D - x_0) + sigma' (eps_hat - eps) = (alpha' - sigma' alpha / sigma) (D - x_0)
    weight = (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2
    return (0.5 * weight * _denoising_error(model, sde, x, t, z, class_labels, reduce_mean)).mean()


register_loss("v")(partial(prediction_loss, target="v"))
register_loss("data")(partial(prediction_loss, target="data"))
