"""Workers and the ``opsd search`` command: any number of workers share a study until ``n_trials``
trials are accounted for; the report at the end.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.search.objective import LearningLoop, MlflowTrialCallback, Objective
from opsd_platform.search.pruner import PRUNE, Decision
from opsd_platform.search.settings import SearchConfig
from opsd_platform.search.study import SearchBase, StudyHandle, prepare

log = logging.getLogger(__name__)
FINAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Tally:
    final: list[FrozenTrial]  # completed, pruned, or failed without a retry
    running: list[FrozenTrial]
    waiting: list[FrozenTrial]
    retried: set[int]


def tally(study: optuna.Study) -> Tally:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    final = [t for t in trials if t.state in FINAL_STATES or (t.state == TrialState.FAIL and t.number not in retried)]
    return Tally(final, [t for t in trials if t.state == TrialState.RUNNING],
                 [t for t in trials if t.state == TrialState.WAITING], retried)


def study_done(study: optuna.Study, n_trials: int) -> bool:
    t = tally(study)
    return len(t.final) >= n_trials and not t.running and not t.waiting


def describe_trial(t: FrozenTrial) -> str:
    d = Decision.from_attrs(t.user_attrs)
    params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in t.params.items())
    head = f"trial #{t.number} {t.state.name.lower()}"
    if t.state == TrialState.COMPLETE:
        head += f", improvement {t.value:+.3f}"
    if "gap" in t.user_attrs and t.user_attrs["gap"] is not None:
        head += f", gap {t.user_attrs['gap']:+.3f}"
    if d is not None:
        head += f", {d.action} ({d.rule})"
        if d.rule in ("no_law", "law_unusable"):  # why the law did not decide, in the trial's one line
            head += f": {d.reason.rsplit('; ', 2)[-2] if d.rule == 'law_unusable' else d.reason}"
    if "cost.seconds" in t.user_attrs:
        head += f", {t.user_attrs['cost.seconds']:.0f} s"
    return f"{head} [{params}]"


def guarded(callback: Callable[[optuna.Study, FrozenTrial], None]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Bookkeeping after a trial must not stop the worker (the trial itself is already told)."""
    def call(study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            callback(study, trial)
        except Exception as exc:
            log.error("%s after trial #%d failed: %s: %s", type(callback).__name__, trial.number, type(exc).__name__, exc)

    return call


def run_worker(handle: StudyHandle, progress: Callable[[str], None] = print) -> int:
    """Run trials of the study until it is done (see the module docstring); returns how many this
    worker ran. Waits for other workers' running trials, so one of theirs that dies is retried."""
    study, n = handle.study, handle.settings.n_trials
    objective = Objective(handle, progress)
    callbacks = [guarded(MlflowTrialCallback(handle)), guarded(LearningLoop(handle, progress)),
                 lambda st, tr: progress(describe_trial(tr))]
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        t = tally(study)
        if t.waiting or len(t.final) + len(t.running) < n:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
            ran += 1
        elif t.running:
            time.sleep(min(handle.settings.heartbeat_interval, 5))  # another worker's trial: wait for it (or its heartbeat to stop)
        else:
            return ran


# ============================================================================== the command


@dataclass
class SearchResult:
    study: str
    parent_run_id: str
    tracking_uri: str
    storage: str
    ran: int
    done: bool
    report: Any = None  # report.StudyReport when the study is done
    handle: StudyHandle | None = None


def finalize(handle: StudyHandle, progress: Callable[[str], None] = print):
    """The study's report (HTML, tables, plots) on disk and on the parent run; the parent run
    ends FINISHED; each law version that decided trials gets a tag listing them."""
    from mlflow.tracking import MlflowClient

    from opsd_platform.search.report import write_report

    report = write_report(handle)
    client = MlflowClient(tracking_uri=handle.tracking_uri)
    for key, value in report.metrics.items():
        if value is not None and math.isfinite(value):
            client.log_metric(handle.parent_run_id, key, float(value))
    for path in report.files:
        client.log_artifact(handle.parent_run_id, str(path), "report")
    # every trial's prediction and decision as an MLflow table (the run page's artifact viewer shows it)
    client.log_table(handle.parent_run_id, report.frame.astype(object).where(report.frame.notna(), None), "decisions.json")
    by_version: dict[int, list[int]] = {}
    for t in handle.study.get_trials(deepcopy=False):
        d = Decision.from_attrs(t.user_attrs)
        if d is not None and d.action == PRUNE and d.law_version is not None:
            by_version.setdefault(int(d.law_version), []).append(t.number)
    for version, numbers in by_version.items():
        try:
            client.set_model_version_tag(handle.settings.law_name, str(version), f"search.{handle.name}.pruned_trials",
                                         ",".join(map(str, sorted(numbers)))[:4000])
        except Exception as exc:
            log.warning("could not tag law v%s: %s", version, exc)
    client.set_tag(handle.parent_run_id, "search.report", str(report.html))
    client.set_terminated(handle.parent_run_id, "FINISHED")
    progress(f"report: {report.html}")
    return report


def run_search(base: SearchBase, settings: SearchConfig, progress: Callable[[str], None] = print):
    """One study: prepare (or join) it, run trials until it is done, then report. Returns a SearchResult."""
    handle = prepare(base, settings)
    progress(f"study {handle.name!r} in {tracking.shown_url(handle.storage_url)}; parent MLflow run {handle.parent_run_id} "
             f"in {handle.tracking_uri}")
    if settings.prepare_only:
        return SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url, 0, False, handle=handle)
    try:
        ran = run_worker(handle, progress)
    except BaseException as exc:
        # The parent run stays RUNNING: other workers may go on, and a re-run resumes the study.
        progress(f"worker stopped: {type(exc).__name__}: {exc}; run the same command again to resume")
        raise
    done = study_done(handle.study, settings.n_trials)
    report = finalize(handle, progress) if done else None
    return SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url, ran, done, report, handle)


