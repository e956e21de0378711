"""Process-group setup for `torchrun` (DDP) with a single-process fallback.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them we run as one process. NCCL on CUDA,
gloo on CPU (which is how the multi-process tests run on machines without a GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import OptionError
from .options import default_num_workers  # noqa: F401  (its home before options.py held it)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def device_type(requested: str = "auto") -> str:
    """'cuda' or 'cpu' for --device auto|cuda|cpu; asking for CUDA where torch sees none is a user error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda, but torch sees no CUDA device (a CPU-only torch build, or no GPU "
                          "visible); use --device cpu or auto")
    return requested


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA when present (one GPU per local rank), else CPU; `requested` may force either."""
    kind = device_type(requested)
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(kind)


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo | None) -> list[float]:
    """Sum over processes, on the process's own device (NCCL cannot reduce CPU tensors)."""
    if info is None or not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    return all_reduce_sum([value], info)[0] / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def train_loader(dataset, batch_size: int, num_workers: int, seed: int, info: DistInfo):
    """The training loader of every engine: DistributedSampler seeded by epoch (also for one process, so
    the data order is the same whatever the world size), full batches only, as the official code."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=info.device.type == "cuda", drop_last=True)
    if len(loader) == 0:
        raise OptionError(f"{len(dataset)} training images cannot fill one batch of {batch_size} x "
                          f"{info.world_size} process(es); lower --batch-size to at most "
                          f"{len(dataset) // info.world_size}, or add images")
    return sampler, loader
