"""The end-to-end demo (README command one, `make demo`): the gap law fitted on the recorded
benchmark, live gaps of configurations the table does not hold, each prediction with its interval
before training, the law's pruning, the survivors trained at the benchmark's settings, and
predicted vs measured at the end. The flow and its reasons: opsd_platform/demo/.

    python pipelines/demo.py [demo.key=value ...] [training overrides ...]
    python pipelines/demo.py --smoke      the same flow on the tiny model (a wiring check, ~minutes;
                                          its own store $OPSD_HOME/demo-smoke; numbers mean nothing)

Re-running resumes: measured gaps and finished trainings are reused from the demo's store.
"""

import sys

from opsd_platform.demo import SMOKE_OVERRIDES, demo_store, run_demo
from opsd_platform.jobs import run_job


def job(overrides: list[str]) -> int:
    try:
        result = run_demo(overrides)
    except KeyboardInterrupt:  # the grid re-queues the running trainings: the same command resumes
        print("demo: interrupted; run the same command to resume (measured gaps and finished trainings are kept)",
              file=sys.stderr)
        return 130
    print()
    print(result.summary_path.read_text(encoding="utf-8"))
    print(f"report: {result.summary_path}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    words = sys.argv[1:]
    if "--smoke" in words:
        words = demo_store([*SMOKE_OVERRIDES, *(w for w in words if w != "--smoke")], folder="demo-smoke")
    sys.exit(run_job("demo", job, words))
