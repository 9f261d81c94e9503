"""Losses the bundles need beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["StackedDeepSupervisionLoss"]


class StackedDeepSupervisionLoss(_Loss):
    """MONAI's ``DeepSupervisionLoss`` for the deep-supervision outputs of MONAI's networks, weighted nnU-Net's
    way by default: ``1, 1/2, 1/4, ...`` normalised to sum to 1.

    MONAI's ``DynUNet`` returns, in training mode, one tensor ``(B, 1 + heads, C, *spatial)`` (every head
    already upsampled to the output size): the stack is unbound. MONAI's ``MedNeXt`` returns a tuple of scores
    at full, 1/2, 1/4 ... resolution: the target is resized to each (nearest neighbour, as nnU-Net does). A plain
    ``(B, C, *spatial)`` prediction (evaluation mode) gets the wrapped loss alone.
    """

    def __init__(self, loss: _Loss, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else None

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        levels = None
        if isinstance(input, (list, tuple)):
            levels = list(input)
        elif input.ndim == target.ndim + 1:
            levels = list(torch.unbind(input, dim=1))
        if levels is not None:
            w = self.weights or [0.5**i for i in range(len(levels))]
            total = sum(w[: len(levels)])
            return DeepSupervisionLoss(self.loss, weights=[x / total for x in w[: len(levels)]])(levels, target)
        return self.loss(input, target)
