"""bench-v2's second recipe pilot: which token clip the grid records with, chosen by a rule fixed
before the pilot's last points landed, from the exported table alone.

    python -m benchmarks.clip_pilot [--data benchmarks/data] [--out benchmarks/results/clip-pilot.json]
                                    [--plot docs/benchmark/v2/clip-pilot.png]

Why a second pilot. The first (benchmarks/pilot_report.py) varied lr at one seed with the per-entry
token clip held at 0.05; benchmarks/token_clip.py then showed that clip moves the loss's minimum
off "student = teacher". Three clip forms were trained on the same contexts x seeds at the first
pilot's lr and EMA rate (conf/grid/bench-v2.yaml): the per-entry clip (`law-arithmetic-v2`, whose
points at these contexts are the pilot's), no clip (`pilot-clip-*`) and each position's summed
divergence capped (`pilot-clipmode-*`, `loss.clip_mode=position`); and a fourth recipe aimed at
why `none` moves at all: no clip with AdamW's epsilon at 1e-5 (`pilot-eps-*`: Adam turns the
float-noise gradient of a teacher equal to its student into full-size steps). Only the (context,
seed) cells every recipe of a world has are compared, so the recipes are judged on the same draws.

The rule (the issue's "none must not drift, then the contexts spread most", at several seeds):

1. **stable**: `none`'s mean improvement within 2 standard errors of 0 from the validation's
   sampling alone (`goal_checks.sampling_se`). This bar does not depend on the recipe: a bar made
   from the recipe's own seed std would pass the noisiest recipe (the per-entry clip's seed std is
   0.21 on arithmetic, which puts its own bar at 0.24);
2. **informative**: the contexts differ by more than the seeds do (one-way ANOVA over contexts,
   p < 0.05): a recipe whose contexts cannot be told apart gives the law's x-axis nothing to explain;
3. among recipes both stable and informative, the one whose context means **spread most**;
4. when no recipe is both, the informative recipe whose `none` is closest to 0 in units of its
   sampling bar, with the failure stated: the grid then records a known drift, not an unknown one.

A world with one seed per cell has no ANOVA; it is shown, and takes the clip chosen where the rule
could decide (the clip is a property of the loss, not of the world).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.goal_checks import DRIFT_BAR_STDS, pooled_seed_std, recipe_label, sampling_se  # noqa: E402
from benchmarks.provenance import git_commit  # noqa: E402
from opsd_platform.errors import ExportError  # noqa: E402
from opsd_platform.law.export import read_table  # noqa: E402
from opsd_platform.process import configure_process  # noqa: E402

# per world: the slices holding the pilot's recipes (conf/grid/bench-v2.yaml)
PILOT_SLICES = {"arithmetic": ("law-arithmetic-v2", "pilot-clip-arithmetic", "pilot-clipmode-arithmetic",
                               "pilot-eps-arithmetic"),
                "pyfunc": ("law-pyfunc-v2", "pilot-clip-pyfunc")}
ANOVA_P = 0.05  # rule 2


def pilot_rows(runs: pd.DataFrame, world: str, slices) -> pd.DataFrame:
    """The world's rows of the pilot slices, each with its `recipe` label."""
    part = runs[runs["slice"].isin(slices) & (runs["world"] == world)]
    return part.assign(recipe=part.apply(recipe_label, axis=1) if len(part) else pd.Series(dtype=str))


def common_cells(part: pd.DataFrame) -> pd.DataFrame:
    """The rows whose (context, seed) every recipe of the frame has (graded shares are not pilot cells)."""
    part = part[part["context"] != "graded"]
    cells = [set(zip(g["context"], g["seed"])) for _, g in part.groupby("recipe")]
    keep = set.intersection(*cells) if cells else set()
    return part[np.array([(c, s) in keep for c, s in zip(part["context"], part["seed"])], dtype=bool)]


