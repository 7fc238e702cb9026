"""TEST FIXTURE, not measured data: a small synthetic benchmark table for the pruning replay.

Writes runs.csv, steps.csv and gap_problems.csv in the schema of benchmarks/data/ (see
benchmarks/README.md): one model, one world; a `law` slice of 5 contexts at lr 2e-5 and a `search`
slice of 5 contexts x lr {1e-5, 3e-5} = 10 configurations; 2 seeds each; 10 training steps,
validation every 2 steps; 24 gap problems x 4 samples. Improvement = -0.05 + 1.2 * gap, plus a
learning-rate effect and seed noise. The student half of the gap and the initial validation depend
only on the seed (shared keys), the gap on (context, seed), not on the learning rate.

    python tests/data/replay_fixture/make_fixture.py   # rewrites the CSVs beside this file
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

CONTEXTS = {"none": (0.00, 40), "static": (0.08, 60), "feedback": (0.16, 90), "peer_solution": (0.24, 120),
            "reference": (0.36, 150)}  # context -> (teacher's pass-rate lift, teacher prompt tokens)
LAW_CONTEXTS = ("none", "static", "feedback", "reference")
LAW_EXTRA = "peer_solution"
SEARCH_LRS = (1e-5, 3e-5)
SEEDS = (0, 1)
STEPS, VAL_EVERY, N_PROBLEMS, SAMPLES = 10, 2, 24, 4


def _rows(seed_offset: int = 0):
    difficulty = np.random.default_rng(100).uniform(0.1, 0.7, N_PROBLEMS)  # student pass probability per problem
    student = {s: np.random.default_rng(200 + s).binomial(SAMPLES, difficulty) for s in SEEDS}
    runs, steps, problems = [], [], []
    plan = [("law", c, 2e-5) for c in LAW_CONTEXTS] + [("search", c, lr) for c in CONTEXTS for lr in SEARCH_LRS]
    # A fifth law context, so that the first law may decide (law/holdout.py: check_law: >= 5 configurations);
    # last, so every earlier row keeps its random stream
    plan.append(("law", LAW_EXTRA, 2e-5))
    for slice_, context, lr in plan:
        lift, ctx_tokens = CONTEXTS[context]
        config = f"{slice_}/{context}/lr{lr:g}"
        for seed in SEEDS:
            rid = f"r{len(runs):03d}"
            rng = np.random.default_rng([len(runs), 7 + seed_offset])
            teacher = np.random.default_rng([300 + seed, list(CONTEXTS).index(context)]).binomial(
                SAMPLES, np.clip(difficulty + lift, 0, 1))
            diffs = (teacher - student[seed]) / SAMPLES
            gap = float(diffs.mean())
            boot = diffs[np.random.default_rng(seed).integers(0, N_PROBLEMS, (500, N_PROBLEMS))].mean(axis=1)
            lr_effect = (0.03 if lift > 0.1 else -0.02) if lr > 2e-5 else 0.0
            improvement = round(-0.05 + 1.2 * gap + lr_effect + rng.normal(0, 0.02), 6)
            val_initial = 0.30 + 0.01 * seed
            student_cpu, student_tok = 2.0, 800.0
            gap_cpu, gap_tok = student_cpu + 2.5 + ctx_tokens / 100, student_tok + 900.0
            cum_cpu = cum_tok = 0.0
            for step in range(1, STEPS + 1):
                cum_cpu += 8.0 + ctx_tokens / 50
                cum_tok += 2000.0
                val = val_cpu = ""
                if step % VAL_EVERY == 0:
                    cum_cpu += 3.0
                    cum_tok += 1000.0
                    val_cpu = 3.0
                    frac = (step / STEPS) ** 0.7
                    noise = 0.0 if step == STEPS else rng.normal(0, 0.01)
                    val = round(val_initial + improvement * frac + noise, 6) if step < STEPS else round(val_initial + improvement, 6)
                steps.append({"run_id": rid, "step": step, "rollout_pass_rate": round(float(rng.uniform(0.2, 0.6)), 4),
                              "val_pass_rate": val, "cpu_s": round(cum_cpu, 6), "tokens": cum_tok, "val_cpu_s": val_cpu})
            for p in range(N_PROBLEMS):
                problems.append({"run_id": rid, "problem": f"p{p:02d}", "student_passes": int(student[seed][p]),
                                 "teacher_passes": int(teacher[p]), "samples": SAMPLES})
            runs.append({
                "run_id": rid, "model": "fixture-model", "family": "fixture", "world": "arithmetic", "context": context,
                "config": config, "seed": seed, "steps": STEPS, "gap": round(gap, 12),
                "gap_lower": round(float(np.percentile(boot, 2.5)), 6), "gap_upper": round(float(np.percentile(boot, 97.5)), 6),
                "gap_tokens": gap_tok, "gap_cpu_s": round(gap_cpu, 6), "val_initial": val_initial,
                "val_final": round(val_initial + improvement, 6), "improvement": improvement, "train_tokens": cum_tok,
                "train_cpu_s": round(cum_cpu, 6), "slice": slice_, "gap_key": f"{context}/s{seed}",
                "gap_student_key": f"s{seed}", "gap_student_cpu_s": student_cpu, "gap_student_tokens": student_tok,
                "val_key": f"s{seed}", "val_initial_cpu_s": 6.0, "val_initial_tokens": 3000.0,
                "context_tokens": ctx_tokens, "lr": lr,
            })
    return runs, steps, problems


def write_fixture(directory: Path | str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("runs.csv", "steps.csv", "gap_problems.csv"), _rows()):
        with open(directory / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return directory


if __name__ == "__main__":
    print(write_fixture(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
