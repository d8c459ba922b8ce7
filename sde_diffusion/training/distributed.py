"""Several processes on one job, started by torchrun: the process group, rank checks, sharding.

`torchrun --nproc_per_node=N main.py ...` starts N copies of main.py with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `setup` joins them into one process
group (NCCL between GPUs, each rank on cuda:LOCAL_RANK; gloo on the CPU); without those variables
it does nothing and every helper below answers as the only process of a one-process job, so the
code paths of a plain `python main.py` run are unchanged.

How the work is divided:
- training: every rank draws the same global batch from the same seeded stream and keeps its
  contiguous shard (`shard_rows`); DistributedDataParallel averages the ranks' gradients.
- sampling and likelihoods: each rank takes its share of the samples or images
  (`share_of`) with its own seed (`rank_seed`), and the results are gathered to rank 0 once at
  the end (`gather_to_main`). No collective runs inside a score evaluation or a solver: adaptive
  solvers take different numbers of steps on different ranks, and a collective there would wait
  forever for a rank that has already finished.
- files: rank 0 alone writes (`is_main`).
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import sys
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

from ..data.datasets import derive_seed
from ..utils import block_rows

# Rank 0 alone draws snapshot samples and writes checkpoints while the others wait at their next
# collective, which can take longer than the default 10 minutes of NCCL on a large model.
TIMEOUT = datetime.timedelta(hours=1)


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device_type: str) -> None:
    """Join the process group that torchrun's environment describes (no-op without one)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave_after_success() -> None:
    """End a torchrun rank whose work is done, written and agreed on (all ranks passed the last
    barrier and left the group), without torch's native finalizers: under load the gloo runtime
    has aborted a finished rank at interpreter exit ("terminate called without an active
    exception", torch 2.14, once in CI), which torchrun reports as a failed run. Without torchrun
    it does nothing and the interpreter exits as usual."""
    if not launched_by_torchrun():
        return
    gc.collect()  # the DDP wrapper's and the group's objects die here, not in the exit's teardown
    teardown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a bare "cuda" under torchrun: each process its own GPU."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (a copy; the tensor itself when alone)."""
    if not active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world_size()


def check_batch_divides(batch_size: int) -> None:
    if batch_size % world_size():
        raise ValueError(f"training.batch_size {batch_size} is the global batch and must divide evenly over the "
                         f"{world_size()} processes (WORLD_SIZE)")


def shard_rows(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous block of the rows of a global batch (divisible by the world size)."""
    return block_rows(x, rank(), world_size())


def share_of(total: int) -> Tuple[int, int]:
    """(start, count) of this rank's part of `total` items; the first `total % world` ranks take
    one more, so the parts in rank order are contiguous and cover every item once."""
    base, extra = divmod(total, world_size())
    start = rank() * base + min(rank(), extra)
    return start, base + (1 if rank() < extra else 0)


def rank_seed(seed: int) -> int:
    """The seed itself on rank 0 (so a one-process run is unchanged), a derived one elsewhere."""
    return seed if rank() == 0 else derive_seed(seed, "rank", rank())


def gather_to_main(value: Any) -> Optional[List[Any]]:
    """[value of rank 0, value of rank 1, ...] on rank 0, None on the others ([value] alone)."""
    if not active():
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def check_same_on_all(value: Any, what: str) -> None:
    """Raise unless every rank holds an equal `value` (e.g. the step it resumes from)."""
    if not active():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(other != values[0] for other in values):
        raise RuntimeError(f"the processes disagree on {what}: {values}")


def data_parallel(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`network` under DistributedDataParallel when there are several processes, else itself.
    DDP broadcasts rank 0's parameters and buffers at construction and averages gradients over
    the ranks in backward."""
    if not active() or world_size() == 1:
        return network
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
