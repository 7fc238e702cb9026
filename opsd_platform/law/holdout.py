"""Out-of-sample checks of the law: leave one configuration out, hold out a whole group (a context,
a world, a family), whether families share a slope; and, from that evidence, whether a law may
decide at all (``check_law``, below), with the numpy refit a search re-checks after each trial.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from opsd_platform.errors import LawError
from opsd_platform.law.fit import LawFit, fit_law
from opsd_platform.law.points import aggregate, check_columns

# ----------------------------------------------------------------------------------------------
# out-of-sample evidence


def _metrics(table: pd.DataFrame) -> dict[str, float]:
    if len(table) == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "coverage": float("nan"), "n": 0}
    r = table["residual"].to_numpy(dtype=float)
    return {
        "mae": float(np.abs(r).mean()),
        "rmse": float(np.sqrt((r**2).mean())),
        "coverage": float(table["covered"].mean()),
        "n": int(len(table)),
    }


def _holdout_rows(fit: LawFit, held: pd.DataFrame) -> pd.DataFrame:
    pred = fit.predict(held.reset_index(drop=True))
    observed = held["improvement"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "config": held["config"].to_numpy(),
            "gap": held["gap"].to_numpy(dtype=float),
            "observed": observed,
            "predicted": pred["predicted_improvement"].to_numpy(),
            "residual": observed - pred["predicted_improvement"].to_numpy(),
            "lower": pred["lower"].to_numpy(),
            "upper": pred["upper"].to_numpy(),
            "covered": (observed >= pred["lower"].to_numpy()) & (observed <= pred["upper"].to_numpy()),
        }
    )


_TABLE_COLUMNS = ["config", "gap", "observed", "predicted", "residual", "lower", "upper", "covered"]


def leave_one_out(points: pd.DataFrame, **fit_kwargs: Any) -> dict[str, Any]:
    """Leave each configuration out, refit on the rest (``fit_law(**fit_kwargs)``), predict it.

    Returns ``{"kind": "leave_one_out", "method", "level", "table", "mae", "rmse", "coverage",
    "n", "skipped"}``: ``table`` is a DataFrame (config, gap, observed, predicted, residual =
    observed - predicted, lower, upper, covered); coverage is the fraction of held-out config
    means inside their prediction interval at ``level``; ``skipped`` lists configs whose removal
    leaves an unfittable set (with the reason). For OLS the residuals equal statsmodels'
    ``get_influence().resid_press``. For WLS the weights are recomputed on each reduced set.
    """
    agg = aggregate(points)
    pts = points.assign(config=points["config"].astype(str))
    rows, skipped = [], []
    for i, cfg in enumerate(agg["config"]):
        try:
            fit = fit_law(pts[pts["config"] != cfg], **fit_kwargs)
        except LawError as exc:
            skipped.append({"config": cfg, "reason": str(exc)})
            continue
        rows.append(_holdout_rows(fit, agg.iloc[[i]]))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=_TABLE_COLUMNS)
    return {
        "kind": "leave_one_out",
        "method": fit_kwargs.get("method", "ols"),
        "level": float(fit_kwargs.get("level", 0.9)),
        "table": table,
        **_metrics(table),
        "skipped": skipped,
    }


def _grouped(points: pd.DataFrame, group: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-config means, points with string config ids), checking every config has a `group`."""
    check_columns(points, [group], "points")
    agg = aggregate(points)
    if agg[group].isna().any():
        cfg = agg.loc[agg[group].isna(), "config"].iloc[0]
        raise LawError(f"points: config {cfg!r} has no value in group column {group!r}")
    return agg, points.assign(config=points["config"].astype(str))


