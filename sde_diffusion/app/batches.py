"""What a training step draws: the next batch of the data order, augmented and scaled into the
model's space, with its class labels (each dropped to "no label" with probability
`training.cond_drop_prob`), or for reflow a batch of the teacher's (noise, sample) pairs,
which are in the model's space already and are not augmented (a flip would break the pair);
under torchrun this process's rows of the global batch."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..files.image_scaling import random_flip, to_model_space, uniform_dequantize
from ..training import distributed
from ..training.guidance import drop_labels
from ..training.speed import to_memory_format
from .plan import Plan


def prepare_batch(x: torch.Tensor, plan: Plan, generator: torch.Generator) -> torch.Tensor:
    """Augment and scale a batch of raw data into the model's space."""
    config = plan.config
    if not plan.data.images:
        return x
    if config.data.random_flip:
        x = random_flip(x, generator)
    if config.data.uniform_dequantization:
        x = uniform_dequantize(x, generator)
    return to_model_space(x, config.data.centered)


def next_batch(run, num_classes: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(x, class labels or None, paired noise or None) of the trainer's `run` (`train._Run`)."""
    training = run.config.training
    indices = next(run.stream)
    x = run.train_set.batch(indices).to(run.device)
    paired = getattr(run.train_set, "noise", None)  # reflow's pairs (`reflow_pairs.PairedData`)
    noise = None if paired is None else paired[indices].to(run.device)
    if noise is None:
        x = prepare_batch(x, run.plan, run.generator)
    class_labels = None
    if num_classes:
        class_labels = drop_labels(run.train_set.labels[indices].to(run.device), training.cond_drop_prob,
                                   null_label=num_classes, generator=run.generator)
    if distributed.world_size() > 1:
        x = distributed.shard_rows(x)
        class_labels = None if class_labels is None else distributed.shard_rows(class_labels)
        noise = None if noise is None else distributed.shard_rows(noise)
    if noise is not None:
        noise = to_memory_format(noise, training.channels_last)
    return to_memory_format(x, training.channels_last), class_labels, noise
