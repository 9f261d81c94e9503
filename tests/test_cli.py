"""The command line as users run it: `python -m monai.bundle run` from another directory, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
from conftest import BUNDLES, REPO

UNETR = BUNDLES / "unetr_btcv" / "configs"


def bundle_run(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=600)


def test_bundle_root_found_from_any_directory(tmp_path):
    r = bundle_run(
        "--config_file", str(UNETR / "inference.json"),
        "--run", "[\"$print('ROOT=' + @bundle_root)\"]",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"ROOT={BUNDLES / 'unetr_btcv'}" in r.stdout


def test_bad_input_is_one_clear_message_not_a_traceback(tiny_data, tmp_path):
    """A training datalist with a 2-channel image and an out-of-range label stops before training."""
    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    img0 = nib.load(str(tiny_data / dl["training"][0]["image"]))
    four_d = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*img0.shape, 2), np.int16), img0.affine), str(four_d))
    img = nib.load(str(tiny_data / dl["training"][1]["image"]))
    bad_label = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(np.full(img.shape, 14, np.uint8), img.affine), str(bad_label))
    for item in dl["training"] + dl["validation"]:
        item.update({k: str(tiny_data / v) for k, v in item.items()})
    dl["training"][0]["image"] = str(four_d)
    dl["training"][1]["label"] = str(bad_label)
    (tmp_path / "dataset.json").write_text(json.dumps(dl), encoding="utf-8")
    r = bundle_run(
        "--config_file", str(UNETR / "train.json"), "--dataset_dir", str(tmp_path),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"),
        cwd=REPO,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "ERROR: 2 problems found" in r.stderr, r.stderr
    assert "two_channels.nii.gz: image has 2 channels" in r.stderr
    assert "bad_label.nii.gz: label values outside the label map 0..13: 14" in r.stderr
    assert not (tmp_path / "models").exists(), "training must not start"


def test_command_line_flags_and_nested_overrides(tiny_data, tmp_path):
    """`--load_pretrain false` (a string on the command line) really disables loading; `#` keys override."""
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    r = bundle_run(
        "--config_file", str(UNETR / "inference.json"), "--dataset_dir", str(image),
        "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(tmp_path / "missing.pt"), "--load_pretrain", "false",
        "--spacing", "[6.0,6.0,10.0]", "--roi_size", "[32,32,16]", "--network_def#feature_size", "4",
        "--network_def#hidden_size", "32", "--network_def#mlp_dim", "64", "--network_def#num_heads", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "phantom0000_seg.nii.gz").is_file()
    assert "predictions written to" in r.stdout
