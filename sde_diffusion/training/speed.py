"""Speed options for the training step: mixed precision, channels_last and torch.compile.

All three change how the network's forward and backward run, never what is stored: the trainer
keeps the plain float32 `model` for its state dict, EMA and checkpoints, and runs the loss through
`training_network(model, ...)`, a view that shares the model's parameters. So a run can switch
the options on or off between resumes, and a checkpoint never carries `_orig_mod.` keys.

- precision "bf16" / "fp16": the network's forward runs under `torch.autocast` (matmuls and
  convolutions in half precision, reductions and normalisations kept in float32 by autocast's
  op lists) and its output is cast back to float32, so the loss, the score's division by the
  noise std and the optimizer stay in float32. fp16's narrow exponent needs loss scaling
  (`grad_scaler`); bf16 has float32's range and needs none.
- channels_last: NHWC memory layout for 4-D image batches and convolution weights, the layout
  cuDNN's and oneDNN's fastest convolution kernels use.
- compile: `torch.compile` of the network (the first steps pay the compilation).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger(__name__)


def cpu_runs_bf16_on_amx(cpuinfo: Optional[str] = None, environ=os.environ) -> Optional[bool]:
    """Whether oneDNN can run bf16 convolutions on AMX tiles here: the CPU lists `amx_bf16` and
    ONEDNN_MAX_CPU_ISA (if set) does not stop below AMX. None where /proc/cpuinfo is unreadable.
    Without AMX, oneDNN's AVX-512 BF16 convolutions are slower than its fp32 ones (docs/benchmarks.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    limit = environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return "amx_bf16" in flags and (limit == "ALL" or "AMX" in limit)


class AutocastNetwork(nn.Module):
    """`network` under autocast to `dtype`, with a float32 output."""

    def __init__(self, network: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.network, self.dtype, self.device_type = network, dtype, device_type

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = self.network(x, labels, *args, **kwargs)
        return output.to(x.dtype)


def check_precision(precision: str) -> Optional[torch.dtype]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def training_network(model: nn.Module, device: torch.device, *, precision: str = "fp32",
                     channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The module the training loss calls: `model` itself, or compiled / autocast views of it
    sharing its parameters. channels_last converts `model`'s 4-D weights in place (a layout
    change only: values and state-dict keys are unchanged)."""
    dtype = check_precision(precision)
    if precision == "bf16" and torch.device(device).type == "cpu" and cpu_runs_bf16_on_amx() is False:
        log.warning("training.precision=bf16 on a CPU without AMX: its bf16 convolutions are slower than fp32 "
                    "(0.73x on the DDPM U-Net, docs/benchmarks.md); fp32 is faster here")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compile else model
    if dtype is not None:
        network = AutocastNetwork(network, dtype, torch.device(device).type)
    return network


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D image batch in NHWC layout when channels_last is on; anything else unchanged."""
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 (disabled, a pass-through, otherwise)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
