"""May this law decide? The one check that the registry (registering, promoting), the per-trial
law pruner and the ranked search all call before a law chooses anything.

A law decides only when every condition holds (thresholds in ``THRESHOLDS``, stated in
docs/reference.md):

1. at least ``min_configs`` configurations (a line through 3 points says little about the 4th);
2. at least ``min_df_resid`` residual degrees of freedom (the t quantile of the interval is
   otherwise huge, or the interval has no width at all);
3. a non-degenerate interval: the narrowest prediction interval (at the law's level) is at least
   ``min_interval_width`` wide. Three points on an exact line give an interval of width 0, which
   would prune with certainty on no evidence;
4. the slope's interval (at the law's level) excludes 0: the gap says something about the
   improvement;
5. leave-one-configuration-out RMSE below a constant predictor's (the mean of the other
   configurations): the law predicts an unseen configuration better than ignoring the gap. A law
   with no recorded leave-one-out error fails this condition (nothing shows it predicts).

``check_law`` takes the numbers; ``check_points`` computes them from raw points (config means,
the law's and the constant's leave-one-out errors). The verdict is a ``LawCheck`` whose
``reason`` is one line, and which travels as registry version tags (``tags``/``from_tags``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from opsd_platform.law.fit import LawFit, fit_law
from opsd_platform.law.points import aggregate


@dataclass(frozen=True)
class Thresholds:
    min_configs: int = 5
    min_df_resid: int = 3
    min_interval_width: float = 1e-3  # improvement units (a pass rate on 256 samples moves in steps of 0.004)


THRESHOLDS = Thresholds()
TAG = "usable"  # registry version tags: usable, usable_reason, holdout_constant_rmse


@dataclass(frozen=True)
class LawCheck:
    """The verdict: ``usable`` and one line saying why (the first failed condition, or the numbers)."""

    usable: bool
    reason: str
    n_configs: int
    df_resid: float
    interval_width: float
    slope_ci: tuple[float, float]
    loo_rmse: float | None
    constant_rmse: float | None

    def tags(self) -> dict[str, str]:
        return {TAG: str(self.usable).lower(), f"{TAG}_reason": self.reason[:4000],
                "holdout_constant_rmse": "" if self.constant_rmse is None else f"{self.constant_rmse:.6g}"}


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def narrowest_width(fit: LawFit) -> float:
    """Width of the narrowest prediction interval the law gives (at its level): 2 t sqrt(sigma^2),
    the parameter uncertainty adding to it everywhere."""
    from scipy import stats

    if not fit.df_resid > 0:
        return 0.0
    q = float(stats.t.ppf(1 - (1 - fit.level) / 2.0, fit.df_resid))
    return 2.0 * q * math.sqrt(max(fit.sigma2, 0.0) / fit.new_weight)


def slope_interval(fit: LawFit) -> tuple[float, float]:
    """The slope's interval at the law's level from its covariance (statsmodels' ``conf_int``:
    t with df_resid), so a fit kept as bare numbers is judged like a full one."""
    from scipy import stats

    se = math.sqrt(max(float(fit.cov_params[1][1]), 0.0))
    q = float(stats.t.ppf(1 - (1 - fit.level) / 2.0, fit.df_resid)) if fit.df_resid > 0 else math.inf
    return fit.slope - q * se, fit.slope + q * se


def constant_loo_rmse(improvements: Any) -> float | None:
    """Leave-one-configuration-out RMSE of the constant predictor (the mean of the others):
    y_i - mean(y_-i) = n / (n - 1) (y_i - mean(y))."""
    y = np.asarray(improvements, dtype=float)
    if y.size < 2:
        return None
    return float(y.size / (y.size - 1) * np.sqrt(np.mean((y - y.mean()) ** 2)))


def check_law(fit: LawFit, *, loo_rmse: float | None, constant_rmse: float | None,
              thresholds: Thresholds = THRESHOLDS) -> LawCheck:
    """The verdict on `fit`, given its leave-one-configuration-out RMSE and the constant predictor's."""
    t = thresholds
    lo, hi = slope_interval(fit)
    width = narrowest_width(fit)
    loo, const = _finite(loo_rmse), _finite(constant_rmse)
    pct = f"{fit.level:.0%}"
    if fit.n_configs < t.min_configs:
        why = f"{fit.n_configs} configurations (needs >= {t.min_configs})"
    elif fit.df_resid < t.min_df_resid:
        why = f"{fit.df_resid:g} residual degrees of freedom (needs >= {t.min_df_resid})"
    elif not width >= t.min_interval_width:
        why = f"its {pct} prediction interval has width {width:.2g} (needs >= {t.min_interval_width:g})"
    elif not (lo > 0 or hi < 0):
        why = f"the slope's {pct} interval [{lo:+.3g}, {hi:+.3g}] contains 0 (the gap shows no effect)"
    elif loo is None or const is None:
        why = "no leave-one-configuration-out error recorded (nothing shows it predicts an unseen configuration)"
    elif not loo < const:
        why = f"leave-one-configuration-out RMSE {loo:.3g} is not below a constant predictor's {const:.3g}"
    else:
        return LawCheck(True, f"may decide: {fit.n_configs} configurations, slope {fit.slope:+.3g} [{lo:+.3g}, {hi:+.3g}], "
                        f"leave-one-out RMSE {loo:.3g} < constant {const:.3g}", fit.n_configs, fit.df_resid, width,
                        (lo, hi), loo, const)
    return LawCheck(False, f"the law may not decide: {why}", fit.n_configs, fit.df_resid, width, (lo, hi), loo, const)


def check_points(points: pd.DataFrame, fit: LawFit | None = None, *, loo_rmse: float | None = None,
                 thresholds: Thresholds = THRESHOLDS, **fit_kwargs: Any) -> LawCheck:
    """The verdict on the law fitted to `points` (`fit`, else ``fit_law(points, **fit_kwargs)``),
    its leave-one-out RMSE computed unless given (``law.leave_one_out``)."""
    from opsd_platform.law.holdout import leave_one_out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit if fit is not None else fit_law(points, **fit_kwargs)
        if loo_rmse is None and fit.n_configs >= thresholds.min_configs:  # below it the verdict needs no hold-out
            loo_rmse = leave_one_out(points, **fit_kwargs)["rmse"]
    return check_law(fit, loo_rmse=loo_rmse, constant_rmse=constant_loo_rmse(aggregate(points)["improvement"]),
                     thresholds=thresholds)


def check_from_tags(fit: LawFit, tags: Mapping[str, str]) -> LawCheck:
    """The verdict on a registered law, from its fit and its version tags (``holdout_rmse``,
    ``holdout_constant_rmse``): recomputed, so a version registered before this check is judged too."""
    return check_law(fit, loo_rmse=_finite(tags.get("holdout_rmse")), constant_rmse=_finite(tags.get("holdout_constant_rmse")))
