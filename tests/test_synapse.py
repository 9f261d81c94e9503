"""Importing the TransUNet authors' preprocessed Synapse files.

The fixture does not borrow the importer's idea of the authors' layout. It writes a raw BTCV download first
(``RawData/Training/img/imgXXXX.nii.gz`` int16 HU and ``label/labelXXXX.nii.gz`` BTCV ids, from phantoms, with a
non-trivial affine: LPS-like axis flips, an origin, anisotropic spacing and an in-plane obliquity), then builds the
authors' files from those NIfTI files by the authors' preprocessing as stated in :func:`authors_preprocessing`, and
checks every imported NIfTI against the raw file it came from.

What is assumed about the authors' files, and why. The TransUNet repository ships no conversion script;
``datasets/README.md`` says only "Convert them to numpy format, clip the images within [-125, 275], normalize each
3D image to [0, 1], and extract 2D slices from 3D volume for training cases while keeping the 3D volume in h5
format for testing cases". What the readers establish:

* ``test_vol_h5/caseXXXX.npy.h5``: ``h5py.File(...)['image']`` is (D, H, W) with D the axial slices: TransUNet's
  ``utils.test_single_volume`` loops ``for ind in range(image.shape[0]): slice = image[ind, :, :]``, and every
  third-party reader (mmsegmentation, PaddleSeg) splits the volume along axis 0.
* ``train_npz/caseXXXX_sliceYYY.npz``: 2D (H, W) slices of the same orientation, YYY the axial index.
* (H, W) are the raw NIfTI array's first two axes as stored, unflipped: the authors answered (Beckschen/TransUNet
  #7, #23) that a slice keeps "the original shape (512, 512)" of the (512, 512, Z) CT. So the authors' volume is
  ``np.transpose(raw, (2, 0, 1))`` of the nibabel array ``raw`` (x, y, z) and slice d is ``raw[:, :, d]``.

That last point is the weakest: BTCV slices are square, so the shape cannot tell (H, W) from (W, H), and
mmsegmentation's third-party re-creation (``tools/dataset_converters/synapse.py``) additionally flips W
(``np.flip(..., 2)``) without saying why. Nobody here has compared against the real files; if they turn out to
differ, change :func:`authors_preprocessing` and the importer together.
"""

from __future__ import annotations

import json
import math

import h5py
import nibabel as nib
import numpy as np
import pytest

from common.data import get_datalist
from common.errors import InputError
from common.labels import SYNAPSE_ORGAN_ORDER, organ
from common.phantom import make_phantom
from common.tools.synapse import DATA_ID_MAPS, import_synapse, main

# In-plane square like BTCV's 512 x 512: an importer that swaps H and W cannot hide behind a shape error.
SHAPE, SPACING = (48, 48, 20), (8.0, 8.0, 13.0)
TRAIN, TEST = ("0005", "0006", "0007"), ("0001", "0002")
SYNAPSE_BTCV_IDS = [organ(k).id for k in SYNAPSE_ORGAN_ORDER]


