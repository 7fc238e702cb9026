"""How long a config typo takes to reach the user, through the real `opsd` script.

    python -m benchmarks.config_errors [--repeat 3] [--out benchmarks/results/config-errors.json]

Each case is a command line with one config mistake; each runs `--repeat` times in a fresh
process (an empty OPSD_HOME), and the table gives the median wall time, the exit code, the
message, and whether torch was imported (the same command run once more in-process under
``python -c``). Wall time on a shared machine is noisy: the median of a few runs, and say what
else was running. Issue 33's target: under 1 s, i.e. before torch is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ["train", "model=tiny", "optim.learning_rate=0.1"],
    ["train", "model=tiny", "optim.lr=-1"],
    ["train", "model=tiny", "world=chess"],
    ["gap", "loss.top_k=0"],
    ["search", "search.trials=4"],
    ["calibrate", "calibrate.seed=[0,1]"],
    ["grid", "grid.workerz=2"],
    ["fit-law", "law.methd=ols"],
    ["compare-grpo", "compare.contexts=[oracle]"],
    ["ui", "port=abc"],
    ["dashboard", "port=-5"],
]

PROBE = ("import sys; from opsd_platform.cli import main; rc = main(sys.argv[1:]); "
         "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")


def opsd_command() -> list[str]:
    script = Path(sys.executable).with_name("opsd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "opsd_platform.cli"]


def measure(case: list[str], repeat: int, home: str) -> dict:
    env = {**os.environ, "OPSD_HOME": home}
    times, proc = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run(opsd_command() + case, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - started)
    probe = subprocess.run([sys.executable, "-c", PROBE, *case], capture_output=True, text=True, env=env)
    return {"command": "opsd " + " ".join(case), "exit": proc.returncode, "median_s": statistics.median(times),
            "times_s": times, "message": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "",
            "torch_imported": probe.stderr.strip().endswith("torch imported")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        rows = [measure(case, args.repeat, home) for case in CASES]
    print(f"{'median s':>8}  exit  torch  command")
    for r in rows:
        print(f"{r['median_s']:8.2f}  {r['exit']:4d}  {'yes' if r['torch_imported'] else 'no':>5}  {r['command']}")
    print(f"\nslowest median {max(r['median_s'] for r in rows):.2f} s over {len(rows)} cases x {args.repeat} runs; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                        "load_average_1m": os.getloadavg()[0], "repeat": args.repeat,
                                        "rows": rows}, indent=1) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
