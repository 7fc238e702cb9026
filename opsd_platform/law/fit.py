"""The law fitted: improvement = a + b * gap (+ covariates) by OLS, WLS or HC3 over configuration
means, kept as plain numbers (LawFit) that predict with statsmodels' intervals exactly and
round-trip through JSON (the registered MLflow model is built from ``to_dict()``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from opsd_platform.errors import LawError
from opsd_platform.law.names import METHODS
from opsd_platform.law.points import (
    ABS_VARIANCE_FLOOR,
    FORMAT_VERSION,
    GROUP_COLUMNS,
    REQUIRED_COLUMNS,
    WLS_VARIANCE_FLOOR_FRACTION,
    aggregate,
    numeric_column,
    show_value,
)

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

    def predict_arrays(self, values: Mapping[str, Any],
                       level: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted, lower, upper) arrays: ``predict``'s expressions on numpy arrays, without
        pandas (a search or a replay predicts many times). values: "gap" and each covariate -> values."""
        from scipy import stats

        level = _check_level(self.level if level is None else level)
        missing = [c for c in ("gap", *self.covariates) if c not in values]
        if missing:
            needs = "".join(", " + c for c in self.covariates)
            raise LawError(f"input: missing {missing[0]!r} (this law needs gap{needs})")
        cols = [np.atleast_1d(np.asarray(values[c], dtype=float)) for c in ("gap", *self.covariates)]
        exog = np.column_stack([np.ones(cols[0].size), *cols])
        if not np.isfinite(exog).all():
            raise LawError("input: non-finite gap or covariate")
        mean = exog @ np.asarray(self.params, dtype=float)
        se_obs = np.sqrt((exog * np.dot(np.asarray(self.cov_params, dtype=float), exog.T).T).sum(1)
                         + self.sigma2 / self.new_weight)
        q = stats.t.ppf(1 - (1 - level) / 2.0, self.df_resid)
        return mean, mean - q * se_obs, mean + q * se_obs

    def predict_gaps(self, gaps: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict_arrays`` of a gap-only law."""
        if self.covariates:
            raise LawError(f"predict_gaps: this law needs covariates {self.covariates} besides the gap")
        return self.predict_arrays({"gap": gaps}, level)

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
            lines.append("  WLS weights = 1 / var(config mean improvement); "
                         "a new config is assumed to have the mean weight")
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
    floor = max(WLS_VARIANCE_FLOOR_FRACTION * float(np.median(positive)), ABS_VARIANCE_FLOOR)
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
            raise LawError(f"points: non-finite covariate {cov}={float(values[bad][0])} "
                           f"for config {agg['config'][bad].iloc[0]!r}")
        cols.append(values)
    exog = np.column_stack(cols)
    k = exog.shape[1]
    if n <= k:
        raise LawError(f"need more configurations ({n}) than coefficients "
                       f"({k}: intercept, gap, {', '.join(covariates)})")
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
            values = numeric_column(points, cov, "points")
            bad = ~np.isfinite(values)
            if bad.any():
                row = points.iloc[int(np.flatnonzero(bad)[0])]
                raise LawError(
                    f"points: non-finite covariate {cov}={show_value(row[cov])} for config {row['config']!r} "
                    f"seed {show_value(row['seed'])}"
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


