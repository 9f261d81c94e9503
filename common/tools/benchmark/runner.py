"""The suite: which parts run for which bundles, in what order, and the report they make together (each part measures
and renders its own section; :func:`render` puts the sections under their run's line; :func:`merge_doc` keeps each
part's latest run in the benchmark document)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ...io import atomic_write_text
from . import accelerators, dataset, ddp, efficiency, fitted, inference, learn, levers, mtm, scaling, training
from .core import (
    DEFAULT_SAMPLE,
    FIT_EPOCHS,
    REPO,
    SIZES,
    SMOKE_SIZES,
    SMOKE_SPACING,
    Bundle,
    Context,
    fits,
    fmt,
    machine_info,
    table,
)

__all__ = [
    "DEFAULT_PARTS",
    "PARTS_ORDER",
    "TARGETS",
    "GPU_CHECK_PARTS",
    "suite",
    "check_targets",
    "render",
    "merge_doc",
]

DEFAULT_PARTS = ("efficiency", "inference", "agreement", "dataset", "training", "scaling", "mtm")
# the parts measured bundle by bundle, in this order, then those measured once for all the bundles
PER_BUNDLE = (efficiency, inference, dataset, fitted, levers, training, learn, scaling)
ONCE = (levers, mtm, ddp, accelerators)
RESULT_KEYS = ("inference", "agreement", "fitted", "dataset", "training", "scaling", "mtm", "efficiency", "levers")
RESULT_KEYS += ("learn", "ddp", "accelerators")

# What a GPU should reach (the acceptance targets): end to end against the baseline path of the same run,
# and the bundle's training pipeline against a plain one
TARGETS = {"3d": 2.0, "2d": 5.0, "training": 2.0}
GPU_CHECK_PARTS = ("inference", "learn", "ddp", "accelerators")


def _context(out_dir, device, sizes, smoke, volumes, command, **settings) -> Context:
    dev = torch.device(device) if device else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    sizes = dict(sizes or (SMOKE_SIZES if smoke else SIZES))
    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="suite-", dir=out if out.exists() else None))
    data = out / "data"
    result = {"benchmark": "suite", "command": command, "date": time.strftime("%Y-%m-%d"), "smoke": smoke}
    result.update({"machine": machine_info(dev), "sizes": sizes, "weights": {}})
    result.update({k: [] for k in RESULT_KEYS})
    spacing = SMOKE_SPACING if smoke else None
    use_sample = "sample" in volumes and DEFAULT_SAMPLE.is_file() and not smoke
    return Context(dev, out, work, data, sizes, smoke, spacing, use_sample, tuple(volumes), result=result, **settings)


def _bundle(ctx: Context, name: str, ckpt: str | None, overrides: dict, parts) -> Bundle:
    """The bundle with the weights its figures use: ``ckpt``, else its demo checkpoint when it fits the bundle's
    network, else random. Where the demo was trained, the ``agreement`` part runs the paths on it first."""
    demo = REPO / "bundles" / name / "demo" / "models" / "model.pt"
    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    b = Bundle(name, None, ctx.dev, overrides)
    if ckpt is None and not ctx.smoke and demo.is_file():
        trained, configuration = None, None
        if fits(b, str(demo)):
            ckpt = str(demo)  # the demo trained the bundle's own network
            trained, configuration = Bundle(name, ckpt, ctx.dev, b.overrides), "the bundle's network"
        elif demo_cfg.is_file():
            # the demo trained a reduced network: switches' agreement measured on it, in its configuration
            trained = Bundle(name, str(demo), ctx.dev, b.overrides, configs=[demo_cfg])
            configuration = f"{demo_cfg.relative_to(REPO)} (the demo's reduced network)"
        if "agreement" in parts and trained is not None:
            inference.measure_agreement(ctx, trained, f"{configuration}, weights {demo.relative_to(REPO)}")
    b.ckpt = ckpt
    ctx.result["weights"][name] = ckpt or "random initialisation (timings do not depend on the weights; agreement does)"
    print(f"{name} ({b.kind}), weights: {ctx.result['weights'][name]}", flush=True)
    return b


def suite(
    bundles: list[str],
    out_dir: str = "bench",
    ckpts: dict | None = None,
    parts: tuple[str, ...] = DEFAULT_PARTS,
    sizes: dict | None = None,
    train_iters: int = 3,
    train_warmup: int = 1,
    device: str | None = None,
    overrides: dict | None = None,
    smoke: bool = False,
    volumes: tuple[str, ...] = ("sample", "btcv"),
    paths: tuple[int, ...] | None = None,
    fit_epochs: int = FIT_EPOCHS,
    doc: str | os.PathLike | None = None,
    command: str = "",
    compile: bool = True,
    learn_iters: int = learn.ITERATIONS,
) -> dict:
    """Run the benchmark suite (see the package docstring) and write ``<out_dir>/suite.md`` and ``suite.json``;
    with ``doc``, the report also becomes that document (``docs/benchmarks.md``, the collection's speed tables)."""
    if doc and smoke:
        raise ValueError("a smoke run's figures mean nothing: it does not write the benchmark document")
    ctx = _context(out_dir, device, sizes, smoke, volumes, command, compile=compile, paths=paths,
                   fit_epochs=fit_epochs, train_iters=train_iters, train_warmup=train_warmup,
                   learn_iters=learn_iters)  # fmt: skip
    for name in bundles:
        b = _bundle(ctx, name, (ckpts or {}).get(name), (overrides or {}).get(name, {}), parts)
        ctx.bundles[name] = b
        for part in PER_BUNDLE:
            if part.NAME in parts:
                part.measure(ctx, b)
        ctx.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ctx.out / "suite.partial.json", json.dumps(ctx.result, indent=2, default=str) + "\n")
    for part in ONCE:
        if part.NAME in parts:
            part.measure_once(ctx, bundles)
    ctx.result["targets"] = check_targets(ctx.result)
    shutil.rmtree(ctx.work, ignore_errors=True)
    markdown = render(ctx.result)
    _write(ctx.result, ctx.out / ("suite_smoke" if smoke else "suite"), markdown)
    if doc:
        old = Path(doc).read_text(encoding="utf-8") if Path(doc).is_file() else ""
        atomic_write_text(doc, merge_doc(old, markdown))
        print(f"written: {doc} (the sections of this run; the others as they were)")
    return ctx.result


