"""MT-UNet (Mixed Transformer U-Net, Wang et al., ICASSP 2022) for 2D slices.

A layer-for-layer re-implementation of the official model (github.com/Dootmaan/MT-UNet,
``model/MTUNet.py``): same layers, same computation, same parameter count (79,075,389 with 9
classes at the paper configuration), and a converter for the official state dicts
(:func:`convert_official_state_dict`, used by :func:`common.weights.load_weights`). Written independently, with these differences in how
it computes (never in what it computes):

* no hard-coded ``.cuda()``: runs on any device, in any floating dtype and under autocast;
* the Gaussian-weighted axial attention is vectorised (two batched matmuls and two softmaxes per
  module) instead of the official Python double loop over rows and columns;
* tokens travel between the transformer modules channels-last as ``(B, H, W, C)`` instead of
  ``(B, N, C)``, so no square root of ``N`` is ever taken;
* the 4x bilinear upsample of the global branch is the window size (equal to the official 4 at the
  official window size 4), so other window sizes work for tiny test configurations;
* the input size is fixed at construction (``img_size``, any multiple of 32; the position embedding
  has ``(img_size / 8) ** 2`` learned entries) and checked at the start of ``forward``.

Layout, top to bottom (paper configuration, 224 x 224 input, 9 classes)::

    CNN encoder   64@224, maxpool, 128@112, maxpool, 256@56, maxpool -> 1x1 conv 256@28 + pos. embedding
    MTM stage     2 x MTM(256) @28  -> skip, conv 2x2/2 -> 512@14
    MTM stage     2 x MTM(512) @14  -> skip, conv 2x2/2 -> 1024@7
    bottleneck    2 x MTM(1024) @7
    decoder       convT 1024->512 @14, concat skip (1024), 1x1 conv -> 512, 2 x MTM(512)
    decoder       convT 512->256 @28, concat skip (512), 2 x MTM(512)
    CNN decoder   convT 512->256 @56, concat, double conv 256; ... 128@112; ... 64@224; 1x1 conv -> classes

MTM (mixed transformer module): ``x = x + LGG-SA(LN(x)); x = x + EA(LN(x))`` (no MLP).
LGG-SA: multi-head self-attention inside 4x4 windows, one aggregated token per window, single-head
axial (row + column) attention between window tokens with a learned Gaussian distance penalty,
bilinear upsample back to pixels, 1x1 conv fusing both branches. EA: external attention with
32 heads and a memory of 64 units (double normalisation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import Convolution
from torch import nn

from ..weights import Conversion, renamed
from .slice_input import check_slice_input, first_layer_channels, gray_to_rgb, static_dims

__all__ = [
    "ExternalAttention",
    "GaussianAxialAttention",
    "LocalGlobalGaussianAttention",
    "MTUNet",
    "MixedTransformerModule",
    "OFFICIAL_MTM_STAGES",
    "WindowAttention",
    "WindowTokenAggregation",
    "build_mtm_stage",
    "convert_official_state_dict",
    "CONVERTERS",
    "official_key_to_ours",
    "pad_to_window_multiple",
]


# --------------------------------------------------------------------------------------------
# CNN parts
# --------------------------------------------------------------------------------------------
def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    relu: bool = True,
    bias: bool = False,
) -> Convolution:
    """Conv2d -> BatchNorm2d (-> ReLU).

    MONAI's ``Convolution`` with ``norm="BATCH"`` is exactly the official conv-BN(-ReLU) unit
    (default BatchNorm settings, non-inplace ReLU); the padding is passed explicitly because the
    2x2 stride-2 downsampling convs use none.
    """
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        kernel_size=kernel_size,
        padding=padding,
        act="RELU" if relu else None,
        norm="BATCH",
        bias=bias,
    )


class ResidualDoubleConv(nn.Module):
    """The official CNN block: ``h = BN(conv3(ReLU(BN(conv3(x)))))``, ``y = ReLU(h + BN(conv1x1(h)))``.

    The shortcut starts after the two 3x3 convs (not at the block input), so MONAI's
    ``UnetResBlock`` (shortcut from the input) does not match; built from two MONAI conv units and a
    1x1 conv (with bias) + BN unit instead.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 3, padding=1)
        self.conv2 = _conv_bn(out_channels, out_channels, 3, padding=1, relu=False)
        self.refine = _conv_bn(out_channels, out_channels, 1, relu=False, bias=True)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv2(self.conv1(x))
        return self.act(h + self.refine(h))


