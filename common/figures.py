"""Figures of the reports: the per-case overlay (CT | ground truth | predictions, a row per organ) that the
evaluation writes, and the per-organ Dice bar chart of the leaderboard (Pillow)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .labels import BTCV_ORGANS, organ
from .protocols import protocol_organs

__all__ = ["overlay_png", "bar_chart", "PANEL", "HEADER", "CHART_WIDTH"]

PANEL = 160  # pixels per overlay panel
HEADER = 24  # pixels of the overlay title row
CHART_WIDTH = 1000
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _png_bytes(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.apply_orientation(arr, nib.orientations.io_orientation(affine))


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """An axial RAS slice (x, y) in radiological display: anterior up, patient's right on the left."""
    return np.ascontiguousarray(slice_xy[::-1, ::-1].T)


def _fit(img, size: int):
    from PIL import Image

    w, h = img.size
    s = size / max(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img, ((size - img.size[0]) // 2, (size - img.size[1]) // 2))
    return canvas


def overlay_png(
    ct: np.ndarray,
    gt: np.ndarray,
    preds: dict[str, np.ndarray],
    affine: np.ndarray,
    title: str,
    organs: Sequence[str] | None = None,
) -> tuple[bytes, tuple[int, int]]:
    """Overlay figure of one case: a row per organ present in ``gt`` (BTCV ids), columns CT | ground truth |
    each prediction, on the axial slice where the organ's ground truth is largest. Returns (PNG, size)."""
    from PIL import Image, ImageDraw

    ct, gt = _to_ras(ct, affine), _to_ras(gt, affine)
    preds = {k: _to_ras(v, affine) for k, v in preds.items()}
    keys = [o.key for o in BTCV_ORGANS if (organs is None or o.key in organs) and (gt == o.id).any()]
    cols = 2 + len(preds)
    width, height = cols * PANEL, HEADER + max(1, len(keys)) * PANEL
    fig = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    font = _font(12)
    for c, name in enumerate(["CT", "ground truth", *preds]):
        draw.text((c * PANEL + 4, 5), name[:24], fill=(0, 0, 0), font=font)
    draw.text(
        (width - 8 - draw.textlength(title, font=font), 5), title, fill=(90, 90, 90), font=font
    ) if cols > 2 else None
    window = np.clip((ct.astype(np.float32) + 175.0) / 425.0, 0, 1)
    for r, key in enumerate(keys):
        o = organ(key)
        k = int(np.argmax((gt == o.id).sum(axis=(0, 1))))
        base = (_display(window[:, :, k]) * 255).astype(np.uint8)
        gray = np.stack([base] * 3, -1)
        panels = [gray]
        for lab in [gt, *preds.values()]:
            m = _display(lab[:, :, k] == o.id)
            rgb = gray.copy().astype(np.float32)
            rgb[m] = 0.45 * rgb[m] + 0.55 * np.array(o.colour, np.float32)
            panels.append(rgb.astype(np.uint8))
        for c, p in enumerate(panels):
            fig.paste(_fit(Image.fromarray(p), PANEL), (c * PANEL, HEADER + r * PANEL))
        draw.text((4, HEADER + r * PANEL + 3), f"{o.name} (z={k})", fill=(255, 255, 0), font=font)
    return _png_bytes(fig), (width, height)


def bar_chart(results: dict[str, dict], protocol: str, title: str = "") -> tuple[bytes, tuple[int, int]]:
    """Horizontal grouped bar chart of per-organ mean Dice per bundle. Returns (PNG, size)."""
    from PIL import Image, ImageDraw

    organs = protocol_organs(protocol)
    names = list(results)
    bar, gap, left, top, bottom = 12, 10, 210, 40 + 16 * len(names), 40
    group = bar * len(names) + gap
    width, height = CHART_WIDTH, top + group * len(organs) + bottom
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = _font(13)
    d.text((10, 8), title or f"Per-organ Dice ({protocol})", fill=(0, 0, 0), font=font)
    for i, n in enumerate(names):
        y = 28 + 16 * i
        d.rectangle([10, y, 22, y + 11], fill=_PALETTE[i % len(_PALETTE)])
        d.text((28, y - 1), n, fill=(0, 0, 0), font=font)
    plot_w = width - left - 60
    for t in range(6):
        x = left + plot_w * t / 5
        d.line([x, top - 4, x, height - bottom], fill=(220, 220, 220))
        d.text((x - 8, height - bottom + 6), f"{t / 5:.1f}", fill=(0, 0, 0), font=font)
    for gi, (key, name, _) in enumerate(organs):
        y0 = top + gi * group
        d.text((10, y0 + (bar * len(names)) / 2 - 7), name, fill=(0, 0, 0), font=font)
        for bi, n in enumerate(names):
            v = results[n]["summary"]["organs"][key]["dice"]["mean"]
            y = y0 + bi * bar
            if v is not None and not math.isnan(v):
                d.rectangle(
                    [left, y, left + plot_w * max(0.0, min(1.0, v)), y + bar - 2], fill=_PALETTE[bi % len(_PALETTE)]
                )
                d.text(
                    (left + plot_w * max(0.0, min(1.0, v)) + 4, y - 1), f"{v:.2f}", fill=(60, 60, 60), font=_font(10)
                )
    d.line([left, top - 4, left, height - bottom], fill=(0, 0, 0))
    return _png_bytes(img), (width, height)