def check_targets(res: dict) -> list[dict]:
    """Per bundle: the best end-to-end speed-up over its baseline (BTCV-size volume) and the training pipeline's
    over the plain one, each against :data:`TARGETS`."""
    rows = []
    for name in dict.fromkeys(r["bundle"] for r in res.get("inference", [])):
        inf = [r for r in res["inference"] if r["bundle"] == name]
        kind = "2d" if any("slice_resize" in r["switches"] for r in inf) else "3d"
        best = max(inf, key=lambda r: r["speedup_vs_baseline"])
        what = f"inference ({best['variant']})"
        rows.append({"bundle": name, "what": what, "speedup": best["speedup_vs_baseline"], "target": TARGETS[kind]})
        train = [r for r in res.get("training", []) if r["bundle"] == name and r["pipeline"] == "bundle pipeline"]
        if train:
            speedup = train[0]["speedup_vs_baseline"]
            rows.append({"bundle": name, "what": "training", "speedup": speedup, "target": TARGETS["training"]})
    for r in rows:
        r["met"] = r["speedup"] >= r["target"]
    return rows


def _targets_section(res: dict) -> list[str] | None:
    if not res.get("targets"):
        return None
    dev = res["machine"]["device"]
    return table(
        f"Targets (set for a GPU; this run: {dev})",
        ["bundle", "what", ">speed-up", ">target", "met"],
        [
            [r["bundle"], r["what"], f"{fmt(r['speedup'])}x", f"{fmt(r['target'], 1)}x", "yes" if r["met"] else "no"]
            for r in res.get("targets", [])
        ],
    )


