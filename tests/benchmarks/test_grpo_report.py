"""benchmarks.grpo_report on small synthetic tables (test data, not measurements): the intervals
and differences (Welch and paired by seed) against a direct computation, the law's pick, the failure
modes, a table without GRPO rows that is reported as such, and --grid."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.grpo_report import judged, main, paired_difference, report, welch_difference
from opsd_platform.law.export import RUN_COLUMNS, STEP_COLUMNS, STEP_CURVES
from tests.helpers import ROOT

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
                         "algorithm": algo, "grid": "bench-v1"})
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
    # Welch's interval contains 0 here; the verdict reads the paired one (seeds 0 and 1), which does not
    assert direct_welch(OPSD["reference"][1], GRPO)[1] < 0 < direct_paired(OPSD["reference"][1][:2], GRPO)[1]
    assert (pick["verdict"], pick["verdict_from"]) == ("OPSD better", "paired")
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
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def direct_paired(a, b):
    d = np.asarray(a, float) - np.asarray(b, float)
    half = stats.t.ppf(1 - (1 - LEVEL) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_the_paired_difference_is_scipys_paired_t_interval_over_the_seeds_both_sides_ran():
    opsd = pd.Series([0.10, 0.14, 0.09, 0.30], index=[0, 1, 2, 7])  # seed 7 has no GRPO run: left out
    grpo = pd.Series([0.05, 0.08, 0.02, 0.11], index=[2, 1, 0, 3])  # seed 3 has no OPSD run: left out
    p = paired_difference(opsd, grpo, LEVEL)
    a, b = [0.10, 0.14, 0.09], [0.02, 0.08, 0.05]  # seeds 0, 1, 2 matched by seed, not by position
    ref = stats.ttest_rel(a, b).confidence_interval(confidence_level=LEVEL)
    assert (p["diff"], p["lower"], p["upper"]) == pytest.approx((np.mean(a) - np.mean(b), ref.low, ref.high))
    assert (p["diff"], p["lower"], p["upper"]) == pytest.approx(direct_paired(a, b))
    assert (p["n"], p["df"], p["per_seed"]) == (3, 2, pytest.approx({0: 0.08, 1: 0.06, 2: 0.04}))
    # narrower than Welch here: the seeds' shared difficulty cancels within a seed
    assert p["upper"] - p["lower"] < (w := welch_difference(a, b, LEVEL))["upper"] - w["lower"]
    assert judged(w, p) == {"verdict": "OPSD better", "verdict_from": "paired"}


def test_one_paired_seed_or_identical_differences_give_no_paired_interval_and_welch_decides():
    one = paired_difference(pd.Series([0.1, 0.2], index=[0, 5]), pd.Series([0.05, 0.0], index=[0, 1]), LEVEL)
    assert (one["n"], one["diff"]) == (1, pytest.approx(0.05)) and math.isnan(one["lower"]) and math.isnan(one["df"])
    same = paired_difference(pd.Series([0.25, 0.5]), pd.Series([0.0, 0.25]), LEVEL)
    assert (same["n"], same["diff"], same["df"]) == (2, 0.25, 1) and math.isnan(same["upper"])
    welch = welch_difference([0.25, 0.5], [0.0, 0.25], LEVEL)
    assert judged(welch, same)["verdict_from"] == judged(welch, one)["verdict_from"] == "welch"


def test_the_report_pairs_by_seed_and_judges_from_the_paired_interval(tmp_path):
    out = report(make_table(tmp_path / "data"), LEVEL, ["arithmetic"], None)
    arith = out["worlds"][0]
    for c in arith["opsd"]:
        imps = OPSD[c["label"]][1]
        p = c["minus_grpo_paired"]
        assert p["n"] == 2 and list(p["per_seed"]) == [0, 1]  # the OPSD seed 2 has no GRPO partner
        assert (p["diff"], p["lower"], p["upper"]) == pytest.approx(direct_paired(imps[:2], GRPO))
        assert c["verdict_from"] == "paired"
        assert c["verdict"] == ("OPSD better" if p["lower"] > 0 else "GRPO better" if p["upper"] < 0
                                else "undecided (interval contains 0)")
    reference = next(c for c in arith["opsd"] if c["label"] == "reference")
    assert arith["law_pick"]["minus_grpo_paired"] == reference["minus_grpo_paired"]


def add_bench_v2(data: Path) -> Path:
    """bench-v2 beside bench-v1: law and GRPO slices renamed -v2 (improvements shifted so the grids
    differ), a pilot slice of each algorithm, and a Gemma law slice that GRPO never ran on."""
    runs, steps = pd.read_csv(data / "runs.csv"), pd.read_csv(data / "steps.csv")
    arith = runs[runs["world"] == "arithmetic"]
    v2 = arith.assign(slice=arith["slice"] + "-v2", improvement=arith["improvement"] + 0.5)
    pilot = arith.assign(slice="pilot-arithmetic", improvement=9.0)
    gemma = arith[arith["algorithm"] == "opsd"].assign(slice="law-gemma3-arithmetic-v2", model="gemma",
                                                        improvement=-9.0)
    new = []
    for tag, part in (("v2", v2), ("pilot", pilot), ("gemma", gemma)):
        new.append(part.assign(grid="bench-v2", run_id=part["run_id"] + "-" + tag, config=part["config"] + "-" + tag))
        copied = steps[steps["run_id"].isin(part["run_id"])]
        steps = pd.concat([steps, copied.assign(run_id=copied["run_id"] + "-" + tag)])
    pd.concat([runs, *new]).to_csv(data / "runs.csv", index=False)
    steps.to_csv(data / "steps.csv", index=False)
    return data


def test_grid_keeps_that_grids_rows_and_only_law_and_grpo_slices_of_grpos_model(tmp_path):
    data = add_bench_v2(make_table(tmp_path / "data"))
    v1 = report(data, LEVEL, ["arithmetic"], None, grid="bench-v1")
    v2 = report(data, LEVEL, ["arithmetic"], None, grid="bench-v2")
    assert (v1["grid"], v1["runs"], v2["grid"], v2["runs"]) == ("bench-v1", 14, "bench-v2", 11 + 2 + 13 + 11)
    for out, shift, suffix in ((v1, 0.0, ""), (v2, 0.5, "-v2")):
        arith = out["worlds"][0]
        assert arith["status"] == "compared" and arith["grpo"]["config"] == "grpo-none" + suffix
        assert arith["grpo"]["improvement"]["mean"] == pytest.approx(np.mean(GRPO) + shift)
        assert {c["config"] for c in arith["opsd"]} == {f"opsd-{c}{suffix}" for c in OPSD}  # no pilot, no Gemma
        arms = [*(("opsd", c, i) for c, (_, i) in OPSD.items()), ("grpo", "none", GRPO)]
        expected = {f"{a}-{c}-{s}{suffix}" for a, c, imps in arms for s in range(len(imps))}
        assert {r["run_id"] for r in arith["per_run"]} == expected
        assert arith["equal_budget"]["models"] == {"opsd": ["m"], "grpo": ["m"]}
    # every grid at once: two GRPO configurations in one world are never averaged
    both = report(data, LEVEL, ["arithmetic"], None)["worlds"][0]
    assert both["status"].startswith("2 GRPO configurations")


def test_an_unknown_grid_is_one_line_naming_the_file_and_the_grids_there(tmp_path, capsys):
    data = add_bench_v2(make_table(tmp_path / "data"))
    code = main(["--data", str(data), "--grid", "bench-v9", "--out", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "r.json").exists()
    assert err == f"grpo_report: {data / 'runs.csv'}: no rows of grid 'bench-v9' (grids there: bench-v1, bench-v2)\n"


def test_slices_keep_one_recipes_law_slice_and_name_a_slice_without_rows(tmp_path, capsys):
    data = add_bench_v2(make_table(tmp_path / "data"))
    runs = pd.read_csv(data / "runs.csv")
    law, grpo = (sorted(s for s in runs[runs["grid"] == "bench-v2"]["slice"].unique() if s.startswith(k))[0]
                 for k in ("law", "grpo"))
    out = report(data, LEVEL, ["arithmetic"], None, grid="bench-v2", slices=[law, grpo])
    assert set(runs[runs["slice"].isin([law, grpo])]["run_id"]) >= {r["run_id"] for r in out["worlds"][0]["per_run"]}
    assert out["slices"] == [law, grpo] and out["runs"] == int(runs["slice"].isin([law, grpo]).sum())
    code = main(["--data", str(data), "--slices", law, "law-typo", "--out", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "p.png")])
    assert code == 2 and "no rows of slice(s) law-typo" in capsys.readouterr().err
