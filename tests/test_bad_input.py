"""Every bad input is one clear message on every entry point, with DataLoader workers off and on.

One matrix: bad input class x entry point. Each cell asserts that the run stops with an ``InputError`` (what the
command line prints as one ``ERROR:`` message, exit status 1), that the message names the offending file and is
short (no traceback, no worker wrapper text), and that no output file was written. A few cells also run the real
command line in a subprocess for the exit status and the absence of any traceback on stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_TINY, TINY_CLI
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow
from test_geometry import random_checkpoint

from common.errors import InputError, find_input_error

BUNDLES_UNDER_TEST = ("unetr_btcv", "swin_unet_btcv")


# ------------------------------------------------------------------------------------------------ bad inputs


def edit_nifti_header(path: Path, **fields) -> Path:
    """Write header fields of a ``.nii.gz`` as raw bytes (nibabel repairs some on saving, such as a zero pixdim):
    ``pixdim3`` (the slice spacing), ``sform_code``, ``srow_x1`` (the sform's y-axis, x component)."""
    import gzip
    import struct

    offsets = {"pixdim3": (88, "<f"), "sform_code": (254, "<h"), "srow_x1": (284, "<f")}
    raw = bytearray(gzip.decompress(path.read_bytes()))
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def _bad_image(kind: str, tiny_data, folder: Path) -> Path:
    """A CT file that must be refused: two volumes stacked (4D), a '.nii.gz' that is not NIfTI, NaN voxels, a header
    whose slice spacing is 0 (nibabel would read it as 1: labels on a made-up geometry), an sform with a NaN."""
    src = nib.load(str(tiny_data / "imagesTr" / "phantom0000.nii.gz"))
    data = np.asarray(src.dataobj)
    path = folder / f"{kind}.nii.gz"
    if kind in ("zero_spacing", "nan_affine"):
        nib.save(nib.Nifti1Image(data, src.affine), str(path))
        fields = {"pixdim3": 0.0, "sform_code": 0} if kind == "zero_spacing" else {"srow_x1": float("nan")}
        return edit_nifti_header(path, **fields)
    if kind == "four_d":
        nib.save(nib.Nifti1Image(np.stack([data, data], -1).astype(np.int16), src.affine), str(path))
    elif kind == "not_nifti":
        path.write_bytes(b"this is not a NIfTI file\n" * 50)
    elif kind == "nan":
        vol = data.astype(np.float32)
        vol[10:14, 20:22, 5] = np.nan
        nib.save(nib.Nifti1Image(vol, src.affine), str(path))
    return path


IMAGE_PROBLEMS = {
    "four_d": "image has 2 channels",
    "not_nifti": "cannot read the image",
    "nan": "8 voxel(s) are NaN or infinite (first at index (10, 20, 5)",
    "zero_spacing": "geometry is undefined: in its header's pixdim, axis 2 (z, the slices) has voxel spacing 0",
    "nan_affine": "geometry is undefined: in its header's sform, axis 1 (y) has voxel spacing nan",
}
HEADER_PROBLEMS = ("four_d", "not_nifti", "zero_spacing", "nan_affine")  # seen in the header, before any work


def _bad_checkpoint(kind: str, bundle: str, folder: Path) -> Path:
    good = Path(random_checkpoint(bundle, folder / "good.pt"))
    path = folder / f"{kind}.pt"
    if kind == "missing":
        return folder / "nowhere.pt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled_object":
        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    elif kind == "not_weights":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "other_network":
        torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), path)
    elif kind == "class_count":
        state = torch.load(good, weights_only=True)
        torch.save({k: (v[:9] if v.ndim and v.shape[0] == 14 else v) for k, v in state.items()}, path)
    return path


CHECKPOINT_PROBLEMS = {
    "missing": "no trained model found",
    "truncated": "cut short or damaged",
    "pickled_object": "refused for safety",
    "not_weights": "not a PyTorch or NumPy weights file",
    "other_network": "has no place in",
    "class_count": "predicts 9 classes, this configuration 14",
}


