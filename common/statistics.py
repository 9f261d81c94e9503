"""Organ statistics of a prediction: each organ's volume in ml and its mean and standard deviation in HU, on the
input's own grid (TotalSegmentator's ``--statistics`` is the reference).

Inference writes them per case beside the label map with ``--statistics true`` (:class:`OrganStatisticsd`:
``<case>_stats.csv``); the evaluation reports each organ's predicted volume beside its scores.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .errors import InputError
from .io import atomic_write_text, case_id, load_array
from .labels import BTCV13, id_space, organ

__all__ = ["voxel_volume_ml", "organ_volumes_ml", "organ_statistics", "statistics_csv", "OrganStatisticsd"]

COLUMNS = ("organ", "label", "voxels", "volume_ml", "hu_mean", "hu_std")


def voxel_volume_ml(affine: np.ndarray) -> float:
    """The volume of one voxel in ml (the affine's determinant is in mm^3)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def organ_volumes_ml(labels: np.ndarray, affine: np.ndarray, organs: tuple[str, ...]) -> dict[str, float]:
    """Volume in ml of each organ key of ``organs`` in a BTCV-id label map (0.0 when absent)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=14)
    unit = voxel_volume_ml(affine)
    return {k: float(counts[organ(k).id]) * unit for k in organs}


def organ_statistics(
    labels: np.ndarray, affine: np.ndarray, image: np.ndarray | None = None, space: str = BTCV13
) -> list[dict]:
    """One row per class of id space ``space``: voxels, volume in ml and, with ``image`` (HU, same grid), the
    mean and (population) standard deviation of the organ's HU; an absent organ has volume 0 and no HU."""
    labels = np.asarray(labels)
    if image is not None and np.asarray(image).shape != labels.shape:
        raise ValueError(f"image grid {np.asarray(image).shape} differs from the label grid {labels.shape}")
    unit = voxel_volume_ml(affine)
    rows = []
    for cid, key in enumerate(id_space(space), start=1):
        mask = labels == cid
        n = int(mask.sum())
        row = {"organ": key, "label": cid, "voxels": n, "volume_ml": n * unit, "hu_mean": None, "hu_std": None}
        if image is not None and n:
            values = np.asarray(image, dtype=np.float64)[mask]
            row["hu_mean"], row["hu_std"] = float(values.mean()), float(values.std())
        rows.append(row)
    return rows


def statistics_csv(rows: list[dict]) -> str:
    """The rows of :func:`organ_statistics` as CSV (empty HU cells for absent organs)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(
            [r["organ"], r["label"], r["voxels"], f"{r['volume_ml']:.6g}"]
            + ["" if r[k] is None else f"{r[k]:.6g}" for k in ("hu_mean", "hu_std")]
        )
    return buf.getvalue()


class OrganStatisticsd(MapTransform):
    """After the label map is back on the input's grid (and written): ``<output_dir>/<case>_stats.csv`` with
    :func:`organ_statistics` of the prediction and the input CT, read again from its file. ``space``: the id
    space of the predicted labels (``btcv13``, or ``synapse8`` for the 9-class models)."""

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | os.PathLike = ".", space: str = BTCV13):
        super().__init__(keys)
        self.output_dir, self.space = Path(output_dir), space
        id_space(space)  # an unknown space fails when the config is parsed, not after the first case

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            source = str(getattr(pred, "meta", {}).get("filename_or_obj", ""))
            if not source:
                raise InputError("organ statistics need the input's file name in the prediction's metadata")
            image, affine = load_array(source, dtype=np.float32)
            labels = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred))[0]
            if image.ndim == 4:
                image = image[..., 0]
            if image.shape != labels.shape:
                raise InputError(f"{source}: the prediction's grid {labels.shape} is not the input's {image.shape}")
            rows = organ_statistics(np.rint(labels).astype(np.int64), affine, image, self.space)
            atomic_write_text(self.output_dir / f"{case_id(source)}_stats.csv", statistics_csv(rows))
        return d
