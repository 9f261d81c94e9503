"""The shared BTCV 3D transforms and the input checks they run."""

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import HU_PROBES, probe_volume

from common.errors import InputError, find_input_error
from common.transforms import btcv_preprocessing, btcv_train_transforms


def _save(path, arr, affine):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


@pytest.fixture
def pair(tmp_path):
    aff = np.diag([-1.0, -1.0, 2.5, 1.0])
    img = np.full((40, 36, 12), -1000, np.int16)
    img[5:35, 5:30, 2:10] = 40  # body
    lab = np.zeros((40, 36, 12), np.uint8)
    lab[10:20, 10:20, 4:8] = 6
    return _save(tmp_path / "img.nii.gz", img, aff), _save(tmp_path / "lab.nii.gz", lab, aff), aff


def test_preprocessing_orientation_spacing_window_crop(pair):
    img, lab, _ = pair
    out = btcv_preprocessing(spacing=(1.5, 1.5, 2.0))({"image": img, "label": lab})
    x, y = out["image"], out["label"]
    assert x.shape[0] == 1 and x.shape == y.shape
    aff = x.affine.numpy()
    assert np.allclose(aff[:3, :3], np.diag([1.5, 1.5, 2.0]))  # RAS, resampled
    # HU window [-175, 250] -> [0, 1]: the 40 HU body is (40 + 175) / 425 wherever resampling did not mix in air
    assert float(x.max()) == pytest.approx(215 / 425, abs=1e-6)
    assert float((x - 215 / 425).abs().lt(1e-6).float().mean()) > 0.5
    # cropped to the body (foreground: 30 x 25 x 8 voxels of 1 x 1 x 2.5 mm), not the 40 x 36 x 12 grid with its air
    body_mm = np.array([30.0, 25.0, 20.0])
    assert (np.abs(np.array(x.shape[1:]) - body_mm / [1.5, 1.5, 2.0]) <= 1.5).all(), x.shape
    assert set(torch.unique(y).tolist()) == {0.0, 6.0}


# HU values placed in a body of 0 HU, and where they must land after each path's window
def _windowed(hu, low, high):
    """(HU - low) / (high - low), clipped to [0, 1], in float64: the value every voxel must get."""
    return np.clip((np.asarray(hu, np.float64) - low) / (high - low), 0.0, 1.0)


def _input_index(out_affine, in_affine, out_shape):
    """For every output voxel, the input voxel at the same world position (asserted to be on the input grid)."""
    ijk = np.indices(out_shape).reshape(3, -1)
    uvw = (np.linalg.inv(in_affine) @ out_affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
    idx = np.rint(uvw).astype(np.int64)
    assert np.abs(uvw - idx).max() < 1e-4, "the output grid is not the input grid"
    return tuple(idx)


def test_3d_preprocessing_windows_known_hu_to_the_window_values(tmp_path):
    """UNETR/SwinUNETR/UNet's window [-175, 250]: every voxel becomes (HU + 175) / 425 clipped to [0, 1], at its own
    world position (spacing already the target's, so no interpolation; the crop only removes the air)."""
    img_path, lab_path, img, lab, aff, probes = probe_volume(tmp_path, spacing=(1.5, 1.5, 2.0))
    out = btcv_preprocessing()({"image": img_path, "label": lab_path})
    x, y = out["image"], out["label"]
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (32, 28, 10)  # the body, air cropped off
    out_aff = x.affine.numpy().astype(np.float64)
    src = _input_index(out_aff, aff, x.shape[1:])
    np.testing.assert_allclose(x[0].numpy().ravel(), _windowed(img[src], -175.0, 250.0), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y[0].numpy().ravel(), lab[src])
    inv = np.linalg.inv(out_aff) @ aff
    got = [float(x[0][tuple(np.rint(inv @ [*p, 1.0])[:3].astype(int))]) for p in probes]
    want = [0.0, 0.0, 50 / 425, 175 / 425, 275 / 425, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"HU {HU_PROBES}")


def test_train_transforms_sample_rois(pair):
    img, lab, _ = pair
    t = btcv_train_transforms(spacing=(1.5, 1.5, 2.0), roi_size=(16, 16, 8), num_samples=3)
    out = t({"image": img, "label": lab})
    assert len(out) == 3
    assert all(o["image"].shape == (1, 16, 16, 8) and o["label"].shape == (1, 16, 16, 8) for o in out)


def test_synapse8_label_map(pair):
    img, lab, _ = pair
    out = btcv_preprocessing(spacing=(1.5, 1.5, 2.0), label_map="synapse8")({"image": img, "label": lab})
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 5.0}  # liver is id 5 of the Synapse order


def _error(transform, data) -> InputError:
    with pytest.raises(Exception) as exc:
        transform(data)
    err = find_input_error(exc.value)
    assert err is not None, f"not an InputError: {exc.value!r}"
    return err


