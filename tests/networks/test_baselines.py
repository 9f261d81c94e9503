"""Baseline helpers: SwinUNETR weight loading (full and self-supervised layouts), nnU-Net plan, deep supervision."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet, SwinUNETR
from official_layouts import ssl_checkpoint

from common.errors import InputError
from common.losses import StackedDeepSupervisionLoss
from common.networks import nnunet_plan
from common.weights import load_weights

TINY = dict(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def test_ssl_encoder_lands_in_swinvit_and_leaves_the_decoder(tmp_path):
    torch.manual_seed(0)
    src, dst = SwinUNETR(**TINY), SwinUNETR(**TINY)
    decoder_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith("swinViT.")}
    path = tmp_path / "model_swinvit.pt"
    torch.save(ssl_checkpoint(src), path)
    report = load_weights(dst, path)
    assert report["layout"] == "SwinUNETR self-supervised encoder"
    assert len(report["ignored"]) == 4
    for k, v in dst.state_dict().items():
        if k.startswith("swinViT."):
            torch.testing.assert_close(v, src.state_dict()[k], msg=k)  # MLP weights included (fc1 -> linear1)
        else:
            torch.testing.assert_close(v, decoder_before[k], msg=k)
    assert any(".mlp.linear1.weight" in k for k in report["loaded"])


def test_full_state_dict_with_ddp_prefix(tmp_path):
    torch.manual_seed(1)
    src, dst = SwinUNETR(**TINY), SwinUNETR(**TINY)
    path = tmp_path / "finetuned.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    assert load_weights(dst, path)["layout"] == "this network's own"
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k])


def test_unknown_missing_and_misshaped_keys_are_errors(tmp_path):
    src, dst = SwinUNETR(**TINY), SwinUNETR(**TINY)
    ck = ssl_checkpoint(src)
    ck["state_dict"]["module.layers1.0.blocks.0.mystery.weight"] = torch.zeros(1)
    del ck["state_dict"]["module.patch_embed.proj.weight"]
    torch.save(ck, tmp_path / "bad.pt")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(InputError) as e:
        load_weights(dst, tmp_path / "bad.pt")
    assert "converted key 'swinViT.layers1.0.blocks.0.mystery.weight' has no place" in str(e.value)
    assert "missing key 'swinViT.patch_embed.proj.weight'" in str(e.value)
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, before[k])  # nothing copied
    other = SwinUNETR(**{**TINY, "out_channels": 5})
    torch.save(other.state_dict(), tmp_path / "five.pt")
    with pytest.raises(InputError, match="predicts 5 classes, this configuration 3"):
        load_weights(dst, tmp_path / "five.pt", purpose="inference")
    assert load_weights(dst, tmp_path / "five.pt")["reinitialised"] == ["out.conv.conv.bias", "out.conv.conv.weight"]


def test_swinunetr_bundle_size():
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=48)
    assert sum(p.numel() for p in net.parameters()) == 62_187_296


def test_swinunetr_flash_attention_is_the_same_network():
    """The bundle's ``flash_attention`` switch: same state dict, same output to float rounding."""
    kw = dict(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    torch.manual_seed(0)
    ref = SwinUNETR(**kw).eval()
    fast = SwinUNETR(use_flash_attention=True, **kw).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=1e-4, rtol=1e-4)


def test_nnunet_plan_isotropic_and_anisotropic():
    k, s = nnunet_plan.kernels_and_strides([96, 96, 96], [1.5, 1.5, 2.0])
    assert s == [[1, 1, 1]] + [[2, 2, 2]] * 4 and k == [[3, 3, 3]] * 5
    assert nnunet_plan.filters([96, 96, 96], [1.5, 1.5, 2.0]) == [32, 64, 128, 256, 320]
    # BTCV native spacing (0.76 mm in-plane, 3 mm slices): no z pooling and 1-wide z kernels first
    k, s = nnunet_plan.kernels_and_strides([192, 192, 48], [0.76, 0.76, 3.0])
    assert s[1] == [2, 2, 1] and k[0] == [3, 3, 1] and s[2] == [2, 2, 2]
    assert len(nnunet_plan.filters([192, 192, 48], [0.76, 0.76, 3.0])) == len(s)


def test_bundle_unet_parameters_and_deep_supervision():
    kw = dict(patch_size=[96, 96, 96], spacing=[1.5, 1.5, 2.0])
    net = DynUNet(
        3,
        1,
        14,
        nnunet_plan.kernel_sizes(**kw),
        nnunet_plan.strides(**kw),
        nnunet_plan.upsample_kernel_sizes(**kw),
        filters=nnunet_plan.filters(**kw),
        norm_name="instance",
        deep_supervision=True,
        deep_supr_num=3,
    )
    assert sum(p.numel() for p in net.parameters()) == 16_545_240
    loss = StackedDeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    heads = torch.randn(2, 4, 3, 8, 8, 8)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = sum(w * base(heads[:, i], target) for i, w in enumerate([1, 0.5, 0.25, 0.125])) / 1.875
    torch.testing.assert_close(loss(heads, target), expected)
    torch.testing.assert_close(loss(heads[:, 0], target), base(heads[:, 0], target))  # evaluation output
