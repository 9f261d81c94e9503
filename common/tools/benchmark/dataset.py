"""The ``dataset`` part: the bundle's own inference (``evaluator.run()``, its DataLoader with worker processes, which
load and preprocess the next volumes while the network runs) on a folder of three BTCV-size phantoms, default path
and reduced precision: seconds per volume and the share of the wall time outside the forward passes."""

from __future__ import annotations

import time
from pathlib import Path

from .core import Bundle, Context, PeakMemory, fmt, share, sync, table, variants

__all__ = ["NAME", "measure", "section"]

NAME = "dataset"


def measure(ctx: Context, b: Bundle) -> None:
    files = [ctx.btcv] + [it["image"] for it in ctx.train_items]
    ctx.result["dataset"] += run(b, files, ctx.work, ctx.compile)


def run(b: Bundle, files: list[str], work: Path, compile: bool = True) -> list[dict]:
    """The bundle's own inference (``evaluator.run()``: its DataLoader with worker processes, which load and
    preprocess the next volumes while the network runs) on a folder of ``files``, for its default path and
    with reduced precision: seconds per volume and the share of the wall time outside the forward passes."""
    folder = work / b.name / "dataset_in"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        link = folder / f"case{i:02d}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(f).resolve())
    rows = []
    for i, (name, switches) in enumerate(variants(b.kind, b.dev, compile)):
        if i == 0 or switches.get("slice_resize") == "labels":
            continue  # the bundle's resizing order, in full and in reduced precision
        out_dir = work / b.name / f"dataset_out{i}"
        parser = b.parser({**b.applicable(switches), "dataset_dir": str(folder), "load_pretrain": False}, str(out_dir))
        net = b.network(parser)  # the network of the evaluator (parsed once), with the benchmark's weights
        evaluator = parser.get_parsed_content("evaluator")
        forwards: list[float] = []
        if hasattr(net, "forward_seconds"):
            from ignite.engine import Events

            evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: forwards.append(net.forward_seconds))
        b.warm_up(parser, net, parser.get_parsed_content("inferer"))
        with PeakMemory(b.dev) as mem:
            t = time.perf_counter()
            evaluator.run()
            sync(b.dev)
            total = time.perf_counter() - t
        written = sorted(out_dir.glob("*.nii.gz"))
        if len(written) != len(files):
            raise RuntimeError(f"{b.name}: the bundle's inference wrote {len(written)} of {len(files)} label files")
        r = {
            "bundle": b.name,
            "variant": name,
            "switches": switches,
            "volumes": len(files),
            "num_workers": parser["num_workers"],
            "seconds": total,
            "seconds_per_volume": total / len(files),
            "forward_s": sum(forwards) if forwards else None,
            "outside_forward_share": 1.0 - sum(forwards) / total if forwards else None,
            "peak_rss_mb": mem.peak_rss_mb,
            "peak_cuda_mb": mem.peak_cuda_mb,
        }
        rows.append(r)
        print(f"  {b.name} | dataset of {len(files)} | {name}: {r['seconds_per_volume']:.1f} s per volume", flush=True)
    return rows


def section(res: dict) -> list[str] | None:
    if not res.get("dataset"):
        return None
    return table(
        "The bundle's own inference on a folder of BTCV-size volumes (its evaluator and DataLoader workers)",
        [
            "bundle",
            "path",
            ">volumes",
            ">workers",
            ">total s",
            ">s per volume",
            ">outside forward",
            ">peak RAM MB",
            ">peak GPU MB",
        ],
        [
            [
                r["bundle"],
                r["variant"],
                r["volumes"],
                r["num_workers"],
                fmt(r["seconds"]),
                fmt(r["seconds_per_volume"]),
                share(r["outside_forward_share"]),
                fmt(r["peak_rss_mb"], 0),
                fmt(r["peak_cuda_mb"], 0),
            ]
            for r in res["dataset"]
        ],
    )
