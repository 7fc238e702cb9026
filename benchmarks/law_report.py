"""The law on the recorded benchmark: every fit and hold-out the benchmark issue asks for, from
the exported table alone (no store, no training).

    python -m benchmarks.law_report [--data benchmarks/data] [--out benchmarks/results/law-report.json]
                                    [--plots docs/benchmark] [--level 0.9]

Reads ``runs.csv`` (benchmarks/data/README.md) and prints Markdown tables:

- **each law slice's configurations**: gap and improvement per seed, training CPU-s;
- **seed noise vs configuration spread**, per slice: the std of the improvement over seeds within
  a configuration against the std of the configuration means, and a one-way ANOVA F-test (are
  the configurations' improvements different at all, given the seeds?);
- **the law** (improvement = a + b * gap on configuration means, OLS, intervals at ``--level``)
  per law slice alone, and pooled over the law slices only with an intercept per slice (a pooled
  fit without one turns the difference between worlds into a slope or a covariate): slope and
  intercept with intervals, R^2, leave-one-configuration-out MAE/RMSE and interval coverage,
  leave-one-world-out and leave-one-family-out errors, the equal-slope F-test across families;
- **robustness** per slice: the slope bootstrapped over configurations, and the configurations
  with high leverage or Cook's distance (law/robust.py);
- **confounder check**: the teacher prompt's length (``context_tokens``) as a covariate (pooled,
  with the slice intercepts);
- **hyper-parameters as covariates** on arithmetic (law + search slices, of the family the
  search slice ran: another family's points would confound the model with the settings): does
  log10(lr), the divergence or the teacher kind predict beyond the gap, out of sample (leave-one-
  configuration-out RMSE with and without)?

and writes the numbers as JSON and one plot per fit. Whatever the numbers are, they are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.goal_checks import (
    CONTROLS,
    controls_against_law,
    graded_dial,
    none_drift,
    pooled_seed_std,
    recipe_label,
)
from opsd_platform.errors import ExportError
from opsd_platform.law import LawError, family_slopes, fit_law, grouped_holdout, leave_one_out
from opsd_platform.law.export import only_grid, read_table
from opsd_platform.law.pipeline import points_from_runs
from opsd_platform.law.robust import bootstrap_slope, influence, with_fixed_effects
from opsd_platform.process import configure_process
from opsd_platform.training.contexts import context_label


def seed_noise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per slice: within-configuration (seed) std of the improvement vs the std of configuration means,
    and the noise floor of a law fitted on configuration means: the RMSE by which even the true
    law misses them, seed_std x sqrt(mean over configurations of 1 / seeds) (a mean of n seeds
    carries seed_std / sqrt(n)). No LOO RMSE on this slice can be expected below it."""
    rows = []
    for name, part in runs.groupby("slice"):
        groups = [g["improvement"].to_numpy() for _, g in part.groupby("config") if len(g) >= 2]
        means = part.groupby("config")["improvement"].mean()
        within = pooled_seed_std(groups)
        f, p = stats.f_oneway(*groups) if len(groups) >= 2 else (float("nan"), float("nan"))
        seeds = part.groupby("config").size().to_numpy(float)
        rows.append({"slice": name, "configs": int(part["config"].nunique()), "runs": len(part),
                     "seed_std": within,
                     "config_mean_std": float(means.std(ddof=1)) if len(means) > 1 else float("nan"),
                     "noise_floor_rmse": within * math.sqrt(float(np.mean(1.0 / seeds))),
                     "anova_F": float(f), "anova_p": float(p)})
    return pd.DataFrame(rows)


