"""The rules a case must meet, in one place. ``data.check_items`` applies them to the files' headers before a run
starts (every problem of a datalist at once) and ``transforms.CheckInputd`` to the arrays once loaded (for the
entry points without that pre-flight check, and what only the voxels show). Each rule returns its problems as
messages that name the file (an empty list: the case passes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["AFFINE_TOLERANCE_MM", "geometry_rule", "image_rule", "label_grid_rule", "label_values_rule"]

AFFINE_TOLERANCE_MM = 1e-3  # image and label affines further apart than this are two grids


AXES = ("axis 0 (x)", "axis 1 (y)", "axis 2 (z, the slices)")


def geometry_rule(path: str, affine: np.ndarray, stated: str = "affine") -> list[str]:
    """A grid placed in space: each of the three voxel axes a finite, non-zero step. ``affine`` is the voxel-to-world
    matrix (its first three columns are the axes) as the file states it (``stated`` says where: NIfTI's qform scales
    by ``pixdim``, which nibabel replaces by 1 where it is 0, so the caller passes what the header says). Without it,
    labels would be written on a made-up geometry."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    bad = []
    for axis in range(3):
        column = a[:, axis]
        step = float(np.sqrt((column**2).sum())) if np.all(np.isfinite(column)) else float("nan")
        if not step > 0:  # zero, NaN or infinite
            bad.append(f"{AXES[axis]} has voxel spacing {step:g}")
    if not bad:
        return []
    return [f"{path}: the image's geometry is undefined: in its {stated}, {'; '.join(bad)}"]


def image_rule(path: str, channels: int, spatial_shape: Sequence[int]) -> list[str]:
    """One 3D volume with one channel (CT)."""
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3:
        return [f"{path}: expected a 3D volume, got an image with {len(shape)} spatial dimensions (shape {shape})"]
    if channels != 1:
        return [
            f"{path}: image has {channels} channels (shape {shape} x {channels}); the bundles take one-channel 3D CT: "
            "give one volume per file"
        ]
    return []


def label_grid_rule(
    path: str,
    channels: int,
    spatial_shape: Sequence[int],
    affine: np.ndarray | None,
    image_path: str | None = None,
    image_shape: Sequence[int] | None = None,
    image_affine: np.ndarray | None = None,
) -> list[str]:
    """One 3D label volume on its image's grid: the same shape and the same affine."""
    shape = tuple(int(s) for s in spatial_shape)
    if channels != 1 or len(shape) != 3:
        return [f"{path}: label must be one 3D integer volume, got {channels} channel(s) of shape {shape}"]
    if image_shape is not None and shape != tuple(int(s) for s in image_shape):
        return [f"{path}: label grid {shape} does not match its image {image_path} {tuple(image_shape)}"]
    if affine is not None and image_affine is not None:
        a, b = np.asarray(affine, dtype=np.float64), np.asarray(image_affine, dtype=np.float64)
        if not np.allclose(a, b, rtol=0, atol=AFFINE_TOLERANCE_MM):
            return [
                f"{path}: label affine differs from its image {image_path} (max difference "
                f"{np.abs(a - b).max():.4g} mm): image and label must share one grid"
            ]
    return []


def label_values_rule(path: str, values: np.ndarray, num_classes: int) -> list[str]:
    """Integer class ids in ``0..num_classes-1``; ``values`` are the label's distinct values (or its extremes
    and any non-integer value: enough to decide)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        return [f"{path}: label holds non-finite values"]
    bad = np.unique(values[(values < 0) | (values >= num_classes) | (values != np.round(values))])
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        return [f"{path}: label values outside the label map 0..{num_classes - 1}: {shown}"]
    return []
