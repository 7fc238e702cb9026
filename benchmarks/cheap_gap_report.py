"""The cheap gap's report (issue 31): the cached estimates of benchmarks/cheap_gap.py against the
recorded pass-rate gap and improvement, per world x family (one law slice each).

Per slice and per gap variable (the recorded pass-rate gap, then each estimator in its place):

- Pearson r with the recorded pass-rate gap over the slice's runs (configuration x seed);
- the law improvement = a + b * variable on configuration means (opsd_platform.law.fit_law, OLS,
  intervals at 90 % as benchmarks/law_report.py): slope with its interval and R^2;
- leave-one-configuration-out RMSE (opsd_platform.law.leave_one_out);
- cost per context: the pass-rate gap's teacher generation (recorded gap_cpu_s - gap_student_cpu_s)
  against the estimators' one scoring pass (measured now), each also as % of the recorded 20-step
  training (train_cpu_s); the regenerated student side's CPU-s now against the recorded ones says
  how this machine compares with the grid's, and the scoring pass is also shown rescaled by that
  ratio ("at the grid's speed"). The goal is judged on the cost as measured.

Goal (issue 31): per-context cost <= 2 % of a 20-step training, with leave-one-configuration-out
RMSE no worse than the pass-rate gap's on every slice where the pass-rate law holds (its slope's
90 % interval excludes 0).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.provenance import git_commit
from opsd_platform.gap.estimators import ESTIMATORS
from opsd_platform.law import LawError, fit_law, leave_one_out
from opsd_platform.law.pipeline import points_from_table

LEVEL = 0.9
GOAL_COST_FRACTION = 0.02
VARIABLES = ("gap", *ESTIMATORS)  # "gap": the recorded pass-rate gap


def point_rows(cache: dict, data: Path) -> pd.DataFrame:
    """One row per recorded law-slice run with a cached estimate: the run's recorded columns and the
    estimates (value, interval), the scoring CPU-s and the IS effective sample size."""
    runs = pd.read_csv(data / "runs.csv")
    rows = []
    for _, run in runs.iterrows():
        entry = cache.get(run["point"])
        if entry is None:
            continue
        est = entry["estimates"]
        rows.append({"run_id": run["run_id"], "slice": run["slice"], "point": run["point"],
                     "scoring_cpu_s": entry["cpu_s"], "teacher_coverage": entry["teacher_coverage"],
                     "student_pass_rate_now": entry["student_pass_rate"],
                     **{name: est[name]["value"] for name in (*ESTIMATORS, "is_teacher_pass_rate", "is_ess")},
                     **{f"{name}_ci_{end}": est[name]["ci"][i] for name in ESTIMATORS
                        for i, end in enumerate(("low", "high"))}})
    return pd.DataFrame(rows)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def law_of(points: pd.DataFrame, variable: str) -> dict:
    """The law with `variable` as the gap: slope, interval, R^2, LOO RMSE (or why it cannot be fitted)."""
    pts = points.assign(gap=points[variable].astype(float))
    pts = pts[np.isfinite(pts["gap"])]
    try:
        fit = fit_law(pts, level=LEVEL)
        loo = leave_one_out(pts, level=LEVEL)
    except LawError as exc:
        return {"error": str(exc)}
    c = fit.coefficient("gap")
    return {"slope": fit.slope, "slope_ci": [c["ci_lower"], c["ci_upper"]], "r2": fit.r2,
            "loo_rmse": loo["rmse"], "loo_coverage": loo["coverage"], "n_configs": fit.n_configs,
            "n_points": fit.n_points, "_fit": fit}


def slice_report(name: str, rows: pd.DataFrame, runs: pd.DataFrame, students: dict, data: Path) -> dict:
    points = points_from_table(str(data), slices=[name]).drop(columns=["slice"], errors="ignore")
    points = points.merge(rows, on="run_id", how="inner")  # rows carry the slice
    recorded = runs[runs["run_id"].isin(points["run_id"])]
    teacher_gen = (recorded["gap_cpu_s"] - recorded["gap_student_cpu_s"]).mean()
    train = recorded["train_cpu_s"].mean()
    scoring = points["scoring_cpu_s"].mean()
    student_now = np.mean([s["cpu_s"] for s in students.values()]) if students else float("nan")
    # this machine against the grid's: the same student side (same tokens where it is equal to the
    # recorded one) cost student_recorded CPU-s then and student_now now
    speed = recorded["gap_student_cpu_s"].mean() / student_now
    variables = {}
    for v in VARIABLES:
        law = law_of(points, v)
        law["corr_with_gap"] = _pearson(points[v].to_numpy(float), points["gap"].to_numpy(float))
        law["corr_with_improvement"] = _pearson(points[v].to_numpy(float), points["improvement"].to_numpy(float))
        variables[v] = law
    return {
        "slice": name, "world": str(points["world"].iloc[0]), "family": str(points["family"].iloc[0]),
        "runs": int(len(points)), "configs": int(points["config"].nunique()),
        "student_side_equal_to_recorded": student_sides_equal(students),
        "student_side": students,
        "cost": {"pass_rate_gap_teacher_cpu_s": float(teacher_gen), "scoring_cpu_s": float(scoring),
                 "ratio": float(scoring / teacher_gen), "train_cpu_s": float(train),
                 "pass_rate_gap_pct_of_training": float(100 * teacher_gen / train),
                 "scoring_pct_of_training": float(100 * scoring / train),
                 "student_side_cpu_s_recorded": float(recorded["gap_student_cpu_s"].mean()),
                 "student_side_cpu_s_now": float(student_now),
                 "scoring_cpu_s_at_grid_speed": float(scoring * speed),
                 "ratio_at_grid_speed": float(scoring * speed / teacher_gen),
                 "scoring_pct_of_training_at_grid_speed": float(100 * scoring * speed / train)},
        "is_ess_mean": float(points["is_ess"].mean()),
        "variables": variables,
        "_points": points,
    }


def goal(reports: list[dict]) -> dict:
    """Per estimator: does it meet the issue's goal on every slice where the pass-rate law holds?"""
    holds = [r for r in reports if "slope_ci" in r["variables"]["gap"] and r["variables"]["gap"]["slope_ci"][0] > 0]
    out = {"slices_where_the_law_holds": [r["slice"] for r in holds]}
    for v in ESTIMATORS:
        checks = []
        for r in holds:
            est, base = r["variables"][v], r["variables"]["gap"]
            checks.append({"slice": r["slice"],
                           "cost_ok": r["cost"]["scoring_pct_of_training"] <= 100 * GOAL_COST_FRACTION,
                           "rmse_ok": bool(est.get("loo_rmse", math.inf) <= base["loo_rmse"]),
                           "rmse": est.get("loo_rmse"), "rmse_pass_rate_gap": base["loo_rmse"]})
        out[v] = {"met": bool(holds) and all(c["cost_ok"] and c["rmse_ok"] for c in checks), "checks": checks}
    return out


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(reports: list[dict], verdict: dict) -> str:
    lines = ["| slice | variable | r with gap | r with improvement | slope [90 % CI] | R^2 | LOO RMSE |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        for v, law in r["variables"].items():
            slope = (f"{_fmt(law['slope'])} [{_fmt(law['slope_ci'][0])}, {_fmt(law['slope_ci'][1])}]"
                     if "slope" in law else law.get("error", "n/a"))
            shown = "pass-rate gap" if v == "gap" else v
            lines.append(f"| {r['slice']} | {shown} | {_fmt(law['corr_with_gap'], '.2f')} "
                         f"| {_fmt(law['corr_with_improvement'], '.2f')} | {slope} | {_fmt(law.get('r2'), '.2f')} "
                         f"| {_fmt(law.get('loo_rmse'))} |")
    lines += ["", "| slice | runs | student side = recorded | teacher generation CPU-s / context (recorded) "
              "| scoring pass CPU-s / context (now) | ratio | % of 20-step training (gen / scoring) "
              "| student side CPU-s (recorded / now) | scoring at the grid's speed: CPU-s, ratio, % of training "
              "| IS ESS / n |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        c = r["cost"]
        lines.append(f"| {r['slice']} | {r['runs']} | {r['student_side_equal_to_recorded']} "
                     f"| {c['pass_rate_gap_teacher_cpu_s']:.1f} | {c['scoring_cpu_s']:.1f} | {c['ratio']:.2f} "
                     f"| {c['pass_rate_gap_pct_of_training']:.1f} % / {c['scoring_pct_of_training']:.2f} % "
                     f"| {c['student_side_cpu_s_recorded']:.1f} / {c['student_side_cpu_s_now']:.1f} "
                     f"| {c['scoring_cpu_s_at_grid_speed']:.1f}, {c['ratio_at_grid_speed']:.2f}, "
                     f"{c['scoring_pct_of_training_at_grid_speed']:.2f} % | {r['is_ess_mean']:.2f} |")
    lines += ["", f"Goal (cost <= 2 % of training, LOO RMSE <= the pass-rate gap's where its law holds: "
              f"{', '.join(verdict['slices_where_the_law_holds']) or 'nowhere'}): "
              + "; ".join(f"{v} {'met' if verdict[v]['met'] else 'not met'}" for v in ESTIMATORS)]
    return "\n".join(lines) + "\n"


def plot(reports: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display where this runs
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), len(VARIABLES), figsize=(3.2 * len(VARIABLES), 2.9 * len(reports)),
                             squeeze=False)
    for row, r in zip(axes, reports):
        means = r["_points"].groupby("config")[["improvement", *VARIABLES]].mean()
        for ax, v in zip(row, VARIABLES):
            law = r["variables"][v]
            ax.scatter(means[v], means["improvement"], s=14)
            if "_fit" in law:
                xs = np.linspace(np.nanmin(means[v]), np.nanmax(means[v]), 20)
                ax.plot(xs, law["_fit"].intercept + law["_fit"].slope * xs, lw=1)
            ax.set_title(f"{r['slice']}\n{'pass-rate gap' if v == 'gap' else v}: LOO RMSE {_fmt(law.get('loo_rmse'))}",
                         fontsize=8)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel("improvement (config mean)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def student_sides_equal(students: dict) -> bool | None:
    """Whether every regenerated student side equals the recorded runs' (per problem), over the
    (slice, seed)s that have recorded runs; None when none has (the check is judged from the runs
    listed, so a seed cached before its runs were recorded is not counted as unequal)."""
    checks = [all(r["equal"] for r in s["runs"]) for s in students.values() if s.get("runs")]
    return all(checks) if checks else None


def provenance() -> dict:
    """Where and with what the report was made (the measurements' own CPU-s are in the cache)."""
    import datetime
    import platform

    commit = git_commit()
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if cpuinfo.exists() else platform.machine()
    return {"command": "python -m benchmarks.cheap_gap", "commit": commit, "machine": f"{cpu}, {os.cpu_count()} cores",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": 1, "note": "measured with nice -n 5 on a 2-core machine shared with other jobs"}


def report(cache: dict, data: Path, out: Path, plot_path: Path | None, progress=print) -> dict:
    rows = point_rows(cache, data)
    if rows.empty:
        progress("no cached cheap-gap points: nothing to report")
        return {}
    runs = pd.read_csv(data / "runs.csv")
    reports = []
    for name in dict.fromkeys(rows["slice"]):
        students = {k.rsplit("/", 1)[1]: v for k, v in cache.items() if k.startswith(f"student/{name}/")}
        reports.append(slice_report(name, rows[rows["slice"] == name], runs, students, data))
    verdict = goal(reports)
    table = markdown(reports, verdict)
    progress(table)
    strip = [{k: v for k, v in r.items() if not k.startswith("_")} for r in reports]
    for r in strip:
        r["variables"] = {v: {k: x for k, x in law.items() if not k.startswith("_")}
                          for v, law in r["variables"].items()}
    points = pd.concat([r["_points"] for r in reports])[["run_id", "slice", "config", "seed", "gap", "improvement",
                                                          *ESTIMATORS, *[f"{v}_ci_{end}" for v in ESTIMATORS
                                                                         for end in ("low", "high")],
                                                          "is_teacher_pass_rate", "is_ess",
                                                          "scoring_cpu_s", "teacher_coverage"]]
    doc = {"provenance": provenance(), "level": LEVEL, "slices": strip, "goal": verdict,
           "points": points.to_dict(orient="records")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=float))
    out.with_suffix(".md").write_text(table)
    if plot_path is not None:
        progress(f"plot: {plot(reports, plot_path)}")
    return doc
