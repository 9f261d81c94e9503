"""The ``fitted`` part (not in the default parts: it trains): the demo's network (``configs/demo.json``) trained on the
real CT sample itself through the bundle's own ``train.json`` (``--fit-epochs``, :data:`.core.FIT_EPOCHS` by
default), then every inference path on that CT with those weights. The demos learn on generated phantoms, so on the
real CT they predict fragments; weights fitted to the CT predict organ-shaped labels, as a model trained on BTCV
would, and the agreement of the paths is measured on such a prediction (with its Dice against the CT's labels). The
weights are kept in ``<out>/fitted/<bundle>/model.pt`` and reused by later runs with the same settings (another epoch
count, override or CT fits again)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...io import atomic_write_text
from .core import (
    DEFAULT_SAMPLE,
    FIT_EPOCHS,
    REPO,
    Bundle,
    Context,
    dice_vs_labels,
    fmt,
    label_geometry,
    table,
    train_bundle,
)
from .inference import paths

__all__ = ["NAME", "measure", "fit_demo_network", "same_fit", "section"]

NAME = "fitted"


def measure(ctx: Context, b: Bundle) -> None:
    if not (ctx.smoke or ctx.use_sample):
        return
    case = (
        ctx.train_items[0]
        if ctx.smoke
        else {"image": DEFAULT_SAMPLE, "label": DEFAULT_SAMPLE.with_name("label.nii.gz")}
    )
    epochs = 1 if ctx.smoke else ctx.fit_epochs
    ctx.result["fitted"] += run(b.name, b.overrides, ctx.dev, case, ctx.out, ctx.work, epochs, ctx.compile)


def run(
    name: str,
    overrides: dict,
    dev: torch.device,
    case: dict,
    out: Path,
    work: Path,
    epochs: int = FIT_EPOCHS,
    compile: bool = True,
) -> list[dict]:
    """Train the demo's network on one labelled CT (``case``: image and label paths) through the bundle's
    train.json + demo.json (+ ``overrides``), then every inference path on that CT with the fitted weights.
    The weights are kept in ``out/fitted/<bundle>/model.pt`` and reused."""
    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    image, label = Path(case["image"]).resolve(), Path(case["label"]).resolve()
    if not demo_cfg.is_file():
        print(f"  {name} | fitted: skipped (no configs/demo.json)", flush=True)
        return []
    ckpt, train_s = fit_demo_network(name, {"device": str(dev), **overrides}, case, out, epochs)
    b = Bundle(name, str(ckpt), dev, overrides, configs=[demo_cfg])
    rows = paths(b, [str(image)], work / "fitted", compile=compile)
    dice, per_class = dice_vs_labels(rows[0]["label_file"], str(label), b.num_classes)
    labels_geometry = label_geometry(str(label), b.num_classes)
    for r in rows:
        r["labels_geometry"] = labels_geometry
        r["configuration"] = f"{demo_cfg.relative_to(REPO)} fitted to {image.name} ({epochs} epochs), weights {ckpt}"
        r["baseline_dice_vs_labels"] = dice
        r["baseline_dice_per_class"] = per_class
        r["fit_seconds"] = train_s
    return rows


def fit_demo_network(name: str, overrides: dict, case: dict, out: Path, epochs: int = FIT_EPOCHS):
    """The demo's network (``configs/demo.json``) trained on the one labelled CT ``case`` through the bundle's own
    train.json (+ ``overrides``) for ``epochs``: ``(out/fitted/<bundle>/model.pt, training seconds or None when
    the weights of the same fit were there already)``."""
    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    image, label = Path(case["image"]).resolve(), Path(case["label"]).resolve()
    folder = (out / "fitted" / name).resolve()
    ckpt = folder / "model.pt"
    datalist = folder / "datalist.json"
    item = {"image": str(image), "label": str(label)}
    settings = {
        **overrides,
        "datalist_file": str(datalist),
        "max_epochs": epochs,
        "val_interval": epochs,
        "ckpt_dir": str(folder),
        "ckpt_path": str(ckpt),
        "output_dir": str(folder / "runs"),
    }
    train_s = None
    if not (ckpt.is_file() and same_fit(folder, settings, item)):
        # no weights yet, or weights of another fit (other epochs, overrides or CT): fit again from scratch
        if ckpt.is_file():
            print(f"  {name} | fitted: {ckpt} was fitted with other settings, fitting again", flush=True)
            ckpt.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(datalist, json.dumps({"training": [item], "validation": [item]}, indent=2) + "\n")
        atomic_write_text(folder / "fit.json", json.dumps(settings, indent=2) + "\n")
        configs = [str(REPO / "bundles" / name / "configs" / "train.json"), str(demo_cfg), str(folder / "fit.json")]
        print(f"  {name} | fitted: training the demo's network on {image} ({epochs} epochs)", flush=True)
        train_s = train_bundle(configs, folder / "train.log", f"{name}: fitting the demo's network")
    return ckpt, train_s


def same_fit(folder: Path, settings: dict, item: dict) -> bool:
    """Whether the weights in ``folder`` were fitted with ``settings`` on ``item`` (its fit.json and datalist.json)."""
    try:
        fit = json.loads((folder / "fit.json").read_text(encoding="utf-8"))
        data = json.loads((folder / "datalist.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return fit == settings and data.get("training") == [item]


def section(res: dict) -> list[str] | None:
    if not res.get("fitted"):
        return None
    return table(
        "Agreement on weights fitted to the real CT sample (the demo's network trained on that CT)",
        [
            "bundle",
            "path",
            ">total s",
            ">speed-up",
            ">agreement with baseline",
            ">baseline Dice vs labels",
            ">components: baseline / labels",
            "configuration",
        ],
        [
            [
                r["bundle"],
                r["variant"],
                fmt(r["seconds"]),
                f"{fmt(r['speedup_vs_baseline'])}x",
                f"{fmt(100 * r['agreement_vs_baseline'], 2)}%",
                fmt(r["baseline_dice_vs_labels"], 3),
                f"{r['prediction_geometry']['components']} / {r['labels_geometry']['components']}"
                if "prediction_geometry" in r
                else "",
                r["configuration"],
            ]
            for r in res["fitted"]
        ],
    )
