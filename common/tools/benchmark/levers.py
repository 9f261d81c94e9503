"""The benchmark's ``levers`` part: what test-time augmentation, connected-component cleanup and ensembles do to
mean Dice, HD95 and inference time, on weights that segment organs.

    python -m common.tools.benchmark --parts levers --bundle unetr_btcv --bundle transunet_btcv \\
        --bundle swin_unet_btcv --doc docs/benchmarks.md

Weights and cases, per bundle (both need the bundle's ``configs/demo.json``):

* **demo**: the demo's network trained on the generated phantoms (``bundles/<b>/demo/models/model.pt``, trained
  through ``train.json`` + ``demo.json`` when missing), scored on four phantoms generated apart from the demo's
  (other seeds), and on the real CT sample of ``../shared/data``, where the phantom-trained networks predict
  fragments;
* **fitted**: the demo's network fitted to the real CT by the ``fitted`` part (its weights are reused), scored
  on that CT: its own training case, so the figures show the levers on organ-shaped predictions, not how a model
  generalises.

Variants (the bundle's own ``inference.json`` with the switch): off; ``--tta`` at its maximum (8 mirrored passes
for 3D, 4 for 2D); ``--cleanup largest``; ``--cleanup auto``, decided by ``evaluate.json --decide_cleanup`` on
the demo's own two validation phantoms (demo weights only); TTA with ``largest``. With two bundles or more, the
ensemble of their demo networks (``common.tools.ensemble``). Scores: the ``btcv13`` protocol's mean Dice over the
organs and cases, and mean HD95 in mm; time: the inference of all the cases, loading and writing included.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

from ...io import atomic_write_text
from .core import DEFAULT_SAMPLE, REPO, SMOKE_SIZES, SMOKE_SPACING, Context, fmt, phantom_file, table, train_bundle
from .fitted import fit_demo_network

__all__ = ["NAME", "lever_variants", "measure", "measure_once", "levers_part", "ensemble_rows", "section"]

NAME = "levers"
HELD_APART_SEEDS = (1001, 1002, 1003, 1004)  # the demo's phantoms use seeds from 0: these are new ones


def measure(ctx: Context, b) -> None:
    sample = None if ctx.smoke or not DEFAULT_SAMPLE.is_file() else DEFAULT_SAMPLE
    ctx.result["levers"] += levers_part(b, ctx.dev, ctx.out, ctx.work, ctx.data, sample, ctx.smoke, ctx.fit_epochs)
    ctx.measured.append(b)


def measure_once(ctx: Context, bundles: list[str]) -> None:
    """After every bundle: the ensemble of their demo networks."""
    sample = None if ctx.smoke or not DEFAULT_SAMPLE.is_file() else DEFAULT_SAMPLE
    ctx.result["levers"] += ensemble_rows(ctx.measured, ctx.out, ctx.work, ctx.data, sample, ctx.smoke, ctx.dev)


def lever_variants(kind: str, weights: str) -> list[tuple[str, dict]]:
    tta = 8 if kind == "3d" else 4
    out = [
        ("off", {}),
        (f"tta {tta}", {"tta": tta}),
        ("cleanup largest", {"cleanup": "largest"}),
    ]
    if weights == "demo":
        out.append(("cleanup auto", {"cleanup": "auto"}))
    out.append((f"tta {tta} + largest", {"tta": tta, "cleanup": "largest"}))
    return out


def _score(name: str, folder: Path, items: list[dict], ids: str, out: Path) -> dict:
    """Mean Dice over organs and cases and mean HD95 of the predictions in ``folder`` (the leaderboard's scoring)."""
    from ..leaderboard import leaderboard

    datalist = out / "datalist.json"
    atomic_write_text(datalist, json.dumps({"training": [], "validation": items}, indent=2) + "\n")
    with contextlib.redirect_stdout(io.StringIO()):  # its table and paths: the part prints its own line
        doc = leaderboard(
            predictions={name: str(folder)},
            pred_ids={name: ids},
            datalist_file=str(datalist),
            out=str(out),
            progress=False,
            overlay_cases=0,
        )
    row = doc["bundles"][name]
    return {"mean_dice": row["mean"]["mean_over_organs"], "hd95": row["mean_hd95"]}


def _demo_weights(name: str, smoke: bool, dev=None) -> Path | None:
    """The demo's trained network, trained here (train.json + demo.json, a few minutes on a CPU, on ``dev``) when
    missing."""
    ckpt = REPO / "bundles" / name / "demo" / "models" / "model.pt"
    if ckpt.is_file() or smoke:
        return ckpt if ckpt.is_file() else None
    cfg = REPO / "bundles" / name / "configs"
    print(f"  {name} | levers: training the demo's network", flush=True)
    log = REPO / "bundles" / name / "demo" / "train.log"
    device = {"device": str(dev)} if dev is not None else {}
    train_bundle([cfg / "train.json", cfg / "demo.json"], log, f"{name}: training the demo", device)
    return ckpt


def _decide_cleanup(name: str, ckpt: Path, overrides: dict, work: Path) -> None:
    """``evaluate.json --decide_cleanup true`` on the demo's validation phantoms: writes ``<ckpt>.cleanup.json``."""
    from monai.bundle import ConfigWorkflow

    cfg = REPO / "bundles" / name / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / "inference.json"), str(cfg / "evaluate.json"), str(cfg / "demo.json")],
        workflow_type="infer",
        logging_file=False,
        **{**overrides, "ckpt_path": str(ckpt), "output_dir": str(work / "decide"), "decide_cleanup": True},
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def _case_sets(data: Path, sample: Path | None, smoke: bool) -> dict[str, list[dict]]:
    from ...phantom import DEMO_SHAPE, DEMO_SPACING

    shape, spacing = (SMOKE_SIZES["small"], SMOKE_SPACING) if smoke else (DEMO_SHAPE, DEMO_SPACING)
    seeds = HELD_APART_SEEDS[:1] if smoke else HELD_APART_SEEDS
    sets = {"phantoms": [phantom_file(data, shape, seed=s, with_label=True, spacing=spacing) for s in seeds]}
    if sample is not None and sample.is_file():
        sets["real CT"] = [{"image": str(sample), "label": str(sample.with_name("label.nii.gz"))}]
    return sets


