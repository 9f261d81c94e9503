"""nnU-Net's rule for planning a 3d_fullres U-Net, for MONAI's ``DynUNet``.

nnU-Net (Isensee et al., 2021) derives the network from the patch size and the voxel spacing: at every
level, axes whose spacing is at most twice the smallest spacing, and whose size is at least 8, are
downsampled by 2 with 3-wide kernels; strongly anisotropic axes keep stride 1 and a 1-wide kernel until the
others catch up. Feature maps start at 32 channels and double per level, capped at 320. The functions below
compute exactly that, so the ``unet_btcv`` bundle's ``DynUNet`` follows the spacing and patch size it is
configured with instead of hard-coded lists.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["kernels_and_strides", "kernel_sizes", "strides", "upsample_kernel_sizes", "filters"]


def kernels_and_strides(
    patch_size: Sequence[int], spacing: Sequence[float], min_size: int = 8, max_ratio: float = 2.0
) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides per level (the first stride is 1, as ``DynUNet`` expects)."""
    sizes = [float(s) for s in patch_size]
    spac = [float(s) for s in spacing]
    if len(sizes) != len(spac):
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} differ in length")
    kernels: list[list[int]] = []
    strides_: list[list[int]] = []
    while True:
        ratio = [s / min(spac) for s in spac]
        stride = [2 if r <= max_ratio and size >= min_size else 1 for r, size in zip(ratio, sizes)]
        kernel = [3 if r <= max_ratio else 1 for r in ratio]
        if all(s == 1 for s in stride):
            break
        for size, s in zip(sizes, stride):
            if size % s:
                raise ValueError(f"patch size {tuple(patch_size)} is not divisible down the U-Net levels")
        sizes = [size / s for size, s in zip(sizes, stride)]
        spac = [sp * s for sp, s in zip(spac, stride)]
        kernels.append(kernel)
        strides_.append(stride)
    strides_.insert(0, [1] * len(spac))
    kernels.append([3] * len(spac))
    return kernels, strides_


def kernel_sizes(patch_size: Sequence[int], spacing: Sequence[float]) -> list[list[int]]:
    return kernels_and_strides(patch_size, spacing)[0]


def strides(patch_size: Sequence[int], spacing: Sequence[float]) -> list[list[int]]:
    return kernels_and_strides(patch_size, spacing)[1]


def upsample_kernel_sizes(patch_size: Sequence[int], spacing: Sequence[float]) -> list[list[int]]:
    """Transposed-convolution kernels of the decoder: equal to the strides below the first level."""
    return kernels_and_strides(patch_size, spacing)[1][1:]


def filters(patch_size: Sequence[int], spacing: Sequence[float], base: int = 32, maximum: int = 320) -> list[int]:
    """Feature channels per level: ``base`` doubling per level, capped at ``maximum``."""
    n = len(kernels_and_strides(patch_size, spacing)[0])
    return [min(base * 2**i, maximum) for i in range(n)]
