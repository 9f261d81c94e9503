"""Tests for common.networks.mt_unet (MT-UNet).

Tiny configurations for everything that runs a forward pass; the paper-size model is only built on
the meta device (no memory, no compute) for the parameter count and the official shapes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from official_layouts import official_mtunet_checkpoint, official_mtunet_keys

from common.errors import InputError
from common.networks.mt_unet import (
    OFFICIAL_MTM_STAGES,
    GaussianAxialAttention,
    MixedTransformerModule,
    MTUNet,
    build_mtm_stage,
    convert_official_state_dict,
    official_key_to_ours,
)
from common.tools.mt_unet_reference import (
    LoopGaussianAxialAttention,
    ReferenceLGGSA,
    to_loop_reference,
)
from common.weights import load_weights

# grids 8 / 4 / 2 (the 2x2 bottleneck is padded to 4x4 with window 4)
TINY = dict(
    img_size=64,
    stem_channels=(4, 8, 8),
    feature_size=16,
    depths=(1, 1, 1, 1, 1),
    num_heads=2,
    window_size=4,
    ea_heads=4,
    ea_memory=8,
)
TINY_MTM = dict(num_heads=2, window_size=4, ea_heads=4, ea_memory=8)
TOL = dict(atol=1e-5, rtol=1e-5)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter (and BN statistics), so no comparison is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.1)


def _assert_same_forward_and_grads(fast: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> None:
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = fast(x1), ref(x2)
    torch.testing.assert_close(y1, y2, **TOL)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in fast.named_parameters()}
    for name, p in fast.named_parameters():
        q = ref_params[name]
        if p.grad is None or q.grad is None:  # e.g. the unused official `proj` of the axial branch
            assert p.grad is None and q.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# shapes, sizes, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("img_size", [64, 96])  # 96: grids 12 / 6 / 3, padded like the official 14 / 7
def test_output_shape(img_size: int) -> None:
    net = MTUNet(in_channels=1, out_channels=9, **{**TINY, "img_size": img_size})
    y = net(torch.randn(2, 1, img_size, img_size))
    assert y.shape == (2, 9, img_size, img_size)


def test_multichannel_input_without_repeat() -> None:
    net = MTUNet(in_channels=2, out_channels=3, **TINY)
    assert net.cnn_encoder[0].conv1.conv.in_channels == 2
    assert net(torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)


def test_gray_input_is_repeated_to_three_channels() -> None:
    net = MTUNet(in_channels=1, out_channels=3, **TINY).eval()
    assert net.cnn_encoder[0].conv1.conv.in_channels == 3  # official: 1 channel repeated to 3
    x = torch.randn(1, 1, 64, 64)
    rgb = MTUNet(in_channels=3, out_channels=3, **TINY).eval()
    rgb.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x), rgb(x.repeat(1, 3, 1, 1)))


@pytest.fixture(scope="module")
def paper_model() -> MTUNet:
    with torch.device("meta"):
        return MTUNet(in_channels=1, out_channels=9)


def test_parameter_count_matches_official(paper_model: MTUNet) -> None:
    assert sum(p.numel() for p in paper_model.parameters()) == 79_075_389
    # 14 classes (BTCV 13 organs + background): only the 1x1 head differs (64 -> classes)
    assert 79_075_389 + 5 * (64 + 1) == 79_075_714
    with torch.device("meta"):
        assert sum(p.numel() for p in MTUNet(out_channels=14).parameters()) == 79_075_714
    # the position embedding is a learned, zero-initialised parameter of 784 x 256 (counted above)
    assert isinstance(paper_model.pos_embed, torch.nn.Parameter)
    assert paper_model.pos_embed.shape == (1, 784, 256)


def test_official_tensor_shapes(paper_model: MTUNet) -> None:
    """A few official keys (Dootmaan/MT-UNet model/MTUNet.py) with their official shapes."""
    expected = {
        "stem.model.res1.conv.0.conv.weight": (64, 3, 3, 3),
        "stem.model.res3.conv1.weight": (256, 256, 1, 1),
        "stem.trans_dim.conv.weight": (256, 256, 1, 1),
        "stem.position_embedding": (1, 784, 256),
        "encoder.0.block.0.CSAttention.win_atten.attention.query_layer.weight": (256, 256),
        "encoder.0.block.0.CSAttention.dlightconv.linear.weight": (16, 256),
        "encoder.0.block.1.CSAttention.gaussiantrans.shift": (1,),
        "encoder.0.block.1.CSAttention.queeze.weight": (256, 512, 1, 1),
        "encoder.0.block.1.EAttention.query_liner.weight": (1024, 256),
        "encoder.0.block.1.EAttention.linear_0.weight": (64, 32),
        "encoder.0.block.1.EAttention.linear_1.weight": (32, 64),
        "encoder.1.block.2.conv.weight": (1024, 512, 2, 2),
        "bottleneck.1.EAttention.proj.weight": (1024, 4096),
        "decoder.0.block.0.weight": (1024, 512, 2, 2),
        "decoder.0.block.1.weight": (512, 1024, 1, 1),
        "decoder.1.block.2.CSAttention.global_atten.out.weight": (512, 512),
        "decoder_stem.block.trans1.weight": (512, 256, 2, 2),
        "decoder_stem.block.res1.conv.0.conv.weight": (256, 512, 3, 3),
        "SegmentationHead.weight": (9, 64, 1, 1),
    }
    state = paper_model.state_dict()
    fake = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    conversion = convert_official_state_dict(fake, paper_model)
    assert conversion.unused == [] and conversion.problems == []
    assert len(conversion.tensors) == len(expected)
    for ours, t in conversion.tensors.items():
        assert state[ours].shape == t.shape


def test_wrong_input_raises_clear_error() -> None:
    net = MTUNet(**TINY)
    with pytest.raises(ValueError, match=r"img_size 64x64.*expected \(B, 1, 64, 64\), got shape \(1, 1, 224, 224\)"):
        net(torch.randn(1, 1, 224, 224))
    with pytest.raises(
        ValueError, match=r"expects 1 input channel.*expected \(B, 1, 64, 64\), got shape \(1, 3, 64, 64\)"
    ):
        net(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"4-D input"):
        net(torch.randn(1, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        MTUNet(**{**TINY, "img_size": 100})
    with pytest.raises(ValueError, match="1x1 transformer grid"):
        MTUNet(**{**TINY, "img_size": 32})  # window 4 cannot pad a 1x1 bottleneck grid
    small = MTUNet(**{**TINY, "img_size": 32, "window_size": 2}).eval()  # 1x1 bottleneck: BN needs eval at batch 1
    assert small(torch.randn(1, 1, 32, 32)).shape == (1, 9, 32, 32)


def test_runs_on_meta_device() -> None:
    """No tensor is created on a fixed device inside forward (the official code hard-codes .cuda())."""
    with torch.device("meta"):
        net = MTUNet(**TINY)
        y = net(torch.empty(2, 1, 64, 64))
    assert y.device.type == "meta" and y.shape == (2, 9, 64, 64)


# ------------------------------------------------------------------------------------------------
# vectorised vs loop reference (float64, random weights, forward and gradients)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(5, 3), (7, 7)])
def test_gaussian_axial_attention_matches_loop(grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    fast = GaussianAxialAttention(8).double()
    _randomise(fast)
    ref = to_loop_reference(fast)
    assert isinstance(ref, LoopGaussianAxialAttention)
    _assert_same_forward_and_grads(fast, ref, torch.randn(2, *grid, 8, dtype=torch.float64))


@pytest.mark.parametrize("grid", [7, 8, 6])  # 7 and 6 need the official corner padding
def test_mtm_matches_loop_reference(grid: int) -> None:
    torch.manual_seed(1)
    fast = MixedTransformerModule(16, **TINY_MTM).double()
    _randomise(fast, seed=grid)
    ref = to_loop_reference(fast)
    assert isinstance(ref.lgg_sa, ReferenceLGGSA)
    _assert_same_forward_and_grads(fast, ref, torch.randn(2, grid, grid, 16, dtype=torch.float64))


def test_whole_tiny_network_matches_loop_reference() -> None:
    torch.manual_seed(2)
    fast = MTUNet(out_channels=3, **{**TINY, "img_size": 96, "depths": (2, 1, 2, 1, 1)}).double()
    _randomise(fast, seed=3)
    ref = to_loop_reference(fast)
    _assert_same_forward_and_grads(fast, ref, torch.randn(2, 1, 96, 96, dtype=torch.float64))


def test_build_mtm_stage() -> None:
    assert OFFICIAL_MTM_STAGES["encoder1"] == (256, 28) and OFFICIAL_MTM_STAGES["bottleneck"] == (1024, 7)
    stage = build_mtm_stage(16, depth=2, **TINY_MTM)
    assert len(stage) == 2
    assert stage(torch.randn(1, 7, 7, 16)).shape == (1, 7, 7, 16)


# ------------------------------------------------------------------------------------------------
# export and mixed precision
# ------------------------------------------------------------------------------------------------
def test_jit_trace_matches_eager() -> None:
    torch.manual_seed(3)
    net = MTUNet(out_channels=3, **TINY).eval()
    _randomise(net)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", category=torch.jit.TracerWarning)  # shape-only control flow
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        traced = torch.jit.trace(net, torch.randn(2, 1, 64, 64))
        for batch in (2, 3):  # the batch size stays dynamic
            x = torch.randn(batch, 1, 64, 64)
            torch.testing.assert_close(traced(x), net(x))


def test_bf16_autocast_cpu() -> None:
    torch.manual_seed(4)
    net = MTUNet(out_channels=3, **TINY)
    x = torch.randn(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.shape == (2, 3, 64, 64)
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------
# official checkpoints
# ------------------------------------------------------------------------------------------------
def test_official_key_list_covers_model(paper_model: MTUNet) -> None:
    keys = official_mtunet_keys()
    ours = paper_model.state_dict()
    assert len(keys) == len(set(keys)) == len(ours) == 487
    targets = [official_key_to_ours(k) for k in keys]
    assert None not in targets
    assert sorted(targets) == sorted(ours)  # one-to-one onto our state dict
    assert official_key_to_ours("encoder.0.block.0.CSAttention.unknown.weight") is None


@pytest.mark.parametrize("prefix", ["", "module."])  # "module.": saved from nn.DataParallel
def test_load_official_checkpoint(tmp_path, prefix: str) -> None:
    net = MTUNet(out_channels=9, **{**TINY, "depths": (2, 2, 2, 2, 2)})
    official = official_mtunet_checkpoint(net, prefix)
    path = tmp_path / "mtunet_official.pth"
    torch.save(official, path)
    report = load_weights(net, path, purpose="inference")
    assert report["num_tensors"] == len(official) == len(net.state_dict())
    assert report["layout"] == "official MT-UNet checkpoint" and report["not_loaded"] == []
    ours = net.state_dict()
    pairs = {
        "stem.model.res1.conv.0.conv.weight": "cnn_encoder.0.conv1.conv.weight",
        "stem.model.res2.conv.1.bn.running_var": "cnn_encoder.1.conv2.adn.N.running_var",
        "stem.model.res3.conv1.bias": "cnn_encoder.2.refine.conv.bias",
        "stem.model.res3.bn.weight": "cnn_encoder.2.refine.adn.N.weight",
        "stem.trans_dim.bn.num_batches_tracked": "to_tokens.adn.N.num_batches_tracked",
        "stem.position_embedding": "pos_embed",
        "encoder.1.block.1.SlayerNorm.weight": "encoder_stages.1.blocks.1.norm1.weight",
        "encoder.0.block.0.ElayerNorm.bias": "encoder_stages.0.blocks.0.norm2.bias",
        "encoder.0.block.0.CSAttention.win_atten.attention.key_layer.weight": "encoder_stages.0.blocks.0.lgg_sa.local_attn.key.weight",
        "encoder.0.block.0.CSAttention.win_atten.attention.out.bias": "encoder_stages.0.blocks.0.lgg_sa.local_attn.proj.bias",
        "encoder.0.block.1.CSAttention.dlightconv.linear.weight": "encoder_stages.0.blocks.1.lgg_sa.aggregate.score.weight",
        "encoder.1.block.0.CSAttention.global_atten.value_layer.bias": "encoder_stages.1.blocks.0.lgg_sa.global_attn.value.bias",
        "encoder.1.block.0.CSAttention.global_atten.out.weight": "encoder_stages.1.blocks.0.lgg_sa.global_attn.proj.weight",
        "encoder.1.block.0.CSAttention.gaussiantrans.shift": "encoder_stages.1.blocks.0.lgg_sa.global_attn.shift",
        "encoder.1.block.0.CSAttention.gaussiantrans.bias": "encoder_stages.1.blocks.0.lgg_sa.global_attn.bias",
        "encoder.1.block.0.CSAttention.queeze.weight": "encoder_stages.1.blocks.0.lgg_sa.fuse.weight",
        "encoder.1.block.0.EAttention.query_liner.weight": "encoder_stages.1.blocks.0.ea.query.weight",
        "encoder.1.block.0.EAttention.linear_0.weight": "encoder_stages.1.blocks.0.ea.memory_key.weight",
        "encoder.1.block.0.EAttention.linear_1.bias": "encoder_stages.1.blocks.0.ea.memory_value.bias",
        "encoder.1.block.0.EAttention.proj.weight": "encoder_stages.1.blocks.0.ea.proj.weight",
        "encoder.1.block.2.conv.weight": "encoder_stages.1.down.conv.weight",
        "encoder.1.block.2.bn.running_mean": "encoder_stages.1.down.adn.N.running_mean",
        "bottleneck.1.EAttention.proj.bias": "bottleneck.1.ea.proj.bias",
        "decoder.0.block.0.weight": "decoder_stages.0.up.weight",
        "decoder.0.block.1.weight": "decoder_stages.0.fuse.weight",
        "decoder.0.block.3.SlayerNorm.bias": "decoder_stages.0.blocks.1.norm1.bias",
        "decoder.1.block.0.bias": "decoder_stages.1.up.bias",
        "decoder.1.block.1.CSAttention.queeze.bias": "decoder_stages.1.blocks.0.lgg_sa.fuse.bias",
        "decoder.1.block.2.EAttention.linear_0.bias": "decoder_stages.1.blocks.1.ea.memory_key.bias",
        "decoder_stem.block.trans1.weight": "cnn_decoder.ups.0.weight",
        "decoder_stem.block.trans3.bias": "cnn_decoder.ups.2.bias",
        "decoder_stem.block.res1.conv.0.bn.weight": "cnn_decoder.blocks.0.conv1.adn.N.weight",
        "decoder_stem.block.res3.bn.running_var": "cnn_decoder.blocks.2.refine.adn.N.running_var",
        "SegmentationHead.weight": "head.weight",
        "SegmentationHead.bias": "head.bias",
    }
    for official_key, our_key in pairs.items():
        torch.testing.assert_close(ours[our_key], official[prefix + official_key], rtol=0, atol=0)
    # every official tensor landed, unchanged, at its place; nothing in our model kept its init
    for key, value in official.items():
        torch.testing.assert_close(ours[official_key_to_ours(key[len(prefix) :])], value, rtol=0, atol=0)
    official_sums = sorted(float(t.double().sum()) for t in official.values())
    assert sorted(float(t.double().sum()) for t in ours.values()) == pytest.approx(official_sums)


def test_load_official_checkpoint_reports_problems(tmp_path) -> None:
    net = MTUNet(out_channels=9, **{**TINY, "depths": (2, 2, 2, 2, 2)})
    official = official_mtunet_checkpoint(net)
    official["encoder.0.block.0.CSAttention.extra.weight"] = torch.zeros(1)
    del official["bottleneck.0.CSAttention.gaussiantrans.shift"]
    path = tmp_path / "bad.pth"
    torch.save(official, path)
    with pytest.raises(InputError) as err:
        load_weights(net, path)
    msg = str(err.value)
    assert "encoder.0.block.0.CSAttention.extra.weight" in msg
    assert "bottleneck.0.lgg_sa.global_attn.shift" in msg
    # a checkpoint for another number of classes: refused for inference, the head re-initialised for fine-tuning
    other = MTUNet(out_channels=4, **{**TINY, "depths": (2, 2, 2, 2, 2)})
    torch.save(official_mtunet_checkpoint(other), path)
    with pytest.raises(InputError, match="predicts 4 classes, this configuration 9"):
        load_weights(net, path, purpose="inference")
    assert load_weights(net, path, purpose="finetune")["reinitialised"] == ["head.bias", "head.weight"]
