"""``python -m common.tools.benchmark``: the command line of the suite (:mod:`.runner`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ...io import atomic_write_text
from . import learn
from .core import FIT_EPOCHS, REPO
from .runner import GPU_CHECK_PARTS, merge_doc, render, suite

DOC = "docs/benchmarks.md"

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    ap = argparse.ArgumentParser(prog="python -m common.tools.benchmark", description=doc.split("\n\n")[0])
    _what_arguments(ap.add_argument_group("what to measure"))
    _run_arguments(ap.add_argument_group("weights, device and settings"))
    _output_arguments(ap.add_argument_group("where the results go"))
    return ap


def _what_arguments(group) -> None:
    """The bundles, parts, volumes and paths measured."""
    group.add_argument(
        "--bundle", action="append", default=None, help="bundle(s) to measure (default: all in bundles/)"
    )
    group.add_argument(
        "--parts",
        default="efficiency,inference,agreement,dataset,training,scaling,mtm",
        help="comma-separated: efficiency (each network's forward FLOP/s against the machine's peak), inference, agreement (switches on a demo-trained reduced network), dataset (the bundle's "
        "evaluator on a folder of 3 volumes), fitted (the demo's network "
        "trained on the real CT sample, then the paths on it; trains, so not in the default), levers (TTA, cleanup "
        "and ensembles on demo and fitted weights: Dice, HD95, time; trains when weights are missing, not in the "
        "default), training, scaling (memory and time against the number of slices of a thin-slice CT), "
        "mtm (MT-UNet's module stages); the GPU check's: learn (does each recipe learn in --learn-iters "
        "iterations), ddp (one epoch over every visible GPU), accelerators (TensorRT, --compile)",
    )
    group.add_argument(
        "--gpu-check",
        action="store_true",
        help=f"the GPU acceptance run: parts {','.join(GPU_CHECK_PARTS)} on the BTCV-size phantom, every bundle "
        "at full size, with the targets (3D 2x the model-zoo recipe, 2D 5x the per-slice loop); writes --doc "
        f"({DOC} unless given; not with --smoke)",
    )
    group.add_argument("--smoke", action="store_true", help="tiny inputs: checks the suite runs, figures mean nothing")
    group.add_argument(
        "--volumes",
        default="sample,btcv",
        help="inference volumes: sample (the real CT of ../shared, when present), btcv (the BTCV-size phantom)",
    )
    group.add_argument(
        "--paths",
        default=None,
        help="comma-separated indices of the inference paths beside the baseline (0), in the order of the "
        "inference table (default: all)",
    )
    group.add_argument(
        "--no-compile",
        action="store_true",
        help="leave out the torch.compile paths and forwards (their compiling takes minutes; the GPU check leaves "
        "them out of its inference part and times compiling in its accelerators part)",
    )


def _run_arguments(group) -> None:
    """The weights, the device and the settings of the measuring."""
    group.add_argument(
        "--ckpt",
        action="append",
        default=[],
        help="bundle=path of trained weights (default: bundles/<b>/demo/models/model.pt if present)",
    )
    group.add_argument("--device", default=None, help="torch device (default: cuda:0 where there is one, else cpu)")
    group.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    group.add_argument(
        "--override",
        action="append",
        default=[],
        help="bundle:key=json config override, e.g. transunet_btcv:slice_batch=32",
    )
    group.add_argument(
        "--fit-epochs",
        type=int,
        default=FIT_EPOCHS,
        help=f"epochs of the fitted part's training (default {FIT_EPOCHS}); weights fitted with other settings are fitted again",
    )
    group.add_argument("--train-iters", type=int, default=3, help="timed iterations per training pipeline")
    group.add_argument("--train-warmup", type=int, default=1, help="untimed warm-up iterations before them")
    group.add_argument(
        "--learn-iters",
        type=int,
        default=learn.ITERATIONS,
        help=f"training iterations of the learn part (default {learn.ITERATIONS})",
    )


def _output_arguments(group) -> None:
    """Where the results are written, or a saved run rendered."""
    group.add_argument("--out", default="bench", help="folder of suite.json, suite.md and the generated volumes")
    group.add_argument(
        "--doc",
        default=None,
        help="also write the report to this document (the collection's speed tables: docs/benchmarks.md)",
    )
    group.add_argument(
        "--render",
        default=None,
        metavar="SUITE_JSON",
        help="measure nothing: write --doc from the suite.json a run saved (on this or another machine)",
    )


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.render:
        if not args.doc:
            ap.error("--render needs --doc")
        res = json.loads(Path(args.render).read_text(encoding="utf-8"))
        if res.get("smoke"):
            ap.error(f"{args.render} is a smoke run: its figures mean nothing")
        old = Path(args.doc).read_text(encoding="utf-8") if Path(args.doc).is_file() else ""
        atomic_write_text(args.doc, merge_doc(old, render(res)))
        print(f"written: {args.doc}")
        return 0
    if args.gpu_check:
        args.parts, args.volumes, args.no_compile = ",".join(GPU_CHECK_PARTS), "btcv", True
        args.doc = args.doc or (None if args.smoke else str(REPO / DOC))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundles = args.bundle or sorted(
        p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()
    )
    overrides: dict[str, dict] = {}
    for o in args.override:
        name, kv = o.split(":", 1)
        k, v = kv.split("=", 1)
        overrides.setdefault(name, {})[k] = json.loads(v)
    ckpts = dict(c.split("=", 1) for c in args.ckpt)
    suite(
        bundles,
        args.out,
        ckpts,
        tuple(p.strip() for p in args.parts.split(",")),
        None,
        args.train_iters,
        args.train_warmup,
        args.device,
        overrides,
        args.smoke,
        tuple(v.strip() for v in args.volumes.split(",")),
        tuple(int(i) for i in args.paths.split(",")) if args.paths else None,
        args.fit_epochs,
        args.doc,
        "python -m common.tools.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
        compile=not args.no_compile,
        learn_iters=args.learn_iters,
    )
    return 0
