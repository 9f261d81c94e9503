"""MedNeXt (Roy et al., MICCAI 2023) as the official code builds it, from MONAI's ``MedNeXt`` and its blocks.

MONAI's ``MedNeXt`` builds down-sampling block ``i`` with the expansion ratio of encoder stage ``i``; the official
``MedNeXtV1`` (MIC-DKFZ/MedNeXt) gives it the ratio of the stage it leads into (``exp_r[i + 1]``: the next encoder
stage, or the bottleneck after the last one) and global response normalisation, when on, on down blocks 1..3.
For MedNeXt-L that is 4, 8, 8, 8 instead of 3, 4, 8, 8, i.e. 52,480 parameters more (61,781,194 for k3 with deep
supervision, the official count without its 1-element dummy tensor). :func:`mednext` rebuilds those four blocks
with MONAI's own ``MedNeXtDownBlock``; every other module is MONAI's, with MONAI's names.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks.mednext_block import MedNeXtDownBlock
from monai.networks.nets import MedNeXt
from torch import nn

__all__ = ["mednext"]


def mednext(
    in_channels: int = 1,
    out_channels: int = 14,
    init_filters: int = 32,
    encoder_expansion_ratio: Sequence[int] = (3, 4, 8, 8),
    decoder_expansion_ratio: Sequence[int] = (8, 8, 4, 3),
    bottleneck_expansion_ratio: int = 8,
    blocks_down: Sequence[int] = (3, 4, 8, 8),
    blocks_bottleneck: int = 8,
    blocks_up: Sequence[int] = (8, 8, 4, 3),
    kernel_size: int = 3,
    deep_supervision: bool = True,
    use_residual_connection: bool = True,
    norm_type: str = "group",
    global_resp_norm: bool = False,
    spatial_dims: int = 3,
) -> MedNeXt:
    """MONAI's ``MedNeXt`` with the official down-sampling blocks. The defaults are MedNeXt-L (Table 1 of the
    paper; ``create_mednextv1_large`` of the official code) with kernel 3; ``kernel_size=5`` gives L k5. With
    ``deep_supervision`` the network returns, in training mode, the full-resolution scores and those at 1/2 ..
    1/16 (a tuple); in evaluation mode the full-resolution scores alone. Inputs must be divisible by 16."""
    net = MedNeXt(
        spatial_dims=spatial_dims,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        encoder_expansion_ratio=encoder_expansion_ratio,
        decoder_expansion_ratio=decoder_expansion_ratio,
        bottleneck_expansion_ratio=bottleneck_expansion_ratio,
        kernel_size=kernel_size,
        deep_supervision=deep_supervision,
        use_residual_connection=use_residual_connection,
        blocks_down=blocks_down,
        blocks_bottleneck=blocks_bottleneck,
        blocks_up=blocks_up,
        norm_type=norm_type,
        global_resp_norm=global_resp_norm,
    )
    stages = len(blocks_down)
    ratios = (
        list(encoder_expansion_ratio)
        if not isinstance(encoder_expansion_ratio, int)
        else [encoder_expansion_ratio] * stages
    )
    following = ratios[1:] + [bottleneck_expansion_ratio]
    net.down_blocks = nn.ModuleList(
        MedNeXtDownBlock(
            in_channels=init_filters * 2**i,
            out_channels=init_filters * 2 ** (i + 1),
            expansion_ratio=following[i],
            kernel_size=kernel_size,
            use_residual_connection=use_residual_connection,
            norm_type=norm_type,
            dim=f"{spatial_dims}d",
            global_resp_norm=global_resp_norm and i > 0,
        )
        for i in range(stages)
    )
    return net
