"""benchmarks/live_search.py on the tiny model: a real law-pruned `opsd search` over a recorded
slice's points, and the replay of its trial order, agree trial by trial when the measurements do
(same machine, same kernels: a seed reproduces its recorded run bitwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.live_search import compare, live_trials, main, slice_settings, space_document
from benchmarks.replay import replay_settings
from opsd_platform.law.export import export
from opsd_platform.law.settings import ExportConfig
from opsd_platform.search.space import parse_space
from tests.helpers import FIXTURES, ROOT

TINY = yaml.safe_load((FIXTURES / "grid_tiny.yaml").read_text())


def synthetic_law_rows(data: Path, gaps: list[float]) -> None:
    """Append a law slice to an exported table: copies of its first run with given gaps and
    improvement = gap - 0.5 plus a small offset per configuration (test data for the law's fit, as
    test_grid's law_table; not a measurement): off an exact line, so the law's interval has a width."""
    runs, steps = (pd.read_csv(data / name, dtype=str, keep_default_na=False) for name in ("runs.csv", "steps.csv"))
    first = runs.iloc[0]
    rows, step_rows = [], []
    for i, g in enumerate(gaps):
        for s in (0, 1):
            rid = f"synthetic-{i}-{s}"
            y = g - 0.5 + (0.01 if s else -0.01) + 0.02 * (i % 3 - 1)
            rows.append({**first.to_dict(), "run_id": rid, "slice": "law-synthetic", "config": f"synthetic{i}", "seed": str(s),
                         "context": f"c{i}", "gap": str(g), "improvement": str(y), "val_final": str(float(first["val_initial"]) + y),
                         "gap_key": f"k{i}-{s}", "gap_student_key": f"s{s}", "val_key": f"v{s}"})
            part = steps[steps["run_id"] == first["run_id"]].copy()
            part["run_id"] = rid
            part.loc[part["val_pass_rate"] != "", "val_pass_rate"] = ""
            part.iloc[-1, part.columns.get_loc("val_pass_rate")] = str(float(first["val_initial"]) + y)
            step_rows.append(part)
    pd.concat([runs, pd.DataFrame(rows)]).to_csv(data / "runs.csv", index=False)
    pd.concat([steps, *step_rows]).to_csv(data / "steps.csv", index=False)


def test_a_space_of_a_slices_points_lists_its_configurations_and_seeds():
    base, configs, seeds = slice_settings("benchmark", "law-arithmetic")
    assert "world=arithmetic" in base and ["context=graded", "graded_fraction=0.5"] in configs and seeds == [0, 1]
    space = parse_space(space_document(configs, seeds), "x")
    assert [p.key for p in space] == ["config", "seed"] and len(space[0].choices) == len(configs)


def test_a_live_search_and_the_replay_of_its_order_decide_and_measure_the_same(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny-live", "seeds": [0, 1], "base": TINY["base"],
                                    "slices": [{"name": "law-searched", "configs": [["context=reference"], ["context=none"]]}]}))
    recorded = f"sqlite:///{tmp_path}/recorded/mlflow.db"
    env = {**os.environ, "OPSD_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "opsd_platform.cli", "grid", f"grid.spec={spec}", "grid.workers=0",
                          "grid.exported=null", f"tracking.uri={recorded}"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = tmp_path / "data"
    export(recorded, "opsd", ExportConfig(grid="tiny-live", out=str(data)))
    synthetic_law_rows(data, [0.0, 0.15, 0.3, 0.45, 0.6])  # 5 configurations: a law that may decide (law/holdout.py: check_law)

    live = f"sqlite:///{tmp_path}/live/mlflow.db"  # a fresh store: the live search measures everything again
    common = ["--data", str(data), "--spec", str(spec), "--search-slice", "law-searched", "--law-slice", "law-synthetic",
              "--study", "live", "--trials", "4", "--startup", "1", "--calibration-rate", "0", f"tracking.uri={live}"]
    assert main(["run", *common]) == 0
    trials = live_trials(f"sqlite:///{tmp_path}/live/optuna.db", "live", live, slice_settings(str(spec), "law-searched")[0])
    assert [t.state for t in trials].count("complete") >= 1 and "pruned" in [t.state for t in trials]
    doc = compare(trials, str(data), "law-searched", "law-synthetic",
                  replay_settings(n_startup_trials=1, calibration_rate=0.0, refit_every=0), order=0)
    assert doc["agree"] == doc["n"] == 4
    for row in doc["trials"]:
        assert row["gap_live"] == row["gap_recorded"], row  # the same seed on the same machine: bitwise
        assert row["state_live"] == row["state_replay"] and row["differs_by"] is None
        if row["state_live"] == "complete":
            assert row["improvement_live"] == row["improvement_recorded"]
    # the live search paid what the replay says a pruned trial pays: its gap only (no validation, no training)
    c = doc["cpu_s"]
    assert 0 < c["law_live_gap"] <= c["law_live"] and c["law_live"] < c["none_recorded"] + c["law_live_gap"] * 10
    assert np.isfinite(doc["compute_ratio"]["live"]) and np.isfinite(doc["compute_ratio"]["replay"])
    again = main(["compare", *common, "--out", str(tmp_path / "cmp.json")])
    assert again == 0 and (tmp_path / "cmp.json").is_file()


def test_the_same_slice_searched_and_fitted_is_refused(capsys):
    assert main(["compare", "--search-slice", "law-arithmetic", "--law-slice", "law-arithmetic"]) == 2
    assert "the same" in capsys.readouterr().err
