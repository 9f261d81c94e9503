"""The leaderboard's charts, drawn with matplotlib (the optional extra ``figures``: ``pip install -e '.[figures]'``).

* ``per_organ_dice.png``: per organ (and the case mean), each entry's mean Dice over cases as a bar with its 95 %
  bootstrap confidence interval as an error bar, the interval the leaderboard's tables report;
* ``per_case_dice.png``: per organ, the distribution of the per-case Dice of each entry as a box plot (median,
  quartiles, whiskers at 1.5 IQR) with every case drawn over it as a point.

Both are drawn on matplotlib's object API with the Agg canvas (no pyplot state, no display needed), and carry the
entries and organs they show in the PNG's ``Description`` text so that a reader (or a test) can check a file without
looking at it. Without matplotlib :func:`draw_charts` prints one line saying how to install it and returns no files:
the leaderboard's tables do not depend on the charts.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..protocols import protocol_organs

__all__ = ["CHARTS", "MISSING", "draw_charts", "per_organ_figure", "per_case_figure"]

CHARTS = {"per_organ": "per_organ_dice.png", "per_case": "per_case_dice.png"}
MISSING = (
    "charts not drawn: matplotlib is not installed (pip install -e '.[figures]' or pip install matplotlib); "
    "the tables and overlays are written as usual"
)
DPI = 120
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def per_organ_figure(table: dict[str, dict], protocol: str, title: str):
    """Grouped bars: per organ and for the case mean, each entry's mean Dice with its 95 % CI as an error bar.
    ``table`` is the leaderboard's (``describe`` per organ: ``mean``, ``ci_low``, ``ci_high``)."""
    from matplotlib.figure import Figure

    names = list(table)
    groups = [(n, [table[e]["organs"][k]["dice"] for e in names]) for k, n, _ in protocol_organs(protocol)]
    groups.append(("case mean", [table[e]["mean"] for e in names]))
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(8.0, 0.28 * len(groups) * max(2, len(names)) + 2), 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        stats = [g[1][i] for g in groups]
        mean = np.array([_nan(s["mean"]) for s in stats])
        low = np.array([_nan(s["ci_low"]) for s in stats])
        high = np.array([_nan(s["ci_high"]) for s in stats])
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            np.nan_to_num(mean),
            width,
            yerr=np.nan_to_num(np.vstack([mean - low, high - mean])),
            capsize=2,
            color=_colour(i),
            label=name,
            error_kw={"elinewidth": 0.8, "ecolor": "0.2"},
        )
    ax.set_xticks(x, [g[0] for g in groups], rotation=40, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice (mean over cases, 95 % CI)")
    ax.set_title(title)
    ax.grid(axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", title="entry")
    return fig


def per_case_figure(per_case: dict[str, dict[str, list[float]]], protocol: str, title: str):
    """One panel per organ: a box per entry over the per-case Dice, each case a point over it (a small horizontal
    offset per case keeps equal values apart). ``per_case[entry][organ]`` lists the scored cases' Dice (cases where
    the organ is not scored are left out, as in the means)."""
    from matplotlib.figure import Figure

    names, organs = list(per_case), protocol_organs(protocol)
    cols = 5 if len(organs) > 8 else 4
    rows = math.ceil(len(organs) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.3 * rows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax, (key, organ_name, _) in zip(axes, organs):
        values = [[v for v in per_case[n][key] if not math.isnan(v)] for n in names]
        pos = np.arange(1, len(names) + 1)
        filled = [i for i, v in enumerate(values) if v]
        if filled:
            boxes = ax.boxplot(
                [values[i] for i in filled],
                positions=pos[filled],
                widths=0.6,
                showfliers=False,
                patch_artist=True,
                medianprops={"color": "0.1"},
            )
            for i, patch in zip(filled, boxes["boxes"]):
                patch.set(facecolor=_colour(i), alpha=0.35)
        for i, v in enumerate(values):
            offset = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(len(v))
            ax.plot(pos[i] + offset, v, "o", ms=2.5, color=_colour(i), alpha=0.8)
        ax.set_title(organ_name, fontsize="small")
        ax.set_xticks(pos, names, rotation=40, ha="right", fontsize="x-small")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", color="0.9")
    for ax in axes[len(organs) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("Dice per case")
    fig.suptitle(title)
    return fig


def _save(fig, path: Path, description: dict) -> str:
    """The figure as PNG (written atomically), with what it shows in the PNG's ``Description``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Description": json.dumps(description)})
    return str(path)


def draw_charts(table: dict, per_case: dict, protocol: str, num_cases: int, out_dir: Path) -> dict[str, str]:
    """Both charts into ``out_dir``: ``{"per_organ": path, "per_case": path}``, or ``{}`` with one printed line
    when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        return {}
    shows = {"entries": list(table), "organs": [k for k, _, _ in protocol_organs(protocol)], "protocol": protocol}
    paths = {}
    figure = per_organ_figure(
        table, protocol, f"Per-organ mean Dice and 95 % CI, protocol {protocol}, {num_cases} case(s)"
    )
    paths["per_organ"] = _save(figure, out_dir / CHARTS["per_organ"], {**shows, "chart": "per_organ"})
    figure = per_case_figure(per_case, protocol, f"Per-case Dice, protocol {protocol}, {num_cases} case(s)")
    paths["per_case"] = _save(figure, out_dir / CHARTS["per_case"], {**shows, "chart": "per_case"})
    return paths