def recipe_row(recipe: str, g: pd.DataFrame) -> dict:
    """One recipe's verdict on its cells: `none` against the sampling bar, seed noise, the contexts' spread."""
    none = g[g["context"] == "none"]
    by_context = {c: h["improvement"].astype(float).to_numpy() for c, h in g.groupby("context")}
    means = {c: float(v.mean()) for c, v in by_context.items()}
    groups = [v for v in by_context.values() if len(v) >= 2]
    seed_std = pooled_seed_std(groups)
    anova_p = float(stats.f_oneway(*groups).pvalue) if len(groups) >= 2 else float("nan")
    none_mean = float(none["improvement"].mean()) if len(none) else float("nan")
    bar = DRIFT_BAR_STDS * sampling_se(none) if len(none) else float("nan")
    return {"recipe": recipe, "seeds": int(g["seed"].nunique()), "runs": len(g),
            "none": " / ".join(none.sort_values("seed")["improvement"].map("{:+.3f}".format)),
            "none_mean": none_mean, "sampling_bar": bar,
            "stable": bool(abs(none_mean) <= bar) if math.isfinite(bar) else None,
            "seed_std": seed_std, "anova_p": anova_p,
            "informative": bool(anova_p < ANOVA_P) if math.isfinite(anova_p) else None,
            "context_means": means, "spread": float(max(means.values()) - min(means.values()))}


def decide(rows: list[dict]) -> tuple[str | None, str]:
    """The rule (module docstring): the chosen recipe and why, in a sentence."""
    both = [r for r in rows if r["stable"] and r["informative"]]
    if both:
        best = max(both, key=lambda r: r["spread"])
        return best["recipe"], f"stable and informative; the widest spread of those ({best['spread']:.3f})"
    informative = [r for r in rows if r["informative"]]
    if informative:
        best = min(informative, key=lambda r: abs(r["none_mean"]) / r["sampling_bar"])
        return best["recipe"], (f"no recipe is both stable and informative: of the informative ones, `none` is "
                                f"closest to 0 here ({best['none_mean']:+.3f} against a bar of "
                                f"{best['sampling_bar']:.3f}); the grid records this drift")
    return None, "no recipe separates the contexts (ANOVA) at these seeds"


def choose(runs: pd.DataFrame) -> dict:
    """Per world: each recipe's row and the rule's choice. A world the rule cannot decide (one seed)
    takes the clip chosen where it could."""
    out = {}
    for world, slices in PILOT_SLICES.items():
        part = pilot_rows(runs, world, slices)
        if part.empty:
            continue
        part = common_cells(part)
        rows = [recipe_row(name, g) for name, g in part.groupby("recipe")]
        chosen, why = decide(rows)
        out[world] = {"slices": list(slices), "cells": int(len(part) / max(1, part["recipe"].nunique())),
                      "recipes": rows, "chosen": chosen, "why": why}
    decided = [w["chosen"] for w in out.values() if w["chosen"] is not None]
    for w in out.values():
        if w["chosen"] is None and decided:
            w["chosen"], w["why"] = decided[0], f"{w['why']}; takes the clip chosen where the rule decided"
    return out


def none_gradients(runs: pd.DataFrame, steps: pd.DataFrame, res: dict, shown=(1, 2, 3, 5, 10, 20)) -> dict:
    """Per world and recipe: `none`'s gradient norm (before clipping) at a few steps, the median over its
    seeds. Its teacher starts equal to the student, so the first gradient is float noise; how fast
    the norm then grows is how fast the optimizer walks the student away (the `optim.eps` recipe)."""
    if "train_grad_norm" not in steps:
        return {}
    out = {}
    for world, w in res.items():
        part = pilot_rows(runs, world, w["slices"])
        part = part[part["context"] == "none"]
        curves = steps[steps["run_id"].isin(part["run_id"])].merge(part[["run_id", "recipe"]], on="run_id")
        table = curves[curves["step"].isin(shown)].groupby(["recipe", "step"])["train_grad_norm"].median()
        out[world] = {recipe: {int(s): float(v) for s, v in g.droplevel(0).items()}
                      for recipe, g in table.groupby(level=0)}
    return out


