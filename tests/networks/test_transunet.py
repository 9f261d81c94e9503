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
from official_layouts import (
    ignored_npz_shapes,
    official_npz_shapes,
    official_transunet_state_dict,
    write_npz,
)

from common.errors import InputError
from common.networks.transunet import (
    TransUNet,
    official_key_to_ours,
    transunet_npz_spec,
)
from common.weights import load_weights

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
    with pytest.raises(ValueError, match=r"img_size 64x64.*\(1, 1, 48, 48\)"):
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
    report = load_weights(net, path)

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
    report = load_weights(net, path)
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
    with pytest.raises(InputError, match=r"encoderblock_2/LayerNorm_0/scale' has no place"):
        load_weights(net, path)

    shapes = official_npz_shapes(**TINY_DIMS)
    del shapes["block2/unit1/gn_proj/scale"]
    write_npz(path, shapes)
    with pytest.raises(InputError, match=r"block2/unit1/gn_proj/scale' is missing"):
        load_weights(net, path)

    shapes = official_npz_shapes(**TINY_DIMS)
    shapes["embedding/kernel"] = (1, 1, 512, 16)
    write_npz(path, shapes)
    with pytest.raises(InputError, match=r"embedding/kernel: file shape \(1, 1, 512, 16\)"):
        load_weights(net, path)

    assert torch.equal(net.resnet.root_conv.weight, before)  # nothing copied on error


def test_loader_needs_three_channel_root(tmp_path):
    path, _ = _tiny_npz(tmp_path)
    with pytest.raises(InputError, match="in_channels 1 or 3"):
        load_weights(TransUNet(in_channels=4, img_size=64, **TINY), path)
    report = load_weights(TransUNet(in_channels=3, img_size=64, **TINY), path)
    assert report["pos_embed"] == "class token dropped, grid 14x14 -> 4x4"


# ------------------------------------------------------------------------ checkpoints of the official training code


TINY_OFFICIAL = dict(
    block_units=(1, 1, 1),
    width=32,
    hidden=32,
    layers=2,
    mlp=64,
    grid=4,
    n_classes=9,
    decoder_head=32,
    decoder=(32, 16, 16, 8),
)


def test_official_checkpoint_keys_map_onto_the_full_model(full_model_shapes_only):
    ours = {k: tuple(v.shape) for k, v in full_model_shapes_only.state_dict().items()}
    official = official_transunet_state_dict()
    assert len(official) == len(ours) == 409
    mapped = {official_key_to_ours(k): s for k, s in official.items()}
    assert mapped == ours  # a bijection onto our keys, every shape equal


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_loads_every_tensor_in_place(tmp_path, prefix):
    """An official full checkpoint (random values; tensor k holds values in [k, k + 0.5)) loads strictly, every
    tensor lands unchanged at its place, and inference refuses another class count."""
    shapes = official_transunet_state_dict(**TINY_OFFICIAL)
    official = {k: (i + 0.5 * torch.rand(s)) if s else torch.tensor(i) for i, (k, s) in enumerate(shapes.items())}
    torch.save({prefix + k: v for k, v in official.items()}, tmp_path / "epoch_149.pth")
    net = TransUNet(out_channels=9, img_size=64, **TINY)
    report = load_weights(net, tmp_path / "epoch_149.pth", purpose="inference")
    assert report["layout"] == "official TransUNet checkpoint" and report["not_loaded"] == []
    ours = net.state_dict()
    by_hand = {  # independent of the converter's rules
        "transformer.embeddings.hybrid_model.body.block2.unit1.downsample.weight": "resnet.stages.1.0.downsample.weight",
        "transformer.embeddings.hybrid_model.root.gn.bias": "resnet.root_gn.bias",
        "transformer.embeddings.position_embeddings": "pos_embed",
        "transformer.encoder.layer.1.attn.key.weight": "blocks.1.attn.to_k.weight",
        "transformer.encoder.layer.0.attn.out.bias": "blocks.0.attn.out_proj.bias",
        "transformer.encoder.layer.1.ffn.fc2.weight": "blocks.1.mlp.linear2.weight",
        "decoder.conv_more.1.running_var": "conv_more.adn.N.running_var",
        "decoder.blocks.2.conv1.0.weight": "decoder_blocks.2.conv1.conv.weight",
        "decoder.blocks.3.conv2.1.num_batches_tracked": "decoder_blocks.3.conv2.adn.N.num_batches_tracked",
        "segmentation_head.0.weight": "seg_head.weight",
    }
    for key, name in by_hand.items():
        assert torch.equal(ours[name], official[key]), key
    keys = list(official)
    for name, value in ours.items():  # every tensor of ours holds exactly one official tensor
        ids = torch.unique(value.double().floor()).tolist()
        assert len(ids) == 1 and torch.equal(value, official[keys[int(ids[0])]]), name
    assert len({int(v.double().floor().unique()[0]) for v in ours.values()}) == len(official)
    fourteen = TransUNet(out_channels=14, img_size=64, **TINY)
    with pytest.raises(InputError, match="predicts 9 classes, this configuration 14"):
        load_weights(fourteen, tmp_path / "epoch_149.pth", purpose="inference")
    report = load_weights(fourteen, tmp_path / "epoch_149.pth", purpose="finetune")
    assert report["reinitialised"] == ["seg_head.bias", "seg_head.weight"]
