"""The ``scaling`` part: the fastest path of each bundle at three volume sizes (256 x 256 x 80, 512 x 512 x 150,
512 x 512 x 300 at the BTCV spacing, so the field of view grows): seconds, peak memory, and where sliding-window
outputs were stitched (``stitch="auto"`` moves it to the CPU when the GPU would run out)."""

from __future__ import annotations

from .core import Bundle, Context, fmt, phantom_file, table, variants

__all__ = ["NAME", "measure", "section"]

NAME = "scaling"


def measure(ctx: Context, b: Bundle) -> None:
    fast_name, fast = variants(b.kind, ctx.dev, compile=False)[-1]
    for size_name, shape in ctx.sizes.items():
        vol = phantom_file(ctx.data, shape, seed=2024, spacing=ctx.spacing)["image"]
        r = b.infer(vol, fast, ctx.work / b.name / f"scaling_{size_name}")
        r.update({"bundle": b.name, "size": size_name, "input_shape": list(shape), "variant": fast_name})
        ctx.result["scaling"].append(r)
        print(
            f"  {b.name} | scaling {size_name}: {r['seconds']:.1f} s, peak RAM {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )


def section(res: dict) -> list[str] | None:
    if not res["scaling"]:
        return None
    return table(
        "Scaling (fastest path of each bundle; input at 0.8 x 0.8 x 2.5 mm)",
        [
            "bundle",
            "path",
            "input",
            "network grid",
            ">total s",
            ">network s",
            ">peak RAM MB",
            ">peak GPU MB",
            "stitching",
        ],
        [
            [
                r["bundle"],
                r["variant"],
                "x".join(map(str, r["input_shape"])),
                "x".join(map(str, r["shape"])),
                fmt(r["seconds"]),
                fmt(r["stages_s"]["network"]),
                fmt(r["peak_rss_mb"], 0),
                fmt(r["peak_cuda_mb"], 0),
                r["stitching"] or "-",
            ]
            for r in res["scaling"]
        ],
    )