def _assert_clear(exc: BaseException, path: Path, problem: str) -> InputError:
    err = find_input_error(exc)
    assert err is not None, f"no InputError behind {type(exc).__name__}: {str(exc)[:300]}"
    text = str(err)
    assert str(path) in text.splitlines()[0] or text.splitlines()[1].lstrip(" -").startswith(str(path)), text[:300]
    assert problem in text, text[:300]
    assert "Traceback" not in text and "DataLoader worker" not in text and len(text.splitlines()) <= 5, text
    return err


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _run(bundle: str, configs: tuple[str, ...], kind: str, **overrides) -> None:
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs]
    wf = ConfigWorkflow(config_file=files, workflow_type=kind, **{**BUNDLE_TINY[bundle], **overrides})
    wf.initialize()
    wf.run()


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("problem", list(IMAGE_PROBLEMS))
@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_bad_image_to_inference(bundle, problem, workers, tiny_data, tmp_path):
    image = _bad_image(problem, tiny_data, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Exception) as exc:
        _run(
            bundle,
            ("inference.json",),
            "infer",
            dataset_dir=str(image),
            output_dir=str(out),
            load_pretrain=False,
            num_workers=workers,
        )
    _assert_clear(exc.value, image, IMAGE_PROBLEMS[problem])
    assert _files(out) == []


def _datalist_with(image: Path, tiny_data, folder: Path, key: str) -> Path:
    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    dl = {
        k: [{f: str(tiny_data / p) for f, p in it.items()} for it in v]
        for k, v in dl.items()
        if k in ("training", "validation")
    }
    dl[key][0] = {"image": str(image), "label": str(tiny_data / "labelsTr" / "phantom0000.nii.gz")}  # its own grid
    path = folder / "datalist.json"
    path.write_text(json.dumps(dl), encoding="utf-8")
    return path


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("problem", list(IMAGE_PROBLEMS))
def test_bad_image_to_evaluation(problem, workers, tiny_data, tmp_path):
    image = _bad_image(problem, tiny_data, tmp_path)
    out = tmp_path / "eval"
    datalist = _datalist_with(image, tiny_data, tmp_path, "validation")
    with pytest.raises(Exception) as exc:
        _run(
            "unetr_btcv",
            ("inference.json", "evaluate.json"),
            "infer",
            dataset_dir=str(tiny_data),
            datalist_file=str(datalist),
            output_dir=str(out),
            load_pretrain=False,
            num_workers=workers,
        )
    _assert_clear(exc.value, image, IMAGE_PROBLEMS[problem])
    assert _files(out) == []


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("problem", list(IMAGE_PROBLEMS))
@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_bad_image_to_training(bundle, problem, workers, tiny_data, tmp_path):
    """Header problems stop the pre-flight check; NaN voxels stop the loading, in the caching workers too."""
    image = _bad_image(problem, tiny_data, tmp_path)
    datalist = _datalist_with(image, tiny_data, tmp_path, "training")
    with pytest.raises(Exception) as exc:
        _run(
            bundle,
            ("train.json",),
            "train",
            dataset_dir=str(tiny_data),
            datalist_file=str(datalist),
            ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "runs"),
            max_epochs=1,
            num_workers=workers,
        )
    _assert_clear(exc.value, image, IMAGE_PROBLEMS[problem])
    assert _files(tmp_path / "models") == []


@pytest.mark.parametrize("problem", list(CHECKPOINT_PROBLEMS))
@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST)
def test_bad_checkpoint_to_inference_and_evaluation(bundle, problem, tiny_data, tmp_path):
    ckpt = _bad_checkpoint(problem, bundle, tmp_path)
    for configs, out in (
        (("inference.json",), tmp_path / "pred"),
        (("inference.json", "evaluate.json"), tmp_path / "eval"),
    ):
        data = tiny_data / "imagesTr" / "phantom0000.nii.gz" if len(configs) == 1 else tiny_data
        with pytest.raises(Exception) as exc:
            _run(
                bundle, configs, "infer", dataset_dir=str(data), output_dir=str(out), ckpt_path=str(ckpt), num_workers=0
            )
        _assert_clear(exc.value, ckpt, CHECKPOINT_PROBLEMS[problem])
        assert _files(out) == []


