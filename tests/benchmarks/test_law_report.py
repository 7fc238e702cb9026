"""benchmarks/law_report.py's pure parts on fixture tables (the whole report on an export:
tests/search/test_grid.py)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.law_report import seed_noise


def test_seed_noise_states_the_floor_no_law_on_configuration_means_can_beat():
    # three configurations: two with two seeds, one with four
    imps = {"a": [0.1, 0.3], "b": [-0.2, 0.0], "c": [0.0, 0.1, 0.2, 0.1]}
    runs = pd.DataFrame([{"slice": "law-x", "config": c, "improvement": v} for c, vs in imps.items() for v in vs])
    [row] = seed_noise(runs).to_dict(orient="records")
    within = np.sqrt(np.mean([np.var(v, ddof=1) for v in imps.values()]))
    assert row["seed_std"] == pytest.approx(within)
    assert row["noise_floor_rmse"] == pytest.approx(within * np.sqrt((1 / 2 + 1 / 2 + 1 / 4) / 3))
    assert row["anova_p"] == pytest.approx(stats.f_oneway(*imps.values()).pvalue)
    one_seed = seed_noise(runs.drop_duplicates("config"))  # no configuration with two seeds: no noise known
    assert np.isnan(one_seed["seed_std"][0]) and np.isnan(one_seed["noise_floor_rmse"][0])


def test_a_point_repeated_in_another_slice_is_counted_once_and_a_differing_repeat_is_reported():
    from benchmarks.law_report import one_run_per_point

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "slice": ["pilot", "pilot", "law", "law"],
                         "config": ["x", "y", "x", "z"], "seed": [0, 0, 0, 0],
                         "improvement": [0.1, 0.2, 0.1, 0.3]})
    kept, repeats = one_run_per_point(runs)
    assert list(kept["run_id"]) == ["a", "b", "d"] and repeats == {"dropped": 1, "differ": 0}
    _, repeats = one_run_per_point(runs.assign(improvement=[0.1, 0.2, 0.15, 0.3]))
    assert repeats == {"dropped": 1, "differ": 1}  # a repeat that did not reproduce is said, not hidden
    _, repeats = one_run_per_point(runs.assign(seed=[0, 0, 1, 0]))
    assert repeats["dropped"] == 0  # another seed of the same configuration is no repeat
