"""The law's robustness checks (law/robust.py) against statsmodels on a fixture table: slices
pooled with a fixed effect each, leverage and Cook's distance, the bootstrap over configurations."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from statsmodels.stats.outliers_influence import OLSInfluence

from opsd_platform.law import LawError
from opsd_platform.law.robust import bootstrap_slope, fixed_effects, influence


def fixture() -> pd.DataFrame:
    """Two slices with one slope (0.8) and intercepts 0.0 and -0.3, two seeds a configuration."""
    rng = np.random.default_rng(3)
    rows = []
    for name, icpt in (("law-a", 0.0), ("law-b", -0.3)):
        for k, gap in enumerate(np.linspace(-0.1, 0.4, 6)):
            for seed in (0, 1):
                rows.append({"config": f"{name}/c{k}", "seed": seed, "gap": gap + rng.normal(0, 0.01),
                             "improvement": icpt + 0.8 * gap + rng.normal(0, 0.03), "slice": name})
    return pd.DataFrame(rows)


def test_fixed_effects_equal_statsmodels_with_a_slice_intercept():
    pts = fixture()
    fit, dummies = fixed_effects(pts, "slice", level=0.9)
    means = pts.groupby("config").agg(gap=("gap", "mean"), improvement=("improvement", "mean"),
                                      slice=("slice", "first")).reset_index()
    ref = smf.ols("improvement ~ gap + C(slice)", data=means).fit()
    assert dummies == ["fe_law_b"]
    assert fit.slope == pytest.approx(ref.params["gap"], rel=1e-9)
    assert fit.coefficient("fe_law_b")["estimate"] == pytest.approx(ref.params["C(slice)[T.law-b]"], rel=1e-9)
    lo, hi = ref.conf_int(alpha=0.1).loc["gap"]
    assert (fit.coefficient("gap")["ci_lower"], fit.coefficient("gap")["ci_upper"]) == pytest.approx((lo, hi), rel=1e-9)
    pooled_without = sm.OLS(means["improvement"], sm.add_constant(means["gap"])).fit()
    assert abs(fit.slope - 0.8) < abs(pooled_without.params["gap"] - 0.8)  # the intercepts no longer bias it
    with pytest.raises(LawError, match="fixed effects need >= 2 values"):
        fixed_effects(pts[pts["slice"] == "law-a"], "slice")


def test_influence_equals_statsmodels_and_flags_the_point_that_carries_the_slope():
    pts = fixture()
    pts = pts[pts["slice"] == "law-a"].copy()
    far = pd.DataFrame([{"config": "far", "seed": s, "gap": 1.5, "improvement": 2.0, "slice": "law-a"} for s in (0, 1)])
    pts = pd.concat([pts, far], ignore_index=True)
    out = influence(pts).set_index("config")
    means = pts.groupby("config", sort=False)[["gap", "improvement"]].mean()
    res = sm.OLS(means["improvement"].to_numpy(), sm.add_constant(means["gap"].to_numpy())).fit()
    ref = OLSInfluence(res)
    assert out["leverage"].to_numpy() == pytest.approx(ref.hat_matrix_diag, rel=1e-9)
    assert out["cooks_d"].to_numpy() == pytest.approx(ref.cooks_distance[0], rel=1e-9)
    assert out.loc["far", "high_leverage"] and out.loc["far", "influential"]
    assert not out.drop(index="far")["high_leverage"].any()


def test_bootstrap_over_configurations_is_reproducible_and_covers_the_slope():
    pts = fixture()
    pts = pts[pts["slice"] == "law-a"]
    a, b = bootstrap_slope(pts, n_boot=500, seed=1), bootstrap_slope(pts, n_boot=500, seed=1)
    assert a == b and a["slope_lo"] < 0.8 < a["slope_hi"] and a["share_positive"] == 1.0
    with pytest.raises(LawError, match=">= 3 configurations"):
        bootstrap_slope(pts[pts["config"].isin(["law-a/c0", "law-a/c1"])])
