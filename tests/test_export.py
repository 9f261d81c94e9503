"""TorchScript (MONAI ckpt_export) and ONNX export of every bundle's network, checked against eager.

Tolerance: the maximum absolute difference of the logits must be at most 1e-4 x max(1, max |logit|)
(common.export.DEFAULT_TOLERANCE); the reports print the measured differences.
"""

from __future__ import annotations

import pytest
import torch
from bundle_cases import BUNDLE_TINY
from test_bundles import BUNDLE_NAMES
from test_geometry import random_checkpoint

from common.export import DEFAULT_TOLERANCE, export_onnx, export_torchscript


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_torchscript_export_matches_eager(bundle, tmp_path):
    ckpt = random_checkpoint(bundle, tmp_path / "model.pt")
    report = export_torchscript(bundle, str(tmp_path / "model.ts"), ckpt, overrides=BUNDLE_TINY[bundle])
    print(bundle, report)
    assert report["max_abs_diff"] <= DEFAULT_TOLERANCE * max(1.0, report["max_abs_logit"])
    # MONAI's exported file carries the bundle's metadata
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert b'"network_data_format"' in extra["metadata.json"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_onnx_export_matches_eager(bundle, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install -e '.[test]')")
    ckpt = random_checkpoint(bundle, tmp_path / "model.pt")
    report = export_onnx(bundle, str(tmp_path / "model.onnx"), ckpt, overrides=BUNDLE_TINY[bundle])
    print(bundle, report)
    assert report["max_abs_diff"] <= DEFAULT_TOLERANCE * max(1.0, report["max_abs_logit"])
    assert report["checked_batch"] == 3  # another batch size than the exported example
