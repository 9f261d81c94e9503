"""Inference switches shared by the 3D bundles: reduced precision, where to stitch, how to invert.

Every switch that can change a prediction is off by default, so the default output is the model-zoo
recipe (fp32 on the CPU, AMP on CUDA as in the model zoo, softmax probabilities inverted with bilinear
interpolation before the argmax); ``docs/benchmarks.md`` of each bundle gives the voxel agreement of each
switch on a trained model.

- ``autocast``: ``None`` (default), ``"bf16"`` or ``"fp16"``: the network runs under ``torch.autocast`` on the
  input's device (the CPU included, where MONAI's evaluator ``amp`` flag cannot help: it is CUDA-only);
  every window's output is cast back to float32 before stitching, so only the network is reduced. On a CPU
  without instructions for that precision (oneDNN's own check: bf16 needs AVX-512 or AMX, fp16 AVX-512-FP16 or
  AMX-FP16; an AVX2-only CPU runs bf16 about 5x slower than fp32) the switch warns once and runs fp32
  (:func:`effective_autocast`): it is a speed switch, and there it would only cost time.
- ``stitch``: ``"auto"`` (default) stitches on the GPU when the output buffers and the postprocessing that then
  runs there (the inversion to the input's grid, :func:`stitching_need`) fit in half of the GPU memory free to
  this process (:func:`cuda_free_bytes`: PyTorch's cached memory counts as free), else on the CPU with buffered
  writes (MONAI's ``buffer_steps``); ``"device"`` always on the input's device; ``"cpu"`` always on the CPU.
  Same numbers either way; only memory and time change.
- ``invert``: ``"probabilities"`` (default: the softmax maps are inverted to the input grid with bilinear
  interpolation, then the argmax) or ``"labels"`` (argmax on the network grid, then nearest-neighbour
  inversion of the label map: one channel instead of 14 to resample, faster). Both run slab by slab in bounded
  memory (:class:`common.inversion.InvertToLabelsd`), with MONAI's numbers.
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
import os
import weakref
from typing import Any, Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer as _MonaiSlidingWindowInferer

from .bundle import as_bool, as_device
from .inversion import GROUP_BYTES, SLAB_BYTES

__all__ = [
    "flip_combinations",
    "flip_tta",
    "AUTOCAST_DTYPES",
    "autocast_dtype",
    "cpu_reduced_precision",
    "effective_autocast",
    "autocast_label",
    "autocast_call",
    "compiled_forward",
    "show_progress",
    "stitching_need",
    "stitching_plan",
    "cuda_free_bytes",
    "SlidingWindowInferer",
    "trt_plan_base",
    "trt_network",
]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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


def cpu_reduced_precision() -> dict[str, bool]:
    """Whether this CPU computes bf16 and fp16 with instructions of their own, as oneDNN (PyTorch's CPU kernels for
    convolutions and matrix products) decides: bf16 with AVX-512 (emulated, about fp32's speed), AVX512_BF16 or AMX
    (faster than fp32); fp16 with AVX512_FP16 or AMX-FP16. Without them both fall back to slow reference code."""
    found = {}
    for name in ("bf16", "fp16"):
        try:
            found[name] = bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{name}_supported")())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            found[name] = False
    return found


_FALLBACK_WARNED: set[str] = set()


def effective_autocast(autocast: str | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The dtype ``autocast`` runs in on ``device``: :func:`autocast_dtype`, except that on a CPU without instructions
    for that precision (:func:`cpu_reduced_precision`) it is ``None`` (fp32), with one warning per process."""
    dtype = autocast_dtype(autocast)
    if dtype is None or torch.device(device).type != "cpu":
        return dtype
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    if cpu_reduced_precision()[name]:
        return dtype
    if name not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(name)
        having = "AVX-512 or AMX" if name == "bf16" else "AVX512-FP16 or AMX-FP16"
        logging.getLogger(__name__).warning(
            "--autocast %s: this CPU (%s) has no %s instructions, where %s runs several times slower than fp32: "
            "running in fp32 (CPUs with %s have them)",
            name,
            torch.backends.cpu.get_cpu_capability(),
            name,
            name,
            having,
        )
    return None


def autocast_label(autocast: str | None, device: torch.device | str = "cpu") -> str | None:
    """What a result file records of the ``autocast`` switch: the setting, and that it ran fp32 where the CPU made
    :func:`effective_autocast` fall back."""
    dtype = autocast_dtype(autocast)
    if dtype is None:
        return None
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    if effective_autocast(autocast, device) is None:
        return f"{name} requested, ran fp32 (no {name} instructions on this CPU)"
    return name


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def autocast_call(network: Callable, autocast: str | None) -> Callable:
    """``network`` run under ``torch.autocast`` (on the input's device type, in :func:`effective_autocast`'s dtype),
    its outputs cast to float32."""
    if autocast_dtype(autocast) is None:
        return network

    def call(x, *args, **kwargs):
        dtype = effective_autocast(autocast, x.device)
        if dtype is None:
            return network(x, *args, **kwargs)
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


def show_progress(progress: bool | str = True, stream=None) -> bool:
    """Whether to draw progress bars: ``--progress`` on (the default) and the output a terminal (``stream``: standard
    error, where the bars go); a log file or a CI log gets none."""
    import sys

    stream = sys.stderr if stream is None else stream
    return as_bool(progress) and bool(getattr(stream, "isatty", lambda: False)())


def stitching_need(spatial_shape: Sequence[int], out_channels: int, original_voxels: int | None = None) -> int:
    """Bytes the prediction of one volume needs where it is stitched, since the postprocessing then runs there too:
    the float32 output and count map of the windows (``out_channels`` + 1 maps of the network's grid), the softmax
    of the output, the inversion's working memory (:data:`common.inversion.GROUP_BYTES` and ``SLAB_BYTES``) and its
    label map on the input's grid (``original_voxels``: the best value and its class, then the float label map and
    its reorientation; 13 bytes a voxel). Without ``original_voxels``, the network's grid stands for it."""
    voxels = math.prod(int(s) for s in spatial_shape)
    original = voxels if original_voxels is None else int(original_voxels)
    return (2 * int(out_channels) + 1) * voxels * 4 + GROUP_BYTES + SLAB_BYTES + 13 * original


def stitching_plan(
    spatial_shape: Sequence[int],
    out_channels: int,
    free_bytes: int | None,
    fraction: float = 0.5,
    original_voxels: int | None = None,
) -> str:
    """``"device"`` when :func:`stitching_need` fits in ``fraction`` of ``free_bytes``, else ``"cpu"``;
    ``free_bytes=None`` (a CPU input) -> ``"device"``."""
    if free_bytes is None:
        return "device"
    need = stitching_need(spatial_shape, out_channels, original_voxels)
    return "device" if need <= fraction * free_bytes else "cpu"


def cuda_free_bytes(device: str | int | torch.device) -> int:
    """What a CUDA device can still give this process: the memory the driver reports free plus what PyTorch's
    caching allocator holds without using it (it hands that out again first; counting it as used sent every volume
    after a large one to the CPU)."""
    dev = as_device(device)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free) + int(torch.cuda.memory_reserved(dev)) - int(torch.cuda.memory_allocated(dev))


