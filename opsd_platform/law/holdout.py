"""Out-of-sample checks of the law: leave one configuration out, hold out a whole group (a context,
a world, a family), and whether families share a slope.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from opsd_platform.law.fit import LawFit, fit_law
from opsd_platform.law.points import LawError, aggregate, check_columns

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
        per_group.append({"group": value, "n_configs": len(part), **{k: v for k, v in _metrics(part).items() if k != "n"}})
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
