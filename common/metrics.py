"""Per-case, per-organ segmentation metrics under a named protocol.

``btcv13`` (this project's 3D protocol)
    The 13 BTCV organs. Dice; HD95 in millimetres using the voxel spacing (MONAI's
    ``compute_hausdorff_distance``: the larger of the two directed 95th-percentile surface distances); and
    normalised surface Dice (NSD, MONAI's ``compute_surface_dice``) at a tolerance of
    :data:`NSD_TOLERANCE_MM` = 2 mm by default. Absent-organ rule:

    ============================  ================  ==================================  ================
    ground truth / prediction     Dice              HD95                                NSD
    ============================  ================  ==================================  ================
    present / present             overlap           surface distance (mm)               surface overlap
    present / empty (missed)      0                 image diagonal (mm), worst case     0
    empty / present (false pos.)  0                 image diagonal (mm), worst case     0
    empty / empty (absent)        not scored (NaN)  not scored (NaN)                    not scored (NaN)
    ============================  ================  ==================================  ================

    Means skip NaN, so an organ absent from a case (and correctly not predicted) neither rewards nor
    penalises it. (MONAI's research scripts instead score any organ absent from the ground truth as Dice 0,
    which punishes a correct empty prediction; we state the difference rather than copy it.)

``synapse8`` (the 2D papers' protocol, exactly as their ``calculate_metric_percase``)
    The 8 Synapse organs in the papers' column order; medpy ``dc`` and ``hd95`` on the 3D masks **without
    voxel spacing (HD95 in voxels)**: both present -> (dice, hd95); prediction non-empty and ground truth
    empty -> (1, 0); prediction empty -> (0, 0). Mean over cases, then over organs.

``synapse8_3d`` (the 3D Synapse papers)
    As ``synapse8``, with medpy's ``hd95`` given the voxel spacing (HD95 in mm).

The protocols themselves (organs, metrics, units, rules) are defined in :mod:`common.protocols`.

Label arrays are compared in the BTCV id space: use :func:`to_btcv_ids` first for 9-class Synapse labels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from .labels import BTCV13, to_btcv_lut
from .protocols import NSD_TOLERANCE_MM, get_protocol, metric_names, protocol_organs

__all__ = [
    "to_btcv_ids",
    "dice",
    "hd95_mm",
    "nsd",
    "medpy_dc",
    "medpy_hd95",
    "score_case",
    "summarize",
]


def to_btcv_ids(label: np.ndarray, id_space: str = BTCV13) -> np.ndarray:
    """Map an integer label array of ``id_space`` (see ``common.labels.ID_SPACES``) to BTCV ids."""
    lut = to_btcv_lut(id_space)
    if id_space == BTCV13:
        return label
    arr = np.asarray(label).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= len(lut)):
        raise ValueError(f"{id_space} labels must lie in 0..{len(lut) - 1}, got {arr.min()}..{arr.max()}")
    return lut[arr]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    p, g = int(pred.sum()), int(gt.sum())
    if p + g == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, gt).sum()) / (p + g)


def _crop_to_union(a: np.ndarray, b: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Crop two masks to the bounding box of their union plus a margin (distances are unchanged)."""
    idx = np.nonzero(a | b)
    sl = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)
    return a[sl], b[sl]


def hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two non-empty masks (MONAI, symmetric max)."""
    p, g = _crop_to_union(pred, gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a deprecation inside MONAI's edge extraction
        hd = compute_hausdorff_distance(
            torch.from_numpy(p[None, None]),
            torch.from_numpy(g[None, None]),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(hd[0, 0])


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two non-empty masks at ``tolerance_mm`` (MONAI ``compute_surface_dice``)."""
    p, g = _crop_to_union(pred, gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a deprecation inside MONAI's edge extraction
        v = compute_surface_dice(
            torch.from_numpy(p[None, None]),
            torch.from_numpy(g[None, None]),
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=[float(s) for s in spacing],
        )
    return float(v[0, 0])


def medpy_dc(result: np.ndarray, reference: np.ndarray) -> float:
    """medpy ``dc``: 2|A and B| / (|A| + |B|), 0 when both are empty."""
    result, reference = result.astype(bool), reference.astype(bool)
    inter = int(np.count_nonzero(result & reference))
    size = int(np.count_nonzero(result)) + int(np.count_nonzero(reference))
    try:
        return 2.0 * inter / float(size)
    except ZeroDivisionError:
        return 0.0


def _surface_distances(result: np.ndarray, reference: np.ndarray, spacing=None) -> np.ndarray:
    """Distances from the border voxels of ``result`` to the nearest border voxel of ``reference``.

    Borders as medpy defines them: the mask minus its erosion with the face-connected (connectivity 1)
    structuring element (voxels on the array edge count as border).
    """
    footprint = ndimage.generate_binary_structure(result.ndim, 1)
    result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ ndimage.binary_erosion(reference, structure=footprint, iterations=1)
    dt = ndimage.distance_transform_edt(~reference_border, sampling=spacing)
    return dt[result_border]


def medpy_hd95(result: np.ndarray, reference: np.ndarray, spacing=None) -> float:
    """medpy ``hd95``: 95th percentile of the union of both directed surface-distance sets.

    With ``spacing=None`` (the papers' usage) distances are in voxels. Both masks must be non-empty.
    """
    result, reference = result.astype(bool), reference.astype(bool)
    if not result.any() or not reference.any():
        raise RuntimeError("medpy_hd95 needs two non-empty masks")
    # exact: a crop edge is either the array edge or at least two voxels away from both masks
    r, g = _crop_to_union(result, reference)
    d1 = _surface_distances(r, g, spacing)
    d2 = _surface_distances(g, r, spacing)
    return float(np.percentile(np.hstack((d1, d2)), 95))


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def score_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    protocol: str = BTCV13,
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, dict[str, float]]:
    """Score one case: ``{organ_key: {"dice": .., "hd95": .., ["nsd": ..,] "status": ..}}``.

    ``pred`` and ``gt`` are integer label arrays of the same shape in BTCV ids (see :func:`to_btcv_ids`).
    ``spacing`` (mm) is used where the protocol measures in mm (``btcv13``, which also reports NSD at
    ``nsd_tolerance_mm``; ``synapse8_3d``); ``synapse8`` measures HD95 in voxels like the papers.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    out: dict[str, dict[str, float]] = {}
    worst = _diagonal_mm(gt.shape, spacing)
    proto = get_protocol(protocol)
    for key, _name, oid in protocol_organs(protocol):
        p, g = pred == oid, gt == oid
        has_p, has_g = bool(p.any()), bool(g.any())
        if proto.papers_rule:
            if has_p and has_g:
                hd = medpy_hd95(p, g, [float(s) for s in spacing] if proto.hd95_mm else None)
                out[key] = {"dice": medpy_dc(p, g), "hd95": hd, "status": "scored"}
            elif has_p:
                out[key] = {"dice": 1.0, "hd95": 0.0, "status": "false_positive"}
            else:
                out[key] = {"dice": 0.0, "hd95": 0.0, "status": "missed" if has_g else "absent"}
            continue
        if has_p and has_g:
            out[key] = {
                "dice": dice(p, g),
                "hd95": hd95_mm(p, g, spacing),
                "nsd": nsd(p, g, spacing, nsd_tolerance_mm),
                "status": "scored",
            }
        elif has_g:
            out[key] = {"dice": 0.0, "hd95": worst, "nsd": 0.0, "status": "missed"}
        elif has_p:
            out[key] = {"dice": 0.0, "hd95": worst, "nsd": 0.0, "status": "false_positive"}
        else:
            out[key] = {"dice": float("nan"), "hd95": float("nan"), "nsd": float("nan"), "status": "absent"}
    return out


def _nanstats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarize(cases: dict[str, dict[str, dict[str, float]]], protocol: str = BTCV13) -> dict:
    """Summary over cases: per organ mean/std/n of Dice and HD95, and the overall mean.

    The overall mean is the mean over organs of the per-organ means (the papers' "mean over cases, then over
    organs"); the overall std is the std over cases of each case's organ-averaged Dice.
    """
    organs = protocol_organs(protocol)
    metrics = metric_names(protocol)
    per_organ = {}
    for key, name, _ in organs:
        per_organ[key] = {"name": name}
        for m in metrics:
            per_organ[key][m] = _nanstats([c[key][m] for c in cases.values() if key in c])
    case_means = {cid: _nanstats([c[k]["dice"] for k, _, _ in organs if k in c])["mean"] for cid, c in cases.items()}
    mean = {m: _nanstats([per_organ[k][m]["mean"] for k, _, _ in organs])["mean"] for m in metrics}
    mean["dice_std_over_cases"] = _nanstats(list(case_means.values()))["std"]
    return {
        "protocol": protocol,
        "num_cases": len(cases),
        "organs": per_organ,
        "case_mean_dice": case_means,
        "mean": mean,
    }
