"""Does the gap law pay? Every pruner replayed on the recorded benchmark table.

    python -m benchmarks.pruning [--data benchmarks/data] [--orders 200] [--arms none,law,...] [--out replay.json]

Each order is one search replayed per arm (benchmarks/replay.py: real in-memory Optuna studies,
the real pruners, an objective that reads the recorded runs and pays what they spent). Per arm,
over the orders (95 % bootstrap intervals over orders):

- compute_ratio (CPU-s) and compute_ratio_tokens: what the arm spent as a fraction of `none`
  (every trial trained fully) on the same order, averaged over orders;
- p_best: share of orders whose incumbent (the configuration of the best completed trial, by its
  recorded improvement) is the best configuration (highest mean improvement over seeds);
- regret_mean: simple regret at equal budget: on each order the budget is the least any arm
  spent; regret = best mean improvement - mean improvement of the incumbent the arm had when it
  had spent that budget (no incumbent yet: the worst configuration's); regret_final_mean: at the
  arm's own end;
- false_prune_rate: pruned trials whose recorded improvement beat the bar when they were pruned
  (the law's bar; for the others the best completed value then), over all pruned trials.

It prints a table, writes ``--out`` ({"orders", "arms": {arm: {..., "ci": {...}}}, "settings",
"table", "goal"}) and an anytime plot (``--plot``: best true improvement found vs compute spent,
mean and 95 % band per arm). Missing or malformed table: one line naming file and column, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.ranked import RANKED_ARMS, RankedReplay
from benchmarks.replay import (
    ARMS as REPLAY_ARMS,
    LAW_ARMS,
    SAMPLERS,
    Ledger,
    OrderResult,
    Replay,
    ReplaySettings,
    replay_settings,
    run_topk,
)
from benchmarks.replay_table import Table, TableError, load_table
from opsd_platform.config.choices import RULES
from opsd_platform.process import configure_process

CURVE_ARMS = ("median", "successive_halving", "hyperband")
ARMS = (*REPLAY_ARMS, *RANKED_ARMS)
METRICS = ("compute_ratio", "compute_ratio_tokens", "p_best", "regret_mean", "regret_final_mean", "false_prune_rate")


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown arm {unknown[0]!r}; valid arms: {', '.join(ARMS)}" if unknown
                         else f"no arm given; valid arms: {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


# ============================================================================== running


def run_order(table: Table, arms: list[str], order: int, settings: ReplaySettings) -> dict[str, OrderResult]:
    """Every arm on one order; `none` always (the reference), `law` before `topk` (its budget)."""
    needed = ["none", *[a for a in arms if a not in ("none", "topk")]]
    if "topk" in arms and "law" not in needed and settings.topk_k is None:
        needed.append("law")
    out = {arm: (RankedReplay if arm in RANKED_ARMS else Replay)(table, arm, order, settings).run() for arm in needed}
    if "topk" in arms:
        out["topk"] = run_topk(table, order, settings, out["none"].records, out["law"].cpu if "law" in out else None)
    return out


_TABLE: Table | None = None


def _work(job: tuple[str, list[str], list[int], ReplaySettings]) -> list[dict[str, OrderResult]]:
    global _TABLE
    data, arms, orders, settings = job
    if _TABLE is None or str(_TABLE.directory) != data:
        _TABLE = load_table(data, problems="law_sequential" in arms)
    return [run_order(_TABLE, arms, o, settings) for o in orders]


def replay(table: Table, arms: list[str], orders: int, settings: ReplaySettings, jobs: int = 1, first: int = 0) -> list[dict[str, OrderResult]]:
    ids = list(range(first, first + orders))
    if jobs <= 1 or orders < 2:
        return [run_order(table, arms, o, settings) for o in ids]
    chunks = [ids[i::jobs] for i in range(jobs)]
    global _TABLE
    _TABLE = table  # forked workers inherit it
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_work, [(str(table.directory), arms, c, settings) for c in chunks]))
    by_order = {r["none"].order: r for part in parts for r in part}
    return [by_order[o] for o in ids]


# ============================================================================== metrics


def _incumbent_at(result: OrderResult, budget: float, worst: float) -> float:
    value = worst
    for cpu, _, true in result.curve:
        if cpu > budget * (1 + 1e-12) + 1e-9:
            break
        if true is not None:
            value = true
    return value


def per_order(table: Table, results: list[dict[str, OrderResult]], arms: list[str]) -> dict[str, dict[str, np.ndarray]]:
    best, worst, winners = table.best, table.worst, table.best_configs()
    rows: dict[str, dict[str, list]] = {a: {} for a in arms}
    for res in results:
        budget = min(res[a].cpu for a in arms)
        for arm in arms:
            r, ref = res[arm], res["none"]
            pruned = [t for t in r.records if t.state == "pruned" and t.bar is not None]
            decided = [t for t in r.records if t.full_action is not None and t.action is not None]
            values = {
                "compute_ratio": r.cpu / ref.cpu, "compute_ratio_tokens": r.tokens / ref.tokens,
                "p_best": float(r.incumbent in winners),
                "regret_mean": best - _incumbent_at(r, budget, worst),
                "regret_final_mean": best - (table.true_mean[r.incumbent] if r.incumbent else worst),
                "false_prunes": sum(t.value > t.bar for t in pruned), "prunes": len(pruned),
                "trained": sum(t.state == "complete" for t in r.records),
                "pruned": sum(t.state == "pruned" for t in r.records),
                "calibrated": sum(t.action == "calibrate" for t in r.records),
                "gap_cpu": r.gap_cpu, "gap_tokens": r.gap_tokens, "cpu": r.cpu,
                "decided": len(decided), "differ": sum(t.action != t.full_action for t in decided),
                "gap_share": float(np.mean([t.gap_share for t in decided])) if decided else math.nan,
            }
            if arm == "law_sequential":  # what the same trials' gaps would have cost measured in full
                full = Ledger()
                for t in r.records:
                    full.gap(table.runs[t.run_id])
                values["gap_cpu_full"], values["gap_tokens_full"] = full.gap_cpu, full.gap_tokens
            for key, v in values.items():
                rows[arm].setdefault(key, []).append(v)
    return {a: {k: np.asarray(v, dtype=float) for k, v in m.items()} for a, m in rows.items()}


def _interval(samples: np.ndarray) -> list[float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def summarize(values: dict[str, dict[str, np.ndarray]], n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    out = {}
    for arm, v in values.items():
        n = v["cpu"].size
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))

        def ratio(num: str, den: str) -> tuple[float, list]:
            total = float(v[den].sum())
            point = float(v[num].sum()) / total if total > 0 else math.nan
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = v[num][idx].sum(1) / v[den][idx].sum(1)
            return point, _interval(boot)

        entry: dict = {}
        ci: dict = {}
        for key in ("compute_ratio", "compute_ratio_tokens", "p_best", "regret_mean", "regret_final_mean"):
            entry[key] = float(v[key].mean())
            ci[key] = _interval(v[key][idx].mean(1))
        entry["false_prune_rate"], ci["false_prune_rate"] = ratio("false_prunes", "prunes")
        for key in ("trained", "pruned", "calibrated"):
            entry[f"{key}_mean"] = float(v[key].mean())
        entry["gap_share_of_compute"] = float(v["gap_cpu"].sum() / v["cpu"].sum()) if v["cpu"].sum() > 0 else math.nan
        if arm == "law_sequential":
            saving, saving_ci = ratio("gap_cpu", "gap_cpu_full")
            tok, tok_ci = ratio("gap_tokens", "gap_tokens_full")
            differ, differ_ci = ratio("differ", "decided")
            entry["sequential"] = {
                "gap_cpu_saving": 1 - saving, "gap_tokens_saving": 1 - tok, "mean_share_of_problems": float(np.nanmean(v["gap_share"])) if np.isfinite(v["gap_share"]).any() else math.nan,
                "decisions": int(v["decided"].sum()), "differ_from_full": int(v["differ"].sum()), "differ_rate": differ}
            ci["gap_cpu_saving"] = [None if x is None else 1 - x for x in saving_ci[::-1]]
            ci["differ_rate"] = differ_ci
        entry["ci"] = ci
        out[arm] = entry
    return out


def goal(summary: dict[str, dict]) -> dict:
    """The issue's goal: a law arm with p_best >= 0.9 at <= 30 % of none's compute, cheaper than the
    best curve-based arm (lowest final regret) while its own final regret is no higher."""
    curve = [a for a in CURVE_ARMS if a in summary]
    best_curve = min(curve, key=lambda a: (summary[a]["regret_final_mean"], summary[a]["compute_ratio"])) if curve else None
    verdicts = {}
    for arm in (a for a in LAW_ARMS if a in summary):
        s = summary[arm]
        beats = None if best_curve is None else bool(
            s["compute_ratio"] < summary[best_curve]["compute_ratio"]
            and s["regret_final_mean"] <= summary[best_curve]["regret_final_mean"] + 1e-12)
        verdicts[arm] = {"p_best>=0.9": s["p_best"] >= 0.9, "compute<=0.3": s["compute_ratio"] <= 0.3,
                         "cheaper_than_best_curve_arm_at_no_more_regret": beats}
    met = [a for a, v in verdicts.items() if v["p_best>=0.9"] and v["compute<=0.3"] and v[
        "cheaper_than_best_curve_arm_at_no_more_regret"] is not False]
    return {"best_curve_arm": best_curve, "arms": verdicts, "met_by": met}


def describe_table(table: Table, settings: ReplaySettings) -> dict:
    """What decides whether pruning can pay: gap cost vs training cost, and the first law."""
    runs = [r for r in table.runs.values() if r.slice == "search"]
    law = Replay(table, "law", 0, settings).memory
    info = {"directory": str(table.directory), "search_runs": len(runs), "configurations": len(table.configs),
            "law_points": len(table.law_points), "best_configs": sorted(table.best_configs()),
            "best_mean_improvement": table.best,
            "gap_cpu_over_train_cpu": float(np.mean([r.gap_cpu_s for r in runs]) / np.mean([r.cum_cpu[r.steps] for r in runs])),
            "warnings": table.warnings[:20]}
    if law.champion is not None:
        view = law.view()
        gaps = np.array([r.gap for r in runs])
        covs = {c: np.array([r.covariates.get(c, math.nan) for r in runs]) for c in view.inputs if c != "gap"}
        _, lo, hi = view.predict({"gap": gaps, **covs}, settings.search.level)
        info["first_law"] = {"slope": law.champion.slope, "intercept": law.champion.intercept,
                             "residual_std": law.champion.residual_std, "loo_rmse": law.champion_rmse,
                             "mean_interval_width": float(np.mean(hi - lo)), "level": settings.search.level}
    return info


# ============================================================================== output


def print_table(summary: dict[str, dict], orders: int, out=None) -> None:
    out = out or sys.stdout
    def cell(entry: dict, key: str, pct: bool = False) -> str:
        v, (lo, hi) = entry[key], entry["ci"][key]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.3f}")
        return f"{f(v)} [{f(lo)}, {f(hi)}]" if lo is not None else f(v)

    head = ["arm", "compute (CPU-s)", "compute (tokens)", "p_best", "regret @ equal budget", "regret at end", "false prunes",
            "trained", "pruned"]
    rows = [[arm, cell(e, "compute_ratio", True), cell(e, "compute_ratio_tokens", True), cell(e, "p_best"), cell(e, "regret_mean"),
             cell(e, "regret_final_mean"), cell(e, "false_prune_rate"), f"{e['trained_mean']:.1f}", f"{e['pruned_mean']:.1f}"]
            for arm, e in summary.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"{orders} orders; compute as a share of `none` on the same order; [95 % bootstrap interval over orders]", file=out)
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)
    seq = summary.get("law_sequential", {}).get("sequential")
    if seq:
        print(f"law_sequential: gap CPU-s saved {100 * seq['gap_cpu_saving']:.0f}% (tokens {100 * seq['gap_tokens_saving']:.0f}%), "
              f"{100 * seq['mean_share_of_problems']:.0f}% of the problems measured per gap-dependent decision; "
              f"{seq['differ_from_full']} of {seq['decisions']} decisions differ from the full measurement", file=out)


def plot_anytime(table: Table, results: list[dict[str, OrderResult]], arms: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(max(res[a].cpu / res["none"].cpu for res in results) for a in arms)
    grid = np.linspace(0.0, top, 300)
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in arms:
        ys = np.empty((len(results), grid.size))
        for i, res in enumerate(results):
            xs = np.array([p[0] for p in res[arm].curve]) / res["none"].cpu
            vals = np.array([table.worst if p[2] is None else p[2] for p in res[arm].curve])
            pos = np.searchsorted(xs, grid, side="right") - 1
            ys[i] = np.where(pos >= 0, vals[np.maximum(pos, 0)], table.worst)
        mean, se = ys.mean(0), ys.std(0, ddof=1) / math.sqrt(len(results)) if len(results) > 1 else np.zeros(grid.size)
        line, = ax.plot(grid, mean, label=arm, lw=1.6)
        ax.fill_between(grid, mean - 1.96 * se, mean + 1.96 * se, color=line.get_color(), alpha=0.15)
    ax.axhline(table.best, color="k", ls="--", lw=0.8, label="best configuration")
    ax.set_xlabel("compute spent (CPU-s, share of `none` on the same order)")
    ax.set_ylabel("mean improvement (over seeds) of the incumbent")
    ax.set_title(f"Anytime: best configuration found vs compute, {len(results)} orders (mean, 95 % band)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ============================================================================== the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pruning", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="benchmarks/data", help="directory with runs.csv, steps.csv, gap_problems.csv")
    p.add_argument("--search-slices", default="", help="grid slices replayed as the search (default: the search-* slices), "
                   "e.g. law-arithmetic: a search over its contexts")
    p.add_argument("--law-slices", default="", help="grid slices the first law is fitted on (default: the law-* slices not searched)")
    p.add_argument("--orders", type=int, default=200, help="random trial orders (and sampler seeds) per arm")
    p.add_argument("--first-order", type=int, default=0, help="seed of the first order")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--sampler", default="permutation", choices=SAMPLERS,
                   help="permutation: each order a random permutation of the configurations, enqueued (the same for every arm); "
                        "random / tpe: Optuna's RandomSampler / TPESampler seeded by the order")
    p.add_argument("--trials", type=int, default=None, help="trials per search (default: the number of configurations)")
    p.add_argument("--startup", type=int, default=3, help="completed trials before the law or the median pruner prunes")
    p.add_argument("--calibration-rate", type=float, default=0.2, help="share of would-be-pruned trials the law trains anyway")
    p.add_argument("--level", type=float, default=0.9, help="prediction-interval level of the law")
    p.add_argument("--threshold", type=float, default=None, help="fixed bar for the law (default: best completed improvement)")
    p.add_argument("--refit-every", type=int, default=1, help="refit the law after this many completed trials (0: never)")
    p.add_argument("--method", default="ols", choices=("ols", "wls", "hc3"), help="law fit (ols refits fast)")
    p.add_argument("--covariates", default="", help="comma-separated law covariates (columns of runs.csv, e.g. context_tokens)")
    p.add_argument("--seq-alpha", type=float, default=0.05, help="error level of the sequential gap's confidence sequence")
    p.add_argument("--seq-batch", type=int, default=8, help="problems per batch of the sequential gap")
    p.add_argument("--seq-rule", default="decision", choices=RULES,
                   help="decision: stop once the law's decision is the same for every gap in the CS; confident: train only "
                        "once the law's lower bound clears the bar")
    p.add_argument("--topk-k", type=int, default=None, help="topk trains this many (default: as many as the law arm's budget allows)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over orders")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--out", default=None, help="write the summary JSON here")
    p.add_argument("--plot", default=None, help="anytime plot PNG (default: beside --out, else pruning-anytime.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING, optuna_level=logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        arms = parse_arms(args.arms)
        if args.orders < 1 or args.jobs < 1 or (args.trials is not None and args.trials < 1):
            raise ValueError("--orders, --jobs and --trials must be >= 1")
        settings = replay_settings(n_trials=args.trials, sampler=args.sampler, n_startup_trials=args.startup,
                            calibration_rate=args.calibration_rate, level=args.level, threshold=args.threshold,
                            refit_every=args.refit_every, method=args.method,
                            covariates=tuple(c for c in args.covariates.split(",") if c), seq_alpha=args.seq_alpha,
                            seq_batch=args.seq_batch, seq_rule=args.seq_rule, topk_k=args.topk_k)
        split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
        table = load_table(args.data, problems="law_sequential" in arms, search_slices=split(args.search_slices),
                           law_slices=split(args.law_slices))
        for cov in settings.covariates:
            if any(cov not in r.covariates for r in table.runs.values()):
                raise TableError(f"{Path(args.data) / 'runs.csv'}: column {cov!r}: not a numeric column of every run (--covariates)")
    except (ValueError, TableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in table.warnings[:5]:
        print(f"warning: {w}", file=sys.stderr)
    started = time.perf_counter()
    results = replay(table, arms, args.orders, settings, jobs=args.jobs, first=args.first_order)
    report_arms = ["none", *[a for a in arms if a != "none"]]
    summary = summarize(per_order(table, results, report_arms), n_boot=args.bootstrap)
    print_table(summary, args.orders)
    doc = {"orders": args.orders, "arms": summary, "settings": {**asdict(settings), "arms": arms},
           "table": describe_table(table, settings), "goal": goal(summary), "seconds": time.perf_counter() - started}
    print(f"goal (a law arm: p_best >= 0.9 at <= 30 % of none's compute, cheaper than the best curve arm): "
          f"{'met by ' + ', '.join(doc['goal']['met_by']) if doc['goal']['met_by'] else 'not met'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
        print(f"wrote {args.out}")
    plot = Path(args.plot) if args.plot else (Path(args.out).with_suffix(".png") if args.out else Path("pruning-anytime.png"))
    print(f"wrote {plot_anytime(table, results, report_arms, plot)}  ({doc['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