def _oblique(affine: np.ndarray, degrees: float = 11.0) -> np.ndarray:
    """``affine`` rotated about the scanner z axis and moved: a raw grid that no diagonal affine describes."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    turn = np.array([[c, -s, 0, 12.5], [s, c, 0, -31.0], [0, 0, 1, 7.25], [0, 0, 0, 1]])
    return turn @ affine


def write_btcv_raw(root, volumes: dict) -> dict:
    """A raw BTCV download under ``root`` (``RawData/Training/{img,label}``): ``volumes[case] = (hu, label, affine)``.

    Written with nibabel directly (not the project's writer). Returns ``{case: (img_path, label_path)}``.
    """
    img_dir, lab_dir = root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    paths = {}
    for case, (hu, label, affine) in volumes.items():
        paths[case] = (img_dir / f"img{case}.nii.gz", lab_dir / f"label{case}.nii.gz")
        nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(paths[case][0]))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(paths[case][1]))
    return paths


def authors_preprocessing(img_path, label_path, id_map: dict) -> tuple[np.ndarray, np.ndarray]:
    """The authors' preprocessing of one raw BTCV case, as assumed (see the module docstring).

    Returns ``(image, label)`` float32 volumes of shape (D, H, W) = ``np.transpose(raw, (2, 0, 1))``: D the axial
    slices (the raw NIfTI's third array axis), (H, W) the raw array's first two axes as stored. The image is clipped
    to [-125, 275] HU and scaled to [0, 1] by the window (what a per-volume min-max gives for any abdominal CT, which
    holds both air and bone; the coarse phantoms may lack voxels above 275 HU); the labels carry the authors' organ ids
    (``id_map``: organ -> id) with the other five BTCV organs as background, float as ``get_fdata()`` gives them.
    """
    ct = nib.load(str(img_path)).get_fdata()  # (x, y, z) as stored: (512, 512, Z) for BTCV
    lab = nib.load(str(label_path)).get_fdata()
    ct = (np.clip(ct, -125.0, 275.0) + 125.0) / 400.0
    ids = np.zeros(lab.shape)
    for key, i in id_map.items():
        ids[lab == organ(key).id] = i
    return np.transpose(ct, (2, 0, 1)).astype(np.float32), np.transpose(ids, (2, 0, 1)).astype(np.float32)


def write_authors_files(src, raw_paths: dict, train, test, id_map) -> None:
    """The authors' ``train_npz`` (one (H, W) slice per file, slice d = volume[d]) and ``test_vol_h5`` files."""
    (src / "train_npz").mkdir(parents=True, exist_ok=True)
    (src / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    for case in train:
        image, label = authors_preprocessing(*raw_paths[case], id_map)
        for d in range(image.shape[0]):
            np.savez(src / "train_npz" / f"case{case}_slice{d:03d}.npz", image=image[d], label=label[d])
    for case in test:
        image, label = authors_preprocessing(*raw_paths[case], id_map)
        with h5py.File(src / "test_vol_h5" / f"case{case}.npy.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)


def write_authors_data(root, id_map=DATA_ID_MAPS["anchors"]) -> dict:
    """Raw BTCV phantoms under ``root/BTCV`` and the authors' files built from them under ``root/Synapse``.

    Returns ``{case: (img_path, label_path)}`` of the raw download.
    """
    volumes = {}
    for n, case in enumerate(TRAIN + TEST):
        ph = make_phantom(seed=100 + n, shape=SHAPE, spacing=SPACING)
        volumes[case] = (ph.image, ph.label, _oblique(ph.affine))
    raw = write_btcv_raw(root / "BTCV", volumes)
    write_authors_files(root / "Synapse", raw, TRAIN, TEST, id_map)
    return raw


@pytest.fixture
def authors(tmp_path):
    raw = write_authors_data(tmp_path)
    return tmp_path / "Synapse", raw


def _synapse_only(btcv_label: np.ndarray) -> np.ndarray:
    return np.where(np.isin(btcv_label, SYNAPSE_BTCV_IDS), btcv_label, 0)


def assert_same_at_every_world_position(imported: nib.Nifti1Image, raw: nib.Nifti1Image, raw_values=None):
    """For every voxel of ``raw``, the voxel of ``imported`` at the same world (scanner mm) position exists and holds
    the same value (``raw_values``: the raw voxels after the expected value change, default the raw voxels)."""
    raw_values = np.asarray(raw.dataobj) if raw_values is None else raw_values
    ijk = np.indices(raw.shape).reshape(3, -1)
    world = raw.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    uvw = (np.linalg.inv(imported.affine) @ world)[:3]
    idx = np.rint(uvw).astype(np.int64)
    assert np.abs(uvw - idx).max() < 1e-3, "the imported grid is not the raw grid"
    inside = ((idx >= 0) & (idx < np.array(imported.shape)[:, None])).all(axis=0)
    assert inside.all(), f"{(~inside).sum()} raw voxels have no imported voxel at their world position"
    got = np.asarray(imported.dataobj)[tuple(idx)]
    want = raw_values[tuple(ijk)]
    wrong = got != want
    first = ijk[:, wrong.argmax()]
    assert not wrong.any(), f"{wrong.sum()} of {wrong.size} world positions differ (first at raw voxel {first})"


def test_import_round_trip_btcv_ids(authors, tmp_path, capsys):
    """Without ``--btcv-raw`` the volumes keep the stored voxel order: imported voxel (i, j, k) is raw voxel (i, j, k),
    exactly (HU clipped to the authors' window, labels the BTCV ids of the 8 Synapse organs), on ``diag(spacing)``."""
    src, raw = authors
    out = tmp_path / "imported"
    assert main([str(src), "--output", str(out), "--spacing", *map(str, SPACING)]) == 0
    assert "3 training and 2 validation" in capsys.readouterr().out
    dl = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert dl["label_space"] == "btcv13" and dl["spacing"].startswith("nominal 8 x 8 x 13")
    assert [i["image"] for i in dl["validation"]] == ["images/case0001.nii.gz", "images/case0002.nii.gz"]
    assert [i["image"] for i in dl["training"]] == [f"images/case{c}.nii.gz" for c in TRAIN]
    for case, (img_path, lab_path) in raw.items():
        img = nib.load(str(out / "images" / f"case{case}.nii.gz"))
        lab = np.asarray(nib.load(str(out / "labels" / f"case{case}.nii.gz")).dataobj)
        assert img.get_data_dtype() == np.int16 and img.shape == SHAPE
        np.testing.assert_allclose(img.affine, np.diag([*SPACING, 1.0]), atol=1e-6)
        raw_hu = np.asarray(nib.load(str(img_path)).dataobj)
        # HU again: the authors' scaling is undone exactly for integer HU
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.clip(raw_hu, -125, 275), err_msg=case)
        np.testing.assert_array_equal(lab, _synapse_only(np.asarray(nib.load(str(lab_path)).dataobj)), err_msg=case)
    # the bundles take it as is
    loaded = get_datalist(datalist_file=str(out / "dataset.json"))
    assert len(loaded["training"]) == 3 and len(loaded["validation"]) == 2


def test_import_synapse8_ids(authors, tmp_path):
    src, raw = authors
    out = tmp_path / "s8"
    import_synapse(src, out, labels="synapse8", progress=False)
    for case in ("0005", "0001"):  # a stacked training case and an h5 test case
        lab = np.asarray(nib.load(str(out / "labels" / f"case{case}.nii.gz")).dataobj)
        btcv = np.asarray(nib.load(str(raw[case][1])).dataobj)
        for n, key in enumerate(SYNAPSE_ORGAN_ORDER, start=1):
            assert (btcv == organ(key).id).any()
            np.testing.assert_array_equal(lab == n, btcv == organ(key).id, err_msg=f"case{case} {key}")
        assert set(np.unique(lab).tolist()) == set(range(9))


def test_wrong_id_map_is_caught_by_anatomy(tmp_path):
    write_authors_data(tmp_path, DATA_ID_MAPS["alphabetical"])
    src = tmp_path / "Synapse"
    with pytest.raises(InputError) as e:
        import_synapse(src, tmp_path / "out", data_ids="anchors", progress=False)
    msg = str(e.value)
    assert "does not fit the data" in msg and "--data-ids alphabetical" in msg
    assert not (tmp_path / "out").exists()
    import_synapse(src, tmp_path / "out", data_ids="alphabetical", progress=False)  # the right map passes
    assert (tmp_path / "out" / "dataset.json").is_file()


def test_btcv_raw_gives_the_original_affines(authors, tmp_path):
    """With the raw download, every imported case is its raw BTCV file again: the raw affine, and at every world
    position the same label (Synapse organs) and the same HU (clipped to the authors' window)."""
    src, raw = authors
    out = tmp_path / "with_raw"
    import_synapse(src, out, btcv_raw=tmp_path / "BTCV", progress=False)
    for case, (img_path, lab_path) in raw.items():
        raw_img, raw_lab = nib.load(str(img_path)), nib.load(str(lab_path))
        img, lab = (nib.load(str(out / kind / f"case{case}.nii.gz")) for kind in ("images", "labels"))
        np.testing.assert_allclose(img.affine, raw_img.affine, atol=1e-4, err_msg=case)
        np.testing.assert_allclose(lab.affine, raw_img.affine, atol=1e-4, err_msg=case)
        assert_same_at_every_world_position(lab, raw_lab, _synapse_only(np.asarray(raw_lab.dataobj)))
        assert_same_at_every_world_position(img, raw_img, np.clip(np.asarray(raw_img.dataobj), -125, 275))


def test_real_ct_lands_on_its_original_grid(sample_ct, tmp_path):
    """The real CT (non-square in-plane, RAS storage, real anatomy for the id check), once as a training case and once
    as a test case, comes back on its own grid with its own labels at every world position."""
    raw_img, raw_lab = nib.load(str(sample_ct / "image.nii.gz")), nib.load(str(sample_ct / "label.nii.gz"))
    hu, label = np.asarray(raw_img.dataobj), np.asarray(raw_lab.dataobj)
    raw = write_btcv_raw(tmp_path / "BTCV", {c: (hu, label, raw_img.affine) for c in ("0005", "0001")})
    write_authors_files(tmp_path / "Synapse", raw, ["0005"], ["0001"], DATA_ID_MAPS["anchors"])
    out = tmp_path / "out"
    import_synapse(tmp_path / "Synapse", out, btcv_raw=tmp_path / "BTCV", progress=False)  # anatomy check on
    for case in ("0005", "0001"):
        img, lab = (nib.load(str(out / kind / f"case{case}.nii.gz")) for kind in ("images", "labels"))
        np.testing.assert_allclose(lab.affine, raw_img.affine, atol=1e-4)
        assert_same_at_every_world_position(lab, raw_lab, _synapse_only(label))
        assert_same_at_every_world_position(img, raw_img, np.clip(hu, -125, 275))


def test_every_bad_file_reported_at_once(authors, tmp_path):
    src, _ = authors
    (src / "train_npz" / "case0005_slice004.npz").unlink()  # a missing slice
    np.savez(src / "train_npz" / "case0006_slice002.npz", img=np.zeros((48, 48)))  # wrong keys
    np.savez(
        src / "train_npz" / "case0007_slice001.npz", image=np.full((48, 48), 3.0), label=np.zeros((48, 48))
    )  # not [0, 1]
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
