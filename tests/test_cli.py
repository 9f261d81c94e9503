"""The command line as users run it: `python -m monai.bundle run` from another directory, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
from bundle_cases import TINY_CLI
from conftest import BUNDLES, REPO

UNETR = BUNDLES / "unetr_btcv" / "configs"


def bundle_run(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=600)


def test_bundle_root_found_from_any_directory(tmp_path):
    r = bundle_run(
        "--config_file",
        str(UNETR / "inference.json"),
        "--run",
        "[\"$print('ROOT=' + @bundle_root)\"]",
        cwd=tmp_path,
    )
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
        "--config_file",
        str(UNETR / "train.json"),
        "--dataset_dir",
        str(tmp_path),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "runs"),
        cwd=REPO,
    )
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
        "--config_file",
        str(UNETR / "inference.json"),
        "--dataset_dir",
        str(image),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(tmp_path / "missing.pt"),
        "--load_pretrain",
        "false",
        *TINY_CLI,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "phantom0000_seg.nii.gz").is_file()
    assert "predictions written to" in r.stdout


def test_phantom_command_writes_the_datalist_it_prints(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.phantom",
            str(tmp_path / "ph"),
            "--cases",
            "3",
            "--validation",
            "1",
            "--shape",
            "24",
            "24",
            "10",
            "--spacing",
            "8",
            "8",
            "12",
            "--seed",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    dl = json.loads((tmp_path / "ph" / "dataset.json").read_text(encoding="utf-8"))
    assert f"datalist: {tmp_path / 'ph' / 'dataset.json'}" in r.stdout
    assert len(dl["training"]) == 2 and len(dl["validation"]) == 1
    img = nib.load(str(tmp_path / "ph" / dl["training"][0]["image"]))
    assert img.shape == (24, 24, 10) and np.allclose(np.abs(np.diag(img.affine))[:3], (8, 8, 12))


def test_leaderboard_command_compares_two_prediction_folders(tiny_data, tmp_path):
    """`python -m common.tools.leaderboard` with `--predictions`, `--pred-ids` and `--compare`: the oracle beats an empty
    prediction by exactly its mean Dice, and a bad argument is one clear line."""
    import shutil

    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    oracle, empty = tmp_path / "oracle", tmp_path / "empty"
    oracle.mkdir()
    empty.mkdir()
    for it in dl["validation"]:
        name = it["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz")
        shutil.copy(tiny_data / it["label"], oracle / name)
        lab = nib.load(str(tiny_data / it["label"]))
        nib.save(nib.Nifti1Image(np.zeros(lab.shape, np.uint8), lab.affine), str(empty / name))
    cmd = [
        sys.executable,
        "-m",
        "common.tools.leaderboard",
        "--predictions",
        f"oracle={oracle}",
        "--predictions",
        f"empty={empty}",
        "--dataset_dir",
        str(tiny_data),
        "--compare",
        "oracle",
        "empty",
        "--overlay-cases",
        "0",
        "--out",
        str(tmp_path / "board"),
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "board" / "leaderboard.json").read_text(encoding="utf-8"))
    assert doc["bundles"]["oracle"]["mean"]["mean_over_organs"] == 1.0
    assert doc["bundles"]["empty"]["mean"]["mean_over_organs"] == 0.0
    assert doc["comparison"]["a"] == "oracle" and doc["comparison"]["mean_dice"]["mean_difference"] == 1.0
    assert "leaderboard written to" in r.stdout
    bad = subprocess.run(
        cmd[:3] + ["--protocol", "btcv99"], cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=300
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "btcv99" in bad.stderr


def test_every_tool_reports_bad_input_the_same_way(monkeypatch, capsys):
    """The tools' ``main`` share one rule: an input problem, however wrapped, is ``ERROR:`` and its message with
    status 1; any other exception keeps its traceback, and so does an input problem under BTCV_TRACEBACK=1."""
    import pytest

    import common.tools.ensemble
    import common.tools.export
    import common.tools.leaderboard
    import common.tools.package
    import common.tools.prepare
    import common.tools.synapse
    from common.errors import InputError, command

    for tool in (common.tools.ensemble, common.tools.export, common.tools.leaderboard, common.tools.package,
                 common.tools.prepare, common.tools.synapse):  # fmt: skip
        assert getattr(tool.main, "__wrapped__", None) is not None, f"{tool.__name__}.main is not a @command"

    @command
    def wrapped(argv=None):
        try:
            raise InputError("/data/ct.nii.gz: no voxels", hint="give a CT")
        except InputError as e:
            raise RuntimeError("applying transform ...") from e  # as MONAI wraps it

    monkeypatch.delenv("BTCV_TRACEBACK", raising=False)
    assert wrapped([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: /data/ct.nii.gz: no voxels") and "give a CT" in err and "Traceback" not in err

    @command
    def broken(argv=None):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken([])
    monkeypatch.setenv("BTCV_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        wrapped([])
