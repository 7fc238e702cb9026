"""Does the ranked search pay? Its arms beside every other arm, on every slice of the recorded table
and the transfer scenarios (each family's contexts with the other family's law; each world's with
the other world's).

    python -m benchmarks.ranked_report [--grid benchmark|bench-v2] [--data benchmarks/data] [--orders 200]
        [--jobs 2] [--out benchmarks/results/ranked-v1.json] [--plot docs/ranked-anytime.png]

``--grid bench-v2`` replays bench-v2's slices instead (defaults ``ranked-v2.json``,
``docs/benchmark/v2/ranked-anytime.png``); a scenario whose slices are not recorded yet is listed
as skipped, so the report grows with the grid.

Each scenario is one ``benchmarks.pruning`` replay (the same orders, seeds, costs and summary as
``python -m benchmarks.pruning --search-slices S --law-slices L``). Added here: the anytime curve
p_best(compute) (share of orders whose incumbent is a best configuration once the arm has spent a
given share of ``none``'s compute on the same order) and issue 30's goal, stated per scenario
whatever it says:

- the ranked arm's anytime curve at or above every curve-based arm's (median, successive halving,
  hyperband) at every compute share: ``shortfall`` is the largest gap below the best of them;
- its final p_best within 0.02 of ``none``'s on the same slice (``none`` can be below 1 where
  seeds tie or noise reorders close configurations);
- with a transferred law on a context slice: <= 30 % of ``none``'s compute;
- where the law has no signal (the ranked policy ran the curve pruner alone): <= 2 % more compute
  than successive halving alone.

It prints a table per scenario, writes ``--out`` (JSON) and a Markdown table beside it, and the
anytime plot (one panel per scenario).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.pruning import CURVE_ARMS, per_order, print_table, replay, summarize
from benchmarks.ranked import RANKED_ARMS, prior_of
from benchmarks.replay import ReplaySettings, replay_settings
from benchmarks.replay_table import TableError, load_table
from opsd_platform.process import configure_process

SCENARIOS_V1 = (  # (name, searched slice, law slices; () = every law-* slice not searched), transfer
    ("search slice, law from every law slice", "search-arithmetic", (), False),
    ("SmolLM2 arithmetic contexts, law from Gemma-3", "law-arithmetic", ("law-gemma3-arithmetic",), True),
    ("Gemma-3 arithmetic contexts, law from SmolLM2", "law-gemma3-arithmetic", ("law-arithmetic",), True),
    ("SmolLM2 arithmetic contexts, law from pyfunc", "law-arithmetic", ("law-pyfunc",), True),
    ("SmolLM2 pyfunc contexts, law from arithmetic", "law-pyfunc", ("law-arithmetic",), True),
)
# bench-v2: the same transfers inside each v2 recipe as its slices land (the clipped `-v2` slices and the
# `-v2b` ones at the chosen recipe), and earlier laws as priors from an earlier study (same model and
# world, another recipe or v1's contexts: the prior check says whether they still predict).


def v2_scenarios(suffix: str, tag: str) -> tuple:
    """The transfers inside one bench-v2 recipe, whose slices end in `suffix` (`-v2`, `-v2b`)."""
    arith, pyfunc, gemma = (f"law-arithmetic{suffix}", f"law-pyfunc{suffix}", f"law-gemma3-arithmetic{suffix}")
    return (
        (f"{tag} search slice, law from every {tag} law slice", f"search-arithmetic{suffix}", (arith, pyfunc, gemma),
         False),
        (f"{tag} SmolLM2 arithmetic contexts, law from {tag} Gemma-3", arith, (gemma,), True),
        (f"{tag} Gemma-3 arithmetic contexts, law from {tag} SmolLM2", gemma, (arith,), True),
        (f"{tag} SmolLM2 pyfunc contexts, law from {tag} arithmetic", pyfunc, (arith,), True),
        (f"{tag} SmolLM2 arithmetic contexts, law from v1 SmolLM2 (earlier study)", arith, ("law-arithmetic",), True),
        (f"{tag} SmolLM2 arithmetic contexts, law from v1 Gemma-3", arith, ("law-gemma3-arithmetic",), True),
    )


SCENARIOS_V2 = (
    *v2_scenarios("-v2", "v2"),
    *v2_scenarios("-v2b", "v2b"),
    ("v2b SmolLM2 arithmetic contexts, law from v2 SmolLM2 (the clipped recipe)",
     "law-arithmetic-v2b", ("law-arithmetic-v2",), True),
)
GRIDS = {"benchmark": ("bench-v1", SCENARIOS_V1, "benchmarks/results/ranked-v1.json", "docs/ranked-anytime.png"),
         "bench-v2": ("bench-v2", SCENARIOS_V2, "benchmarks/results/ranked-v2.json",
                      "docs/benchmark/v2/ranked-anytime.png")}
ARMS = ["none", "median", "successive_halving", "hyperband", "law", "law_then_halving", *RANKED_ARMS]
GRID = np.linspace(0.0, 1.5, 301)


def anytime_p_best(table, results, arm: str, grid: np.ndarray = GRID) -> np.ndarray:
    """p_best after spending each share of `none`'s compute (mean over orders)."""
    best = table.best - 1e-12
    hits = np.zeros((len(results), grid.size))
    for i, res in enumerate(results):
        xs = np.array([p[0] for p in res[arm].curve]) / res["none"].cpu
        ok = np.array([p[2] is not None and p[2] >= best for p in res[arm].curve], dtype=float)
        pos = np.searchsorted(xs, grid * (1 + 1e-12) + 1e-12, side="right") - 1
        hits[i] = np.where(pos >= 0, ok[np.maximum(pos, 0)], 0.0)
    return hits.mean(0)


