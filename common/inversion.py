"""The network's prediction back on the input's grid, as a label map, in bounded memory.

MONAI's ``Invertd`` undoes the preprocessing of the 3D bundles (orientation, resampling to the network spacing,
foreground crop) on the whole prediction at once: the 14 softmax probability maps are resampled to the input's
grid together, and the resampling builds its sampling grid for the whole output (7 floats per output voxel) before
it samples. A thin-slice CT of 512 x 512 x 600 voxels then needs 14 x 0.63 GB for the probabilities plus 4.4 GB for
the grid: more than a workstation has. :class:`InvertToLabelsd` computes the same label map slab by slab: the
resampling back to the input's spacing, for a few planes of the output at a time, followed at once by the argmax of
those planes (trilinear interpolation is local, so each output voxel needs only its own neighbourhood); the steps
before and after it (the crop's padding, the orientation) are MONAI's own inverses. Every number is computed as
MONAI computes it (the sampling grid of a slab is the slab's rows of MONAI's grid, the same ``grid_sample``), so
the labels are those of ``Activationsd`` + ``Invertd`` + ``AsDiscreted`` voxel for voxel (tested); only the memory
changes: for that CT about 1.3 GB at the input's grid instead of 14 GB, whatever the number of classes.

``invert="labels"`` takes the argmax on the network's grid first and resamples the one-channel label map with
nearest-neighbour interpolation (``Invertd(nearest_interp=True)``), slab by slab as well.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, InvertibleTransform, MapTransform, Spacingd, allow_missing_keys_mode
from monai.transforms.inverse import TraceableTransform
from monai.transforms.utils import convert_applied_interp_mode, resolves_modes
from monai.utils import TraceKeys, ensure_tuple, ensure_tuple_rep, fall_back_tuple, get_torch_dtype_from_string

__all__ = [
    "INVERT_MODES",
    "invert_labels",
    "SLAB_BYTES",
    "GROUP_BYTES",
    "slab_resample",
    "slab_planes",
    "channel_groups",
    "InvertToLabelsd",
]

SLAB_BYTES = 256 * 2**20  # working memory of one slab: its sampling grid and the values sampled for it
GROUP_BYTES = 512 * 2**20  # working memory of the channels resampled together: their source, padded and in float64
INVERT_MODES = ("probabilities", "labels")
AFFINE_TOL = 1e-3  # MONAI's tolerance for "the affine is unchanged" (monai.transforms.spatial.functional)


def invert_labels(invert: str) -> bool:
    """True for ``"labels"``, False for ``"probabilities"``; what the ``invert`` switch means."""
    if invert not in INVERT_MODES:
        raise ValueError(f"invert must be one of {INVERT_MODES}, got {invert!r}")
    return invert == "labels"


def _linspace_from_neg_one(n: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The normalised coordinates of ``n`` voxels, as ``torch.nn.functional.affine_grid`` computes them."""
    if n <= 1:
        return torch.zeros(1, dtype=like.dtype, device=like.device)
    r = torch.linspace(-1, 1, n, dtype=like.dtype, device=like.device)
    return r * (n - 1) / n if not align_corners else r


def _grid_rows(theta: torch.Tensor, size: tuple[int, int, int], start: int, stop: int, align_corners: bool):
    """Planes ``start:stop`` (first spatial axis) of ``affine_grid(theta, (1, C, *size), align_corners)``: the same
    numbers, for those planes only. ``theta`` is (1, 3, 4)."""
    d, h, w = size
    base = torch.empty((1, stop - start, h, w, 4), dtype=theta.dtype, device=theta.device)
    base.select(-1, 0).copy_(_linspace_from_neg_one(w, align_corners, theta))
    base.select(-1, 1).copy_(_linspace_from_neg_one(h, align_corners, theta).unsqueeze_(-1))
    base.select(-1, 2).copy_(_linspace_from_neg_one(d, align_corners, theta)[start:stop].unsqueeze_(-1).unsqueeze_(-1))
    base.select(-1, 3).fill_(1)
    return base.view(1, -1, 4).bmm(theta.transpose(1, 2)).view(1, stop - start, h, w, 3)


