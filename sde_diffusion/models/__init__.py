"""Score networks behind a registry, and the wrapper that turns a network into score_fn(x, t)."""
from .registry import ENTRY_POINT_GROUP, MODELS, get_model, get_model_class, model_names, register_model
from .score import score_fn_from_model
from . import ddpm, mlp, ncsnpp  # noqa: F401  (register "ddpm", "mlp", "ncsnpp")

__all__ = ["ENTRY_POINT_GROUP", "MODELS", "get_model", "get_model_class", "model_names",
           "register_model", "score_fn_from_model"]
