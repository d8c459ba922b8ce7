"""Networks behind a registry, and the preconditioning that turns a network into its Denoiser."""
from .registry import ENTRY_POINT_GROUP, MODELS, get_model, get_model_class, model_names, register_model
from .preconditioning import denoiser_from_model
from . import ddpm, edm_unets, mlp, ncsnpp  # noqa: F401  (register "ddpm", "song_unet", "dhariwal_unet", "mlp", "ncsnpp")

__all__ = ["ENTRY_POINT_GROUP", "MODELS", "get_model", "get_model_class", "model_names",
           "register_model", "denoiser_from_model"]
