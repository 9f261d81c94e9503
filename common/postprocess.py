"""Connected-component cleanup of a predicted label map, per organ, on the input's own grid.

``cleanup`` in every ``inference.json``:

* ``"off"`` (default): the label map as predicted;
* ``"largest"``: each organ keeps its largest connected component (26-connectivity), the rest becomes
  background, as nnU-Net's postprocessing does for the classes where it helps;
* a number, e.g. ``5``: components smaller than that many ml are removed (TotalSegmentator removes small blobs);
* ``"auto"``: keep-largest for the organs where it raised the mean Dice on validation cases, as nnU-Net's
  ``determine_postprocessing`` decides. The evaluation makes the decision (``evaluate.json`` with
  ``--decide_cleanup true``) and writes it beside the checkpoint (``<checkpoint>.cleanup.json``, tied to the
  checkpoint's SHA-256); inference with ``--cleanup auto`` reads it.

Removed voxels become background. MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` need
scikit-image, which is not a dependency here; the components are SciPy's ``ndimage.label``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from .errors import InputError
from .io import atomic_write_text, file_sha256
from .statistics import voxel_volume_ml

__all__ = ["CLEANUP_MODES", "keep_largest", "remove_small", "decision_path", "decide", "OrganCleanupd"]

CLEANUP_MODES = ("off", "largest", "auto")  # or a minimum component volume in ml
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, MONAI's default for 3D


def keep_largest(labels: np.ndarray, ids) -> np.ndarray:
    """``labels`` with each of ``ids`` reduced to its largest connected component (a copy)."""
    out = np.array(labels, copy=True)
    for i in ids:
        comp, n = ndimage.label(out == i, structure=_FULL)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != 0) & (comp != int(sizes.argmax()))] = 0
    return out


def remove_small(labels: np.ndarray, ids, min_voxels: int) -> np.ndarray:
    """``labels`` without the components of ``ids`` smaller than ``min_voxels`` (a copy)."""
    out = np.array(labels, copy=True)
    for i in ids:
        comp, n = ndimage.label(out == i, structure=_FULL)
        if n:
            sizes = np.bincount(comp.ravel())
            small = np.flatnonzero(sizes < min_voxels)
            out[np.isin(comp, small[small > 0])] = 0
    return out


def _mode(mode) -> str | float:
    if isinstance(mode, str) and mode in CLEANUP_MODES:
        return mode
    try:
        ml = float(mode)
    except (TypeError, ValueError):
        ml = float("nan")
    if not ml > 0:
        raise InputError(
            f"cleanup must be one of {', '.join(CLEANUP_MODES)} or a volume in ml above 0, got {mode!r}",
            hint="e.g. --cleanup largest, or --cleanup 5 to remove components under 5 ml",
        )
    return ml


def decision_path(ckpt: str | os.PathLike) -> Path:
    """Where the ``auto`` decision of a checkpoint is kept: ``<checkpoint>.cleanup.json``."""
    return Path(f"{ckpt}.cleanup.json")


def decide(dice: dict[str, tuple[float, float]], ckpt: str | os.PathLike, ids: dict[str, int]) -> dict:
    """From each organ's mean validation Dice (as predicted, with keep-largest), the organs whose Dice keep-largest
    raises; written to :func:`decision_path` with the checkpoint's SHA-256. ``ids``: organ key -> class id."""
    keep = [k for k, (plain, cleaned) in dice.items() if cleaned > plain]
    doc = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "keep_largest": keep,
        "keep_largest_ids": [ids[k] for k in keep],
        "mean_dice": {k: {"as_predicted": p, "keep_largest": c} for k, (p, c) in dice.items()},
        "rule": "keep-largest for an organ when it raises the organ's mean Dice over the validation cases",
    }
    atomic_write_text(decision_path(ckpt), json.dumps(doc, indent=2) + "\n")
    return doc


def _read_decision(ckpt: str | os.PathLike) -> list[int]:
    path = decision_path(ckpt)
    if not path.is_file():
        raise InputError(
            f"{path}: no cleanup decision for this checkpoint",
            hint="run the evaluation with --decide_cleanup true first, or use --cleanup largest",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ids, sha = [int(i) for i in doc["keep_largest_ids"]], doc["checkpoint_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a cleanup decision ({e})", hint="run the evaluation again") from e
    if sha != file_sha256(ckpt):
        raise InputError(
            f"{path}: decided for another checkpoint than {ckpt}",
            hint="run the evaluation with --decide_cleanup true on this checkpoint",
        )
    return ids


class OrganCleanupd(MapTransform):
    """:func:`keep_largest` / :func:`remove_small` on a predicted label map ``(1, X, Y, Z)`` on the input's grid
    (before it is written); see the module docstring for ``mode``. ``num_classes`` gives the organ ids."""

    def __init__(self, keys: KeysCollection = "pred", mode="off", num_classes: int = 14, ckpt: str = ""):
        super().__init__(keys)
        self.mode = _mode(mode)
        self.ids = list(range(1, int(num_classes)))
        if self.mode == "auto":
            self.ids = _read_decision(ckpt)

    def __call__(self, data):
        d = dict(data)
        if self.mode == "off":
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            labels = np.rint(arr[0]).astype(np.int64)
            if isinstance(self.mode, float):
                voxel_ml = voxel_volume_ml(np.asarray(getattr(pred, "affine", np.eye(4)), dtype=np.float64))
                cleaned = remove_small(labels, self.ids, int(np.ceil(self.mode / voxel_ml)))
            else:
                cleaned = keep_largest(labels, self.ids)
            out = torch.as_tensor(cleaned[None].astype(arr.dtype))
            if isinstance(pred, torch.Tensor):
                out = out.to(pred.device)
                if hasattr(pred, "copy_meta_from"):
                    out = type(pred)(out, meta=pred.meta, applied_operations=pred.applied_operations)
            d[key] = out
        return d
