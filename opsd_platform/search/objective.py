"""One trial: its config composed like ``opsd train``'s, the gap measured and judged by the pruner,
the training run reporting its steps; and the callbacks that record each trial (MLflow) and refit
the law after completed trials (the learning loop).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Callable

import lightning as L
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.config import TrainConfig
from opsd_platform.config.compose import with_overrides
from opsd_platform.errors import WorkerInterrupted  # noqa: F401 (re-exported)
from opsd_platform.law.registry import CHAMPION
from opsd_platform.search.pruner import (
    PRUNE,
    Decision,
    GapLawPruner,
    best_completed,
    record_decision,
)
from opsd_platform.search.space import sample, to_overrides
from opsd_platform.search.study import (
    RetryDeadTrial,
    StudyHandle,
    trial_run_id,
    worker_id,
)


class StepReporter(L.Callback):
    """Reports each training step to the trial: the running mean of the rollout pass rate over the
    last `window` steps (the only per-step signal that costs nothing extra; a validation per step
    would double a trial's cost). With `prune`, asks the study's pruner (MedianPruner) after each
    report and stops the training when it says so."""

    def __init__(self, trial: optuna.Trial, window: int, prune: bool, tracking_uri: str,
                 decide_at_start: bool = False) -> None:
        self.trial, self.window, self.prune, self.tracking_uri = trial, window, prune, tracking_uri
        self.decide_at_start = decide_at_start  # a trial that measures no gap (GRPO) asks the law pruner here
        self.values: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        from opsd_platform.training.train import StopTraining

        run_id = getattr(trainer.logger, "run_id", None)
        if run_id and "mlflow_run_id" not in self.trial.user_attrs:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        pruner = self.trial.study.pruner
        if self.decide_at_start and isinstance(pruner, GapLawPruner):  # recorded on the trial and its run (rule not_opsd)
            decision = pruner.judge(self.trial)
            if decision.prune:
                raise StopTraining(f"pruned: {decision.reason}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from opsd_platform.training.train import StopTraining

        last = pl_module.history[-1] if pl_module.history else {}
        if "rollout/pass_rate" not in last:
            return
        self.values.append(float(last["rollout/pass_rate"]))
        step = int(last["step"])
        value = float(np.mean(self.values[-self.window:]))
        self.trial.report(value, step)
        if self.prune and self.trial.should_prune():
            best = best_completed(self.trial.study)
            pruner = self.trial.study.pruner  # MedianPruner, or the ranked search's SuccessiveHalvingPruner
            median = isinstance(pruner, optuna.pruners.MedianPruner)
            why = "below the median of earlier trials at this step" if median else "not among the best at this rung"
            decision = Decision(
                PRUNE, "median" if median else "curve", f"{type(pruner).__name__}: step {step} running pass rate "
                f"{value:.3f} is {why}", bar=best[0] if best else None, bar_source=f"best trial #{best[1]}" if best else None)
            record_decision(self.trial, decision, self.tracking_uri)
            raise StopTraining(decision.reason)


class Objective:
    """The trial function: sample, compose, (gap -> law decision), train; returns the improvement."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress

    def __call__(self, trial: optuna.Trial) -> float:
        from opsd_platform.training.train import RunInterrupted, train

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
        reporter = StepReporter(trial, s.median_window, s.pruner == "median", h.tracking_uri,
                                decide_at_start=s.pruner == "law" and cfg.algorithm != "opsd")
        after_gap = (lambda run_id, gap: self.after_gap(trial, cfg, run_id, gap)) if s.pruner == "law" else None
        gap_gate = (lambda: self.gap_gate(trial, cfg)) if s.pruner == "law" and cfg.gap.sequential else None
        try:
            result = train(cfg, parent_run_id=h.parent_run_id, extra_tags=tags, after_gap=after_gap, callbacks=[reporter],
                           gap_gate=gap_gate)
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
        decision = Decision.from_attrs(trial.user_attrs)
        if decision is not None and decision.action == "calibrate":  # was it a false prune after all?
            trial.set_user_attr("pruner.false_prune", bool(result.improvement > decision.bar))
        return float(result.improvement)

    @staticmethod
    def gap_gate(trial: optuna.Trial, cfg: TrainConfig):
        """gap.sequential: (stopping rule, "") from the study's own pruner (its policy and the bar it
        would use now, sequential.policy_gate), or (None, why) when the decision will not depend on
        the gap. Built as the measurement starts, so the bar is as fresh as the pruner's will be."""
        from opsd_platform.search.pruner import GAP_RULES, decide_policy
        from opsd_platform.training.sequential import policy_gate

        pruner = trial.study.pruner
        if not isinstance(pruner, GapLawPruner):
            return None, "the study's pruner is not the gap law"
        inputs = {**pruner.policy_inputs(trial.study, trial), "calibration_rate": 0.0}  # calibration decides after
        return policy_gate(lambda attrs: decide_policy(attrs, **inputs), inputs["law"], dict(trial.user_attrs),
                           rule=cfg.gap.sequential_rule, gap_rules=GAP_RULES)

    def after_gap(self, trial: optuna.Trial, cfg: TrainConfig, run_id: str, gap) -> None:
        """Record the gap, then let the pruner decide before any training (StopTraining to prune)."""
        from opsd_platform.training.train import StopTraining, estimated_training_tokens

        mean_len = gap.tokens_generated / max(1, 2 * gap.n_problems * gap.samples_per_problem)
        attrs = {
            "mlflow_run_id": run_id, "gap": float(gap.gap), "gap_ci": [float(gap.gap_ci[0]), float(gap.gap_ci[1])],
            "context_tokens": float(gap.teacher_prompt_tokens), "cost.gap_tokens": int(gap.tokens_generated),
            "cost.gap_seconds": float(gap.seconds),
            "cost.train_tokens_est": float(estimated_training_tokens(cfg, mean_len)),
            # gap.sequential: problems measured (of problems_total), the CS, the decision it settled, cost saved
            **{f"gap.sequential.{k}": v for k, v in (gap.sequential or {}).items()},
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value if (not isinstance(value, float) or math.isfinite(value)) else None)
        pruner = trial.study.pruner
        if isinstance(pruner, GapLawPruner):
            decision = pruner.judge(trial)
            if decision.prune:
                raise StopTraining(f"pruned by the gap law v{decision.law_version}: {decision.reason}")


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
        from opsd_platform.law.pipeline import FitLawConfig, fit_and_register

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