@pytest.mark.parametrize("problem", ["truncated", "pickled_object", "other_network"])
def test_bad_checkpoint_to_the_leaderboard(problem, tiny_data, tmp_path):
    from common.tools.leaderboard import leaderboard

    ckpt = _bad_checkpoint(problem, "unetr_btcv", tmp_path)
    with pytest.raises(InputError) as exc:
        leaderboard(
            ["unetr_btcv"],
            dataset_dir=str(tiny_data),
            out=str(tmp_path / "board"),
            ckpts={"unetr_btcv": str(ckpt)},
            overrides={"unetr_btcv": BUNDLE_TINY["unetr_btcv"]},
            progress=False,
        )
    _assert_clear(exc.value, ckpt, CHECKPOINT_PROBLEMS[problem])
    assert not (tmp_path / "board" / "leaderboard.md").exists()


@pytest.mark.parametrize("problem", ["zero_spacing", "nan_affine", "not_nifti"])
def test_bad_image_to_the_leaderboard_and_the_ensemble(problem, tiny_data, tmp_path, capsys):
    """The leaderboard's cases and an ensemble's images are checked before any network runs: one message naming the
    file and, for an undefined geometry, the axis; nothing written."""
    from common.tools.ensemble import main as ensemble_main
    from common.tools.leaderboard import leaderboard

    image = _bad_image(problem, tiny_data, tmp_path)
    datalist = _datalist_with(image, tiny_data, tmp_path, "validation")
    with pytest.raises(InputError) as exc:
        leaderboard(
            ["unetr_btcv"],
            dataset_dir=str(tiny_data),
            datalist_file=str(datalist),
            out=str(tmp_path / "board"),
            overrides={"unetr_btcv": {**BUNDLE_TINY["unetr_btcv"], "load_pretrain": False}},
            progress=False,
        )
    _assert_clear(exc.value, image, IMAGE_PROBLEMS[problem])
    assert _files(tmp_path / "board") == []
    folder = tmp_path / "ct"
    folder.mkdir()
    image.rename(folder / image.name)
    overrides = [
        a for k, v in BUNDLE_TINY["unetr_btcv"].items() for a in ("--override", f"unetr_btcv:{k}={json.dumps(v)}")
    ]
    argv = ["--member", "unetr_btcv", "--dataset_dir", str(folder), "--output_dir", str(tmp_path / "ens"), *overrides]
    assert ensemble_main([*argv, "--override", "unetr_btcv:load_pretrain=false"]) == 1
    err = capsys.readouterr().err
    assert str(folder / image.name) in err and IMAGE_PROBLEMS[problem] in err and "Traceback" not in err, err
    assert _files(tmp_path / "ens") == []


@pytest.mark.parametrize("problem", ["truncated", "other_network"])
def test_unusable_training_state_stops_before_training(problem, tiny_data, tmp_path):
    """A resumable state cut short (or saved by another network configuration) is refused with the way out."""
    models = tmp_path / "models"
    models.mkdir()
    ckpt = _bad_checkpoint(problem, "unetr_btcv", tmp_path)
    state = models / "checkpoint_epoch=3.pt"
    if problem == "other_network":
        torch.save({"model": torch.load(ckpt, weights_only=True), "trainer": {"epoch": 3}}, state)
    else:
        state.write_bytes(ckpt.read_bytes())
    with pytest.raises(Exception) as exc:
        _run(
            "unetr_btcv",
            ("train.json",),
            "train",
            dataset_dir=str(tiny_data),
            ckpt_dir=str(models),
            output_dir=str(tmp_path / "runs"),
            max_epochs=4,
        )
    err = _assert_clear(exc.value, state, "cut short" if problem == "truncated" else "another network configuration")
    assert "--resume false" in str(err)
    assert _files(models) == ["checkpoint_epoch=3.pt"]


# ------------------------------------------------------------------------------------- the real command line


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )


