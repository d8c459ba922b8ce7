"""Samplers behind one entry point, `sample(model, sde, shape, method=..., steps=...)`."""
from .registry import SAMPLER_TRAITS, SAMPLERS, SamplerTraits, StepHook, register_sampler
from .schedules import SCHEDULES, get_timesteps, register_schedule
from .spec import SamplerSpec, parse_spec, sample, sampler_option_names, schedule_option_names, with_settings
from .pc import CORRECTORS, PREDICTORS, AffineStep, pc_sampler, register_corrector, register_predictor
from . import sde_solver  # noqa: F401  (registers "sde_solver")
from .few_step import ddim_sampler, dpm_solver_pp_sampler, heun_sampler
from .ode import decode, encode, ode_sampler, probability_flow_drift, solve_probability_flow
from .adaptive import adaptive_sde_sampler
from .consistency import consistency_sampler

__all__ = [
    "SAMPLERS", "SAMPLER_TRAITS", "SamplerTraits", "SamplerSpec", "PREDICTORS", "CORRECTORS", "AffineStep",
    "StepHook", "sample", "parse_spec", "with_settings", "sampler_option_names", "schedule_option_names",
    "register_sampler", "register_predictor", "register_corrector",
    "SCHEDULES", "get_timesteps", "register_schedule", "pc_sampler", "ode_sampler", "encode", "decode",
    "consistency_sampler",
    "probability_flow_drift", "ddim_sampler", "dpm_solver_pp_sampler", "heun_sampler",
    "solve_probability_flow", "adaptive_sde_sampler",
]
