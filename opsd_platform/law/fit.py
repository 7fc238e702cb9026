"""The gap law: improvement = a + b * gap, fitted across configurations, with honest intervals.

A *configuration* (string key, e.g. ``"smollm2/arithmetic/reference"``) is trained with several
seeds; each training run is one raw point with columns ``config``, ``seed``, ``gap`` (initial
self-teacher minus student pass rate; may be negative) and ``improvement`` (final minus initial
validation pass rate), plus grouping columns (``context``, ``world``, ``family``) and optional
numeric covariates (``model_params``, ``context_tokens``, ``steps`` ...).

As in the paper, the law is fitted on one point per configuration (the mean over its seeds).
Unlike the paper, this module also gives what a referee asked for: prediction intervals for a new
configuration, leave-one-configuration-out and held-out-group error, a test that families share a
slope, and covariates as extra regressors (confounder check).

Fitting uses statsmodels; the resulting :class:`LawFit` keeps only plain numbers (coefficients,
their covariance, sigma^2, residual degrees of freedom), so predicting with intervals needs only
numpy/scipy, reproduces statsmodels' ``get_prediction(x).summary_frame(alpha)`` ``obs_ci_*``
exactly, and round-trips through JSON (the registered MLflow model is built from ``to_dict()``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "GROUP_COLUMNS",
    "METHODS",
    "LawError",
    "LawFit",
    "aggregate",
    "family_slopes",
    "fit_law",
    "grouped_holdout",
    "leave_one_out",
]

REQUIRED_COLUMNS = ("config", "seed", "gap", "improvement")
GROUP_COLUMNS = ("context", "world", "family")
METHODS = ("ols", "wls", "hc3")
FORMAT_VERSION = 1

# WLS: the variance of a configuration's mean improvement is floored at this fraction of the
# median positive variance, so a config whose seeds happen to agree exactly (or a lucky pair)
# does not get (near-)infinite weight.
WLS_VARIANCE_FLOOR_FRACTION = 0.1
_ABS_VARIANCE_FLOOR = 1e-12


class LawError(ValueError):
    """Bad input for fitting or predicting with the gap law; the message says what and where."""


# ----------------------------------------------------------------------------------------------
# aggregation


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise LawError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    for col in columns:
        if col not in frame.columns:
            raise LawError(f"{what}: missing column {col!r} (have: {', '.join(map(str, frame.columns)) or 'none'})")


def _numeric_column(frame: pd.DataFrame, col: str, what: str) -> np.ndarray:
    series = frame[col]
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        bad = series[converted.isna() & series.notna()]
        if len(bad) or pd.api.types.is_bool_dtype(series):
            example = bad.iloc[0] if len(bad) else series.iloc[0]
            raise LawError(f"{what}: column {col!r} must be numeric, got dtype {series.dtype} (e.g. {example!r})")
        series = converted
    return series.to_numpy(dtype=float)


def _show(value: Any) -> str:
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
    _check_columns(points, REQUIRED_COLUMNS, "points")
    if len(points) == 0:
        raise LawError("points: no rows")
    pts = points.copy()
    pts["config"] = pts["config"].astype(str)
    for col in ("gap", "improvement"):
        values = _numeric_column(pts, col, "points")
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = pts.iloc[i]
            raise LawError(
                f"points: non-finite {col}={float(values[i])} for config {row['config']!r} seed {_show(row['seed'])}"
                + (f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else "")
            )
        pts[col] = values
    dup = pts.duplicated(["config", "seed"], keep=False)
    if dup.any():
        row = pts[dup].iloc[0]
        raise LawError(f"points: config {row['config']!r} seed {_show(row['seed'])} appears {int(dup.sum())} times")

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


# ----------------------------------------------------------------------------------------------
# the fit


def _jsonable(value: Any) -> Any:
    """Plain Python (floats, ints, str, lists, dicts) with NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _check_level(level: Any) -> float:
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise LawError(f"level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < level < 1.0:
        raise LawError(f"level must be in (0, 1), got {level!r}")
    return level


@dataclass
class LawFit:
    """A fitted gap law: plain numbers only (JSON-serialisable, no statsmodels objects).

    Prediction for a new configuration with design row x = [1, gap, covariates...]:
    mean = x'b; var = x' C x + sigma2 / new_weight, where C = ``cov_params`` (HC3-robust for
    ``hc3``), sigma2 = statsmodels' ``scale`` (residual mean square; weighted for WLS); the
    interval uses Student t with ``df_resid`` degrees of freedom. This is statsmodels'
    ``obs_ci`` exactly. For WLS the weights are normalised to mean 1 and a new configuration is
    *assumed to have the mean weight* (``new_weight`` = 1): its noise is that of a typical
    calibration configuration, not of the best- or worst-measured one.
    """

    method: str
    level: float
    columns: list[str]  # design columns: "intercept", "gap", covariates...
    params: list[float]
    cov_params: list[list[float]]
    sigma2: float
    df_resid: float
    new_weight: float
    coefficients: list[dict[str, Any]]  # name, estimate, std_err, t, p, ci_lower, ci_upper
    r2: float
    adj_r2: float
    pearson_r: float
    pearson_p: float
    residual_std: float
    n_configs: int
    n_points: int
    configs: list[str] = field(default_factory=list)
    weights: list[float] | None = None  # WLS weights per config (mean 1), in `configs` order
    covariates: list[str] = field(default_factory=list)

    # -- headline numbers
    @property
    def intercept(self) -> float:
        return float(self.params[0])

    @property
    def slope(self) -> float:
        return float(self.params[1])

    def coefficient(self, name: str) -> dict[str, Any]:
        for row in self.coefficients:
            if row["name"] == name:
                return row
        raise LawError(f"no coefficient {name!r} (have: {', '.join(self.columns)})")

    # -- prediction
    def design(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """The design matrix [1, gap, covariates...] of `frame`, validated (LawError names the problem)."""
        if isinstance(frame, Mapping):
            frame = pd.DataFrame({k: np.atleast_1d(v) for k, v in frame.items()})
        if not isinstance(frame, pd.DataFrame):
            raise LawError(f"input: expected a DataFrame with column 'gap', got {type(frame).__name__}")
        needed = ["gap", *self.covariates]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            what = "covariate" if missing[0] != "gap" else "column"
            raise LawError(
                f"input: missing {what} {missing[0]!r}"
                + (f" (this law was fitted with covariates {self.covariates})" if self.covariates else "")
                + f"; have: {', '.join(map(str, frame.columns)) or 'none'}"
            )
        cols = [np.ones(len(frame))]
        for col in needed:
            series = frame[col]
            if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
                raise LawError(f"input: column {col!r} must be numeric, got dtype {series.dtype}")
            values = series.to_numpy(dtype=float)
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LawError(f"input: non-finite {col}={float(values[i])} in row {frame.index[i]!r} (position {i})")
            cols.append(values)
        return np.column_stack(cols)

    def predict(self, frame: pd.DataFrame | Mapping[str, Any], level: float | None = None) -> pd.DataFrame:
        """Predicted improvement and prediction interval at `level` (default: the fit's level).

        Returns a DataFrame indexed like `frame` with columns ``predicted_improvement``,
        ``lower``, ``upper`` (statsmodels' ``mean`` / ``obs_ci_lower`` / ``obs_ci_upper``).
        """
        from scipy import stats

        level = _check_level(self.level if level is None else level)
        exog = self.design(frame)
        index = frame.index if isinstance(frame, pd.DataFrame) else None
        params = np.asarray(self.params, dtype=float)
        cov = np.asarray(self.cov_params, dtype=float)
        mean = exog @ params
        # Same expression as statsmodels' get_prediction, for bit-level agreement.
        var_mean = (exog * np.dot(cov, exog.T).T).sum(1)
        se_obs = np.sqrt(var_mean + self.sigma2 / self.new_weight)
        q = stats.t.ppf(1 - (1 - level) / 2.0, self.df_resid)
        return pd.DataFrame(
            {"predicted_improvement": mean, "lower": mean - q * se_obs, "upper": mean + q * se_obs},
            index=index,
        )

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (floats, ints, str, lists; NaN stored as None)."""
        d = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "level": self.level,
            "columns": list(self.columns),
            "covariates": list(self.covariates),
            "params": list(self.params),
            "cov_params": [list(r) for r in self.cov_params],
            "sigma2": self.sigma2,
            "df_resid": self.df_resid,
            "new_weight": self.new_weight,
            "coefficients": [dict(r) for r in self.coefficients],
            "r2": self.r2,
            "adj_r2": self.adj_r2,
            "pearson_r": self.pearson_r,
            "pearson_p": self.pearson_p,
            "residual_std": self.residual_std,
            "n_configs": self.n_configs,
            "n_points": self.n_points,
            "configs": list(self.configs),
            "weights": None if self.weights is None else list(self.weights),
        }
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LawFit":
        if not isinstance(d, Mapping):
            raise LawError(f"LawFit.from_dict: expected a mapping, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT_VERSION:
            raise LawError(f"LawFit.from_dict: unsupported format {fmt!r} (this code reads format {FORMAT_VERSION})")
        try:
            coefficients = [
                {k: (_float(v) if k != "name" else v) for k, v in row.items()} for row in d["coefficients"]
            ]
            return cls(
                method=str(d["method"]),
                level=float(d["level"]),
                columns=[str(c) for c in d["columns"]],
                covariates=[str(c) for c in d.get("covariates") or []],
                params=[float(v) for v in d["params"]],
                cov_params=[[float(v) for v in row] for row in d["cov_params"]],
                sigma2=float(d["sigma2"]),
                df_resid=float(d["df_resid"]),
                new_weight=float(d["new_weight"]),
                coefficients=coefficients,
                r2=_float(d["r2"]),
                adj_r2=_float(d["adj_r2"]),
                pearson_r=_float(d["pearson_r"]),
                pearson_p=_float(d["pearson_p"]),
                residual_std=_float(d["residual_std"]),
                n_configs=int(d["n_configs"]),
                n_points=int(d["n_points"]),
                configs=[str(c) for c in d.get("configs") or []],
                weights=None if d.get("weights") is None else [float(w) for w in d["weights"]],
            )
        except KeyError as exc:
            raise LawError(f"LawFit.from_dict: missing key {exc.args[0]!r}") from None

    # -- text
    def summary(self) -> str:
        pct = f"{100 * self.level:g}%"
        terms = " ".join(
            f"{'+' if b >= 0 else '-'} {abs(b):.4g} * {name}" for name, b in zip(self.columns[1:], self.params[1:])
        )
        lines = [
            f"gap law ({self.method.upper()}; {self.n_configs} configurations, {self.n_points} points; "
            f"{pct} intervals, t with {self.df_resid:g} df)",
            f"  improvement = {self.intercept:.4g} {terms}",
            f"  {'coefficient':<16}{'estimate':>11}{'std err':>11}{'t':>9}{'p':>10}   {pct} CI",
        ]
        for row in self.coefficients:
            lines.append(
                f"  {row['name']:<16}{row['estimate']:>11.4g}{row['std_err']:>11.4g}{row['t']:>9.3g}"
                f"{row['p']:>10.3g}   [{row['ci_lower']:.4g}, {row['ci_upper']:.4g}]"
            )
        lines.append(
            f"  R^2 {self.r2:.4f} (adjusted {self.adj_r2:.4f}); Pearson r {self.pearson_r:.4f} "
            f"(p {self.pearson_p:.3g}); residual std {self.residual_std:.4g}"
        )
        if self.method == "wls":
            lines.append("  WLS weights = 1 / var(config mean improvement); a new config is assumed to have the mean weight")
        if self.method == "hc3":
            lines.append("  standard errors: HC3 heteroskedasticity-robust")
        return "\n".join(lines)


def _wls_weights(agg: pd.DataFrame) -> np.ndarray:
    """Weights 1 / var(mean improvement of the config), normalised to mean 1.

    var = std^2 / n_seeds for configs with >= 2 seeds; a single-seed config (variance unknown)
    gets the pooled within-config variance / 1; every variance is floored at
    WLS_VARIANCE_FLOOR_FRACTION x the median positive variance. No positive variance at all
    (e.g. single seeds everywhere) -> equal weights (the fit is then OLS).
    """
    n = agg["n_seeds"].to_numpy(dtype=float)
    s2 = agg["improvement_std"].to_numpy(dtype=float) ** 2
    multi = n >= 2
    var = np.where(multi, s2 / np.maximum(n, 1), np.nan)
    if multi.any() and (s2[multi] > 0).any():
        pooled = float(((n[multi] - 1) * s2[multi]).sum() / (n[multi] - 1).sum())
        var = np.where(multi, var, pooled)
    positive = var[np.isfinite(var) & (var > 0)]
    if positive.size == 0:
        return np.ones(len(agg))
    floor = max(WLS_VARIANCE_FLOOR_FRACTION * float(np.median(positive)), _ABS_VARIANCE_FLOOR)
    weights = 1.0 / np.maximum(var, floor)
    return weights / weights.mean()


def _check_fittable(agg: pd.DataFrame, covariates: Sequence[str]) -> np.ndarray:
    """Validate the configuration table for a fit; return the design matrix."""
    n = len(agg)
    if n < 3:
        raise LawError(f"need at least 3 configurations, got {n}: {', '.join(agg['config'])}")
    gaps = agg["gap"].to_numpy(dtype=float)
    if np.ptp(gaps) <= 1e-12 * max(1.0, float(np.abs(gaps).max())):
        raise LawError(f"all {n} configurations have the same gap ({gaps[0]:g}): the slope is not identifiable")
    cols = [np.ones(n), gaps]
    for cov in covariates:
        if cov not in agg.columns:
            raise LawError(f"points: missing covariate column {cov!r}")
        values = agg[cov].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            raise LawError(f"points: non-finite covariate {cov}={float(values[bad][0])} for config {agg['config'][bad].iloc[0]!r}")
        cols.append(values)
    exog = np.column_stack(cols)
    k = exog.shape[1]
    if n <= k:
        raise LawError(f"need more configurations ({n}) than coefficients ({k}: intercept, gap, {', '.join(covariates)})")
    if np.linalg.matrix_rank(exog) < k:
        raise LawError(
            f"covariates {list(covariates)} are constant or collinear with gap across the {n} configurations"
        )
    return exog


def fit_law(
    points: pd.DataFrame,
    *,
    method: str = "ols",
    covariates: Sequence[str] = (),
    level: float = 0.9,
) -> LawFit:
    """Fit improvement = a + b * gap (+ covariates) on per-configuration means.

    method: ``ols``; ``wls`` (weights 1 / variance of each config's mean improvement, see
    ``_wls_weights``); ``hc3`` (OLS with HC3-robust covariance, t inference with df_resid).
    covariates: extra numeric columns added as regressors (predictions then need them too).
    level: the default interval level (coefficient CIs, prediction intervals).
    """
    import statsmodels.api as sm
    from scipy import stats

    if method not in METHODS:
        raise LawError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    level = _check_level(level)
    if isinstance(covariates, str):
        covariates = (covariates,)
    covariates = [str(c) for c in covariates]
    for cov in covariates:
        if cov in REQUIRED_COLUMNS or cov in GROUP_COLUMNS:
            raise LawError(f"covariate {cov!r} is not a numeric covariate column")
        if isinstance(points, pd.DataFrame) and cov not in points.columns:
            raise LawError(f"points: missing covariate column {cov!r}")
        if isinstance(points, pd.DataFrame) and "config" in points.columns and "seed" in points.columns:
            values = _numeric_column(points, cov, "points")
            bad = ~np.isfinite(values)
            if bad.any():
                row = points.iloc[int(np.flatnonzero(bad)[0])]
                raise LawError(
                    f"points: non-finite covariate {cov}={_show(row[cov])} for config {row['config']!r} seed {_show(row['seed'])}"
                )
    agg = aggregate(points)
    exog = _check_fittable(agg, covariates)
    y = agg["improvement"].to_numpy(dtype=float)
    configs = agg["config"].tolist()

    weights = None
    if method == "ols":
        res = sm.OLS(y, exog).fit()
    elif method == "hc3":
        hat = sm.OLS(y, exog).fit().get_influence().hat_matrix_diag  # each config's leverage
        if (hat > 1 - 1e-9).any():
            cfg = configs[int(np.argmax(hat))]
            raise LawError(
                f"HC3 is undefined here: config {cfg!r} has leverage 1 (the fit passes through it exactly); "
                "use method='ols' or 'wls', or add configurations"
            )
        res = sm.OLS(y, exog).fit(cov_type="HC3", use_t=True)
    else:
        weights = _wls_weights(agg)
        res = sm.WLS(y, exog, weights=weights).fit()

    names = ["intercept", "gap", *covariates]
    ci = np.asarray(res.conf_int(alpha=1 - level))
    coefficients = [
        {
            "name": name,
            "estimate": float(res.params[i]),
            "std_err": float(res.bse[i]),
            "t": float(res.tvalues[i]),
            "p": float(res.pvalues[i]),
            "ci_lower": float(ci[i, 0]),
            "ci_upper": float(ci[i, 1]),
        }
        for i, name in enumerate(names)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant improvements: r is undefined (nan)
        pr = stats.pearsonr(agg["gap"].to_numpy(dtype=float), y)
    raw_resid = y - exog @ np.asarray(res.params)
    # Equal improvements leave nothing to explain: R^2 is undefined (statsmodels gives -inf).
    explained = bool(np.ptp(y) > 0)
    return LawFit(
        method=method,
        level=level,
        columns=names,
        covariates=covariates,
        params=[float(v) for v in res.params],
        cov_params=np.asarray(res.cov_params(), dtype=float).tolist(),
        sigma2=float(res.scale),
        df_resid=float(res.df_resid),
        new_weight=1.0,  # WLS weights are normalised to mean 1: a new config gets the mean weight
        coefficients=coefficients,
        r2=float(res.rsquared) if explained else math.nan,
        adj_r2=float(res.rsquared_adj) if explained else math.nan,
        pearson_r=float(pr[0]),
        pearson_p=float(pr[1]),
        residual_std=float(np.sqrt((raw_resid**2).sum() / res.df_resid)),
        n_configs=len(agg),
        n_points=int(agg["n_seeds"].sum()),
        configs=configs,
        weights=None if weights is None else [float(w) for w in weights],
    )


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
    _check_columns(points, [group], "points")
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
