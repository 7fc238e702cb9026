"""bench-v2's recipe pilot, and the recipe its rule chooses per world, from the exported table alone.

    python -m benchmarks.pilot_report [--data benchmarks/data] [--out benchmarks/results/pilot-report.json]

The pilot slices (``pilot-<world>``: OPSD, ``pilot-grpo-<world>``: GRPO) train a few recipes
(lr, EMA rate, token clip) on `none` and on contexts that should move the student, one seed,
before the grid. The rule, fixed before the pilot ran (conf/grid/bench-v2.yaml):

1. a recipe is **stable** when `none` (a teacher that sees nothing: its loss is ~0, so any change
   is drift) stays within the world's seed noise of 0: |improvement of none| <= 2 x the seed std
   of the improvement, measured on the world's bench-v1 law slice (configurations x 2 seeds);
2. among the stable recipes, the one where the contexts **spread most** (max - min improvement
   over the recipe's contexts, `none` included): the recipe under which the contexts can be told
   apart, which is what the law's x-axis needs;
3. GRPO: the lr with the largest improvement (one number per lr: the baseline is tuned as well).

A world without a stable recipe is reported as such: the grid would then measure drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.goal_checks import pooled_seed_std
from opsd_platform.errors import ExportError
from opsd_platform.law.export import read_table
from opsd_platform.process import configure_process

RECIPE = ["optim.lr", "teacher.ema_rate", "loss.token_clip"]
DEFAULTS = {"optim.lr": 1e-5, "teacher.ema_rate": 0.05, "loss.token_clip": None}  # bench-v1's recipe


def seed_std(runs: pd.DataFrame, world: str) -> float:
    """Pooled within-configuration std of the improvement over seeds on the world's bench-v1 law
    slice (SmolLM2): the noise a single pilot run is judged against."""
    part = runs[(runs["world"] == world) & (runs["grid"] == "bench-v1") & (runs["family"] == "smollm2")
                & runs["slice"].astype(str).str.startswith("law")]
    return pooled_seed_std(g["improvement"].to_numpy() for _, g in part.groupby("config"))


def recipe_of(row: pd.Series) -> tuple:
    out = []
    for col in RECIPE:
        v = row.get(col, DEFAULTS[col])
        out.append(DEFAULTS[col] if v is None or (isinstance(v, float) and np.isnan(v)) else v)
    return tuple(out)


def choose(runs: pd.DataFrame) -> dict:
    """Per world: the pilot's table, each recipe's verdict, and the chosen OPSD and GRPO recipes."""
    out = {}
    # the first pilot's slices only (`pilot-<world>`, `pilot-grpo-<world>`: 10 steps, one seed); the clip
    # checks (`pilot-clip-*`, 20 steps, three seeds) are read by benchmarks/token_clip.py
    name = runs["slice"].astype(str)
    pilots = runs[(name == "pilot-" + runs["world"].astype(str)) | (name == "pilot-grpo-" + runs["world"].astype(str))]
    for world, part in pilots.groupby("world"):
        noise = seed_std(runs, world)
        bar = 2 * noise
        opsd = part[~part["slice"].str.startswith("pilot-grpo")]
        recipes = []
        for recipe, g in opsd.groupby(opsd.apply(recipe_of, axis=1)):
            imp = dict(zip(g["context"], g["improvement"].astype(float)))
            none = imp.get("none", float("nan"))
            stable = bool(abs(none) <= bar) if np.isfinite(none) else False
            recipes.append({**dict(zip(RECIPE, recipe)), "improvement": imp, "none": none, "stable": stable,
                            "spread": float(max(imp.values()) - min(imp.values())) if imp else float("nan"),
                            "val_initial": float(g["val_initial"].mean())})
        stable = [r for r in recipes if r["stable"]]
        chosen = max(stable, key=lambda r: r["spread"]) if stable else None
        grpo = part[part["slice"].str.startswith("pilot-grpo")]
        grpo_rows = [{"optim.lr": float(r["optim.lr"]), "improvement": float(r["improvement"])}
                     for _, r in grpo.iterrows()]
        out[world] = {"seed_std": noise, "drift_bar": bar, "recipes": recipes,
                      "chosen": {k: chosen[k] for k in RECIPE} if chosen else None,
                      "grpo": grpo_rows,
                      "grpo_chosen": max(grpo_rows, key=lambda r: r["improvement"]) if grpo_rows else None}
    return out


def apply(res: dict, grid_file: Path) -> list[str]:
    """Write each world's chosen recipe into the grid file's `-v2` slices of that world (OPSD
    slices: lr, EMA rate, token clip; GRPO slices: lr), as text so its comments stay. Returns what
    changed, a line each. A world without a stable recipe is left as it is (and said)."""
    text = grid_file.read_text()
    blocks = re.split(r"(?m)^(?=  - name: )", text)
    said = []
    for k, block in enumerate(blocks):
        m = re.match(r"  - name: (\S+)", block)
        if not m or not m.group(1).endswith("-v2"):
            continue
        world = re.search(r"world=(\w+)", block)
        r = res.get(world.group(1)) if world else None
        if r is None:
            continue
        grpo = "algorithm=grpo" in block
        chosen = ({"optim.lr": r["grpo_chosen"]["optim.lr"]} if r.get("grpo_chosen") else None) if grpo else r["chosen"]
        if not chosen:
            said.append(f"{m.group(1)}: no chosen recipe for {world.group(1)}; left as it is")
            continue
        for key, value in chosen.items():
            new = f"{key}={'null' if value is None else f'{value:g}' if isinstance(value, float) else value}"
            block = re.sub(rf"{re.escape(key)}=[^,\]\s]+", new, block)
        blocks[k] = block
        said.append(f"{m.group(1)}: {', '.join(f'{a}={b}' for a, b in chosen.items())}")
    grid_file.write_text("".join(blocks))
    return said


def markdown(res: dict) -> str:
    lines = []
    for world, r in res.items():
        lines += [f"### {world} (drift bar |none| <= {r['drift_bar']:.3f} = 2 x seed std {r['seed_std']:.3f})", "",
                  "| lr | EMA | clip | " + " | ".join(sorted({c for x in r["recipes"] for c in x["improvement"]}))
                  + " | stable | spread |",
                  "|---" * (5 + len({c for x in r["recipes"] for c in x["improvement"]})) + "|"]
        contexts = sorted({c for x in r["recipes"] for c in x["improvement"]})
        for x in sorted(r["recipes"], key=lambda x: x["optim.lr"]):
            cells = [f"{x['improvement'][c]:+.3f}" if c in x["improvement"] else "" for c in contexts]
            lines.append(f"| {x['optim.lr']:g} | {x['teacher.ema_rate']:g} | {x['loss.token_clip']} | "
                         + " | ".join(cells)
                         + f" | {'yes' if x['stable'] else 'no'} | {x['spread']:.3f} |")
        lines += ["", f"Chosen OPSD recipe: {r['chosen'] or 'none stable'}"]
        if r["grpo"]:
            lines += ["", "GRPO: " + ", ".join(f"lr {g['optim.lr']:g}: {g['improvement']:+.3f}" for g in r["grpo"])
                      + f"; chosen lr {r['grpo_chosen']['optim.lr']:g}"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pilot-report.json"))
    ap.add_argument("--apply", type=Path, default=None,
                    help="write the chosen recipes into this grid file's -v2 slices")
    args = ap.parse_args(argv)
    try:
        runs = read_table(args.data / "runs.csv")
    except ExportError as exc:
        print(f"pilot_report: {exc}", file=sys.stderr)
        return 2
    if not runs["slice"].astype(str).str.startswith("pilot-").any():
        print(f"pilot_report: {args.data / 'runs.csv'} has no pilot-* rows yet", file=sys.stderr)
        return 2
    res = choose(runs)
    print(markdown(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    if args.apply is not None:
        for line in apply(res, args.apply):
            print(f"applied: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
