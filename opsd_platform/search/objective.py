"""One trial: its config composed like ``opsd train``'s, trained under its gate (gate.py: the gap
judged by the pruner, each step reported); and the callbacks that record each trial (MLflow) and refit
the law after completed trials (the learning loop).
"""

from __future__ import annotations

import json
import warnings
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.config.compose import with_overrides
from opsd_platform.errors import WorkerInterrupted
from opsd_platform.law.names import CHAMPION
from opsd_platform.search.pruner import (
    Decision,
    best_completed,
)
from opsd_platform.search.space import sample, to_overrides
from opsd_platform.search.study import (
    RetryDeadTrial,
    StudyHandle,
    trial_run_id,
    worker_id,
)


class Objective:
    """The trial function: sample, compose, (gap -> law decision), train; returns the improvement."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress

    def __call__(self, trial: optuna.Trial) -> float:
        from opsd_platform.errors import RunInterrupted
        from opsd_platform.runs.train import train
        from opsd_platform.search.gate import SearchGate

        h, s = self.h, self.h.settings
        trial.set_user_attr("worker", worker_id())
        params = sample(trial, h.space, h.base_values)
        overrides = to_overrides(params)
        # A GRPO trial measures no gap: the law predicts OPSD only and never prunes it (pruner.py)
        algorithm = params.get("algorithm", h.base_values.get("algorithm", "opsd"))
        label = params.get("context", h.base_values["context"]) if algorithm == "opsd" else algorithm
        trial.set_user_attr("overrides", overrides)  # as strings: what the dashboard and the report show
        cfg = with_overrides(h.base.config, {**params, "gap.enabled": s.pruner == "law" and algorithm == "opsd",
                                             "tracking.run_name": f"trial-{trial.number}-{label}"})
        trial.set_user_attr("algorithm", cfg.algorithm)
        tags = {"search.study": h.name, "search.trial": str(trial.number), "search.pruner": s.pruner}
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            tags["search.retry_of"] = str(retry_of)
        gate = SearchGate(trial, cfg, law=s.pruner == "law", curve=s.pruner == "median", window=s.median_window,
                          tracking_uri=h.tracking_uri)
        try:
            result = train(cfg, parent_run_id=h.parent_run_id, extra_tags=tags, gate=gate)
        except (KeyboardInterrupt, RunInterrupted) as exc:
            frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            RetryDeadTrial(h.tracking_uri, h.experiment, s.max_retry, s.grace_period)(
                trial.study, frozen, reason=f"interrupted ({type(exc).__name__}: {exc})")
            # a KeyboardInterrupt: Optuna marks the trial FAILED and stops the worker (an Exception
            # would be caught by `catch` and the worker would go on to the next trial)
            raise WorkerInterrupted(str(exc)) from exc
        cost = {"cost.tokens": int(result.tokens_generated), "cost.seconds": float(result.seconds), "cost.steps": result.steps,
                "mlflow_run_id": result.run_id}
        if result.stopped is None:
            cost.update({"cost.full_tokens_est": int(result.tokens_generated), "cost.full_seconds_est": float(result.seconds)})
        elif s.pruner == "median":  # what the rest of the steps would have cost, at this trial's own rate
            steps_left = cfg.trainer.max_steps - result.steps
            per_step = result.seconds / max(result.steps, 1)
            cost["cost.full_seconds_est"] = float(result.seconds + steps_left * per_step)
            cost["cost.full_tokens_est"] = int(result.tokens_generated * cfg.trainer.max_steps / max(result.steps, 1))
        for key, value in cost.items():
            trial.set_user_attr(key, value)
        if result.stopped is not None:
            raise optuna.TrialPruned(result.stopped)
        if result.improvement is None:
            raise RuntimeError("the training reported no improvement (trainer.validate=false?): nothing to optimise")
        trial.set_user_attr("improvement", float(result.improvement))
        decision = gate.decision
        if decision is not None and decision.action == "calibrate":  # was it a false prune after all?
            trial.set_user_attr("pruner.false_prune", bool(result.improvement > decision.bar))
        return float(result.improvement)

# ============================================================================== callbacks


class MlflowTrialCallback:
    """After each trial: its Optuna outcome on its own run, the running totals on the parent run."""

    def __init__(self, handle: StudyHandle) -> None:
        self.h = handle

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.tracking import MlflowClient

        h = self.h
        client = MlflowClient(tracking_uri=h.tracking_uri)
        exp_id = client.get_experiment_by_name(h.experiment).experiment_id
        run_id = trial.user_attrs.get("mlflow_run_id") or trial_run_id(client, exp_id, h.name, trial.number)
        if run_id is None:  # died before training started (a bad sampled value, ...): still one run per trial
            reason = trial.system_attrs.get("fail_reason", "failed before its training run started")
            run_id = tracking.start_run(h.tracking_uri, h.experiment, f"trial-{trial.number}", {
                "kind": "train", "search.study": h.name, "search.trial": str(trial.number), "search.pruner": h.settings.pruner,
            }, h.parent_run_id)
            tracking.fail_run(h.tracking_uri, run_id, reason)
        decision = Decision.from_attrs(trial.user_attrs)
        client.set_tag(run_id, "search.state", trial.state.name)
        client.set_tag(run_id, "search.decision", decision.action if decision else ("prune" if trial.state == TrialState.PRUNED else "train"))
        client.set_tag(run_id, "search.params", json.dumps(trial.params)[:5000])
        if trial.state == TrialState.PRUNED and decision is not None and decision.prune:
            # Stopped by the search, not trained to the end: KILLED (the UI's "Killed", filtered with
            # attributes.status = 'KILLED'), not FINISHED like a trained trial. Nothing counts a
            # pruned run as FINISHED: it has no `improvement`, so export and the law skip it anyway.
            # A ranked search's gap-only trials (PRUNED, no prune decision) stay FINISHED.
            client.set_terminated(run_id, "KILLED", end_time=client.get_run(run_id).info.end_time)
        for key in ("cost.tokens", "cost.seconds"):
            if key in trial.user_attrs:
                client.log_metric(run_id, "search/" + key.split(".")[1], float(trial.user_attrs[key]))
        if trial.state == TrialState.COMPLETE:
            client.log_metric(run_id, "search/improvement", float(trial.value))
        step = trial.number
        if "cost.tokens" in trial.user_attrs:
            client.log_metric(h.parent_run_id, "search/trial_tokens", float(trial.user_attrs["cost.tokens"]), step=step)
            client.log_metric(h.parent_run_id, "search/trial_seconds", float(trial.user_attrs["cost.seconds"]), step=step)
        best = best_completed(study)
        if best is not None:
            client.log_metric(h.parent_run_id, "search/best_improvement", best[0], step=step)


class LearningLoop:
    """After every `refit_every` completed trials: refit the law on all finished points, register it
    as @challenger and promote it when its hold-out RMSE is lower; recorded on the trial."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.tracking import MlflowClient

        from opsd_platform.law import LawError
        from opsd_platform.law.pipeline import fit_and_register
        from opsd_platform.law.settings import FitLawConfig

        h, s = self.h, self.h.settings
        if s.pruner != "law" or s.refit_every == 0 or trial.state != TrialState.COMPLETE:
            return
        n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n_done % s.refit_every:
            return
        cfg = FitLawConfig(experiment=h.experiment, name=s.law_name, level=s.level, promote=True,
                           out_dir=str(h.out_dir / "law"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = fit_and_register(h.tracking_uri, cfg, parent_run_id=h.parent_run_id,
                                          run_name=f"fit-law-after-trial-{trial.number}")
        except LawError as exc:
            record = {"refit": "skipped", "reason": str(exc)}
        else:
            reg = report.registration or {}
            champion = MlflowClient(tracking_uri=h.tracking_uri).get_registered_model(s.law_name).aliases.get(CHAMPION)
            record = {"refit": "registered", "version": reg.get("version"), "decision": reg.get("decision"),
                      "reason": reg.get("reason"), "champion": None if champion is None else int(champion),
                      "n_points": int(report.fit.n_points), "holdout_rmse": float(report.loo["rmse"])}
            MlflowClient(tracking_uri=h.tracking_uri).log_metric(
                h.parent_run_id, "search/law_champion_version", float(record["champion"] or 0), step=trial.number)
        study.set_user_attr(f"law.refit.{trial.number}", record)  # a finished trial's attributes are frozen
        self.progress(f"  law refit after trial #{trial.number}: " + (
            f"v{record['version']} {record['decision']} ({record['reason']})" if record["refit"] == "registered"
            else f"skipped ({record['reason']})"))


