"""The ``scaling`` part: peak memory and time of a bundle's inference against the number of slices of a thin-slice CT
(512 x 512 x 150, 300 and 600 voxels at 0.78 x 0.78 x 1 mm): the 3D bundles' default path and ``--invert labels``,
the 2D bundles' default path. The network is the demo's reduced one (the ``network_def`` keys of
``configs/demo.json``) with random weights, at the bundle's own spacing and patch size: the memory is the volume's
(its loading, resampling, stitching, inversion and writing), not the network's, and the time mostly the pipeline's.
Peak RAM is the process's largest resident size with every stage in one process (the bundle's DataLoader workers
split the loading off into other processes); on CUDA the peak GPU memory, and where the windows were stitched."""

from __future__ import annotations

import json

from .core import REPO, Bundle, Context, fmt, phantom_file, table

__all__ = ["NAME", "SLICES", "SPACING", "measure", "narrow_network", "section"]

NAME = "scaling"
SLICES = (150, 300, 600)
SPACING = (0.78, 0.78, 1.0)  # thin-slice abdominal CT
SMOKE_SLICES = (8, 16, 24)
SMOKE_SHAPE = (48, 48)
PATHS = {"3d": [("default", {}), ("invert labels", {"invert": "labels"})], "2d": [("default", {})]}


def narrow_network(bundle: str) -> dict:
    """The ``network_def`` overrides of the bundle's ``configs/demo.json`` (its reduced network); none without one."""
    demo = REPO / "bundles" / bundle / "configs" / "demo.json"
    if not demo.is_file():
        return {}
    return {k: v for k, v in json.loads(demo.read_text(encoding="utf-8")).items() if k.startswith("network_def#")}


def measure(ctx: Context, b: Bundle) -> None:
    nb = Bundle(b.name, None, ctx.dev, {**narrow_network(b.name), **b.overrides})  # random weights
    slices, plane, spacing = (SMOKE_SLICES, SMOKE_SHAPE, ctx.spacing) if ctx.smoke else (SLICES, (512, 512), SPACING)
    for path, switches in PATHS[nb.kind]:
        for n in slices:
            shape = (*plane, n)
            vol = phantom_file(ctx.data, shape, seed=2024, spacing=spacing)["image"]
            r = nb.infer(vol, nb.applicable(switches), ctx.work / b.name / f"scaling_{n}_{path.replace(' ', '_')}")
            r.update({"bundle": b.name, "variant": path, "slices": n, "input_shape": list(shape)})
            r["spacing"] = list(spacing)
            ctx.result["scaling"].append(r)
            print(
                f"  {b.name} | scaling {path}, {n} slices: {r['seconds']:.1f} s, peak RAM {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )


def section(res: dict) -> list[str] | None:
    rows = res.get("scaling")
    if not rows:
        return None
    spacing = rows[0].get("spacing")
    at = f" at {' x '.join(f'{s:g}' for s in spacing)} mm" if spacing else ""
    return table(
        f"Scaling with the number of slices ({rows[0]['input_shape'][0]} x {rows[0]['input_shape'][1]} x N{at}; "
        "the demo's reduced network, random weights: the memory is the volume's)",
        [
            "bundle",
            "path",
            ">slices",
            "network grid",
            ">total s",
            ">network s",
            ">postprocess s",
            ">peak RAM MB",
            ">peak GPU MB",
            "stitching",
        ],
        [
            [
                r["bundle"],
                r["variant"],
                r.get("slices", r["input_shape"][-1]),
                "x".join(map(str, r["shape"])),
                fmt(r["seconds"]),
                fmt(r["stages_s"]["network"]),
                fmt(r["stages_s"]["postprocess"]),
                fmt(r["peak_rss_mb"], 0),
                fmt(r["peak_cuda_mb"], 0),
                r["stitching"] or "-",
            ]
            for r in rows
        ],
    )
