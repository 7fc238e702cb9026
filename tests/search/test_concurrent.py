"""Concurrent writers: several processes logging MLflow runs to one SQLite tracking store, and
trials to one Optuna study, at the same time. Nothing may be lost or duplicated: every run,
param, metric point and trial is counted afterwards.

Workers are real processes (``python -c``), released together by a start file once they have
finished importing, so their writes overlap.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from opsd_platform import tracking

HERE = Path(__file__).resolve().parent
PROCESSES = 4
RUNS_PER_PROCESS = 6
STEPS = 8
METRICS = ("train/loss", "rollout/pass_rate")
TRIALS_PER_PROCESS = 15


def wait_for(start_file: str, worker: int) -> None:
    """Say this worker is ready (imports done), then block until the parent releases all at once."""
    Path(f"{start_file}.ready{worker}").touch()
    while not Path(start_file).exists():
        time.sleep(0.01)


def log_runs(uri: str, worker: int, start_file: str) -> None:
    """One worker: RUNS_PER_PROCESS runs, each with params, STEPS points of every metric (one write
    per point, the way Lightning's MLflow logger writes them) and a FINISHED status."""
    wait_for(start_file, worker)
    client = tracking.init_store(uri)  # the store is brand new: all workers create it at once
    for i in range(RUNS_PER_PROCESS):
        run_id = tracking.start_run(uri, "concurrent", f"w{worker}-r{i}", {"worker": str(worker), "index": str(i)})
        with tracking.closing_run(uri, run_id):
            tracking.log_params(uri, run_id, {"worker": worker, "index": i, "lr": 1e-5 * (i + 1)})
            for step in range(STEPS):
                for key in METRICS:
                    client.log_metric(run_id, key, worker + i / 10 + step / 100, step=step)


def run_trials(storage_url: str, worker: int, start_file: str) -> None:
    """One worker: opens the storage the way `opsd search` does (search.open_storage), creates or
    loads the study (the file is brand new: all workers create it at once) and runs
    TRIALS_PER_PROCESS trials of a trivial objective."""
    import optuna

    from opsd_platform.search import SearchConfig, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wait_for(start_file, worker)
    storage = open_storage(storage_url, SearchConfig(), on_stale=None)
    study = optuna.create_study(study_name="concurrent", storage=storage, load_if_exists=True)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=TRIALS_PER_PROCESS)
    study.set_user_attr(f"worker{worker}", TRIALS_PER_PROCESS)


def run_workers(function: str, target: str, tmp_path: Path) -> None:
    """Start PROCESSES workers calling `function(target, worker, start_file)`, release them
    together, and fail (with their stderr) if any of them failed."""
    start = tmp_path / f"start-{function}"
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from test_concurrent import {function}; " \
           f"{function}(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
    logs = [tmp_path / f"{function}-{w}.log" for w in range(PROCESSES)]
    procs = []
    for w, log in enumerate(logs):
        with log.open("w") as out:  # the child keeps its own copy of the file descriptor
            procs.append(subprocess.Popen([sys.executable, "-c", code, target, str(w), str(start)],
                                          stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 300
    while not all(Path(f"{start}.ready{w}").exists() for w in range(PROCESSES)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break  # a worker died while starting: its error is reported below
        time.sleep(0.05)
    start.touch()
    failures = []
    for w, proc in enumerate(procs):
        if proc.wait(timeout=300) != 0:
            failures.append(f"worker {w} exit {proc.returncode}:\n{logs[w].read_text()[-3000:]}")
    assert not failures, "\n".join(failures)


def test_concurrent_mlflow_writers_lose_and_duplicate_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_workers("log_runs", uri, tmp_path)

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == PROCESSES * RUNS_PER_PROCESS
    keys = sorted((int(r.data.tags["worker"]), int(r.data.tags["index"])) for r in runs)
    assert keys == [(w, i) for w in range(PROCESSES) for i in range(RUNS_PER_PROCESS)]  # none twice
    points = 0
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params == {"worker": run.data.tags["worker"], "index": run.data.tags["index"],
                                   "lr": str(1e-5 * (int(run.data.tags["index"]) + 1))}
        for key in METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(STEPS)), (run.info.run_name, key)
            points += len(history)
    assert points == PROCESSES * RUNS_PER_PROCESS * STEPS * len(METRICS)


def test_concurrent_optuna_workers_on_one_sqlite_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    storage_url = f"sqlite:///{tmp_path}/optuna.db"
    run_workers("run_trials", storage_url, tmp_path)

    study = optuna.load_study(study_name="concurrent", storage=storage_url)
    assert len(optuna.get_all_study_names(storage_url)) == 1
    assert study.user_attrs == {f"worker{w}": TRIALS_PER_PROCESS for w in range(PROCESSES)}
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == PROCESSES * TRIALS_PER_PROCESS
    assert sorted(t.number for t in trials) == list(range(PROCESSES * TRIALS_PER_PROCESS))
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
