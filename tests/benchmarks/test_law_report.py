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
