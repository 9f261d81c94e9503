"""One report that puts every bundle side by side on the same cases under one protocol.

    python -m common.tools.leaderboard --bundles unetr_btcv transunet_btcv swin_unet_btcv mt_unet_btcv \\
        --dataset_dir /data/BTCV --split synapse --protocol synapse8 --out leaderboard/

For every bundle the command runs the bundle's own ``inference.json`` (its ``models/model.pt``, or
``--ckpt NAME=PATH``, extra config files with ``--config NAME=FILE``, overrides with
``--override NAME:key=json``) on the evaluation cases of the datalist, or takes an existing folder of
predictions (``--predictions NAME=DIR`` holding ``<image name>_seg.nii.gz``). With ``--split cv5`` and
``--ckpt NAME=.../fold{fold}/model.pt`` each of the five fold models predicts its own validation cases and the
30 out-of-fold predictions are scored as one entry (nnU-Net's cross-validation protocol). ``--ensemble
NAME=MEMBER,MEMBER...`` (each ``BUNDLE`` or ``BUNDLE=CHECKPOINT``) scores the mean of the members' probabilities
as one entry (``common.tools.ensemble``). All predictions are scored
under one protocol (``btcv13``, ``synapse8`` or ``synapse8_3d``, see ``common/protocols.py``) on each label's original grid.
It writes to ``--out``:

* ``leaderboard.md``: mean and per-organ Dice (and HD95) per bundle, the published numbers of ANCHORS.md
  beside them (each with its own protocol and split; comparable only where they match), per-organ mean,
  std and 95 % bootstrap confidence interval over cases, and a paired comparison of two bundles
  (``--compare A B``: per-case differences of the mean Dice, bootstrap CI, Wilcoxon signed-rank p-value,
  per organ too);
* ``leaderboard.csv`` and ``leaderboard.json``: the same numbers;
* ``per_organ_dice.png``: per organ, each entry's mean Dice with its 95 % bootstrap interval as error bars, and
  ``per_case_dice.png``: per organ, each entry's per-case Dice as a box with the cases as points (with matplotlib,
  the ``figures`` extra; without it one line says so and the rest is written as usual; ``common.tools.charts``);
* ``overlays/<case>.png``: for every organ present in the case, the axial slice where it is largest: CT,
  ground truth and each bundle's prediction;
* ``<bundle>/``: each bundle's full report (per-case CSV, summary, ``results.json``) and predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from ..errors import InputError, command, find_input_error
from ..evaluation import SegmentationReport, json_clean
from ..figures import overlay_png
from ..io import atomic_write_bytes, atomic_write_text, case_id, load_array
from ..labels import BTCV13, ID_SPACES, id_space_of
from ..metrics import to_btcv_ids
from ..protocols import (
    PROTOCOLS,
    get_protocol,
    metric_names,
    protocol_organs,
    protocol_rule,
)
from .anchors import anchors_for
from .charts import CHARTS, draw_charts
from .stats import describe, paired_comparison

__all__ = ["leaderboard", "main"]

REPO = Path(__file__).resolve().parents[2]


def _pred_file(folder: Path, image_path: str) -> Path | None:
    stem = case_id(image_path)
    for name in (f"{stem}_seg.nii.gz", f"{stem}.nii.gz", f"{stem}_seg.nii", f"{stem}.nii"):
        if (folder / name).is_file():
            return folder / name
    return None


def _split_pairs(values: Sequence[str] | None, sep: str = "=") -> dict[str, str]:
    out = {}
    for v in values or []:
        if sep not in v:
            raise InputError(f"expected NAME{sep}VALUE, got {v!r}")
        k, val = v.split(sep, 1)
        out[k] = val
    return out


def run_bundle_inference(
    bundle: str,
    items: list[dict],
    out_dir: Path,
    ckpt: str | None = None,
    configs: Sequence[str] = (),
    overrides: dict | None = None,
) -> tuple[Path, str, dict]:
    """Predict ``items`` with a bundle's ``inference.json``; return (prediction folder, id space, settings)."""
    from monai.bundle import ConfigWorkflow

    cfg = REPO / "bundles" / bundle / "configs"
    if not (cfg / "inference.json").is_file():
        raise InputError(f"unknown bundle {bundle!r}: {cfg / 'inference.json'} not found")
    files = [str(cfg / "inference.json")] + [str(c) for c in configs]
    kw = dict(overrides or {})
    kw.update(datalist=[{"image": it["image"]} for it in items], output_dir=str(out_dir), bundle_root=str(cfg.parent))
    if ckpt:
        kw["ckpt_path"] = str(ckpt)
    try:
        return _run_inference(ConfigWorkflow(config_file=files, workflow_type="infer", **kw), out_dir)
    except Exception as e:  # MONAI wraps an InputError in RuntimeErrors: hand the caller the InputError itself
        err = find_input_error(e)
        if err is None:
            raise
        raise err from None


