"""Swin-Unet (Cao et al., 2021, "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation").

Layer-for-layer re-implementation of the official model (HuCaoFighting/Swin-Unet,
``networks/swin_transformer_unet_skip_expand_decoder_sys.py`` class ``SwinTransformerSys`` and the wrapper
``networks/vision_transformer.py`` class ``SwinUnet``) in the paper configuration
(``configs/swin_tiny_patch4_window7_224_lite.yaml``): 224x224 input, patch 4, embedding 96, depths
(2, 2, 2, 2), heads (3, 6, 12, 24), window 7, MLP ratio 4, stochastic depth 0.2, qkv bias, patch norm, no
absolute position embedding. 27,168,900 parameters for 9 classes.

Topology (token grids kept channels-last, ``(B, H, W, C)``; the official code keeps ``(B, H*W, C)``, which
is the same memory layout)::

    image -> [1 channel repeated to 3] -> patch embedding 4x4 conv + LayerNorm         96 @ 56
    encoder stage i (i = 0..3): 2 Swin blocks (W-MSA, SW-MSA), then patch merging (i < 3)
        skips = the tokens ENTERING each stage: 96@56, 192@28, 384@14 (768@7 is not used)
    bottleneck = stage 3 (768 @ 7, no shift since 7 <= window), then LayerNorm ``norm``
    decoder: layers_up.0 = patch expanding 768@7 -> 384@14
             layers_up.k (k = 1..3): concat [x, skip] -> Linear 2C -> C (``concat_back_dim.k``) ->
             Swin blocks mirroring encoder stage 3-k (same depth, heads, drop-path rates) ->
             patch expanding (k < 3)
    LayerNorm ``norm_up`` -> final 4x patch expanding (Linear 96 -> 16*96, no bias; LayerNorm 96)
    -> 1x1 conv without bias -> logits (B, classes, 224, 224)

Which MONAI blocks are reused (each checked against the official code, see the note in the project):

* ``monai.networks.nets.swin_unetr.SwinTransformerBlock`` / ``WindowAttention``: same relative position
  index, same bias table shape, same scaling, same (0 / -100) additive mask, same residual structure,
  GELU MLP with a single shared dropout (``dropout_mode="swin"``), LayerNorm eps 1e-5, DropPath with
  ``scale_by_keep`` like timm. Only the MLP parameter names differ (official ``mlp.fc1``/``mlp.fc2`` vs MONAI
  ``mlp.linear1``/``mlp.linear2``): the pretrained loader renames them. MONAI's block shrinks the window
  at run time when the grid is smaller than the window but keeps the bias table of the nominal window and
  slices its index (``index[:n, :n]``), which is NOT the official behaviour; the official code builds the
  block with ``window = resolution`` and no shift in that case. We therefore pass the already-reduced
  window and zero shift to MONAI's constructor (exactly the official rule), so MONAI's run-time reduction
  never triggers.
* ``monai.networks.nets.swin_unetr.compute_mask``: identical region labelling and (0 / -100) values. The
  official code stores one copy of the mask per shifted block as a persistent buffer; we keep one
  non-persistent buffer per stage (it is a pure function of the geometry).
* ``monai.networks.nets.swin_unetr.PatchMergingV2`` (2D): concatenation order x[0::2, 0::2], x[1::2, 0::2],
  x[0::2, 1::2], x[1::2, 1::2] -- the official order --, LayerNorm(4C) then Linear(4C, 2C, bias=False), same
  parameter names (``norm``, ``reduction``). (MONAI's ``PatchMerging`` v1 differs only for 3D inputs.)
* ``monai.networks.blocks.PatchEmbed`` (2D): Conv(k=stride=patch) then LayerNorm over channels, same names
  (``proj``, ``norm``). Its padding never triggers because the input size is validated.

Written here: the patch expanding layers (not in MONAI), the decoder, the stage container and the weight converters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from einops import rearrange
from monai.networks.blocks import PatchEmbed
from monai.networks.layers import trunc_normal_
from monai.networks.nets.swin_unetr import PatchMergingV2, SwinTransformerBlock, compute_mask

from ..weights import Conversion
from .slice_input import check_slice_input, first_layer_channels, gray_to_rgb

__all__ = [
    "PatchExpand",
    "SwinUnetStage",
    "SwinUnet",
    "CONVERTERS",
    "convert_imagenet_swin",
    "convert_official_state_dict",
]


class PatchExpand(nn.Module):
    """Patch expanding: ``Linear(dim, scale**2 * out_dim, bias=False)``, pixel shuffle, ``LayerNorm(out_dim)``.

    With ``scale=2, out_dim=dim // 2`` this is the official ``PatchExpand`` (Linear C -> 2C, 2x upsampling,
    C/2 channels); with ``scale=4, out_dim=dim`` it is the official ``FinalPatchExpand_X4`` (Linear C -> 16C,
    4x upsampling, C channels). The expanded channel vector of each token is read as ``(p1, p2, c)`` with
    ``p1`` the row offset (outermost), ``p2`` the column offset and ``c`` the output channel (innermost),
    which is the official rearrangement ``b h w (p1 p2 c) -> b (h p1) (w p2) c``.

    Args:
        dim: input channels.
        out_dim: output channels per upsampled token.
        scale: upsampling factor along each spatial axis.
        norm_layer: normalisation applied to the output tokens.
    """

    def __init__(self, dim: int, out_dim: int, scale: int = 2, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, scale*H, scale*W, out_dim)``."""
        x = self.expand(x)
        x = rearrange(x, "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=self.scale, p2=self.scale, c=self.out_dim)
        return self.norm(x)


class SwinUnetStage(nn.Module):
    """One encoder or decoder stage: ``depth`` Swin blocks (alternating W-MSA / SW-MSA) on a square grid,
    optionally followed by patch merging (encoder) or patch expanding (decoder).

    Official rule (``SwinTransformerBlock.__init__``): when the grid is not larger than the window, the
    window becomes the grid and the shift is 0; otherwise odd blocks shift by ``window_size // 2``.

    Args:
        dim: channels.
        resolution: side of the square token grid.
        depth: number of Swin blocks.
        num_heads: attention heads.
        window_size: nominal window side.
        mlp_ratio: MLP hidden size / dim.
        qkv_bias: bias in the qkv projection.
        drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of each block (length ``depth``).
        downsample: append patch merging (dim -> 2*dim, grid / 2).
        upsample: append patch expanding (dim -> dim/2, grid * 2).
        use_checkpoint: gradient checkpointing inside the blocks.
        use_flash_attention: let MONAI use ``scaled_dot_product_attention`` when autograd is off.
    """

    attn_mask: torch.Tensor | None

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        downsample: bool = False,
        upsample: bool = False,
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if downsample and upsample:
            raise ValueError("a stage cannot both downsample and upsample")
        drop_path = list(drop_path) if len(drop_path) else [0.0] * depth
        if len(drop_path) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(drop_path)}")
        self.dim = dim
        self.resolution = resolution
        if resolution <= window_size:
            window, shift = resolution, 0
        else:
            window, shift = window_size, window_size // 2
        self.window_size = window
        self.shift_size = shift
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim=dim,
                    num_heads=num_heads,
                    window_size=(window, window),
                    shift_size=(0, 0) if j % 2 == 0 else (shift, shift),
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=float(drop_path[j]),
                    act_layer="GELU",
                    norm_layer=nn.LayerNorm,
                    use_checkpoint=use_checkpoint,
                    use_flash_attention=use_flash_attention,
                )
                for j in range(depth)
            ]
        )
        if shift > 0 and depth > 1:
            mask = compute_mask([resolution, resolution], (window, window), (shift, shift), torch.device("cpu"))
            self.register_buffer("attn_mask", mask, persistent=False)
        else:
            self.attn_mask = None
        self.downsample = PatchMergingV2(dim, norm_layer=nn.LayerNorm, spatial_dims=2) if downsample else None
        self.upsample = PatchExpand(dim, dim // 2, scale=2) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, R, R, dim)`` -> same, or ``(B, R/2, R/2, 2*dim)`` / ``(B, 2R, 2R, dim/2)``."""
        for blk in self.blocks:
            x = blk(x, self.attn_mask)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class SwinUnet(nn.Module):
    """Swin-Unet for 2D slices: ``(B, in_channels, img_size, img_size)`` -> logits ``(B, out_channels, ...)``.

    Defaults are the paper configuration. Parameter and buffer names follow the official
    ``SwinTransformerSys`` (``patch_embed``, ``layers``, ``norm``, ``layers_up``, ``concat_back_dim``,
    ``norm_up``, ``up``, ``output``), except the MLP layers inside the Swin blocks (``mlp.linear1/linear2``
    instead of ``mlp.fc1/fc2``) and the attention masks (one non-persistent buffer per stage instead of a
    persistent one per shifted block).

    Args:
        in_channels: channels of the input. A 1-channel input is repeated to 3 channels before the patch
            embedding, as in the official wrapper, so the embedding always has 3 input channels for
            ``in_channels`` 1 or 3 (and is compatible with the ImageNet weights).
        out_channels: number of classes (logit channels).
        img_size: side of the square input; every stage grid must be even (before merging) and either a
            multiple of ``window_size`` or not larger than it.
        patch_size: patch embedding stride / kernel.
        embed_dim: channels after patch embedding (doubles at each encoder stage).
        depths: Swin blocks per encoder stage; the decoder mirrors them (the official config's
            ``DECODER_DEPTHS`` is never used by the official model).
        num_heads: attention heads per encoder stage (mirrored in the decoder).
        window_size: attention window side.
        mlp_ratio: MLP hidden size / channels.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after the patch embedding, after attention projections and in the MLPs.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: largest stochastic depth rate; rates rise linearly over the encoder blocks
            (``linspace(0, rate, sum(depths))``) and each decoder stage reuses the rates of the encoder
            stage it mirrors, as in the official code.
        ape: learned absolute position embedding ``(1, num_patches, embed_dim)`` added after patch embedding.
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: gradient checkpointing in the Swin blocks.
        use_flash_attention: let MONAI's window attention use ``scaled_dot_product_attention`` when autograd
            is disabled (same result up to floating point rounding).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        self._validate_config(
            in_channels, out_channels, img_size, patch_size, embed_dim, depths, num_heads, window_size
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = window_size
        self.num_layers = len(depths)
        self.ape = ape
        grid = img_size // patch_size
        self.patches_resolution = grid
        embed_in = first_layer_channels(in_channels)

        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_chans=embed_in,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm if patch_norm else None,  # type: ignore[arg-type]
            spatial_dims=2,
        )
        self.absolute_pos_embed: nn.Parameter | None = None
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        # float32 linspace rounded like the official ``[x.item() for x in torch.linspace(...)]``
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(self.num_layers)]

        def stage(i: int, **resample) -> SwinUnetStage:
            """The Swin stage at level ``i``; the decoder's mirror of encoder stage ``i`` gets the same settings."""
            return SwinUnetStage(
                dim=embed_dim * 2**i,
                resolution=grid // 2**i,
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[starts[i] : starts[i] + depths[i]],
                use_checkpoint=use_checkpoint,
                use_flash_attention=use_flash_attention,
                **resample,
            )

        self.layers = nn.ModuleList([stage(i, downsample=i < self.num_layers - 1) for i in range(self.num_layers)])
        self.norm = nn.LayerNorm(embed_dim * 2 ** (self.num_layers - 1))

        # decoder: layers_up.k mirrors encoder stage i = num_layers - 1 - k
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for k in range(self.num_layers):
            i = self.num_layers - 1 - k
            dim = embed_dim * 2**i
            if k == 0:
                self.layers_up.append(PatchExpand(dim, dim // 2, scale=2))
                self.concat_back_dim.append(nn.Identity())
                continue
            self.concat_back_dim.append(nn.Linear(2 * dim, dim))
            self.layers_up.append(stage(i, upsample=k < self.num_layers - 1))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand(embed_dim, embed_dim, scale=patch_size)
        self.output = nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False)

        self.apply(self._init_weights)

    @staticmethod
    def _validate_config(
        in_channels: int,
        out_channels: int,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window_size: int,
    ) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(depths) < 2 or len(depths) != len(num_heads) or min(depths) < 1:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length >= 2, depths >= 1")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        grid = img_size // patch_size
        for i, heads in enumerate(num_heads):
            dim = embed_dim * 2**i
            if dim % heads:
                raise ValueError(f"stage {i}: {dim} channels are not divisible by {heads} heads")
            res = grid >> i
            if i < len(depths) - 1 and (res < 2 or res % 2):
                raise ValueError(
                    f"img_size {img_size} unsupported: stage {i} grid {res}x{res} must be even for patch merging "
                    f"(img_size must be a multiple of patch_size * 2**{len(depths) - 1} = "
                    f"{patch_size * 2 ** (len(depths) - 1)})"
                )
            if res > window_size and res % window_size:
                raise ValueError(
                    f"img_size {img_size} unsupported: stage {i} grid {res}x{res} is neither a multiple of "
                    f"window_size {window_size} nor smaller than it"
                )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Official initialisation: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorm.
        Convolutions keep PyTorch's default initialisation, as in the official code."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image ``(B, C, H, W)`` -> normalised bottleneck tokens ``(B, h, w, C')`` and the stage inputs (skips)."""
        x = gray_to_rgb(x, self.in_channels)
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)
        if self.absolute_pos_embed is not None:
            b, h, w, c = x.shape
            x = x + self.absolute_pos_embed.reshape(1, h, w, c)
        x = self.pos_drop(x)
        skips: list[torch.Tensor] = []
        for layer in self.layers:
            skips.append(x)  # the tokens entering each encoder stage
            x = layer(x)
        return self.norm(x), skips

    def forward_decoder(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck tokens and skips -> decoder tokens ``(B, h, w, embed_dim)`` after ``norm_up``."""
        for k, (layer_up, concat_linear) in enumerate(zip(self.layers_up, self.concat_back_dim)):
            if k > 0:
                x = concat_linear(torch.cat([x, skips[self.num_layers - 1 - k]], dim=-1))
            x = layer_up(x)
        return self.norm_up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, img_size, img_size)`` -> logits ``(B, out_channels, img_size, img_size)``."""
        check_slice_input(
            x,
            "SwinUnet",
            self.in_channels,
            (self.img_size, self.img_size),
            f"its windows tile a {self.patches_resolution}x{self.patches_resolution} patch grid",
        )
        x, skips = self.forward_encoder(x)
        x = self.forward_decoder(x, skips)
        x = self.up(x).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        return self.output(x)


# --------------------------------------------------------------------------------------------------------------
# Weights: the official ImageNet Swin checkpoint (Microsoft key names) and full official Swin-Unet checkpoints
# --------------------------------------------------------------------------------------------------------------

_BUFFER_SUFFIXES = ("attn.relative_position_index", "attn_mask")


def _official_to_ours(key: str) -> str:
    """Rename an official (Microsoft Swin / Swin-Unet) key to ours: only the MLP layer names differ."""
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def _mask_buffers(model: SwinUnet) -> dict[str, torch.Tensor]:
    """Our shifted-window masks (non-persistent, one per stage) under the official per-block names."""
    masks = {}
    for prefix, stages in (("layers", model.layers), ("layers_up", model.layers_up)):
        for i, stage in enumerate(stages):
            if isinstance(stage, SwinUnetStage) and stage.attn_mask is not None:
                for j in range(1, len(stage.blocks), 2):
                    masks[f"{prefix}.{i}.blocks.{j}.attn_mask"] = stage.attn_mask
    return masks


def _check_geometry(name: str, value: torch.Tensor, ours: torch.Tensor | None, problems: list[str]) -> bool:
    """Whether ``value`` is a geometry buffer this model has (same shape); a differing value is a problem."""
    if ours is None or tuple(ours.shape) != tuple(value.shape):
        return False
    if not torch.equal(ours.to(value.dtype), value.to(ours.device)):
        problems.append(f"{name}: values differ from the window geometry of this model")
    return True


def convert_imagenet_swin(state: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """The official ImageNet ``swin_tiny_patch4_window7_224.pth`` as our encoder, mirrored into the decoder, as the
    official ``SwinUnet.load_from`` does; ``None`` for another file. Loaded through
    :func:`common.weights.load_weights`.

    Official behaviour reproduced (``networks/vision_transformer.py``): the ``"model"`` state dict fills the
    encoder (``patch_embed``, ``layers.i``, ``norm``) and every ``layers.i.*`` key is also copied to
    ``layers_up.(L-1-i).*``. With the paper configuration:

    * loaded: patch embedding, all blocks of the (2, 2, 2, 2) encoder, the three patch mergings, ``norm``;
    * mirrored: encoder stage i blocks -> decoder ``layers_up.(L-1-i).blocks`` for i < L-1;
    * ignored by design: ``head.*`` (ImageNet classifier), encoder blocks beyond our depths (Swin-T has 6 blocks
      in stage 2, the paper model 2), and the mirror copies that have no decoder counterpart (the bottleneck
      stage -> ``layers_up.0``, a patch expanding layer; ``downsample`` -> decoder stages upsample instead);
    * kept at initialisation: ``layers_up.0``, decoder ``upsample``, ``concat_back_dim``, ``norm_up``, ``up``,
      ``output``.

    The index and mask buffers are functions of the window geometry: where our model has one of the same shape its
    values must be identical, otherwise they are recomputed (reported under ``recomputed_buffers``). Unlike the
    official code nothing is skipped silently: an unknown key, an encoder or decoder-block parameter left without a
    value, or a shape that does not fit is an error.
    """
    if "patch_embed.proj.weight" not in state or any(k.startswith(("layers_up.", "swin_unet.")) for k in state):
        return None
    ours = model.state_dict()
    masks = _mask_buffers(model)
    num_layers = model.num_layers
    tensors: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    unused: list[str] = []
    problems: list[str] = []
    recomputed: list[str] = []

    def place(target: str, value: torch.Tensor, source: str) -> bool:
        if source.endswith(_BUFFER_SUFFIXES):
            if _check_geometry(source, value, masks.get(target, ours.get(target)), problems):
                return True
            recomputed.append(source)
            return True
        if target not in ours:
            return False
        tensors[target] = value
        return True

    for key, value in state.items():
        value = torch.as_tensor(value)
        parts = key.split(".")
        target = _official_to_ours(key)
        if parts[0] == "head":
            ignored[key] = "ImageNet classification head (no counterpart in the segmentation model)"
            continue
        if parts[0] == "layers" and len(parts) > 3 and parts[2] == "blocks" and int(parts[1]) < num_layers:
            stage, block = int(parts[1]), int(parts[3])
            if block >= model.depths[stage]:
                ignored[key] = f"encoder stage {stage} has only {model.depths[stage]} blocks"
                continue
        if not place(target, value, key):
            unused.append(key)
            continue
        if parts[0] == "layers":  # official mirroring: layers.i.* -> layers_up.(L-1-i).*
            mirror = f"layers_up.{num_layers - 1 - int(parts[1])}." + target.split(".", 2)[2]
            if mirror.startswith("layers_up.0."):
                ignored[f"{key} (decoder copy)"] = "no mirror target: layers_up.0 is a patch expanding layer"
            elif ".downsample." in mirror:
                ignored[f"{key} (decoder copy)"] = "no mirror target: decoder stages upsample instead"
            elif not place(mirror, value, key):
                unused.append(f"{key} (decoder copy to {mirror!r})")
    params = [n for n, _ in model.named_parameters()]
    required = [n for n in params if n.startswith(("patch_embed.", "layers.", "norm.", "absolute_pos_embed"))]
    required += [n for n in params if n.startswith("layers_up.") and ".blocks." in n]
    return Conversion(
        "Swin ImageNet (Microsoft)",
        tensors,
        ignored=ignored,
        unused=unused,
        problems=problems,
        partial=True,
        required=required,
        notes={"recomputed_buffers": recomputed},
    )


def convert_official_state_dict(state: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """A full checkpoint of the official Swin-Unet training script (``torch.save(model.state_dict())`` of its
    ``SwinUnet``, keys prefixed ``swin_unet.``, key layout of HuCaoFighting/Swin-Unet at commit f48f623) in our
    names; ``None`` for another file. The per-block ``attn_mask`` buffers are checked against our geometry."""
    if not state or not all(k.startswith("swin_unet.") for k in state):
        return None
    ours = model.state_dict()
    masks = _mask_buffers(model)
    tensors: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    problems: list[str] = []
    for key, value in state.items():
        name = _official_to_ours(key[len("swin_unet.") :])
        if name.endswith("attn_mask"):
            if not _check_geometry(key, torch.as_tensor(value), masks.get(name), problems):
                unused.append(key)
        elif name in ours:
            tensors[name] = torch.as_tensor(value)
        else:
            unused.append(key)
    return Conversion("official Swin-Unet checkpoint", tensors, unused=unused, problems=problems)


CONVERTERS = (convert_official_state_dict, convert_imagenet_swin)
