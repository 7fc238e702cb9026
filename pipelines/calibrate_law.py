"""Calibrate a grid, then fit, validate and register the gap law on its points (one job).

    python pipelines/calibrate_law.py [calibrate.*=...] [law.*=...] [training overrides ...]
    e.g. python pipelines/calibrate_law.py model=tiny calibrate.contexts=[none,feedback,reference] \
             calibrate.seeds=[0] trainer.max_steps=2 tracking.uri=sqlite:////tmp/c/mlflow.db

The same as `opsd calibrate ...` followed by `opsd fit-law law.calibration=<name>`; the MLproject's
`calibrate` entry point calls it. Exit code 1 when a point failed, 2 when no law can be fitted.
"""

import sys

from opsd_platform.jobs import calibrate_law, law_lines, look_lines, run_job


def job(overrides: list[str]) -> int:
    res = calibrate_law(overrides)
    print("\n".join(["", *law_lines(res), "", *look_lines(res)]))
    return 1 if res.calibration.failed else 0


if __name__ == "__main__":
    sys.exit(run_job("calibrate_law", job, sys.argv[1:]))