def _run_inference(wf, out_dir: Path) -> tuple[Path, str, dict]:
    wf.initialize()
    num_classes = int(wf.parser.get_parsed_content("num_classes"))
    settings = {
        k: wf.parser.get_parsed_content(k)
        for k in ("roi_size", "img_size", "sw_overlap", "slice_batch", "tta", "autocast", "spacing", "amp")
        if k in wf.parser
    }
    settings["checkpoint"] = (
        str(wf.parser.get_parsed_content("ckpt_path")) if wf.parser.get_parsed_content("load_pretrain") else "untrained"
    )
    if "card" in wf.parser and wf.parser.get_parsed_content("card"):  # a reproduction card among the configs
        settings["card"] = wf.parser.get_parsed_content("card")
    wf.run()
    wf.finalize()
    return out_dir, id_space_of(num_classes), settings


def _fmt(v, nd=3):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


@dataclass
class _Cases:
    """The cases every entry is scored on, and what they are (for the report and the published numbers)."""

    items: list[dict]
    label: str
    named: str | None  # the named split of a BTCV download, under which published numbers are shown


@dataclass
class _Entry:
    """One entry of the leaderboard: a bundle's inference (``ckpt`` may be an out-of-fold ``{fold}`` pattern), an
    ensemble (``members``) or a folder of predictions; ``ids``: the id space of its labels."""

    name: str
    ids: str = BTCV13
    folder: Path | None = None
    members: str | None = None
    ckpt: str | None = None


def leaderboard(
    bundles: Sequence[str] = (),
    predictions: dict[str, str] | None = None,
    dataset_dir: str = "",
    split: str = "dataset_0",
    datalist_file: str = "",
    protocol: str = BTCV13,
    out: str = "leaderboard",
    ckpts: dict[str, str] | None = None,
    configs: dict[str, list[str]] | None = None,
    overrides: dict[str, dict] | None = None,
    pred_ids: dict[str, str] | None = None,
    label_ids: str = BTCV13,
    compare: Sequence[str] | None = None,
    max_cases: int | None = None,
    overlay_cases: int | None = None,
    progress: bool = True,
    fold: int | None = None,
    ensembles: dict[str, str] | None = None,
) -> dict:
    """Run, score and compare bundles; see the module docstring. Returns the leaderboard as a dict.

    In steps: the cases and the entries (:func:`_cases`, :func:`_entries`), each entry's predictions
    (:func:`_predict`) and scores under the protocol (:func:`_score`), then the statistics, the comparison, the
    figures and the report (:func:`_statistics`, :func:`_comparison`, :func:`_figures`, :func:`_write_report`)."""
    from tqdm import tqdm

    get_protocol(protocol)  # an unknown name stops here, before any work
    entries = _entries(bundles, predictions, ensembles, ckpts, pred_ids, split, fold)
    cases = _cases(dataset_dir, split, datalist_file, fold, max_cases)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(1 for e in entries if e.folder is None) + len(entries) * len(cases.items)
    bar = tqdm(total=total, desc="leaderboard", unit="step", disable=not progress)
    where = {"dataset_dir": dataset_dir, "split": split, "datalist_file": datalist_file}
    results: dict[str, dict] = {}
    pred_files: dict[str, dict[str, Path]] = {}
    for entry in entries:
        folder, ids, settings = _predict(entry, cases, out_dir, where, configs or {}, overrides or {}, bar)
        results[entry.name], pred_files[entry.name] = _score(
            entry.name, folder, ids, settings, cases, out_dir / entry.name, protocol, label_ids, bar
        )
    bar.close()
    names = [e.name for e in entries]
    table = _statistics(results, protocol, cases.named)
    comparison = _comparison(results, names, compare, protocol)
    paths, overlays = _figures(results, table, pred_files, cases, out_dir, protocol, label_ids, overlay_cases)
    doc = {
        "protocol": protocol,
        "rule": protocol_rule(protocol),
        "split": cases.label,
        "num_cases": len(cases.items),
        "bundles": table,
        "comparison": comparison,
        "reports": {n: r["paths"] for n, r in results.items()},
        "figures": {k: paths[k] for k in CHARTS if k in paths},
    }
    return _write_report(doc, results, out_dir, names, paths, overlays)


