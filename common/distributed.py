"""Distributed (DDP) helpers for ``multi_gpu_train.json``: works under ``torchrun`` on GPUs (NCCL) and on
CPUs (gloo, chosen automatically when no GPU is present), single node or several."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "init",
    "device",
    "rank",
    "world_size",
    "samples_per_rank",
    "is_rank0",
    "wrap_ddp",
    "rank0_handlers",
    "cleanup",
]

# handlers that write files or print per-epoch summaries: only rank 0 keeps them
_RANK0_ONLY = ("CheckpointSaver", "TensorBoardStatsHandler", "StatsHandler", "ProgressBar", "SegmentationReport")


def init(backend: str = "auto") -> bool:
    """Initialise the default process group from torchrun's environment (idempotent).

    ``backend="auto"`` picks NCCL when CUDA is available, else gloo. Returns True.
    """
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json must run under torchrun, e.g.\n"
            "    torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run "
            "--config_file \"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    return True


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` with GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def samples_per_rank(total: int | None) -> int | None:
    """Share of ``total`` samples per epoch for each process (rounded up, so the ranks together draw at least
    ``total``); ``None`` (one pass over the dataset) stays ``None``."""
    return None if total is None else -(-int(total) // world_size())


def is_rank0() -> bool:
    return rank() == 0


def wrap_ddp(
    module: torch.nn.Module, dev: torch.device | None = None, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """Move ``module`` to this process's device and wrap it in ``DistributedDataParallel``.

    ``find_unused_parameters``: needed by networks with parameters their forward never uses (MT-UNet's
    official architecture has one unused Linear per mixed transformer module).
    """
    dev = dev or device()
    module = module.to(dev)
    ids = [dev] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def rank0_handlers(handlers: list | None) -> list:
    """Drop the file-writing and logging handlers on ranks other than 0."""
    handlers = list(handlers or [])
    if is_rank0():
        return handlers
    return [h for h in handlers if type(h).__name__ not in _RANK0_ONLY]


def cleanup() -> bool:
    """Wait for every rank, then tear the process group down (a rank leaving early can abort its peers)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    return True
