"""Files in the official layouts, built from the official module trees (key names and shapes), for the loader tests.

* TransUNet: the ImageNet-21k ``R50+ViT-B_16.npz`` (Flax) and a full ``VisionTransformer.state_dict()`` of the official
  training script (Beckschen/TransUNet);
* Swin-Unet: Microsoft's ``swin_tiny_patch4_window7_224.pth`` and a full ``SwinUnet.state_dict()`` of the official
  training script (HuCaoFighting/Swin-Unet);
* MT-UNet: a full state dict of the official training script (Dootmaan/MT-UNet);
* SwinUNETR: the self-supervised ``model_swinvit.pt``.

Each is written from the official code's structure, independently of the converters under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from common.networks.mt_unet import MTUNet, official_key_to_ours


def official_npz_shapes(
    block_units=(3, 4, 9), width=64, hidden=768, layers=12, heads=12, mlp=3072, pretrain_grid=14, in_ch=3
) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official ``R50+ViT-B_16.npz`` that the official loaders read.

    Written independently of the module under test, from the Flax model that produced the checkpoint
    (google-research/vision_transformer ``vit_jax/models_vit.py``, ``models_resnet.py``: Conv kernels HWIO,
    Dense kernels (in, out), DenseGeneral q/k/v kernels (hidden, heads, head_dim) with biases
    (heads, head_dim), out kernel (heads, head_dim, hidden), GroupNorm/LayerNorm scale and bias (C,)) and
    the names read by Beckschen/TransUNet ``VisionTransformer.load_from``, ``Block.load_from`` and
    ``PreActBottleneck.load_from``. The class token is part of the position embedding: (1, 1 + 14*14, 768).
    """
    shapes: dict[str, tuple[int, ...]] = {
        "conv_root/kernel": (7, 7, in_ch, width),
        "gn_root/scale": (width,),
        "gn_root/bias": (width,),
    }
    cin = width
    for b, n_units in enumerate(block_units, start=1):
        cmid = width * 2 ** (b - 1)
        cout = 4 * cmid
        for u in range(1, n_units + 1):
            p = f"block{b}/unit{u}/"
            unit_in = cin if u == 1 else cout
            shapes[p + "conv1/kernel"] = (1, 1, unit_in, cmid)
            shapes[p + "conv2/kernel"] = (3, 3, cmid, cmid)
            shapes[p + "conv3/kernel"] = (1, 1, cmid, cout)
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                shapes[p + f"{g}/scale"] = (c,)
                shapes[p + f"{g}/bias"] = (c,)
            if u == 1:  # first unit of every stage changes channels (and stride for stages 2, 3)
                shapes[p + "conv_proj/kernel"] = (1, 1, cin, cout)
                shapes[p + "gn_proj/scale"] = (cout,)
                shapes[p + "gn_proj/bias"] = (cout,)
        cin = cout
    shapes["embedding/kernel"] = (1, 1, cin, hidden)
    shapes["embedding/bias"] = (hidden,)
    shapes["Transformer/posembed_input/pos_embedding"] = (1, 1 + pretrain_grid**2, hidden)
    hd = hidden // heads
    for i in range(layers):
        p = f"Transformer/encoderblock_{i}/"
        for name in ("query", "key", "value"):
            shapes[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = (hidden, heads, hd)
            shapes[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = (heads, hd)
        shapes[p + "MultiHeadDotProductAttention_1/out/kernel"] = (heads, hd, hidden)
        shapes[p + "MultiHeadDotProductAttention_1/out/bias"] = (hidden,)
        shapes[p + "MlpBlock_3/Dense_0/kernel"] = (hidden, mlp)
        shapes[p + "MlpBlock_3/Dense_0/bias"] = (mlp,)
        shapes[p + "MlpBlock_3/Dense_1/kernel"] = (mlp, hidden)
        shapes[p + "MlpBlock_3/Dense_1/bias"] = (hidden,)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            shapes[p + f"{ln}/scale"] = (hidden,)
            shapes[p + f"{ln}/bias"] = (hidden,)
    shapes["Transformer/encoder_norm/scale"] = (hidden,)
    shapes["Transformer/encoder_norm/bias"] = (hidden,)
    return shapes


def ignored_npz_shapes(hidden: int, n_classes: int = 21843) -> dict[str, tuple[int, ...]]:
    """Keys of the ImageNet-21k checkpoint that the official code never reads."""
    return {
        "cls": (1, 1, hidden),
        "pre_logits/kernel": (hidden, hidden),
        "pre_logits/bias": (hidden,),
        "head/kernel": (hidden, n_classes),
        "head/bias": (n_classes,),
    }


def write_npz(path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Write random float32 arrays; array k holds values in [k, k + 0.5) so every value names its key."""
    rng = np.random.default_rng(seed)
    arrays = {
        key: (index + 0.5 * rng.random(shape)).astype(np.float32) for index, (key, shape) in enumerate(shapes.items())
    }
    np.savez(path, **arrays)
    return arrays


def official_transunet_state_dict(
    block_units=(3, 4, 9),
    width=64,
    hidden=768,
    layers=12,
    mlp=3072,
    grid=14,
    n_classes=9,
    decoder_head=512,
    decoder=(256, 128, 64, 16),
    n_skip=3,
) -> dict[str, tuple[int, ...]]:
    """Every key of ``VisionTransformer.state_dict()`` in Beckschen/TransUNet (``networks/vit_seg_modeling.py``,
    ``vit_seg_modeling_resnet_skip.py``), with its shape, written from the official module tree: ``transformer``
    (``embeddings`` with ``hybrid_model`` root/body and ``patch_embeddings``, ``encoder.layer[i]`` with
    ``attention_norm``, ``ffn_norm``, ``ffn.fc1/fc2``, ``attn.query/key/value/out``, ``encoder_norm``), ``decoder``
    (``conv_more`` and ``blocks[i].conv1/conv2`` as Conv2dReLU = conv, BatchNorm, ReLU) and
    ``segmentation_head`` (conv)."""
    hm = "transformer.embeddings.hybrid_model."
    shapes: dict[str, tuple[int, ...]] = {"transformer.embeddings.position_embeddings": (1, grid * grid, hidden)}
    shapes |= {
        hm + "root.conv.weight": (width, 3, 7, 7),
        hm + "root.gn.weight": (width,),
        hm + "root.gn.bias": (width,),
    }
    cin, skips = width, [width]
    for b, n_units in enumerate(block_units, start=1):
        cmid, cout = width * 2 ** (b - 1), width * 2 ** (b - 1) * 4
        for u in range(1, n_units + 1):
            p = f"{hm}body.block{b}.unit{u}."
            unit_in = cin if u == 1 else cout
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                shapes |= {f"{p}{g}.weight": (c,), f"{p}{g}.bias": (c,)}
            shapes |= {
                p + "conv1.weight": (cmid, unit_in, 1, 1),
                p + "conv2.weight": (cmid, cmid, 3, 3),
                p + "conv3.weight": (cout, cmid, 1, 1),
            }
            if u == 1:
                shapes |= {
                    p + "downsample.weight": (cout, cin, 1, 1),
                    p + "gn_proj.weight": (cout,),
                    p + "gn_proj.bias": (cout,),
                }
        cin = cout
        skips.append(cout)
    shapes |= {
        "transformer.embeddings.patch_embeddings.weight": (hidden, cin, 1, 1),
        "transformer.embeddings.patch_embeddings.bias": (hidden,),
    }
    for i in range(layers):
        p = f"transformer.encoder.layer.{i}."
        for n in ("attention_norm", "ffn_norm"):
            shapes |= {f"{p}{n}.weight": (hidden,), f"{p}{n}.bias": (hidden,)}
        shapes |= {
            p + "ffn.fc1.weight": (mlp, hidden),
            p + "ffn.fc1.bias": (mlp,),
            p + "ffn.fc2.weight": (hidden, mlp),
            p + "ffn.fc2.bias": (hidden,),
        }
        for n in ("query", "key", "value", "out"):
            shapes |= {f"{p}attn.{n}.weight": (hidden, hidden), f"{p}attn.{n}.bias": (hidden,)}
    shapes |= {"transformer.encoder.encoder_norm.weight": (hidden,), "transformer.encoder.encoder_norm.bias": (hidden,)}

    def conv_bn(p, cout, cin_):
        shapes[p + "0.weight"] = (cout, cin_, 3, 3)
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}1.{n}"] = (cout,)
        shapes[p + "1.num_batches_tracked"] = ()

    conv_bn("decoder.conv_more.", decoder_head, hidden)
    skip_ch = [skips[2], skips[1], skips[0], 0][:n_skip] + [0] * (4 - n_skip)
    for i, (cin_, cout) in enumerate(zip((decoder_head, *decoder[:-1]), decoder)):
        conv_bn(f"decoder.blocks.{i}.conv1.", cout, cin_ + skip_ch[i])
        conv_bn(f"decoder.blocks.{i}.conv2.", cout, cout)
    shapes |= {"segmentation_head.0.weight": (n_classes, decoder[-1], 3, 3), "segmentation_head.0.bias": (n_classes,)}
    return shapes


def expected_relative_position_index(ws: int) -> torch.Tensor:
    idx = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for (a, (ha, wa)), (b, (hb, wb)) in itertools.product(enumerate(itertools.product(range(ws), range(ws))), repeat=2):
        idx[a, b] = (ha - hb + ws - 1) * (2 * ws - 1) + (wa - wb + ws - 1)
    return idx


def shift_region(pos: int, size: int, ws: int, shift: int) -> tuple[int, int]:
    """(window index, region label) of a coordinate in the cyclically shifted frame."""
    r = (pos - shift) % size
    label = 0 if r < size - ws else (1 if r < size - shift else 2)
    return r // ws, label


def expected_mask(res: int, ws: int, shift: int) -> torch.Tensor:
    n = res // ws
    mask = torch.zeros(n * n, ws * ws, ws * ws)
    for wh, ww in itertools.product(range(n), range(n)):
        coords = [(wh * ws + a, ww * ws + b) for a in range(ws) for b in range(ws)]  # shifted-frame coordinates

        def label(c):
            return tuple(0 if v < res - ws else (1 if v < res - shift else 2) for v in c)

        for i, j in itertools.product(range(ws * ws), repeat=2):
            mask[wh * n + ww, i, j] = 0.0 if label(coords[i]) == label(coords[j]) else -100.0
    return mask


def official_swin_checkpoint(
    embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window=7, img_size=224, patch=4, masks=True, seed=0
) -> dict[str, torch.Tensor]:
    """State dict with the key names and shapes of Microsoft's swin_tiny_patch4_window7_224.pth (random values,
    true geometry buffers)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "patch_embed.proj.weight": rnd(embed_dim, 3, patch, patch),
        "patch_embed.proj.bias": rnd(embed_dim),
        "patch_embed.norm.weight": rnd(embed_dim),
        "patch_embed.norm.bias": rnd(embed_dim),
    }
    res = img_size // patch
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = embed_dim * 2**i
        ws, shift = (res, 0) if res <= window else (window, window // 2)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd |= {
                p + "norm1.weight": rnd(c),
                p + "norm1.bias": rnd(c),
                p + "attn.relative_position_bias_table": rnd((2 * ws - 1) ** 2, heads),
                p + "attn.relative_position_index": expected_relative_position_index(ws),
                p + "attn.qkv.weight": rnd(3 * c, c),
                p + "attn.qkv.bias": rnd(3 * c),
                p + "attn.proj.weight": rnd(c, c),
                p + "attn.proj.bias": rnd(c),
                p + "norm2.weight": rnd(c),
                p + "norm2.bias": rnd(c),
                p + "mlp.fc1.weight": rnd(4 * c, c),
                p + "mlp.fc1.bias": rnd(4 * c),
                p + "mlp.fc2.weight": rnd(c, 4 * c),
                p + "mlp.fc2.bias": rnd(c),
            }
            if masks and j % 2 == 1 and shift > 0:
                sd[p + "attn_mask"] = expected_mask(res, ws, shift)
        if i < len(depths) - 1:
            sd |= {
                f"layers.{i}.downsample.reduction.weight": rnd(2 * c, 4 * c),
                f"layers.{i}.downsample.norm.weight": rnd(4 * c),
                f"layers.{i}.downsample.norm.bias": rnd(4 * c),
            }
            res //= 2
    c = embed_dim * 2 ** (len(depths) - 1)
    sd |= {"norm.weight": rnd(c), "norm.bias": rnd(c), "head.weight": rnd(1000, c), "head.bias": rnd(1000)}
    return sd


def official_swin_unet_state_dict(
    embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window=7, img_size=224, patch=4, n_classes=9
) -> dict[str, tuple[int, ...]]:
    """Every key of the official ``SwinUnet.state_dict()`` (HuCaoFighting/Swin-Unet, ``networks/vision_transformer.py``
    wrapping ``SwinTransformerSys`` as ``swin_unet``) with its shape, written from the official module tree: encoder
    ``layers[i]`` (blocks, ``downsample``), ``norm``, decoder ``layers_up[0]`` (a ``PatchExpand``) and
    ``layers_up[i]`` (blocks, ``upsample``), ``concat_back_dim[i]`` (``Identity`` at 0), ``norm_up``, ``up``
    (``FinalPatchExpand_X4``) and ``output`` (1x1 conv without bias). ``attn_mask`` is a persistent buffer of every
    shifted block."""
    shapes: dict[str, tuple[int, ...]] = {}
    pe = "swin_unet.patch_embed."
    shapes |= {
        pe + "proj.weight": (embed_dim, 3, patch, patch),
        pe + "proj.bias": (embed_dim,),
        pe + "norm.weight": (embed_dim,),
        pe + "norm.bias": (embed_dim,),
    }
    n = len(depths)

    def blocks(prefix, c, heads, depth, res):
        ws, shift = (res, 0) if res <= window else (window, window // 2)
        for j in range(depth):
            p = f"{prefix}blocks.{j}."
            shapes.update(
                {
                    p + "norm1.weight": (c,),
                    p + "norm1.bias": (c,),
                    p + "attn.relative_position_bias_table": ((2 * ws - 1) ** 2, heads),
                    p + "attn.relative_position_index": (ws * ws, ws * ws),
                    p + "attn.qkv.weight": (3 * c, c),
                    p + "attn.qkv.bias": (3 * c,),
                    p + "attn.proj.weight": (c, c),
                    p + "attn.proj.bias": (c,),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
            if j % 2 == 1 and shift > 0:
                shapes[p + "attn_mask"] = ((res // ws) ** 2, ws * ws, ws * ws)

    res0 = img_size // patch
    for i in range(n):
        c, res = embed_dim * 2**i, res0 // 2**i
        blocks(f"swin_unet.layers.{i}.", c, num_heads[i], depths[i], res)
        if i < n - 1:
            shapes |= {
                f"swin_unet.layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                f"swin_unet.layers.{i}.downsample.norm.weight": (4 * c,),
                f"swin_unet.layers.{i}.downsample.norm.bias": (4 * c,),
            }
    top = embed_dim * 2 ** (n - 1)
    shapes |= {"swin_unet.norm.weight": (top,), "swin_unet.norm.bias": (top,)}
    shapes |= {
        "swin_unet.layers_up.0.expand.weight": (2 * top, top),
        "swin_unet.layers_up.0.norm.weight": (top // 2,),
        "swin_unet.layers_up.0.norm.bias": (top // 2,),
    }
    for k in range(1, n):
        i = n - 1 - k
        c, res = embed_dim * 2**i, res0 // 2**i
        shapes |= {f"swin_unet.concat_back_dim.{k}.weight": (c, 2 * c), f"swin_unet.concat_back_dim.{k}.bias": (c,)}
        blocks(f"swin_unet.layers_up.{k}.", c, num_heads[i], depths[i], res)
        if k < n - 1:
            shapes |= {
                f"swin_unet.layers_up.{k}.upsample.expand.weight": (2 * c, c),
                f"swin_unet.layers_up.{k}.upsample.norm.weight": (c // 2,),
                f"swin_unet.layers_up.{k}.upsample.norm.bias": (c // 2,),
            }
    shapes |= {
        "swin_unet.norm_up.weight": (embed_dim,),
        "swin_unet.norm_up.bias": (embed_dim,),
        "swin_unet.up.expand.weight": (16 * embed_dim, embed_dim),
        "swin_unet.up.norm.weight": (embed_dim,),
        "swin_unet.up.norm.bias": (embed_dim,),
        "swin_unet.output.weight": (n_classes, embed_dim, 1, 1),
    }
    return shapes


def official_mtunet_keys() -> list[str]:
    """Every state-dict key of the official MTUNet (written from the official module tree)."""

    def bn(p: str) -> list[str]:
        return [f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    def wb(p: str) -> list[str]:
        return [f"{p}.weight", f"{p}.bias"]

    def conv_bn_relu(p: str) -> list[str]:
        return [f"{p}.conv.weight", *bn(f"{p}.bn")]

    def double_conv(p: str) -> list[str]:
        return [*conv_bn_relu(f"{p}.conv.0"), *conv_bn_relu(f"{p}.conv.1"), *wb(f"{p}.conv1"), *bn(f"{p}.bn")]

    def ea_module(p: str) -> list[str]:
        keys = [*wb(f"{p}.SlayerNorm"), *wb(f"{p}.ElayerNorm")]
        for branch in ("win_atten.attention", "global_atten"):
            for layer in ("query_layer", "key_layer", "value_layer", "out"):
                keys += wb(f"{p}.CSAttention.{branch}.{layer}")
        keys += wb(f"{p}.CSAttention.dlightconv.linear")
        keys += [f"{p}.CSAttention.gaussiantrans.bias", f"{p}.CSAttention.gaussiantrans.shift"]
        keys += wb(f"{p}.CSAttention.queeze")
        for layer in ("query_liner", "linear_0", "linear_1", "proj"):
            keys += wb(f"{p}.EAttention.{layer}")
        return keys

    keys = [k for i in (1, 2, 3) for k in double_conv(f"stem.model.res{i}")]
    keys += conv_bn_relu("stem.trans_dim") + ["stem.position_embedding"]
    for i in (0, 1):
        keys += ea_module(f"encoder.{i}.block.0") + ea_module(f"encoder.{i}.block.1")
        keys += conv_bn_relu(f"encoder.{i}.block.2")
    keys += ea_module("bottleneck.0") + ea_module("bottleneck.1")
    keys += wb("decoder.0.block.0") + wb("decoder.0.block.1")
    keys += ea_module("decoder.0.block.2") + ea_module("decoder.0.block.3")
    keys += wb("decoder.1.block.0") + ea_module("decoder.1.block.1") + ea_module("decoder.1.block.2")
    for i in (1, 2, 3):
        keys += wb(f"decoder_stem.block.trans{i}") + double_conv(f"decoder_stem.block.res{i}")
    return keys + wb("SegmentationHead")


def official_mtunet_checkpoint(net: MTUNet, prefix: str = "") -> dict[str, torch.Tensor]:
    """An official-style state dict for ``net``'s configuration: official names, random values."""
    ours = net.state_dict()
    gen = torch.Generator().manual_seed(5)
    state = {}
    for key in official_mtunet_keys():
        shape = ours[official_key_to_ours(key)].shape  # no layout conversion anywhere
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.randint(0, 1000, shape, generator=gen)
        else:
            state[prefix + key] = torch.randn(shape, generator=gen)
    return state


def ssl_checkpoint(src: torch.nn.Module) -> dict:
    """The SwinUNETR self-supervised encoder layout: module.* keys, MLP named fc1/fc2, pre-training heads."""
    sd = {}
    for k, v in src.state_dict().items():
        if not k.startswith("swinViT."):
            continue
        k = "module." + k[len("swinViT.") :]
        sd[k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")] = v.clone()
    sd["module.rotation_head.weight"] = torch.zeros(4, 8)
    sd["module.contrastive_head.weight"] = torch.zeros(16, 8)
    sd["module.convTrans3d.weight"] = torch.zeros(2, 2, 1, 1, 1)
    sd["module.norm.weight"] = torch.ones(8)
    return {"state_dict": sd, "epoch": 100}
