"""The cheap gap on the recorded v1 law slices, without training (issue 31).

    nice -n 5 python -m benchmarks.cheap_gap [--slices law-arithmetic law-pyfunc law-gemma3-arithmetic]
                                             [--budget-cpu-s 1500] [--report-only]
    nice -n 5 python -m benchmarks.cheap_gap --grid bench-v2 --slices law-arithmetic-v2 --cache <dir>

For each law-slice configuration x seed of a grid file (``--grid``: bench-v1's ``benchmark`` by default;
composed as the grid composes a point, one torch thread as the grid's workers ran), it regenerates the gap's student
side exactly as recorded (same model, world, problems, sampling settings and stream "gap/student") and checks
its per-problem passes against ``benchmarks/data/gap_problems.csv``; then, per configuration, the
self-teacher scores the student's tokens under that configuration's context once
(opsd_platform.training.cheap_gap) and every estimator of gap_estimators.py is computed with its
bootstrap interval. The student side is measured once per (slice, seed): every context shares it,
as the pass-rate gap's does.

Resumable: each (slice, seed)'s student rollouts and each point's estimates are cached under
``$OPSD_HOME/cheap-gap/`` as they finish, so a crash loses at most the point in progress; a rerun
measures only what is missing. ``--budget-cpu-s``: no new (slice, seed) starts once this run has
spent that many CPU seconds (the report then covers what is cached).

The report (benchmarks/cheap_gap_report.py) is written to benchmarks/results/cheap-gap.{json,md}
and docs/benchmark/cheap-gap.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from opsd_platform.config import ConfigError
from opsd_platform.config.compose import train_config
from opsd_platform.gap.measure import StudentSamples, cheap_gap, sample_student
from opsd_platform.gap.measurements import gap_sampling
from opsd_platform.process import configure_process
from opsd_platform.runs.train import setup_run
from opsd_platform.search.grid import load_spec, points
from opsd_platform.training.evaluation import Evaluation, cpu_seconds
from opsd_platform.training.rollout import Rollouts, engine_for

LAW_SLICES = ("law-arithmetic", "law-pyfunc", "law-gemma3-arithmetic")


def cache_dir() -> Path:
    home = Path(os.environ.get("OPSD_HOME", Path.cwd() / ".opsd"))
    return home / "cheap-gap"


class Cache:
    """Point results in one JSON file (rewritten atomically after each point), student sides as .pt."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "points.json"
        self.points: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def put(self, key: str, value: dict) -> None:
        self.points[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.points))
        tmp.replace(self.path)

    def student_path(self, slice_name: str, seed: int) -> Path:
        return self.root / f"student-{slice_name}-seed{seed}.pt"

    def load_student(self, slice_name: str, seed: int) -> StudentSamples | None:
        path = self.student_path(slice_name, seed)
        if not path.exists():
            return None
        d = torch.load(path, weights_only=False)
        return StudentSamples(Rollouts(**d["rollouts"]), Evaluation.from_json(d["evaluation"]),
                              d["cpu_s"], d["seconds"])

    def save_student(self, slice_name: str, seed: int, s: StudentSamples) -> None:
        path = self.student_path(slice_name, seed)
        torch.save({"rollouts": vars(s.rollouts), "evaluation": s.evaluation.to_json(), "cpu_s": s.cpu_s,
                    "seconds": s.seconds}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)


def recorded_student_passes(data: Path) -> pd.DataFrame:
    """Per recorded run: its point key, and the student passes per problem (gap_problems.csv)."""
    runs = pd.read_csv(data / "runs.csv")[["run_id", "point", "slice", "seed"]]
    problems = pd.read_csv(data / "gap_problems.csv")
    return problems.merge(runs, on="run_id")


def check_student(student: StudentSamples, recorded: pd.DataFrame, n: int) -> dict:
    """Does the regenerated student side equal every recorded run's (per problem passes)?"""
    ours = np.rint(np.array(student.evaluation.per_problem) * n).astype(int)
    per_run = []
    for run_id, part in recorded.groupby("run_id"):
        theirs = part["student_passes"].to_numpy(dtype=int)
        per_run.append({"run_id": run_id, "equal": bool(len(theirs) == len(ours) and (theirs == ours).all()),
                        "recorded_pass_rate": float(theirs.sum() / (n * len(theirs)))})
    # None: no recorded run of this (slice, seed) yet to compare with (a seed still queued in the grid)
    return {"pass_rate": float(student.evaluation.pass_rate), "runs": per_run,
            "all_equal": all(r["equal"] for r in per_run) if per_run else None}


