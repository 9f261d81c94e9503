"""The 2D network as a 3D-volume model: the ``network_def`` of the 2D bundles."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.utils import ensure_tuple

from ..bundle import as_bool, as_device
from ..inference import autocast_dtype, compiled_forward, effective_autocast, flip_tta
from .resize import bilinear_argmax, compact_argmax, resize_slices, zoom_axial_slices

__all__ = ["SliceWiseMixin", "slicewise_class", "slicewise_network", "default_slice_batch"]

RESIZE_BLOCK = 16  # slices resized (and argmaxed) together, whatever the forward batch: fewer, larger operations
SLICE_OUTPUTS = ("logits", "labels")
SLICE_RESIZES = ("logits", "labels")


def _check_slicewise_options(autocast, output: str, resize: str = "logits") -> None:
    autocast_dtype(autocast)  # raises ValueError for an unknown value
    if output not in SLICE_OUTPUTS:
        raise ValueError(f"output must be one of {SLICE_OUTPUTS}, got {output!r}")
    if resize not in SLICE_RESIZES:
        raise ValueError(f"resize must be one of {SLICE_RESIZES}, got {resize!r}")


class SliceWiseMixin:
    """Makes a 2D segmentation network a 3D-volume model (mixed in by :func:`slicewise_network`).

    ``forward`` of a ``(B, C, H, W)`` input is the 2D network's own (training, export). A ``(B, C, X, Y, Z)`` volume
    is predicted slice by slice along the last (axial, after RAS orientation) axis and returned as
    ``(B, classes, X, Y, Z)`` on the input's grid:

    - ``slice_batch`` slices per forward, each batch resized in-plane to ``slice_roi`` (the papers' cubic zoom, as
      matrix products) and the network's outputs brought back to the slice size as ``slice_resize`` says:
      ``"logits"`` (default) bilinear interpolation of the logits before any argmax; ``"labels"`` the papers'
      order, argmax at the network size then nearest-neighbour zoom of the labels, which gives exactly the labels
      of the papers' one-slice-at-a-time ``test_single_volume`` (tested against that loop, kept as the
      benchmark's baseline in ``common.tools.per_slice``).
    - ``slice_output``: ``"logits"`` returns ``(B, classes, X, Y, Z)`` scores; ``"labels"`` returns the argmax as
      a ``(B, 1, X, Y, Z)`` float label map, computed batch by batch without resizing the logits where the result
      is known (:func:`bilinear_argmax`), so the full-resolution logits are never held: the same labels as the
      argmax of ``"logits"``, what the bundles' inference uses.
    - ``slice_tta`` (1 = off, up to 4) averages the softmax over in-plane flips of every batch of slices at the
      network size (``common.inference.flip_tta``), before the return to the slice size, so the label path is
      unchanged.
    - ``slice_autocast`` (``None``, ``"bf16"``, ``"fp16"``) runs the 2D forwards under ``torch.autocast`` on the
      input's device: a documented speed/accuracy switch (on CUDA the evaluator's ``amp`` does the same).
    - ``slice_compile`` runs the 2D forwards through ``torch.compile`` with frozen weights
      (``common.inference.compiled_forward``; batches padded to ``slice_batch``).

    - ``slice_progress`` draws a progress bar over the slices of each volume (the bundles' ``--progress``, in a
      terminal).

    With ``time_forwards`` set (the benchmark sets it), ``forward_seconds`` holds the time spent in the 2D forwards
    by the last volume call; timing a GPU forward waits for it to finish, so it is off otherwise. These are plain
    attributes, so the state dict is exactly the 2D network's: a model trained as 2D loads as is.
    """

    slice_roi: tuple[int, int] = (224, 224)
    slice_batch: int = 16
    slice_autocast: str | None = None
    slice_output: str = "logits"
    slice_resize: str = "logits"
    slice_tta: int = 1
    slice_compile: bool = False
    slice_progress: bool = False
    time_forwards: bool = False
    forward_seconds: float = 0.0

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x, *args, **kwargs)
        _check_slicewise_options(self.slice_autocast, self.slice_output, self.slice_resize)
        self.forward_seconds = 0.0
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x
        out = torch.stack([self._volume(v) for v in plain], 0)
        if isinstance(x, MetaTensor):
            out = MetaTensor(out, meta=x.meta, applied_operations=x.applied_operations)
        return out

    def slice_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 2D network on a batch of prepared slices ``(N, C, H, W)``, in the configured precision (and compiled
        where asked), with its forward time counted."""
        import time

        t0 = time.perf_counter()
        dtype = effective_autocast(self.slice_autocast, x.device)
        forward = compiled_forward(self, self.slice_batch) if self.slice_compile else super().forward
        if dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                y = flip_tta(forward, x, self.slice_tta)
        else:
            y = flip_tta(forward, x, self.slice_tta)
        if self.time_forwards:
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            self.forward_seconds += time.perf_counter() - t0
        return y  # bf16 / fp16 under autocast: the argmax needs no conversion, interpolation converts what it reads

    def _volume(self, vol: torch.Tensor) -> torch.Tensor:
        """One volume (C, X, Y, Z) -> (classes, X, Y, Z) scores or a (1, X, Y, Z) label map."""
        _, sx, sy, sz = vol.shape
        step = max(int(self.slice_batch), 1)
        block = max(step, RESIZE_BLOCK)  # resizing back and argmax work on blocks of slices, forwards on batches
        zoomed = zoom_axial_slices(vol, self.slice_roi)  # (Z, C, h, w): a fifth of a 512 x 512 volume at 224
        out = None
        bar = None
        if self.slice_progress and sz > block:
            from tqdm import tqdm

            bar = tqdm(total=sz, desc="slices", unit="slice", leave=False)
        for s in range(0, sz, block):
            chunk = zoomed[s : s + block]
            y = torch.cat([self.slice_forward(chunk[i : i + step]) for i in range(0, chunk.shape[0], step)])
            if self.slice_output == "logits":
                y = y.float()
            if self.slice_output == "labels" and self.slice_resize == "labels":
                y = resize_slices(compact_argmax(y)[:, None], (sx, sy), "nearest")
            elif self.slice_output == "labels":
                y = bilinear_argmax(y, (sx, sy))[:, None]
            else:
                y = resize_slices(y, (sx, sy), "nearest" if self.slice_resize == "labels" else "bilinear")
            if out is None:
                out = torch.empty((y.shape[1], sx, sy, sz), dtype=torch.float32, device=vol.device)
            out[..., s : s + y.shape[0]] = y.permute(1, 2, 3, 0)
            if bar is not None:
                bar.update(y.shape[0])
        if bar is not None:
            bar.close()
        return out