def grouped_holdout(points: pd.DataFrame, group: str, **fit_kwargs: Any) -> dict[str, Any]:
    """Leave one whole group out (e.g. ``group="family"``: every config of one model family),
    refit on the others, predict the held-out configs.

    Returns ``{"kind": "grouped", "group", "method", "level", "table" (with a ``group`` column),
    "per_group" (list of {group, n_configs, mae, rmse, coverage}), "mae", "rmse", "coverage",
    "n", "skipped" (list of {group, reason})}``. A group whose removal leaves fewer than 3 configs
    or all-equal gaps is skipped with the reason, not an error.
    """
    agg, pts = _grouped(points, group)
    rows, per_group, skipped = [], [], []
    for value in agg[group].unique():
        held = agg[agg[group] == value]
        try:
            fit = fit_law(pts[~pts["config"].isin(held["config"])], **fit_kwargs)
        except LawError as exc:
            skipped.append({"group": value, "reason": f"the law fitted without it: {exc}"})
            continue
        part = _holdout_rows(fit, held)
        part.insert(0, "group", value)
        rows.append(part)
        per_group.append({"group": value, "n_configs": len(part),
                          **{k: v for k, v in _metrics(part).items() if k != "n"}})
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["group", *_TABLE_COLUMNS])
    return {
        "kind": "grouped",
        "group": group,
        "method": fit_kwargs.get("method", "ols"),
        "level": float(fit_kwargs.get("level", 0.9)),
        "table": table,
        "per_group": per_group,
        **_metrics(table),
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------------------------
# families


def family_slopes(points: pd.DataFrame, group: str = "family", *, level: float = 0.9) -> dict[str, Any]:
    """Per-family laws, the pooled law, and an F-test that all families share one slope.

    The test compares OLS ``improvement ~ gap * C(group)`` (a slope per family) with
    ``improvement ~ gap + C(group)`` (own intercepts, one slope) on config means, using only
    families whose own slope is estimable (>= 2 configs at distinct gaps; the others are listed
    in ``excluded``). Returns ``{"group", "families": {name: {...}}, "pooled": LawFit | None,
    "pooled_note", "equal_slopes": {"F", "p", "df_num", "df_denom", "families"} or {"note"},
    "excluded"}``.
    """
    import statsmodels.formula.api as smf

    agg, pts = _grouped(points, group)

    families: dict[str, dict[str, Any]] = {}
    for value in agg[group].unique():
        cfgs = agg.loc[agg[group] == value, "config"]
        entry: dict[str, Any] = {"n_configs": int(len(cfgs))}
        try:
            fit = fit_law(pts[pts["config"].isin(cfgs)], level=level)
        except LawError as exc:
            entry.update(fit=None, note=str(exc))
        else:
            gap = fit.coefficient("gap")
            entry.update(
                fit=fit,
                slope=fit.slope,
                slope_ci=[gap["ci_lower"], gap["ci_upper"]],
                intercept=fit.intercept,
                r2=fit.r2,
            )
        families[str(value)] = entry

    try:
        pooled, pooled_note = fit_law(pts, level=level), None
    except LawError as exc:
        pooled, pooled_note = None, str(exc)

    eligible, excluded = [], []
    for value in agg[group].unique():
        gaps = agg.loc[agg[group] == value, "gap"].to_numpy(dtype=float)
        if len(gaps) >= 2 and np.ptp(gaps) > 1e-12:
            eligible.append(value)
        else:
            excluded.append(str(value))
    equal: dict[str, Any]
    if len(agg[group].unique()) < 2:
        equal = {"note": f"the equal-slope test needs >= 2 families; all configs are in {group}={agg[group].iloc[0]!r}"}
    elif len(eligible) < 2:
        equal = {
            "note": f"the equal-slope test needs >= 2 families with >= 2 configs at distinct gaps each; "
            f"estimable: {[str(e) for e in eligible] or 'none'}"
        }
    else:
        sub = agg[agg[group].isin(eligible)]
        # Under a fixed column name, so the formulas hold for any `group` column (a name with a dot
        # or a space would not parse).
        data = pd.DataFrame({"improvement": sub["improvement"], "gap": sub["gap"], "family": sub[group]})
        n_coefficients = 2 * len(eligible)  # an intercept and a slope per family
        if len(sub) <= n_coefficients:
            equal = {
                "note": f"the equal-slope test needs more configs ({len(sub)}) than the per-family model has "
                f"coefficients ({n_coefficients})"
            }
        else:
            full = smf.ols("improvement ~ gap * C(family)", data).fit()
            reduced = smf.ols("improvement ~ gap + C(family)", data).fit()
            f_value, p_value, df_diff = full.compare_f_test(reduced)
            equal = {
                "F": float(f_value),
                "p": float(p_value),
                "df_num": float(df_diff),
                "df_denom": float(full.df_resid),
                "families": [str(e) for e in eligible],
            }
    return {
        "group": group,
        "families": families,
        "pooled": pooled,
        "pooled_note": pooled_note,
        "equal_slopes": equal,
        "excluded": excluded,
    }

# ----------------------------------------------------------------------------------------------
# may a law decide? The one check that the registry (registering, promoting), the per-trial law
# pruner and the ranked search all call before a law chooses anything. A law decides only when
# every condition holds (thresholds in ``THRESHOLDS``, stated in docs/ranked-search.md):
#
# 1. at least ``min_configs`` configurations (a line through 3 points says little about the 4th);
# 2. at least ``min_df_resid`` residual degrees of freedom (the t quantile of the interval is
#    otherwise huge, or the interval has no width at all);
# 3. a non-degenerate interval: the narrowest prediction interval (at the law's level) is at least
#    ``min_interval_width`` wide. Three points on an exact line give an interval of width 0, which
#    would prune with certainty on no evidence;
# 4. the slope's interval (at the law's level) excludes 0: the gap says something about the
#    improvement;
# 5. leave-one-configuration-out RMSE below a constant predictor's (the mean of the other
#    configurations): the law predicts an unseen configuration better than ignoring the gap. A law
#    with no recorded leave-one-out error fails this condition (nothing shows it predicts).
#
# ``check_law`` takes the numbers; ``check_points`` computes them from raw points (config means,
# the law's and the constant's leave-one-out errors). The verdict is a ``LawCheck`` whose
# ``reason`` is one line, and which travels as registry version tags (``tags``/``from_tags``).


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


def finite_or_none(value: Any) -> float | None:
    """`value` as a finite float, or None (a missing tag, NaN, a string that is no number)."""
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
    loo, const = finite_or_none(loo_rmse), finite_or_none(constant_rmse)
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
        return LawCheck(True, f"may decide: {fit.n_configs} configurations, "
                        f"slope {fit.slope:+.3g} [{lo:+.3g}, {hi:+.3g}], "
                        f"leave-one-out RMSE {loo:.3g} < constant {const:.3g}", fit.n_configs, fit.df_resid, width,
                        (lo, hi), loo, const)
    return LawCheck(False, f"the law may not decide: {why}", fit.n_configs, fit.df_resid, width, (lo, hi), loo, const)


def check_points(points: pd.DataFrame, fit: LawFit | None = None, *, loo_rmse: float | None = None,
                 thresholds: Thresholds = THRESHOLDS, **fit_kwargs: Any) -> LawCheck:
    """The verdict on the law fitted to `points` (`fit`, else ``fit_law(points, **fit_kwargs)``),
    its leave-one-out RMSE computed unless given (``leave_one_out``)."""
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
    return check_law(fit, loo_rmse=finite_or_none(tags.get("holdout_rmse")),
                     constant_rmse=finite_or_none(tags.get("holdout_constant_rmse")))


# ----------------------------------------------------------------------------------------------
# the numpy fast path: OLS on configuration means and its PRESS leave-one-out error, for the many
# refits of a search or a replay (equal to fit_law(method='ols') and leave_one_out to rounding; tested)


def fit_ols_arrays(config: np.ndarray, gap: np.ndarray, improvement: np.ndarray, covs: np.ndarray,
                   covariates: tuple[str, ...], level: float) -> tuple[LawFit, float | None]:
    """fit_law(method="ols") and leave_one_out's RMSE in numpy (module docstring).

    config: integer configuration ids per point; covs: [points, covariates]. The prediction
    numbers (params, cov_params, sigma2, df_resid) equal fit_law's to rounding (tested); the
    leave-one-out residuals are the PRESS residuals (law.leave_one_out says they equal its own
    for OLS), a fold skipped where fit_law would refuse the reduced set. Raises LawError where
    fit_law would."""
    ids, first, inverse = np.unique(config, return_index=True, return_inverse=True)
    count = np.bincount(inverse).astype(float)
    mean = lambda v: np.bincount(inverse, weights=v) / count  # noqa: E731
    gaps, y = mean(gap), mean(improvement)
    n = ids.size
    if n < 3:
        raise LawError(f"need at least 3 configurations, got {n}")
    if np.ptp(gaps) <= 1e-12 * max(1.0, float(np.abs(gaps).max())):
        raise LawError("all configurations have the same gap")
    x = np.column_stack([np.ones(n), gaps, *[mean(covs[:, j]) for j in range(covs.shape[1])]])
    k = x.shape[1]
    if n <= k or np.linalg.matrix_rank(x) < k:
        raise LawError("too few configurations, or covariates collinear with the gap")
    xtx_inv = np.linalg.pinv(x.T @ x)
    params = xtx_inv @ x.T @ y
    resid = y - x @ params
    df = n - k
    sigma2 = float(resid @ resid / df)
    fit = LawFit(method="ols", level=level, columns=["intercept", "gap", *covariates], params=params.tolist(),
                 cov_params=(sigma2 * xtx_inv).tolist(), sigma2=sigma2, df_resid=float(df), new_weight=1.0,
                 coefficients=[], r2=math.nan, adj_r2=math.nan, pearson_r=math.nan, pearson_p=math.nan,
                 residual_std=math.sqrt(sigma2), n_configs=n, n_points=int(gap.size), configs=[str(i) for i in ids],
                 covariates=list(covariates))
    hat = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    keep = np.ones(n, dtype=bool)
    for i in range(n):  # the folds leave_one_out skips: the reduced set is not fittable
        rest = np.delete(gaps, i)
        keep[i] = (n - 1 >= 3 and n - 1 > k and hat[i] < 1 - 1e-9
                   and np.ptp(rest) > 1e-12 * max(1.0, float(np.abs(rest).max())))
    press = resid[keep] / (1 - hat[keep])
    return fit, (float(np.sqrt(np.mean(press ** 2))) if keep.any() else None)


def fit_and_check(config: np.ndarray, gap: np.ndarray, improvement: np.ndarray, level: float,
                  covs: np.ndarray | None = None, covariates: tuple[str, ...] = ()):
    """(LawFit, leave-one-out RMSE, LawCheck) of an OLS refit, all in numpy: what a search
    or a replay needs after each trained configuration. Raises LawError where fit_law would."""
    config, improvement = np.asarray(config), np.asarray(improvement, dtype=float)
    covs = (np.empty((config.size, 0)) if covs is None
            else np.asarray(covs, dtype=float).reshape(config.size, len(covariates)))
    fit, rmse = fit_ols_arrays(config, np.asarray(gap, dtype=float), improvement, covs, covariates, level)
    _, inverse = np.unique(config, return_inverse=True)
    means = np.bincount(inverse, weights=improvement) / np.bincount(inverse)
    return fit, rmse, check_law(fit, loo_rmse=rmse, constant_rmse=constant_loo_rmse(means))