def _entries(bundles, predictions, ensembles, ckpts, pred_ids, split, fold) -> list[_Entry]:
    """The entries in the order given (bundles, then prediction folders and ensembles not named as bundles)."""
    predictions, ensembles = dict(predictions or {}), dict(ensembles or {})
    names = list(bundles) + [n for n in [*predictions, *ensembles] if n not in bundles]
    if not names:
        raise InputError("nothing to compare", hint="give --bundles and/or --predictions NAME=DIR")
    entries = []
    for name in names:
        entry = _Entry(name, (pred_ids or {}).get(name, BTCV13))
        if name in predictions:
            entry.folder = Path(predictions[name])
        elif name in ensembles:
            entry.members = ensembles[name]
        else:
            entry.ckpt = (ckpts or {}).get(name)
            if entry.ckpt and "{fold}" in entry.ckpt and (split != "cv5" or fold not in (None, "")):
                raise InputError(f"--ckpt {name}={entry.ckpt}: a {{fold}} pattern needs --split cv5 without --fold")
        entries.append(entry)
    return entries


def _cases(dataset_dir, split, datalist_file, fold, max_cases) -> _Cases:
    from ..data import CV_FOLDS, get_datalist, named_split, split_label

    items = get_datalist(dataset_dir, split, datalist_file, keys=["validation"], fold=fold)["validation"]
    label = split_label(dataset_dir, datalist_file, split, fold)
    named = named_split(dataset_dir, datalist_file, split, fold)  # published numbers appear only under it
    if named == "cv5":
        label = f"cv5 (out-of-fold predictions of the {CV_FOLDS} folds, every case once)"
    return _Cases(items[: int(max_cases)] if max_cases else items, label, named)


def _predict(entry: _Entry, cases: _Cases, out_dir: Path, where: dict, configs, overrides, bar):
    """The entry's predictions of the cases: ``(folder, id space, settings)``. A folder of predictions is taken as
    it is; an ensemble predicts through :mod:`.ensemble`; a bundle through its own ``inference.json``, each fold's
    model its own validation cases for an out-of-fold ``{fold}`` checkpoint pattern."""
    if entry.folder is not None:
        return entry.folder, entry.ids, {"predictions": str(entry.folder)}
    bar.set_description(f"inference {entry.name}")
    folder = out_dir / entry.name / "predictions"
    if entry.members is not None:
        from .ensemble import ensemble_inference, parse_member

        members = [parse_member(spec) for spec in entry.members.split(",")]
        for m in members:
            m.configs, m.overrides = list(configs.get(m.bundle, ())), dict(overrides.get(m.bundle, {}))
        settings = ensemble_inference(members, [it["image"] for it in cases.items], folder)
        ids = id_space_of(settings.pop("num_classes"))
    elif entry.ckpt and "{fold}" in entry.ckpt:
        from ..data import CV_FOLDS, get_datalist

        fold_checkpoints = []
        for k in range(CV_FOLDS):
            fold_items = get_datalist(**where, keys=["validation"], fold=k)["validation"]
            ckpt = entry.ckpt.format(fold=k)
            _, ids, settings = run_bundle_inference(
                entry.name, fold_items, folder, ckpt, configs.get(entry.name, ()), overrides.get(entry.name)
            )
            fold_checkpoints.append(settings.pop("checkpoint"))
        settings.update(checkpoint=entry.ckpt, fold_checkpoints=fold_checkpoints)
    else:
        _, ids, settings = run_bundle_inference(
            entry.name, cases.items, folder, entry.ckpt, configs.get(entry.name, ()), overrides.get(entry.name)
        )
    bar.update(1)
    return folder, ids, settings


