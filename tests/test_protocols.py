"""The synapse8 protocol gives exactly the numbers of the papers' evaluation code (medpy dc / hd95).

The reference below is the papers' ``calculate_metric_percase`` procedure, written against medpy (a
test-only dependency): binarise, then (dc, hd95) if both masks are non-empty, (1, 0) if only the prediction
is, (0, 0) if the prediction is empty; mean over cases, then over the 8 organs.
"""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric.binary import dc, hd95
from scipy import ndimage

from common.labels import SYNAPSE_ORGAN_ORDER, organ
from common.metrics import hd95_mm, medpy_dc, medpy_hd95, score_case, summarize


def papers_metric_percase(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    pred = (pred > 0).astype(np.uint8)
    gt = (gt > 0).astype(np.uint8)
    if pred.sum() > 0 and gt.sum() > 0:
        return dc(pred, gt), hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1.0, 0.0
    return 0.0, 0.0


def papers_case(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, tuple[float, float]]:
    return {k: papers_metric_percase(pred_labels == organ(k).id, gt_labels == organ(k).id) for k in SYNAPSE_ORGAN_ORDER}


def _perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong prediction: shift, erode/dilate some organs, drop one, add a false positive."""
    out = ndimage.shift(labels, rng.integers(-2, 3, size=3), order=0)
    for k in rng.choice(SYNAPSE_ORGAN_ORDER, size=3, replace=False):
        m = out == organ(k).id
        m2 = ndimage.binary_dilation(m, iterations=1) if rng.random() < 0.5 else ndimage.binary_erosion(m, iterations=1)
        out[m & ~m2] = 0
        out[m2 & (out == 0)] = organ(k).id
    out[out == organ("gallbladder").id] = 0  # missed organ
    return out


def _assert_same(ours: dict, theirs: dict):
    for k, (d, h) in theirs.items():
        assert ours[k]["dice"] == pytest.approx(d, abs=1e-12), k
        assert ours[k]["hd95"] == pytest.approx(h, abs=1e-9), k


def test_same_numbers_as_medpy_on_the_real_ct(sample_ct):
    from common.io import load_array

    gt = np.rint(load_array(sample_ct / "label.nii.gz")[0]).astype(np.int64)
    rng = np.random.default_rng(0)
    for _ in range(3):
        pred = _perturb(gt, rng)
        _assert_same(score_case(pred, gt, protocol="synapse8"), papers_case(pred, gt))


def test_same_numbers_as_medpy_on_synthetic_masks():
    rng = np.random.default_rng(1)
    for trial in range(10):
        shape = tuple(rng.integers(12, 40, size=3))
        a = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
        b = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
        if a.any() and b.any():
            assert medpy_dc(a, b) == pytest.approx(dc(a, b), abs=1e-12)
            assert medpy_hd95(a, b) == pytest.approx(hd95(a, b), abs=1e-9)
            sp = tuple(rng.uniform(0.5, 3.0, size=3))
            assert medpy_hd95(a, b, sp) == pytest.approx(hd95(a, b, voxelspacing=sp), abs=1e-9)


def test_edge_cases_match_the_papers_rule():
    shape = (20, 20, 10)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    gt[2:8, 2:8, 2:6] = organ("liver").id  # predicted empty -> (0, 0)
    pred[10:14, 10:14, 3:5] = organ("spleen").id  # not in ground truth -> (1, 0)
    gt[0:3, 15:20, 0:3] = organ("aorta").id  # touching the array edge, predicted partly
    pred[0:2, 15:20, 0:3] = organ("aorta").id
    pred[19, 19, 9] = organ("stomach").id  # single voxel in a corner, absent from ground truth -> (1, 0)
    ours, theirs = score_case(pred, gt, protocol="synapse8"), papers_case(pred, gt)
    _assert_same(ours, theirs)
    assert (ours["liver"]["dice"], ours["liver"]["hd95"]) == (0.0, 0.0)
    assert (ours["spleen"]["dice"], ours["spleen"]["hd95"]) == (1.0, 0.0)
    assert (ours["kidney_left"]["dice"], ours["kidney_left"]["hd95"]) == (0.0, 0.0)  # empty in both


def test_mean_over_cases_then_organs_like_the_papers():
    rng = np.random.default_rng(2)
    from common.phantom import make_phantom

    cases, theirs = {}, []
    for i in range(3):
        gt = make_phantom(seed=40 + i, shape=(48, 48, 20), spacing=(8, 8, 13)).label.astype(np.int64)
        pred = _perturb(gt, rng)
        cases[f"c{i}"] = score_case(pred, gt, protocol="synapse8")
        theirs.append(papers_case(pred, gt))
    summ = summarize(cases, "synapse8")
    per_organ = {k: np.mean([t[k][0] for t in theirs]) for k in SYNAPSE_ORGAN_ORDER}
    assert summ["mean"]["dice"] == pytest.approx(np.mean(list(per_organ.values())), abs=1e-12)
    assert summ["mean"]["hd95"] == pytest.approx(
        np.mean([np.mean([t[k][1] for t in theirs]) for k in SYNAPSE_ORGAN_ORDER]), abs=1e-9
    )


def test_synapse8_3d_is_medpy_hd95_in_millimetres_on_the_real_ct(sample_ct):
    """The 3D Synapse protocol: medpy's pooled hd95 with ``voxelspacing``, checked against medpy itself; MONAI's
    definition (btcv13) is never below it on the same masks, and the two do differ."""
    from common.io import load_array

    gt = np.rint(load_array(sample_ct / "label.nii.gz")[0]).astype(np.int64)
    spacing = (0.8, 0.7, 2.5)  # anisotropic (the sample is 3 mm isotropic): an axis or unit mix-up would show
    pred = _perturb(gt, np.random.default_rng(3))
    ours = score_case(pred, gt, spacing, protocol="synapse8_3d")
    differs = 0
    for k in SYNAPSE_ORGAN_ORDER:
        p, g = pred == organ(k).id, gt == organ(k).id
        if p.any() and g.any():
            assert ours[k]["hd95"] == pytest.approx(hd95(p, g, voxelspacing=spacing), abs=1e-9), k
            assert ours[k]["dice"] == pytest.approx(dc(p, g), abs=1e-12), k
            monai = hd95_mm(p, g, spacing)
            assert monai >= ours[k]["hd95"] - 1e-6, k
            differs += monai > ours[k]["hd95"] + 1e-3
        else:
            assert (ours[k]["dice"], ours[k]["hd95"]) == papers_metric_percase(p, g), k
    assert differs > 0
    voxels = score_case(pred, gt, spacing, protocol="synapse8")
    assert any(voxels[k]["hd95"] != ours[k]["hd95"] for k in SYNAPSE_ORGAN_ORDER if voxels[k]["status"] == "scored")
