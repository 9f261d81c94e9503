"""Metrics against hand-computed cases, the absent-organ rule, anisotropic spacing, and summaries."""

import math

import numpy as np
import pytest

from common.labels import organ
from common.metrics import dice, hd95_mm, nsd, score_case, summarize, to_btcv_ids

LIVER, SPLEEN, ESO = organ("liver").id, organ("spleen").id, organ("esophagus").id


def test_dice_hand_computed():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4, 0:5, 0:5] = True  # 100 voxels
    b[2:6, 0:5, 0:5] = True  # 100 voxels, 50 shared
    assert dice(a, b) == pytest.approx(2 * 50 / 200)
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_hd95_uses_anisotropic_spacing():
    # two parallel slabs 3 voxels apart along z: every surface distance is 3 voxels along z
    a = np.zeros((12, 12, 20), bool)
    b = np.zeros_like(a)
    a[2:10, 2:10, 5] = True
    b[2:10, 2:10, 8] = True
    assert hd95_mm(a, b, (0.7, 0.7, 2.5)) == pytest.approx(3 * 2.5)
    assert hd95_mm(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    # shift along x by 2 voxels at 0.7 mm in-plane
    c = np.zeros_like(a)
    c[4:12, 2:10, 5] = True
    assert hd95_mm(a, c, (0.7, 0.7, 2.5)) == pytest.approx(2 * 0.7)


def test_normalised_surface_dice_tolerance_in_mm():
    a = np.zeros((12, 12, 20), bool)
    b = np.zeros_like(a)
    a[2:10, 2:10, 5] = True
    b[2:10, 2:10, 8] = True  # every surface point 3 slices = 7.5 mm away
    assert nsd(a, b, (0.7, 0.7, 2.5), tolerance_mm=2.0) == 0.0
    assert nsd(a, b, (0.7, 0.7, 2.5), tolerance_mm=7.6) == 1.0
    assert nsd(a, a, (0.7, 0.7, 2.5)) == 1.0


def test_absent_organ_rule_btcv13():
    shape, spacing = (10, 10, 10), (1.0, 2.0, 3.0)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    gt[2:6, 2:6, 2:6] = LIVER
    pred[2:6, 2:6, 2:6] = LIVER
    pred[8, 8, 8] = SPLEEN  # predicted, absent from the ground truth
    gt[0, 0, 0] = organ("stomach").id  # present, missed by the prediction
    s = score_case(pred, gt, spacing, "btcv13")
    diag = math.sqrt(10**2 + 20**2 + 30**2)
    assert s["liver"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "status": "scored"}
    assert (
        s["spleen"]["dice"] == 0.0
        and s["spleen"]["hd95"] == pytest.approx(diag)
        and s["spleen"]["status"] == "false_positive"
    )
    assert (
        s["stomach"]["dice"] == 0.0
        and s["stomach"]["hd95"] == pytest.approx(diag)
        and s["stomach"]["status"] == "missed"
    )
    assert s["spleen"]["nsd"] == 0.0 and s["stomach"]["nsd"] == 0.0
    assert (
        math.isnan(s["esophagus"]["dice"])
        and math.isnan(s["esophagus"]["nsd"])
        and s["esophagus"]["status"] == "absent"
    )
    summ = summarize({"c1": s, "c2": s}, "btcv13")
    assert summ["organs"]["esophagus"]["dice"]["n"] == 0  # absent everywhere: not scored
    assert summ["organs"]["liver"]["dice"]["mean"] == 1.0
    # overall mean = mean over scored organs of per-organ means: liver 1, spleen 0, stomach 0
    assert summ["mean"]["dice"] == pytest.approx(1 / 3)


def test_absent_organ_rule_synapse8():
    gt = np.zeros((8, 8, 8), np.int64)
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:3] = SPLEEN  # predicted, not in ground truth -> (1, 0)
    gt[4:6, 4:6, 4:6] = LIVER  # missed -> (0, 0)
    s = score_case(pred, gt, protocol="synapse8")
    assert (s["spleen"]["dice"], s["spleen"]["hd95"]) == (1.0, 0.0)
    assert (s["liver"]["dice"], s["liver"]["hd95"]) == (0.0, 0.0)
    assert (s["aorta"]["dice"], s["aorta"]["hd95"]) == (0.0, 0.0)  # absent in both -> (0, 0) as the papers
    assert list(s) == ["aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]


def test_synapse_ids_are_mapped_back():
    syn = np.array([0, 1, 5, 7, 8])
    assert list(to_btcv_ids(syn, "synapse8")) == [0, organ("aorta").id, LIVER, SPLEEN, organ("stomach").id]
    with pytest.raises(ValueError):
        to_btcv_ids(np.array([9]), "synapse8")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        score_case(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_real_sample_metrics(sample_ct):
    """On the real CT's labels: a perfect prediction scores 1/0, and esophagus (absent) is not scored."""
    from common.io import image_info, load_array

    gt, _ = load_array(sample_ct / "label.nii.gz")
    gt = gt.astype(np.int64)
    spacing = image_info(sample_ct / "label.nii.gz").spacing
    s = score_case(gt, gt, spacing, "btcv13")
    assert s["esophagus"]["status"] == "absent"
    assert all(v["dice"] == 1.0 and v["hd95"] == 0.0 for k, v in s.items() if k != "esophagus")
    shifted = np.zeros_like(gt)
    shifted[:, :, 1:] = gt[:, :, :-1]  # one slice towards superior = 3 mm
    s2 = score_case(shifted, gt, spacing, "btcv13")
    assert s2["liver"]["hd95"] == pytest.approx(3.0)
    assert 0.8 < s2["liver"]["dice"] < 1.0
