"""Distributed (DDP) helpers for ``multi_gpu_train.json``: works under ``torchrun`` on GPUs (NCCL) and on
CPUs (gloo, chosen automatically when no GPU is present), single node or several.

Data: each rank loads, caches and trains on its own shard of the case list (:func:`sharded`, as MONAI's multi-GPU
tutorials partition the data list), so N ranks hold the data set once between them, not N times. Training shards
are padded to one length by repeating cases, as ``DistributedSampler`` does, so every rank runs the same number of
iterations. Validation shards are contiguous and never padded: every validation case is scored exactly once,
whatever the number of ranks (more ranks than cases included: a rank without a case takes part in the gathering
with a placeholder, :func:`with_placeholder`), and :class:`MeanDice` gathers the per-case scores in rank order,
i.e. in the order of the list, before MONAI's reduction: the mean Dice of a single process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from monai.handlers import MeanDice as _MonaiMeanDice

__all__ = [
    "init",
    "device",
    "rank",
    "world_size",
    "shard",
    "sharded",
    "samples_per_rank",
    "gather_objects",
    "any_rank",
    "is_rank0",
    "wrap_ddp",
    "rank0_handlers",
    "MeanDice",
    "SyncBuffers",
    "PLACEHOLDER",
    "with_placeholder",
    "skip_placeholder",
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


def shard(items: Sequence, pad: bool = True) -> list:
    """This rank's share of ``items``.

    ``pad=True`` (training): every rank gets ``ceil(n / world)`` items, the list padded by repeating its first items
    and dealt out in turn (``DistributedSampler``'s partition), so all ranks run the same number of iterations.
    ``pad=False`` (validation): contiguous blocks, the first ``n % world`` ranks one item more, none repeated; a rank
    may get none. Outside ``torchrun`` (one process) every item.
    """
    items, world, r = list(items), world_size(), rank()
    if world == 1:
        return items
    if not pad:
        size, extra = divmod(len(items), world)
        start = r * size + min(r, extra)
        return items[start : start + size + (1 if r < extra else 0)]
    if not items:
        return []
    total = math.ceil(len(items) / world) * world
    padded = (items * math.ceil(total / len(items)))[:total]
    return padded[r:total:world]


def sharded(dataset: str | type, data: Sequence, pad: bool = True, **kwargs):
    """``dataset(data=shard(data, pad), **kwargs)``: a dataset (``monai.data.CacheDataset``,
    ``common.slicewise.SliceDataset``, named by its import path in a config) that loads and caches only this rank's
    share of ``data``. ``multi_gpu_train.json`` sets it as ``train#dataset#_target_`` and ``validate#dataset#_target_``,
    leaving ``#data`` to whoever sets it (the bundle's datalist, MONAI Label's). The dataset keeps the length of the
    whole list as ``total_cases`` (:func:`with_placeholder`)."""
    if isinstance(dataset, str):
        from pydoc import locate

        name, dataset = dataset, locate(dataset)
        if dataset is None:
            raise ImportError(f"cannot import the dataset class {name!r}")
    data = list(data)
    out = dataset(data=shard(data, pad), **kwargs)
    out.total_cases = len(data)
    return out


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` outside ``torchrun``): ``all_gather_object``, for small
    values (per-case scores, counts) of any type and length."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_flag_group())
    return out


def samples_per_rank(total: int | None, local: int | None = None) -> int | None:
    """Draws per epoch for each process: ``total`` shared out (rounded up, so the ranks together draw at least
    ``total``). ``total=None`` is one pass over the data: with ``local`` (this rank's sample count) the ranks' counts
    summed and shared out, the same number on every rank; without it ``None``."""
    if total is None:
        if local is None:
            return None
        total = sum(gather_objects(int(local)))
    return -(-int(total) // world_size())


_FLAG_GROUP = None


def _flag_group():
    """A gloo group over all ranks for the small CPU collectives here (the default group where it is gloo): over
    NCCL each would go through the GPU, and deciding a stop would make every rank wait for its GPU work each
    iteration. Created at the first such collective, which every rank reaches at the same point."""
    global _FLAG_GROUP
    if _FLAG_GROUP is None:
        _FLAG_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _FLAG_GROUP


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it at the same point; one small all-reduce over
    gloo). Outside ``torchrun`` the flag itself."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_flag_group())
    return bool(t.item())


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


class MeanDice(_MonaiMeanDice):
    """MONAI's ``MeanDice`` handler (same arguments) for validation sharded over the ranks (:func:`sharded` with
    ``pad=False``): each rank computes the per-case Dice of its own cases as MONAI's ``DiceMetric`` does, the rows of
    all ranks are gathered in rank order (any number per rank, none included), and MONAI's reduction runs on them
    all, so every rank reports the mean Dice a single process reports. MONAI's own handler gathers only when every
    rank has a case (more ranks than validation cases would hang). A placeholder iteration (no output) adds
    nothing."""

    def reset(self) -> None:
        super().reset()
        self._rows: list[torch.Tensor] = []

    def iteration_completed(self, engine) -> None:
        if engine.state.output is None:  # a rank without validation cases: see with_placeholder
            return
        super().iteration_completed(engine)

    def update(self, output) -> None:
        from monai.metrics.metric import IterationMetric

        y_pred, y = output
        # DiceMetric's per-case rows, computed as its own call computes them, kept here instead of in its buffer
        self._rows.append(IterationMetric.__call__(self.metric_fn, y_pred, y).detach().cpu())
        self._is_reduced = False

    def compute(self):
        from monai.metrics.utils import do_metric_reduction

        rows = [r for part in gather_objects(getattr(self, "_rows", [])) for r in part]
        if not rows:
            raise RuntimeError("no validation case was scored on any rank")
        data = torch.cat(rows)
        result, _ = do_metric_reduction(data, self.metric_fn.reduction)
        self._is_reduced = True
        if self.save_details:
            self._engine.state.metric_details[self._name] = data
        result = result.squeeze()
        return result.item() if result.ndim == 0 else result


class SyncBuffers:
    """Validation handler: when the evaluator starts, every rank takes rank 0's buffers (BatchNorm running
    statistics). DDP broadcasts them at the start of each training forward, and then every rank updates its own
    copy with its own batch: after training, the ranks would validate slightly different models, and only rank 0's
    is saved."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        if world_size() == 1:
            return
        for buffer in getattr(self.network, "module", self.network).buffers():
            dist.broadcast(buffer, src=0)


PLACEHOLDER = {"placeholder": "this rank has no validation case"}


def _first(batch: list):
    return batch[0]


def with_placeholder(loader):
    """``loader``, or, on a rank whose validation shard is empty while other ranks have cases, a loader of one
    :data:`PLACEHOLDER` batch (:func:`skip_placeholder` makes it an iteration with no output): MONAI's workflow
    skips an empty loader, and that rank would then miss the gathering of the scores that the others wait in."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or len(dataset) or not getattr(dataset, "total_cases", 0):
        return loader
    return torch.utils.data.DataLoader([PLACEHOLDER], batch_size=1, collate_fn=_first)


def skip_placeholder(engine, batch):
    """The validation evaluator's ``iteration_update``: a :data:`PLACEHOLDER` batch is an iteration with no output
    (nothing predicted, nothing scored); any other batch takes the evaluator's own iteration."""
    if isinstance(batch, dict) and "placeholder" in batch:
        return None
    return engine._iteration(engine, batch)


def cleanup() -> bool:
    """Wait for every rank, then tear the process group down (a rank leaving early can abort its peers)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    return True