def _score(name, folder: Path, ids: str, settings: dict, cases: _Cases, report_dir: Path, protocol, label_ids, bar):
    """Score the entry's predictions of every case (its own report in ``report_dir``): ``(result, files)``."""
    bar.set_description(f"scoring {name}")
    meta = {"bundle": name, "split": cases.label, "inference": settings}
    if settings.get("checkpoint"):
        meta["checkpoint"] = settings["checkpoint"]
    card = settings.pop("card", None)
    report = SegmentationReport(
        report_dir, protocol=protocol, pred_ids=ids, label_ids=label_ids, meta=meta, print_table=False, card=card
    )
    files = {}
    for it in cases.items:
        pf = _pred_file(folder, it["image"])
        if pf is None:
            raise InputError(f"{folder}: no prediction for {it['image']} (expected {case_id(it['image'])}_seg.nii.gz)")
        arr, aff = load_array(pf)
        report.add_case({"pred": MetaTensor(arr[None], affine=aff), "label_file": it["label"], "image": it["image"]})
        files[case_id(it["label"])] = pf
        bar.update(1)
    result = report.finish()
    result["pred_ids"] = ids
    return result, files


def _nan(v) -> float:
    return math.nan if v is None else v


def _case_scores(result: dict) -> dict:
    """The per-case scores of an entry's report (its ``results.json``)."""
    return json.loads(Path(result["paths"]["json"]).read_text(encoding="utf-8"))["cases"]


def _statistics(results: dict, protocol: str, named: str | None) -> dict:
    """Per entry: the mean Dice over cases and organs, the mean HD95, and per organ and metric the mean, std and
    bootstrap confidence interval over cases; the published numbers and the reproduction card beside them."""
    organs, metrics = protocol_organs(protocol), metric_names(protocol)
    table: dict[str, dict] = {}
    for name, res in results.items():
        cases = _case_scores(res)
        row = {"mean": describe(list(res["summary"]["case_mean_dice"].values())), "organs": {}}
        row["mean"]["mean_over_organs"] = res["summary"]["mean"]["dice"]
        row["mean_hd95"] = res["summary"]["mean"]["hd95"]
        for key, _, _ in organs:
            row["organs"][key] = {m: describe([_nan(c["scores"][key][m]) for c in cases.values()]) for m in metrics}
        row["anchors"] = anchors_for(name, protocol, named)
        row["card"] = res["meta"].get("card")
        table[name] = row
    return table


def _comparison(results: dict, names: list[str], compare, protocol: str) -> dict | None:
    """The paired comparison of two entries (``compare``, else the first two): per-case differences of the mean
    Dice and of each organ's Dice, bootstrap CI, Wilcoxon signed-rank p-value."""
    if len(results) < 2:
        return None
    a, b = (compare or names[:2])[:2]
    if a not in results or b not in results:
        raise InputError(f"--compare {a} {b}: both must be among {names}")
    ca, cb = results[a]["summary"]["case_mean_dice"], results[b]["summary"]["case_mean_dice"]
    comparison = {"a": a, "b": b, "mean_dice": paired_comparison(ca, cb), "organs": {}}
    ja, jb = _case_scores(results[a]), _case_scores(results[b])
    for key, _, _ in protocol_organs(protocol):
        da = {c: v["scores"][key]["dice"] for c, v in ja.items() if v["scores"][key]["dice"] is not None}
        db = {c: v["scores"][key]["dice"] for c, v in jb.items() if v["scores"][key]["dice"] is not None}
        comparison["organs"][key] = paired_comparison(da, db)
    return comparison


def _figures(results, table, pred_files, cases: _Cases, out_dir: Path, protocol, label_ids, overlay_cases):
    """The charts (:func:`common.tools.charts.draw_charts`) and the overlay image of each case (CT, ground truth,
    each entry's prediction): ``(paths, files)``."""
    organs = protocol_organs(protocol)
    per_case = {
        n: {k: [_nan(c["scores"][k]["dice"]) for c in _case_scores(r).values()] for k, _, _ in organs}
        for n, r in results.items()
    }
    paths: dict[str, str] = draw_charts(table, per_case, protocol, len(cases.items), out_dir)
    overlay_paths = []
    for it in cases.items[: overlay_cases if overlay_cases is not None else len(cases.items)]:
        cid = case_id(it["label"])
        ct, aff = load_array(it["image"])
        gt = to_btcv_ids(np.rint(load_array(it["label"])[0]).astype(np.int64), label_ids)
        preds = {
            n: to_btcv_ids(np.rint(load_array(pred_files[n][cid])[0]).astype(np.int64), results[n]["pred_ids"])
            for n in results
        }
        png, _ = overlay_png(ct, gt, preds, aff, cid, [k for k, _, _ in organs])
        overlay_paths.append(str(atomic_write_bytes(out_dir / "overlays" / f"{cid}.png", png)))
    paths["overlays"] = str(out_dir / "overlays")
    return paths, overlay_paths


