"""Statistics for comparing bundles on the same cases: bootstrap confidence intervals and paired tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["describe", "bootstrap_ci", "paired_comparison"]


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (cases resampled with replacement).

    Deterministic for a given ``seed``; ``(nan, nan)`` without values, ``(x, x)`` for a single value.
    """
    v = _finite(values)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def describe(values: Sequence[float], confidence: float = 0.95, n_boot: int = 10000, seed: int = 0) -> dict:
    """Mean, std (ddof 1), n and bootstrap CI of the mean over the finite values."""
    v = _finite(values)
    lo, hi = bootstrap_ci(v, confidence, n_boot, seed)
    return {
        "mean": float(v.mean()) if v.size else math.nan,
        "std": float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else math.nan),
        "n": int(v.size),
        "ci_low": lo,
        "ci_high": hi,
        "confidence": confidence,
    }


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95, seed: int = 0) -> dict:
    """Compare two bundles case by case (``a`` minus ``b`` on the cases both scored).

    Returns the per-case differences, their mean with a bootstrap CI, and the two-sided Wilcoxon signed-rank
    p-value (scipy; ``p = 1`` when every difference is zero, ``nan`` with fewer than 2 paired cases).
    """
    cases = sorted(c for c in a if c in b and np.isfinite(a[c]) and np.isfinite(b[c]))
    d = np.asarray([a[c] - b[c] for c in cases], dtype=np.float64)
    out = {"n": len(cases), "differences": {c: float(x) for c, x in zip(cases, d)}}
    out["mean_difference"] = float(d.mean()) if d.size else math.nan
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, confidence, seed=seed)
    if d.size < 2:
        out["wilcoxon_p"] = math.nan
    elif np.all(d == 0):
        out["wilcoxon_p"] = 1.0
    else:
        out["wilcoxon_p"] = float(sps.wilcoxon(d, alternative="two-sided").pvalue)
    return out
