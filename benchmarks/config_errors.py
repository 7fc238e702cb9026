"""How long a config error takes to reach the user, for every command, through the real scripts.

    python -m benchmarks.config_errors [--repeat 3] [--out benchmarks/results/config-errors-DATE.json]

Each case is a command line with one config mistake (a mistyped key, a bad value, a missing
argument): the `opsd` commands and the pipelines that validate their own sections (the demo,
calibrate_law). Each runs `--repeat` times in a fresh process (an empty OPSD_HOME), and the table
gives the median wall time, the exit code and which heavy libraries were imported before the error
(the same command run once more under ``python -c``, listing ``HEAVY`` found in ``sys.modules``).
Wall time on a shared machine is noisy: the median of a few runs, and say what else was running.
Issue 33's target: under 1 s, i.e. before torch, MLflow or Optuna is imported.
tests/project/test_first_hour.py runs the same cases through ``probe`` and asserts the imports, not the time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opsd_platform.process import configure_process

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "transformers", "mlflow", "optuna")

# (program, arguments): "opsd" is the command-line script, anything else a pipeline under ROOT.
CASES = [
    ("opsd", ["train", "model=tiny", "optim.learning_rate=0.1"]),
    ("opsd", ["train", "model=tiny", "optim.lr=-1"]),
    ("opsd", ["train", "model=tiny", "world=chess"]),
    ("opsd", ["gap", "loss.top_k=0"]),
    ("opsd", ["setup", "model=tinyy"]),
    ("opsd", ["search", "search.n_trails=3"]),
    ("opsd", ["search", "search.pruner=lawz"]),
    ("opsd", ["search", "optim.lr=-1"]),
    ("opsd", ["calibrate", "calibrate.seed=[0,1]"]),
    ("opsd", ["calibrate", "trainer.max_step=2"]),
    ("opsd", ["grid", "grid.workerz=2"]),
    ("opsd", ["fit-law", "law.methd=ols"]),
    ("opsd", ["fit-law", "law.level=1.5"]),
    ("opsd", ["law", "show", "nam=x"]),
    ("opsd", ["export", "export.gird=x"]),
    ("opsd", ["compare-grpo", "compare.contexts=[oracle]"]),
    ("opsd", ["judge", "world=code"]),
    ("opsd", ["ui", "port=abc"]),
    ("opsd", ["dashboard", "port=-5"]),
    ("pipelines/demo.py", ["demo.n_candidatez=3"]),
    ("pipelines/calibrate_law.py", ["calibrate.seed=1"]),
]

# Runs a case in-process, then reports on stderr which HEAVY modules the error path imported.
PROBE = """
import runpy, sys
heavy, prog, args = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
try:
    if prog == "opsd":
        from opsd_platform.cli import main
        rc = main(args)
    else:
        sys.argv = [prog, *args]
        runpy.run_path(prog, run_name="__main__")
        rc = 0
except SystemExit as exc:
    rc = exc.code
print("imported: " + " ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(rc)
"""


def command_line(program: str, args: list[str]) -> list[str]:
    if program != "opsd":
        return [sys.executable, str(ROOT / program), *args]
    script = Path(sys.executable).with_name("opsd")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "opsd_platform.cli", *args]


def probe(program: str, args: list[str], env: dict[str, str]) -> dict:
    """The case run once under PROBE: exit code, the user's message lines, the HEAVY modules imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), program, *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    lines = proc.stderr.strip().splitlines()
    imported = lines[-1].removeprefix("imported:").split() if lines and lines[-1].startswith("imported:") else None
    return {"exit": proc.returncode, "message": lines[:-1], "imported": imported, "stderr": proc.stderr}


def measure(program: str, args: list[str], repeat: int, home: str) -> dict:
    env = {**os.environ, "OPSD_HOME": home}
    times, proc = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run(command_line(program, args), capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - started)
    seen = probe(program, args, env)
    return {"command": " ".join([program, *args]), "exit": proc.returncode, "median_s": statistics.median(times),
            "times_s": times, "message": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "",
            "heavy_imported": seen["imported"], "torch_imported": "torch" in (seen["imported"] or [])}


def main() -> None:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        rows = [measure(program, case, args.repeat, home) for program, case in CASES]
    print(f"{'median s':>8}  exit  heavy imports before the error  command")
    for r in rows:
        heavy = "?" if r["heavy_imported"] is None else (",".join(r["heavy_imported"]) or "none")
        print(f"{r['median_s']:8.2f}  {r['exit']:4d}  {heavy:<30}  {r['command']}")
    print(f"\nslowest median {max(r['median_s'] for r in rows):.2f} s over {len(rows)} cases x {args.repeat} runs; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                        "load_average_1m": os.getloadavg()[0], "repeat": args.repeat,
                                        "heavy": list(HEAVY), "rows": rows}, indent=1) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
