"""Inputs and places as users have them, through the command line of a 3D and a 2D bundle: an oblique CT, a
``.nii.gz`` cut short, spaces and accents in a file name, two runs writing one folder, a full disk (predictions,
training checkpoints, exports, packages), and what the progress shows."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES, REPO
from test_geometry import random_checkpoint

from common.cohort import is_complete, output_path

BUNDLES_UNDER_TEST = ("unetr_btcv", "swin_unet_btcv")  # a 3D and a 2D bundle


def _cli(args: list[str], cwd, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def _inference(bundle: str, tmp_path: Path, dataset: Path, out: Path, *extra: str, env=None):
    tiny = tmp_path / f"{bundle}_tiny.json"
    tiny.write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    ckpt = tmp_path / f"{bundle}.pt"
    if not ckpt.exists():
        random_checkpoint(bundle, ckpt)
    configs = [str(BUNDLES / bundle / "configs" / "inference.json"), str(tiny)]
    args = ["-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--dataset_dir", str(dataset)]
    args += ["--output_dir", str(out), "--ckpt_path", str(ckpt), *extra]
    return _cli(args, tmp_path, env)


def _one_message(r: subprocess.CompletedProcess) -> str:
    """The command failed with one ``ERROR:`` message and no traceback; the message."""
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr and r.stderr.count("ERROR:") == 1, r.stderr[-4000:]
    return r.stderr[r.stderr.index("ERROR:") :]


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_oblique_cut_short_and_accented_inputs(bundle, tiny_data, tmp_path):
    """A folder holding an oblique CT (20 degrees in-plane), a ``.nii.gz`` whose gzip stream stops half-way, and a file
    named with spaces and an accent: the oblique and the accented ones are written on their own grids, the cut-short
    one is left out with one line naming it (and the run says so at the end)."""
    src = nib.load(str(tiny_data / "imagesTr" / "phantom0000.nii.gz"))
    folder = tmp_path / "cts"
    folder.mkdir()
    t = np.deg2rad(20.0)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), turn @ src.affine), str(folder / "oblique.nii.gz"))
    shutil.copy(tiny_data / "imagesTr" / "phantom0001.nii.gz", folder / "ct scan é 1.nii.gz")
    whole = gzip.compress(nib.Nifti1Image(np.asarray(src.dataobj), src.affine).to_bytes())
    (folder / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    r = _inference(bundle, tmp_path, folder, out)
    message = _one_message(r)
    assert "cut.nii.gz" in message and "oblique.nii.gz" not in message, message
    assert r.stdout.count("  left out: ") == 1 and "cut.nii.gz" in r.stdout, r.stdout[-2000:]
    for name in ("oblique.nii.gz", "ct scan é 1.nii.gz"):
        image, label = folder / name, output_path(str(folder / name), out)
        assert label.name == name.replace(".nii.gz", "_seg.nii.gz") and is_complete(label, str(image)), name
        seg, img = nib.load(str(label)), nib.load(str(image))
        assert seg.shape == img.shape and np.allclose(seg.affine, img.affine, atol=1e-4), name
    assert sorted(p.name for p in out.iterdir()) == ["ct scan é 1_seg.nii.gz", "oblique_seg.nii.gz"]


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_two_runs_writing_one_folder_leave_one_valid_output(bundle, tiny_data, tmp_path):
    """Two inference runs started together on one CT and one output folder: one valid label map, no temporary file."""
    image = tiny_data / "imagesTr" / "phantom0002.nii.gz"
    out = tmp_path / "out"
    random_checkpoint(bundle, tmp_path / f"{bundle}.pt")
    (tmp_path / f"{bundle}_tiny.json").write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    configs = [str(BUNDLES / bundle / "configs" / "inference.json"), str(tmp_path / f"{bundle}_tiny.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--dataset_dir"]
    cmd += [str(image), "--output_dir", str(out), "--ckpt_path", str(tmp_path / f"{bundle}.pt")]
    runs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in runs:
        p.communicate(timeout=600)
        assert p.returncode == 0
    assert [p.name for p in out.iterdir()] == ["phantom0002_seg.nii.gz"]
    assert is_complete(out / "phantom0002_seg.nii.gz", str(image))


# ------------------------------------------------------------------------------------------------ a full disk


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A folder on a disk with no space left: a 1 MB tmpfs, filled. Mounting needs the right to (root, as in this
    project's CI containers); elsewhere the tests skip with the reason (test_io's full-disk tests run everywhere)."""
    mount = tmp_path_factory.mktemp("full-disk")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        with open(mount / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _full_disk_message(r: subprocess.CompletedProcess, folder: Path) -> str:
    message = _one_message(r)
    if "(set BTCV_TRACEBACK" in message:  # a bundle's: what follows is a progress bar's last redraw
        message = message[: message.index("(set BTCV_TRACEBACK")]
    assert f"{folder}: the disk is full" in message.splitlines()[0] and "free" in message, message
    assert len(message.strip().splitlines()) == 2, message  # the problem, then what to do
    return message


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_predictions_to_a_full_disk(bundle, workers, full_disk, tiny_data, tmp_path):
    out = full_disk / f"pred_{bundle}_{workers}"
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    r = _inference(bundle, tmp_path, image, out, "--num_workers", str(workers))
    message = _full_disk_message(r, out)
    assert "phantom0000_seg.nii.gz needs up to" in message, message
    assert not out.exists() or list(out.iterdir()) == []  # nothing partial


def test_training_checkpoints_to_a_full_disk(full_disk, tiny_data, tmp_path):
    bundle = "unetr_btcv"
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({**BUNDLE_TINY[bundle], "max_epochs": 1, "val_interval": 1}), encoding="utf-8")
    configs = [str(BUNDLES / bundle / "configs" / "train.json"), str(tiny)]
    models = full_disk / "models"
    args = ["-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--dataset_dir", str(tiny_data)]
    r = _cli([*args, "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "runs")], tmp_path)
    assert "needs about" in _full_disk_message(r, models)
    assert not models.exists() or list(models.iterdir()) == []


@pytest.mark.parametrize("tool", ["export", "package"])
def test_exports_and_packages_to_a_full_disk(tool, full_disk, tmp_path):
    bundle = "unetr_btcv"
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    if tool == "export":
        target = full_disk / "exports" / "model.onnx"
        args = ["-m", "common.tools.export", "onnx", "--out", str(target)]
    else:
        target = full_disk / "dist" / bundle
        args = ["-m", "common.tools.package", "--out", str(target.parent)]
    r = _cli([*args, "--bundle", bundle, "--ckpt", ckpt, "--config", str(tiny)], REPO)
    _full_disk_message(r, target.parent)
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------ progress


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_progress_shows_in_a_terminal_and_stays_out_of_logs(bundle, tiny_data, tmp_path):
    """In a terminal the progress within each volume is drawn (sliding windows, slice batches), and every volume ends
    with one line and its time; in a log (no terminal) only those lines; with ``--progress false`` neither."""
    import fcntl
    import pty
    import struct
    import termios

    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    extra = ("--num_workers", "0", "--slice_batch", "2") if bundle == "swin_unet_btcv" else ("--num_workers", "0")
    logged = _inference(bundle, tmp_path, image, tmp_path / "a", *extra)
    assert logged.returncode == 0, logged.stderr[-3000:]
    assert "case 1/1: phantom0000 in" in logged.stdout and "it/s" not in logged.stderr, logged.stderr[-2000:]
    quiet = _inference(bundle, tmp_path, image, tmp_path / "b", *extra, "--progress", "false")
    assert quiet.returncode == 0 and "case 1/1" not in quiet.stdout and "it/s" not in quiet.stderr
    # a terminal: standard error is a pseudo-terminal
    tiny = tmp_path / f"{bundle}_tiny.json"
    configs = [str(BUNDLES / bundle / "configs" / "inference.json"), str(tiny)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--dataset_dir"]
    cmd += [str(image), "--output_dir", str(tmp_path / "c"), "--ckpt_path", str(tmp_path / f"{bundle}.pt"), *extra]
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size (bars' width)
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    drawn = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = p.communicate(timeout=600)
    os.close(primary)
    assert p.returncode == 0 and b"case 1/1: phantom0000 in" in out
    # the bar over the windows or the slices ("slices:  50%|#####     | 4/8 [00:01<00:01, 3.9slice/s]"); its
    # finished state may fall within tqdm's redraw interval, so any drawn state counts
    assert re.search(rb"\| *\d+/\d+ \[\d\d:\d\d", drawn), drawn[-2000:]
