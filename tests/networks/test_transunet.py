"""Tests of ``common.networks.transunet`` (TransUNet R50-ViT-B/16 and its ImageNet-21k npz loader).

Most tests use a tiny configuration. The full-size model is built without random initialisation for the
parameter count and the npz key/shape list. The full-size forward at 224 x 224 is exercised by
``tests/test_bundles.py::test_verify_net_in_out`` (MONAI's own check on the bundle's network).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.networks.transunet import TransUNet, load_transunet_npz, transunet_npz_spec

TINY = dict(
    block_units=(1, 1, 1),
    width_factor=0.5,  # width 32, the smallest GroupNorm(32) allows
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=64,
    decoder_head_channels=32,
    decoder_channels=(32, 16, 16, 8),
)
TINY_DIMS = dict(block_units=(1, 1, 1), width=32, hidden=32, layers=2, heads=4, mlp=64)


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


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module on one intra-op thread: on a small, shared CPU two spinning OpenMP threads made the
    tiny forwards about 50x slower than one thread. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build_uninitialised(**kwargs) -> TransUNet:
    """Build a TransUNet with the random initialisers patched out (uninitialised memory).

    Only for shapes and counts: the full model's random initialisation takes seconds on a small CPU, and
    the ``meta`` device's first use costs even more (it imports PyTorch's reference-op machinery).
    """

    def keep(tensor, *args, **kwargs):
        return tensor

    with mock.patch.multiple(torch.nn.init, kaiming_uniform_=keep, uniform_=keep, xavier_uniform_=keep, normal_=keep):
        return TransUNet(**kwargs)


@pytest.fixture(scope="module")
def full_model_shapes_only() -> TransUNet:
    return build_uninitialised()


# --------------------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------------------
def test_full_size_parameter_count(full_model_shapes_only):
    assert sum(p.numel() for p in full_model_shapes_only.parameters()) == 105_277_081
    btcv = build_uninitialised(out_channels=14)
    assert sum(p.numel() for p in btcv.parameters()) == 105_277_806
    assert full_model_shapes_only.pos_embed.shape == (1, 196, 768)
    assert full_model_shapes_only.patch_embed.weight.shape == (768, 1024, 1, 1)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_tiny_forward_shape_and_backward(in_channels):
    torch.manual_seed(0)
    net = TransUNet(in_channels=in_channels, out_channels=9, img_size=224, **TINY)
    x = torch.randn(2, in_channels, 224, 224)
    y = net(x)
    assert y.shape == (2, 9, 224, 224)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_one_channel_is_repeated_to_three():
    torch.manual_seed(0)
    gray = TransUNet(in_channels=1, img_size=64, **TINY).eval()
    rgb = TransUNet(in_channels=3, img_size=64, **TINY).eval()
    rgb.load_state_dict(gray.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)))


def test_skip_and_grid_shapes():
    net = TransUNet(img_size=64, **TINY)
    deep, skips = net.resnet(torch.randn(1, 3, 64, 64))
    assert deep.shape == (1, 512, 4, 4)
    assert [tuple(s.shape) for s in skips] == [(1, 256, 8, 8), (1, 128, 16, 16), (1, 32, 32, 32)]
    # the stage-1 map is 15x15 (unpadded max-pool) and zero-padded at the bottom/right to 16x16
    assert torch.all(skips[1][:, :, -1, :] == 0) and torch.all(skips[1][:, :, :, -1] == 0)


@pytest.mark.parametrize("img_size", [96, (64, 96)])
def test_other_sizes(img_size):
    net = TransUNet(img_size=img_size, **TINY)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    assert net.pos_embed.shape == (1, (h // 16) * (w // 16), TINY["hidden_size"])
    assert net(torch.randn(1, 1, h, w)).shape == (1, 9, h, w)


def test_invalid_inputs_raise_value_error():
    net = TransUNet(img_size=64, **TINY)
    with pytest.raises(ValueError, match=r"expects 1 input channel.*\(B, 1, 64, 64\).*\(1, 2, 64, 64\)"):
        net(torch.randn(1, 2, 64, 64))
    with pytest.raises(ValueError, match=r"img_size \(64, 64\).*\(1, 1, 48, 48\)"):
        net(torch.randn(1, 1, 48, 48))  # a multiple of 16, but not the size the position embeddings fit
    with pytest.raises(ValueError, match=r"\(1, 1, 70, 70\)"):
        net(torch.randn(1, 1, 70, 70))
    with pytest.raises(ValueError, match="4-D"):
        net(torch.randn(1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        TransUNet(img_size=100)
    with pytest.raises(ValueError, match="n_skip"):
        TransUNet(n_skip=4)
    with pytest.raises(ValueError, match="GroupNorm"):
        TransUNet(width_factor=0.75)


def test_n_skip_zero_and_four_channel_root():
    net = TransUNet(in_channels=4, img_size=64, n_skip=0, **TINY)
    assert net.resnet.root_conv.weight.shape[1] == 4
    assert net.decoder_blocks[0].conv1.conv.in_channels == TINY["decoder_head_channels"]
    assert net(torch.randn(1, 4, 64, 64)).shape == (1, 9, 64, 64)


def test_jit_trace_matches_eager():
    torch.manual_seed(0)
    net = TransUNet(img_size=64, **TINY).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        x2 = torch.randn(2, 1, 64, 64)
        torch.testing.assert_close(traced(x2), net(x2))


def test_autocast_bfloat16():
    net = TransUNet(img_size=64, **TINY).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(1, 1, 64, 64))
    assert y.shape == (1, 9, 64, 64) and torch.isfinite(y.float()).all()


# --------------------------------------------------------------------------------------------------------
# npz loader
# --------------------------------------------------------------------------------------------------------
def test_full_size_key_set_matches_official_list(full_model_shapes_only):
    expected = official_npz_shapes()
    assert len(expected) == 353
    assert transunet_npz_spec(full_model_shapes_only) == expected


def test_tiny_spec_matches_formula():
    net = TransUNet(img_size=64, **TINY)
    assert transunet_npz_spec(net) == official_npz_shapes(**TINY_DIMS)


def _tiny_npz(tmp_path, **extra):
    shapes = official_npz_shapes(**TINY_DIMS) | ignored_npz_shapes(TINY_DIMS["hidden"], n_classes=10)
    shapes.update(extra)
    path = tmp_path / "R50+ViT-B_16.npz"
    return path, write_npz(path, shapes)


def test_loader_puts_every_tensor_in_place(tmp_path):
    path, arrays = _tiny_npz(tmp_path)
    net = TransUNet(img_size=224, **TINY)  # 224: the 197 tokens only lose the class token
    decoder_before = {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith("seg_head")}
    report = load_transunet_npz(net, path)

    assert sorted(report["ignored"]) == sorted(ignored_npz_shapes(32))
    assert len(report["loaded"]) == len(official_npz_shapes(**TINY_DIMS))
    assert report["num_tensors"] == len(net.encoder_parameter_names())
    assert report["pos_embed"] == "class token dropped"
    for name, value in decoder_before.items():
        assert torch.equal(dict(net.named_parameters())[name], value)

    # Every encoder parameter holds exactly the values of one npz key (values in [k, k + 0.5) identify key
    # k), and all keys are used once: a bijection, up to layout.
    used_keys = set()
    keys = list(arrays)
    params = dict(net.named_parameters())
    for name in net.encoder_parameter_names():
        values = params[name].detach().numpy()
        key_ids = np.unique(np.floor(values).astype(int))
        assert len(key_ids) == 1, name
        key = keys[key_ids[0]]
        used_keys.add(key)
        source = arrays[key][:, 1:] if key.endswith("pos_embedding") else arrays[key]
        np.testing.assert_array_equal(np.sort(values, axis=None), np.sort(source, axis=None), err_msg=name)
    assert used_keys == set(official_npz_shapes(**TINY_DIMS))

    # Layout conversions.
    def p(name):
        return params[name].detach()

    def hwio(key):
        return torch.from_numpy(arrays[key]).permute(3, 2, 0, 1)

    torch.testing.assert_close(p("resnet.root_conv.weight"), hwio("conv_root/kernel"))
    torch.testing.assert_close(p("resnet.stages.1.0.downsample.weight"), hwio("block2/unit1/conv_proj/kernel"))
    torch.testing.assert_close(p("resnet.stages.0.0.conv2.weight"), hwio("block1/unit1/conv2/kernel"))
    gn_proj_bias = torch.from_numpy(arrays["block3/unit1/gn_proj/bias"])
    torch.testing.assert_close(p("resnet.stages.2.0.gn_proj.bias"), gn_proj_bias)
    torch.testing.assert_close(p("patch_embed.weight"), hwio("embedding/kernel"))
    assert p("resnet.stages.0.0.conv2.weight")[4, 2, 0, 1] == float(arrays["block1/unit1/conv2/kernel"][0, 1, 2, 4])
    att = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
    q = arrays[att + "query/kernel"]  # (hidden, heads, head_dim): output feature = head * head_dim + d
    torch.testing.assert_close(p("blocks.1.attn.to_q.weight"), torch.from_numpy(q.reshape(32, 32).T))
    assert p("blocks.1.attn.to_v.weight")[2 * 8 + 3, 5] == float(arrays[att + "value/kernel"][5, 2, 3])
    assert p("blocks.1.attn.to_k.bias")[3 * 8 + 1] == float(arrays[att + "key/bias"][3, 1])
    out = arrays[att + "out/kernel"]  # (heads, head_dim, hidden)
    assert p("blocks.1.attn.out_proj.weight")[7, 1 * 8 + 4] == float(out[1, 4, 7])
    dense = arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]  # (in, out)
    torch.testing.assert_close(p("blocks.0.mlp.linear1.weight"), torch.from_numpy(dense.T))
    torch.testing.assert_close(
        p("blocks.0.attention_norm.weight"), torch.from_numpy(arrays["Transformer/encoderblock_0/LayerNorm_0/scale"])
    )
    torch.testing.assert_close(
        p("blocks.0.ffn_norm.bias"), torch.from_numpy(arrays["Transformer/encoderblock_0/LayerNorm_2/bias"])
    )
    torch.testing.assert_close(
        p("pos_embed"), torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"][:, 1:])
    )
    net(torch.randn(1, 1, 224, 224))  # still runs


def test_loader_resizes_position_embedding(tmp_path):
    path, arrays = _tiny_npz(tmp_path)
    net = TransUNet(img_size=(64, 96), **TINY)  # grid 4 x 6 from the pretrained 14 x 14
    report = load_transunet_npz(net, path)
    assert report["pos_embed"] == "class token dropped, grid 14x14 -> 4x6"
    grid = torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"][0, 1:]).reshape(14, 14, 32)
    # scipy.ndimage.zoom(order=1) samples the corners exactly, as bilinear with align_corners=True
    expected = F.interpolate(grid.permute(2, 0, 1)[None], size=(4, 6), mode="bilinear", align_corners=True)
    expected = expected[0].permute(1, 2, 0).reshape(1, 24, 32)
    torch.testing.assert_close(net.pos_embed.detach(), expected, rtol=0, atol=1e-5)
    assert torch.equal(net.pos_embed[0, 0], grid[0, 0]) and torch.equal(net.pos_embed[0, -1], grid[-1, -1])


def test_loader_rejects_unknown_missing_and_misshapen_keys(tmp_path):
    net = TransUNet(img_size=64, **TINY)
    before = net.resnet.root_conv.weight.detach().clone()

    path, _ = _tiny_npz(tmp_path, **{"Transformer/encoderblock_2/LayerNorm_0/scale": (32,)})
    with pytest.raises(ValueError, match=r"no place for.*encoderblock_2/LayerNorm_0/scale"):
        load_transunet_npz(net, path)

    shapes = official_npz_shapes(**TINY_DIMS)
    del shapes["block2/unit1/gn_proj/scale"]
    write_npz(path, shapes)
    with pytest.raises(ValueError, match=r"lacks.*block2/unit1/gn_proj/scale"):
        load_transunet_npz(net, path)

    shapes = official_npz_shapes(**TINY_DIMS)
    shapes["embedding/kernel"] = (1, 1, 512, 16)
    write_npz(path, shapes)
    with pytest.raises(ValueError, match=r"embedding/kernel: file shape \(1, 1, 512, 16\)"):
        load_transunet_npz(net, path)

    assert torch.equal(net.resnet.root_conv.weight, before)  # nothing copied on error


def test_loader_needs_three_channel_root(tmp_path):
    path, _ = _tiny_npz(tmp_path)
    with pytest.raises(ValueError, match="in_channels 1 or 3"):
        load_transunet_npz(TransUNet(in_channels=4, img_size=64, **TINY), path)
    report = load_transunet_npz(TransUNet(in_channels=3, img_size=64, **TINY), path)
    assert report["pos_embed"] == "class token dropped, grid 14x14 -> 4x4"
