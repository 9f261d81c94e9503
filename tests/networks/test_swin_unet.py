"""Tests of the Swin-Unet re-implementation (common/networks/swin_unet.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from official_layouts import (
    expected_mask,
    expected_relative_position_index,
    official_swin_checkpoint,
    official_swin_unet_state_dict,
    shift_region,
)

from common.errors import InputError
from common.networks.swin_unet import SwinUnet, SwinUnetStage
from common.weights import load_weights

TINY = dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=2)
# tiny geometry: grids 8, 4, 2 -> window 2 with shift 1 in stages 0-1; stage 2 grid == window -> no shift


@pytest.fixture(scope="module")
def full_model() -> SwinUnet:
    torch.manual_seed(0)
    return SwinUnet(in_channels=1, out_channels=9).eval()


# ------------------------------------------------------------------------------------------------ shapes, counts


def test_full_size_output_shape(full_model):
    with torch.no_grad():
        y = full_model(torch.randn(1, 1, 224, 224))
    assert y.shape == (1, 9, 224, 224)


def test_tiny_output_shape_and_backward():
    torch.manual_seed(0)
    net = SwinUnet(in_channels=1, out_channels=3, **TINY)
    y = net(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, 3, 32, 32)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_three_channel_input():
    net = SwinUnet(in_channels=3, out_channels=2, **TINY).eval()
    assert net.patch_embed.proj.weight.shape[1] == 3
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_gray_input_repeated_to_rgb():
    torch.manual_seed(0)
    gray = SwinUnet(in_channels=1, out_channels=2, **TINY).eval()
    rgb = SwinUnet(in_channels=3, out_channels=2, **TINY).eval()
    rgb.load_state_dict(gray.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_parameter_count_paper_configuration(full_model):
    assert sum(p.numel() for p in full_model.parameters()) == 27_168_900
    net14 = SwinUnet(in_channels=1, out_channels=14)
    assert sum(p.numel() for p in net14.parameters()) == 27_169_380  # 1x1 conv without bias: +96 per class


def test_architecture_facts(full_model):
    m = full_model
    assert [s.resolution for s in m.layers] == [56, 28, 14, 7]
    assert [(s.window_size, s.shift_size) for s in m.layers] == [(7, 3), (7, 3), (7, 3), (7, 0)]
    assert [len(s.blocks) for s in m.layers] == [2, 2, 2, 2]
    assert [len(s.blocks) for s in m.layers_up[1:]] == [2, 2, 2]  # decoder mirrors the encoder depths
    assert m.layers_up[0].expand.weight.shape == (1536, 768) and m.layers_up[0].expand.bias is None
    assert m.layers_up[1].upsample.expand.weight.shape == (768, 384)
    assert [tuple(c.weight.shape) for c in m.concat_back_dim[1:]] == [(384, 768), (192, 384), (96, 192)]
    assert m.up.expand.weight.shape == (1536, 96) and m.up.expand.bias is None
    assert m.output.weight.shape == (9, 96, 1, 1) and m.output.bias is None
    assert m.layers[0].downsample.reduction.weight.shape == (192, 384)
    assert m.layers[0].downsample.reduction.bias is None
    blk = m.layers[0].blocks[0]
    assert blk.attn.qkv.bias is not None and blk.norm1.eps == 1e-5


def test_drop_path_rates_linear_and_mirrored(full_model):
    dpr = torch.linspace(0, 0.2, 8).tolist()

    def rate(block):
        return getattr(block.drop_path, "drop_prob", 0.0)

    enc = [rate(b) for s in full_model.layers for b in s.blocks]
    assert enc == dpr
    dec = [[rate(b) for b in s.blocks] for s in full_model.layers_up[1:]]
    assert dec == [dpr[4:6], dpr[2:4], dpr[0:2]]


# ------------------------------------------------------------------------------------------------ input errors


def test_wrong_channel_count_raises():
    net = SwinUnet(in_channels=1, out_channels=2, **TINY)
    with pytest.raises(ValueError, match=r"1 input channel.*\(2, 3, 32, 32\)"):
        net(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 1, 32, 24), (1, 32, 32)])
def test_wrong_input_size_raises(shape):
    net = SwinUnet(in_channels=1, out_channels=2, **TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        net(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_size=200),  # grid 50: not a multiple of window 7
        dict(img_size=226),  # not a multiple of the patch size
        dict(img_size=224, embed_dim=96, num_heads=(5, 6, 12, 24)),  # 96 channels / 5 heads
        dict(img_size=224, depths=(2, 2, 2)),  # depths / heads length mismatch
    ],
)
def test_unsupported_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        SwinUnet(**kwargs)


# ------------------------------------------------------------------------------------------------ windows, mask


def test_small_grid_uses_full_window_without_shift():
    # official rule: grid <= window -> window = grid, shift 0 (bias table sized for the reduced window)
    stage = SwinUnetStage(dim=8, resolution=4, depth=2, num_heads=2, window_size=7)
    assert (stage.window_size, stage.shift_size) == (4, 0) and stage.attn_mask is None
    for blk in stage.blocks:
        assert tuple(blk.shift_size) == (0, 0) and tuple(blk.window_size) == (4, 4)
        assert blk.attn.relative_position_bias_table.shape == ((2 * 4 - 1) ** 2, 2)


def test_relative_position_index_and_mask_values():
    stage = SwinUnetStage(dim=8, resolution=14, depth=2, num_heads=2, window_size=7)
    assert torch.equal(stage.blocks[0].attn.relative_position_index, expected_relative_position_index(7))
    assert torch.equal(stage.attn_mask, expected_mask(14, 7, 3))


@pytest.mark.parametrize("flash", [False, True], ids=["written-out", "sdpa"])
def test_shifted_window_never_attends_across_boundary(flash):
    """Both attention paths (MONAI's ``scaled_dot_product_attention`` one runs here: autograd is off)."""
    torch.manual_seed(0)
    res, ws, shift = 8, 4, 2
    stage = SwinUnetStage(dim=8, resolution=res, depth=2, num_heads=2, window_size=ws, use_flash_attention=flash).eval()
    blk = stage.blocks[1]
    assert tuple(blk.shift_size) == (shift, shift)
    x = torch.randn(1, res, res, 8)
    for p in [(0, 0), (3, 6), (7, 1), (5, 5)]:
        x2 = x.clone()
        x2[0, p[0], p[1]] += 3.0 * torch.randn(8)  # not a constant shift: LayerNorm would remove it
        with torch.no_grad():
            delta = (blk(x2, stage.attn_mask) - blk(x, stage.attn_mask)).abs().amax(-1)[0]
        key_p = (shift_region(p[0], res, ws, shift), shift_region(p[1], res, ws, shift))
        same = torch.zeros(res, res, dtype=torch.bool)
        for h, w in itertools.product(range(res), range(res)):
            same[h, w] = (shift_region(h, res, ws, shift), shift_region(w, res, ws, shift)) == key_p
        assert (delta[~same] < 1e-6).all(), f"token {p} leaked into {(~same & (delta >= 1e-6)).nonzero().tolist()}"
        assert (delta[same] > 1e-4).all(), f"token {p} does not reach its own shifted window"
    # without the mask the wrap-around token (0, 0) does reach tokens across the shifted boundary
    x2 = x.clone()
    x2[0, 0, 0] += 3.0 * torch.randn(8)
    with torch.no_grad():
        delta = (blk(x2, torch.zeros_like(stage.attn_mask)) - blk(x, torch.zeros_like(stage.attn_mask))).abs()
    assert delta[0, res - 1, res - 1].amax() > 1e-4


def test_flash_attention_is_the_same_network():
    """``use_flash_attention`` changes how the window attention is computed, not the parameters or the output."""
    torch.manual_seed(0)
    ref = SwinUnet(in_channels=1, out_channels=3, **TINY).eval()
    fast = SwinUnet(in_channels=1, out_channels=3, use_flash_attention=True, **TINY).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    # with autograd on (training), MONAI computes the attention written out: identical
    assert torch.equal(fast(x), ref(x))


# ------------------------------------------------------------------------------------------------ tracing, dtype


def test_torchscript_trace_matches_eager():
    torch.manual_seed(0)
    net = SwinUnet(in_channels=1, out_channels=3, **TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)  # compared explicitly below
        torch.testing.assert_close(traced(x), net(x))
        x2 = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(traced(x2), net(x2))


def test_autocast_bfloat16():
    net = SwinUnet(in_channels=1, out_channels=3, **TINY).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y.float()).all()


