"""benchmarks/cheap_gap_report.py on the recorded table: the plumbing from cached estimates to the law."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.cheap_gap import check_student
from benchmarks.cheap_gap_report import report
from opsd_platform.gap.estimators import ESTIMATORS
from tests.helpers import ROOT

DATA = ROOT / "benchmarks" / "data"


def fake_cache(slice_name: str, estimate_of: dict) -> dict:
    """A cache entry per recorded run of the slice, estimator `name` set to estimate_of[name](run)
    (the recorded gap for the others)."""
    runs = pd.read_csv(DATA / "runs.csv")
    cache = {}
    for _, run in runs[runs["slice"] == slice_name].iterrows():
        est = {}
        for name in (*ESTIMATORS, "is_teacher_pass_rate", "is_ess"):
            value = float(estimate_of.get(name, lambda r: r["gap"])(run))
            est[name] = {"value": value, "ci": [value, value], "level": 0.95}
        cache[run["point"]] = {"estimates": est, "cpu_s": 10.0, "teacher_coverage": 1.0, "student_pass_rate": 0.3}
    cache[f"student/{slice_name}/seed0"] = {"all_equal": True, "cpu_s": 30.0}
    return cache


def test_estimators_replace_the_gap_in_the_projects_law(tmp_path):
    # cov_pooled, cov_within: the recorded gap itself; ll_diff: an affine map of it
    doc = report(fake_cache("law-arithmetic", {"ll_diff": lambda run: 2 * run["gap"] + 1}), DATA,
                 tmp_path / "r.json", None, progress=lambda *_: None)
    (s,) = doc["slices"]
    v = s["variables"]
    assert s["runs"] == 20 and s["configs"] == 10
    for name in ("cov_pooled", "cov_within"):  # the gap's law exactly
        assert v[name]["slope"] == pytest.approx(v["gap"]["slope"])
        assert v[name]["loo_rmse"] == pytest.approx(v["gap"]["loo_rmse"])
        assert v[name]["corr_with_gap"] == pytest.approx(1.0)
    # a scaled gap scales the slope, not the out-of-sample error
    assert v["ll_diff"]["slope"] == pytest.approx(v["gap"]["slope"] / 2)
    assert v["ll_diff"]["loo_rmse"] == pytest.approx(v["gap"]["loo_rmse"])
    assert s["cost"]["scoring_cpu_s"] == 10.0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["goal"]["slices_where_the_law_holds"] == ["law-arithmetic"]
    # equal error, and 10 CPU-s is under 2 % of a recorded arithmetic training (~577 CPU-s)
    assert written["goal"]["cov_pooled"]["met"]


def test_check_student_compares_per_problem_passes():
    class Ev:
        per_problem = [0.5, 0.25]
        pass_rate = 0.375

    class Student:
        evaluation = Ev()

    recorded = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "student_passes": [2, 1, 2, 0]})
    check = check_student(Student(), recorded, n=4)
    assert [r["equal"] for r in check["runs"]] == [True, False] and not check["all_equal"]
    assert np.isclose(check["runs"][1]["recorded_pass_rate"], 0.25)
    nothing = check_student(Student(), recorded.iloc[0:0], n=4)  # no recorded run yet: no verdict
    assert nothing["runs"] == [] and nothing["all_equal"] is None


def test_an_unknown_slice_is_one_line_and_exit_2(capsys, tmp_path):
    from benchmarks.cheap_gap import main

    assert main(["--slices", "law-nope", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "law-nope" in err and "law-arithmetic" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing measured or written


def test_another_grid_takes_its_own_law_slices_and_an_unknown_grid_is_one_line(capsys, tmp_path):
    from benchmarks.cheap_gap import main

    assert main(["--grid", "bench-v2", "--slices", "law-arithmetic", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench-v2" in err and "law-arithmetic-v2" in err and len(err.splitlines()) == 1
    assert main(["--grid", "bench-v9", "--cache", str(tmp_path)]) == 2
    assert "bench-v9" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_a_student_side_without_recorded_runs_is_not_counted_as_unequal():
    from benchmarks.cheap_gap_report import student_sides_equal

    recorded = {"runs": [{"run_id": "a", "equal": True}, {"run_id": "b", "equal": True}]}
    queued = {"runs": []}  # a seed whose runs the grid has not recorded yet
    assert student_sides_equal({"s/seed0": recorded, "s/seed2": queued}) is True
    assert student_sides_equal({"s/seed0": {"runs": [{"run_id": "a", "equal": False}]}, "s/seed2": queued}) is False
    assert student_sides_equal({"s/seed2": queued}) is None
