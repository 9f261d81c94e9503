"""MedNeXt (Roy et al., MICCAI 2023) as the official code builds it, from MONAI's ``MedNeXt`` and its blocks.

MONAI's ``MedNeXt`` builds down-sampling block ``i`` with the expansion ratio of encoder stage ``i``; the official
``MedNeXtV1`` (MIC-DKFZ/MedNeXt) gives it the ratio of the stage it leads into (``exp_r[i + 1]``: the next encoder
stage, or the bottleneck after the last one) and global response normalisation, when on, on down blocks 1..3.
For MedNeXt-L that is 4, 8, 8, 8 instead of 3, 4, 8, 8, i.e. 52,480 parameters more (61,781,194 for k3 with deep
supervision, the official count without its 1-element dummy tensor). :func:`mednext` rebuilds those four blocks
with MONAI's own ``MedNeXtDownBlock``; every other module is MONAI's, with MONAI's names.

Weights (``CONVERTERS``, used by ``common.weights`` for ``--pretrained_path`` and the inference checkpoint): the
official code's state dict loads as it is (its names mapped to MONAI's, its dummy tensor ignored), and, for
training only, a kernel-3 network initialises a kernel-5 one by UpKern (the paper's initialisation: every
depthwise kernel resized trilinearly from 3^3 to 5^3, everything else copied).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks.mednext_block import MedNeXtDownBlock
from monai.networks.nets import MedNeXt
from torch import nn

from ..weights import Conversion, renamed

__all__ = ["CONVERTERS", "mednext", "convert_official", "convert_upkern"]


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


# official MedNextV1 module names -> MONAI's (the decoder counts up from the bottleneck in MONAI, down in the
# official code; the deep-supervision heads likewise)
_OFFICIAL = (
    (re.compile(r"^enc_block_(\d)\."), lambda m: f"enc_stages.{m[1]}."),
    (re.compile(r"^down_(\d)\."), lambda m: f"down_blocks.{m[1]}."),
    (re.compile(r"^up_(\d)\."), lambda m: f"up_blocks.{3 - int(m[1])}."),
    (re.compile(r"^dec_block_(\d)\."), lambda m: f"dec_stages.{3 - int(m[1])}."),
    (re.compile(r"^out_([1-4])\."), lambda m: f"out_blocks.{4 - int(m[1])}."),
)


def _official_name(key: str) -> str | None:
    key = key[len("module.") :] if key.startswith("module.") else key
    if key == "dummy_tensor":
        return None
    for rx, to in _OFFICIAL:
        m = rx.match(key)
        if m:
            return to(m) + key[m.end() :]
    return key  # stem, bottleneck, out_0: the same names


def convert_official(state: Mapping[str, object], network: torch.nn.Module) -> Conversion | None:
    """A state dict of the official MedNeXt code (``enc_block_0.*``, ``down_0.*``, ``dec_block_3.*``, ...);
    ``None`` for another layout."""
    if not any(re.match(r"^(module\.)?(enc_block_|down_|dec_block_)\d\.", k) for k in state):
        return None
    conv = renamed(
        {k: v for k, v in state.items() if not k.endswith("dummy_tensor")}, _official_name, "official MedNeXt"
    )
    conv.ignored = {
        k: "the official code's placeholder for gradient checkpointing" for k in state if k.endswith("dummy_tensor")
    }
    return conv


def convert_upkern(state: Mapping[str, object], network: torch.nn.Module) -> Conversion | None:
    """UpKern (Roy et al., 2023): weights of this network with a smaller kernel (every key the same, only the
    kernel sizes of the convolutions differ) resized trilinearly to this network's kernel; for initialising
    training only (``Conversion.finetune_only``). ``None`` for anything else."""
    ours = network.state_dict()
    if set(state) != set(ours):
        return None
    tensors, resized = {}, []
    for key, value in state.items():
        t = torch.as_tensor(value)
        want = tuple(ours[key].shape)
        if tuple(t.shape) != want:
            if t.ndim != 5 or t.shape[:2] != want[:2] or len(set(t.shape[2:])) != 1 or len(set(want[2:])) != 1:
                return None  # not only a kernel size: another configuration
            t = torch.nn.functional.interpolate(t.float(), size=want[2:], mode="trilinear").to(t.dtype)
            resized.append(key)
        tensors[key] = t
    if not resized:
        return None
    return Conversion(
        "MedNeXt of another kernel size, resized (UpKern)",
        tensors,
        finetune_only=True,
        notes={"upkern_resized": len(resized)},
    )


CONVERTERS = (convert_official, convert_upkern)
