"""The sampler registry: each sampler and, declared beside it, what the rest of the package needs
to know of it.

A sampler is a function `sampler(denoiser, sde, x, timesteps, generator, **options) -> x`
registered with `@register_sampler("name", ...)`, where `denoiser` is a `denoiser.Denoiser`
(its D(x, t), and the score derived from it, for the samplers that step with the score). It starts from `x` (a prior sample or a given
latent) at timesteps[0] and integrates the reverse process along the decreasing grid
`timesteps`. `sampling.spec.sample` draws the prior, builds the grid and counts the model's
evaluations, so a sampler cannot misreport its cost.

The registration also declares the sampler's traits (`SamplerTraits`): its default time grid
(schedule, schedule options, eps), whether it picks its own steps (adaptive), whether it is
deterministic for given options, and how many score evaluations a grid of `steps` costs. The
defaults are the sampler's best known setting, chosen by measurement (README, "Samplers").

A sampler that steps along its grid takes a keyword `step_hook` (a `StepHook`): conditioning
(inpainting's replacement, colorization), progress and trajectory capture act through it with
every such sampler, instead of being written into one of them. Samplers that pick their own
steps inside a solver (`ode`, `adaptive_sde`) have no steps to hook and do not take one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import inspect
from typing import Callable, Dict, Mapping, Optional, Protocol, Tuple

import torch

from ..processes.sdes import VPSDE
from ..utils import Registry

SAMPLERS: Registry = Registry("sampler")


def _never(options: Mapping) -> bool:
    return False


def _one_per_step(steps: int, options: Mapping) -> int:
    return steps


# The noise levels of VP (beta 0.1 to 20) at the times where the samplers' defaults were
# measured: t = 1e-3 (Song et al. 2021's end) and 5e-4 (dpm_solver++'s, `few_step`).
VP_END_NOISE_LEVEL = float(VPSDE().noise_level(1e-3))


@dataclass(frozen=True)
class SamplerTraits:
    """What a sampler declares where it is registered.

    schedule, schedule_options: the time grid it runs on when the caller names none;
    end_noise_level: where that grid ends, as a noise level sigma/alpha (the same resolution of
    the data on every process; a time would mean another noise level on each); by default VP's
    at t = 1e-3 (0.010486), the end Song et al. 2021 sample VP models to;
    adaptive(options): it picks its own times (only the grid's ends matter) and so runs once,
    whatever the step budget; deterministic(options): it maps a latent to one sample;
    score_calls(steps, options): the score evaluations a grid of `steps` times costs;
    conditioned_options: the options it runs with, unless the caller sets them, when a step hook
    conditions it (inpainting, colorization): its best known setting there;
    family_options: by model family (`Denoiser.family`: what a network trained here predicts,
    "noise", "v", ...; a published network's source), the options it runs with on that family
    unless the caller sets them: its best known setting there, where that differs from the
    oracle's;
    family_grids: by model family, the grid (schedule, its options) it runs on there unless the
    call names a schedule or sets a schedule option: its best known grid on that family's
    trained networks, where that differs from the oracle's;
    overridden_by: option -> the options whose being set (by the call, or by the conditioned
    options) keeps a declared value of it out (dpm_solver++'s unipc corrector is for eta = 0, so
    a declared eta does not apply with it, nor a declared corrector with an eta);
    "schedule" -> those that keep a family's declared grid out;
    option_choices: the values an option may take, where only some can work (dpm_solver++'s
    order: 1, 2, 3), so that a call is refused when it is described, before anything runs."""
    schedule: str = "uniform"
    schedule_options: Mapping[str, float] = field(default_factory=dict)
    end_noise_level: float = VP_END_NOISE_LEVEL
    adaptive: Callable[[Mapping], bool] = _never
    deterministic: Callable[[Mapping], bool] = _never
    score_calls: Callable[[int, Mapping], int] = _one_per_step
    conditioned_options: Mapping[str, float] = field(default_factory=dict)
    family_options: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    family_grids: Mapping[str, Tuple[str, Mapping[str, float]]] = field(default_factory=dict)
    overridden_by: Mapping[str, tuple] = field(default_factory=dict)
    option_choices: Mapping[str, tuple] = field(default_factory=dict)

    def grid_for(self, family: Optional[str], options: Optional[Mapping] = None) -> Tuple[str, dict]:
        """(schedule, schedule options) declared for the model family `family` (`family_grids`;
        kept out where `options` sets one named in overridden_by["schedule"]), else the
        sampler's own default grid."""
        kept_out = any((options or {}).get(other) for other in self.overridden_by.get("schedule", ()))
        declared = family in self.family_grids and not kept_out
        schedule, grid_options = self.family_grids[family] if declared else (self.schedule, self.schedule_options)
        return schedule, dict(grid_options)

    def with_declared(self, options: Mapping, family: Optional[str] = None, conditioned: bool = False) -> dict:
        """`options` (what a call sets) with the declared ones it leaves unset: those for the
        model family `family`, then, for a conditioned run, the conditioned ones."""
        conditioned_declared = self.conditioned_options if conditioned else {}
        declared = {**self.family_options.get(family, {}), **conditioned_declared}
        # A conditioned run's options override the family's as the call's do (its eta keeps
        # a family's unipc corrector out, which is for eta = 0).
        setting = {**conditioned_declared, **options}
        kept = {name: value for name, value in declared.items()
                if not any(setting.get(other) for other in self.overridden_by.get(name, ()))}
        return {**kept, **options}


SAMPLER_TRAITS: Dict[str, SamplerTraits] = {}

HOOK_ARGUMENT = "step_hook"  # the keyword a sampler takes its StepHook by; not a sampler option


class StepHook(Protocol):
    """Called by a sampler at its start and after each step but the last (whose result the
    caller receives): `hook(x, t, denoised) -> x'` with x the state at time t ([B]), denoised
    the data prediction E[x_0 | x_t] the step was computed from (None at the start and where
    a step has none, as in PC's score steps); it returns the x to go on from (or None: x
    unchanged). The k-diffusion callback and diffusers' step callbacks, with write access."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 denoised: Optional[torch.Tensor]) -> Optional[torch.Tensor]: ...


def takes_step_hook(method: str) -> bool:
    """Whether the sampler `method` takes a `StepHook` (declared by its `step_hook` keyword)."""
    return HOOK_ARGUMENT in inspect.signature(SAMPLERS.get_or_raise(method)).parameters


def run_hook(hook: Optional[StepHook], x: torch.Tensor, t, denoised: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x after `hook` (x itself without a hook, or when the hook returns None); t a float, a
    0-d or a [B] tensor, handed to the hook as [B]."""
    if hook is None:
        return x
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    replaced = hook(x, t, denoised)
    return x if replaced is None else replaced


def register_sampler(name: str, **traits) -> Callable:
    """Decorator: register `sampler` as `name` with its `SamplerTraits` (keywords)."""
    declared = SamplerTraits(**traits)

    def decorator(sampler: Callable) -> Callable:
        SAMPLERS.register(name)(sampler)
        SAMPLER_TRAITS[name] = declared
        return sampler
    return decorator
