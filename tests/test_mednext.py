"""MedNeXt-L as the official code builds it (MONAI's MedNeXt with the official down-sampling blocks), and the deep
supervision loss over its outputs at five resolutions."""

from __future__ import annotations

import pytest
import torch

from common.losses import StackedDeepSupervisionLoss
from common.networks.mednext import mednext


@pytest.mark.parametrize("kernel_size, official", [(3, 61_781_194), (5, 62_994_826)])
def test_mednext_l_has_the_official_parameter_count(kernel_size, official):
    """The official MedNeXt-L (MIC-DKFZ/MedNeXt ``create_mednextv1_large``, 1 input channel, 2 classes, deep
    supervision) has 61.8 M parameters with kernel 3 and 63.0 M with kernel 5 (its README), exactly these counts
    less the official network's 1-element dummy tensor. MONAI's factory network has 52,480 fewer: its down blocks
    expand by the ratio of the stage they leave, the official ones by the ratio of the stage they enter."""
    net = mednext(out_channels=2, kernel_size=kernel_size, deep_supervision=True)
    assert sum(p.numel() for p in net.parameters()) == official
    assert [b.conv2.out_channels // b.conv2.in_channels for b in net.down_blocks] == [4, 8, 8, 8]


def test_deep_supervision_outputs_five_resolutions_in_training_and_one_in_evaluation():
    net = mednext(out_channels=3, init_filters=4, blocks_down=(1, 1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1, 1))
    x = torch.randn(1, 1, 32, 32, 16)
    outs = net.train()(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(32 // 2**i, 32 // 2**i, 16 // 2**i) for i in range(5)]
    assert net.eval()(x).shape == (1, 3, 32, 32, 16)


def test_deep_supervision_loss_weights_the_resolutions_one_half_quarter_normalised():
    """Each output is scored against the target resized to it (nearest neighbour), weighted 1, 1/2, 1/4 ...
    normalised to sum to 1: the same figure computed here by hand."""
    torch.manual_seed(0)
    inner = torch.nn.MSELoss()
    target = torch.randint(0, 3, (1, 1, 16, 16, 8)).float()
    outs = [torch.randn(1, 1, 16 // 2**i, 16 // 2**i, 8 // 2**i) for i in range(3)]
    by_hand = sum(
        w * inner(o, torch.nn.functional.interpolate(target, size=o.shape[2:], mode="nearest-exact"))
        for w, o in zip([4 / 7, 2 / 7, 1 / 7], outs)
    )
    got = StackedDeepSupervisionLoss(inner)(tuple(outs), target)
    assert torch.allclose(got, by_hand)
    assert torch.allclose(StackedDeepSupervisionLoss(inner)(outs[0], target), inner(outs[0], target))