def markdown(res: dict) -> str:
    lines = []
    for world, w in res.items():
        contexts = sorted({c for r in w["recipes"] for c in r["context_means"]})
        lines += [f"### {world} ({w['cells']} cells per recipe: {', '.join(w['slices'])})", "",
                  "| recipe | none per seed | none mean | sampling bar | stable | seed std | ANOVA p | "
                  + " | ".join(contexts) + " | spread |", "|---" * (8 + len(contexts)) + "|"]
        for r in w["recipes"]:
            flag = lambda v: "?" if v is None else "yes" if v else "no"  # noqa: E731
            lines.append(f"| {r['recipe']} | {r['none']} | {r['none_mean']:+.3f} | {r['sampling_bar']:.3f} | "
                         f"{flag(r['stable'])} | {r['seed_std']:.3f} | {r['anova_p']:.2g} | "
                         + " | ".join(f"{r['context_means'][c]:+.3f}" if c in r["context_means"] else ""
                                      for c in contexts) + f" | {r['spread']:.3f} |")
        lines += ["", f"Chosen: **{w['chosen']}**: {w['why']}.", ""]
        grads = w.get("none_grad_norm") or {}
        if grads:
            steps = sorted({s for g in grads.values() for s in g})
            lines += ["`none`'s gradient norm before clipping (median over seeds) at step:", "",
                      "| recipe | " + " | ".join(map(str, steps)) + " |", "|---" * (1 + len(steps)) + "|"]
            lines += [f"| {recipe} | " + " | ".join(f"{g[s]:.2g}" if s in g else "" for s in steps) + " |"
                      for recipe, g in grads.items()]
            lines.append("")
    return "\n".join(lines)


def plot(runs: pd.DataFrame, res: dict, path: Path) -> None:
    """Improvement per context, one panel per world, recipes side by side, seeds as dots."""
    fig, axes = plt.subplots(1, len(res), figsize=(6 * len(res), 4), squeeze=False)
    for ax, (world, w) in zip(axes[0], res.items()):
        part = common_cells(pilot_rows(runs, world, w["slices"]))
        contexts = sorted(part["context"].unique())
        recipes = [r["recipe"] for r in w["recipes"]]
        width = 0.8 / len(recipes)
        for k, recipe in enumerate(recipes):
            g = part[part["recipe"] == recipe]
            offset = (k - (len(recipes) - 1) / 2) * width  # the recipe's place beside the others
            x = np.array([contexts.index(c) for c in g["context"]]) + offset
            ax.scatter(x, g["improvement"], s=18, label=recipe + (" (chosen)" if recipe == w["chosen"] else ""))
            means = g.groupby("context")["improvement"].mean()
            centre = np.array([contexts.index(c) for c in means.index]) + offset
            ax.hlines(means.to_numpy(), centre - width / 2, centre + width / 2, colors=f"C{k}")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(len(contexts)), contexts)
        ax.set_title(f"{world}: improvement by clip (dots: seeds, bars: means)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/clip-pilot.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmark/v2/clip-pilot.png"))
    args = ap.parse_args(argv)
    try:
        runs = read_table(args.data / "runs.csv")
    except ExportError as exc:
        print(f"clip_pilot: {exc}", file=sys.stderr)
        return 2
    res = choose(runs)
    if not res:
        print(f"clip_pilot: {args.data / 'runs.csv'} has none of the slices {PILOT_SLICES}", file=sys.stderr)
        return 2
    steps = read_table(args.data / "steps.csv") if (args.data / "steps.csv").exists() else pd.DataFrame()
    for world, grads in none_gradients(runs, steps, res).items():
        res[world]["none_grad_norm"] = grads
    text = markdown(res)
    print(text)
    command = "python -m benchmarks.clip_pilot " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "commit": git_commit(), "worlds": res}, indent=1))
    args.out.with_suffix(".md").write_text(f"`{command}` (commit {git_commit()})\n\n{text}")
    plot(runs, res, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