def levers_part(
    b, dev, out: Path, work: Path, data: Path, sample: Path | None, smoke: bool, fit_epochs: int
) -> list[dict]:
    """Rows (weights, cases, variant, scores, seconds) for bundle ``b`` (a :class:`.core.Bundle`)."""
    from ..leaderboard import run_bundle_inference

    name = b.name
    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    if not demo_cfg.is_file():
        print(f"  {name} | levers: skipped (no configs/demo.json)", flush=True)
        return []
    sets = _case_sets(data, sample, smoke)
    overrides = {"device": str(dev), **b.overrides}
    runs = []
    demo = _demo_weights(name, smoke, dev)
    if smoke:  # the smoke run's tiny network and weights: checks the part runs
        runs.append(("smoke", b.ckpt, sets))
    elif demo is not None:
        runs.append(("demo", demo, sets))
    if "real CT" in sets and not smoke:
        fitted, _ = fit_demo_network(name, overrides, sets["real CT"][0], out, fit_epochs)  # on the device too
        runs.append(("fitted", fitted, {"real CT": sets["real CT"]}))
    rows = []
    for weights, ckpt, case_sets in runs:
        if weights == "demo":
            _decide_cleanup(name, ckpt, overrides, work / name)
        for variant, switches in lever_variants(b.kind, weights):
            for cases_name, items in case_sets.items():
                folder = work / name / weights / cases_name.replace(" ", "_") / variant.replace(" ", "_")
                kw = {**overrides, **switches}
                configs = [] if smoke else [str(demo_cfg)]
                if ckpt is None:
                    kw["load_pretrain"] = False
                t = time.perf_counter()
                pred, ids, _ = run_bundle_inference(name, items, folder / "pred", ckpt and str(ckpt), configs, kw)
                seconds = time.perf_counter() - t
                row = {"bundle": name, "weights": weights, "cases": f"{cases_name} ({len(items)})", "variant": variant}
                row.update(_score(name, pred, items, ids, folder / "score"), seconds=seconds)
                rows.append(row)
                print(
                    f"  {name} | levers {weights} / {cases_name} / {variant}: Dice {row['mean_dice']:.4f}, "
                    f"HD95 {row['hd95']:.1f} mm, {seconds:.1f} s",
                    flush=True,
                )
    return rows


