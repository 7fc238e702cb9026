"""Raw law points (one training run each: config, seed, gap, improvement, groups, covariates) checked
and aggregated to one point per configuration, the mean over its seeds, as in the paper.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from opsd_platform.errors import LawError

REQUIRED_COLUMNS = ("config", "seed", "gap", "improvement")
GROUP_COLUMNS = ("context", "world", "family")
FORMAT_VERSION = 1

# WLS: the variance of a configuration's mean improvement is floored at this fraction of the
# median positive variance, so a config whose seeds happen to agree exactly (or a lucky pair)
# does not get (near-)infinite weight.
WLS_VARIANCE_FLOOR_FRACTION = 0.1
ABS_VARIANCE_FLOOR = 1e-12


# ----------------------------------------------------------------------------------------------
# aggregation


def check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise LawError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    for col in columns:
        if col not in frame.columns:
            raise LawError(f"{what}: missing column {col!r} (have: {', '.join(map(str, frame.columns)) or 'none'})")


def numeric_column(frame: pd.DataFrame, col: str, what: str) -> np.ndarray:
    series = frame[col]
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        bad = series[converted.isna() & series.notna()]
        if len(bad) or pd.api.types.is_bool_dtype(series):
            example = bad.iloc[0] if len(bad) else series.iloc[0]
            raise LawError(f"{what}: column {col!r} must be numeric, got dtype {series.dtype} (e.g. {example!r})")
        series = converted
    return series.to_numpy(dtype=float)


def show_value(value: Any) -> str:
    """A cell value for an error message (numpy scalars as plain Python)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def aggregate(points: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the means the law is fitted on, and the error bars.

    Columns: ``config``, ``gap``, ``improvement`` (means over seeds), ``gap_std``,
    ``improvement_std`` (std over seeds, ddof=1; 0 for a single seed), ``n_seeds``; the grouping
    columns present among ``context``/``world``/``family`` (each must be constant within a
    config); every other numeric column (covariates) averaged; other non-numeric columns kept when
    constant within every config. Rows keep the order in which configs first appear.
    """
    check_columns(points, REQUIRED_COLUMNS, "points")
    if len(points) == 0:
        raise LawError("points: no rows")
    pts = points.copy()
    pts["config"] = pts["config"].astype(str)
    for col in ("gap", "improvement"):
        values = numeric_column(pts, col, "points")
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = pts.iloc[i]
            raise LawError(
                f"points: non-finite {col}={float(values[i])} for config {row['config']!r} "
                f"seed {show_value(row['seed'])}"
                + (f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else "")
            )
        pts[col] = values
    dup = pts.duplicated(["config", "seed"], keep=False)
    if dup.any():
        row = pts[dup].iloc[0]
        raise LawError(f"points: config {row['config']!r} seed {show_value(row['seed'])} "
                       f"appears {int(dup.sum())} times")

    grouped = pts.groupby("config", sort=False)
    out = pd.DataFrame(
        {
            "gap": grouped["gap"].mean(),
            "improvement": grouped["improvement"].mean(),
            "gap_std": grouped["gap"].std(ddof=1).fillna(0.0),
            "improvement_std": grouped["improvement"].std(ddof=1).fillna(0.0),
            "n_seeds": grouped.size().astype(int),
        }
    )
    for col in GROUP_COLUMNS:
        if col not in pts.columns:
            continue
        counts = grouped[col].nunique(dropna=False)
        if (counts > 1).any():
            cfg = counts[counts > 1].index[0]
            values = sorted(map(str, pts.loc[pts["config"] == cfg, col].unique()))
            raise LawError(f"points: column {col!r} must be constant within a config; config {cfg!r} has {values}")
        out[col] = grouped[col].first()
    skip = set(REQUIRED_COLUMNS) | set(GROUP_COLUMNS)
    for col in pts.columns:
        if col in skip:
            continue
        series = pts[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            out[col] = grouped[col].mean()
        elif (grouped[col].nunique(dropna=False) <= 1).all():
            out[col] = grouped[col].first()
    return out.reset_index()