def verdict(summary: dict, curves: dict, arm: str, transfer: bool, curve_alone: bool) -> dict:
    curve_best = np.max([curves[a] for a in CURVE_ARMS], axis=0)
    shortfall = float(np.max(curve_best - curves[arm]))
    s, none, sh = summary[arm], summary["none"], summary["successive_halving"]
    out = {"anytime_shortfall_vs_best_curve_arm": shortfall, "anytime_at_or_above_curve_arms": shortfall <= 0,
           "p_best": s["p_best"], "p_best_none": none["p_best"],
           "p_best_within_0.02_of_none": s["p_best"] >= none["p_best"] - 0.02,
           "compute_ratio": s["compute_ratio"], "compute_ratio_successive_halving": sh["compute_ratio"]}
    if transfer and not curve_alone:
        out["compute<=0.30_with_transferred_law"] = s["compute_ratio"] <= 0.30
    if curve_alone:
        out["no_signal_compute<=sh+0.02"] = s["compute_ratio"] <= sh["compute_ratio"] + 0.02
    return out


def recorded_slices(data: str) -> set[str] | None:
    """The slices the table holds rows of (a grid still recording has some of them); None when
    there is no table (load_table then names the missing file)."""
    import pandas as pd

    path = Path(data) / "runs.csv"
    return set(pd.read_csv(path, usecols=["slice"])["slice"]) if path.is_file() else None


def run_scenario(data: str, name: str, search: str, law: tuple[str, ...], transfer: bool, orders: int, jobs: int,
                 settings: ReplaySettings) -> tuple[dict, object, list]:
    table = load_table(data, search_slices=(search,), law_slices=law)
    results = replay(table, ARMS, orders, settings, jobs=jobs)
    summary = summarize(per_order(table, results, ARMS))
    curves = {a: anytime_p_best(table, results, a) for a in ARMS}
    fit, check = prior_of(table, settings)
    notes = {arm: Counter(" | ".join(res[arm].notes) for res in results) for arm in RANKED_ARMS}
    curve_alone = {arm: all(n.startswith("the law cannot rank") or "the curve-based pruner alone" in n.split(" | ")[0]
                            for n in notes[arm]) for arm in RANKED_ARMS}
    doc = {"name": name, "searched": search, "law_slices": list(law) or "every law-* slice", "transfer": transfer,
           "configurations": len(table.configs), "best_configs": sorted(table.best_configs()),
           "prior": None if fit is None else {"slope": fit.slope, "intercept": fit.intercept, "n_configs": fit.n_configs,
                                             "check": check.reason},
           "arms": summary,
           # every 5th point of the curves in the JSON (the plot and the verdicts use all 301)
           "anytime": {"grid": GRID[::5].round(3).tolist(), **{a: c[::5].round(4).tolist() for a, c in curves.items()}},
           "policy_notes": {a: dict(n.most_common(8)) for a, n in notes.items()},  # orders per sequence of law changes
           "goal": {arm: verdict(summary, curves, arm, transfer, curve_alone[arm]) for arm in RANKED_ARMS}}
    return doc, curves, results