def slab_resample(img: MetaTensor, dst_affine, spatial_size, mode, padding_mode, align_corners, dtype, sink):
    """MONAI's ``spatial_resample`` (the eager, 3D, torch path that ``Spacing`` and its inverse take), computed a slab
    of output planes (first spatial axis) at a time: ``sink(start, stop, values)`` receives each slab's values
    (channels, planes ``start:stop``, float32, as MONAI returns them) before the next is sampled. Returns the output's
    metadata as MONAI sets it, or ``None`` where MONAI would take another path (spline orders, its compiled
    resampler, other than 3D): the caller then uses MONAI's own."""
    import numpy as np
    from monai.config import USE_COMPILED
    from monai.data.utils import to_affine_nd
    from monai.networks.utils import to_norm_affine
    from monai.utils import convert_to_dst_type, convert_to_numpy

    if isinstance(mode, int) or USE_COMPILED or img.ndim != 4:
        return None
    in_shape = tuple(int(s) for s in img.peek_pending_shape())
    src_affine = to_affine_nd(3, img.peek_pending_affine()).to(torch.float64)
    dst_affine = convert_to_dst_type(to_affine_nd(3, dst_affine), src_affine)[0]
    spatial_size = torch.tensor(fall_back_tuple(ensure_tuple(spatial_size)[:3], in_shape, lambda x: x >= 0))
    xform = np.linalg.solve(convert_to_numpy(src_affine), convert_to_numpy(dst_affine))
    xform = torch.as_tensor(to_affine_nd(3, xform)).to(device=img.device, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    same_size = torch.allclose(spatial_size.to(torch.float64), torch.tensor(in_shape, dtype=torch.float64))
    unchanged = same_size and (
        torch.allclose(src_affine.cpu(), dst_affine.cpu(), atol=AFFINE_TOL)
        or torch.allclose(xform.cpu(), eye, atol=AFFINE_TOL)
    )
    meta = TraceableTransform.track_transform_meta(
        img, sp_size=spatial_size, affine=None if unchanged else xform, transform_info={TraceKeys.TRACING: False}
    )
    size = tuple(int(s) for s in spatial_size)
    if unchanged:  # MONAI returns the input as it is
        sink(0, size[0], img.as_tensor().to(torch.float32))
        return meta
    src = img.as_tensor().to(dtype)
    _, torch_mode, torch_padding, _ = resolves_modes(mode, padding_mode)
    # the normalised transform, as monai.networks.layers.AffineTransform computes it (normalized=False,
    # reverse_indexing=True): then only affine_grid differs, computed for the planes of one slab at a time
    theta = xform.to(src)[None].clone()
    theta = to_norm_affine(
        affine=theta, src_size=src.shape[1:], dst_size=ensure_tuple(spatial_size), align_corners=align_corners
    )
    rev = torch.as_tensor(range(2, -1, -1), device=src.device)
    theta[:, :3] = theta[:, rev]
    theta[:, :, :3] = theta[:, :, rev]
    source = src.unsqueeze(0).contiguous()
    del src
    step = slab_planes(size, int(source.shape[1]), source.element_size())
    for start in range(0, size[0], step):
        stop = min(start + step, size[0])
        grid = _grid_rows(theta[:, :3], size, start, stop, bool(align_corners))
        values = torch.nn.functional.grid_sample(
            source, grid, mode=torch_mode, padding_mode=torch_padding, align_corners=bool(align_corners)
        )
        del grid
        sink(start, stop, values[0].to(torch.float32))  # MONAI's output type, whatever it resampled in
    return meta


def slab_planes(size, channels: int, itemsize: int = 4) -> int:
    """Output planes (first spatial axis) per slab: what fits :data:`SLAB_BYTES` with the slab's sampling grid (4 + 3
    numbers a voxel, as ``affine_grid`` builds it) and its samples (one a channel)."""
    plane = int(size[1]) * int(size[2])
    return max(1, SLAB_BYTES // (plane * int(itemsize) * (7 + int(channels))))


def channel_groups(channels: int, voxels: int, budget: int | None = None) -> list[tuple[int, int]]:
    """``(first, stop)`` channel ranges resampled together: as many channels as keep their source (padded to the
    uncropped grid, then in float64, 12 bytes a voxel) within ``budget`` (default :data:`GROUP_BYTES`)."""
    budget = GROUP_BYTES if budget is None else budget
    size = max(1, min(int(channels), int(budget) // max(1, 12 * int(voxels))))
    return [(c, min(c + size, channels)) for c in range(0, channels, size)]


def _argmax(values: torch.Tensor) -> torch.Tensor:
    """``AsDiscreted(argmax=True)``: the first channel of the highest value, as a float32 one-channel map."""
    return torch.argmax(values, dim=0, keepdim=True).to(torch.float32)


# inverses that may follow the argmax: they only move, copy or pad voxels, which commutes with the argmax over channels
# (a padded voxel is zero in every channel, so its argmax is 0, background, either way)
_MOVE_ONLY = ("Orientationd", "CropForegroundd", "SpatialPadd", "BorderPadd", "DivisiblePadd", "SpatialCropd")


class _Collect:
    """A slab sink that keeps the values (the one-channel label map of ``invert="labels"``)."""

    def __init__(self, shape) -> None:
        self.shape, self.values = tuple(shape), None

    def __call__(self, start: int, stop: int, values: torch.Tensor) -> None:
        if self.values is None:
            self.values = torch.empty((values.shape[0], *self.shape), dtype=torch.float32, device=values.device)
        self.values[:, start:stop] = values

    def result(self) -> torch.Tensor:
        return self.values


class _RunningArgmax:
    """The argmax over channels that arrive in groups (``first``: the first channel of the group), slab by slab: the
    best value and its channel so far, a later channel replacing it only when strictly higher, so the first channel
    wins ties as ``torch.argmax`` does. Elementwise, channel by channel: ``torch.argmax`` over the channel axis of a
    large volume is several times slower."""

    def __init__(self, shape, channels: int) -> None:
        self.shape, self.first = tuple(shape), 0
        self.dtype = torch.uint8 if channels <= 256 else torch.int32
        self.best: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def __call__(self, start: int, stop: int, values: torch.Tensor) -> None:
        if self.best is None:
            self.best = torch.empty((1, *self.shape), dtype=torch.float32, device=values.device)
            self.index = torch.empty((1, *self.shape), dtype=self.dtype, device=values.device)
        best, index = self.best[0, start:stop], self.index[0, start:stop]
        for c, v in enumerate(values, self.first):
            if c == 0:
                best.copy_(v)
                index.zero_()
                continue
            index.masked_fill_(v > best, c)
            torch.maximum(best, v, out=best)

    def result(self) -> torch.Tensor:
        return self.index.to(torch.float32)


class InvertToLabelsd(MapTransform):
    """The label map of ``key`` (the network's output, logits) on the grid of ``orig_key``'s input: what
    ``Activationsd(softmax)`` + ``Invertd`` + ``AsDiscreted(argmax)`` give (``invert="probabilities"``), or
    ``AsDiscreted(argmax)`` + ``Invertd(nearest_interp=True)`` (``invert="labels"``), voxel for voxel, with the
    resampling back to the input's spacing done slab by slab and, for the probabilities, a few channels at a time
    with a running argmax (see the module docstring).

    Args:
        keys: the prediction(s) to invert.
        transform: the preprocessing that was applied (its invertible steps are undone, last first).
        orig_keys: the key of each prediction's input, whose record of applied transforms is undone.
        invert: ``"probabilities"`` or ``"labels"`` (see :func:`invert_labels`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Compose,
        orig_keys: KeysCollection = "image",
        invert: str = "probabilities",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.orig_keys = ensure_tuple_rep(orig_keys, len(self.keys))
        self.labels = invert_labels(invert)

    def __call__(self, data):
        d = dict(data)
        for key, orig_key in self.key_iterator(d, self.orig_keys):
            d[key] = self._invert(d[key], d[orig_key], orig_key)
        return d

    def _steps(self) -> tuple[list, Spacingd | None, list]:
        """The invertible steps in the order they are undone: those before the resampling to the network's spacing,
        that resampling (``None`` if there is none), those after it."""
        steps = [t for t in self.transform.flatten().transforms if isinstance(t, InvertibleTransform)][::-1]
        i = next((n for n, t in enumerate(steps) if isinstance(t, Spacingd)), None)
        if i is None:
            return steps, None, []
        after = steps[i + 1 :]
        for t in after:
            if type(t).__name__ not in _MOVE_ONLY:
                raise NotImplementedError(f"InvertToLabelsd cannot undo {type(t).__name__} after the argmax")
        return steps[:i], steps[i], after

    def _invert(self, pred: torch.Tensor, orig: MetaTensor, orig_key: str) -> MetaTensor:
        before, spacing, after = self._steps()
        ops = deepcopy(orig.applied_operations)
        if self.labels:
            ops = convert_applied_interp_mode(trans_info=ops, mode="nearest", align_corners=None)
            values = _argmax(torch.as_tensor(pred.detach()))
            groups = [(0, 1)]
        else:
            values = torch.softmax(torch.as_tensor(pred.detach()), dim=0)
            groups = channel_groups(values.shape[0], _uncropped_voxels(values, ops))
        sink, meta = None, None
        for first, stop in groups:
            x = MetaTensor(values[first:stop], meta=deepcopy(orig.meta), applied_operations=deepcopy(ops))
            for t in before:
                with allow_missing_keys_mode(t):
                    x = t.inverse({orig_key: x})[orig_key]
            op = spacing.spacing_transform.sp_resample.pop_transform(x) if spacing is not None else None
            if sink is None:
                shape = x.shape[1:] if op is None else tuple(int(s) for s in op[TraceKeys.ORIG_SIZE])
                sink = _Collect(shape) if self.labels else _RunningArgmax(shape, values.shape[0])
            if not self.labels:
                sink.first = first
            if op is None:
                sink(0, x.shape[1], x.as_tensor().to(torch.float32))
                meta = x
            else:
                meta = _resample(spacing, x, op, sink)
            del x
        del values
        labels = MetaTensor(sink.result(), meta=deepcopy(meta.meta))
        labels.applied_operations = list(meta.applied_operations)
        del sink
        for t in after:
            with allow_missing_keys_mode(t):
                labels = t.inverse({orig_key: labels})[orig_key]
        return labels


def _uncropped_voxels(values: torch.Tensor, ops: list) -> int:
    """Voxels of the network's grid before the foreground crop (what the crop's inverse pads back to)."""
    import math

    for op in reversed(ops):
        if op.get(TraceKeys.CLASS_NAME) in ("CropForeground", "CropForegroundd", "SpatialCrop", "Crop"):
            return math.prod(int(s) for s in op[TraceKeys.ORIG_SIZE])
    return math.prod(int(s) for s in values.shape[1:])


def _resample(spacing: Spacingd, x: MetaTensor, op: dict, sink) -> MetaTensor | None:
    """Undo ``spacing`` (its record ``op``, already taken from ``x``) slab by slab into ``sink``; returns a MetaTensor
    carrying the output's metadata."""
    kw = dict(op[TraceKeys.EXTRA_INFO])
    align_corners = kw.get("align_corners")
    align_corners = False if align_corners == TraceKeys.NONE else align_corners
    dtype = get_torch_dtype_from_string(kw["dtype"])
    meta = slab_resample(
        x, kw["src_affine"], op[TraceKeys.ORIG_SIZE], kw["mode"], kw["padding_mode"], align_corners, dtype, sink
    )
    if meta is None:  # a path MONAI takes otherwise: its own inverse, whole
        x.push_applied_operation(op)
        out = spacing.spacing_transform.inverse(x)
        sink(0, out.shape[1], out.as_tensor().to(torch.float32))
        return out
    out = MetaTensor(torch.empty(0))
    out.copy_meta_from(meta)
    return out