# ------------------------------------------------------------------------------------------------ pretrained loader


def _ours(key: str) -> str:
    return key.replace("mlp.fc1", "mlp.linear1").replace("mlp.fc2", "mlp.linear2")


def test_pretrained_loader_full_size(full_model, tmp_path):
    sd = official_swin_checkpoint()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": sd}, path)
    before = {k: v.clone() for k, v in full_model.state_dict().items()}
    report = load_weights(full_model, path)
    after = full_model.state_dict()

    # encoder: every stored block of the (2,2,2,2) encoder, patch embedding, mergings and final norm landed
    for key, value in sd.items():
        if key.startswith("head.") or "attn_mask" in key:
            continue
        if key.startswith("layers.2.blocks.") and int(key.split(".")[3]) >= 2:
            continue
        assert torch.equal(after[_ours(key)], value), key
    # decoder mirror: encoder stage i -> layers_up.(3 - i), blocks only
    for i, j in itertools.product(range(3), range(2)):
        for name in [
            "norm1.weight",
            "attn.qkv.weight",
            "attn.relative_position_bias_table",
            "mlp.fc1.weight",
            "mlp.fc2.bias",
            "norm2.bias",
            "attn.proj.weight",
        ]:
            src = f"layers.{i}.blocks.{j}.{name}"
            assert torch.equal(after[_ours(f"layers_up.{3 - i}.blocks.{j}.{name}")], sd[src]), src
    # decoder-only parts keep their initialisation
    untouched = [
        "layers_up.0.expand.weight",
        "layers_up.1.upsample.expand.weight",
        "layers_up.2.upsample.norm.weight",
        "concat_back_dim.1.weight",
        "concat_back_dim.3.bias",
        "norm_up.weight",
        "up.expand.weight",
        "up.norm.bias",
        "output.weight",
    ]
    for name in untouched:
        assert torch.equal(after[name], before[name]), name
    params = {n for n, _ in full_model.named_parameters()}
    assert sorted({n.rsplit(".", 1)[0] for n in report["not_loaded"] if n in params}) == sorted(
        [
            "concat_back_dim.1",
            "concat_back_dim.2",
            "concat_back_dim.3",
            "layers_up.0.expand",
            "layers_up.0.norm",
            "layers_up.1.upsample.expand",
            "layers_up.1.upsample.norm",
            "layers_up.2.upsample.expand",
            "layers_up.2.upsample.norm",
            "norm_up",
            "output",
            "up.expand",
            "up.norm",
        ]
    )
    # by design drops: classifier head and stage-2 blocks 2..5 (Swin-T depth 6 vs 2)
    dropped = report["ignored"]
    assert "head.weight" in dropped and "head.bias" in dropped
    assert all(f"layers.2.blocks.{j}.attn.qkv.weight" in dropped for j in range(2, 6))
    assert "layers.3.blocks.0.attn.qkv.weight (decoder copy)" in dropped
    assert "layers.0.downsample.reduction.weight (decoder copy)" in dropped
    assert len(sd) == 190 and report["layout"] == "Swin ImageNet (Microsoft)"
    assert report["num_tensors"] == 119 + 78 and report["recomputed_buffers"] == []


