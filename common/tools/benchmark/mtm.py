"""The ``mtm`` part: MT-UNet's mixed transformer module stages at the official sizes, the vectorised form of the
network against the loop reference kept for the tests (``common.tools.mt_unet_reference``), forward only."""

from __future__ import annotations

import time

import torch

from .core import Context, fmt, table

__all__ = ["NAME", "measure_once", "section"]

NAME = "mtm"


def measure_once(ctx: Context, bundles: list[str]) -> None:
    if "mt_unet_btcv" in bundles:
        ctx.result["mtm"] = run(smoke=ctx.smoke)


def run(repeats: int = 5, smoke: bool = False) -> list[dict]:
    """MT-UNet's mixed transformer module stages at the official sizes: vectorised (the bundle's network)
    against the plain loop reference (``common.tools.mt_unet_reference``), forward only."""
    from ...networks.mt_unet import OFFICIAL_MTM_STAGES, build_mtm_stage
    from .. import mt_unet_reference as ref

    rows = []
    stages = {"encoder1 (smoke)": (32, 8)} if smoke else OFFICIAL_MTM_STAGES
    for name, (dim, grid) in stages.items():
        torch.manual_seed(0)
        kw = {"num_heads": 2, "ea_heads": 4, "ea_memory": 8} if smoke else {}
        fast = build_mtm_stage(dim, depth=2, **kw).eval()
        loop = ref.to_loop_reference(fast).eval()
        x = torch.randn(1, grid, grid, dim)
        times = {}
        with torch.no_grad():
            for label, m in (("vectorised", fast), ("loop", loop)):
                m(x)  # warm-up
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    y = m(x)
                    ts.append(time.perf_counter() - t0)
                times[label] = (min(ts), y)
        diff = float((times["vectorised"][1] - times["loop"][1]).abs().max())
        row = {
            "stage": name,
            "channels": dim,
            "grid": grid,
            "vectorised_ms": 1000 * times["vectorised"][0],
            "loop_ms": 1000 * times["loop"][0],
            "speedup": times["loop"][0] / times["vectorised"][0],
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"  mt_unet mtm {name}: {row['vectorised_ms']:.1f} ms vs loop {row['loop_ms']:.1f} ms ({row['speedup']:.2f}x)",
            flush=True,
        )
    return rows


def section(res: dict) -> list[str] | None:
    if not res.get("mtm"):
        return None
    return table(
        "MT-UNet mixed transformer module stages (2 MTMs each, batch 1, forward, minimum of 5 runs)",
        ["stage", "channels @ grid", ">vectorised ms", ">loop reference ms", ">speed-up", ">max abs difference"],
        [
            [
                r["stage"],
                f"{r['channels']} @ {r['grid']}",
                fmt(r["vectorised_ms"], 1),
                fmt(r["loop_ms"], 1),
                f"{fmt(r['speedup'])}x",
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in res["mtm"]
        ],
    )
