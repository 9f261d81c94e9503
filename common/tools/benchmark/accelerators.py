"""The ``accelerators`` part (in the GPU check): whether TensorRT (``configs/inference_trt.json``, the 3D bundles) and
``--compile true`` pay off, for a 3D and a 2D bundle on the BTCV-size phantom: the bundle's default path, then each
accelerator, with its build or compile time (the warm-up) apart from the timed run, its speed-up and the share of
voxels whose label equals the default's. Where TensorRT or CUDA is missing the row says so; a smoke run leaves the
compiled path out (compiling takes minutes on a CPU; the tests compile a tiny network on their own)."""

from __future__ import annotations

import importlib.util

import torch

from .core import REPO, Bundle, Context, agreement, chosen_bundles, fmt, share, table

__all__ = ["NAME", "measure_once", "section"]

NAME = "accelerators"


def _tensorrt_missing(dev: torch.device) -> str:
    if dev.type != "cuda":
        return "needs CUDA"
    missing = [m for m in ("tensorrt", "polygraphy", "onnx") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else ""


def measure_once(ctx: Context, bundles: list[str]) -> None:
    for name in chosen_bundles(ctx, bundles):
        b = ctx.bundles[name]
        folder = ctx.work / "accelerators" / name
        ckpt = b.ckpt
        if ckpt is None:  # TensorRT keeps its engine beside a checkpoint: the random weights get a file of their own
            folder.mkdir(parents=True, exist_ok=True)
            ckpt = str(folder / "random.pt")
            torch.save(b.network(b.parser()).state_dict(), ckpt)
        base = Bundle(name, ckpt, ctx.dev, {**b.overrides, "ckpt_path": ckpt})
        default = base.infer(ctx.btcv, {}, folder / "default")
        rows = [_row(name, "none (bundle default)", default, default)]
        trt_cfg = REPO / "bundles" / name / "configs" / "inference_trt.json"
        if trt_cfg.is_file():
            missing = _tensorrt_missing(ctx.dev)
            if missing:
                rows.append({"bundle": name, "accelerator": "TensorRT", "note": missing})
            else:
                trt = Bundle(name, ckpt, ctx.dev, base.overrides, configs=[trt_cfg])
                rows.append(_row(name, "TensorRT (fp16 engine)", trt.infer(ctx.btcv, {}, folder / "trt"), default))
        if ctx.smoke:
            rows.append({"bundle": name, "accelerator": "--compile true", "note": "left out in a smoke run"})
        else:
            compiled = base.infer(ctx.btcv, base.applicable({"compile": True}), folder / "compile")
            rows.append(_row(name, "--compile true", compiled, default))
        ctx.result["accelerators"] += rows


def _row(name: str, what: str, r: dict, default: dict) -> dict:
    row = {"bundle": name, "accelerator": what, "note": "", "warm_up_s": r["warm_up_s"], "seconds": r["seconds"]}
    row["speedup"] = default["seconds"] / r["seconds"]
    row["agreement"] = agreement(default["label_file"], r["label_file"])
    row["peak_cuda_mb"] = r["peak_cuda_mb"]
    print(
        f"  {name} | {what}: {r['seconds']:.1f} s (warm-up {r['warm_up_s']:.1f} s), {row['speedup']:.2f}x", flush=True
    )
    return row


def section(res: dict) -> list[str] | None:
    rows = res.get("accelerators")
    if not rows:
        return None
    return table(
        "Accelerators on the BTCV-size phantom: TensorRT and torch.compile against the bundle's default path",
        ["bundle", "accelerator", ">build / compile s", ">total s", ">speed-up", ">agreement", ">peak GPU MB", "note"],
        [
            [
                r["bundle"],
                r["accelerator"],
                fmt(r.get("warm_up_s"), 1),
                fmt(r.get("seconds")),
                f"{fmt(r['speedup'])}x" if "speedup" in r else "-",
                share(r.get("agreement")),
                fmt(r.get("peak_cuda_mb"), 0),
                r.get("note", ""),
            ]
            for r in rows
        ],
    )
