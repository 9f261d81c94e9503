"""The per-case overlay of the reports (CT | ground truth | predictions, a row per organ) that the evaluation and
the leaderboard write, drawn with Pillow (a core dependency, so every report has it). The leaderboard's charts are
drawn with matplotlib in ``common.tools.charts``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .labels import BTCV_ORGANS, organ

__all__ = ["overlay_png", "PANEL", "HEADER"]

PANEL = 160  # pixels per overlay panel
HEADER = 24  # pixels of the overlay title row


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
