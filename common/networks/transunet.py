"""TransUNet (R50-ViT-B/16), rebuilt layer for layer after the official PyTorch model.

Reference: Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation"
(arXiv:2102.04306); official code in the repository Beckschen/TransUNet, files
``networks/vit_seg_modeling.py``, ``networks/vit_seg_modeling_resnet_skip.py`` and
``networks/vit_seg_configs.py`` (config ``R50-ViT-B_16`` with ``patches.grid = img_size // 16``, as
``train.py`` sets it). Written from those facts, not copied.

Architecture (defaults = official configuration, 224 x 224 input):

* hybrid encoder, BiT-style pre-activation ResNetV2 with weight-standardised convolutions:
  root 7x7/2 conv (3 -> 64) + GroupNorm(32, eps 1e-6) + ReLU (skip 64 @ H/2), max-pool 3x3/2 *without*
  padding (H/2 -> H/4 - 1), three stages of bottleneck units (3, 4, 9) with widths 256, 512, 1024
  (stage 1 output zero-padded at the bottom/right to H/4 for the skip 256 @ H/4, stage 2 gives the
  skip 512 @ H/8, stage 3 gives 1024 @ H/16);
* patch embedding: 1x1 conv 1024 -> 768 on the H/16 x W/16 grid, learned position embeddings
  (196 for 224 x 224, initialised to zero), dropout;
* ViT-B: 12 pre-norm blocks (LayerNorm eps 1e-6, 12-head self-attention with biased q/k/v, MLP 3072 with
  exact GELU), final LayerNorm eps 1e-6;
* decoder "CUP": 3x3 conv-BN-ReLU 768 -> 512, four blocks (bilinear x2 with ``align_corners=True``,
  concatenate the skip, two 3x3 conv-BN-ReLU), channels (256, 128, 64, 16), skips used by the first
  ``n_skip`` = 3 blocks; segmentation head 3x3 conv 16 -> classes (with bias).

The official code's own quirks are reproduced on purpose: the projection shortcut's normalisation is
``GroupNorm(C, C)`` with the PyTorch default eps 1e-5 (the JAX original uses 32 groups, eps 1e-6), the
weight standardisation divides by ``sqrt(var + 1e-5)`` (JAX: ``std + 1e-5``) and the max-pool has no
padding (JAX: ``SAME``), which is why the stage-1 skip needs the zero padding.

Weights (through :func:`common.weights.load_weights`): ``convert_imagenet_npz`` reads the official ImageNet-21k
``R50+ViT-B_16.npz`` (Flax key names, HWIO kernels) into the encoder, mapping exactly the keys the official
``load_from`` methods read; ``convert_official_state_dict`` reads a full checkpoint saved by the official training
script.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import Convolution, MLPBlock, SABlock

from ..weights import Conversion, renamed
from .slice_input import check_slice_input, first_layer_channels, gray_to_rgb

__all__ = [
    "TransUNet",
    "CONVERTERS",
    "convert_imagenet_npz",
    "convert_official_state_dict",
    "official_key_to_ours",
    "transunet_npz_spec",
    "IGNORED_NPZ_PREFIXES",
]

# Official geometry: the hybrid ResNet reduces the input by 16, the patch embedding is 1x1 on that grid.
_ENCODER_STRIDE = 16
# Keys of the ImageNet-21k checkpoint that the official ``load_from`` never reads (classification head,
# pre-logits layer, class token): reported as ignored, never treated as errors.
IGNORED_NPZ_PREFIXES: tuple[str, ...] = ("head/", "pre_logits/")
IGNORED_NPZ_KEYS: tuple[str, ...] = ("cls",)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Return ``value`` as a pair of ints (an int is used for both spatial dimensions)."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}.")
    return pair  # type: ignore[return-value]


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation, as the official ResNetV2.

    Each output filter is normalised to zero mean and unit (biased) variance: ``(w - mean) / sqrt(var + 1e-5)``.
    MONAI has no weight-standardised convolution, hence this module.
    """

    eps: float = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with the standardised weight."""
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """Bottleneck unit of the official ResNetV2 (named "pre-activation", but normalised after each conv).

    ``conv1`` 1x1 -> GN -> ReLU -> ``conv2`` 3x3 (carries the stride) -> GN -> ReLU -> ``conv3`` 1x1 -> GN,
    plus the shortcut (1x1 strided conv + ``GroupNorm(C, C)`` when the shape changes), then ReLU.
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        """
        Args:
            cin: input channels.
            cout: output channels.
            cmid: bottleneck channels.
            stride: stride of the 3x3 conv and of the projection shortcut.
        """
        super().__init__()
        self.conv1 = StdConv2d(cin, cmid, kernel_size=1, bias=False)
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, kernel_size=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.relu = nn.ReLU()
        self.has_projection = stride != 1 or cin != cout
        self.downsample: nn.Module
        self.gn_proj: nn.Module
        if self.has_projection:
            self.downsample = StdConv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
            # Official quirk kept: one group per channel and the default eps (1e-5).
            self.gn_proj = nn.GroupNorm(cout, cout)
        else:
            self.downsample = nn.Identity()
            self.gn_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit."""
        shortcut = self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(shortcut + y)


class ResNetV2Skip(nn.Module):
    """The hybrid encoder's CNN: root + three stages, returning the deepest map and the skip features.

    Widths for ``width = 64 * width_factor``: root ``width`` @ H/2, stage outputs ``4w`` @ H/4, ``8w`` @ H/8,
    ``16w`` @ H/16.
    """

    def __init__(
        self, in_channels: int, block_units: Sequence[int], width_factor: float, img_size: tuple[int, int]
    ) -> None:
        """
        Args:
            in_channels: channels the root convolution takes (3 for the pretrained weights).
            block_units: number of bottleneck units in each of the three stages.
            width_factor: multiplier of the base width 64.
            img_size: the (H, W) input size; fixes the skip padding (kept static so tracing sees constants).
        """
        super().__init__()
        width = int(64 * width_factor)
        self.width = width
        self.root_conv = StdConv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.root_gn = nn.GroupNorm(32, width, eps=1e-6)
        self.relu = nn.ReLU()
        # Official: no padding here, so 224 -> 112 -> 55 (the stage-1 skip is then padded to 56).
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        stages = []
        cin = width
        for index, n_units in enumerate(block_units):
            cmid = width * 2**index
            cout = cmid * 4
            stride = 1 if index == 0 else 2
            units = [PreActBottleneck(cin, cout, cmid, stride)]
            units += [PreActBottleneck(cout, cout, cmid, 1) for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        # Skip channels, deepest first: stage-2 output, stage-1 output, root.
        self.skip_channels = (width * 8, width * 4, width)
        # Official rule: the skip of stage i (0-based, all but the last stage) must be in_size / 4 / (i + 1);
        # a smaller map is zero-padded at the bottom/right. Only stage 1 is short, by one pixel, because the
        # max-pool has no padding (224: 112 -> 55 -> padded to 56). Computed here from the fixed input size.
        self.skip_pads: list[tuple[int, int]] = []
        size = [(d + 2 * 3 - 7) // 2 + 1 for d in img_size]  # root conv 7x7/2, padding 3
        size = [(d - 3) // 2 + 1 for d in size]  # max-pool 3x3/2, no padding
        for index in range(len(block_units) - 1):
            if index > 0:  # 3x3 stride-2 conv, padding 1
                size = [(d + 2 - 3) // 2 + 1 for d in size]
            target = [d // (4 * (index + 1)) for d in img_size]
            pads = (target[0] - size[0], target[1] - size[1])
            if min(pads) < 0 or max(pads) > 2:
                raise ValueError(f"unexpected ResNet skip size {size} for target {target} (img_size {img_size}).")
            self.skip_pads.append(pads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the H/16 feature map and the skips ``[8w @ H/8, 4w @ H/4, w @ H/2]`` for the built size."""
        x = self.relu(self.root_gn(self.root_conv(x)))
        skips = [x]
        x = self.pool(x)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < len(self.skip_pads):
                pad_h, pad_w = self.skip_pads[index]
                skips.append(F.pad(x, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else x)
        return x, skips[::-1]


class ViTBlock(nn.Module):
    """Pre-norm transformer block of the official encoder.

    Not MONAI's ``TransformerBlock``: it uses LayerNorm eps 1e-5, one dropout rate for attention and MLP,
    and always creates an extra ``norm_cross_attn`` LayerNorm (parameters the official model does not have).
    Its parts do match exactly and are used: ``SABlock`` with separate biased q/k/v projections (head-major
    layout ``(heads, head_dim)`` like the official ``transpose_for_scores``; scale ``head_dim ** -0.5``;
    attention-weight and output dropout both at the attention dropout rate, 0.0 officially), and
    ``MLPBlock`` in "vit" mode (Linear, exact GELU, dropout, Linear, dropout).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_dim: int, dropout_rate: float, attention_dropout_rate: float
    ) -> None:
        """
        Args:
            hidden_size: token dimension.
            num_heads: attention heads.
            mlp_dim: hidden width of the MLP.
            dropout_rate: dropout after the MLP's activation and after its output.
            attention_dropout_rate: dropout on the attention weights and after the output projection.
        """
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = SABlock(
            hidden_size,
            num_heads,
            dropout_rate=attention_dropout_rate,
            qkv_bias=True,
            use_combined_linear=False,
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate=dropout_rate, act="GELU", dropout_mode="vit")
        # Official MLP initialisation: Xavier-uniform weights, N(0, 1e-6) biases.
        for layer in (self.mlp.linear1, self.mlp.linear2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention and MLP, each with a residual connection."""
        x = x + self.attn(self.attention_norm(x))
        return x + self.mlp(self.ffn_norm(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> Convolution:
    """3x3 conv (no bias) -> BatchNorm -> ReLU; MONAI's ``Convolution`` reproduces the official ``Conv2dReLU``."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=3,
        strides=1,
        padding=1,
        act="RELU",
        norm="BATCH",
        bias=False,
    )


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (``align_corners=True``, as ``nn.UpsamplingBilinear2d``), optional skip
    concatenation, then two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        """
        Args:
            in_channels: channels coming from the previous decoder stage.
            out_channels: channels produced.
            skip_channels: channels of the concatenated skip (0: no skip).
        """
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample ``x``, append ``skip`` along channels if given, convolve twice."""
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """TransUNet with the R50-ViT-B/16 hybrid encoder (official "R50-ViT-B_16" configuration by default).

    Input ``(B, in_channels, H, W)`` with ``(H, W) == img_size`` -> logits ``(B, out_channels, H, W)``.

    Channels: ``in_channels`` 1 or 3 use the 3-channel root convolution (so that the ImageNet weights fit);
    a 1-channel input is repeated to 3 channels as in the official ``forward``. Any other ``in_channels``
    builds a root convolution with that many input channels (no repetition); such a model cannot take the
    pretrained ``conv_root`` kernel (loading the npz then fails).

    Sizes: ``img_size`` (an int or an ``(H, W)`` pair) must be a multiple of 16 in each dimension; the
    position embeddings are learned for exactly ``(H/16) * (W/16)`` tokens, so the network takes only
    inputs of exactly ``img_size`` (other sizes raise ``ValueError``). The official code is square-only;
    non-square sizes are an extension that reduces to the official behaviour for squares.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int | Sequence[int] = 224,
        block_units: Sequence[int] = (3, 4, 9),
        width_factor: float = 1.0,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        decoder_head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        n_skip: int = 3,
    ) -> None:
        """
        Args:
            in_channels: input channels (1 is repeated to 3, see the class docstring).
            out_channels: number of classes (9 for Synapse: background + 8 organs, 14 for BTCV).
            img_size: input size, int or (H, W), multiple of 16.
            block_units: bottleneck units in the three ResNet stages (official (3, 4, 9)).
            width_factor: ResNet width multiplier (base width 64; ``64 * width_factor`` must be a
                multiple of 32 because of GroupNorm(32)).
            hidden_size: transformer token dimension (768).
            num_layers: transformer blocks (12).
            num_heads: attention heads (12).
            mlp_dim: MLP width (3072).
            dropout_rate: embedding and MLP dropout (0.1).
            attention_dropout_rate: attention-weight and attention-output dropout (0.0).
            decoder_head_channels: output channels of the 3x3 conv after the transformer (512).
            decoder_channels: output channels of the four decoder blocks ((256, 128, 64, 16)).
            n_skip: how many of the three skips are used, by the first decoder blocks (3).
        """
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        img_hw = _pair(img_size, "img_size")
        if any(s <= 0 or s % _ENCODER_STRIDE for s in img_hw):
            raise ValueError(f"img_size must be positive multiples of {_ENCODER_STRIDE}, got {img_hw}.")
        block_units = tuple(int(b) for b in block_units)
        if len(block_units) != 3 or min(block_units) < 1:
            raise ValueError(f"block_units must be three positive ints (official (3, 4, 9)), got {block_units}.")
        width = int(64 * width_factor)
        if width < 32 or width % 32:
            raise ValueError(f"64 * width_factor must be a positive multiple of 32 (GroupNorm 32), got {width}.")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels must have 4 entries (x16 upsampling), got {decoder_channels}.")
        if not 0 <= n_skip <= 3:
            raise ValueError(f"n_skip must be in 0..3, got {n_skip}.")
        for name, rate in (("dropout_rate", dropout_rate), ("attention_dropout_rate", attention_dropout_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}.")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.img_size = img_hw
        self.grid_size = (img_hw[0] // _ENCODER_STRIDE, img_hw[1] // _ENCODER_STRIDE)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.n_skip = n_skip

        # --- hybrid encoder -------------------------------------------------------------------------------
        root_channels = first_layer_channels(in_channels)
        self.resnet = ResNetV2Skip(root_channels, block_units, width_factor, img_hw)
        # The official patch size is img // 16 // grid = 1 with grid = img // 16: a 1x1 convolution.
        self.patch_embed = nn.Conv2d(self.resnet.out_channels, hidden_size, kernel_size=1, stride=1)
        n_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        self.embed_dropout = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            ViTBlock(hidden_size, num_heads, mlp_dim, dropout_rate, attention_dropout_rate) for _ in range(num_layers)
        )
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

        # --- decoder (CUP) --------------------------------------------------------------------------------
        self.conv_more = _conv_bn_relu(hidden_size, decoder_head_channels)
        skip_channels = [c if i < n_skip else 0 for i, c in enumerate(self.resnet.skip_channels)] + [0]
        in_chs = (decoder_head_channels,) + decoder_channels[:-1]
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(cin, cout, skip) for cin, cout, skip in zip(in_chs, decoder_channels, skip_channels)
        )
        self.seg_head = nn.Conv2d(decoder_channels[-1], out_channels, kernel_size=3, padding=1)

    def encoder_parameter_names(self) -> list[str]:
        """Names of the parameters that the pretrained npz provides (ResNet, embedding, transformer)."""
        prefixes = ("resnet.", "patch_embed.", "pos_embed", "blocks.", "encoder_norm.")
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, out_channels, H, W)``."""
        check_slice_input(
            x,
            "TransUNet",
            self.in_channels,
            self.img_size,
            f"its position embeddings fit a {self.grid_size[0]}x{self.grid_size[1]} grid",
        )
        x = gray_to_rgb(x, self.in_channels)
        x, skips = self.resnet(x)
        tokens = rearrange(self.patch_embed(x), "b c h w -> b (h w) c")
        tokens = self.embed_dropout(tokens + self.pos_embed)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.encoder_norm(tokens)
        x = rearrange(tokens, "b (h w) c -> b c h w", h=self.grid_size[0], w=self.grid_size[1])
        x = self.conv_more(x)
        for index, block in enumerate(self.decoder_blocks):
            x = block(x, skips[index] if index < self.n_skip else None)
        return self.seg_head(x)


# ---------------------------------------------------------------------------------------------------------
# Pretrained ImageNet-21k encoder (official R50+ViT-B_16.npz)
# ---------------------------------------------------------------------------------------------------------
# Flax module names inside each transformer block, as the official loader reads them.
_ATTN = "MultiHeadDotProductAttention_1"
_MLP = "MlpBlock_3"
_LN_ATTN = "LayerNorm_0"
_LN_MLP = "LayerNorm_2"

_Converter = Callable[[np.ndarray], torch.Tensor]


def _hwio_to_oihw(array: np.ndarray) -> torch.Tensor:
    """Flax conv kernel (H, W, in, out) -> torch (out, in, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1)))


def _dense_to_linear(array: np.ndarray) -> torch.Tensor:
    """Flax Dense/DenseGeneral kernel (in..., out...) -> torch Linear weight (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(array)).reshape(-1, array.shape[-1]).t().contiguous()


def _flatten(array: np.ndarray) -> torch.Tensor:
    """Vectors (biases, norm scales) as 1-D tensors, as the official ``.view(-1)``."""
    return torch.from_numpy(np.ascontiguousarray(array)).reshape(-1)


def _attention_kernel(hidden: int) -> _Converter:
    """q/k/v kernels are (hidden, heads, head_dim), the out kernel (heads, head_dim, hidden); both -> (out, in)."""

    def convert(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).reshape(hidden, hidden).t().contiguous()

    return convert


def _encoder_key_map(model: TransUNet) -> dict[str, tuple[str, tuple[int, ...], _Converter]]:
    """Official npz key -> (our parameter name, official array shape, converter), position embedding excluded."""
    params = dict(model.named_parameters())
    hidden = model.hidden_size
    heads = model.num_heads
    head_dim = hidden // heads
    entries: dict[str, tuple[str, tuple[int, ...], _Converter]] = {}

    def conv(key: str, name: str) -> None:
        o, i, h, w = params[name].shape
        entries[key] = (name, (h, w, i, o), _hwio_to_oihw)

    def vector(key: str, name: str) -> None:
        entries[key] = (name, tuple(params[name].shape), _flatten)

    # ResNet root and stages: conv_root, gn_root, block{s}/unit{u}/{conv1..3, gn1..3, conv_proj, gn_proj}.
    conv("conv_root/kernel", "resnet.root_conv.weight")
    vector("gn_root/scale", "resnet.root_gn.weight")
    vector("gn_root/bias", "resnet.root_gn.bias")
    for s, stage in enumerate(model.resnet.stages):
        for u, unit in enumerate(stage):
            key = f"block{s + 1}/unit{u + 1}/"
            name = f"resnet.stages.{s}.{u}."
            for j in (1, 2, 3):
                conv(f"{key}conv{j}/kernel", f"{name}conv{j}.weight")
                vector(f"{key}gn{j}/scale", f"{name}gn{j}.weight")
                vector(f"{key}gn{j}/bias", f"{name}gn{j}.bias")
            if unit.has_projection:
                conv(f"{key}conv_proj/kernel", f"{name}downsample.weight")
                vector(f"{key}gn_proj/scale", f"{name}gn_proj.weight")
                vector(f"{key}gn_proj/bias", f"{name}gn_proj.bias")

    # Patch embedding: (1, 1, 1024, hidden) HWIO.
    conv("embedding/kernel", "patch_embed.weight")
    vector("embedding/bias", "patch_embed.bias")

    # Transformer blocks and the final norm.
    for i in range(len(model.blocks)):
        key = f"Transformer/encoderblock_{i}/"
        name = f"blocks.{i}."
        for flax_name, ours in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
            entries[f"{key}{_ATTN}/{flax_name}/kernel"] = (
                f"{name}attn.{ours}.weight",
                (hidden, heads, head_dim),
                _attention_kernel(hidden),
            )
            entries[f"{key}{_ATTN}/{flax_name}/bias"] = (f"{name}attn.{ours}.bias", (heads, head_dim), _flatten)
        entries[f"{key}{_ATTN}/out/kernel"] = (
            f"{name}attn.out_proj.weight",
            (heads, head_dim, hidden),
            _attention_kernel(hidden),
        )
        vector(f"{key}{_ATTN}/out/bias", f"{name}attn.out_proj.bias")
        for j, ours in ((0, "linear1"), (1, "linear2")):
            out_f, in_f = params[f"{name}mlp.{ours}.weight"].shape
            entries[f"{key}{_MLP}/Dense_{j}/kernel"] = (f"{name}mlp.{ours}.weight", (in_f, out_f), _dense_to_linear)
            vector(f"{key}{_MLP}/Dense_{j}/bias", f"{name}mlp.{ours}.bias")
        for flax_name, ours in ((_LN_ATTN, "attention_norm"), (_LN_MLP, "ffn_norm")):
            vector(f"{key}{flax_name}/scale", f"{name}{ours}.weight")
            vector(f"{key}{flax_name}/bias", f"{name}{ours}.bias")
    vector("Transformer/encoder_norm/scale", "encoder_norm.weight")
    vector("Transformer/encoder_norm/bias", "encoder_norm.bias")
    return entries


_POS_KEY = "Transformer/posembed_input/pos_embedding"


def transunet_npz_spec(model: TransUNet, pretrain_grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official npz that ``convert_imagenet_npz`` reads for ``model``.

    The position embedding is listed as ``(1, 1 + pretrain_grid ** 2, hidden)`` (class token first), the
    layout of the ImageNet-21k checkpoint (pretrained at 224, grid 14). Ignored keys are not listed.
    """
    spec = {key: shape for key, (_, shape, _) in _encoder_key_map(model).items()}
    spec[_POS_KEY] = (1, 1 + pretrain_grid**2, model.hidden_size)
    return spec


def _is_ignored(key: str) -> bool:
    """Whether the official loader never reads ``key`` (class token, pre-logits, classification head)."""
    return key in IGNORED_NPZ_KEYS or key.startswith(IGNORED_NPZ_PREFIXES)


def _shape_ok(array_shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Exact match, or a vector stored with extra singleton dims (the official loader flattens those)."""
    if array_shape == expected:
        return True
    return len(expected) == 1 and tuple(d for d in array_shape if d != 1) == expected


def _resize_pos_embed(posemb: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Official rule: copy if the token counts match, drop the class token if there is one more, otherwise
    drop the class token and resize the square grid with ``scipy.ndimage.zoom(order=1)``."""
    from scipy import ndimage  # local import: only the loader needs scipy

    n_new = grid[0] * grid[1]
    n_old = posemb.shape[1]
    if n_old == n_new:
        return posemb, "copied"
    if n_old - 1 == n_new:
        return posemb[:, 1:], "class token dropped"
    tokens = posemb[0, 1:]
    gs_old = int(math.isqrt(tokens.shape[0]))
    if gs_old * gs_old != tokens.shape[0]:
        raise ValueError(
            f"{_POS_KEY} has shape {posemb.shape}: after dropping the class token its {tokens.shape[0]} tokens "
            "do not form a square grid, so it cannot be resized."
        )
    zoom = (grid[0] / gs_old, grid[1] / gs_old, 1)
    resized = ndimage.zoom(tokens.reshape(gs_old, gs_old, -1), zoom, order=1)
    if resized.shape[:2] != grid:
        raise ValueError(f"position-embedding zoom gave grid {resized.shape[:2]}, expected {grid}.")
    return resized.reshape(1, n_new, -1), f"class token dropped, grid {gs_old}x{gs_old} -> {grid[0]}x{grid[1]}"


def convert_imagenet_npz(arrays: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """The official ImageNet-21k ``R50+ViT-B_16.npz`` (Flax names) as our encoder's tensors; ``None`` for another file.

    Reads exactly the keys of the official ``VisionTransformer.load_from`` / ``PreActBottleneck.load_from``:
    ``conv_root``, ``gn_root``, ``block{s}/unit{u}/...``, ``embedding``, ``Transformer/posembed_input``,
    ``Transformer/encoderblock_{i}/...``, ``Transformer/encoder_norm``. Kernels are converted HWIO -> OIHW,
    Dense kernels (in, out) -> (out, in), attention kernels (hidden, heads, head_dim) -> (out, in). The
    position embedding loses its class token and is resized (``scipy.ndimage.zoom``, order 1) to the model's
    grid when the token counts differ. ``cls``, ``head/*`` and ``pre_logits/*`` are ignored by design; the
    decoder and segmentation head keep their initialisation. Loaded through :func:`common.weights.load_weights`.
    """
    if "conv_root/kernel" not in arrays and "embedding/kernel" not in arrays:
        return None
    entries = _encoder_key_map(model)
    expected_keys = set(entries) | {_POS_KEY}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    ignored = {
        k: "not read by the official loader (classifier head, pre-logits, class token)"
        for k in arrays
        if _is_ignored(k)
    }
    unused = sorted(k for k in arrays if k not in expected_keys and not _is_ignored(k))
    problems = [f"npz key {k!r} is missing" for k in sorted(expected_keys - set(arrays))]
    for key in sorted(set(entries) & set(arrays)):
        _, shape, _ = entries[key]
        if not _shape_ok(tuple(arrays[key].shape), shape):
            problems.append(f"{key}: file shape {tuple(arrays[key].shape)}, model expects {shape}")
    pos = arrays.get(_POS_KEY)
    if pos is not None and (pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != model.hidden_size):
        problems.append(f"{_POS_KEY}: file shape {tuple(pos.shape)}, model expects (1, N, {model.hidden_size})")
    if problems and "conv_root/kernel" in arrays and model.in_channels not in (1, 3):
        problems.append(
            f"the pretrained root convolution takes 3 channels: build the model with in_channels 1 or 3, not {model.in_channels}"
        )
    tensors: dict[str, torch.Tensor] = {}
    notes: dict = {}
    if not problems:
        params = dict(model.named_parameters())
        for key, (name, _, conv) in entries.items():
            tensors[name] = conv(arrays[key]).reshape(params[name].shape)
        try:
            pos_array, notes["pos_embed"] = _resize_pos_embed(pos, model.grid_size)  # type: ignore[arg-type]
        except ValueError as e:
            problems.append(str(e))
        else:
            tensors["pos_embed"] = torch.from_numpy(np.ascontiguousarray(pos_array))
    return Conversion(
        "TransUNet ImageNet-21k npz",
        tensors,
        ignored=ignored,
        unused=unused,
        problems=problems,
        partial=True,
        required=model.encoder_parameter_names(),
        notes=notes,
    )


# official ``VisionTransformer`` (networks/vit_seg_modeling.py) module paths -> ours; tensors keep their layout
_OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    (r"transformer\.embeddings\.position_embeddings$", "pos_embed"),
    (r"transformer\.embeddings\.hybrid_model\.root\.conv\.", "resnet.root_conv."),
    (r"transformer\.embeddings\.hybrid_model\.root\.gn\.", "resnet.root_gn."),
    (r"transformer\.embeddings\.hybrid_model\.body\.block(\d+)\.unit(\d+)\.", "resnet.stages.{0}.{1}."),
    (r"transformer\.embeddings\.patch_embeddings\.", "patch_embed."),
    (r"transformer\.encoder\.layer\.(\d+)\.attn\.query\.", "blocks.{0!s}.attn.to_q."),
    (r"transformer\.encoder\.layer\.(\d+)\.attn\.key\.", "blocks.{0!s}.attn.to_k."),
    (r"transformer\.encoder\.layer\.(\d+)\.attn\.value\.", "blocks.{0!s}.attn.to_v."),
    (r"transformer\.encoder\.layer\.(\d+)\.attn\.out\.", "blocks.{0!s}.attn.out_proj."),
    (r"transformer\.encoder\.layer\.(\d+)\.ffn\.fc(\d)\.", "blocks.{0!s}.mlp.linear{1!s}."),
    (r"transformer\.encoder\.layer\.(\d+)\.(attention_norm|ffn_norm)\.", "blocks.{0!s}.{1!s}."),
    (r"transformer\.encoder\.encoder_norm\.", "encoder_norm."),
    (r"decoder\.conv_more\.0\.", "conv_more.conv."),
    (r"decoder\.conv_more\.1\.", "conv_more.adn.N."),
    (r"decoder\.blocks\.(\d+)\.conv(\d)\.0\.", "decoder_blocks.{0!s}.conv{1!s}.conv."),
    (r"decoder\.blocks\.(\d+)\.conv(\d)\.1\.", "decoder_blocks.{0!s}.conv{1!s}.adn.N."),
    (r"segmentation_head\.0\.", "seg_head."),
)


def official_key_to_ours(key: str) -> str | None:
    """Our name for a key of the official ``VisionTransformer.state_dict()`` (``None`` if it has none)."""
    for pattern, replacement in _OFFICIAL_RULES:
        m = re.match(pattern, key)
        if m is not None:
            groups = m.groups()
            if replacement.startswith("resnet.stages"):  # the official block / unit numbers start at 1
                groups = tuple(str(int(g) - 1) for g in groups)
            return replacement.format(*groups) + key[m.end() :]
    return None


def convert_official_state_dict(state: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """A full checkpoint of the official TransUNet training script (``torch.save(model.state_dict())`` of its
    ``VisionTransformer``, key layout of Beckschen/TransUNet at commit 02ef001) in our names; ``None`` for
    another file. Every key must find its place and every tensor of ours must receive one."""
    if not any(k.startswith("transformer.embeddings.") for k in state):
        return None
    return renamed(state, official_key_to_ours, "official TransUNet checkpoint")


CONVERTERS = (convert_official_state_dict, convert_imagenet_npz)
