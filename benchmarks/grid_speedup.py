"""Two workers x one torch thread against one worker x two threads, on the same grid points.

    python -m benchmarks.grid_speedup [--points 4] [--steps 3] [--out benchmarks/results/grid-speedup.json]

Runs a small grid of SmolLM2 points (the benchmark's arithmetic law slice, shortened: --steps
OPSD steps, a 16 x 2 validation, an 8-problem gap) twice through `opsd grid`, each time in a fresh
store with measurement reuse off (so both arms do the same work): once as ``grid.workers=2
grid.threads=1``, once as ``grid.workers=1 grid.threads=2``. Prints the wall time of each arm and
the speed-up, and writes them as JSON. Run it on an otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from opsd_platform.process import configure_process

CONTEXTS = ["none", "reference", "feedback", "peer_solution", "static", "peer_hints", "peer_or_feedback"]


def grid_file(path: Path, points: int, steps: int) -> Path:
    configs = [[f"context={c}"] for c in CONTEXTS[: (points + 1) // 2]]
    spec = {"name": "speedup", "seeds": [0, 1][: min(2, points)],
            "base": [f"trainer.max_steps={steps}", "world.n_val=16", "rollout.val_samples=2", "gap.n_problems=8",
                     "world=arithmetic", "world.n_train=36", "trainer.reuse_measurements=false"],
            "slices": [{"name": "law", "configs": configs}]}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_arm(spec: Path, workers: int, threads: int, home: Path) -> float:
    busy = os.getloadavg()[0]
    if busy > 0.5:  # wall time on a shared machine: say so rather than report a skewed ratio silently
        print(f"warning: load average {busy:.2f} before the {workers}x{threads} arm; the machine is not idle",
              file=sys.stderr)
    env = {**os.environ, "OPSD_HOME": str(home)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "opsd_platform.cli", "grid", f"grid.spec={spec}",
                          f"grid.workers={workers}", f"grid.threads={threads}", "grid.exported=null", "grid.poll_s=2"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"grid_speedup: the {workers}x{threads} arm failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/grid-speedup.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = grid_file(tmp / "grid.yaml", args.points, args.steps)
        models = Path(os.environ.get("OPSD_HOME", ".opsd")).resolve() / "models"
        arms, load = {}, {}
        for workers, threads in ((2, 1), (1, 2)):
            home = tmp / f"home-{workers}x{threads}"
            home.mkdir()
            if models.is_dir():  # the converted model, so neither arm pays the conversion
                (home / "models").symlink_to(models)
            load[f"{workers}x{threads}"] = {"before": os.getloadavg()[0]}
            arms[f"{workers}x{threads}"] = run_arm(spec, workers, threads, home)
            load[f"{workers}x{threads}"]["after_1min"] = os.getloadavg()[0]  # our own load included
            print(f"{workers} worker(s) x {threads} thread(s): {arms[f'{workers}x{threads}']:.0f} s wall")
    speedup = arms["1x2"] / arms["2x1"]
    print(f"speed-up of 2 workers x 1 thread over 1 worker x 2 threads: {speedup:.2f}x")
    result = {"points": len(CONTEXTS[: (args.points + 1) // 2]) * min(2, args.points), "steps": args.steps,
              "wall_s": arms, "speedup_2x1_over_1x2": speedup, "load_average": load,
              "cpu": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
