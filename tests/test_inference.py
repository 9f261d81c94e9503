"""The inference switches of the 3D bundles (common.inference): autocast, stitching device, label inversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_TINY
from test_bundles import run_workflow
from test_geometry import random_checkpoint

from common.inference import SlidingWindowInferer, autocast_call, autocast_dtype, invert_labels, stitching_plan

BUNDLES_3D = ["unetr_btcv", "swin_unetr_btcv", "unet_btcv"]


def test_switch_values_are_checked():
    assert autocast_dtype(None) is None and autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") == torch.bfloat16 and autocast_dtype("FP16") == torch.float16
    with pytest.raises(ValueError, match="autocast must be"):
        autocast_dtype("int8")
    assert invert_labels("labels") and not invert_labels("probabilities")
    with pytest.raises(ValueError, match="invert must be one of"):
        invert_labels("nearest")
    with pytest.raises(ValueError, match="stitch must be one of"):
        SlidingWindowInferer((8, 8, 8), stitch="gpu")


def test_stitching_plan_moves_large_outputs_to_the_cpu():
    assert stitching_plan((100, 100, 100), 14, None) == "device"  # a CPU input
    need = 15 * 100**3 * 4
    assert stitching_plan((100, 100, 100), 14, free_bytes=4 * need) == "device"
    assert stitching_plan((100, 100, 100), 14, free_bytes=need) == "cpu"  # only half the free memory may be used
    assert stitching_plan((512, 512, 300), 14, free_bytes=8 * 2**30) == "cpu"


def test_inferer_switches_change_nothing_but_precision():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(1, 1, 20, 18, 12)
    with torch.no_grad():
        ref = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5)(x, net)
        on_cpu = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5, stitch="cpu")(x, net)
        bf16 = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5, autocast="bf16")(x, net)
    assert torch.equal(ref, on_cpu)
    assert bf16.dtype == torch.float32 and ref.shape == bf16.shape
    assert 0 < (bf16 - ref).abs().max() < 0.05  # reduced precision inside, float32 outside
    out = autocast_call(lambda t: (t * 2, {"a": t}), "bf16")(x)
    assert out[0].dtype == torch.float32 and out[1]["a"].dtype == torch.float32


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_fast_switches_in_the_bundle(bundle, tiny_data, tmp_path):
    """`--autocast bf16 --invert labels` runs through the bundle and keeps the input's grid and label set."""
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    labels = {}
    for name, switches in {"default": {}, "fast": {"autocast": "bf16", "invert": "labels"}}.items():
        out = tmp_path / name
        run_workflow(
            bundle, ("inference.json",), "infer", dataset_dir=str(image), output_dir=str(out), ckpt_path=ckpt,
            **BUNDLE_TINY[bundle], **switches,
        )  # fmt: skip
        (pred,) = sorted(out.glob("*.nii.gz"))
        img, seg = nib.load(str(image)), nib.load(str(pred))
        assert seg.shape[:3] == img.shape and np.allclose(seg.affine, img.affine, atol=1e-4)
        labels[name] = np.asarray(seg.dataobj)
        assert set(np.unique(labels[name])) <= set(range(14))
    # a random network's near-ties flip under bf16; most voxels must still agree
    assert (labels["default"] == labels["fast"]).mean() > 0.8
