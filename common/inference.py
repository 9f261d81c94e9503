"""Inference switches shared by the 3D bundles: reduced precision, where to stitch, how to invert.

Every switch that can change a prediction is off by default, so the default output is the model-zoo
recipe (fp32 on the CPU, AMP on CUDA as in the model zoo, softmax probabilities inverted with bilinear
interpolation before the argmax); ``docs/benchmarks.md`` of each bundle gives the voxel agreement of each
switch on a trained model.

- ``autocast``: ``None`` (default), ``"bf16"`` or ``"fp16"``: the network runs under ``torch.autocast`` on the
  input's device (the CPU included, where MONAI's evaluator ``amp`` flag cannot help: it is CUDA-only);
  every window's output is cast back to float32 before stitching, so only the network is reduced.
- ``stitch``: ``"auto"`` (default) stitches on the GPU when the output buffers fit in a fraction of the free
  GPU memory, else on the CPU with buffered writes (MONAI's ``buffer_steps``); ``"device"`` always on the
  input's device; ``"cpu"`` always on the CPU. Same numbers either way; only memory and time change.
- ``invert``: ``"probabilities"`` (default: the softmax maps are inverted to the input grid with bilinear
  interpolation, then the argmax) or ``"labels"`` (argmax on the network grid, then nearest-neighbour
  inversion of the label map: one channel instead of 14 to resample, far less memory on large volumes).
- ``tta``: mirroring test-time augmentation as nnU-Net predicts: the network also sees its input flipped along
  combinations of the spatial axes, each output is flipped back, and the softmax probabilities are averaged
  (:func:`flip_tta`). ``1`` (default) is off; ``n`` uses the first ``n`` flip combinations (3D: up to 8, every
  subset of the three axes; the 2D networks: up to 4, the in-plane axes), so it costs ``n`` forwards. The 3D
  inferer applies it to every window, the 2D networks to every batch of slices at the network size, so their
  label path is unchanged. The network's output is then the log of the averaged probabilities: a softmax of
  it gives them back exactly.
- ``compile``: ``false`` (default) or ``true``: the forwards run through ``torch.compile`` (inductor) with the
  weights frozen into the compiled graph (:func:`compiled_forward`). The first forward of a process compiles
  (seconds to minutes on a CPU, by network: ``docs/benchmarks.md``); every batch is padded to the configured
  batch size, so nothing compiles again.
  Outputs equal the eager ones to float rounding; labels can change where two classes tie.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any, Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer as _MonaiSlidingWindowInferer

from .bundle import as_bool

__all__ = [
    "flip_combinations",
    "flip_tta",
    "AUTOCAST_DTYPES",
    "INVERT_MODES",
    "autocast_dtype",
    "autocast_call",
    "compiled_forward",
    "invert_labels",
    "stitching_plan",
    "SlidingWindowInferer",
]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INVERT_MODES = ("probabilities", "labels")
STITCH_MODES = ("auto", "device", "cpu")


def autocast_dtype(autocast: str | None) -> torch.dtype | None:
    """``None`` (``null`` in a config, ``None`` on the command line) or ``"fp32"`` -> None (full precision);
    ``"bf16"`` / ``"fp16"`` -> the dtype; anything else -> ValueError.

    The one reading of the ``autocast`` switch, for the 3D inferer and the 2D slice-wise networks alike.
    """
    if autocast is None or str(autocast).lower() == "fp32":
        return None
    try:
        return AUTOCAST_DTYPES[str(autocast).lower()]
    except KeyError:
        raise ValueError(f"autocast must be null, 'fp32', 'bf16' or 'fp16', got {autocast!r}") from None


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def autocast_call(network: Callable, autocast: str | None) -> Callable:
    """``network`` run under ``torch.autocast`` (on the input's device type), its outputs cast to float32."""
    dtype = autocast_dtype(autocast)
    if dtype is None:
        return network

    def call(x, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = network(x, *args, **kwargs)
        return _to_float32(out)

    return call


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (weights' versions, compiled)


def _weights_version(module: torch.nn.Module) -> tuple[int, ...]:
    """The in-place version counters of the module's parameters and buffers: loading a checkpoint or an optimiser
    step changes them, so a graph with the old weights frozen in is never used again."""
    return tuple(t._version for t in (*module.parameters(), *module.buffers()))


def compiled_forward(module: torch.nn.Module, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s forward for inference through ``torch.compile`` (inductor, weights frozen as constants).

    A batch smaller than ``batch`` (the last windows or slices of a volume) is padded with zeros to ``batch`` and
    the padding dropped from the output (the networks are in eval mode: each sample's output depends on that
    sample alone), so one graph serves every call. The compiled module is kept per ``module`` (one compile per
    process); when the weights change in place (a checkpoint loaded after it, training between validations)
    torch's compile caches are reset and the next call compiles with the new weights, never the stale ones.
    """
    import torch._inductor.config  # noqa: F401  (torch.compile imports it lazily; the call patches it)

    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")

    def call(x: torch.Tensor, *args, **kwargs):
        version = _weights_version(module)
        entry = _COMPILED.get(module)
        if entry is None or entry[0] != version:
            if entry is not None:
                torch.compiler.reset()  # the frozen graph holds the old weights
            logging.getLogger(__name__).info(
                "compiling %s with torch.compile for batches of %d (once per process)", type(module).__name__, batch
            )
            entry = (version, torch.compile(module, dynamic=False))
            _COMPILED[module] = entry
        fn, n = entry[1], x.shape[0]
        if n > batch:
            return torch.cat([call(x[i : i + batch], *args, **kwargs) for i in range(0, n, batch)])
        if n < batch:
            x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))])
        # freezing (weights as constants, convolution and linear weights prepacked) is read when the graph compiles;
        # torch.compile's ``options`` do not pass it on, so the inductor config is patched around the call
        with torch._inductor.config.patch(freezing=True):
            out = fn(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"compile expects a network returning one tensor, {type(module).__name__} returned {type(out)}"
            )
        return out[:n] if n < batch else out

    return call


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """The tensor dims to flip for each test-time pass, identity first, then single axes, pairs, ...: the subsets
    of the spatial dims of a ``(B, C, *spatial)`` tensor, in nnU-Net's order of growing size."""
    from itertools import combinations

    dims = tuple(range(2, 2 + spatial_dims))
    return [c for k in range(len(dims) + 1) for c in combinations(dims, k)]


def flip_tta(forward: Callable, x: torch.Tensor, passes: int) -> torch.Tensor:
    """``log`` of the mean over the first ``passes`` flip combinations of ``softmax(forward(flip(x)))`` flipped
    back (channel dim 1); ``passes <= 1`` is ``forward(x)`` itself."""
    passes = int(passes)
    if passes <= 1:
        return forward(x)
    flips = flip_combinations(x.ndim - 2)
    if passes > len(flips):
        raise ValueError(f"tta takes at most {len(flips)} passes for {x.ndim - 2}D inputs, got {passes}")
    total = None
    for dims in flips[:passes]:
        y = forward(torch.flip(x, dims) if dims else x)
        p = torch.softmax(y.float(), dim=1)
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total.add_(p)
    return torch.log(total.div_(passes).clamp_min_(torch.finfo(torch.float32).tiny))


def invert_labels(invert: str) -> bool:
    """True for ``"labels"``, False for ``"probabilities"``; the configs' ``_disabled_`` switches call this."""
    if invert not in INVERT_MODES:
        raise ValueError(f"invert must be one of {INVERT_MODES}, got {invert!r}")
    return invert == "labels"


def stitching_plan(
    spatial_shape: Sequence[int], out_channels: int, free_bytes: int | None, fraction: float = 0.5
) -> str:
    """``"device"`` when the stitching buffers fit in ``fraction`` of ``free_bytes``, else ``"cpu"``.

    The buffers are the float32 output (``out_channels`` x the padded volume) and the float32 count map;
    ``free_bytes=None`` (a CPU input) -> ``"device"``.
    """
    if free_bytes is None:
        return "device"
    need = (int(out_channels) + 1) * math.prod(int(s) for s in spatial_shape) * 4
    return "device" if need <= fraction * free_bytes else "cpu"


class SlidingWindowInferer(_MonaiSlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` plus the ``autocast``, ``stitch``, ``tta`` and ``compile`` switches (see the
    module docstring).

    ``out_channels`` is only used to size the stitching buffers when ``stitch="auto"``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        autocast: str | None = None,
        stitch: str = "auto",
        out_channels: int = 14,
        tta: int = 1,
        compile: bool | str = False,
        **kwargs,
    ) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, **kwargs)
        autocast_dtype(autocast)  # validate early
        if stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}")
        self.autocast, self.stitch = autocast, stitch
        self.out_channels, self.tta = int(out_channels), int(tta)
        if not 1 <= self.tta <= 8:
            raise ValueError(f"tta must be 1 (off) to 8 (every flip of the three axes), got {tta!r}")
        self.compile = as_bool(compile)
        self.last_stitch_device: str | None = None

    def _plan(self, inputs: torch.Tensor) -> str:
        if self.stitch == "cpu":
            return "cpu"
        if self.stitch == "device" or inputs.device.type != "cuda":
            return "device"
        free, _ = torch.cuda.mem_get_info(inputs.device)
        return stitching_plan(inputs.shape[2:], self.out_channels, free)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        plan = self._plan(inputs)
        saved = (self.device, self.buffer_steps)
        if plan == "cpu":
            self.device = torch.device("cpu")
            if inputs.device.type == "cuda" and self.buffer_steps is None:
                self.buffer_steps = 1  # windows of one slab stay on the GPU, written to the CPU buffer together
        self.last_stitch_device = str(self.device or inputs.device)
        try:
            if self.compile and isinstance(network, torch.nn.Module):
                network = compiled_forward(network, self.sw_batch_size)
            net = autocast_call(network, self.autocast)
            if self.tta > 1:
                plain = net
                net = lambda x, *a, **k: flip_tta(lambda v: plain(v, *a, **k), x, self.tta)  # noqa: E731
            return super().__call__(inputs, net, *args, **kwargs)
        finally:
            self.device, self.buffer_steps = saved
