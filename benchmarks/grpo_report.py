"""OPSD against GRPO on the recorded benchmark (issue 18, item 3), from the exported table alone.

    python -m benchmarks.grpo_report [--data benchmarks/data] [--out benchmarks/results/grpo-report.json]
                                     [--plot docs/benchmark/opsd-vs-grpo.png] [--level 0.9]
                                     [--worlds arithmetic pyfunc] [--grid bench-v2] [--slices S ...]

Per world, the GRPO rows (``algorithm=grpo`` in a ``grpo-*`` slice) against the OPSD law-slice rows
(``law-*``: ``law-arithmetic`` in bench-v1, ``law-arithmetic-v2`` in bench-v2; same steps, samples
and seeds in the grid file) of the model(s) GRPO ran on (Gemma-3's law slice has no GRPO to face).
Other slices (``search-*``, the recipe pilots' ``pilot-*``) are never part of the comparison.
``--grid`` keeps one grid's rows; without it every row counts, and a world where GRPO ran under two
settings (e.g. bench-v1's and bench-v2's recipes) is skipped rather than averaged.

- each side's **improvement**: the mean over seeds with a Student-t interval for that mean;
- **OPSD context - GRPO, paired by seed**: per seed run on both sides, the OPSD improvement minus
  the GRPO one; the mean of those differences with a Student-t interval (n - 1 df, n paired
  seeds; a single paired seed, or differences identical over seeds, give no interval). Pairing is
  the comparison the design asks for: a seed picks the same training and validation problems on
  both sides, so the difference within a seed removes how hard that seed's problems are, a
  variance both arms share.
  The unpaired Welch interval counts that variance twice and, with two seeds per arm, rests on only
  1-2 Welch-Satterthwaite df anyway (the bench-v1 audit's finding); the paired one states its df;
- **OPSD context - GRPO, Welch**: the difference of the two means with a Welch interval (unequal
  variances) over seeds, unpaired, kept beside the paired one for comparison with earlier reports;
- the **verdict** reads the paired interval when there is one, the Welch one otherwise, and says
  which (``verdict_from``);
- **the law's pick**: a law ``improvement ~ gap`` fitted by OLS on that world's OPSD
  configuration means, and the configuration with the highest predicted improvement, against
  GRPO. With ~10 configuration means the fit is weak and the pick in-sample (its own runs are in
  the fit): the report says how many points it had;
- **failure modes** from ``steps.csv``'s curves: response-length drift (the last training step's
  mean response length minus the first's), collapse (a validation after step 0 below the run's
  initial one by more than the world's seed noise: the pooled within-configuration std of the
  improvement over seeds) and the rollout pass rate hitting 0.

Every interval carries its n. A world without GRPO rows (or without OPSD law rows) is printed as
such and skipped; the report still runs. Prints Markdown tables, writes the JSON and one plot
(matplotlib, Agg), nothing else.
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
import statsmodels.formula.api as smf
from scipy import stats

from benchmarks.goal_checks import pooled_seed_std
from opsd_platform.errors import ExportError
from opsd_platform.law.export import STEP_CURVES, only_grid, read_table
from opsd_platform.process import configure_process

WORLDS = ("arithmetic", "pyfunc")
NAN = float("nan")


# ----------------------------------------------------------------------------- statistics (pure)


def t_interval(values, level: float) -> dict:
    """Mean of `values` with a Student-t interval for the mean (none below two values)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": NAN, "lower": NAN, "upper": NAN, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lower": NAN, "upper": NAN, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lower": mean - half, "upper": mean + half, "n": n}