@pytest.mark.parametrize("case", ["four_d_workers", "nan_workers", "truncated_checkpoint", "pickled_checkpoint"])
def test_command_line_prints_one_message_and_fails(case, tiny_data, tmp_path):
    cfg = BUNDLES / "unetr_btcv" / "configs" / "inference.json"
    out = tmp_path / "out"
    if case.endswith("_workers"):
        image = _bad_image(case[: -len("_workers")], tiny_data, tmp_path)
        args, named = ["--dataset_dir", str(image), "--load_pretrain", "false", "--num_workers", "2"], image
    else:
        ckpt = _bad_checkpoint(
            "truncated" if case.startswith("truncated") else "pickled_object", "unetr_btcv", tmp_path
        )
        args, named = (
            ["--dataset_dir", str(tiny_data / "imagesTr" / "phantom0000.nii.gz"), "--ckpt_path", str(ckpt)],
            ckpt,
        )
    r = _cli("--config_file", str(cfg), "--output_dir", str(out), *args, *TINY_CLI, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout, (r.stdout + r.stderr)[-3000:]  # the log goes to stdout
    assert f"ERROR: {named}" in r.stderr, r.stderr[-2000:]
    assert _files(out) == []


@pytest.mark.parametrize("problem", ["truncated", "pickled_object", "not_weights", "other_network", "class_count"])
@pytest.mark.parametrize("tool", ["export", "package"])
def test_bad_checkpoint_to_export_and_package(tool, problem, tmp_path, capsys):
    """Both tools check the weights before writing anything: exit status non-zero, one message, no output."""
    import common.tools.export
    import common.tools.package

    ckpt = _bad_checkpoint(problem, "unetr_btcv", tmp_path)
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in BUNDLE_TINY["unetr_btcv"].items()]
    out = tmp_path / "out"
    if tool == "export":
        rc = common.tools.export.main(
            ["onnx", "--bundle", "unetr_btcv", "--ckpt", str(ckpt), "--out", str(out / "m.onnx"), *overrides]
        )
    else:  # the package checks against the bundle's full-size network: every bad file fails it, for its own reason
        rc = common.tools.package.main(["--bundle", "unetr_btcv", "--ckpt", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith(f"ERROR: {ckpt}") and "Traceback" not in err, err
    assert CHECKPOINT_PROBLEMS[problem] in err or (tool == "package" and problem == "class_count"), err
    assert len(err.strip().splitlines()) <= 6 and _files(out) == []  # grouped by kind of problem


@pytest.mark.parametrize("workers", [0, 2])
def test_a_cohort_case_failing_once_loaded_is_left_out_and_the_others_are_written(workers, tiny_data, tmp_path):
    """A folder of three CTs, the middle one with NaN voxels (found only once loaded): the other two are written,
    the run then ends with one message naming that file; after it is fixed, the same command predicts it alone."""
    import shutil

    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("phantom0000", "phantom0002"):
        shutil.copy(tiny_data / "imagesTr" / f"{name}.nii.gz", folder / f"{name}.nii.gz")
    bad = _bad_image("nan", tiny_data, tmp_path)
    shutil.move(bad, folder / "phantom0001.nii.gz")
    bad = folder / "phantom0001.nii.gz"
    out = tmp_path / "pred"
    run = dict(dataset_dir=str(folder), output_dir=str(out), load_pretrain=False, num_workers=workers)
    with pytest.raises(Exception) as exc:
        _run("unetr_btcv", ("inference.json",), "infer", **run)
    _assert_clear(exc.value, bad, IMAGE_PROBLEMS["nan"])
    assert _files(out) == ["phantom0000_seg.nii.gz", "phantom0002_seg.nii.gz"]
    written = {p: (out / p).stat().st_mtime_ns for p in _files(out)}
    shutil.copy(tiny_data / "imagesTr" / "phantom0001.nii.gz", bad)
    _run("unetr_btcv", ("inference.json",), "infer", **run)
    assert _files(out) == ["phantom0000_seg.nii.gz", "phantom0001_seg.nii.gz", "phantom0002_seg.nii.gz"]
    assert all((out / p).stat().st_mtime_ns == t for p, t in written.items()), "done cases are not predicted again"
