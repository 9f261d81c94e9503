"""Resizing 2D slices as the 2D papers do, fast: their cubic zoom of the input as banded matrix products, the
logits brought back bilinearly with the argmax computed only where it can change (:func:`bilinear_argmax`), and
nearest-neighbour zoom with scipy's corner alignment."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "zoom_axial_slices",
    "cubic_zoom_matrix",
    "cubic_zoom_bands",
    "bilinear_argmax",
    "argmax_channels",
    "compact_argmax",
    "resize_slices",
]


def resize_slices(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize (N, C, H, W) to ``size`` with ``mode`` bilinear or nearest, on ``x``'s device.

    The grid is that of the papers' ``scipy.ndimage.zoom``: corner pixels map to corner pixels. ``"nearest"`` is
    ``zoom(order=0)``, ``"bilinear"`` is ``F.interpolate(..., align_corners=True)``; so batched and reference paths
    sample the same positions. The papers' cubic zoom of the input slices is :func:`zoom_axial_slices`.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return _nearest_aligned(x, size)
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


def zoom_axial_slices(vol: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The papers' cubic zoom of every axial slice of ``vol`` (C, X, Y, Z) to ``size``, as (Z, C, H, W) float32.

    Each slice and channel gets ``scipy.ndimage.zoom(order=3)`` to float32 rounding (tested): the zoom is linear
    and separable, so it is two products with :func:`cubic_zoom_matrix`, in bands that skip its zeros. They run on
    the volume's own layout: the X pass is one matrix product over contiguous memory, the Y pass a batched one,
    and only the zoomed slices (a fifth of a 512 x 512 volume at 224) are put in slice order, instead of
    gathering every full-size slice across the volume's axial stride first.
    """
    c, sx, sy, sz = vol.shape
    h, w = int(size[0]), int(size[1])
    vol = vol.float()
    if (sx, sy) == (h, w):
        return vol.permute(3, 0, 1, 2)
    vol = vol.contiguous()
    rows = torch.empty((c, h, sy, sz), dtype=vol.dtype, device=vol.device)
    for o0, o1, i0, i1, m in cubic_zoom_bands(sx, h):
        part = torch.matmul(
            torch.as_tensor(m, dtype=vol.dtype, device=vol.device), vol[:, i0:i1].reshape(c, i1 - i0, -1)
        )
        rows[:, o0:o1] = part.reshape(c, o1 - o0, sy, sz)
    out = torch.empty((c, h, w, sz), dtype=vol.dtype, device=vol.device)
    for o0, o1, i0, i1, m in cubic_zoom_bands(sy, w):
        out[:, :, o0:o1] = torch.matmul(torch.as_tensor(m, dtype=vol.dtype, device=vol.device), rows[:, :, i0:i1])
    return out.permute(3, 0, 1, 2).contiguous()


ZOOM_BAND_ROWS = 32  # output rows per band of the zoom matrix