def _original_voxels(inputs: torch.Tensor) -> int | None:
    """Voxels of the input's own grid (the loader's ``spatial_shape``, which the evaluator's batch carries)."""
    shape = getattr(inputs, "meta", {}).get("spatial_shape") if hasattr(inputs, "meta") else None
    if shape is None:
        return None
    shape = torch.as_tensor(shape).reshape(-1, torch.as_tensor(shape).shape[-1])[0]
    return int(torch.prod(shape.to(torch.int64)))


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
        free = cuda_free_bytes(inputs.device)
        return stitching_plan(inputs.shape[2:], self.out_channels, free, original_voxels=_original_voxels(inputs))

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


def trt_plan_base(ckpt_path: str | os.PathLike, device: str | int | torch.device) -> str:
    """Where :func:`trt_network` keeps the TensorRT engine of ``ckpt_path`` for ``device``: ``<ckpt>.<device>`` (the
    engine is ``<ckpt>.cuda1.plan`` for ``cuda:1``). An engine is built for one GPU: each device has its own file,
    so the processes of a cohort (one per GPU) never write or read each other's."""
    dev = as_device(device)
    index = dev.index
    if dev.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return f"{ckpt_path}.{dev.type}{'' if index is None else index}"


def trt_network(
    network: torch.nn.Module, ckpt_path: str | os.PathLike, device: str | int | torch.device, args: dict | None = None
) -> torch.nn.Module:
    """``inference_trt.json``'s network: MONAI's ``trt_compile`` on ``device``, with its engine per device
    (:func:`trt_plan_base`), rebuilt when the checkpoint is newer than it, written under a temporary name and renamed
    when complete, and built by one process at a time (an exclusive lock beside it: a process that waited for
    another's build loads that engine instead of building again). Without CUDA and TensorRT, ``trt_compile``
    leaves the network as it is."""
    from monai.networks import trt_compile

    from .bundle import use_device

    dev = use_device(device)  # the engine is built and run on the current CUDA device
    network = network.to(dev)
    args = dict(args or {})
    if os.path.isfile(ckpt_path):
        args["timestamp"] = max(int(args.get("timestamp", 0)), int(os.path.getmtime(ckpt_path)))
    network = trt_compile(network, trt_plan_base(ckpt_path, dev), args=args)
    compiler = getattr(network, "_trt_compiler", None)
    if compiler is not None:
        compiler._build_and_save = _built_once_atomically(compiler, compiler._build_and_save)
    return network


def _built_once_atomically(compiler, build: Callable) -> Callable:
    """``TrtCompiler._build_and_save`` writing its engine through :func:`common.io.atomic_path` under an exclusive
    lock of ``<plan>.lock``; skipped when another process finished the engine while this one waited."""
    import fcntl

    from .io import atomic_path

    def build_and_save(model, input_example):
        final = str(compiler.plan_path)
        with open(final + ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.path.isfile(final):
                    return  # built by another process meanwhile: the caller loads it
                with atomic_path(final) as tmp:
                    compiler.plan_path = str(tmp)
                    try:
                        build(model, input_example)
                    finally:
                        compiler.plan_path = final
                    if tmp.stat().st_size == 0:  # TensorRT returned no engine: no empty file takes the name
                        raise RuntimeError(f"TensorRT built no engine for {final}")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    return build_and_save