def test_pretrained_loader_without_mask_buffers(tmp_path):
    cfg = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window=2, img_size=32, patch=4)
    sd = official_swin_checkpoint(**cfg, masks=False)
    torch.save({"model": sd}, tmp_path / "w.pth")
    net = SwinUnet(in_channels=1, out_channels=2, **TINY)
    load_weights(net, tmp_path / "w.pth")
    assert torch.equal(net.layers[1].blocks[1].mlp.linear1.weight, sd["layers.1.blocks.1.mlp.fc1.weight"])
    assert torch.equal(net.layers_up[1].blocks[1].mlp.linear1.weight, sd["layers.1.blocks.1.mlp.fc1.weight"])


def test_pretrained_loader_rejects_unknown_missing_misshapen_and_wrong_geometry(tmp_path):
    cfg = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window=2, img_size=32, patch=4)
    net = SwinUnet(in_channels=1, out_channels=2, **TINY)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = official_swin_checkpoint(**cfg)
    sd["layers.0.blocks.0.attn.extra"] = torch.zeros(3)
    del sd["layers.1.downsample.norm.bias"]
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match=r"(?s)attn\.extra.*layers\.1\.downsample\.norm\.bias"):
        load_weights(net, tmp_path / "bad.pth")
    wrong = official_swin_checkpoint(**{**cfg, "embed_dim": 16, "num_heads": (2, 4, 8)})
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="shape of 'patch_embed.proj.weight'"):
        load_weights(net, tmp_path / "wrong.pth")
    mask = official_swin_checkpoint(**cfg)
    mask["layers.0.blocks.1.attn_mask"] = mask["layers.0.blocks.1.attn_mask"] + 1
    torch.save({"model": mask}, tmp_path / "mask.pth")
    with pytest.raises(InputError, match="attn_mask: values differ from the window geometry"):
        load_weights(net, tmp_path / "mask.pth")
    with pytest.raises(InputError, match="not found"):
        load_weights(net, tmp_path / "missing.pth")
    # a 2-channel model has a 2-channel patch embedding: the official loader silently drops the 3-channel kernel
    two = SwinUnet(in_channels=2, out_channels=2, **TINY)
    torch.save({"model": official_swin_checkpoint(**cfg)}, tmp_path / "w.pth")
    with pytest.raises(InputError, match="patch_embed.proj.weight"):
        load_weights(two, tmp_path / "w.pth")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing copied on error