def _write_report(doc: dict, results: dict, out_dir: Path, names: list[str], paths: dict, overlays: list) -> dict:
    """``leaderboard.json``, ``.csv`` and ``.md``, and the table printed."""
    protocol, table = doc["protocol"], doc["bundles"]
    paths["json"] = str(atomic_write_text(out_dir / "leaderboard.json", json.dumps(json_clean(doc), indent=2) + "\n"))
    paths["csv"] = str(atomic_write_text(out_dir / "leaderboard.csv", _csv(table, protocol)))
    paths["markdown"] = str(atomic_write_text(out_dir / "leaderboard.md", _markdown(doc, results)))
    print(f"\n{_markdown_table(table, protocol)}\nleaderboard written to {out_dir}:")
    for k, v in paths.items():
        print(f"  {k}: {v}")
    print(f"  per-bundle reports: {', '.join(str(out_dir / n) for n in names)}")
    doc["paths"] = paths
    doc["overlay_files"] = overlays
    return doc


def _csv(table: dict, protocol: str) -> str:
    import csv
    import io

    organs = protocol_organs(protocol)
    buf = io.StringIO()
    buf.write(f"# protocol: {protocol}\n# rule: {protocol_rule(protocol)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["bundle", "mean_dice", "mean_dice_ci_low", "mean_dice_ci_high", "mean_hd95"]
        + [f"{k}_dice{s}" for k, _, _ in organs for s in ("", "_std", "_ci_low", "_ci_high")]
    )
    for name, row in table.items():
        m = row["mean"]
        cells = [
            name,
            _fmt(m["mean_over_organs"], 6),
            _fmt(m["ci_low"], 6),
            _fmt(m["ci_high"], 6),
            _fmt(row["mean_hd95"], 6),
        ]
        for k, _, _ in organs:
            s = row["organs"][k]["dice"]
            cells += [_fmt(s["mean"], 6), _fmt(s["std"], 6), _fmt(s["ci_low"], 6), _fmt(s["ci_high"], 6)]
        w.writerow(cells)
    return buf.getvalue()


def _markdown_table(table: dict, protocol: str) -> str:
    organs = protocol_organs(protocol)
    unit = get_protocol(protocol).hd95_unit
    head = "| bundle | mean Dice | HD95 (" + unit + ") | " + " | ".join(n for _, n, _ in organs) + " |"
    lines = [head, "| --- | ---: | ---: |" + " ---: |" * len(organs)]
    for name, row in table.items():
        lines.append(
            f"| {name} | {_fmt(row['mean']['mean_over_organs'])} | {_fmt(row['mean_hd95'], 2)} | "
            + " | ".join(_fmt(row["organs"][k]["dice"]["mean"]) for k, _, _ in organs)
            + " |"
        )
        card = row.get("card")
        if card:
            exp = card.get("expected") or {}
            lines.append(
                f"| -> card {card['name']}: {card['verdict']} | {_fmt(exp.get('mean_dice'))} | "
                f"{_fmt(exp.get('mean_hd95'), 2)} |" + " |" * len(organs)
            )
        for a in row["anchors"]:
            organ_cells = " | ".join(_fmt(a.get("organs", {}).get(k)) for k, _, _ in organs)
            lines.append(
                f"| -> published: {a['source']} ({a['split']}) | {_fmt(a['mean_dice'])} | {_fmt(a.get('mean_hd95'), 2)} | {organ_cells} |"
            )
    return "\n".join(lines) + "\n"


