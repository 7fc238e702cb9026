"""The end-to-end demo on the embedded default (SmolLM2-135M-Instruct, CPU, ~20 minutes on 2 cores):
a small calibration grid -> fit -> register the law -> a law-pruned search -> report, all in the
local MLflow store, ending with what was found and how to look at it.

    python pipelines/demo.py [hydra overrides ...]     (what `make demo` runs)

Sizes are in opsd_platform/pipelines.py (DEMO_*); any override given here wins. Re-running
resumes: finished calibration points are not trained again.
"""

import sys

from opsd_platform.pipelines import demo, run_job


def job(overrides: list[str]) -> int:
    result = demo(overrides)
    print()
    print(result.summary_path.read_text(encoding="utf-8"))
    if result.study_report:
        print(f"study report: {result.study_report}")
    print(f"report: {result.summary_path}")
    return 1 if result.calibrate_law.calibration.failed else 0


if __name__ == "__main__":
    sys.exit(run_job("demo", job, sys.argv[1:]))
