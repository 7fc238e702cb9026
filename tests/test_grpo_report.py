"""benchmarks.grpo_report on small synthetic tables (test data, not measurements): the intervals
and differences against a direct computation, the law's pick, the failure modes, and a table
without GRPO rows (today's benchmark) that is reported as such."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.grpo_report import report
from opsd_platform.law.export import RUN_COLUMNS, STEP_COLUMNS, STEP_CURVES

REPO = Path(__file__).resolve().parents[1]
LEVEL = 0.9
STEPS = 4
# improvements per seed: OPSD contexts (gap, improvements) and GRPO; seeds differ in number on purpose
OPSD = {"none": (0.0, [0.01, 0.03, -0.02]), "reference": (0.3, [0.10, 0.14, 0.09]),
        "feedback": (0.1, [0.02, 0.06]), "static": (-0.1, [-0.05, -0.01, -0.04])}
GRPO = [0.05, 0.08]
LENGTHS = {"opsd": (20.0, 26.0), "grpo": (20.0, 10.0)}  # first and last training step's response length


def make_table(path: Path, *, grpo=True, curves=True, algorithm_column=True) -> Path:
    runs, steps = [], []
    arms = [("opsd", c, g, imps) for c, (g, imps) in OPSD.items()] + ([("grpo", "none", 0.0, GRPO)] if grpo else [])
    for algo, context, gap, imps in arms:
        for seed, imp in enumerate(imps):
            rid = f"{algo}-{context}-{seed}"
            initial = 0.5 + 0.01 * seed
            runs.append({**{c: 1.0 for c in RUN_COLUMNS}, "run_id": rid, "model": "m", "family": "f",
                         "world": "arithmetic", "context": context, "config": f"{algo}-{context}", "seed": seed,
                         "steps": STEPS, "gap": gap, "val_initial": initial, "val_final": initial + imp,
                         "improvement": imp, "slice": f"{'law' if algo == 'opsd' else 'grpo'}-arithmetic",
                         "algorithm": algo})
            first, last = LENGTHS[algo]
            for s in range(STEPS + 1):
                # the static context collapses mid-run (validation at step 2 far below the start)
                val = initial if s == 0 else (initial - 0.4 if (s == 2 and context == "static") else
                                              initial + imp if s == STEPS else None)
                rollout = None if s == 0 else (0.0 if algo == "grpo" and s == STEPS else 0.5)
                row = {"run_id": rid, "step": s, "rollout_pass_rate": rollout, "val_pass_rate": val,
                       "cpu_s": float(s), "tokens": 10.0 * s, "val_cpu_s": None}
                if curves:
                    row |= {c: None for c in STEP_CURVES}
                    if s > 0:
                        row["rollout_response_len"] = first + (last - first) * (s - 1) / (STEPS - 1)
                steps.append(row)
    # a second world with OPSD rows only: reported as "no GRPO rows", skipped
    runs.append({**runs[0], "run_id": "py-0", "world": "pyfunc", "slice": "law-pyfunc"})
    steps += [{**r, "run_id": "py-0"} for r in steps[: STEPS + 1]]
    runs = pd.DataFrame(runs)
    if not algorithm_column:
        runs = runs.drop(columns=["algorithm"])
    path.mkdir(parents=True, exist_ok=True)
    runs.to_csv(path / "runs.csv", index=False)
    pd.DataFrame(steps).to_csv(path / "steps.csv", index=False)
    return path


def direct_t(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(1 - (1 - LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def direct_welch(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(1 - (1 - LEVEL) / 2, df) * math.sqrt(va + vb)
    d = a.mean() - b.mean()
    return d, d - half, d + half, df


def test_differences_intervals_pick_and_failure_modes_match_a_direct_computation(tmp_path):
    data = make_table(tmp_path / "data")
    out = report(data, LEVEL, ["arithmetic", "pyfunc"], tmp_path / "plot.png")
    arith, py = out["worlds"]
    assert arith["status"] == "compared" and py["status"].startswith("no GRPO rows")
    g = arith["grpo"]["improvement"]
    assert (g["mean"], g["lower"], g["upper"]) == pytest.approx(direct_t(GRPO)) and g["n"] == 2
    by_label = {c["label"]: c for c in arith["opsd"]}
    assert set(by_label) == set(OPSD)
    for context, (_, imps) in OPSD.items():
        c = by_label[context]
        assert (c["improvement"]["mean"], c["improvement"]["lower"], c["improvement"]["upper"]) == pytest.approx(direct_t(imps))
        d = c["minus_grpo"]
        assert (d["diff"], d["lower"], d["upper"], d["df"]) == pytest.approx(direct_welch(imps, GRPO))
        assert (d["n_a"], d["n_b"]) == (len(imps), len(GRPO))
    # the law: OLS on configuration means; its highest prediction is the highest gap when the slope is positive
    gaps = np.array([g for g, _ in OPSD.values()])
    means = np.array([np.mean(i) for _, i in OPSD.values()])
    slope, intercept = np.polyfit(gaps, means, 1)
    pick = arith["law_pick"]
    assert pick["slope"] == pytest.approx(slope) and pick["configs"] == 4
    assert pick["label"] == list(OPSD)[int(np.argmax(intercept + slope * gaps))] == "reference"
    assert pick["predicted"] == pytest.approx(intercept + slope * 0.3)
    assert pick["minus_grpo"]["diff"] == pytest.approx(np.mean(OPSD["reference"][1]) - np.mean(GRPO))
    ref = direct_welch(OPSD["reference"][1], GRPO)
    assert pick["verdict"] == ("OPSD better" if ref[1] > 0 else "undecided (interval contains 0)")
    # failure modes: drift = last - first length per run; static collapses; GRPO's rollout ends at 0
    fail = arith["failure_by_algorithm"]
    assert fail["opsd"]["length_drift"]["mean"] == pytest.approx(6.0) and fail["opsd"]["length_drift"]["n"] == 11
    assert fail["grpo"]["length_drift"]["mean"] == pytest.approx(-10.0) and fail["grpo"]["length_drift"]["n"] == 2
    assert fail["opsd"]["collapsed"] == 3 and by_label["static"]["failure"]["collapsed"] == 3
    assert fail["grpo"]["collapsed"] == 0
    assert (fail["grpo"]["rollout_hit_zero"], fail["grpo"]["rollout_zero_at_end"], fail["opsd"]["rollout_hit_zero"]) == (2, 2, 0)
    noise = np.sqrt(np.mean([np.var(i, ddof=1) for i in [*(i for _, i in OPSD.values()), GRPO]]))
    assert arith["seed_noise"]["std"] == pytest.approx(noise)
    assert out["plot"] and Path(out["plot"]).stat().st_size > 0


def test_a_table_without_grpo_rows_or_curves_is_reported_as_such(tmp_path):
    """Today's benchmark: no GRPO rows, no algorithm column on old rows, steps.csv without the curves."""
    data = make_table(tmp_path / "data", grpo=False, curves=False, algorithm_column=False)
    res = subprocess.run([sys.executable, "-m", "benchmarks.grpo_report", "--data", str(data), "--out",
                          str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no GRPO rows yet" in res.stdout and "every world is skipped" in res.stdout
    out = json.loads((tmp_path / "r.json").read_text())
    assert [w["status"] for w in out["worlds"]] == ["no GRPO rows yet: skipped"] * 2
    assert out["grpo_runs"] == 0 and out["plot"] is None and not (tmp_path / "p.png").exists()


def test_curves_missing_from_an_old_export_leave_drift_unknown(tmp_path):
    data = make_table(tmp_path / "data", curves=False)
    arith = report(data, LEVEL, ["arithmetic"], None)["worlds"][0]
    assert arith["curves_missing"] and arith["failure_by_algorithm"]["grpo"]["length_drift"]["n"] == 0
    assert list(pd.read_csv(data / "steps.csv").columns) == STEP_COLUMNS