def _markdown(doc: dict, results: dict) -> str:
    protocol, table = doc["protocol"], doc["bundles"]
    organs = protocol_organs(protocol)
    out = [
        f"# Leaderboard: protocol `{protocol}`, split `{doc['split']}`, {doc['num_cases']} case(s)",
        "",
        f"Rule: {doc['rule']}",
        "",
        f"HD95: {get_protocol(protocol).hd95}, in {get_protocol(protocol).hd95_unit}.",
        "",
        "Published numbers (rows marked `-> published`) are shown only under the same protocol and named split of the "
        "BTCV data, each with its source.",
        "",
        _markdown_table(table, protocol),
        "## Per-organ statistics (Dice over cases)",
        "",
        "| bundle | organ | mean | std | 95 % CI | n |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for name, row in table.items():
        m = row["mean"]
        out.append(
            f"| {name} | **case mean** | {_fmt(m['mean'])} | {_fmt(m['std'])} | [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] | {m['n']} |"
        )
        for k, n, _ in organs:
            s = row["organs"][k]["dice"]
            out.append(
                f"| {name} | {n} | {_fmt(s['mean'])} | {_fmt(s['std'])} | [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}] | {s['n']} |"
            )
    comp = doc.get("comparison")
    if comp:
        c = comp["mean_dice"]
        out += [
            "",
            f"## Paired comparison: {comp['a']} minus {comp['b']}",
            "",
            f"Per-case mean Dice difference {_fmt(c['mean_difference'])} (95 % CI [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], "
            f"n = {c['n']}), Wilcoxon signed-rank p = {_fmt(c['wilcoxon_p'], 4)}.",
            "",
            "| organ | mean difference | 95 % CI | Wilcoxon p | n |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for k, n, _ in organs:
            o = comp["organs"][k]
            out.append(
                f"| {n} | {_fmt(o['mean_difference'])} | [{_fmt(o['ci_low'])}, {_fmt(o['ci_high'])}] | {_fmt(o['wilcoxon_p'], 4)} | {o['n']} |"
            )
        out += ["", "Per-case differences: " + ", ".join(f"{k} {v:+.3f}" for k, v in c["differences"].items())]
    charts = [f"`{CHARTS[k]}`" for k in CHARTS if k in doc["figures"]] or ["none drawn (matplotlib is not installed)"]
    out += [
        "",
        f"Charts: {', '.join(charts)}. Overlays: `overlays/<case>.png`. Per-bundle reports: "
        + ", ".join(f"`{n}/summary.md`" for n in results),
        "",
    ]
    return "\n".join(out)


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.leaderboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="*", default=[], help="bundles to run (names under bundles/)")
    ap.add_argument("--predictions", action="append", default=[], help="NAME=DIR of existing predictions")
    ap.add_argument(
        "--ensemble",
        action="append",
        default=[],
        help="NAME=MEMBER,MEMBER... scored as one entry; MEMBER is BUNDLE or BUNDLE=CHECKPOINT",
    )
    ap.add_argument("--dataset_dir", default="", help="data as for the bundles ('' = the demo phantoms)")
    ap.add_argument("--split", default="dataset_0", help="dataset_0, synapse, model_zoo or cv5")
    ap.add_argument("--fold", type=int, default=None, help="with --split cv5: score one fold's validation cases")
    ap.add_argument("--datalist_file", default="")
    ap.add_argument("--protocol", default=BTCV13, choices=list(PROTOCOLS))
    ap.add_argument("--label-ids", default=BTCV13, choices=list(ID_SPACES), help="id space of the label files")
    ap.add_argument("--pred-ids", action="append", default=[], help="NAME=btcv13|synapse8 for --predictions folders")
    ap.add_argument(
        "--ckpt",
        action="append",
        default=[],
        help="NAME=PATH of a bundle's weights; with --split cv5, PATH may hold {fold} (each fold's model "
        "predicts its own validation cases: out-of-fold scoring)",
    )
    ap.add_argument("--config", action="append", default=[], help="NAME=FILE extra config merged after inference.json")
    ap.add_argument("--override", action="append", default=[], help="NAME:key=json config override")
    ap.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"), help="paired comparison A minus B")
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument(
        "--overlay-cases", type=int, default=None, help="overlay figures for the first N cases (default all)"
    )
    ap.add_argument("--out", default="leaderboard")
    args = ap.parse_args(argv)
    configs: dict[str, list[str]] = {}
    for c in args.config:  # repeatable per name: each file is merged in the order given
        n, f = next(iter(_split_pairs([c]).items()))
        configs.setdefault(n, []).append(f)
    overrides: dict[str, dict] = {}
    for o in args.override:
        name, kv = o.split(":", 1) if ":" in o else ("", o)
        k, v = kv.split("=", 1)
        overrides.setdefault(name, {})[k] = json.loads(v)
    leaderboard(
        args.bundles,
        _split_pairs(args.predictions),
        args.dataset_dir,
        args.split,
        args.datalist_file,
        args.protocol,
        args.out,
        _split_pairs(args.ckpt),
        configs,
        overrides,
        _split_pairs(args.pred_ids),
        args.label_ids,
        args.compare,
        args.max_cases,
        args.overlay_cases,
        fold=args.fold,
        ensembles=_split_pairs(args.ensemble),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