@functools.lru_cache(maxsize=32)
def cubic_zoom_bands(n_in: int, n_out: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`cubic_zoom_matrix` cut into bands of :data:`ZOOM_BAND_ROWS` output rows, each with the range of
    input columns where it is not zero: ``(o0, o1, i0, i1, matrix[o0:o1, i0:i1])``.

    The matrix is banded (an output sample depends on the inputs near its position: the spline prefilter's
    weights fall below 1e-12 within about 20 samples), so the products of the bands skip the zeros: 512 -> 224
    takes a quarter of the multiply-adds of the full matrix. Same sums but for their order (float rounding).
    """
    m = cubic_zoom_matrix(n_in, n_out)
    bands = []
    for o0 in range(0, n_out, ZOOM_BAND_ROWS):
        o1 = min(o0 + ZOOM_BAND_ROWS, n_out)
        nz = np.flatnonzero(np.any(m[o0:o1] != 0, axis=0))
        i0, i1 = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
        bands.append((o0, o1, i0, i1, np.ascontiguousarray(m[o0:o1, i0:i1])))
    return tuple(bands)


@functools.lru_cache(maxsize=32)
def cubic_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of ``scipy.ndimage.zoom(v, n_out / n_in, order=3)`` on a length-``n_in`` vector.

    The papers resize slices with that cubic-spline zoom. It is linear and separable (spline prefilter and
    interpolation act axis by axis), so a slice zooms as ``rows @ slice @ cols.T``: SciPy's numbers (to
    float32 rounding, checked in the tests), computed as two matrix products for a whole batch, on any device
    (in bands that skip the zeros: :func:`cubic_zoom_bands`).
    """
    m = np.stack([ndimage.zoom(e, n_out / n_in, order=3) for e in np.eye(n_in)], axis=1)
    # the prefilter's weights decay geometrically: far entries are float32 denormals, which make matrix
    # products far slower on CPUs; below 1e-12 they cannot change a float32 result
    m[np.abs(m) < 1e-12] = 0.0
    return m


def _nearest_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize with corners aligned (as ``scipy.ndimage.zoom(order=0)``)."""
    idx = []
    for n_in, n_out, dev in ((x.shape[-2], size[0], x.device), (x.shape[-1], size[1], x.device)):
        if n_out == 1:
            idx.append(torch.zeros(1, dtype=torch.long, device=dev))
            continue
        pos = torch.arange(n_out, device=dev, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
        idx.append(torch.round(pos).long().clamp_(0, n_in - 1))
    return x[..., idx[0][:, None], idx[1][None, :]]


def _bilinear_axis(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and the weight of i1 for each output position, as PyTorch's bilinear kernel with
    ``align_corners=True`` computes them (float32 scale and positions)."""
    if n_out > 1:
        scale = torch.tensor(float(n_in - 1), dtype=torch.float32) / torch.tensor(float(n_out - 1), dtype=torch.float32)
        pos = scale * torch.arange(n_out, dtype=torch.float32)
    else:
        pos = torch.zeros(1, dtype=torch.float32)
    i0 = pos.long().clamp_(0, n_in - 1)  # positions are >= 0: truncation is the floor
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0.to(device), i1.to(device), (pos - i0.float()).to(device)


def _cell_outputs(i0: torch.Tensor, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each source cell, the output positions whose lower source index is that cell: (first, count)."""
    count = torch.bincount(i0, minlength=n_in)
    first = torch.cumsum(count, 0) - count
    return first, count


DENSE_SHARE = 0.1  # bilinear_argmax interpolates every channel when more of the output than this is boundary


def bilinear_argmax(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The argmax over channels of ``y`` (N, C, h, w) resized bilinearly (corners aligned) to ``size``.

    Without resizing every channel: a bilinear value is a convex combination of the four neighbouring source
    pixels, so where those four share one argmax the resized argmax is that label too (for every class k,
    score_c >= score_k at the four corners implies it for any convex combination). Only output pixels whose
    four source pixels disagree (the boundary bands, well under 1 % of an abdominal slice) are interpolated,
    with PyTorch's bilinear formula and weights (every pixel, every channel, when boundary cells cover more than
    ``DENSE_SHARE`` of the output: fragmented predictions). Returns (N, H, W) integer labels (uint8 up to 256 classes):
    those of ``F.interpolate(y, size, mode="bilinear", align_corners=True).argmax(1)`` (tested equal, but where two
    classes' interpolated scores tie to float rounding: the kernels add the terms in another order), without
    the (N, C, H, W) resized scores: a fraction of the time and memory on 224 -> 512 slices. Scores in bf16 or
    fp16 (autocast) give the labels of ``y.float()`` resized: the argmax reads them as they are, the interpolation
    converts the values it reads.
    """
    n, c, h, w = y.shape
    H, W = int(size[0]), int(size[1])
    i0, i1, wi = _bilinear_axis(h, H, y.device)
    j0, j1, wj = _bilinear_axis(w, W, y.device)
    lab = compact_argmax(y)
    out = lab[:, i0[:, None], j0[None, :]]
    down = torch.cat([lab[:, 1:], lab[:, -1:]], 1)  # the neighbours each source cell interpolates towards
    right = torch.cat([lab[:, :, 1:], lab[:, :, -1:]], 2)
    diag = torch.cat([down[:, :, 1:], down[:, :, -1:]], 2)
    cb, ci, cj = ((lab != down) | (lab != right) | (lab != diag)).nonzero(as_tuple=True)  # cells to interpolate
    if cb.numel() == 0:
        return out
    # every output pixel of those cells: the cell's first output row/column plus offsets below its count
    fx, nx = _cell_outputs(i0, h)
    fz, nz = _cell_outputs(j0, w)
    if int((nx[ci] * nz[cj]).sum()) > DENSE_SHARE * n * H * W:
        # a fragmented prediction (random or barely trained weights): gathering pixel by pixel would cost far
        # more than interpolating every channel, which gives the same labels
        return torch.cat(
            [
                compact_argmax(F.interpolate(y[k : k + 4].float(), size=(H, W), mode="bilinear", align_corners=True))
                for k in range(0, n, 4)
            ]
        ).to(out.dtype)
    kx, kz = int(nx.max()), int(nz.max())
    ox = torch.arange(kx, device=y.device)
    oz = torch.arange(kz, device=y.device)
    valid = (ox[None, :, None] < nx[ci][:, None, None]) & (oz[None, None, :] < nz[cj][:, None, None])
    m, a, e = valid.nonzero(as_tuple=True)
    b, x, z = cb[m], fx[ci][m] + a, fz[cj][m] + e
    ycl = y.permute(0, 2, 3, 1)  # (N, h, w, C): each pixel's scores adjacent
    a0, a1, b0, b1 = i0[x], i1[x], j0[z], j1[z]
    hl, wl = wi[x, None], wj[z, None]  # float32 arithmetic for bf16 / fp16 scores too: those of y.float() resized
    top = (1 - wl) * ycl[b, a0, b0].float() + wl * ycl[b, a0, b1].float()
    bottom = (1 - wl) * ycl[b, a1, b0].float() + wl * ycl[b, a1, b1].float()
    out[b, x, z] = ((1 - hl) * top + hl * bottom).argmax(1).to(out.dtype)
    return out


def argmax_channels(y: torch.Tensor) -> torch.Tensor:
    """``y.argmax(1)`` of an (N, C, H, W) tensor, computed on a channels-last layout.

    Same result (first maximum wins); PyTorch's CPU argmax over the channel axis of a contiguous NCHW
    tensor strides across memory, where over channels-last memory each pixel's scores are adjacent. The indices
    of ``max`` are argmax's, ties included (tested), and come sooner on bf16 scores.
    """
    return y.contiguous(memory_format=torch.channels_last).max(1).indices


def compact_argmax(y: torch.Tensor) -> torch.Tensor:
    """:func:`argmax_channels` stored as uint8 (up to 256 classes, else int64): 8x less to resize and copy."""
    return argmax_channels(y).to(torch.uint8 if y.shape[1] <= 256 else torch.int64)
