"""The evaluation report: per-case, per-organ metrics on the input's own grid, CSV and summary files.

:class:`SegmentationReport` is an ignite handler attached to a bundle's evaluator. For every case it
takes the prediction after inversion to the input's original grid and the ground-truth label *file* (read
fresh, not resampled), scores it with :func:`common.metrics.score_case` using the label's voxel spacing,
and when the evaluation completes writes (atomically):

* ``metrics_per_case.csv``: one row per case, Dice and HD95 per organ and the case's mean Dice;
* ``summary.csv`` and ``summary.md``: mean and std per organ and overall;
* ``results.json``: everything, plus the protocol, its absent-organ rule and run information.

and prints the summary table with the paths of the files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io import atomic_write_text, image_info, load_array
from .labels import protocol_organs
from .metrics import score_case, summarize, to_btcv_ids

__all__ = ["SegmentationReport", "evaluation_items", "format_summary", "write_report", "PROTOCOL_RULES"]

logger = logging.getLogger(__name__)

PROTOCOL_RULES = {
    "btcv13": (
        "13 BTCV organs; Dice and HD95 in mm (voxel spacing used; MONAI symmetric 95th percentile). Organ absent "
        "from the ground truth and not predicted: not scored (NaN, skipped by means). Present in exactly one of "
        "ground truth and prediction: Dice 0 and HD95 = image diagonal in mm. Mean = mean over organs of the "
        "per-organ means over cases."
    ),
    "synapse8": (
        "8 Synapse organs (papers' column order); medpy dc and hd95 without voxel spacing (HD95 in voxels). "
        "Prediction empty: (0, 0); prediction non-empty and ground truth empty: (1, 0). Mean over cases, then organs."
    ),
}


def _case_id(path: str) -> str:
    name = os.path.basename(str(path).rstrip("/"))
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy.h5", ".h5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _fmt(v: float, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_summary(summary: dict, title: str = "") -> str:
    """A fixed-width text table of a summary (per organ Dice/HD95 mean +- std, n; then the mean)."""
    unit = "mm" if summary["protocol"] == "btcv13" else "vox"
    rows = [("organ", "Dice mean", "Dice std", f"HD95 ({unit})", "HD95 std", "n")]
    for key, o in summary["organs"].items():
        rows.append((o["name"], _fmt(o["dice"]["mean"]), _fmt(o["dice"]["std"]), _fmt(o["hd95"]["mean"], 2),
                     _fmt(o["hd95"]["std"], 2), str(o["dice"]["n"])))  # fmt: skip
    m = summary["mean"]
    rows.append(("MEAN", _fmt(m["dice"]), _fmt(m["dice_std_over_cases"]), _fmt(m["hd95"], 2), "", str(summary["num_cases"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    if title:
        lines.append(title)
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(summary: dict, meta: dict) -> str:
    unit = "mm" if summary["protocol"] == "btcv13" else "voxels"
    out = [f"# Evaluation: {meta.get('bundle', '')}".rstrip(": "), ""]
    for k in ("protocol", "split", "num_cases", "checkpoint", "checkpoint_sha256", "created"):
        if meta.get(k) not in (None, ""):
            out.append(f"- {k}: `{meta[k]}`")
    out += [f"- rule: {PROTOCOL_RULES[summary['protocol']]}", ""]
    out.append(f"| organ | Dice mean | Dice std | HD95 mean ({unit}) | HD95 std | n |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for o in summary["organs"].values():
        out.append(f"| {o['name']} | {_fmt(o['dice']['mean'])} | {_fmt(o['dice']['std'])} | "
                   f"{_fmt(o['hd95']['mean'], 2)} | {_fmt(o['hd95']['std'], 2)} | {o['dice']['n']} |")  # fmt: skip
    m = summary["mean"]
    out.append(f"| **mean** | **{_fmt(m['dice'])}** | {_fmt(m['dice_std_over_cases'])} | {_fmt(m['hd95'], 2)} | | {summary['num_cases']} |")
    return "\n".join(out) + "\n"


def write_report(output_dir: str | os.PathLike, cases: dict, protocol: str, meta: dict | None = None) -> dict:
    """Write ``metrics_per_case.csv``, ``summary.csv``, ``summary.md`` and ``results.json``; return paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta.setdefault("protocol", protocol)
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    summary = summarize({c: v["scores"] for c, v in cases.items()}, protocol)
    meta["num_cases"] = summary["num_cases"]
    organs = protocol_organs(protocol)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "image", "label", "mean_dice"] + [f"{k}_{m}" for k, _, _ in organs for m in ("dice", "hd95")])
    for cid, c in cases.items():
        s = c["scores"]
        w.writerow([cid, c.get("image", ""), c.get("label", ""), _fmt(summary["case_mean_dice"][cid], 6)]
                   + [_fmt(s[k][m], 6) for k, _, _ in organs for m in ("dice", "hd95")])  # fmt: skip
    paths = {"per_case": out / "metrics_per_case.csv"}
    atomic_write_text(paths["per_case"], buf.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["organ", "dice_mean", "dice_std", "hd95_mean", "hd95_std", "n"])
    for k, o in summary["organs"].items():
        w.writerow([k, _fmt(o["dice"]["mean"], 6), _fmt(o["dice"]["std"], 6), _fmt(o["hd95"]["mean"], 6),
                    _fmt(o["hd95"]["std"], 6), o["dice"]["n"]])  # fmt: skip
    m = summary["mean"]
    w.writerow(["mean", _fmt(m["dice"], 6), _fmt(m["dice_std_over_cases"], 6), _fmt(m["hd95"], 6), "", summary["num_cases"]])
    paths["summary_csv"] = out / "summary.csv"
    atomic_write_text(paths["summary_csv"], buf.getvalue())

    paths["summary_md"] = out / "summary.md"
    atomic_write_text(paths["summary_md"], _markdown(summary, meta))

    def _clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: _clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [_clean(v) for v in x]
        return x

    paths["json"] = out / "results.json"
    doc = {"meta": meta, "rule": PROTOCOL_RULES[protocol], "summary": summary, "cases": cases}
    atomic_write_text(paths["json"], json.dumps(_clean(doc), indent=2) + "\n")
    return {"summary": summary, "paths": {k: str(v) for k, v in paths.items()}}


