"""Multi-process training with torchrun: process group, rank-local batches, reductions.

`torchrun --nproc_per_node K -m itop train ...` sets WORLD_SIZE/RANK/LOCAL_RANK; we join the
process group (NCCL on CUDA, gloo on the CPU). Every rank holds the same small dataset and draws
the same global batch of K*B examples from the same generator; rank r trains on its slice r, so a
K-process run sees exactly the examples of a 1-process run with batch K*B, the last partial batch
of an epoch included (`RankSlice`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checkpoint import RunError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that prints and writes files."""
        return self.rank == 0


def init_distributed(device_choice: str) -> World:
    """Join the torchrun process group if there is one (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_choice != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def broadcast_value(value, world: World):
    """Rank 0's `value` (any picklable object) on every rank."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], world: World, device) -> list[float]:
    """Element-wise sum over ranks of a few numbers (epoch statistics)."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


class RankSlice:
    """Yield rank r's slice of every global batch of a loader (batches of size K*B).

    The last, partial global batch of n < K*B examples is split as evenly as it goes, and
    `loss_weight` (K * local / n, read after each batch) scales the rank's mean loss so that the
    average DistributedDataParallel takes is the mean over all n: the same gradient as one process
    with batch K*B. Only when some rank would get fewer than two examples (batch norm cannot train
    on one) is that batch dropped; `dropped_last` says whether it is.
    """

    def __init__(self, loader, world: World):
        self.loader, self.world = loader, world
        self.loss_weight = 1.0
        left = len(loader.labels) % loader.batch_size if hasattr(loader, "labels") else 0
        self.dropped_last = 0 < left < 2 * world.size

    def __len__(self) -> int:
        return len(self.loader) - int(self.dropped_last)

    def __iter__(self):
        for x, y in self.loader:
            n, size = len(y), self.world.size
            if n < 2 * size and n < self.loader.batch_size:
                continue
            part = slice(self.world.rank * n // size, (self.world.rank + 1) * n // size)
            self.loss_weight = size * (part.stop - part.start) / n
            yield x[part], y[part]


def pick_device(cfg, world: World) -> torch.device:
    """The device this process trains on: `cfg.device` ("auto": its LOCAL_RANK's GPU where CUDA
    is available, else the CPU), or a one-line RunError for a choice that cannot work."""
    if cfg.device == "auto":
        return torch.device(f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is not None and world.size > 1:
        raise RunError(
            f"--device {cfg.device} would put every process on one GPU; under torchrun pass --device cuda "
            "(each process takes the GPU of its LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{world.local_rank}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(
            f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA device(s); pick one of cuda:0..cuda:{torch.cuda.device_count() - 1}."
        )
    return device
