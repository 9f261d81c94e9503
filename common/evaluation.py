"""The evaluation report: per-case, per-organ metrics on the input's own grid, CSV and summary files.

:class:`SegmentationReport` is an ignite handler attached to a bundle's evaluator. For every case it
takes the prediction after inversion to the input's original grid and the ground-truth label *file* (read
fresh, not resampled), scores it with :func:`common.metrics.score_case` using the label's voxel spacing,
and when the evaluation completes writes (atomically):

* ``metrics_per_case.csv``: one row per case, each metric per organ, the case's mean Dice and each organ's
  predicted volume in ml;
* ``summary.csv`` and ``summary.md``: mean and std per organ and overall;
* ``results.json``: everything;

each recording the protocol and its absent-organ rule, the split, the bundle name and version, the
checkpoint and its SHA-256, the MONAI/torch/numpy versions and the inference settings (CSV files as leading
``# key: value`` lines),

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
from .io import atomic_write_text, case_id, image_info, load_array
from .labels import BTCV13, id_space, organ
from .metrics import dice, score_case, summarize, to_btcv_ids
from .postprocess import decide, decision_path, keep_largest
from .protocols import (
    NSD_TOLERANCE_MM,
    get_protocol,
    metric_names,
    protocol_organs,
    protocol_rule,
)
from .statistics import organ_volumes_ml

__all__ = [
    "SegmentationReport",
    "evaluation_items",
    "format_summary",
    "write_report",
    "protocol_rule",
    "run_info",
    "card_check",
    "json_clean",
]

logger = logging.getLogger(__name__)


def run_info(checkpoint: str | None = None) -> dict:
    """Library versions and the checkpoint's SHA-256, recorded with every result, and the seed and machine the
    checkpoint was trained with where it records them (``trained``): a model is reproducible on one kind of machine,
    not across kinds."""
    import monai

    info = {"versions": {"monai": monai.__version__, "torch": torch.__version__, "numpy": np.__version__}}
    if checkpoint and os.path.isfile(str(checkpoint)):
        from .io import file_sha256
        from .machine import describe
        from .weights import checkpoint_record

        info["checkpoint_sha256"] = file_sha256(checkpoint)
        record = checkpoint_record(checkpoint) or {}
        if record.get("machine"):
            info["trained"] = f"seed {record.get('seed', '?')} on {describe(record['machine'])}"
    return info


def _fmt(v: float, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def card_check(card: dict, protocol: str, split: str, measured: float | None) -> dict:
    """A reproduction card's expected mean Dice beside the measured one: ``{**card, "measured", "verdict", "line"}``.

    The verdict is ``within`` / ``outside`` the card's tolerance, ``no published number`` when the card has none, or
    ``not comparable`` when the run's protocol or split differs from the card's (then no verdict is given).
    """
    exp = card.get("expected") or {}
    out = dict(card)
    out["measured_mean_dice"] = measured
    if card.get("protocol") != protocol or str(split).split(" ")[0] != str(card.get("split", "")):
        verdict = (
            f"not comparable (card: {card.get('protocol')}, split {card.get('split')}; run: {protocol}, split {split})"
        )
    elif exp.get("mean_dice") is None:
        verdict = "no published number under this protocol and split"
    elif measured is None:
        verdict = ""
    else:
        verdict = "within" if abs(measured - exp["mean_dice"]) <= exp.get("tolerance", 0.0) else "outside"
        verdict += f" the card's tolerance of +/- {exp.get('tolerance', 0.0):.3f}"
    expected = "-" if exp.get("mean_dice") is None else f"{exp['mean_dice']:.4f} ({exp.get('source', '')})"
    out["verdict"] = verdict
    out["line"] = (
        f"card {card.get('name', '')}: expected mean Dice {expected}; measured "
        f"{_fmt(measured, 4) if measured is not None else '-'}: {verdict}"
    )
    return out


def _digits(metric: str) -> int:
    return 2 if metric == "hd95" else 4


def format_summary(summary: dict, title: str = "") -> str:
    """A fixed-width text table of a summary (per organ mean and std of each metric, n; then the mean)."""
    protocol = summary["protocol"]
    metrics = metric_names(protocol)
    head = ["organ"]
    for m in metrics:
        head += [f"{m.upper() if m != 'dice' else 'Dice'}{get_protocol(protocol).units()[m]}", "std"]
    rows = [tuple(head + ["n"])]
    for o in summary["organs"].values():
        r = [o["name"]]
        for m in metrics:
            r += [_fmt(o[m]["mean"], _digits(m)), _fmt(o[m]["std"], _digits(m))]
        rows.append(tuple(r + [str(o["dice"]["n"])]))
    mean = summary["mean"]
    r = ["MEAN"]
    for m in metrics:
        r += [_fmt(mean[m], _digits(m)), _fmt(mean["dice_std_over_cases"]) if m == "dice" else ""]
    rows.append(tuple(r + [str(summary["num_cases"])]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_META_KEYS = (
    "bundle",
    "bundle_version",
    "protocol",
    "split",
    "hd95_definition",
    "checkpoint",
    "checkpoint_sha256",
    "trained",
    "num_cases",
    "created",
)


def _meta_lines(meta: dict) -> list[tuple[str, str]]:
    lines = [(k, str(meta[k])) for k in _META_KEYS if meta.get(k) not in (None, "")]
    if meta.get("inference"):
        lines.append(("inference", json.dumps(meta["inference"], sort_keys=True)))
    if meta.get("versions"):
        lines.append(("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())))
    if meta.get("card"):
        lines.append(("card", meta["card"]["line"]))
    return lines


def _markdown(summary: dict, meta: dict, rule: str) -> str:
    protocol = summary["protocol"]
    metrics = metric_names(protocol)
    out = [f"# Evaluation: {meta.get('bundle', '')}".rstrip(": "), ""]
    out += [f"- {k}: `{v}`" for k, v in _meta_lines(meta)]
    out += [f"- rule: {rule}", ""]
    head = ["organ"] + [
        f"{m if m != 'dice' else 'Dice'} mean{get_protocol(protocol).units()[m]} | {m if m != 'dice' else 'Dice'} std"
        for m in metrics
    ]
    out.append("| " + " | ".join(head) + " | n |")
    out.append("| --- |" + " ---: | ---: |" * len(metrics) + " ---: |")
    for o in summary["organs"].values():
        cells = [f"{_fmt(o[m]['mean'], _digits(m))} | {_fmt(o[m]['std'], _digits(m))}" for m in metrics]
        out.append(f"| {o['name']} | " + " | ".join(cells) + f" | {o['dice']['n']} |")
    mean = summary["mean"]
    cells = [
        f"**{_fmt(mean[m], _digits(m))}** | {_fmt(mean['dice_std_over_cases']) if m == 'dice' else ''}" for m in metrics
    ]
    out.append("| **mean** | " + " | ".join(cells) + f" | {summary['num_cases']} |")
    return "\n".join(out) + "\n"


def _csv_text(rows: list[list], meta: dict) -> str:
    """CSV with the run information as leading ``# key: value`` lines (``pandas.read_csv(f, comment="#")``)."""
    buf = io.StringIO()
    for k, v in _meta_lines(meta):
        buf.write(f"# {k}: {v}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(rows)
    return buf.getvalue()


def write_report(
    output_dir: str | os.PathLike, cases: dict, protocol: str, meta: dict | None = None, card: dict | None = None
) -> dict:
    """Write ``metrics_per_case.csv``, ``summary.csv``, ``summary.md`` and ``results.json``; return paths.

    Every file records the protocol and its rule, the split, bundle name and version, checkpoint and its
    SHA-256, library versions and the inference settings given in ``meta``; with a reproduction ``card``, its
    expected number beside the measured one (``meta["card"]``, see :func:`card_check`).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta["protocol"] = protocol
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for k, v in run_info(meta.get("checkpoint")).items():
        meta.setdefault(k, v)
    tol = (
        float(meta.setdefault("nsd_tolerance_mm", NSD_TOLERANCE_MM))
        if "nsd" in metric_names(protocol)
        else NSD_TOLERANCE_MM
    )
    meta["hd95_definition"] = f"{get_protocol(protocol).hd95}, in {get_protocol(protocol).hd95_unit}"
    rule = protocol_rule(protocol, tol)
    summary = summarize({c: v["scores"] for c, v in cases.items()}, protocol)
    meta["num_cases"] = summary["num_cases"]
    if card:
        meta["card"] = card_check(card, protocol, str(meta.get("split", "")), summary["mean"]["dice"])
    organs = protocol_organs(protocol)
    metrics = metric_names(protocol)

    rows = [
        ["case", "image", "label", "mean_dice"]
        + [f"{k}_{m}" for k, _, _ in organs for m in metrics]
        + [f"{k}_predicted_ml" for k, _, _ in organs]
    ]
    for cid, c in cases.items():
        s, volumes = c["scores"], c.get("volumes_ml", {})
        rows.append(
            [cid, c.get("image", ""), c.get("label", ""), _fmt(summary["case_mean_dice"][cid], 6)]
            + [_fmt(s[k][m], 6) for k, _, _ in organs for m in metrics]
            + [_fmt(volumes.get(k), 6) for k, _, _ in organs]
        )
    paths = {"per_case": out / "metrics_per_case.csv"}
    atomic_write_text(paths["per_case"], _csv_text(rows, meta))

    rows = [["organ"] + [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")] + ["n"]]
    for k, o in summary["organs"].items():
        rows.append([k] + [_fmt(o[m][stat], 6) for m in metrics for stat in ("mean", "std")] + [o["dice"]["n"]])
    mean = summary["mean"]
    rows.append(
        ["mean"]
        + [x for m in metrics for x in (_fmt(mean[m], 6), _fmt(mean["dice_std_over_cases"], 6) if m == "dice" else "")]
        + [summary["num_cases"]]
    )
    paths["summary_csv"] = out / "summary.csv"
    atomic_write_text(paths["summary_csv"], _csv_text(rows, meta))

    paths["summary_md"] = out / "summary.md"
    atomic_write_text(paths["summary_md"], _markdown(summary, meta, rule))

    paths["json"] = out / "results.json"
    doc = {"meta": meta, "rule": rule, "summary": summary, "cases": cases}
    atomic_write_text(paths["json"], json.dumps(json_clean(doc), indent=2) + "\n")
    return {"summary": summary, "meta": meta, "paths": {k: str(v) for k, v in paths.items()}}


def json_clean(x):
    """NaN -> None, recursively, so the JSON is valid."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


def evaluation_items(items: Sequence[dict]) -> list[dict]:
    """Datalist items for an evaluation run: the image to predict and the label file to score against.

    The label path moves to ``label_file`` so the evaluator does not load it (MONAI engines replace a
    ``label`` entry with the prepared batch's label); :class:`SegmentationReport` reads the file itself, on
    its original grid.
    """
    out = []
    for it in items:
        if "label" not in it:
            raise InputError(
                f"{it.get('image')}: evaluation needs a label for every case", hint="use a datalist with labels"
            )
        out.append({"image": it["image"], "label_file": it["label"]})
    return out


class SegmentationReport:
    """Ignite handler: score every evaluated case on its original grid and write the report at the end.

    Args:
        output_dir: where the report files go.
        protocol: ``btcv13``, ``synapse8`` or ``synapse8_3d`` (see :mod:`common.protocols`).
        pred_key: key of the argmax prediction (1, X, Y, Z), already inverted to the input's grid.
        label_key: key holding the ground-truth label path (see :func:`evaluation_items`), or an already
            loaded label on the same grid.
        pred_ids: id space of the predictions, ``btcv13`` (14 classes) or ``synapse8`` (9 classes).
        label_ids: id space of the label files (``btcv13`` for BTCV data).
        meta: extra run information recorded in the result files (bundle name, split, settings).
        print_table: print the summary table and file paths when done.
        card: the reproduction card of the run (a bundle's ``card_*.json``), if any: its expected number is printed
            and recorded beside the measured one (see :func:`card_check`).
        overlays: draw ``overlays/<case>.png`` (CT, ground truth, prediction) for the first ``overlays`` cases.
        decide_cleanup: also score every organ after keep-largest cleanup and write, beside ``ckpt``, the organs
            where it raises the mean Dice (``common.postprocess.decide``; the predictions must be uncleaned).
        ckpt: the checkpoint evaluated (for ``decide_cleanup``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        protocol: str = BTCV13,
        pred_key: str = "pred",
        label_key: str = "label_file",
        image_key: str = "image",
        pred_ids: str = BTCV13,
        label_ids: str = BTCV13,
        meta: dict | None = None,
        print_table: bool = True,
        nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
        card: dict | None = None,
        overlays: int = 0,
        decide_cleanup: bool = False,
        ckpt: str | os.PathLike = "",
    ):
        self.output_dir = str(output_dir)
        self.protocol = protocol
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.pred_ids, self.label_ids = pred_ids, label_ids
        self.meta = dict(meta or {})
        self.meta["nsd_tolerance_mm"] = float(nsd_tolerance_mm)
        self.print_table = print_table
        self.card = card
        self.overlays = int(overlays or 0)
        self.decide_cleanup, self.ckpt = bool(decide_cleanup), str(ckpt)
        if self.decide_cleanup and (self.meta.get("inference") or {}).get("cleanup", "off") != "off":
            raise InputError("deciding the cleanup needs the predictions as they are", hint="run it with --cleanup off")
        if self.decide_cleanup and not os.path.isfile(self.ckpt):
            raise InputError(f"{self.ckpt}: deciding the cleanup needs the evaluated checkpoint", hint="set ckpt_path")
        self.cleanup_dice: dict[str, list[tuple[float, float]]] = {}
        self.figures: list[str] = []
        self.cases: dict[str, dict] = {}
        self.result: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def _reset(self, engine=None) -> None:
        self.cases = {}
        self.figures = []
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
        scores = score_case(
            pred_b,
            gt_b,
            spacing=[float(s) for s in spacing],
            protocol=self.protocol,
            nsd_tolerance_mm=self.meta["nsd_tolerance_mm"],
        )
        if self.decide_cleanup:
            cleaned = keep_largest(pred_b, [organ(k).id for k, _, _ in protocol_organs(self.protocol)])
            for k, _, _ in protocol_organs(self.protocol):
                m, g = gt_b == organ(k).id, pred_b == organ(k).id
                if m.any() or g.any():
                    self.cleanup_dice.setdefault(k, []).append((dice(g, m), dice(cleaned == organ(k).id, m)))
        image = item.get(self.image_key)
        image_path = (
            image
            if isinstance(image, str)
            else str(getattr(image, "meta", {}).get("filename_or_obj", ""))
            if image is not None
            else ""
        )
        cid = case_id(label_path or image_path or f"case{len(self.cases):04d}")
        self.cases[cid] = {
            "volumes_ml": organ_volumes_ml(pred_b, affine, tuple(k for k, _, _ in protocol_organs(self.protocol))),
            "image": image_path,
            "label": label_path,
            "spacing": [float(s) for s in spacing],
            "scores": scores,
        }
        if len(self.cases) <= self.overlays and image_path and os.path.exists(image_path):
            self._overlay(cid, image_path, gt_b, pred_b, affine)
        return scores

    def _overlay(self, cid: str, image_path: str, gt: np.ndarray, pred: np.ndarray, affine: np.ndarray) -> None:
        """``overlays/<case>.png``: for every organ present, its largest axial slice, CT | ground truth | prediction."""
        from .figures import overlay_png
        from .io import atomic_write_bytes

        ct, _ = load_array(image_path)
        png, _ = overlay_png(
            ct[0] if ct.ndim == 4 else ct,
            gt,
            {"prediction": pred},
            affine,
            cid,
            [k for k, _, _ in protocol_organs(self.protocol)],
        )
        path = atomic_write_bytes(Path(self.output_dir) / "overlays" / f"{cid}.png", png)
        self.figures.append(str(path))

    def _decide(self) -> dict:
        means = {
            k: (float(np.mean([p for p, _ in v])), float(np.mean([c for _, c in v])))
            for k, v in self.cleanup_dice.items()
        }
        space = id_space(self.pred_ids)
        doc = decide(means, self.ckpt, {k: space.index(k) + 1 for k in means if k in space})
        lines = [
            f"  {k}: {p:.4f} -> {c:.4f}{'  keep largest' if k in doc['keep_largest'] else ''}"
            for k, (p, c) in means.items()
        ]
        print("cleanup decision (mean Dice as predicted -> with keep-largest):\n" + "\n".join(lines), flush=True)
        print(f"written: {decision_path(self.ckpt)}", flush=True)
        return doc

    def finish(self, engine=None) -> dict:
        """Write the report of the cases added so far (and print the table); return its summary and paths."""
        if not self.cases:
            raise InputError("evaluation produced no cases", hint="check the evaluation datalist")
        self.result = write_report(self.output_dir, self.cases, self.protocol, self.meta, card=self.card)
        self.result["figures"] = list(self.figures)
        if self.decide_cleanup:
            self.result["cleanup"] = self._decide()
        if self.print_table:
            title = f"{self.meta.get('bundle', 'evaluation')} - protocol {self.protocol}, {len(self.cases)} case(s)"
            text = format_summary(self.result["summary"], title)
            if self.result["meta"].get("trained"):
                text += f"\nthe model was trained with {self.result['meta']['trained']}"
            if self.card:
                text += "\n" + self.result["meta"]["card"]["line"]
            if self.figures:
                text += "\n\npicture (CT | ground truth | prediction): " + ", ".join(self.figures)
            paths = "\n".join(f"  {k}: {v}" for k, v in self.result["paths"].items())
            print(f"\n{text}\n\nreport written to {self.output_dir}:\n{paths}\n", flush=True)
        return self.result