def evaluation_items(items: Sequence[dict]) -> list[dict]:
    """Datalist items for an evaluation run: the image to predict and the label file to score against.

    The label path moves to ``label_file`` so the evaluator does not load it (MONAI engines replace a
    ``label`` entry with the prepared batch's label); :class:`SegmentationReport` reads the file itself, on
    its original grid.
    """
    out = []
    for it in items:
        if "label" not in it:
            raise InputError(f"{it.get('image')}: evaluation needs a label for every case", hint="use a datalist with labels")
        out.append({"image": it["image"], "label_file": it["label"]})
    return out


class SegmentationReport:
    """Ignite handler: score every evaluated case on its original grid and write the report at the end.

    Args:
        output_dir: where the report files go.
        protocol: ``btcv13`` or ``synapse8`` (see :mod:`common.metrics`).
        pred_key: key of the argmax prediction (1, X, Y, Z), already inverted to the input's grid.
        label_key: key holding the ground-truth label path (see :func:`evaluation_items`), or an already
            loaded label on the same grid.
        pred_ids: id space of the predictions, ``btcv13`` (14 classes) or ``synapse8`` (9 classes).
        label_ids: id space of the label files (``btcv13`` for BTCV data).
        meta: extra run information recorded in the result files (bundle name, split, settings).
        print_table: print the summary table and file paths when done.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        protocol: str = "btcv13",
        pred_key: str = "pred",
        label_key: str = "label_file",
        image_key: str = "image",
        pred_ids: str = "btcv13",
        label_ids: str = "btcv13",
        meta: dict | None = None,
        print_table: bool = True,
    ):
        self.output_dir = str(output_dir)
        self.protocol = protocol
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.pred_ids, self.label_ids = pred_ids, label_ids
        self.meta = dict(meta or {})
        self.print_table = print_table
        self.cases: dict[str, dict] = {}
        self.result: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _reset(self, engine=None) -> None:
        self.cases = {}
        self.result = None

    def _collect(self, engine) -> None:
        # after post-processing MONAI keeps the batch's own keys (image path, label_file) in ``state.batch``
        # and the computed ones (pred) in ``state.output``: read both
        outputs, batches = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):
            outputs, batches = [outputs], [batches]
        if not isinstance(batches, (list, tuple)) or len(batches) != len(outputs):
            batches = [{}] * len(outputs)
        for out, batch in zip(outputs, batches):
            item = dict(batch) if isinstance(batch, dict) else {}
            item.update({k: v for k, v in out.items() if v is not None})
            self.add_case(item)

    def add_case(self, item: dict) -> dict:
        """Score one decollated item (``pred`` tensor + ``label`` path) and remember it."""
        pred = item[self.pred_key]
        label = item.get(self.label_key)
        if label is None:
            raise InputError("evaluation needs a 'label' for every case", hint="use a datalist with labels")
        pred_np = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
        if pred_np.ndim == 4:
            pred_np = pred_np[0]
        if isinstance(label, str):
            gt, affine = load_array(label)
            label_path = label
            spacing = image_info(label).spacing
        else:
            gt = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            gt = gt[0] if gt.ndim == 4 else gt
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            label_path = str(getattr(label, "meta", {}).get("filename_or_obj", ""))
        if pred_np.shape != gt.shape:
            raise InputError(
                f"{label_path}: prediction grid {pred_np.shape} differs from the label grid {gt.shape}",
                hint="the prediction must be inverted to the input's original grid before scoring",
            )
        pred_aff = getattr(pred, "affine", None)
        if pred_aff is not None and not np.allclose(np.asarray(pred_aff, dtype=np.float64), affine, atol=1e-3):
            raise InputError(f"{label_path}: prediction affine differs from the label's affine")
        gt_b = to_btcv_ids(np.rint(gt).astype(np.int64), self.label_ids)
        pred_b = to_btcv_ids(np.rint(pred_np).astype(np.int64), self.pred_ids)
        scores = score_case(pred_b, gt_b, spacing=[float(s) for s in spacing], protocol=self.protocol)
        image = item.get(self.image_key)
        image_path = str(getattr(image, "meta", {}).get("filename_or_obj", "")) if image is not None else ""
        cid = _case_id(label_path or image_path or f"case{len(self.cases):04d}")
        self.cases[cid] = {"image": image_path, "label": label_path, "spacing": [float(s) for s in spacing], "scores": scores}
        return scores

    def _finish(self, engine=None) -> dict:
        if not self.cases:
            raise InputError("evaluation produced no cases", hint="check the evaluation datalist")
        self.result = write_report(self.output_dir, self.cases, self.protocol, self.meta)
        if self.print_table:
            title = f"{self.meta.get('bundle', 'evaluation')} - protocol {self.protocol}, {len(self.cases)} case(s)"
            text = format_summary(self.result["summary"], title)
            paths = "\n".join(f"  {k}: {v}" for k, v in self.result["paths"].items())
            print(f"\n{text}\n\nreport written to {self.output_dir}:\n{paths}\n", flush=True)
        return self.result


def summary_dice(result: dict, organs: Sequence[str] | None = None) -> dict[str, float]:
    """Per-organ mean Dice from a report result (tests and benchmarks)."""
    summ = result["summary"]["organs"]
    return {k: v["dice"]["mean"] for k, v in summ.items() if organs is None or k in organs}