def markdown(docs: list[dict], orders: int, label: str = "bench-v1", skipped: tuple[str, ...] = ()) -> str:
    lines = [f"# Ranked search replay on {label} ({orders} orders per scenario)", "",
             "Compute as a share of `none` (train every configuration) on the same order; p_best = share of orders whose "
             "incumbent is a best configuration; shortfall = largest gap of the anytime p_best curve below the best "
             "curve-based arm's (<= 0: at or above everywhere).", ""]
    lines += [f"Skipped (not recorded yet): {s}" for s in skipped] + ([""] if skipped else [])
    for d in docs:
        lines += [f"## {d['name']}", "", f"prior: {d['prior']['check'] if d['prior'] else 'none'}", "",
                  "| arm | compute | p_best | regret at end | trained | stopped/pruned |", "|---|---|---|---|---|---|"]
        for arm, e in d["arms"].items():
            lines.append(f"| {arm} | {e['compute_ratio']:.3f} | {e['p_best']:.3f} | {e['regret_final_mean']:.3f} | "
                         f"{e['trained_mean']:.1f} | {e['pruned_mean']:.1f} |")
        for arm, g in d["goal"].items():
            checks = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in g.items() if isinstance(v, bool))
            lines.append(f"\n{arm}: shortfall {g['anytime_shortfall_vs_best_curve_arm']:+.3f}; {checks}")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(docs: list[dict], curves: list[dict], path: Path, label: str = "bench-v1") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(docs), figsize=(4.2 * len(docs), 4.2), sharey=True)
    for ax, d, c in zip(np.atleast_1d(axes), docs, curves):
        for arm in ARMS:
            style = {"lw": 2.4} if arm in RANKED_ARMS else {"lw": 1.1, "ls": "--" if arm in CURVE_ARMS else ":"}
            ax.plot(GRID, c[arm], label=arm, **style)
        ax.set_title(d["name"], fontsize=9)
        ax.set_xlabel("compute (share of `none`)")
        ax.set_xlim(0, 1.3)
    np.atleast_1d(axes)[0].set_ylabel("p_best (incumbent is a best configuration)")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Ranked search vs the other arms: anytime p_best on {label} (replay)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING, optuna_level=logging.ERROR)
    p = argparse.ArgumentParser(prog="python -m benchmarks.ranked_report", description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=sorted(GRIDS), default="benchmark", help="whose slices to replay")
    p.add_argument("--data", default="benchmarks/data")
    p.add_argument("--orders", type=int, default=200)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None,
                   help="default: benchmarks/results/ranked-v1.json (ranked-v2.json for bench-v2)")
    p.add_argument("--plot", default=None, help="default: docs/ranked-anytime.png (docs/benchmark/v2/... for bench-v2)")
    args = p.parse_args(argv)
    label, scenarios, default_out, default_plot = GRIDS[args.grid]
    args.out, args.plot = args.out or default_out, args.plot or default_plot
    if args.orders < 1 or args.jobs < 1:
        print("error: --orders and --jobs must be >= 1", file=sys.stderr)
        return 2
    started, docs, curves, skipped = time.perf_counter(), [], [], []
    present = recorded_slices(args.data)
    for name, search, law, transfer in scenarios:
        missing = [] if present is None else [s for s in (search, *law) if s not in present]
        if missing:
            skipped.append(f"{name} ({', '.join(missing)})")
            print(f"\n== {name}: skipped, not recorded yet: {', '.join(missing)}")
            continue
        try:
            doc, curve, _ = run_scenario(args.data, name, search, law, transfer, args.orders, args.jobs,
                                         replay_settings())
        except TableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"\n== {name}  (prior: {doc['prior']['check'] if doc['prior'] else 'none'})")
        print_table(doc["arms"], args.orders)
        for arm, g in doc["goal"].items():
            print(f"{arm}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) and not isinstance(v, bool) else f"{k}={v}"
                                         for k, v in g.items()))
        docs.append(doc)
        curves.append(curve)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"orders": args.orders, "data": args.data, "seconds": time.perf_counter() - started,
            "command": "python -m benchmarks.ranked_report " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not docs:
        print(f"error: no scenario of {label} is recorded in {args.data} yet", file=sys.stderr)
        return 2
    out.write_text(json.dumps({**meta, "grid": label, "skipped": skipped, "scenarios": docs}, indent=1, default=float),
                   encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(docs, args.orders, label, tuple(skipped)), encoding="utf-8")
    print(f"wrote {out}, {out.with_suffix('.md')}, {plot(docs, curves, Path(args.plot), label)} "
          f"({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
