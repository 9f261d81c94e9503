"""Importing the TransUNet authors' preprocessed Synapse files (built here in their format from phantoms)."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from common.data import get_datalist
from common.errors import InputError
from common.labels import SYNAPSE_ORGAN_ORDER, organ
from common.phantom import make_phantom
from common.synapse import DATA_ID_MAPS, import_synapse, main

SHAPE, SPACING = (48, 48, 20), (8.0, 8.0, 13.0)
TRAIN, TEST = ("0005", "0006", "0007"), ("0001", "0002")


def _authors_case(seed: int, id_map: dict):
    ph = make_phantom(seed=seed, shape=SHAPE, spacing=SPACING)
    image = (np.clip(ph.image.astype(np.float32), -125, 275) + 125) / 400.0
    label = np.zeros(ph.label.shape, np.float32)  # the authors' labels come from get_fdata(): float
    for key, i in id_map.items():
        label[ph.label == organ(key).id] = i
    return ph, image, label


def write_authors_data(root, id_map=DATA_ID_MAPS["anchors"]):
    phantoms = {}
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir(parents=True)
    for n, case in enumerate(TRAIN + TEST):
        ph, image, label = _authors_case(100 + n, id_map)
        phantoms[case] = ph
        if case in TRAIN:
            for z in range(image.shape[2]):
                np.savez(root / "train_npz" / f"case{case}_slice{z:03d}.npz", image=image[:, :, z], label=label[:, :, z])
        else:
            with h5py.File(root / "test_vol_h5" / f"case{case}.npy.h5", "w") as f:
                f.create_dataset("image", data=np.transpose(image, (2, 0, 1)))
                f.create_dataset("label", data=np.transpose(label, (2, 0, 1)))
    return phantoms


@pytest.fixture
def authors(tmp_path):
    src = tmp_path / "Synapse"
    return src, write_authors_data(src)


def test_import_round_trip_btcv_ids(authors, tmp_path, capsys):
    src, phantoms = authors
    out = tmp_path / "imported"
    assert main([str(src), "--output", str(out), "--spacing", *map(str, SPACING)]) == 0
    assert "3 training and 2 validation" in capsys.readouterr().out
    dl = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert dl["label_space"] == "btcv13" and dl["spacing"].startswith("nominal 8 x 8 x 13")
    assert [i["image"] for i in dl["validation"]] == ["images/case0001.nii.gz", "images/case0002.nii.gz"]
    for case, ph in phantoms.items():
        img = nib.load(str(out / "images" / f"case{case}.nii.gz"))
        lab = np.asarray(nib.load(str(out / "labels" / f"case{case}.nii.gz")).dataobj)
        assert img.get_data_dtype() == np.int16 and img.shape == SHAPE
        np.testing.assert_allclose(np.diag(img.affine)[:3], SPACING)
        hu = np.asarray(img.dataobj).astype(np.float64)
        assert np.abs(hu - np.clip(ph.image, -125, 275)).max() <= 1.0  # HU again, up to the authors' scaling
        expected = np.where(np.isin(ph.label, [organ(k).id for k in SYNAPSE_ORGAN_ORDER]), ph.label, 0)
        np.testing.assert_array_equal(lab, expected)
    # the bundles take it as is
    loaded = get_datalist(datalist_file=str(out / "dataset.json"))
    assert len(loaded["training"]) == 3


def test_import_synapse8_ids(authors, tmp_path):
    src, phantoms = authors
    out = tmp_path / "s8"
    import_synapse(src, out, labels="synapse8", progress=False)
    lab = np.asarray(nib.load(str(out / "labels" / "case0005.nii.gz")).dataobj)
    ph = phantoms["0005"]
    for n, key in enumerate(SYNAPSE_ORGAN_ORDER, start=1):
        np.testing.assert_array_equal(lab == n, ph.label == organ(key).id)


def test_wrong_id_map_is_caught_by_anatomy(tmp_path):
    src = tmp_path / "Synapse"
    write_authors_data(src, DATA_ID_MAPS["alphabetical"])
    with pytest.raises(InputError) as e:
        import_synapse(src, tmp_path / "out", data_ids="anchors", progress=False)
    msg = str(e.value)
    assert "does not fit the data" in msg and "--data-ids alphabetical" in msg
    assert not (tmp_path / "out").exists()
    import_synapse(src, tmp_path / "out", data_ids="alphabetical", progress=False)  # the right map passes


def test_btcv_raw_gives_the_original_affines(authors, tmp_path):
    src, phantoms = authors
    raw = tmp_path / "BTCV" / "RawData" / "Training" / "img"
    raw.mkdir(parents=True)
    for case, ph in phantoms.items():
        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(raw / f"img{case}.nii.gz"))
    (raw.parent / "label").mkdir()
    out = tmp_path / "with_raw"
    import_synapse(src, out, btcv_raw=tmp_path / "BTCV", progress=False)
    np.testing.assert_allclose(nib.load(str(out / "images" / "case0006.nii.gz")).affine, phantoms["0006"].affine, atol=1e-5)


def test_every_bad_file_reported_at_once(authors, tmp_path):
    src, _ = authors
    (src / "train_npz" / "case0005_slice004.npz").unlink()  # a missing slice
    np.savez(src / "train_npz" / "case0006_slice002.npz", img=np.zeros((48, 48)))  # wrong keys
    np.savez(src / "train_npz" / "case0007_slice001.npz", image=np.full((48, 48), 3.0), label=np.zeros((48, 48)))  # not [0, 1]
    with h5py.File(src / "test_vol_h5" / "case0002.npy.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((20, 48, 48)))
        f.create_dataset("label", data=np.full((20, 48, 48), 9.0))  # id outside 0..8
    with pytest.raises(InputError) as e:
        import_synapse(src, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "4 problems found" in msg
    assert "case0005: slices [4] missing" in msg
    assert "case0006_slice002.npz: missing key(s) ['image', 'label']" in msg
    assert "case0007_slice001.npz: image values outside [0, 1]" in msg
    assert "case0002.npy.h5: label values [9.0] outside 0..8" in msg
    assert not (tmp_path / "out").exists()
