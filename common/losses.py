"""Losses the bundles need beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["StackedDeepSupervisionLoss"]


class StackedDeepSupervisionLoss(_Loss):
    """MONAI's ``DeepSupervisionLoss`` for networks that stack their deep-supervision outputs.

    MONAI's ``DynUNet`` returns, in training mode, one tensor ``(B, 1 + heads, C, *spatial)`` (every head
    already upsampled to the output size); ``DeepSupervisionLoss`` expects a list. This unbinds the stack
    and weights the levels nnU-Net's way by default: ``1, 1/2, 1/4, ...`` normalised to sum to 1. A plain
    ``(B, C, *spatial)`` prediction (evaluation mode) gets the wrapped loss alone.
    """

    def __init__(self, loss: _Loss, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.ndim == target.ndim + 1:
            levels = list(torch.unbind(input, dim=1))
            w = self.weights or [0.5**i for i in range(len(levels))]
            total = sum(w[: len(levels)])
            return DeepSupervisionLoss(self.loss, weights=[x / total for x in w[: len(levels)]])(levels, target)
        return self.loss(input, target)
