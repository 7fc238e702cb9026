"""A law decides only when it can (law/holdout.py: check_law): the one check that the registry, the per-trial
pruner and the ranked search call, on tables where the answer is known."""

import numpy as np
import pandas as pd
import pytest

from opsd_platform import law
from opsd_platform.law import registry
from opsd_platform.law.holdout import THRESHOLDS, check_law, check_points, constant_loo_rmse
from opsd_platform.search.pruner import GapLawPruner, decide_policy


def points(gaps, improvements, seeds=1):
    return pd.DataFrame([{"config": f"c{i}", "seed": s, "gap": g, "improvement": y}
                         for i, (g, y) in enumerate(zip(gaps, improvements)) for s in range(seeds)])


def noisy_line(n=10, slope=1.5, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(-0.1, 0.6, n)
    return points(gaps, slope * gaps + rng.normal(0, noise, n))


def test_three_collinear_configurations_are_refused():
    """The quick-start's law: 3 points on an exact line, one residual df, an interval of width 0."""
    pts = points([0.0, 0.1, 0.2], [-0.1, 0.1, 0.3])
    fit = law.fit_law(pts)
    assert fit.df_resid == 1 and fit.residual_std == pytest.approx(0, abs=1e-12)
    check = check_points(pts)
    assert not check.usable
    assert check.reason == f"the law may not decide: 3 configurations (needs >= {THRESHOLDS.min_configs})"


def test_an_exact_line_through_many_points_has_a_degenerate_interval():
    gaps = np.linspace(0, 0.5, 7)
    check = check_points(points(gaps, 2 * gaps - 0.1))
    assert not check.usable and "prediction interval has width" in check.reason and check.interval_width < 1e-6


def test_a_slope_interval_containing_zero_is_refused():
    rng = np.random.default_rng(3)
    gaps = rng.uniform(0, 0.5, 12)
    check = check_points(points(gaps, rng.normal(0, 0.05, 12)))  # improvement independent of the gap
    lo, hi = check.slope_ci
    assert lo < 0 < hi
    assert not check.usable and "contains 0" in check.reason


def test_a_law_no_better_than_a_constant_is_refused():
    """Slope clear of 0 in-sample, but leave-one-out says the gap predicts worse than the mean."""
    pts = noisy_line(n=8, noise=0.03)
    fit = law.fit_law(pts)
    const = constant_loo_rmse(law.aggregate(pts)["improvement"])
    assert check_law(fit, loo_rmse=const / 2, constant_rmse=const).usable
    check = check_law(fit, loo_rmse=const * 1.01, constant_rmse=const)
    assert not check.usable and "not below a constant predictor's" in check.reason
    assert not check_law(fit, loo_rmse=None, constant_rmse=const).usable  # no hold-out: nothing shows it predicts


def test_a_real_law_may_decide():
    check = check_points(noisy_line())
    assert check.usable and check.reason.startswith("may decide: 10 configurations")
    assert check.loo_rmse < check.constant_rmse


def test_constant_loo_rmse_is_the_brute_force_one():
    y = np.array([0.1, -0.2, 0.4, 0.05, 0.3])
    brute = np.sqrt(np.mean([(y[i] - np.delete(y, i).mean()) ** 2 for i in range(y.size)]))
    assert constant_loo_rmse(y) == pytest.approx(brute)


def test_registry_refuses_a_degenerate_law_and_the_pruner_says_why(tmp_path):
    """Registered (the evidence is kept) but never @champion, not even forced; the pruner's one line
    says why it trains."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    pts = points([0.0, 0.1, 0.2], [-0.1, 0.1, 0.3])
    out = registry.register_law(law.fit_law(pts), tracking_uri=uri, holdout=law.leave_one_out(pts))
    assert out["decision"] == "refused" and out["aliases"] == [] and "3 configurations" in out["reason"]
    assert registry.promote(version=1, tracking_uri=uri, force=True)["decision"] == "kept"
    pruner = GapLawPruner(uri, record=False)
    decision = decide_policy({"gap": 0.3}, **{**pruner.policy_inputs(_Study(), _Trial()), "n_startup_trials": 0})
    assert decision.action == "train" and decision.rule == "no_law"
    assert "v1 was refused (the law may not decide: 3 configurations" in decision.reason

    good = noisy_line()
    second = registry.register_law(law.fit_law(good), tracking_uri=uri, holdout=law.leave_one_out(good))
    assert second["decision"] == "champion" and second["check"].usable
    decision = decide_policy({"gap": 0.3}, **{**pruner.policy_inputs(_Study(), _Trial()), "n_startup_trials": 0,
                                              "threshold": 5.0})
    assert decision.rule == "law" and decision.law_version == 2  # a usable law decides


def test_the_pruner_refuses_a_registered_law_that_fails_the_check(tmp_path):
    """A version registered before the check (no verdict tag) is judged when the pruner loads it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rng = np.random.default_rng(3)
    gaps = rng.uniform(0, 0.5, 12)
    flat = points(gaps, rng.normal(0, 0.05, 12))
    fit = law.fit_law(flat)
    usable = law.holdout.check_law(fit, loo_rmse=0.001, constant_rmse=1.0)  # as if it had passed when registered
    assert not usable.usable  # the slope interval contains 0 whatever the hold-out says
    out = registry.register_law(fit, tracking_uri=uri, holdout=law.leave_one_out(flat),
                                check=law.holdout.LawCheck(True, "legacy", 12, 10, 1.0, (0.1, 0.2), 0.0, 1.0))
    assert out["aliases"] == ["champion"]
    client = MlflowClient(tracking_uri=uri)
    client.delete_model_version_tag("opsd-gap-law", "1", "usable")
    pruner = GapLawPruner(uri, record=False)
    decision = decide_policy({"gap": 0.3}, **{**pruner.policy_inputs(_Study(), _Trial()), "n_startup_trials": 0})
    assert decision.rule == "law_unusable" and "contains 0" in decision.reason and decision.action == "train"


class _Study:
    def get_trials(self, deepcopy=False, states=()):
        return []


class _Trial:
    number = 0


def test_the_numpy_refit_gives_the_same_verdict_as_the_statsmodels_path():
    """fit_and_check (the search's and the replay's refit) against fit_law + leave_one_out + check_law."""
    from opsd_platform.law.holdout import fit_and_check

    rng = np.random.default_rng(11)
    for n, slope in ((4, 1.0), (6, 1.2), (9, 0.0), (12, 0.8)):
        gaps = rng.uniform(-0.1, 0.5, n)
        pts = points(gaps, slope * gaps + rng.normal(0, 0.05, n), seeds=2)
        slow = check_points(pts)
        fit, rmse, fast = fit_and_check(pts["config"].to_numpy(), pts["gap"], pts["improvement"], 0.9)
        assert (fast.usable, fast.reason.split(":")[0]) == (slow.usable, slow.reason.split(":")[0])
        assert fast.slope_ci == pytest.approx(slow.slope_ci) and fast.constant_rmse == pytest.approx(slow.constant_rmse)
        if slow.loo_rmse is not None:
            assert rmse == pytest.approx(slow.loo_rmse)