def configurations(part: pd.DataFrame) -> pd.DataFrame:
    """One law slice's configurations, a row each: its context (with the revealed share of a graded
    one), gap and improvement per seed and their means, and the training CPU-s per seed."""
    fractions = part["graded_fraction"] if "graded_fraction" in part else [None] * len(part)
    label = [context_label(c, f) for c, f in zip(part["context"], fractions)]
    per_seed = " / ".join
    rows = []
    for (config, name), g in part.assign(label=label).groupby(["config", "label"]):
        g = g.sort_values("seed")
        rows.append({"context": name, "seeds": per_seed(g["seed"].astype(int).astype(str)),
                     "gap": per_seed(g["gap"].map("{:+.3f}".format)),
                     "improvement": per_seed(g["improvement"].map("{:+.3f}".format)),
                     "gap_mean": float(g["gap"].mean()), "improvement_mean": float(g["improvement"].mean()),
                     "train_cpu_s": per_seed(g["train_cpu_s"].map("{:.0f}".format)), "config": config})
    return pd.DataFrame(rows).sort_values("gap_mean", ascending=False)


def reuse_saving(runs: pd.DataFrame) -> dict:
    """What measuring each shared quantity once per key saved, in CPU-s, against every run
    measuring its own initial validation and gap (measurements.py)."""
    own = float((runs["val_initial_cpu_s"] + runs["gap_cpu_s"]).sum())
    teacher = (runs["gap_cpu_s"] - runs["gap_student_cpu_s"]).groupby(runs["gap_key"]).first().sum()
    paid = float(runs.groupby("val_key")["val_initial_cpu_s"].first().sum()
                 + runs.groupby("gap_student_key")["gap_student_cpu_s"].first().sum() + teacher)
    point = float((runs["val_initial_cpu_s"] + runs["gap_cpu_s"] + runs["train_cpu_s"]).mean())
    n = len(runs)
    return {"runs": n, "measure_every_run_cpu_s": own, "measured_once_per_key_cpu_s": paid,
            "saving_per_point_cpu_s": (own - paid) / n, "point_cpu_s_without_reuse": point,
            "saving_share_of_a_point": (own - paid) / n / point,
            "distinct": {"val_key": int(runs["val_key"].nunique()),
                         "gap_student_key": int(runs["gap_student_key"].nunique()),
                         "gap_key": int(runs["gap_key"].nunique())}}


def law_row(name: str, points: pd.DataFrame, level: float, covariates=(), fixed_by: str | None = None) -> dict:
    """One fit with its leave-one-configuration-out errors (or the reason it cannot be fitted);
    `fixed_by`: pooled with an intercept per value of that column (law/robust.fixed_effects)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if fixed_by is not None:
                points, dummies = with_fixed_effects(points, fixed_by)
                covariates = [*dummies, *covariates]
            fit = fit_law(points, covariates=list(covariates), level=level)
            loo = leave_one_out(points, covariates=list(covariates), level=level)
    except LawError as exc:
        return {"fit": name, "error": str(exc)}
    gap, icpt = fit.coefficient("gap"), fit.coefficient("intercept")
    y = points.groupby("config")["improvement"].mean().to_numpy()
    n = len(y)
    const = n / (n - 1) * float(np.std(y)) if n > 1 else float("nan")  # LOO RMSE of the mean of the others
    return {"fit": name, "configs": fit.n_configs, "runs": fit.n_points, "slope": fit.slope,
            "slope_lo": gap["ci_lower"], "slope_hi": gap["ci_upper"], "slope_p": gap["p"], "intercept": fit.intercept,
            "intercept_lo": icpt["ci_lower"], "intercept_hi": icpt["ci_upper"], "r2": fit.r2,
            "loo_mae": loo["mae"], "loo_rmse": loo["rmse"], "loo_coverage": loo["coverage"], "loo_rmse_const": const,
            **({"covariates": {c: fit.coefficient(c) for c in covariates}} if covariates else {}),
            "_fit": fit, "_loo": loo}


def markdown(rows: list[dict], columns: list[str]) -> str:
    def show(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    return "\n".join([head, *("| " + " | ".join(show(r.get(c, "")) for c in columns) + " |" for r in rows)])


def covariate_points(runs: pd.DataFrame) -> pd.DataFrame:
    """Arithmetic points of every slice with the hyper-parameters as numeric covariates (OPSD rows
    only: the law predicts OPSD, and points_from_table drops the rest, so the covariates follow it)."""
    runs = runs[runs.get("algorithm", pd.Series("opsd", index=runs.index)).fillna("opsd") == "opsd"]
    pts = points_from_table_frame(runs)
    lr = pd.to_numeric(runs.get("optim.lr", pd.Series(1e-5, index=runs.index)), errors="coerce").fillna(1e-5)
    pts["log10_lr"] = np.log10(lr.to_numpy())
    for col, default in (("loss.divergence", "reverse"), ("teacher.kind", "ema")):
        values = runs.get(col, pd.Series(default, index=runs.index)).fillna(default).astype(str).to_numpy()
        for level in sorted(set(values) - {default}):
            pts[f"{col.split('.')[-1]}_{level}"] = (values == level).astype(float)
    # the loss's clip form and AdamW's epsilon (bench-v2's recipe pilots), against no clip at torch's eps
    recipes = runs.apply(recipe_label, axis=1).to_numpy() if len(runs) else np.array([])
    for level in sorted(set(recipes) - {"no clip"}):
        pts[f"recipe: {level}"] = (recipes == level).astype(float)
    return pts


def one_run_per_point(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The rows with each (configuration, seed) once, the first recorded kept. A slice may repeat
    another's point (bench-v2's `law-arithmetic-v2b` repeats the eps pilot's 12): the same
    training, so a fit that pools slices would count it twice. Returns the rows and how many
    repeats were dropped, and how many of those differ from the kept run's improvement."""
    first = runs.drop_duplicates(["config", "seed"], keep="first")
    kept = first.set_index(["config", "seed"])["improvement"]
    dropped = runs[~runs.index.isin(first.index)]
    differ = sum(not np.isclose(r.improvement, kept[(r.config, r.seed)]) for r in dropped.itertuples())
    return first, {"dropped": len(dropped), "differ": int(differ)}


