"""How much a fitted law can be trusted: slices pooled with a fixed effect each, the configurations
that carry the slope (leverage, Cook's distance), and a bootstrap over configurations.

Why each exists (bench-v1, read as a reviewer would): a pooled fit without per-slice intercepts
turned the difference between two worlds into a "context length" effect; Gemma-3's slope rested on
one configuration (leverage 0.98; without it the interval spanned -1.7 to 5.2); with ten
configurations a t-interval can look tight while a few points decide it. Pure functions of a
points table (law/points.py's columns); fits go through ``fit_law``, so every number is the law's.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from opsd_platform.errors import LawError
from opsd_platform.law.fit import LawFit, fit_law
from opsd_platform.law.points import aggregate


def _dummy_name(value: str) -> str:
    return "fe_" + re.sub(r"[^0-9A-Za-z]+", "_", str(value)).strip("_")


def with_fixed_effects(points: pd.DataFrame, group: str = "slice") -> tuple[pd.DataFrame, list[str]]:
    """`points` with an indicator column per value of `group` but the first (in order of
    appearance), and the indicators' names: the covariates that give each value its intercept."""
    if group not in points.columns:
        raise LawError(f"points: no column {group!r} to pool by")
    values = list(dict.fromkeys(points[group].astype(str)))
    if len(values) < 2:
        raise LawError(f"fixed effects need >= 2 values of {group!r}, got {values}")
    pts = points.copy()
    dummies = []
    for v in values[1:]:
        name = _dummy_name(v)
        pts[name] = (pts[group].astype(str) == v).astype(float)
        dummies.append(name)
    return pts, dummies


def fixed_effects(points: pd.DataFrame, group: str = "slice", level: float = 0.9,
                  covariates: list[str] | None = None) -> tuple[LawFit, list[str]]:
    """improvement = a_g + b * gap (+ covariates): the law pooled over the values of `group`
    (slices), each with an intercept of its own and one slope. Returns the fit and the indicator
    columns (the first of its covariates)."""
    pts, dummies = with_fixed_effects(points, group)
    return fit_law(pts, covariates=[*dummies, *(covariates or [])], level=level), dummies


def influence(points: pd.DataFrame) -> pd.DataFrame:
    """Per configuration of the one-slope law (OLS on configuration means): its leverage (hat
    value), Cook's distance, and whether either is large by the usual rules (leverage > 2p/n,
    Cook's D > 4/n, p = 2 parameters). statsmodels' OLSInfluence."""
    import statsmodels.api as sm
    from statsmodels.stats.outliers_influence import OLSInfluence

    agg = aggregate(points)
    if len(agg) < 3:
        raise LawError(f"influence needs >= 3 configurations, got {len(agg)}")
    x = sm.add_constant(agg["gap"].to_numpy(dtype=float), has_constant="add")
    res = sm.OLS(agg["improvement"].to_numpy(dtype=float), x).fit()
    inf = OLSInfluence(res)
    n, p = len(agg), 2
    out = pd.DataFrame({"config": agg["config"], "gap": agg["gap"], "improvement": agg["improvement"],
                        "leverage": inf.hat_matrix_diag, "cooks_d": inf.cooks_distance[0]})
    out["high_leverage"] = out["leverage"] > 2 * p / n
    out["influential"] = out["cooks_d"] > 4 / n
    return out


def bootstrap_slope(points: pd.DataFrame, n_boot: int = 2000, level: float = 0.9, seed: int = 0) -> dict:
    """The slope's percentile interval over configurations resampled with replacement (the law
    fitted on each resample's configuration means, OLS), and the share of resamples with a
    positive slope. Resamples whose gaps are all equal (no slope) are dropped and counted."""
    agg = aggregate(points)
    n = len(agg)
    if n < 3:
        raise LawError(f"bootstrap needs >= 3 configurations, got {n}")
    gap, imp = agg["gap"].to_numpy(dtype=float), agg["improvement"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        g, y = gap[idx], imp[idx]
        if np.ptp(g) == 0:
            continue
        slopes.append(np.polyfit(g, y, 1)[0])
    slopes_a = np.asarray(slopes)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(slopes_a, q) if len(slopes_a) else (float("nan"), float("nan"))
    return {"n_boot": n_boot, "used": int(len(slopes_a)), "level": level, "slope_median": float(np.median(slopes_a)),
            "slope_lo": float(lo), "slope_hi": float(hi), "share_positive": float(np.mean(slopes_a > 0))}
