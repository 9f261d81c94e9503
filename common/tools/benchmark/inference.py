"""The ``inference`` and ``agreement`` parts: each inference path of a bundle (:func:`.core.variants`) end to end on
the real CT sample and the BTCV-size phantom, file to written label file, split into load / preprocess / network /
postprocess / write, with peak memory, speed-up over the path's baseline and agreement with its labels. ``agreement``
times the same paths on the demo's trained network, for each switch's agreement on trained weights."""

from __future__ import annotations

from pathlib import Path

from .core import STAGES, Bundle, Context, agreement, fmt, label_geometry, share, table, variants

__all__ = ["NAME", "measure", "measure_agreement", "paths", "section", "agreement_section"]

NAME = "inference"


def measure(ctx: Context, b: Bundle) -> None:
    ctx.result["inference"] += paths(b, ctx.volumes, ctx.work, ctx.paths, ctx.compile)


def measure_agreement(ctx: Context, trained: Bundle, configuration: str) -> None:
    """The paths on the demo's trained network (``trained``), described by ``configuration``."""
    for r in paths(trained, ctx.volumes, ctx.work / "agreement", compile=ctx.compile):
        r["configuration"] = configuration
        ctx.result["agreement"].append(r)


def paths(
    b: Bundle, volumes: list[str], work: Path, only: tuple[int, ...] | None = None, compile: bool = True
) -> list[dict]:
    rows = []
    for v, volume in enumerate(volumes):
        mine = []
        for i, (name, switches) in enumerate(variants(b.kind, b.dev, compile)):
            if only is not None and i != 0 and i not in only:
                continue
            switches = b.applicable(switches)
            r = b.infer(volume, switches, work / b.name / f"volume{v}_variant{i}")
            r.update({"bundle": b.name, "volume": Path(volume).name, "variant": name, "switches": switches})
            mine.append(r)
            print(f"  {b.name} | {r['volume']} | {name}: {r['seconds']:.1f} s", flush=True)
        base = mine[0]
        for r in mine:
            r["speedup_vs_baseline"] = base["seconds"] / r["seconds"]
            r["agreement_vs_baseline"] = agreement(base["label_file"], r["label_file"])
        # how fragmented the baseline's prediction is: the agreement of the paths depends on it
        base["prediction_geometry"] = label_geometry(base["label_file"], b.num_classes)
        rows += mine
    return rows


def section(res: dict) -> list[str] | None:
    if not res["inference"]:
        return None
    shape = "x".join(map(str, res["sizes"]["btcv"]))
    return table(
        f"Inference end to end (file to written label file): the real CT sample and a {shape} phantom at 0.8 x 0.8 x 2.5 mm",
        [
            "bundle",
            "volume",
            "path",
            ">load s",
            ">preprocess s",
            ">network s",
            ">postprocess s",
            ">write s",
            ">total s",
            ">warm-up s",
            ">speed-up",
            ">outside forward",
            ">of which machinery",
            ">agreement with baseline",
            ">peak RAM MB",
            ">peak GPU MB",
        ],
        [
            [
                r["bundle"],
                r["volume"],
                r["variant"],
                *(fmt(r["stages_s"][k]) for k in STAGES),
                fmt(r["seconds"]),
                fmt(r.get("warm_up_s")),
                f"{fmt(r['speedup_vs_baseline'])}x",
                share(r.get("outside_forward_share")),
                share(r.get("machinery_share")),
                f"{fmt(100 * r['agreement_vs_baseline'], 2)}%",
                fmt(r["peak_rss_mb"], 0),
                fmt(r["peak_cuda_mb"], 0),
            ]
            for r in res["inference"]
        ],
    )


def agreement_section(res: dict) -> list[str] | None:
    if not res.get("agreement"):
        return None
    return table(
        "Agreement of the switches on a trained model (the demo's network, in the configuration named)",
        [
            "bundle",
            "volume",
            "path",
            ">total s",
            ">warm-up s",
            ">speed-up",
            ">agreement with baseline",
            "configuration",
        ],
        [
            [
                r["bundle"],
                r["volume"],
                r["variant"],
                fmt(r["seconds"]),
                fmt(r.get("warm_up_s")),
                f"{fmt(r['speedup_vs_baseline'])}x",
                f"{fmt(100 * r['agreement_vs_baseline'], 2)}%",
                r["configuration"],
            ]
            for r in res["agreement"]
        ],
    )