def welch_difference(a, b, level: float) -> dict:
    """mean(a) - mean(b) with a Welch interval; none when a side has fewer than two values or
    neither side varies (the Welch-Satterthwaite df is then undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else NAN, "lower": NAN, "upper": NAN,
           "df": NAN, "n_a": len(a), "n_b": len(b), "method": "welch"}
    if len(a) < 2 or len(b) < 2 or (a.var(ddof=1) == 0 and b.var(ddof=1) == 0):
        return out
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return out | {"lower": float(ci.low), "upper": float(ci.high), "df": float(res.df)}


def paired_difference(a: pd.Series, b: pd.Series, level: float) -> dict:
    """a - b per seed present in both (Series indexed by seed): the mean difference with a
    Student-t interval, n - 1 df (the paired t interval); none below two paired seeds, nor when the
    differences are identical (pass rates are counts: a zero-width interval would be an artefact)."""
    seeds = sorted(set(a.index) & set(b.index))
    d = a.loc[seeds].to_numpy(float) - b.loc[seeds].to_numpy(float)
    e = t_interval(d, level)
    if len(d) >= 2 and np.ptp(d) < 1e-12:
        e |= {"lower": NAN, "upper": NAN}
    return {"diff": e["mean"], "lower": e["lower"], "upper": e["upper"], "df": len(d) - 1 if len(d) >= 2 else NAN,
            "n": len(d), "per_seed": {int(s): float(v) for s, v in zip(seeds, d)}, "method": "paired"}


def sizes(diff: dict) -> str:
    if diff["method"] == "welch":
        return f"n = {diff['n_a']} vs {diff['n_b']}"
    same = diff["n"] >= 2 and not math.isfinite(diff["lower"])
    return f"{diff['n']} paired seed(s)" + (", identical differences" if same else "")


def verdict(diff: dict) -> str:
    if not math.isfinite(diff["lower"]):
        return f"no interval ({sizes(diff)})"
    if diff["lower"] > 0:
        return "OPSD better"
    if diff["upper"] < 0:
        return "GRPO better"
    return "undecided (interval contains 0)"


def judged(welch: dict, paired: dict) -> dict:
    """The verdict from the paired interval when there is one (two or more paired seeds whose
    differences vary), else from Welch's."""
    diff = paired if math.isfinite(paired["lower"]) else welch
    return {"verdict": verdict(diff), "verdict_from": diff["method"]}


def seed_noise(runs: pd.DataFrame) -> dict:
    """Pooled within-configuration std of the improvement over seeds (configurations with >= 2 seeds)."""
    groups = [g.to_numpy() for _, g in runs.groupby("config")["improvement"]]
    return {"std": pooled_seed_std(groups), "configs": sum(len(g) >= 2 for g in groups)}


def law_pick(opsd: pd.DataFrame, level: float) -> dict:
    """OLS improvement ~ gap on configuration means; the configuration it predicts highest."""
    means = opsd.groupby("config").agg(gap=("gap", "mean"), improvement=("improvement", "mean"),
                                       label=("label", "first"))
    if len(means) < 3:  # two points leave no residual df, hence no interval
        return {"error": f"{len(means)} OPSD configuration(s): the law needs at least 3", "configs": len(means)}
    with warnings.catch_warnings():  # statsmodels warns about small samples in its summaries
        warnings.simplefilter("ignore")
        fit = smf.ols("improvement ~ gap", data=means).fit()
        pred = fit.get_prediction(means).summary_frame(alpha=1 - level)
    best = pred["mean"].idxmax()
    slope_ci = fit.conf_int(alpha=1 - level).loc["gap"]
    return {"config": best, "label": means.loc[best, "label"], "predicted": float(pred.loc[best, "mean"]),
            "predicted_lower": float(pred.loc[best, "obs_ci_lower"]),
            "predicted_upper": float(pred.loc[best, "obs_ci_upper"]),
            "slope": float(fit.params["gap"]), "slope_lower": float(slope_ci.iloc[0]),
            "slope_upper": float(slope_ci.iloc[1]), "slope_p": float(fit.pvalues["gap"]), "r2": float(fit.rsquared),
            "configs": len(means),
            "note": f"fitted on {len(means)} configuration means, in-sample: the pick's own runs are in the fit"}


def run_curves(steps: pd.DataFrame, val_initial: float, threshold: float) -> dict:
    """One run's failure-mode numbers from its steps.csv rows."""
    train = steps[steps["step"] > 0].sort_values("step")
    length = train.dropna(subset=["rollout_response_len"])
    drift = (float(length["rollout_response_len"].iloc[-1] - length["rollout_response_len"].iloc[0])
             if len(length) >= 2 else NAN)
    val = train.dropna(subset=["val_pass_rate"])["val_pass_rate"]
    drop = float(val.min() - val_initial) if len(val) else NAN
    rollout = train.dropna(subset=["rollout_pass_rate"])["rollout_pass_rate"]
    zero = rollout[rollout == 0]
    return {"length_first": float(length["rollout_response_len"].iloc[0]) if len(length) else NAN,
            "length_last": float(length["rollout_response_len"].iloc[-1]) if len(length) else NAN,
            "length_drift": drift, "worst_val_drop": drop,
            # no seed noise measured (no configuration with two seeds): collapse is not judged
            "collapsed": bool(math.isfinite(drop) and drop < -threshold) if math.isfinite(threshold) else None,
            "rollout_hit_zero": bool(len(zero)), "rollout_zero_at_end": bool(len(rollout) and rollout.iloc[-1] == 0),
            "first_zero_step": int(train.loc[zero.index, "step"].iloc[0]) if len(zero) else None}


