"""BTCV datalists: splits, the prepare command, and every bad-input case reported at once."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from common.data import (
    BTCV_CASES,
    SPLITS,
    btcv_datalist,
    check_items,
    find_images,
    get_datalist,
)
from common.errors import InputError
from common.tools.prepare import main as prepare_main


def _save(path, arr, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([-2.0, -2.0, 3.0, 1.0]) if affine is None else affine), str(path))


@pytest.fixture
def btcv_raw(tmp_path):
    """A fake BTCV download (RawData/Training/img|label) with tiny valid volumes for all 30 cases."""
    root = tmp_path / "BTCV"
    rng = np.random.default_rng(0)
    for c in BTCV_CASES:
        _save(
            root / "RawData" / "Training" / "img" / f"img{c}.nii.gz",
            rng.integers(-1000, 400, (8, 8, 4)).astype(np.int16),
        )
        _save(
            root / "RawData" / "Training" / "label" / f"label{c}.nii.gz",
            rng.integers(0, 14, (8, 8, 4)).astype(np.uint8),
        )
    return root


def test_split_case_ids_match_anchors():
    d0, syn = SPLITS["dataset_0"], SPLITS["synapse"]
    assert len(BTCV_CASES) == 30
    assert len(d0["training"]) == 24 and len(d0["validation"]) == 6
    assert d0["validation"] == ("0035", "0036", "0037", "0038", "0039", "0040")
    assert len(syn["training"]) == 18 and len(syn["validation"]) == 12
    assert syn["validation"] == (
        "0001",
        "0002",
        "0003",
        "0004",
        "0008",
        "0022",
        "0025",
        "0029",
        "0032",
        "0035",
        "0036",
        "0038",
    )
    assert set(syn["training"]) | set(syn["validation"]) == set(BTCV_CASES)
    # the clash ANCHORS.md warns about: 9 Synapse test cases are dataset_0 training cases
    assert len(set(syn["validation"]) & set(d0["training"])) == 9


@pytest.mark.parametrize("split", ["dataset_0", "synapse"])
def test_prepare_writes_checked_relative_datalist(btcv_raw, tmp_path, split, capsys):
    out = tmp_path / "lists" / f"{split}.json"
    assert prepare_main([str(btcv_raw), "--split", split, "--output", str(out)]) == 0
    d = json.loads(out.read_text(encoding="utf-8"))
    ids = [it["image"].split("img")[-1][:4] for it in d["training"]]
    assert tuple(ids) == SPLITS[split]["training"]
    assert d["validation"][0]["label"].startswith("../BTCV/RawData/Training/label/")
    loaded = get_datalist(datalist_file=str(out))
    assert all(it["image"].startswith(str(btcv_raw)) for it in loaded["training"])
    assert "wrote" in capsys.readouterr().out


def test_dataset_dir_pointing_at_a_btcv_download(btcv_raw):
    d = get_datalist(str(btcv_raw / "RawData"), split="synapse")
    assert len(d["training"]) == 18 and d["validation"][0]["image"].endswith("img0001.nii.gz")


def test_all_problems_reported_at_once(btcv_raw, tmp_path, capsys):
    t = btcv_raw / "RawData" / "Training"
    (t / "img" / "img0035.nii.gz").unlink()  # missing image
    (t / "label" / "label0036.nii.gz").write_bytes(b"garbage")  # unreadable label
    _save(t / "label" / "label0037.nii.gz", np.full((8, 8, 4), 15, np.uint8))  # label values outside 0..13
    _save(t / "label" / "label0038.nii.gz", np.zeros((8, 8, 5), np.uint8))  # grid mismatch (shape)
    _save(t / "label" / "label0039.nii.gz", np.zeros((8, 8, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))  # affine
    _save(t / "img" / "img0040.nii.gz", np.zeros((8, 8, 4, 2), np.int16))  # two channels
    out = tmp_path / "dl.json"
    assert prepare_main([str(btcv_raw), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert not out.exists(), "nothing may be written when files are bad"
    assert "6 problems found" in err
    for needle in (
        "img0035.nii.gz: file not found",
        "label0036.nii.gz: cannot read the image",
        "label0037.nii.gz: label values outside the label map 0..13: 15",
        "label0038.nii.gz: label grid (8, 8, 5) does not match",
        "label0039.nii.gz: label affine differs",
        "img0040.nii.gz: image has 2 channels",
    ):
        assert needle in err, needle
    assert "Traceback" not in err


def test_empty_and_malformed_datalists(tmp_path):
    with pytest.raises(InputError, match="the list of cases is empty"):
        check_items([], name="x")
    p = tmp_path / "dl.json"
    p.write_text(json.dumps({"training": [], "validation": []}), encoding="utf-8")
    with pytest.raises(InputError, match="has no 'training' cases"):
        get_datalist(datalist_file=str(p))
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable JSON datalist"):
        get_datalist(datalist_file=str(p))
    with pytest.raises(InputError, match="dataset_dir not found"):
        get_datalist(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="neither a BTCV download"):
        get_datalist(str(tmp_path))


def test_unknown_split_and_missing_download(tmp_path):
    with pytest.raises(InputError, match="unknown split"):
        btcv_datalist(tmp_path, "nope")
    with pytest.raises(InputError, match="no BTCV download found"):
        btcv_datalist(tmp_path, "dataset_0")


def test_find_images(tmp_path):
    _save(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.int16))
    _save(tmp_path / "b.nii", np.zeros((4, 4, 4), np.int16))
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert [p["image"].split("/")[-1] for p in find_images(tmp_path)] == ["a.nii.gz", "b.nii"]
    assert find_images(tmp_path / "a.nii.gz") == [{"image": str(tmp_path / "a.nii.gz")}]
    with pytest.raises(InputError, match="no images found"):
        find_images(tmp_path, pattern="zzz")


def test_model_zoo_split_is_the_first_21_and_last_9_sorted_cases(btcv_raw):
    d = btcv_datalist(btcv_raw, "model_zoo")
    names = [it["image"].split("img")[-1][:4] for it in d["training"] + d["validation"]]
    assert names == sorted(BTCV_CASES) and len(d["training"]) == 21 and len(d["validation"]) == 9
    assert get_datalist(str(btcv_raw), "model_zoo")["validation"][0]["image"].endswith("img0032.nii.gz")


def test_demo_default_data_path_generates_once_then_reuses(tmp_path, monkeypatch):
    """`dataset_dir ""` (what `make demo` uses): the demo phantoms are generated under BTCV_DEMO_DIR, checked, and
    the second call reuses them without rewriting a file."""
    monkeypatch.setenv("BTCV_DEMO_DIR", str(tmp_path / "demo"))
    d = get_datalist("")
    assert d["_source"] == str(tmp_path / "demo" / "dataset.json")
    assert len(d["training"]) == 10 and len(d["validation"]) == 2
    assert all(it["image"].startswith(str(tmp_path / "demo")) and os.path.isfile(it["label"]) for it in d["training"])
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*.nii.gz")}
    again = get_datalist("")
    assert again["validation"] == d["validation"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*.nii.gz")} == stamps


def test_inputs_that_would_write_the_same_output_stop_before_any_work(tmp_path):
    """`ct.mha` and `ct.nrrd` both give `ct_seg.nii.gz`: one clear error naming both (never a silent overwrite)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))
    for name in ("ct.mha", "ct.nrrd", "other.mha"):
        sitk.WriteImage(img, str(tmp_path / name))
    with pytest.raises(InputError) as e:
        find_images(tmp_path)
    assert "ct.mha and ct.nrrd would both be written as ct_seg.nii.gz" in str(e.value) and "--image_pattern" in str(
        e.value
    )
    assert [p["image"].split("/")[-1] for p in find_images(tmp_path, pattern=r"\.mha$")] == ["ct.mha", "other.mha"]


def test_scanning_a_folder_for_dicom_is_quiet(tmp_path, capfd):
    """Probing folders that hold no DICOM series prints nothing (ITK used to warn 'No Series were found')."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x", encoding="utf-8")
    _save(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.int16))
    assert [p["image"].split("/")[-1] for p in find_images(tmp_path)] == ["a.nii.gz"]
    captured = capfd.readouterr()
    assert "No Series" not in captured.err + captured.out, captured.err


def test_results_say_what_their_cases_are(btcv_raw, tmp_path):
    from common.data import split_label

    assert split_label("", "", "dataset_0") == "demo phantoms (generated, not BTCV)"
    assert split_label(str(btcv_raw), "", "synapse") == "synapse"
    assert split_label(str(btcv_raw), "", "cv5", 2) == "cv5_fold2"
    assert split_label(str(tmp_path), "", "dataset_0") == f"datalist in {tmp_path}"
    assert split_label(str(btcv_raw), "my.json", "dataset_0") == "datalist my.json"
