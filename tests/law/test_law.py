"""The gap law against statsmodels run directly, and its out-of-sample / family / error paths."""

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from opsd_platform import law
from opsd_platform.law import LawError, LawFit


def make_points(n_configs=8, seeds=3, slope=1.5, intercept=0.0, noise=0.03, families=("smollm2",), seed=0,
                slopes=None, hetero=False):
    """Synthetic raw points: per config a true gap; improvement = intercept + slope * gap + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for f, fam in enumerate(families):
        b = slopes[f] if slopes is not None else slope
        for i in range(n_configs):
            gap = rng.uniform(-0.1, 0.7)
            sd = noise * (1 + 3 * (i % 2)) if hetero else noise
            for s in range(seeds):
                rows.append(
                    {
                        "config": f"{fam}/arith/ctx{i}",
                        "seed": s,
                        "gap": gap + rng.normal(0, 0.01),
                        "improvement": intercept + b * gap + rng.normal(0, sd),
                        "context": f"ctx{i}",
                        "world": "arith" if i % 2 else "rule",
                        "family": fam,
                        "context_tokens": 50.0 * i + rng.normal(0, 5),
                    }
                )
    return pd.DataFrame(rows)


def sm_fit(points, method, covariates=()):
    agg = law.aggregate(points)
    X = sm.add_constant(agg[["gap", *covariates]].to_numpy(float), has_constant="add")
    y = agg["improvement"].to_numpy(float)
    if method == "ols":
        return sm.OLS(y, X).fit(), X, None
    if method == "hc3":
        return sm.OLS(y, X).fit(cov_type="HC3", use_t=True), X, None
    var = (agg["improvement_std"] ** 2 / agg["n_seeds"]).to_numpy(float)
    w = 1.0 / var  # every synthetic config has >= 2 seeds and positive variance; no floor hit below
    return sm.WLS(y, X, weights=w).fit(), X, w


@pytest.fixture(scope="module")
def points():
    return make_points(n_configs=9, hetero=True)


def test_aggregate(points):
    agg = law.aggregate(points)
    assert len(agg) == 9 and list(agg.columns[:6]) == ["config", "gap", "improvement", "gap_std", "improvement_std", "n_seeds"]
    one = points[points["config"] == "smollm2/arith/ctx3"]
    row = agg.set_index("config").loc["smollm2/arith/ctx3"]
    assert row["gap"] == pytest.approx(one["gap"].mean())
    assert row["improvement_std"] == pytest.approx(one["improvement"].std(ddof=1))
    assert row["n_seeds"] == 3 and row["family"] == "smollm2" and row["world"] == "arith"
    assert row["context_tokens"] == pytest.approx(one["context_tokens"].mean())
    single = law.aggregate(points.groupby("config").head(1))
    assert (single["gap_std"] == 0).all() and (single["n_seeds"] == 1).all()
    bad = points.copy()
    bad.loc[bad.index[0], "family"] = "other"
    with pytest.raises(LawError, match="'family' must be constant.*smollm2/arith/ctx0"):
        law.aggregate(bad)


@pytest.mark.parametrize("method", ["ols", "wls", "hc3"])
def test_fit_matches_statsmodels(points, method):
    # the floor must not bind for the WLS comparison to use the plain 1/var weights
    fit = law.fit_law(points, method=method, level=0.9)
    res, X, w = sm_fit(points, method)
    np.testing.assert_allclose(fit.params, res.params, rtol=1e-10)
    np.testing.assert_allclose([c["std_err"] for c in fit.coefficients], res.bse, rtol=1e-10)
    np.testing.assert_allclose([c["p"] for c in fit.coefficients], res.pvalues, rtol=1e-8)
    np.testing.assert_allclose([[c["ci_lower"], c["ci_upper"]] for c in fit.coefficients], res.conf_int(0.1), rtol=1e-10)
    assert fit.r2 == pytest.approx(res.rsquared, rel=1e-10)
    assert fit.adj_r2 == pytest.approx(res.rsquared_adj, rel=1e-10)
    assert fit.n_configs == 9 and fit.n_points == 27 and fit.method == method
    new = np.array([-0.05, 0.0, 0.2, 0.45, 0.9])
    Xn = sm.add_constant(new[:, None], has_constant="add")
    for level in (0.9, 0.5):
        kw = {} if w is None else {"weights": w.mean()}  # WLS: a new config gets the mean weight
        ref = res.get_prediction(Xn, **kw).summary_frame(alpha=1 - level)
        got = fit.predict(pd.DataFrame({"gap": new}), level=level)
        np.testing.assert_allclose(got["predicted_improvement"], ref["mean"], rtol=1e-10)
        np.testing.assert_allclose(got["lower"], ref["obs_ci_lower"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["upper"], ref["obs_ci_upper"], rtol=1e-10, atol=1e-12)


def test_wls_floor_and_single_seed():
    pts = make_points(n_configs=6, seed=3)
    # config 0: seeds agree exactly (zero variance); config 1: a single seed (variance unknown)
    pts.loc[pts["config"] == "smollm2/arith/ctx0", "improvement"] = 0.2
    pts = pts[~((pts["config"] == "smollm2/arith/ctx1") & (pts["seed"] > 0))]
    fit = law.fit_law(pts, method="wls")
    w = np.array(fit.weights)
    assert np.isfinite(w).all() and w.mean() == pytest.approx(1.0)
    assert w.max() / np.median(w) <= 1 / law.WLS_VARIANCE_FLOOR_FRACTION + 1e-9


def test_recovers_known_slope():
    pts = make_points(n_configs=12, slope=1.5, intercept=0.0, noise=0.05, seed=7)
    fit = law.fit_law(pts, level=0.95)
    gap, icpt = fit.coefficient("gap"), fit.coefficient("intercept")
    assert gap["ci_lower"] < 1.5 < gap["ci_upper"]
    assert icpt["ci_lower"] < 0.0 < icpt["ci_upper"]
    assert fit.r2 > 0.9 and fit.pearson_r > 0.95 and fit.pearson_p < 1e-4
    assert "gap law (OLS" in fit.summary() and "R^2" in fit.summary()


def test_loo_equals_press_and_brute_force(points):
    loo = law.leave_one_out(points)
    res, X, _ = sm_fit(points, "ols")
    table = loo["table"]
    np.testing.assert_allclose(table["residual"], res.get_influence().resid_press, rtol=1e-8, atol=1e-12)
    agg = law.aggregate(points)
    for i in (0, 4):
        keep = np.arange(len(agg)) != i
        r = sm.OLS(agg["improvement"][keep].to_numpy(), X[keep]).fit()
        ref = r.get_prediction(X[[i]]).summary_frame(alpha=0.1)
        assert table["predicted"][i] == pytest.approx(ref["mean"][0], rel=1e-10)
        assert table["lower"][i] == pytest.approx(ref["obs_ci_lower"][0], rel=1e-10)
    assert loo["rmse"] == pytest.approx(np.sqrt((table["residual"] ** 2).mean()))
    assert loo["mae"] == pytest.approx(table["residual"].abs().mean())
    assert loo["coverage"] == pytest.approx(table["covered"].mean()) and loo["n"] == 9 and loo["skipped"] == []
    small = law.leave_one_out(make_points(n_configs=3))  # removing any config leaves 2: all skipped
    assert small["n"] == 0 and len(small["skipped"]) == 3 and "at least 3" in small["skipped"][0]["reason"]
    assert law.leave_one_out(points, method="wls")["n"] == 9


def test_grouped_holdout():
    pts = make_points(n_configs=5, families=("smollm2", "qwen", "gemma"), seed=2)
    tiny = make_points(n_configs=1, families=("olmo",), seed=4)
    out = law.grouped_holdout(pd.concat([pts, tiny]), "family")
    assert out["kind"] == "grouped" and out["n"] == 16 and out["skipped"] == []
    assert {g["group"] for g in out["per_group"]} == {"smollm2", "qwen", "gemma", "olmo"}
    assert out["rmse"] < 0.1 and 0 <= out["coverage"] <= 1
    # two families of 2 configs each: holding one out leaves 2 configs -> skipped, not a crash
    two = make_points(n_configs=2, families=("a", "b"))
    res = law.grouped_holdout(two, "family")
    assert res["n"] == 0 and [s["group"] for s in res["skipped"]] == ["a", "b"]
    assert "need at least 3 configurations" in res["skipped"][0]["reason"]
    with pytest.raises(LawError, match="missing column 'nope'"):
        law.grouped_holdout(pts, "nope")


def test_family_slopes():
    diff = law.family_slopes(make_points(n_configs=6, families=("a", "b"), slopes=(1.5, 0.5), noise=0.02, seed=5))
    assert diff["equal_slopes"]["p"] < 1e-3 and diff["equal_slopes"]["df_num"] == 1
    assert diff["families"]["a"]["slope"] == pytest.approx(1.5, abs=0.15)
    assert diff["families"]["b"]["slope"] == pytest.approx(0.5, abs=0.15)
    same_pts = make_points(n_configs=6, families=("a", "b", "c"), slopes=(1.5, 1.5, 1.5), noise=0.02, seed=6)
    same = law.family_slopes(same_pts)
    assert same["equal_slopes"]["p"] > 0.05 and same["equal_slopes"]["df_num"] == 2
    assert same["pooled"].slope == pytest.approx(1.5, abs=0.1)
    # the same test written as statsmodels formulas
    import statsmodels.formula.api as smf

    agg = law.aggregate(same_pts)
    f_full = smf.ols("improvement ~ gap * C(family)", agg).fit()
    f_red = smf.ols("improvement ~ gap + C(family)", agg).fit()
    assert same["equal_slopes"]["F"] == pytest.approx(f_full.compare_f_test(f_red)[0], rel=1e-8)
    one = law.family_slopes(make_points(n_configs=5))
    assert "needs >= 2 families" in one["equal_slopes"]["note"] and one["pooled"] is not None


def test_covariates(points):
    fit = law.fit_law(points, covariates=["context_tokens"])
    res, X, _ = sm_fit(points, "ols", covariates=["context_tokens"])
    np.testing.assert_allclose(fit.params, res.params, rtol=1e-10)
    assert fit.columns == ["intercept", "gap", "context_tokens"]
    new = pd.DataFrame({"gap": [0.1, 0.4], "context_tokens": [100.0, 300.0]})
    ref = res.get_prediction(sm.add_constant(new.to_numpy(), has_constant="add")).summary_frame(alpha=0.1)
    np.testing.assert_allclose(fit.predict(new)["upper"], ref["obs_ci_upper"], rtol=1e-10)
    with pytest.raises(LawError, match="missing covariate 'context_tokens'"):
        fit.predict(pd.DataFrame({"gap": [0.1]}))
    with pytest.raises(LawError, match="missing covariate column 'steps'"):
        law.fit_law(points, covariates=["steps"])
    with pytest.raises(LawError, match="collinear"):
        law.fit_law(points.assign(steps=50), covariates=["steps"])
    assert law.leave_one_out(points, covariates=["context_tokens"])["n"] == 9


@pytest.mark.parametrize("method", ["ols", "wls", "hc3"])
def test_round_trip(points, method):
    fit = law.fit_law(points, method=method, covariates=["context_tokens"], level=0.8)
    text = json.dumps(fit.to_dict(), allow_nan=False)
    back = LawFit.from_dict(json.loads(text))
    new = pd.DataFrame({"gap": [-0.2, 0.3, 0.8], "context_tokens": [10.0, 200.0, 400.0]})
    pd.testing.assert_frame_equal(back.predict(new), fit.predict(new), check_exact=True)
    pd.testing.assert_frame_equal(back.predict(new, 0.99), fit.predict(new, 0.99), check_exact=True)
    assert back.to_dict() == fit.to_dict() and back.slope == fit.slope
    with pytest.raises(LawError, match="unsupported format"):
        LawFit.from_dict({**fit.to_dict(), "format": 99})


def test_errors(points):
    two = points[points["config"].isin(["smollm2/arith/ctx0", "smollm2/arith/ctx1"])]
    with pytest.raises(LawError, match=r"^need at least 3 configurations, got 2: smollm2/arith/ctx0, smollm2/arith/ctx1$"):
        law.fit_law(two)
    flat = points.assign(gap=points["config"].map(lambda c: 0.25))
    with pytest.raises(LawError, match=r"same gap \(0.25\)"):
        law.fit_law(flat)
    nan = points.copy()
    nan.loc[5, "improvement"] = np.nan
    with pytest.raises(LawError, match="non-finite improvement=nan for config 'smollm2/arith/ctx1' seed 2"):
        law.fit_law(nan)
    inf = points.copy()
    inf.loc[0, "gap"] = np.inf
    with pytest.raises(LawError, match="non-finite gap=inf for config 'smollm2/arith/ctx0' seed 0"):
        law.fit_law(inf)
    with pytest.raises(LawError, match="missing column 'gap'"):
        law.fit_law(points.drop(columns="gap"))
    with pytest.raises(LawError, match="method must be one of"):
        law.fit_law(points, method="lasso")
    with pytest.raises(LawError, match="seed 0 appears 2 times"):
        law.fit_law(pd.concat([points, points.iloc[[0]]]))
    fit = law.fit_law(points)
    with pytest.raises(LawError, match=r"level must be in \(0, 1\)"):
        fit.predict(pd.DataFrame({"gap": [0.1]}), level=1.0)
    with pytest.raises(LawError, match="non-finite gap=nan in row 'b'"):
        fit.predict(pd.DataFrame({"gap": [0.1, np.nan]}, index=["a", "b"]))
    with pytest.raises(LawError, match="'gap' must be numeric"):
        fit.predict(pd.DataFrame({"gap": ["0.1"]}))
    # HC3 is undefined when a config has leverage 1
    lev = make_points(n_configs=3, seed=1)
    lev.loc[lev["config"] == "smollm2/arith/ctx1", "gap"] = lev.loc[lev["config"] == "smollm2/arith/ctx0", "gap"].to_numpy()
    with pytest.raises(LawError, match="leverage 1"):
        law.fit_law(lev, method="hc3")


def test_equal_improvements_give_undefined_r2_not_minus_infinity():
    import math
    import warnings

    points = pd.DataFrame({"config": ["a", "b", "c"], "seed": [0, 0, 0], "gap": [0.0, 0.1, 0.2],
                           "improvement": [0.05, 0.05, 0.05]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = law.fit_law(points)
    assert fit.slope == pytest.approx(0.0, abs=1e-12) and math.isnan(fit.r2)
