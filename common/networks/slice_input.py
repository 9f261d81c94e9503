"""What the 2D networks written here (TransUNet, Swin-Unet, MT-UNet) share about their input: one shape check
with one message, and the official models' gray-to-RGB repeat of a one-channel slice (their first layer takes 3
channels, so the ImageNet weights fit)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

__all__ = ["static_dims", "check_slice_input", "gray_to_rgb", "first_layer_channels"]


def static_dims(x: torch.Tensor, dims: Sequence[int]) -> tuple[int, ...]:
    """Sizes of ``x`` along ``dims`` as plain ints.

    Under ``torch.jit.trace`` sizes are traced values and every comparison on them raises a TracerWarning; the
    channel and spatial sizes of these networks are fixed by their configuration, so they are read as constants
    (silently). The batch size is never read this way, so traced modules accept any batch size.
    """
    if not torch.jit.is_tracing():
        return tuple(x.shape[d] for d in dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        return tuple(int(x.shape[d]) for d in dims)


def check_slice_input(x: torch.Tensor, network: str, in_channels: int, img_size: Sequence[int], why: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *img_size)``; ``why`` says what fixes the size."""
    h, w = int(img_size[0]), int(img_size[1])
    expected = f"(B, {in_channels}, {h}, {w})"
    if x.ndim != 4:
        raise ValueError(f"{network} expects a 4-D input {expected}, got shape {tuple(x.shape)}")
    channels, height, width = static_dims(x, (1, 2, 3))
    if channels != in_channels:
        raise ValueError(
            f"{network} expects {in_channels} input channel(s): expected {expected}, got shape {tuple(x.shape)}"
        )
    if (height, width) != (h, w):
        raise ValueError(
            f"{network} was built for img_size {h}x{w} ({why}): expected {expected}, got shape {tuple(x.shape)}. "
            "Resize the slices, or build the network with a matching img_size"
        )


def first_layer_channels(in_channels: int) -> int:
    """Channels the first layer takes: 3 for a one-channel input (repeated, see :func:`gray_to_rgb`)."""
    return 3 if in_channels == 1 else in_channels


def gray_to_rgb(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A one-channel slice repeated to 3 channels, as the official ``forward`` does; other inputs as they are."""
    return x.repeat(1, 3, 1, 1) if in_channels == 1 else x