def failure_summary(per_run: pd.DataFrame, level: float) -> dict:
    """Per-run failure numbers summarised over the runs of one arm."""
    return {"runs": len(per_run), "length_drift": t_interval(per_run["length_drift"], level),
            "collapsed": None if per_run["collapsed"].isna().any() else int(per_run["collapsed"].sum()),
            "rollout_hit_zero": int(per_run["rollout_hit_zero"].sum()),
            "rollout_zero_at_end": int(per_run["rollout_zero_at_end"].sum())}


# ----------------------------------------------------------------------------- the table


def label(runs: pd.DataFrame) -> pd.Series:
    """A configuration's readable name: the context, with the revealed share for the graded one."""
    text = runs["context"].astype(str)
    if "graded_fraction" in runs:
        frac = pd.to_numeric(runs["graded_fraction"], errors="coerce")
        text = text.where(frac.isna() | (text != "graded"), text + " " + frac.map("{:g}".format))
    return text


def arms(runs: pd.DataFrame, world: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(OPSD law-slice rows, GRPO rows) of `world`, one row per configuration and seed (a point
    recorded twice, e.g. by two grids, is averaged so it does not pass for two seeds)."""
    algo = runs["algorithm"].fillna("opsd") if "algorithm" in runs else pd.Series("opsd", index=runs.index)
    mine = runs.assign(algorithm=algo, label=label(runs))[runs["world"].astype(str) == world]
    kind = mine["slice"].astype(str).str.split("-").str[0]  # law-pyfunc, law-pyfunc-v2 -> law
    opsd = mine[(mine["algorithm"] == "opsd") & (kind == "law")]
    grpo = mine[(mine["algorithm"] == "grpo") & (kind == "grpo")].assign(label="GRPO")
    if not grpo.empty:  # OPSD on another model has no GRPO to face
        opsd = opsd[opsd["model"].isin(set(grpo["model"]))]

    def per_seed(part):
        return part.groupby(["config", "seed"], as_index=False).agg(
            improvement=("improvement", "mean"), gap=("gap", "mean"), val_initial=("val_initial", "mean"),
            steps=("steps", "first"), label=("label", "first"), model=("model", "first"), run_ids=("run_id", list))

    return per_seed(opsd), per_seed(grpo)


def compare_world(runs: pd.DataFrame, steps: pd.DataFrame, world: str, level: float) -> dict:
    """Everything the report says about one world (or why it says nothing)."""
    opsd, grpo = arms(runs, world)
    if grpo.empty or opsd.empty:
        missing = "GRPO" if grpo.empty else "OPSD law-slice"
        return {"world": world, "status": f"no {missing} rows yet: skipped",
                "opsd_rows": len(opsd), "grpo_rows": len(grpo)}
    if grpo["config"].nunique() > 1:  # several GRPO settings are never averaged into one baseline
        return {"world": world, "status": f"{grpo['config'].nunique()} GRPO configurations "
                f"({', '.join(sorted(grpo['config'].astype(str).unique()))}): not averaged, skipped"}
    noise = seed_noise(pd.concat([opsd, grpo]))
    per_run = []
    for arm, part in (("opsd", opsd), ("grpo", grpo)):
        for row in part.itertuples():
            for rid in row.run_ids:
                per_run.append({"algorithm": arm, "config": row.config, "label": row.label, "seed": row.seed,
                                "run_id": rid,
                                **run_curves(steps[steps["run_id"] == rid], row.val_initial, noise["std"])})
    per_run = pd.DataFrame(per_run)
    base = t_interval(grpo["improvement"], level)
    grpo_by_seed = grpo.set_index("seed")["improvement"]
    configs = []
    for config, part in opsd.groupby("config"):
        diff = welch_difference(part["improvement"], grpo["improvement"], level)
        paired = paired_difference(part.set_index("seed")["improvement"], grpo_by_seed, level)
        configs.append({"config": config, "label": part["label"].iloc[0], "gap": float(part["gap"].mean()),
                        "improvement": t_interval(part["improvement"], level), "minus_grpo": diff,
                        "minus_grpo_paired": paired, **judged(diff, paired),
                        "failure": failure_summary(
                            per_run[(per_run["algorithm"] == "opsd") & (per_run["config"] == config)], level)})
    configs.sort(key=lambda c: -c["improvement"]["mean"])
    pick = law_pick(opsd, level)
    if "config" in pick:
        chosen = next(c for c in configs if c["config"] == pick["config"])
        pick |= {"measured": chosen["improvement"],
                 **{k: chosen[k] for k in ("minus_grpo", "minus_grpo_paired", "verdict", "verdict_from")}}
    return {"world": world, "status": "compared", "level": level,
            "equal_budget": {"steps": {"opsd": sorted(map(int, opsd["steps"].unique())),
                                       "grpo": sorted(map(int, grpo["steps"].unique()))},
                             "seeds": {"opsd": sorted(map(int, opsd["seed"].unique())),
                                       "grpo": sorted(map(int, grpo["seed"].unique()))},
                             "models": {"opsd": sorted(opsd["model"].unique()),
                                        "grpo": sorted(grpo["model"].unique())}},
            "grpo": {"config": grpo["config"].iloc[0], "improvement": base,
                     "failure": failure_summary(per_run[per_run["algorithm"] == "grpo"], level)},
            "opsd": configs, "law_pick": pick, "seed_noise": noise,
            "failure_by_algorithm": {a: failure_summary(per_run[per_run["algorithm"] == a], level)
                                     for a in ("opsd", "grpo")},
            "curves_missing": bool(steps["rollout_response_len"].isna().all()),
            "per_run": per_run.to_dict(orient="records")}


# ----------------------------------------------------------------------------- output


def fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:+.{digits}f}"


def interval(e: dict, key="mean") -> str:
    return f"{fmt(e[key])} [{fmt(e['lower'])}, {fmt(e['upper'])}]"


def world_tables(res: dict) -> str:
    lines = [f"## {res['world']}"]
    if res["status"] != "compared":
        return "\n".join(lines + ["", f"{res['status']} (OPSD law rows: {res.get('opsd_rows', '?')}, "
                                      f"GRPO rows: {res.get('grpo_rows', '?')})"])
    lvl, g, budget = res["level"], res["grpo"], res["equal_budget"]
    same = budget["steps"]["opsd"] == budget["steps"]["grpo"] and budget["seeds"]["opsd"] == budget["seeds"]["grpo"]
    lines += ["", f"Improvement = val_final - val_initial, mean over seeds, {lvl:.0%} t interval; "
              "OPSD - GRPO paired by seed: mean of the per-seed differences, t interval on n - 1 df; "
              "OPSD - GRPO Welch: unpaired, Welch-Satterthwaite df; the verdict reads the paired interval "
              "when there is one (else Welch's) and says which. "
              f"Model(s): {', '.join(budget['models']['grpo'])}. Steps: OPSD {budget['steps']['opsd']}, GRPO "
              f"{budget['steps']['grpo']}; seeds: OPSD {budget['seeds']['opsd']}, GRPO {budget['seeds']['grpo']}"
              + ("." if same else " (NOT the same budget: read the differences with that in mind)."), "",
              "| arm | n | improvement | OPSD - GRPO paired by seed | paired seeds (df) | OPSD - GRPO Welch | "
              "n (OPSD, GRPO) | Welch df | verdict (from) | length drift (n runs) | collapsed / runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| GRPO | {g['improvement']['n']} | {interval(g['improvement'])} | | | | | | | "
              f"{interval(g['failure']['length_drift'])} ({g['failure']['length_drift']['n']}) | "
              f"{g['failure']['collapsed']} / {g['failure']['runs']} |"]
    pick = res["law_pick"].get("config")
    for c in res["opsd"]:
        d, p, f = c["minus_grpo"], c["minus_grpo_paired"], c["failure"]
        name = c["label"] + (" (law's pick)" if c["config"] == pick else "")
        lines.append(f"| OPSD {name} | {c['improvement']['n']} | {interval(c['improvement'])} | "
                     f"{interval(p, 'diff')} | "
                     f"{p['n']} ({'n/a' if not math.isfinite(p['df']) else p['df']}) | {interval(d, 'diff')} | "
                     f"{d['n_a']}, {d['n_b']} | {'n/a' if not math.isfinite(d['df']) else round(d['df'], 1)} | "
                     f"{c['verdict']} ({c['verdict_from']}) | "
                     f"{interval(f['length_drift'])} ({f['length_drift']['n']}) | "
                     f"{f['collapsed']} / {f['runs']} |")
    p = res["law_pick"]
    lines.append("")
    if "error" in p:
        lines.append(f"Law's pick: none ({p['error']}).")
    else:
        predicted = interval({"mean": p["predicted"], "lower": p["predicted_lower"], "upper": p["predicted_upper"]})
        lines.append(f"Law's pick: OPSD {p['label']}, predicted {predicted} "
                     f"(slope {fmt(p['slope'])} [{fmt(p['slope_lower'])}, {fmt(p['slope_upper'])}], "
                     f"p = {p['slope_p']:.2g}, R^2 = {p['r2']:.2f}; {p['note']}); "
                     f"measured {interval(p['measured'])} (n = {p['measured']['n']}); "
                     f"minus GRPO paired by seed {interval(p['minus_grpo_paired'], 'diff')} "
                     f"({sizes(p['minus_grpo_paired'])}), "
                     f"Welch {interval(p['minus_grpo'], 'diff')} ({sizes(p['minus_grpo'])}): "
                     f"**{p['verdict']}** (from the {p['verdict_from']} interval).")
    noise = res["seed_noise"]
    lines += ["", f"Failure modes (collapse: a validation after step 0 below the initial one by more than the seed "
              f"noise {fmt(noise['std'])}, pooled over {noise['configs']} configurations; drift over runs, OPSD's "
              "contexts pooled):", "",
              "| algorithm | runs | length drift, tokens [interval] (n) | collapsed | rollout pass hit 0 "
              "| rollout 0 at the last step |",
              "|---|---|---|---|---|---|"]
    for algo, f in res["failure_by_algorithm"].items():
        lines.append(f"| {algo} | {f['runs']} | {interval(f['length_drift'])} ({f['length_drift']['n']}) | "
                     f"{f['collapsed']} | {f['rollout_hit_zero']} | {f['rollout_zero_at_end']} |")
    if res["curves_missing"]:
        lines += ["", "steps.csv has no response-length curve (exported before the curves existed): "
                  "re-export (`opsd export`) to fill it; drift is n/a until then."]
    return "\n".join(lines)


def mean_curve(steps: pd.DataFrame, run_ids, column: str) -> pd.Series:
    """Mean of `column` over the runs, at the steps where every one of them has a value (a mean
    over whichever runs happen to have one would jump between subsets)."""
    part = steps[steps["run_id"].isin(set(run_ids))].dropna(subset=[column])
    per_step = part.groupby("step")[column].agg(["mean", "count"])
    return per_step.loc[per_step["count"] == len(set(run_ids)), "mean"]


def plot(results: list[dict], runs_steps: pd.DataFrame, path: Path) -> Path:
    """Per compared world: improvements with intervals, then mean validation and response-length curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    for (ax_imp, ax_val, ax_len), res in zip(axes, results):
        g = res["grpo"]["improvement"]
        pick = res["law_pick"].get("config")
        rows = [("GRPO", g, "tab:red")] + [(c["label"], c["improvement"],
                                            "tab:green" if c["config"] == pick else "tab:blue") for c in res["opsd"]]
        for i, (name, e, colour) in enumerate(rows):
            err = [[e["mean"] - e["lower"]], [e["upper"] - e["mean"]]] if math.isfinite(e["lower"]) else None
            ax_imp.errorbar(e["mean"], i, xerr=err, fmt="o", color=colour, capsize=3)
        if math.isfinite(g["lower"]):
            ax_imp.axvspan(g["lower"], g["upper"], color="tab:red", alpha=0.1)
        ax_imp.axvline(0, color="grey", lw=0.5)
        ax_imp.set_yticks(range(len(rows)), [f"{n} (n={e['n']})" for n, e, _ in rows])
        ax_imp.invert_yaxis()
        ax_imp.set_xlabel(f"improvement ({res['level']:.0%} t interval over seeds)")
        ax_imp.set_title(f"{res['world']}: OPSD contexts (green: law's pick) vs GRPO (red)")
        per_run = pd.DataFrame(res["per_run"])
        pick = res["law_pick"].get("config")
        groups = [("OPSD, every context", per_run["algorithm"] == "opsd", "tab:blue"),
                  ("OPSD, law's pick", per_run["config"] == pick, "tab:green"),
                  ("GRPO", per_run["algorithm"] == "grpo", "tab:red")]
        for name, chosen, colour in groups:
            ids = per_run.loc[chosen, "run_id"]
            if not len(ids):
                continue
            val = mean_curve(runs_steps, ids, "val_pass_rate")
            ax_val.plot(val.index, val.values, "o-", color=colour, label=f"{name} ({len(ids)} runs)")
            length = mean_curve(runs_steps, ids, "rollout_response_len")
            if len(length):
                ax_len.plot(length.index, length.values, color=colour, label=f"{name} ({len(ids)} runs)")
        ax_val.set(xlabel="step", ylabel="validation pass rate", title="validation (collapse)")
        ax_len.set(xlabel="step", ylabel="mean response tokens", title="rollout response length (drift)")
        if res["curves_missing"]:
            ax_len.text(0.5, 0.5, "no response-length curve in steps.csv\n(re-export)", ha="center",
                        transform=ax_len.transAxes)
        for ax in (ax_val, ax_len):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def only_slices(runs: pd.DataFrame, slices, where: Path) -> pd.DataFrame:
    """The rows of these slices (all rows when none are named); a named slice without rows is an error,
    so a typo does not pass for a slice that has not landed yet."""
    if not slices:
        return runs
    absent = sorted(set(slices) - set(runs["slice"].astype(str)))
    if absent:
        raise ExportError(f"{where}: no rows of slice(s) {', '.join(absent)}")
    return runs[runs["slice"].isin(slices)]


def report(data: Path, level: float, worlds, plot_path: Path | None, grid: str | None = None,
           slices=()) -> dict:
    runs = only_slices(only_grid(read_table(data / "runs.csv"), grid, data / "runs.csv"), slices, data / "runs.csv")
    steps = read_table(data / "steps.csv")
    steps = steps.reindex(columns=list(dict.fromkeys([*steps.columns, *STEP_CURVES])))  # an older export lacks them
    results = [compare_world(runs, steps, w, level) for w in worlds]
    grpo_rows = int((runs["algorithm"] == "grpo").sum()) if "algorithm" in runs else 0
    print(f"# OPSD vs GRPO ({data}, {'every grid' if grid is None else 'grid ' + grid}: "
          f"{len(runs)} runs, {grpo_rows} of them GRPO)\n")
    if not grpo_rows:
        print("The table has no GRPO rows yet (algorithm=grpo): every world is skipped.\n")
    for res in results:
        print(world_tables(res) + "\n")
    compared = [r for r in results if r["status"] == "compared"]
    out = {"data": str(data), "grid": grid, "slices": list(slices), "level": level, "runs": len(runs),
           "grpo_runs": grpo_rows,
           "difference_method": "Welch t interval over seeds (unequal variances, Welch-Satterthwaite df), unpaired",
           "paired_difference_method": "per seed on both sides, OPSD minus GRPO; "
                                       "mean with a Student-t interval, n - 1 df",
           "verdict_method": "the paired interval when there is one (>= 2 paired seeds whose differences vary), "
                             "else the Welch one (verdict_from)",
           "worlds": results, "plot": None}
    if plot_path is not None and compared:
        out["plot"] = str(plot(compared, steps, plot_path))
    elif plot_path is not None:
        print("no plot: no world has both GRPO and OPSD law rows")
    return out


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo-report.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmark/opsd-vs-grpo.png"))
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--worlds", nargs="+", default=list(WORLDS))
    ap.add_argument("--grid", default=None, help="only this grid's rows (bench-v1, bench-v2); default: every row")
    ap.add_argument("--slices", nargs="+", default=(),
                    help="only these slices' rows (e.g. one recipe's law slice and the GRPO slice it faces)")
    args = ap.parse_args(argv)
    try:
        out = report(args.data, args.level, args.worlds, args.plot, args.grid, args.slices)
    except ExportError as exc:
        print(f"grpo_report: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    print(f"\nwrote {args.out}" + (f" and {out['plot']}" if out["plot"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