def points_from_table_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The law's points of these rows, in the rows' order (OPSD rows only)."""
    pts = points_from_runs(runs).set_index("run_id")
    return pts.loc[[r for r in runs["run_id"] if r in pts.index]].reset_index()


def report(data: Path, level: float, plots: Path | None, grid: str | None = None) -> dict:
    runs = read_table(data / "runs.csv")
    runs = only_grid(runs, grid, data / "runs.csv")
    out: dict = {"data": str(data), "grid": grid, "runs": len(runs), "level": level}
    saving = reuse_saving(runs)
    out["reuse"] = saving
    print("## Measurements reused across points\n")
    print(markdown([{k: v for k, v in saving.items() if k != "distinct"} | saving["distinct"]],
                   ["runs", "measure_every_run_cpu_s", "measured_once_per_key_cpu_s", "saving_per_point_cpu_s",
                    "point_cpu_s_without_reuse", "saving_share_of_a_point", "val_key", "gap_student_key", "gap_key"]))
    noise = seed_noise(runs)
    out["seed_noise"] = noise.to_dict(orient="records")
    print("\n## Seed noise against the spread of configurations\n")
    print(markdown(out["seed_noise"], list(noise.columns)))

    law = runs[runs["slice"].astype(str).str.startswith("law")]
    out["configurations"] = {}
    for name, part in law.groupby("slice"):
        table = configurations(part)
        out["configurations"][name] = table.to_dict(orient="records")
        print(f"\n## {name}: the configurations (by mean gap)\n")
        print(markdown(out["configurations"][name], ["context", "seeds", "gap", "improvement", "train_cpu_s"]))
    # Each law slice alone (one world, one family, one benchmark version), then pooled over the
    # law slices of one grid with an intercept per slice: never pooled without one.
    fits, robustness = [], {}
    for name, part in law.groupby("slice"):
        pts = points_from_table_frame(part)
        fits.append(law_row(name, pts, level))
        try:
            inf = influence(pts)
            robustness[name] = {"bootstrap": bootstrap_slope(pts, level=level),
                                "flagged": inf[inf["high_leverage"] | inf["influential"]].to_dict(orient="records")}
        except LawError as exc:
            robustness[name] = {"error": str(exc)}
    pooled = points_from_table_frame(law)
    grids = (law["grid"] if "grid" in law else pd.Series("table", index=law.index)).fillna("table").to_numpy()
    for grid, part in pooled.assign(grid=grids).groupby("grid"):
        if part["slice"].nunique() >= 2:
            fits.append(law_row(f"pooled, slice intercepts ({grid})", part, level, fixed_by="slice"))
            fits.append(law_row(f"pooled, slice intercepts + context_tokens ({grid})", part, level, ["context_tokens"],
                                fixed_by="slice"))
    cols = ["fit", "configs", "runs", "slope", "slope_lo", "slope_hi", "slope_p", "intercept", "intercept_lo",
            "intercept_hi", "r2", "loo_mae", "loo_rmse", "loo_rmse_const", "loo_coverage", "error"]
    print(f"\n## The law (OLS on configuration means, {level:.0%} intervals; loo_rmse_const: a constant predictor's)\n")
    print(markdown(fits, cols))
    print(f"\n## Robustness per slice (slope bootstrapped over configurations, {level:.0%}; flagged: "
          "leverage > 4/n or Cook's D > 4/n)\n")
    rob_rows = [{"slice": k,
                 **{f"boot_{m}": v.get("bootstrap", {}).get(m) for m in ("slope_lo", "slope_hi", "share_positive")},
                 "flagged": ", ".join(f"{r['config'].split('/')[-1]} (h {r['leverage']:.2f}, D {r['cooks_d']:.2f})"
                                      for r in v.get("flagged", [])) or v.get("error", "none")}
                for k, v in robustness.items()]
    print(markdown(rob_rows, ["slice", "boot_slope_lo", "boot_slope_hi", "boot_share_positive", "flagged"]))
    goal = goal_section(law, noise, level)
    grouped, holdouts = {}, {}
    for group in ("world", "family", "context"):
        if pooled[group].nunique() >= 2:
            res = holdouts[group] = grouped_holdout(pooled, group, level=level)
            grouped[group] = {k: res.get(k) for k in ("mae", "rmse", "coverage", "n")}
    if grouped:
        print("\n## Grouped hold-out (the law fitted without a group predicts it)\n")
        print(markdown([{"left out": g, **v} for g, v in grouped.items()],
                       ["left out", "mae", "rmse", "coverage", "n"]))
    # Families on their own: each direction of the leave-one-family-out, over every law slice and
    # over arithmetic alone (one world, so a difference is the family's, not the world's).
    family_rows, eqs = [], {}
    for scope, pts in (("law slices", pooled), ("arithmetic", pooled[pooled["world"] == "arithmetic"])):
        if pts["family"].nunique() < 2:
            continue
        res = holdouts["family"] if pts is pooled else grouped_holdout(pts, "family", level=level)
        family_rows += [{"scope": scope, "left out": g["group"],
                         **{k: g[k] for k in ("n_configs", "mae", "rmse", "coverage")}} for g in res["per_group"]]
        family_rows += [{"scope": scope, "left out": g["group"], "skipped": g["reason"]} for g in res["skipped"]]
        eqs[scope] = family_slopes(pts, "family", level=level).get("equal_slopes", {})
    if family_rows:
        print("\n## Leave one family out (fitted on the other family, predicting this one)\n")
        print(markdown(family_rows, ["scope", "left out", "n_configs", "mae", "rmse", "coverage", "skipped"]))
        for scope, e in eqs.items():
            print(f"\nequal slopes across families ({scope}): " + (
                f"F = {e['F']:.3g}, p = {e['p']:.3g} ({e['df_num']:g} and {e['df_denom']:g} df)"
                if "F" in e else str(e)))
    eq = eqs.get("law slices", {})

    # The covariates are the search slice's hyper-parameters, searched on one family: another
    # family's arithmetic points would confound them with the model, so only that family enters.
    searched = runs.loc[runs["slice"].astype(str).str.startswith("search"), "family"].unique()
    arith = runs[(runs["world"] == "arithmetic") & (runs["family"].isin(searched) if len(searched) else True)]
    cov_rows = []
    cov_repeats = {"dropped": 0, "differ": 0}
    if arith["slice"].nunique() > 1 or "optim.lr" in arith:
        arith, cov_repeats = one_run_per_point(arith)
        cpts = covariate_points(arith)
        extra = [c for c in cpts.columns if c == "log10_lr" or c.startswith(("divergence_", "kind_", "recipe: "))]
        cov_rows.append(law_row("gap only", cpts, level))
        for c in extra:
            cov_rows.append(law_row(f"gap + {c}", cpts, level, [c]))
        if len(extra) > 1:
            cov_rows.append(law_row("gap + all", cpts, level, extra))
        families = ", ".join(sorted(arith["family"].unique()))
        print(f"\n## Hyper-parameters as covariates (arithmetic, every slice of {families})\n")
        print(markdown(cov_rows, ["fit", "configs", "slope", "slope_lo", "slope_hi", "r2", "loo_rmse", "loo_coverage",
                                  "error"]))
        if cov_repeats["dropped"]:
            print(f"\n{cov_repeats['dropped']} runs repeat a (configuration, seed) of another slice and are counted "
                  f"once; {cov_repeats['differ']} of them differ from the kept run's improvement.")

    if plots is not None:
        from opsd_platform.law.plot import plot_law

        plots.mkdir(parents=True, exist_ok=True)
        for row in fits:
            if "_fit" in row and "context_tokens" not in row["fit"]:
                name = (row["fit"].replace(" / ", "-").replace(", ", "-").replace(" ", "-")
                        .replace("(", "").replace(")", ""))
                if row["fit"].startswith("pooled"):
                    grid = row["fit"].split("(")[-1].rstrip(")")
                    sub, _ = with_fixed_effects(pooled[grids == grid], "slice")
                else:
                    sub = points_from_table_frame(law[law["slice"] == row["fit"]])
                row["plot"] = str(plot_law(sub, row["_fit"], holdout=row["_loo"], path=plots / f"law-{name}.png",
                                           controls=CONTROLS))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    out.update({"fits": strip(fits), "grouped_holdout": grouped, "equal_slopes": eq, "equal_slopes_by_scope": eqs,
                "family_holdout": family_rows, "covariates": strip(cov_rows), "covariate_repeats": cov_repeats,
                "robustness": robustness, "goal": goal})
    return out


def goal_section(law: pd.DataFrame, noise: pd.DataFrame, level: float) -> dict:
    """bench-v2's goal checks (benchmarks/goal_checks.py), printed and returned."""
    std = dict(zip(noise["slice"], noise["seed_std"])) if len(noise) else {}
    goal = {"none_drift": none_drift(law, std), "graded_dial": graded_dial(law),
            "controls": controls_against_law(law, level)}
    print("\n## The goal's checks: `none` against the drift bars, the graded dial, the controls\n")
    print("`bar`: 2 x the slice's seed std (every configuration's); `sampling_bar`: 2 x the standard error of "
          "`none`'s mean improvement from the validation's sampling alone.\n")
    print(markdown(goal["none_drift"], ["slice", "seeds", "per_seed", "mean", "bar", "within", "sampling_bar",
                                        "within_sampling"]))
    if goal["graded_dial"]:
        print()
        print(markdown(goal["graded_dial"], ["slice", "shares", "gap", "improvement", "monotone", "spearman_rho",
                                             "largest_fall", "fall_se", "monotone_within_noise"]))
    if goal["controls"]:
        print(f"\nControls against the law fitted on the slice's other contexts ({level:.0%} prediction interval):\n")
        print(markdown(goal["controls"], ["slice", "control", "seeds", "gap", "improvement", "none_improvement",
                                          "predicted", "predicted_lo", "predicted_hi", "inside", "error"]))
    return goal


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/law-report.json"))
    ap.add_argument("--plots", type=Path, default=Path("docs/benchmark"))
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--grid", default=None, help="only this grid's rows (bench-v1, bench-v2); default: every row")
    args = ap.parse_args(argv)
    try:
        out = report(args.data, args.level, args.plots, args.grid)
    except (ExportError, LawError) as exc:
        print(f"law_report: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