def test_bad_inputs_stop_with_the_file_named(pair, tmp_path):
    img, lab, aff = pair
    pre = btcv_preprocessing()
    four_d = _save(tmp_path / "four_d.nii.gz", np.zeros((8, 8, 4, 2), np.int16), aff)
    assert "four_d.nii.gz: image has 2 channels" in str(_error(pre, {"image": four_d, "label": lab}))
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.int16), np.eye(4))
    assert "flat.nii.gz: expected a 3D volume" in str(_error(btcv_preprocessing(keys=["image"]), {"image": flat}))
    high = _save(tmp_path / "high.nii.gz", np.full((40, 36, 12), 20, np.uint8), aff)
    assert "high.nii.gz: label values outside the label map 0..13: 20" in str(
        _error(pre, {"image": img, "label": high})
    )
    small = _save(tmp_path / "small.nii.gz", np.zeros((40, 36, 11), np.uint8), aff)
    assert "small.nii.gz: label grid (40, 36, 11) does not match" in str(_error(pre, {"image": img, "label": small}))
    moved = _save(tmp_path / "moved.nii.gz", np.zeros((40, 36, 12), np.uint8), np.diag([1.0, 1.0, 2.5, 1.0]))
    assert "moved.nii.gz: label affine differs" in str(_error(pre, {"image": img, "label": moved}))
    assert "missing.nii.gz: file not found" in str(
        _error(pre, {"image": str(tmp_path / "missing.nii.gz"), "label": lab})
    )
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert "garbage.nii.gz: cannot read the image" in str(_error(pre, {"image": str(garbage), "label": lab}))


def test_monai_label_image_path_does_not_crash_spacing(pair):
    """MONAI Label adds the string ``image_path`` to the data; MONAI 1.6's Spacingd calls .update on it."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Spacingd

    img, _, _ = pair
    data = {"image": img, "image_path": img}
    plain = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Spacingd("image", pixdim=(1.5, 1.5, 2.0))]
    )
    with pytest.raises(Exception) as exc:
        plain(dict(data))  # the crash as MONAI has it
    chain, e = [], exc.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("'str' object has no attribute 'update'" in m for m in chain), chain
    out = btcv_preprocessing(keys=["image"])(dict(data))
    assert out["image_path"] == img
    assert np.allclose(np.diag(out["image"].affine.numpy())[:3], [1.5, 1.5, 2.0])


@pytest.mark.parametrize("dtype", [torch.int16, torch.float32, torch.float64])
@pytest.mark.parametrize("window", [(-125.0, 275.0), (-175.0, 250.0), (-125, 275)])
def test_hu_window_in_one_buffer_is_monais(dtype, window):
    """The one-buffer HU window gives MONAI's ScaleIntensityRanged bit for bit, as a new tensor with the same
    metadata, and leaves its input alone."""
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRanged

    from common.transforms import HUWindowd

    g = torch.Generator().manual_seed(0)
    x = MetaTensor(
        (torch.rand(1, 17, 13, 5, generator=g) * 3000 - 1100).to(dtype), affine=torch.diag(torch.tensor([2.0, 2, 3, 1]))
    )
    x[0, 0, 0, 0] = window[0]  # the window's ends exactly
    x[0, 0, 0, 1] = window[1]
    kw = dict(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
    before = x.clone()
    ours, theirs = (
        HUWindowd("image", **kw)({"image": x})["image"],
        ScaleIntensityRanged("image", **kw)({"image": x})["image"],
    )
    assert ours.dtype == theirs.dtype == torch.float32 and isinstance(ours, MetaTensor)
    assert torch.equal(ours.as_tensor(), theirs.as_tensor()) and torch.equal(ours.affine, theirs.affine)
    assert torch.equal(x.as_tensor(), before.as_tensor())


def test_the_pre_flight_check_and_the_loaded_check_apply_one_rule_set(tmp_path):
    """``data.check_items`` (headers, before a run) and ``CheckInputd`` (arrays, once loaded) give the very same
    message for each broken case: both apply ``common.input_rules``."""
    from common.data import check_items
    from common.errors import InputError

    aff = np.diag([1.0, 1.0, 2.5, 1.0])
    img = _save(tmp_path / "img.nii.gz", np.zeros((40, 36, 12), np.int16), aff)
    cases = {
        "channels": (_save(tmp_path / "two.nii.gz", np.zeros((40, 36, 12, 2), np.int16), aff), None),
        "grid": (img, _save(tmp_path / "small.nii.gz", np.zeros((40, 36, 11), np.uint8), aff)),
        "affine": (img, _save(tmp_path / "moved.nii.gz", np.zeros((40, 36, 12), np.uint8), np.diag([1, 1, 2.0, 1]))),
        "values": (img, _save(tmp_path / "high.nii.gz", np.full((40, 36, 12), 20, np.uint8), aff)),
    }
    ok_label = _save(tmp_path / "lab.nii.gz", np.zeros((40, 36, 12), np.uint8), aff)
    for name, (image, label) in cases.items():
        item = {"image": image, "label": label or ok_label}
        with pytest.raises(InputError) as pre_flight:
            check_items([item])
        loaded = _error(btcv_preprocessing(), item)
        assert pre_flight.value.problems == loaded.problems, name
