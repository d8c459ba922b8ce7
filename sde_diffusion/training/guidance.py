"""Classifier-free guidance (Ho & Salimans 2022): one network, trained with its class label
dropped now and then, gives both the conditional score s(x, t, y) and the unconditional one
s(x, t, null); sampling follows

    (1 + w) s(x, t, y) - w s(x, t, null)                  (Ho & Salimans 2022, eq. 6)

whose t = 0 limit is the score of p(x | y) p(y | x)^w. The guided model is only a new
`Denoiser`, so every sampler (PC, ODE, DDIM, Heun, DPM-Solver++) runs it unchanged.

Also the pieces around it: dropping labels during training and reading `sampling.labels`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from ..processes.denoiser import Denoiser
from ..models.preconditioning import denoiser_from_model
from ..processes.sdes import SDE, ScoreFn


def guided_score(cond_score: torch.Tensor, uncond_score: torch.Tensor,
                 guidance_scale: float) -> torch.Tensor:
    """(1 + w) s_cond - w s_uncond; w = 0 is the conditional score itself."""
    return (1 + guidance_scale) * cond_score - guidance_scale * uncond_score


def oracle_guided_score_fn(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn,
                           guidance_scale: float) -> ScoreFn:
    """The guided score from two separate score functions (exact oracles, or two networks)."""
    if guidance_scale == 0:
        return cond_score_fn

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_score(cond_score_fn(x, t), uncond_score_fn(x, t), guidance_scale)
    return score_fn


def guided_model_denoiser(model: nn.Module, sde: SDE, class_labels: torch.Tensor, guidance_scale: float, *,
                          continuous: bool = True, parameterization: Optional[str] = None) -> Denoiser:
    """The Denoiser of a class-conditional `model` (with `num_classes`; index num_classes is "no
    label") guided towards `class_labels` [B] with scale w = `guidance_scale` >= 0 (`guide`)."""
    num_classes = getattr(model, "num_classes", 0)
    if num_classes < 1:
        raise ValueError("guidance needs a class-conditional network (model.num_classes > 0)")
    labelled = denoiser_from_model(model, sde, continuous=continuous, parameterization=parameterization)
    return guide(labelled, num_classes, class_labels, guidance_scale)


def guide(labelled: Denoiser, num_classes: int, class_labels: torch.Tensor, guidance_scale: float) -> Denoiser:
    """`labelled` (called with class labels, `num_classes` meaning "no label") guided towards
    `class_labels` [B] with scale w = `guidance_scale` >= 0. The rule (1 + w) cond - w uncond has
    weights summing to one, and D, the noise and the score are affine in one another at fixed
    x, so guiding the denoiser's native prediction is guiding each of them.

    The conditional and unconditional predictions come from ONE call on the batch stacked with
    itself, labelled [class_labels, null]: half the calls of two passes, the same arithmetic. At
    w = 0 the unconditional half is not computed at all."""
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    class_labels = torch.as_tensor(class_labels, dtype=torch.long)
    if class_labels.ndim != 1 or (class_labels < 0).any() or (class_labels >= num_classes).any():
        raise ValueError(f"class_labels must be a 1-D tensor of labels in 0..{num_classes - 1}")
    stacked_labels = torch.cat([class_labels, torch.full_like(class_labels, num_classes)])

    def wrap(native):
        if guidance_scale == 0:
            return lambda x, t: native(x, t, class_labels.to(x.device))

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond, uncond = native(torch.cat([x, x]), torch.cat([t, t]), stacked_labels.to(x.device)).chunk(2)
            return guided_score(cond, uncond, guidance_scale)
        return guided
    return labelled.map(wrap)


def drop_labels(class_labels: torch.Tensor, drop_prob: float, null_label: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each label replaced by `null_label` with probability `drop_prob` (the training side of
    classifier-free guidance). Draws from `generator` only when drop_prob > 0."""
    if drop_prob <= 0:
        return class_labels
    drop = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < drop_prob
    return torch.where(drop, torch.full_like(class_labels, null_label), class_labels)


def parse_labels(text: str, num_classes: int, names: Optional[Sequence[str]] = None) -> List[int]:
    """`sampling.labels`: "3", "0,1,2", class names where the classes have them ("cats,dogs",
    `names[i]` being class i), or "" / "all" for every class 0..num_classes-1. Raises ValueError
    on anything else or on a label outside 0..num_classes-1."""
    text = str(text).strip()
    if text in ("", "all"):
        return list(range(num_classes))
    labels = []
    for part in _label_parts(text):
        if _is_index(part):
            labels.append(int(part))
        elif names and part in names:
            labels.append(list(names).index(part))
        elif names:
            raise ValueError(f"unknown class {part!r}: the classes are {', '.join(names)} (or their indices)")
        else:
            raise ValueError(f"must be '', 'all' or comma-separated class indices like '0,1,2' (names need the "
                             f"classes' names: a folder read with data.labels_from=subfolders), got {text!r}")
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ValueError(f"labels {bad} outside 0..{num_classes - 1} (the model's classes)")
    return labels


def names_in_labels(text: str) -> list:
    """The parts of `sampling.labels` that are class names rather than indices."""
    text = str(text).strip()
    return [] if text in ("", "all") else [part for part in _label_parts(text) if not _is_index(part)]


def _label_parts(text: str) -> list:
    return [part.strip() for part in str(text).split(",")]


def _is_index(part: str) -> bool:
    return part.lstrip("-").isdigit()


def labels_for_samples(labels: List[int], num_samples: int) -> torch.Tensor:
    """[num_samples] labels: the first ceil(num_samples / len(labels)) samples get labels[0], the
    next as many labels[1], ..., so that a grid with that many columns has one row per label."""
    per_label = -(-num_samples // len(labels))
    return torch.as_tensor(labels, dtype=torch.long).repeat_interleave(per_label)[:num_samples]


def guided_for_labels(labelled: Denoiser, num_classes: int, guidance_scale: float) -> Callable[[torch.Tensor], Denoiser]:
    """class_labels -> guide(labelled, num_classes, class_labels, guidance_scale): the form
    `modes.draw_samples` takes, since each batch has its own labels."""
    return lambda class_labels: guide(labelled, num_classes, class_labels, guidance_scale)
