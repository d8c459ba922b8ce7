"""One optimization step of denoising score matching: the piece the trainer loop (`app.train`),
the training benchmarks and a user's own loop share.

`training_step` computes the loss on a batch, backpropagates (through a `torch.amp.GradScaler`
when fp16 loss scaling is on), clips the gradient norm, and takes the optimizer and EMA update
only when the loss and the gradient norm are finite, so a poisoned batch never reaches the
weights; what to do about a skipped step is the caller's choice.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .ema import EMA


class StepResult(NamedTuple):
    loss: torch.Tensor       # detached, averaged by `average`
    grad_norm: torch.Tensor  # of the unscaled gradients, before clipping
    applied: bool            # False: non-finite loss or gradient, the update was skipped


def _no_average(value: torch.Tensor) -> torch.Tensor:
    return value


def training_step(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  *, grad_clip: float = 1.0, ema: Optional[EMA] = None,
                  scaler: Optional[torch.amp.GradScaler] = None,
                  average: Callable[[torch.Tensor], torch.Tensor] = _no_average) -> StepResult:
    """One step: loss_fn() -> scalar loss of this batch (the network call inside); gradients of
    `model`'s parameters clipped to `grad_clip` (0: no clipping); `average` makes every process
    of a data-parallel run take the same decision (e.g. the mean loss over processes). One host
    sync per step: whether to update must be known before the update."""
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    scaling = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaling else loss).backward()
    if scaling:
        scaler.unscale_(optimizer)  # clip and check the true gradients, not fp16-scaled ones
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    loss = average(loss.detach())
    # Under fp16 loss scaling overflowing gradients are routine (the scaler skips those steps and
    # lowers the scale), so there only the loss decides.
    applied = bool(torch.isfinite(loss if scaling else loss + grad_norm))
    if applied:
        if scaling:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model)
    return StepResult(loss, grad_norm, applied)