def measure_seed(slice_name: str, seed: int, group: list, cache: Cache, recorded: pd.DataFrame,
                 progress=print) -> None:
    """The student side of (slice, seed) and every configuration's cheap gap, cached as they finish."""
    cfgs = {p.key: train_config([*p.overrides, "trainer.num_threads=1", "trainer.progress_bar=false"]) for p in group}
    first = next(iter(cfgs.values()))
    world, model, tokenizer = setup_run(first)
    problems = world.problems(first.gap.split)[: first.gap.n_problems]
    sampling = gap_sampling(first)
    student = cache.load_student(slice_name, seed)
    if student is None:
        engine = engine_for(first, model, tokenizer, first.gap.batch_size)  # rows per call as measure_initial_gap
        student = sample_student(engine, world, problems, sampling, seed)
        cache.save_student(slice_name, seed, student)
    check = check_student(student, recorded[(recorded["slice"] == slice_name) & (recorded["seed"] == seed)], sampling.n)
    progress(f"{slice_name} seed {seed}: student pass rate {check['pass_rate']:.4f} "
             f"({student.cpu_s:.0f} CPU-s); equal to the recorded student side: {check['all_equal']}")
    cache.put(f"student/{slice_name}/seed{seed}", {**check, "cpu_s": student.cpu_s, "seconds": student.seconds,
                                                   "tokens": student.evaluation.tokens})
    for key, cfg in cfgs.items():
        if key in cache.points:
            continue
        result, summary = cheap_gap(model, tokenizer, cfg.context, problems, student, sampling.n,
                                    graded_fraction=cfg.graded_fraction, batch_size=cfg.rollout.batch_size,
                                    share_prefix=cfg.trainer.share_prompt_prefix, precision=cfg.trainer.precision,
                                    n_boot=cfg.gap.bootstrap, level=cfg.gap.level, seed=seed, form=cfg.context_form)
        progress(f"  {key} {cfg.context}: scored in {result.cpu_s:.1f} CPU-s; "
                 + ", ".join(f"{k} {e.value:+.4f}" for k, e in result.estimates.items()))
        cache.put(key, {**result.to_dict(), "slice": slice_name, "seed": seed,
                        "summary": {"passed": summary.passed.tolist(), "ratio": summary.ratio.tolist(),
                                    "log_weight": summary.log_weight.tolist()}})


def measure(slices, cache: Cache, data: Path, budget_cpu_s: float, progress=print, grid: str = "benchmark") -> None:
    recorded = recorded_student_passes(data)
    start = cpu_seconds()
    spec = load_spec(grid)
    for slice_name in slices:
        grid_points = points(spec, only=[slice_name])
        for seed in sorted({p.seed for p in grid_points}):
            group = [p for p in grid_points if p.seed == seed]
            if all(p.key in cache.points for p in group) and f"student/{slice_name}/seed{seed}" in cache.points:
                continue
            spent = cpu_seconds() - start
            if spent >= budget_cpu_s:
                progress(f"budget: {spent:.0f} CPU-s spent (>= {budget_cpu_s:.0f}); {slice_name} seed {seed} "
                         "and later not measured")
                return
            measure_seed(slice_name, seed, group, cache, recorded, progress)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="benchmark",
                    help="the grid file whose law slices are measured (benchmark = bench-v1)")
    ap.add_argument("--slices", nargs="+", default=None, help="law slices of that grid (default: bench-v1's three)")
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--cache", type=Path, default=None, help="default $OPSD_HOME/cheap-gap")
    ap.add_argument("--budget-cpu-s", type=float, default=1500.0)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/cheap-gap[-<grid>].json")
    ap.add_argument("--plot", type=Path, default=None, help="default docs/benchmark/cheap-gap[-<grid>].png")
    args = ap.parse_args(argv)
    try:
        valid = [s["name"] for s in load_spec(args.grid)["slices"] if s["name"].startswith("law")]
    except ConfigError as exc:
        print(f"--grid: {exc}", file=sys.stderr)
        return 2
    slices = args.slices or (list(LAW_SLICES) if args.grid == "benchmark" else valid)
    unknown = set(slices) - set(valid)
    if unknown:
        print(f"--slices: unknown {', '.join(sorted(unknown))} in grid {args.grid}; valid: {', '.join(valid)}",
              file=sys.stderr)
        return 2
    suffix = "" if args.grid == "benchmark" else f"-{args.grid}"
    torch.set_num_threads(1)
    cache = Cache(args.cache or cache_dir())
    if not args.report_only:
        measure(slices, cache, args.data, args.budget_cpu_s, grid=args.grid)
    from benchmarks.cheap_gap_report import report

    # one cache may hold several grids' points: report the slices asked for (keys name their slice)
    def slice_of(key: str) -> str:
        return key.split("/")[1] if key.startswith("student/") else key.split("/")[0]

    mine = {k: v for k, v in cache.points.items() if slice_of(k) in slices}
    report(mine, args.data, args.out or Path(f"benchmarks/results/cheap-gap{suffix}.json"),
           args.plot or Path(f"docs/benchmark/cheap-gap{suffix}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
