"""Small tensor helpers shared across the package."""
from __future__ import annotations

from typing import Callable, Dict, Optional, TypeVar, Union

import torch

T = TypeVar("T")

Seed = Union[int, torch.Generator, None]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to a per-sample tensor `v` ([B]) so it broadcasts
    against a batch with `ndim` dims ([B, ...]). The one place shapes are broadcast."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the batch dim: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def block_rows(x: torch.Tensor, index: int, count: int) -> torch.Tensor:
    """Block `index` of `count` equal contiguous blocks of x's rows (a process's share of a
    global batch; the row count divisible by `count`)."""
    size = x.shape[0] // count
    return x[index * size:(index + 1) * size]


def make_generator(seed: Seed, device: Union[str, torch.device] = "cpu") -> Optional[torch.Generator]:
    """Turn an int seed into a generator on `device`; pass a generator or None through."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def randn(shape, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise with `like`'s dtype and device, drawn from `generator`."""
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


class Registry(Dict[str, T]):
    """A name -> object mapping filled by a decorator; unknown names list the known ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            return obj

        return decorator

    def get_or_raise(self, name: str) -> T:
        if name not in self:
            known = ", ".join(sorted(self))
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")
        return self[name]