def ensemble_rows(
    bundles: list, out: Path, work: Path, data: Path, sample: Path | None, smoke: bool, dev=None
) -> list[dict]:
    """The ensemble of the bundles' demo networks (untrained tiny ones in smoke mode) on the same cases."""
    from ..ensemble import Member, ensemble_inference

    members = []
    for b in bundles:
        ckpt = _demo_weights(b.name, smoke, dev)
        cfg = REPO / "bundles" / b.name / "configs" / "demo.json"
        overrides = {"device": str(b.dev), **b.overrides}
        if smoke:
            members.append(Member(b.name, b.ckpt, [], {**overrides, **({} if b.ckpt else {"load_pretrain": False})}))
        elif ckpt is not None and cfg.is_file():
            members.append(Member(b.name, str(ckpt), [str(cfg)], overrides))
    if len(members) < 2:
        return []
    label = " + ".join(m.bundle for m in members)
    rows = []
    for cases_name, items in _case_sets(data, sample, smoke).items():
        folder = work / "ensemble" / cases_name.replace(" ", "_")
        t = time.perf_counter()
        settings = ensemble_inference(members, [it["image"] for it in items], folder / "pred")
        seconds = time.perf_counter() - t
        from ...labels import id_space_of

        row = {"bundle": label, "weights": "smoke" if smoke else "demo", "cases": f"{cases_name} ({len(items)})"}
        row.update(variant="ensemble (mean probability)", seconds=seconds)
        row.update(_score("ensemble", folder / "pred", items, id_space_of(settings["num_classes"]), folder / "score"))
        rows.append(row)
        print(f"  ensemble {label} / {cases_name}: Dice {row['mean_dice']:.4f}, {seconds:.1f} s", flush=True)
    return rows


def section(res: dict) -> list[str] | None:
    """The Markdown section: one row per bundle, weights, cases and variant, with the change against ``off``."""
    rows = res.get("levers")
    if not rows:
        return None
    base = {(r["bundle"], r["weights"], r["cases"]): r for r in rows if r["variant"] == "off"}

    def delta(r, key, nd):
        b = base.get((r["bundle"], r["weights"], r["cases"]))
        if b is None or r is b or r[key] is None or b[key] is None:
            return "-"
        return f"{r[key] - b[key]:+.{nd}f}"

    return table(
        "Accuracy levers: test-time augmentation, connected-component cleanup, ensembles",
        ["bundle", "weights", "cases", "variant", ">mean Dice", ">vs off", ">HD95 mm", ">vs off", ">seconds", ">x off"],
        [
            [
                r["bundle"],
                r["weights"],
                r["cases"],
                r["variant"],
                fmt(r["mean_dice"], 4),
                delta(r, "mean_dice", 4),
                fmt(r["hd95"], 1),
                delta(r, "hd95", 1),
                fmt(r["seconds"], 1),
                (
                    f"{r['seconds'] / base[(r['bundle'], r['weights'], r['cases'])]['seconds']:.2f}"
                    if (r["bundle"], r["weights"], r["cases"]) in base
                    else "-"
                ),
            ]
            for r in rows
        ],
    )
