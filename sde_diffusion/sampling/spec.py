"""One description of a sampler call, and the one entry point that runs it.

`SamplerSpec` says everything a sampler call needs besides the score, the SDE and the shape: the
sampler (`method`), the grid (`steps`, `schedule`, `schedule_options`, `eps`) and the sampler's
own options. Unset grid fields (None) take the sampler's declared defaults (`SamplerTraits`);
`resolved()` fills them in and checks every option against the sampler and the schedule, so a
setting that does not apply is an error, never silently dropped. A spec is written as a string
"method key=value ..." (`parse_spec`, used by studies and configs) or built from keywords.

`sample(model, sde, shape, method, steps, ...)` is the entry point of every sampler; the model is
a `denoiser.Denoiser` (a network behind its preconditioning) or a score function (an exact oracle).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch

from ..processes.denoiser import CountedDenoiser, Denoiser, as_denoiser
from ..processes.sdes import SDE, ScoreFn
from ..utils import Seed, make_generator
from .registry import HOOK_ARGUMENT, SAMPLER_TRAITS, SAMPLERS, SamplerTraits, StepHook, takes_step_hook
from .schedules import SCHEDULES, get_timesteps

Model = Union[Denoiser, ScoreFn]  # what sampling takes: a Denoiser, or a score function score_fn(x, t)
GRID_FIELDS = ("steps", "schedule", "eps", "end_noise_level")  # spec keys that set the grid, not a sampler option


def _keyword_options(function) -> list:
    return [name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind == inspect.Parameter.KEYWORD_ONLY and name != HOOK_ARGUMENT]


def schedule_option_names(schedule: str) -> list:
    """The options a schedule takes (e.g. karras: rho; logsnr: power)."""
    parameters = inspect.signature(SCHEDULES.get_or_raise(schedule)).parameters
    return [name for name in parameters if name not in ("sde", "steps", "eps", "device")]


def grid_text(schedule: str, schedule_options: dict) -> str:
    """'logsnr power=0.5': a grid as tables, file summaries and the registry's table name it."""
    return "".join([schedule, *(f" {name}={value:g}" for name, value in schedule_options.items())])


class SamplerOptionError(ValueError):
    """An option a sampler does not take, or a value it cannot take; `option` names it."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def sampler_option_names(method: str) -> list:
    """The sampler's own options (its keyword-only arguments)."""
    return _keyword_options(SAMPLERS.get_or_raise(method))