# each section of the report, by part, in the document's order
SECTIONS = {
    "targets": _targets_section,
    "efficiency": efficiency.section,
    "inference": inference.section,
    "agreement": inference.agreement_section,
    "dataset": dataset.section,
    "fitted": fitted.section,
    "levers": levers.section,
    "training": training.section,
    "learn": learn.section,
    "ddp": ddp.section,
    "accelerators": accelerators.section,
    "scaling": scaling.section,
    "mtm": mtm.section,
}
PARTS_ORDER = tuple(SECTIONS)
_PART_RX = re.compile(r"<!-- part: (\w+) -->\n(.*?)<!-- end part -->\n?", re.S)
NOTES = (
    "Inference: one run per path after a warm-up forward (where the + compile paths compile: 'warm-up s'); "
    "stages are the bundle's own transforms split at the loader (load), the rest of `preprocessing` (preprocess), the inferer (network), `postprocessing` without "
    "the writer (postprocess) and `SaveImaged` (write). Agreement: share of voxels whose label equals the "
    "baseline's. Peak RAM / GPU: the process's largest resident size / CUDA allocation during the path. "
    "Outside forward (2D): share of the total not spent in the network's forward passes (loading and "
    "preprocessing included); of which machinery: the resizing, argmax and stacking around the forwards, the "
    "inversion and the writing. Training: mean over the timed "
    "iterations after the warm-up ones; 'setup' is the cache build (bundle pipeline) or the slice-file export "
    "(2D baseline)."
)


def render(res: dict) -> str:
    """The report of a run (``suite.json``): the heading, each part's section under the line naming its run, the notes."""
    lines = [
        "# Benchmarks" + (" (smoke mode: tiny inputs, figures meaningless)" if res["smoke"] else ""),
        "",
        "Written by the benchmark (`python -m common.tools.benchmark`; what each part measures is the docstring of "
        "its module in `common/tools/benchmark/`), each "
        "section by the run named under its title. Timings on shared machines vary by 15 % or more between runs: "
        "compare the paths of one run, as ratios.",
    ]
    run = _run_line(res)
    for part, section in SECTIONS.items():
        rows = section(res)
        if rows is not None:
            rows[2:2] = ["", run]  # under the section's title: the run it comes from
            lines += ["", f"<!-- part: {part} -->", *rows, "<!-- end part -->"]
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def _run_line(res: dict) -> str:
    m = res["machine"]
    return (
        f"Run of {res.get('date', '?')}"
        + (f", `{res['command']}`" if res.get("command") else "")
        + f". Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']}"
        + (f", {m['cpu_capability']}, {'with' if m.get('cpu_bf16') else 'no'} bf16" if "cpu_capability" in m else "")
        + f"), device {m['device']}"
        + (f", GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "")
        + f"; torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}."
        + (f" Left out: {m['left_out']}." if m.get("left_out") else "")
        + " Weights: "
        + ("; ".join(f"{k}: {v}" for k, v in res["weights"].items()) or "-")
        + "."
    )


def merge_doc(old: str, new: str) -> str:
    """``new`` (a report of :func:`render`) with the sections of ``old`` that ``new`` does not have: the
    benchmark document keeps every part's latest run, each section naming its own run."""
    parts = {name: body for name, body in _PART_RX.findall(old or "")}
    parts.update({name: body for name, body in _PART_RX.findall(new)})
    first = _PART_RX.search(new)
    head = new[: first.start()] if first else new
    tail = new[max((m.end() for m in _PART_RX.finditer(new)), default=len(new)) :] if first else ""
    body = "".join(f"<!-- part: {p} -->\n{parts[p]}<!-- end part -->\n" for p in PARTS_ORDER if p in parts)
    return head + body + tail


def _write(result: dict, stem: Path, markdown: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"written: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
