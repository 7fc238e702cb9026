"""bench-v2's goal checks on a fixture table (benchmarks/goal_checks.py)."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.goal_checks import controls_against_law, graded_dial, none_drift


def table(rows):
    """rows: (context, graded_fraction, seed, gap, improvement) -> a law slice as export writes it."""
    out = pd.DataFrame(rows, columns=["context", "graded_fraction", "seed", "gap", "improvement"])
    out["config"] = [f"{c}@{f}" for c, f in zip(out["context"], out["graded_fraction"])]
    out["run_id"] = [f"r{i}" for i in range(len(out))]
    out = out.assign(slice="law-x", family="smollm2", world="arithmetic", model="m", context_tokens=10.0, steps=20,
                     algorithm="opsd")
    return out


def test_none_drift_is_judged_against_twice_the_seed_std():
    law = table([("none", None, 0, 0.0, 0.05), ("none", None, 1, 0.0, 0.07)])
    assert none_drift(law, {"law-x": 0.04})[0]["within"] is True  # 0.06 <= 0.08
    assert none_drift(law, {"law-x": 0.02})[0]["within"] is False  # 0.06 > 0.04
    assert none_drift(law, {})[0]["within"] is None  # no seed noise yet: no verdict


def test_none_drift_has_a_sampling_bar_that_does_not_depend_on_the_other_contexts():
    law = table([("none", None, 0, 0.0, 0.05), ("none", None, 1, 0.0, 0.07)])
    law = law.assign(val_initial=0.5, val_final=[0.55, 0.57], **{"world.n_val": 64, "rollout.val_samples": 4})
    [row] = none_drift(law, {"law-x": 0.3})
    # per run: 0.25/256 + p1(1-p1)/256; the mean of two runs: sqrt(sum) / 2
    expected = 2 * np.sqrt(0.25 / 256 * 2 + (0.55 * 0.45 + 0.57 * 0.43) / 256) / 2
    assert row["sampling_bar"] == pytest.approx(expected)  # ~0.062
    assert row["within"] is True and row["within_sampling"] is True  # 0.06 inside both
    drifted = law.assign(improvement=[0.10, 0.12], val_final=[0.60, 0.62])
    [row] = none_drift(drifted, {"law-x": 0.3})
    assert row["within"] is True and row["within_sampling"] is False  # the wide seed bar hides a drift of 0.11
    assert none_drift(table([("none", None, 0, 0.0, 0.05)]), {})[0]["within_sampling"] is None  # no sizes


def test_graded_dial_is_monotone_only_when_the_gap_never_falls_with_the_share():
    shares = ((0.2, 0.0), (0.4, 0.1), (0.6, 0.2))
    rising = table([("graded", f, s, g + 0.01 * s, 0.1) for f, g in shares for s in (0, 1)])
    [row] = graded_dial(rising)
    assert row["monotone"] and row["spearman_rho"] == pytest.approx(1.0) and row["shares"] == "0.2 / 0.4 / 0.6"
    dip = table([("graded", 0.2, 0, 0.1, 0.0), ("graded", 0.4, 0, 0.05, 0.0), ("graded", 0.6, 0, 0.3, 0.0)])
    assert graded_dial(dip)[0]["monotone"] is False


def test_a_dial_fall_within_two_standard_errors_of_the_gaps_is_noise_and_a_larger_one_is_not():
    z = 1.959963984540054  # the 0.95 interval's half width in standard errors
    dip = table([("graded", 0.2, 0, 0.10, 0.0), ("graded", 0.4, 0, 0.05, 0.0), ("graded", 0.6, 0, 0.30, 0.0)])
    wide = dip.assign(gap_lower=dip["gap"] - 0.05 * z, gap_upper=dip["gap"] + 0.05 * z)  # se 0.05 a gap
    [row] = graded_dial(wide)
    assert row["monotone"] is False and row["largest_fall"] == pytest.approx(0.05)
    assert row["fall_se"] == pytest.approx(0.05 * np.sqrt(2))  # two independent gaps
    assert row["monotone_within_noise"] is True  # 0.05 <= 2 x 0.071
    narrow = dip.assign(gap_lower=dip["gap"] - 0.01 * z, gap_upper=dip["gap"] + 0.01 * z)
    assert graded_dial(narrow)[0]["monotone_within_noise"] is False  # 0.05 > 2 x 0.014
    # two seeds a share: the mean's standard error halves the variance
    two = pd.concat([wide, wide.assign(seed=1)])
    assert graded_dial(two)[0]["fall_se"] == pytest.approx(0.05)
    assert graded_dial(dip)[0]["monotone_within_noise"] is None  # no intervals in the table: no verdict


def test_a_control_far_above_the_law_of_the_other_contexts_is_outside_its_interval():
    rng = np.random.default_rng(0)
    rows = [(f"c{i}", None, s, g, 0.5 * g + rng.normal(0, 0.01)) for i, g in enumerate(np.linspace(-0.2, 0.3, 6))
            for s in (0, 1)]
    rows += [("none", None, s, 0.0, 0.0) for s in (0, 1)]
    rows += [("shuffled_reference", None, s, -0.3, 0.3) for s in (0, 1)]  # improves although its gap is negative
    rows += [("retry", None, s, 0.0, 0.0) for s in (0, 1)]  # where its gap puts it
    by = {r["control"]: r for r in controls_against_law(table(rows), level=0.9)}
    assert by["shuffled_reference"]["inside"] is False and by["shuffled_reference"]["residual"] > 0.4
    assert by["retry"]["inside"] is True and by["retry"]["predicted"] == pytest.approx(0.0, abs=0.02)