_SLICEWISE_CLASSES: dict[type, type] = {}


def slicewise_class(network: type | str) -> type:
    """The 3D-volume subclass of a 2D network class (created once, importable from this module by name)."""
    if isinstance(network, str):
        from pydoc import locate

        name, network = network, locate(network)
        if network is None:
            raise ImportError(f"cannot import the network class {name!r}")
    if not (isinstance(network, type) and issubclass(network, torch.nn.Module)):
        raise TypeError(f"network must be a torch.nn.Module subclass, got {network!r}")
    if issubclass(network, SliceWiseMixin):
        return network
    cls = _SLICEWISE_CLASSES.get(network)
    if cls is None:
        name = f"SliceWise{network.__name__}"
        doc = f"{network.__name__} taking 2D slices (B, C, H, W) or whole volumes (B, C, X, Y, Z); see SliceWiseMixin."
        cls = type(name, (SliceWiseMixin, network), {"__module__": __name__, "__doc__": doc})
        _SLICEWISE_CLASSES[network] = cls
        globals()[name] = cls  # so instances pickle by reference like any module-level class
    return cls


def default_slice_batch(device: str | torch.device | None = None) -> int:
    """Slices per forward for volume inference: 2 on the CPU, 16 on a GPU.

    Large batches spill the caches on a CPU, while a GPU needs them to be busy (the benchmark's per-batch
    timings, ``docs/benchmarks.md``, chose these). ``device`` is anything ``torch.device`` takes: a bare index
    (``0``) is a CUDA device, ``None`` the CPU.
    """
    return 16 if as_device(device).type == "cuda" else 2


def slicewise_network(
    network: type | str,
    roi_size: Sequence[int] = (224, 224),
    slice_batch: int = 16,
    autocast: str | None = None,
    output: str = "logits",
    resize: str = "logits",
    channels_last: bool = True,
    tta: int = 1,
    compile: bool | str = False,
    progress: bool = False,
    **network_kwargs,
) -> torch.nn.Module:
    """Build ``network(**network_kwargs)`` as a 3D-volume model (see :class:`SliceWiseMixin`).

    This is the ``network_def`` of the 2D bundles: training feeds it 2D slices, validation and inference whole
    volumes (so MONAI's ``SimpleInferer``, MONAI Label and the bundle tools see a 3D model), and its
    parameters and state dict are exactly those of ``network``. ``channels_last`` keeps the convolution
    weights in channels-last memory, so convolutions run in the layout oneDNN and cuDNN prefer: a memory
    layout, not a precision (same state dict; outputs equal to float rounding).
    """
    _check_slicewise_options(autocast, output, resize)
    roi = tuple(int(r) for r in ensure_tuple(roi_size))
    net = slicewise_class(network)(**network_kwargs)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.slice_roi = roi * 2 if len(roi) == 1 else roi
    net.slice_batch, net.slice_autocast = int(slice_batch), autocast
    if not 1 <= int(tta) <= 4:
        raise ValueError(f"tta must be 1 (off) to 4 (every in-plane flip), got {tta!r}")
    net.slice_output, net.slice_resize, net.slice_tta = output, resize, int(tta)
    net.slice_compile = as_bool(compile)
    net.slice_progress = as_bool(progress)
    return net