class CNNDecoder(nn.Module):
    """Three steps of: 2x2 transposed conv (x2), concatenate ``[skip, up]``, ResidualDoubleConv."""

    def __init__(self, in_channels: int, stem_channels: Sequence[int]) -> None:
        super().__init__()
        chans = list(stem_channels)[::-1]  # e.g. 256, 128, 64
        ins = [in_channels, *chans[:-1]]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(i, o, 2, stride=2) for i, o in zip(ins, chans))
        self.blocks = nn.ModuleList(ResidualDoubleConv(2 * c, c) for c in chans)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """``skips`` are the CNN encoder outputs, deepest first."""
        for up, block, skip in zip(self.ups, self.blocks, skips):
            x = block(torch.cat((skip, up(x)), dim=1))
        return x


# --------------------------------------------------------------------------------------------
# LGG-SA: local window attention, window-token aggregation, Gaussian-weighted axial attention
# --------------------------------------------------------------------------------------------
def pad_to_window_multiple(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Pad a channels-last map ``(B, H, W, C)`` to multiples of ``window_size`` the official way.

    The official code pads with zeros, except the bottom-right ``pad_h x pad_w`` corner, which
    receives a copy of the last ``pad_h`` rows x ``pad_w`` columns of the input (this happens at the
    14x14 and 7x7 stages of the paper model). Reproduced exactly so that official weights behave
    the same. Needs ``pad <= size`` (checked when the network is built).
    """
    h, w = static_dims(x, (1, 2))
    pad_h, pad_w = (-h) % window_size, (-w) % window_size
    if pad_h == 0 and pad_w == 0:
        return x
    if pad_h > h or pad_w > w:
        raise ValueError(
            f"a {h}x{w} map cannot be padded the official way to multiples of window_size={window_size} "
            f"(padding {pad_h}x{pad_w} exceeds the map)"
        )
    top = F.pad(x, (0, 0, 0, pad_w))  # zeros right of the map
    corner = x[:, h - pad_h :, w - pad_w :, :]
    bottom = F.pad(corner, (0, 0, w, 0))  # zeros left of the corner block
    return torch.cat((top, bottom), dim=1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window: ``(N_windows, T, C) -> (N_windows, T, C)``.

    MONAI's ``SABlock`` computes the same thing but with one fused qkv projection (a different state
    dict layout); separate query/key/value projections keep the official layout.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention (scale ``head_dim ** -0.5``) over the ``T`` tokens of a window."""
        t, c = static_dims(x, (1, 2))
        q, k, v = (
            layer(x).view(-1, t, self.num_heads, c // self.num_heads).transpose(1, 2)
            for layer in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d)
        return self.proj(out.transpose(1, 2).reshape(-1, t, c))


class WindowTokenAggregation(nn.Module):
    """One token per window: softmax weights over the window positions, predicted from the window mean."""

    def __init__(self, dim: int, window_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, window_size * window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N_windows, T, C) -> (N_windows, C)."""
        probs = self.score(x.mean(dim=1)).softmax(dim=-1)  # (N, T)
        return torch.matmul(probs.unsqueeze(1).to(x.dtype), x).squeeze(1)


class GaussianAxialAttention(nn.Module):
    """Single-head row + column attention with a learned Gaussian distance penalty (vectorised).

    For the token at ``(r, c)`` of a ``(B, H, W, C)`` grid::

        a_row[c'] = softmax_c'( q(r,c).k(r,c') - shift * (c' - c)^2 - bias )
        a_col[r'] = softmax_r'( q(r,c).k(r',c) - shift * (r' - r)^2 - bias )
        out(r, c) = sum_c' a_row[c'] v(r,c') + sum_r' a_col[r'] v(r',c)

    (no ``1/sqrt(d)`` scaling, two separately normalised softmaxes, as in the official code).
    The official code evaluates this position by position in a Python double loop; here all
    positions are done at once: the squared-distance matrices come from ``arange`` of the grid
    shape and broadcast against the ``(B, H, W, W)`` / ``(B, W, H, H)`` score tensors.

    ``proj`` exists in the official model (the axial branch shares the attention class of the
    window branch) but is never used in its forward; it is kept so the parameter count and state
    dict match. It receives no gradient (distributed training needs ``find_unused_parameters``).
    ``bias`` cancels inside both softmaxes, so its gradient is always zero (also as official).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)  # unused, see class docstring
        self.shift = nn.Parameter(torch.randn(1).abs())
        self.bias = nn.Parameter(-torch.randn(1).abs())

    @staticmethod
    def squared_distances(n: int, like: torch.Tensor) -> torch.Tensor:
        """``(n, n)`` matrix ``(j - i) ** 2`` on the device of ``like``, in float32 or float64.

        At least float32 (bf16 is exact only up to 256 = 17**2); the logits are promoted accordingly
        and the attention weights are cast back to the value dtype before the matmuls.
        """
        idx = torch.arange(n, device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))
        return (idx.unsqueeze(0) - idx.unsqueeze(1)) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        h, w = static_dims(x, (1, 2))

        # rows: scores[b, r, c, c'] = q(r,c).k(r,c')
        row_scores = torch.matmul(q, k.transpose(-1, -2))
        row_logits = row_scores - (self.shift * self.squared_distances(w, row_scores) + self.bias)
        row_probs = row_logits.softmax(dim=-1).to(v.dtype)

        # columns: scores[b, c, r, r'] = q(r,c).k(r',c)
        q_t, k_t, v_t = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        col_scores = torch.matmul(q_t, k_t.transpose(-1, -2))
        col_logits = col_scores - (self.shift * self.squared_distances(h, col_scores) + self.bias)
        col_probs = col_logits.softmax(dim=-1).to(v.dtype)

        return torch.matmul(row_probs, v) + torch.matmul(col_probs, v_t).transpose(1, 2)


class LocalGlobalGaussianAttention(nn.Module):
    """LGG-SA on a channels-last map ``(B, H, W, C) -> (B, H, W, C)``.

    Official steps: pad to window multiples; window attention; the window outputs give (a) the local
    map and (b) one aggregated token per window; Gaussian axial attention between the window tokens;
    bilinear upsample (align_corners=True) of the result by the window size;
    ``fuse = 1x1 conv([global, local]) -> C``; crop the padding away.

    Computed in an equivalent, cheaper order: the 1x1 conv is split into its global and local
    halves. Both the conv and the bilinear upsample are linear maps acting on different axes, so
    the global half (and the conv bias) is applied to the small token grid *before* upsampling
    (``ws**2`` times fewer positions), and the local half is applied to the window tokens directly,
    which avoids building the concatenated ``2C`` map and a layout copy. The ``fuse`` conv keeps
    the official weight layout.
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 4) -> None:
        super().__init__()
        self.window_size = window_size
        self.local_attn = WindowAttention(dim, num_heads)
        self.aggregate = WindowTokenAggregation(dim, window_size)
        self.global_attn = GaussianAxialAttention(dim)
        self.fuse = nn.Conv2d(2 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        h, w, c = static_dims(x, (1, 2, 3))
        ws = self.window_size
        padded = pad_to_window_multiple(x, ws)
        hp, wp = h + (-h) % ws, w + (-w) % ws
        p, q = hp // ws, wp // ws
        windows = rearrange(padded, "b (p s) (q t) c -> (b p q) (s t) c", s=ws, t=ws)
        local = self.local_attn(windows)  # (B*p*q, ws*ws, C)
        tokens = self.aggregate(local).view(-1, p, q, c)
        fuse_weight = self.fuse.weight.reshape(c, 2 * c)  # input channels: [global, local]
        glob = F.linear(self.global_attn(tokens), fuse_weight[:, :c], self.fuse.bias)  # (B, p, q, C)
        # a channels-last (B, C, p, q) view in -> channels-last upsampled out, so the permute back is free
        up = F.interpolate(glob.permute(0, 3, 1, 2), size=(hp, wp), mode="bilinear", align_corners=True)
        up = up.permute(0, 2, 3, 1).reshape(-1, p, ws, q, ws, c)
        loc = F.linear(local, fuse_weight[:, c:]).view(-1, p, q, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        out = (up + loc.to(up.dtype)).reshape(-1, hp, wp, c)
        return out[:, :h, :w]


# --------------------------------------------------------------------------------------------
# EA and the mixed transformer module
# --------------------------------------------------------------------------------------------
class ExternalAttention(nn.Module):
    """Multi-head external attention with double normalisation: ``(B, N, C) -> (B, N, C)``.

    ``query: C -> expansion*C``, split into ``num_heads`` heads of ``expansion*C/num_heads``;
    per head ``attn = M_k(q)``, softmax over the N tokens, then normalised over the memory units;
    ``M_v(attn)``, merge heads, ``proj -> C``. M_k / M_v are shared across heads.
    """

    def __init__(self, dim: int, num_heads: int = 32, memory_size: int = 64, expansion: int = 4) -> None:
        super().__init__()
        inner = dim * expansion
        if inner % num_heads:
            raise ValueError(f"expansion*dim={inner} must be divisible by ea_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, inner)
        self.memory_key = nn.Linear(inner // num_heads, memory_size)
        self.memory_value = nn.Linear(memory_size, inner // num_heads)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        q = rearrange(self.query(x), "b n (h d) -> b h n d", h=self.num_heads)
        attn = self.memory_key(q).softmax(dim=-2)
        attn = attn / (attn.sum(dim=-1, keepdim=True) + 1e-9)
        out = rearrange(self.memory_value(attn), "b h n d -> b n (h d)")
        return self.proj(out)


class MixedTransformerModule(nn.Module):
    """MTM: ``x + LGG-SA(LN(x))``, then ``+ EA(LN(x))``; channels-last ``(B, H, W, C)`` in and out."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 4,
        ea_heads: int = 32,
        ea_memory: int = 64,
        ea_expansion: int = 4,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.lgg_sa = LocalGlobalGaussianAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ea = ExternalAttention(dim, ea_heads, ea_memory, ea_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.lgg_sa(self.norm1(x))
        return x + self.ea(self.norm2(x).flatten(1, 2)).view_as(x)


def build_mtm_stage(
    dim: int = 256,
    depth: int = 2,
    num_heads: int = 8,
    window_size: int = 4,
    ea_heads: int = 32,
    ea_memory: int = 64,
    ea_expansion: int = 4,
) -> nn.Sequential:
    """One stage of ``depth`` MTMs as used inside :class:`MTUNet` (input/output ``(B, H, W, dim)``).

    For benchmarks: the official stages are listed in :data:`OFFICIAL_MTM_STAGES` as
    ``name -> (dim, grid size)``; e.g. ``build_mtm_stage(256)`` with an input
    ``torch.randn(1, 28, 28, 256)`` is the first encoder stage of the paper model.
    """
    return nn.Sequential(
        *(MixedTransformerModule(dim, num_heads, window_size, ea_heads, ea_memory, ea_expansion) for _ in range(depth))
    )


#: The five MTM stages of the paper model (224 input): name -> (channels, grid size).
OFFICIAL_MTM_STAGES: dict[str, tuple[int, int]] = {
    "encoder1": (256, 28),
    "encoder2": (512, 14),
    "bottleneck": (1024, 7),
    "decoder1": (512, 14),
    "decoder2": (512, 28),
}


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
class EncoderStage(nn.Module):
    """MTMs, then (the skip is the MTM output) a 2x2 stride-2 conv-BN-ReLU to twice the channels."""

    def __init__(self, dim: int, depth: int, **mtm_kwargs: int) -> None:
        super().__init__()
        self.blocks = build_mtm_stage(dim, depth, **mtm_kwargs)
        self.down = _conv_bn(dim, 2 * dim, 2, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> ((B, H/2, W/2, 2C), skip (B, C, H, W))."""
        skip = self.blocks(x).permute(0, 3, 1, 2)
        return self.down(skip).permute(0, 2, 3, 1), skip


class DecoderStage(nn.Module):
    """2x2 transposed conv ``C -> C/2``, concatenate ``[up, skip]``, optional 1x1 conv back to C/2, MTMs."""

    def __init__(self, dim: int, skip_channels: int, fuse: bool, depth: int, **mtm_kwargs: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)
        cat_channels = dim // 2 + skip_channels
        self.fuse = nn.Conv2d(cat_channels, dim // 2, kernel_size=1) if fuse else None
        self.blocks = build_mtm_stage(dim // 2 if fuse else cat_channels, depth, **mtm_kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), skip (B, C_s, 2H, 2W) -> (B, C', 2H, 2W)."""
        x = torch.cat((self.up(x), skip), dim=1)
        if self.fuse is not None:
            x = self.fuse(x)
        return self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MTUNet(nn.Module):
    """MT-UNet for 2D segmentation: ``(B, in_channels, S, S) -> logits (B, out_channels, S, S)``.

    Defaults are the paper configuration (79,075,389 parameters with 9 classes). Only inputs of
    exactly ``img_size x img_size`` are accepted (the learned position embedding has one entry per
    token of the ``img_size/8`` grid, as in the official model); ``img_size`` must be a multiple of
    32 (three CNN poolings and two MTM downsamplings, each undone by a x2 transposed conv).
    Transformer grids that are not multiples of the window size are padded the official way (see
    :func:`pad_to_window_multiple`); the padding may not exceed the grid itself, which rules out
    the smallest sizes for a given window (e.g. 32 with window 4: its bottleneck grid is 1x1).

    Args:
        in_channels: channels of the input. A 1-channel input is repeated to 3 channels before the
            first conv, as the official model does (its first conv has 3 input channels); otherwise the
            first conv takes ``in_channels``.
        out_channels: number of classes (logits, no softmax).
        img_size: the (square) input size.
        stem_channels: channels of the three CNN encoder levels (official 64, 128, 256).
        feature_size: channels of the first MTM stage (official 256; then 2x and 4x).
        depths: MTMs in the stages encoder1, encoder2, bottleneck, decoder1, decoder2 (official 2 each).
        num_heads: heads of the window attention (official 8).
        window_size: window side (official 4); also the upsample factor of the global branch.
        ea_heads, ea_memory, ea_expansion: external attention (official 32 heads, memory 64,
            query expansion 4).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int = 224,
        stem_channels: Sequence[int] = (64, 128, 256),
        feature_size: int = 256,
        depths: Sequence[int] = (2, 2, 2, 2, 2),
        num_heads: int = 8,
        window_size: int = 4,
        ea_heads: int = 32,
        ea_memory: int = 64,
        ea_expansion: int = 4,
    ) -> None:
        super().__init__()
        if len(stem_channels) != 3:
            raise ValueError(f"stem_channels must have 3 entries, got {tuple(stem_channels)}")
        if len(depths) != 5:
            raise ValueError(f"depths must have 5 entries (enc1, enc2, bottleneck, dec1, dec2), got {tuple(depths)}")
        if img_size <= 0 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32 (e.g. 224), got {img_size}")
        grid = img_size // 8
        for size in (grid, grid // 2, grid // 4):
            if (-size) % window_size > size:
                raise ValueError(
                    f"img_size={img_size} with window_size={window_size} gives a {size}x{size} transformer grid "
                    f"that needs more padding ({(-size) % window_size}) than it has rows; use a larger img_size "
                    f"(for window_size 4: 64, 96, 128, ..., 224) or a smaller window_size"
                )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.img_size = img_size
        self.grid_size = grid
        first_in = first_layer_channels(in_channels)
        mtm = dict(
            num_heads=num_heads,
            window_size=window_size,
            ea_heads=ea_heads,
            ea_memory=ea_memory,
            ea_expansion=ea_expansion,
        )
        c0, c1, c2 = stem_channels
        f = feature_size

        self.cnn_encoder = nn.ModuleList(
            [ResidualDoubleConv(first_in, c0), ResidualDoubleConv(c0, c1), ResidualDoubleConv(c1, c2)]
        )
        self.pool = nn.MaxPool2d(2)
        self.to_tokens = _conv_bn(c2, f, 1)
        # learned (an nn.Parameter, zero-initialised, counted), as in the official model
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, f))
        self.encoder_stages = nn.ModuleList([EncoderStage(f, depths[0], **mtm), EncoderStage(2 * f, depths[1], **mtm)])
        self.bottleneck = build_mtm_stage(4 * f, depths[2], **mtm)
        self.decoder_stages = nn.ModuleList(
            [
                DecoderStage(4 * f, 2 * f, fuse=True, depth=depths[3], **mtm),
                DecoderStage(2 * f, f, fuse=False, depth=depths[4], **mtm),
            ]
        )
        self.cnn_decoder = CNNDecoder(2 * f, stem_channels)
        self.head = nn.Conv2d(c0, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, img_size, img_size) -> logits (B, out_channels, img_size, img_size)."""
        check_slice_input(
            x,
            "MTUNet",
            self.in_channels,
            (self.img_size, self.img_size),
            f"its learned position embedding has {self.grid_size}x{self.grid_size} entries; img_size is a multiple of 32",
        )
        x = gray_to_rgb(x, self.in_channels)
        cnn_skips = []
        for block in self.cnn_encoder:
            x = block(x)
            cnn_skips.append(x)
            x = self.pool(x)
        x = self.to_tokens(x).permute(0, 2, 3, 1)  # (B, g, g, F)
        x = x + self.pos_embed.view(1, self.grid_size, self.grid_size, -1)

        skips = []
        for stage in self.encoder_stages:
            x, skip = stage(x)
            skips.append(skip)
        x = self.bottleneck(x).permute(0, 3, 1, 2)
        for stage, skip in zip(self.decoder_stages, reversed(skips)):
            x = stage(x, skip)
        x = self.cnn_decoder(x, cnn_skips[::-1])
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------
# Official key -> ours, in two steps: the module path (regex on the key start, with the kind of
# module found there), then the rest of the key according to that kind.
_MTM_RULES: list[tuple[str, str]] = [
    (r"SlayerNorm\.", "norm1."),
    (r"ElayerNorm\.", "norm2."),
    (r"CSAttention\.win_atten\.attention\.(query|key|value)_layer\.", r"lgg_sa.local_attn.\1."),
    (r"CSAttention\.win_atten\.attention\.out\.", "lgg_sa.local_attn.proj."),
    (r"CSAttention\.dlightconv\.linear\.", "lgg_sa.aggregate.score."),
    (r"CSAttention\.global_atten\.(query|key|value)_layer\.", r"lgg_sa.global_attn.\1."),
    (r"CSAttention\.global_atten\.out\.", "lgg_sa.global_attn.proj."),
    (r"CSAttention\.gaussiantrans\.(shift|bias)$", r"lgg_sa.global_attn.\1"),
    (r"CSAttention\.queeze\.", "lgg_sa.fuse."),
    (r"EAttention\.query_liner\.", "ea.query."),
    (r"EAttention\.linear_0\.", "ea.memory_key."),
    (r"EAttention\.linear_1\.", "ea.memory_value."),
    (r"EAttention\.proj\.", "ea.proj."),
]
_DOUBLE_CONV_RULES: list[tuple[str, str]] = [  # official DoubleConv: conv.0 / conv.1 (ConvBNReLU), conv1, bn
    (r"conv\.([01])\.conv\.", "conv{}.conv."),
    (r"conv\.([01])\.bn\.", "conv{}.adn.N."),
    (r"conv1\.", "refine.conv."),
    (r"bn\.", "refine.adn.N."),
]
_CONV_BN_RULES: list[tuple[str, str]] = [(r"conv\.", "conv."), (r"bn\.", "adn.N.")]
_PLAIN_RULES: list[tuple[str, str]] = [(r"(weight|bias)$", r"\1")]
_KIND_RULES = {"mtm": _MTM_RULES, "double": _DOUBLE_CONV_RULES, "convbn": _CONV_BN_RULES, "plain": _PLAIN_RULES}

# (official module path, our module path as a function of the regex groups, kind)
_MODULE_RULES: list[tuple[str, object, str]] = [
    (r"stem\.model\.res([123])\.", lambda g: f"cnn_encoder.{int(g[0]) - 1}.", "double"),
    (r"stem\.trans_dim\.", lambda g: "to_tokens.", "convbn"),
    (r"encoder\.(\d)\.block\.([01])\.", lambda g: f"encoder_stages.{g[0]}.blocks.{g[1]}.", "mtm"),
    (r"encoder\.(\d)\.block\.2\.", lambda g: f"encoder_stages.{g[0]}.down.", "convbn"),
    (r"bottleneck\.(\d+)\.", lambda g: f"bottleneck.{g[0]}.", "mtm"),
    (r"decoder\.0\.block\.0\.", lambda g: "decoder_stages.0.up.", "plain"),
    (r"decoder\.0\.block\.1\.", lambda g: "decoder_stages.0.fuse.", "plain"),
    (r"decoder\.0\.block\.([23])\.", lambda g: f"decoder_stages.0.blocks.{int(g[0]) - 2}.", "mtm"),
    (r"decoder\.1\.block\.0\.", lambda g: "decoder_stages.1.up.", "plain"),
    (r"decoder\.1\.block\.([12])\.", lambda g: f"decoder_stages.1.blocks.{int(g[0]) - 1}.", "mtm"),
    (r"decoder_stem\.block\.trans([123])\.", lambda g: f"cnn_decoder.ups.{int(g[0]) - 1}.", "plain"),
    (r"decoder_stem\.block\.res([123])\.", lambda g: f"cnn_decoder.blocks.{int(g[0]) - 1}.", "double"),
    (r"SegmentationHead\.", lambda g: "head.", "plain"),
]


def official_key_to_ours(key: str) -> str | None:
    """Map one official state-dict key onto our name (``None`` if it has no counterpart)."""
    if key == "stem.position_embedding":
        return "pos_embed"
    for pattern, prefix, kind in _MODULE_RULES:
        m = re.match(pattern, key)
        if m is None:
            continue
        rest = key[m.end() :]
        for inner, replacement in _KIND_RULES[kind]:
            r = re.match(inner, rest)
            if r is None:
                continue
            if kind == "double" and "{}" in replacement:
                head = replacement.format(int(r.group(1)) + 1)
            else:
                head = r.expand(replacement)
            return prefix(m.groups()) + head + rest[r.end() :]  # type: ignore[operator]
        return None
    return None


def convert_official_state_dict(state: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """An official MT-UNet checkpoint (the ``state_dict`` its training script saves, ``model/MTUNet.py`` names) in
    our names; ``None`` for another file. No layout conversion is needed: every tensor keeps the official layout.
    Loaded through :func:`common.weights.load_weights` (which also strips a ``module.`` prefix)."""
    if "stem.position_embedding" not in state and not any(k.startswith("stem.model.") for k in state):
        return None
    return renamed(state, official_key_to_ours, "official MT-UNet checkpoint")


CONVERTERS = (convert_official_state_dict,)
