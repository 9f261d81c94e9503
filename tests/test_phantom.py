import numpy as np
import pytest

from common.labels import BTCV_ORGANS, organ
from common.phantom import file_digest, make_phantom, write_phantom_dataset

SHAPE, SPACING = (96, 96, 40), (4.0, 4.0, 6.5)


@pytest.fixture(scope="module")
def ph():
    return make_phantom(seed=11, shape=SHAPE, spacing=SPACING)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_phantom_dataset(
        tmp_path / "a", num_cases=2, num_validation=1, seed=3, shape=(48, 48, 20), spacing=(8, 8, 13)
    )
    b = write_phantom_dataset(
        tmp_path / "b", num_cases=2, num_validation=1, seed=3, shape=(48, 48, 20), spacing=(8, 8, 13)
    )
    c = write_phantom_dataset(
        tmp_path / "c", num_cases=2, num_validation=1, seed=4, shape=(48, 48, 20), spacing=(8, 8, 13)
    )
    for sub in ("imagesTr/phantom0000.nii.gz", "labelsTr/phantom0001.nii.gz"):
        assert file_digest(a.parent / sub) == file_digest(b.parent / sub)
        assert file_digest(a.parent / sub) != file_digest(c.parent / sub)
    assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")


def test_every_organ_present_with_plausible_hu_and_volume(ph):
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8
    voxel_ml = np.prod(SPACING) / 1000
    hu = {}
    for o in BTCV_ORGANS:
        m = ph.label == o.id
        assert m.any(), f"{o.name} missing"
        hu[o.key] = float(np.median(ph.image[m]))
    vol = {o.key: (ph.label == o.id).sum() * voxel_ml for o in BTCV_ORGANS}
    assert 900 < vol["liver"] < 2600  # adult liver ~1.2-1.8 l
    assert 80 < vol["spleen"] < 500 and 80 < vol["kidney_left"] < 300
    assert max(vol, key=vol.get) == "liver"
    assert vol["adrenal_left"] < vol["gallbladder"] < vol["spleen"]
    # portal-venous phase: vessels and kidneys enhance above the liver, gallbladder is fluid
    assert hu["aorta"] > hu["liver"] > hu["gallbladder"]
    assert hu["kidney_right"] > hu["liver"]
    assert -40 < hu["gallbladder"] < 40
    assert (ph.image.min() <= -900) and (ph.image.max() >= 300)  # air outside, bone in the spine


def test_anatomy_positions_in_patient_coordinates(ph):
    """Centroids in RAS (x towards the patient's right, y anterior, z superior) where anatomy puts them."""
    ijk = np.indices(ph.label.shape).reshape(3, -1)
    world = ph.affine[:3, :3] @ ijk + ph.affine[:3, 3:4]
    flat = ph.label.reshape(-1)

    def centroid(key):
        return world[:, flat == organ(key).id].mean(axis=1)

    body = world[:, (ph.image.reshape(-1) > -300)].mean(axis=1)
    assert centroid("liver")[0] > body[0] > centroid("spleen")[0]  # liver right, spleen left
    assert centroid("kidney_right")[0] > body[0] > centroid("kidney_left")[0]
    assert centroid("kidney_left")[2] > centroid("kidney_right")[2]  # left kidney sits higher
    assert centroid("ivc")[0] > centroid("aorta")[0]
    assert centroid("adrenal_right")[2] > centroid("kidney_right")[2]
    assert centroid("kidney_left")[1] < centroid("stomach")[1]  # kidneys posterior to the stomach
    assert np.allclose(np.diag(ph.affine)[:3], [-SPACING[0], -SPACING[1], SPACING[2]])  # LPS-like storage


def test_cases_vary(ph):
    other = make_phantom(seed=12, shape=SHAPE, spacing=SPACING)
    for o in BTCV_ORGANS:
        assert (ph.label == o.id).sum() != (other.label == o.id).sum(), o.name


def test_dataset_is_cached_and_lists_relative_paths(tmp_path):
    import json

    p = write_phantom_dataset(tmp_path, num_cases=3, num_validation=1, shape=(40, 40, 16), spacing=(9, 9, 16))
    d = json.loads(p.read_text(encoding="utf-8"))
    assert len(d["training"]) == 2 and len(d["validation"]) == 1
    assert d["training"][0] == {"image": "imagesTr/phantom0000.nii.gz", "label": "labelsTr/phantom0000.nii.gz"}
    mtime = (tmp_path / "imagesTr" / "phantom0000.nii.gz").stat().st_mtime_ns
    write_phantom_dataset(tmp_path, num_cases=3, num_validation=1, shape=(40, 40, 16), spacing=(9, 9, 16))
    assert (tmp_path / "imagesTr" / "phantom0000.nii.gz").stat().st_mtime_ns == mtime