@dataclass
class SamplerSpec:
    """A sampler call: `method` with `options`, on the grid (`steps`, `schedule`,
    `schedule_options`, and its end: `eps`, a time of the process, or `end_noise_level`, the
    noise level sigma/alpha there); None = the sampler's default (steps: the SDE's N)."""
    method: str
    steps: Optional[int] = None
    schedule: Optional[str] = None
    schedule_options: dict = field(default_factory=dict)
    eps: Optional[float] = None
    end_noise_level: Optional[float] = None
    options: dict = field(default_factory=dict)
    text: str = ""  # as the user wrote it, for tables
    family: Optional[str] = None  # the model family whose declared options `for_family` filled in
    conditioned: bool = False  # and whether those for a conditioned run (they take precedence)
    declared: tuple = ()  # the names of the options filled in (the others in `options` the call set)
    grid_declared: bool = False  # the schedule was filled in (the family's or the sampler's), not set by the call

    def __post_init__(self):
        if not self.text:
            self.text = self.method

    @property
    def traits(self) -> SamplerTraits:
        SAMPLERS.get_or_raise(self.method)
        return SAMPLER_TRAITS.get(self.method, SamplerTraits())

    def resolved(self, option_names: Optional[Sequence[str]] = None, sde: Optional[SDE] = None) -> "SamplerSpec":
        """This spec with the sampler's defaults filled in; ValueError for an option that the
        sampler (or `option_names`, for a caller that runs the sampler its own way) or the
        schedule does not take. A named schedule comes with its own option defaults (karras:
        rho = 7, logsnr: power = 1), not with the sampler's default ones; a spec that names no
        schedule and sets no schedule option runs on the grid declared for its `family`
        (`SamplerTraits.grid_for`). An unset eps becomes
        the time of the sampler's declared end noise level on `sde`; without `sde` it stays
        unset until the grid is built."""
        traits = self.traits
        if self.eps is not None and self.end_noise_level is not None:
            raise ValueError("set the grid's end by eps (a time) or by end_noise_level (sigma/alpha), not both")
        if self.end_noise_level is not None and not self.end_noise_level > 0:
            raise ValueError(f"end_noise_level must be positive, got {self.end_noise_level}")
        grid_declared = self.names_no_grid()
        if grid_declared:
            schedule, schedule_options = traits.grid_for(self.family, self.options)
        else:
            schedule = self.schedule or traits.schedule
            defaults = dict(traits.schedule_options) if self.schedule is None else {}
            schedule_options = {**defaults, **self.schedule_options}
        known = schedule_option_names(schedule)
        for name in schedule_options:
            if name not in known:
                raise ValueError(f"schedule {schedule!r} has no option {name!r}"
                                 f"{' (it takes ' + ', '.join(known) + ')' if known else ' (it takes none)'}")
        known = list(option_names) if option_names is not None else sampler_option_names(self.method)
        for name, value in self.options.items():
            if name not in known:
                raise SamplerOptionError(name, f"sampler {self.method!r} has no option {name!r} (it takes {', '.join(known)})")
            choices = traits.option_choices.get(name)
            if choices is not None and value not in choices:
                allowed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}" if len(choices) > 1 else repr(choices[0])
                raise SamplerOptionError(name, f"sampler {self.method!r} takes {name} {allowed}, got {value!r}")
        return dataclasses.replace(self, schedule=schedule, schedule_options=schedule_options, grid_declared=grid_declared,
                                   eps=self.end(sde) if self.eps is not None or sde is not None else None,
                                   end_noise_level=self.end_noise_level if sde is None else None,
                                   options={name: self.options[name] for name in known if name in self.options})

    def names_no_grid(self) -> bool:
        """Whether the grid is left to the declarations: no schedule or schedule option set by
        the call (or filled in from them before)."""
        return self.grid_declared or (self.schedule is None and not self.schedule_options)

    def family_grid(self) -> Optional[Tuple[str, dict]]:
        """(schedule, options) of the grid declared for this spec's family where the call names
        none and it differs from the sampler's own grid; None otherwise."""
        grid = self.traits.grid_for(self.family, self.options)
        return grid if self.names_no_grid() and grid != self.traits.grid_for(None) else None

    def set_options(self) -> dict:
        """The options the call itself sets (not filled in from declarations)."""
        return {name: value for name, value in self.options.items() if name not in self.declared}

    def for_family(self, family: Optional[str], conditioned: Optional[bool] = None) -> "SamplerSpec":
        """This spec with the options and the grid its sampler declares for the model family
        `family` (`Denoiser.family`; `SamplerTraits.family_options`, `family_grids`) and for a
        run a step hook conditions (`conditioned`; None: as before), where the call sets none:
        what a call that names only a sampler and its steps runs with. Options and a grid filled
        in by an earlier call are declared again, so the last family and conditioning decide."""
        conditioned = self.conditioned if conditioned is None else conditioned
        own = self.set_options()
        merged = self.traits.with_declared(own, family, conditioned)
        options = {name: merged[name] for name in sampler_option_names(self.method) if name in merged}  # its order
        grid = {}
        if self.grid_declared:  # resolved already: the grid of the family now named
            schedule, schedule_options = self.traits.grid_for(family, options)
            grid = {"schedule": schedule, "schedule_options": schedule_options}
        return dataclasses.replace(self, options=options, family=family, conditioned=conditioned,
                                   declared=tuple(name for name in options if name not in own), **grid)

    def end(self, sde: Optional[SDE] = None) -> Optional[float]:
        """The grid's last time: eps as set (a time of the process), or where `sde` reaches the
        end noise level (as set, or the sampler's declared one); None for neither."""
        if self.eps is not None:
            return float(self.eps)
        return sde.time_of_noise_level(self.noise_level_at_end()) if sde is not None else None

    def noise_level_at_end(self) -> float:
        """The end noise level as set, else the sampler's declared one (of a spec without eps)."""
        return self.end_noise_level if self.end_noise_level is not None else self.traits.end_noise_level

    def end_text(self, sde: Optional[SDE] = None) -> str:
        """'eps=0.001' on `sde` or as set; without either, the declared end noise level."""
        end = self.end(sde)
        return f"eps={end:g}" if end is not None else f"sigma/alpha={self.noise_level_at_end():g}"

    @property
    def adaptive(self) -> bool:
        return self.traits.adaptive(self.options)

    @property
    def deterministic(self) -> bool:
        return self.traits.deterministic(self.options)

    def score_calls(self, steps: int) -> int:
        return self.traits.score_calls(steps, self.options)

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest grid whose score evaluations fit in `nfe`."""
        if self.score_calls(1) > nfe:
            raise ValueError(f"{self.text!r} cannot run with {nfe} score evaluations")
        low, high = 1, max(int(nfe), 1)  # score_calls grows with steps and is >= steps
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.score_calls(middle) <= nfe else (low, middle - 1)
        return low

    def _schedule_text(self) -> str:
        """'logsnr power=0.5' (of a resolved spec)."""
        return grid_text(self.schedule, self.schedule_options)

    def grid_summary(self, sde: Optional[SDE] = None) -> str:
        """'logsnr power=0.5, eps=0.001' (resolved on `sde`; without one and without eps, the
        declared end noise level: 'uniform, sigma/alpha=0.0105')."""
        spec = self.resolved(sde=sde)
        return f"{spec._schedule_text()}, {spec.end_text(sde)}"

    def summary(self, sde: Optional[SDE] = None) -> str:
        """'pc predictor=euler_maruyama, 100 steps on the uniform grid to eps=0.001' (resolved);
        an adaptive call picks its own steps: 'ode rtol=0.001, adaptive steps to eps=0.001'."""
        spec = self.resolved(sde=sde)
        options = "".join(f" {name}={value}" for name, value in spec.options.items())
        if spec.adaptive:
            return f"{spec.method}{options}, adaptive steps to {spec.end_text(sde)}"
        steps = f"{spec.steps} steps" if spec.steps is not None else "the SDE's N steps"
        return f"{spec.method}{options}, {steps} on the {spec._schedule_text()} grid to {spec.end_text(sde)}"

    def file_tag(self, sde: Optional[SDE] = None) -> str:
        """'dpm_solver++_order3_unipc_20steps': the method, the options the call sets (the named
        choices, and the numbers and switches that differ from the sampler's defaults), its grid
        (schedule and options, eps) where that differs from the sampler's default grid, and the
        step count (not for adaptive samplers): file names that keep different calls apart."""
        def tag(name, value):
            if isinstance(value, bool):
                return name if value else f"no{name}"
            return f"{name}{value:g}" if isinstance(value, (int, float)) else str(value)

        spec, default = self.resolved(sde=sde), SamplerSpec(self.method).resolved(sde=sde)
        defaults = {name: parameter.default
                    for name, parameter in inspect.signature(SAMPLERS[spec.method]).parameters.items()}
        parts = [spec.method] + [tag(name, value) for name, value in spec.options.items()
                                 if isinstance(value, str) or not (name in defaults and value == defaults[name])]
        if (spec.schedule, spec.schedule_options) != (default.schedule, default.schedule_options):
            parts += [spec.schedule] + [tag(name, value) for name, value in spec.schedule_options.items()]
        if spec.end(sde) != default.end(sde):
            parts.append(tag("eps", spec.end(sde)))
        if spec.steps is not None and not spec.adaptive:
            parts.append(f"{spec.steps}steps")
        return "_".join(parts)

    def grid(self, sde: SDE, device=None) -> torch.Tensor:
        """The decreasing times the sampler gets (`resolved` on `sde` first)."""
        spec = self.resolved(sde=sde)
        return get_timesteps(sde, spec.steps if spec.steps is not None else sde.N, spec.eps, spec.schedule,
                             device=device, **spec.schedule_options)


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str) -> SamplerSpec:
    """'dpm_solver++ order=3 schedule=logsnr power=0.5 eps=1e-4' -> SamplerSpec; the keys
    steps, schedule, eps and end_noise_level set the grid, the schedule's options (rho, power) go with it, every
    other key is a sampler option. ValueError when malformed or when an option does not apply."""
    words = text.split()
    if not words:
        raise ValueError("empty sampler spec")
    method, assignments = words[0], words[1:]
    if method not in SAMPLERS:
        raise ValueError(f"sampler spec {text!r}: unknown sampler {method!r}; known: {', '.join(sorted(SAMPLERS))}")
    spec = SamplerSpec(method=method, text=" ".join(words))
    values = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"sampler spec {text!r}: expected key=value, got {assignment!r}")
        values[key] = _parse_value(value)
    spec = with_settings(spec, values)
    try:
        spec.resolved()
    except ValueError as error:
        raise ValueError(f"sampler spec {text!r}: {error}") from None
    return spec


def with_settings(spec: SamplerSpec, values: dict) -> SamplerSpec:
    """`spec` with `values` (name -> value, None = unset) sorted into grid fields, schedule
    options (the names any schedule takes) and sampler options."""
    schedule_names = {name for schedule in SCHEDULES for name in schedule_option_names(schedule)}
    grid = {key: value for key, value in values.items() if key in GRID_FIELDS and value is not None}
    schedule_options = {**spec.schedule_options, **{key: value for key, value in values.items()
                                                    if key in schedule_names and value is not None}}
    options = {**spec.options, **{key: value for key, value in values.items()
                                  if key not in GRID_FIELDS and key not in schedule_names and value is not None}}
    return dataclasses.replace(spec, schedule_options=schedule_options, options=options, **grid)


def sample(model: Model, sde: SDE, shape: Sequence[int], method: Union[str, SamplerSpec] = "pc",
           steps: Optional[int] = None, generator: Seed = None, *, eps: Optional[float] = None,
           end_noise_level: Optional[float] = None,
           schedule: Optional[str] = None, schedule_options: Optional[dict] = None,
           z: Optional[torch.Tensor] = None, latents: Optional[torch.Tensor] = None,
           dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
           step_hook: Optional[StepHook] = None, timesteps: Optional[Sequence[float]] = None,
           noise_levels: Optional[Sequence[float]] = None, **options) -> Tuple[torch.Tensor, int]:
    """Draw samples of `shape` ([B, ...]) by `method` with `steps` steps; returns (x, nfe), x in
    the model's space (images in [-1, 1] for a centered model: `files.image_scaling.from_model_space`
    maps them to [0, 1]; no clamping).

    method: a sampler's name (then steps, eps, schedule, schedule_options and options describe
    the call) or a whole `SamplerSpec` (then those must be left unset). Unset grid arguments take
    the sampler's declared defaults, its best known setting, and unset options those it declares
    for the model's family (`Denoiser.family`; a spec already made for a family keeps its own). steps: grid size (default sde.N);
    eps: the last time of the grid (the reverse process stops at t = eps, where the score is
    still finite), or end_noise_level: the noise level sigma/alpha there; schedule: the grid's spacing (`schedules.SCHEDULES`), with
    `schedule_options` (karras: rho; logsnr: power); z: start from this x at T instead of a
    prior sample (decoding with `ode`); latents: start from these unit-variance latents, x at T
    = latents * sde.prior_std (what the prior draw is made of; EDM's `latents * t_steps[0]`, so
    EDM's `latents` go here as they are); generator: an int seed or a torch.Generator that makes
    the run reproducible; step_hook: a `registry.StepHook` the sampler calls along its steps
    (conditioning, progress), ValueError for a sampler that takes none; timesteps or noise_levels:
    your own grid instead of the spec's, decreasing times of `sde` (the first is where the prior
    draw is taken) or noise levels sigma/alpha (EDM's sigmas: on `edm` the same numbers); options:
    the sampler's own.
    """
    if isinstance(method, SamplerSpec):
        if (steps is not None or eps is not None or end_noise_level is not None or schedule is not None
                or schedule_options or options):
            raise ValueError("pass either a SamplerSpec or the call's settings, not both")
        spec = method
    else:
        spec = SamplerSpec(method=method, steps=steps, schedule=schedule, schedule_options=dict(schedule_options or {}),
                           eps=eps, end_noise_level=end_noise_level, options=options)
    spec = spec.resolved(sde=sde)
    if spec.family is None:  # a call not yet made for a model family: the model's
        spec = spec.for_family(getattr(model, "family", None))
    given = own_grid(sde, timesteps, noise_levels) if timesteps is not None or noise_levels is not None else None
    counted, x, grid, generator = start(model, sde, shape, spec, generator, z=z, latents=latents, dtype=dtype,
                                        device=device, grid=given)
    x = SAMPLERS[spec.method](counted, sde, x, grid, generator, **spec.options, **hook_keyword(spec, step_hook))
    return x, counted.calls


def own_grid(sde: SDE, timesteps=None, noise_levels=None, device=None) -> torch.Tensor:
    """A caller's grid as decreasing times of `sde` (float64 on `device`): `timesteps` as given or
    `noise_levels` (sigma/alpha) mapped to their times; ValueError unless it decreases within [0, T]."""
    if (timesteps is None) == (noise_levels is None):
        raise ValueError("give the grid as timesteps or as noise_levels, not both")
    if noise_levels is not None:
        timesteps = [sde.time_of_noise_level(float(level)) for level in noise_levels]
    grid = torch.as_tensor([float(t) for t in timesteps], dtype=torch.float64, device=device)
    if grid.ndim != 1 or len(grid) < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"a grid needs at least 2 strictly decreasing times, got {grid.tolist()}")
    if float(grid[-1]) < 0 or float(grid[0]) > sde.T * (1 + 1e-9):
        raise ValueError(f"the grid's times must lie in [0, {sde.T:g}] (the process's), got {grid[0]:g} to {grid[-1]:g}")
    return grid


def hook_keyword(spec: SamplerSpec, step_hook: Optional[StepHook]) -> dict:
    """{step_hook: ...} for the sampler call, {} without a hook; ValueError where the sampler
    picks its own steps inside a solver and so has none to hook."""
    if step_hook is None:
        return {}
    require_step_hook(spec.method)
    return {HOOK_ARGUMENT: step_hook}


def require_step_hook(method: str) -> None:
    """ValueError where sampler `method` picks its own steps inside a solver and so has none to hook."""
    if not takes_step_hook(method):
        hooked = ", ".join(name for name in SAMPLERS if takes_step_hook(name))
        raise ValueError(f"sampler {method!r} takes no step hook (it picks its own steps inside a solver); "
                         f"samplers that do: {hooked}")


def start(model: Model, sde: SDE, shape: Sequence[int], spec: SamplerSpec, generator: Seed = None, *,
          z: Optional[torch.Tensor] = None, latents: Optional[torch.Tensor] = None,
          dtype: torch.dtype = torch.float32, device: Union[str, torch.device, None] = None,
          grid: Optional[torch.Tensor] = None):
    """What every sampling run begins with: (the counted denoiser, x at the grid's start: a prior
    sample of `shape`, the latent `z` or the unit `latents` times the prior's std, the grid of
    `spec` or the caller's `grid` (`own_grid`), the generator made from `generator`). A caller's
    grid that starts below T starts from pure noise of the marginal's std there."""
    if z is not None and latents is not None:
        raise ValueError("pass x at T (z) or unit latents (latents), not both")
    given = z if z is not None else latents
    device = torch.device(device) if device is not None else (given.device if given is not None else torch.device("cpu"))
    generator = make_generator(generator, device)
    if given is None:
        x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
    elif z is not None:
        x = z.to(device=device, dtype=dtype)
    else:
        x = latents.to(device=device, dtype=dtype) * sde.prior_std
    if grid is None:
        grid = spec.grid(sde, device)
    else:
        grid = grid.to(device)
        if z is None and float(grid[0]) < sde.T * (1 - 1e-9):
            start_std = float(sde.marginal_prob(torch.zeros(1, dtype=torch.float64), grid[:1].cpu())[1])
            x = x * (start_std / sde.prior_std)
    return CountedDenoiser(as_denoiser(model, sde)), x, grid, generator