def test_official_checkpoint_keys_map_onto_the_full_model(full_model):
    shapes = official_swin_unet_state_dict()
    assert len(shapes) == 238 and sum(1 for k in shapes if k.endswith("attn_mask")) == 6
    ours = {k: tuple(v.shape) for k, v in full_model.state_dict().items()}
    plain = {_ours(k[len("swin_unet.") :]): s for k, s in shapes.items() if not k.endswith("attn_mask")}
    assert plain == ours


def test_official_checkpoint_loads_every_tensor_in_place(tmp_path):
    """A full checkpoint of the official training script loads strictly (true geometry buffers, random weights):
    every tensor lands unchanged; a wrong mask is refused."""
    cfg = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window=2, img_size=32, patch=4, n_classes=2)
    net = SwinUnet(in_channels=1, out_channels=2, **TINY)
    masks = {}
    for prefix, stages in (("layers", net.layers), ("layers_up", net.layers_up)):
        for i, stage in enumerate(stages):
            if isinstance(stage, SwinUnetStage) and stage.attn_mask is not None:
                masks[f"swin_unet.{prefix}.{i}.blocks.1.attn_mask"] = stage.attn_mask.clone()
    g = torch.Generator().manual_seed(3)
    official = {}
    for i, (k, s) in enumerate(official_swin_unet_state_dict(**cfg).items()):
        if k.endswith("attn_mask"):
            official[k] = masks.pop(k)
        elif k.endswith("relative_position_index"):
            official[k] = expected_relative_position_index(int(s[0] ** 0.5))
        else:
            official[k] = i + 0.5 * torch.rand(s, generator=g)
    assert masks == {}  # our model has a mask exactly where the official one has
    torch.save(official, tmp_path / "best_model.pth")
    report = load_weights(net, tmp_path / "best_model.pth", purpose="inference")
    assert report["layout"] == "official Swin-Unet checkpoint" and report["not_loaded"] == []
    ours = net.state_dict()
    for k, v in official.items():
        if not k.endswith("attn_mask"):
            assert torch.equal(ours[_ours(k[len("swin_unet.") :])], v), k
    official["swin_unet.layers.0.blocks.1.attn_mask"] = official["swin_unet.layers.0.blocks.1.attn_mask"] * 0
    torch.save(official, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="attn_mask: values differ"):
        load_weights(net, tmp_path / "bad.pth", purpose="inference")
