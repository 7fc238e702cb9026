"""The search's trial gate (runs/gate.py's protocol): what a trial decides about its own training.

``SearchGate``, the gate of one Optuna trial, at each decision point of ``train``:

- ``sequential_rule``: with ``gap.sequential`` and the law pruner, the stopping rule from the
  pruner's own policy and the bar it would use now (gap.sequential.policy_gate);
- ``on_gap``: the law pruner decides from the typed GapResult (``TrialFacts.of_gap``); the gap,
  its costs and the decision are recorded on the trial afterwards, for the reports; a prune
  raises StopTraining;
- ``on_train_start``: the trial names its MLflow run; a trial that measured no gap (GRPO: the law
  predicts OPSD only) is decided here (rule ``not_opsd``);
- ``on_step``: each step's running mean of the rollout pass rate over the last `window` steps (the
  only per-step signal that costs nothing extra; a validation per step would double a trial's
  cost) is reported to the trial; with `curve`, the study's curve pruner (MedianPruner, or the
  ranked search's SuccessiveHalving / Hyperband) is asked and a prune raises StopTraining.

``GapOnlyGate``: the ranked search's phase 1 (a trial that measures a context's gap, records it
and stops). The gate keeps its decision (``decision``) for the objective: nothing is read back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna

from opsd_platform.config import TrainConfig
from opsd_platform.errors import StopTraining
from opsd_platform.gap.measure import GapResult
from opsd_platform.gap.sequential import StoppingRule, policy_gate
from opsd_platform.runs.gate import Gate
from opsd_platform.runs.train import estimated_training_tokens
from opsd_platform.search.pruner import (
    GAP_RULES,
    PRUNE,
    Decision,
    GapLawPruner,
    TrialFacts,
    best_completed,
    decide_policy,
    record_decision,
)


def gap_attrs(gap: GapResult, train_tokens_est: float) -> dict[str, Any]:
    """What the reports read of a trial's gap (user attributes; a non-finite number as None)."""
    attrs = {
        "gap": float(gap.gap), "gap_ci": [float(gap.gap_ci[0]), float(gap.gap_ci[1])],
        "context_tokens": float(gap.teacher_prompt_tokens), "cost.gap_tokens": int(gap.tokens_generated),
        "cost.gap_seconds": float(gap.seconds), "cost.train_tokens_est": float(train_tokens_est),
        # gap.sequential: problems measured (of problems_total), the CS, the decision it settled, cost saved
        **{f"gap.sequential.{k}": v for k, v in (gap.sequential or {}).items()},
    }
    return {k: v if (not isinstance(v, float) or math.isfinite(v)) else None for k, v in attrs.items()}


class SearchGate(Gate):
    """The gate of one search trial (module docstring) training `cfg`. law: the study prunes by
    the law; curve: the study's curve pruner may stop the training; window: steps of the running
    mean."""

    def __init__(self, trial: optuna.Trial, cfg: TrainConfig, *, law: bool, curve: bool, window: int,
                 tracking_uri: str) -> None:
        self.trial, self.cfg, self.algorithm = trial, cfg, cfg.algorithm
        self.law, self.curve, self.window, self.tracking_uri = law, curve, window, tracking_uri
        self.decision: Decision | None = None  # the decision that stopped or let through this trial, once made
        self.values: list[float] = []

    def pruner(self) -> GapLawPruner | None:
        pruner = self.trial.study.pruner
        return pruner if self.law and isinstance(pruner, GapLawPruner) else None

    def sequential_rule(self, cfg) -> StoppingRule:
        """From the pruner's policy and the bar it would use now (built as the measurement starts)."""
        pruner = self.pruner()
        if pruner is None:
            return StoppingRule(None, "the study's pruner is not the gap law")
        # no calibration draw: calibration decides after the gap, it does not settle it
        inputs = {**pruner.policy_inputs(self.trial.study, self.trial), "calibration_rate": 0.0}
        facts = TrialFacts(self.algorithm)
        return policy_gate(lambda gap, covariates: decide_policy(facts.at(gap, covariates), **inputs), inputs["law"],
                           rule=cfg.gap.sequential_rule, gap_rules=GAP_RULES)

    def on_gap(self, run_id: str, gap: GapResult) -> None:
        """The law's decision from the measured gap, then the gap and the decision recorded."""
        pruner = self.pruner()
        facts = TrialFacts.of_gap(gap, self.algorithm)
        decision = pruner.decide(self.trial.study, self.trial, facts) if pruner is not None else None
        self.trial.set_user_attr("mlflow_run_id", run_id)
        mean_len = gap.tokens_generated / max(1, 2 * gap.n_problems * gap.samples_per_problem)
        for key, value in gap_attrs(gap, estimated_training_tokens(self.cfg, mean_len)).items():
            self.trial.set_user_attr(key, value)
        self.settle(pruner, decision, f"pruned by the gap law v{decision.law_version if decision else None}: ")

    def on_train_start(self, run_id: str) -> None:
        if "mlflow_run_id" not in self.trial.user_attrs:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        pruner = self.pruner()
        if pruner is not None and self.decision is None and self.algorithm != "opsd":  # no gap: rule not_opsd
            self.settle(pruner, pruner.decide(self.trial.study, self.trial, TrialFacts(self.algorithm)), "pruned: ")

    def settle(self, pruner: GapLawPruner | None, decision: Decision | None, prefix: str) -> None:
        """Keep and record a decision (a new one: not rule ``decided``); StopTraining if it prunes."""
        if decision is None:
            return
        self.decision = decision
        if pruner.record and decision.rule != "decided":
            record_decision(self.trial, decision, pruner.tracking_uri)
        if decision.prune:
            raise StopTraining(f"{prefix}{decision.reason}")

    def on_step(self, step: int, row: dict[str, float]) -> None:
        if "rollout/pass_rate" not in row:
            return
        self.values.append(float(row["rollout/pass_rate"]))
        value = float(np.mean(self.values[-self.window:]))
        self.trial.report(value, step)
        if self.curve and self.trial.should_prune():
            best = best_completed(self.trial.study)
            pruner = self.trial.study.pruner  # MedianPruner, or the ranked search's SuccessiveHalvingPruner
            median = isinstance(pruner, optuna.pruners.MedianPruner)
            why = "below the median of earlier trials at this step" if median else "not among the best at this rung"
            decision = Decision(
                PRUNE, "median" if median else "curve", f"{type(pruner).__name__}: step {step} running pass rate "
                f"{value:.3f} is {why}", bar=best[0] if best else None,
                bar_source=f"best trial #{best[1]}" if best else None)
            record_decision(self.trial, decision, self.tracking_uri)
            self.decision = decision
            raise StopTraining(decision.reason)


class GapOnlyGate(Gate):
    """The ranked search's phase 1: the gap is measured, recorded on the trial, and the run stops."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_gap(self, run_id: str, gap: GapResult) -> None:
        self.trial.set_user_attr("mlflow_run_id", run_id)
        self.trial.set_user_attr("gap", float(gap.gap))
        self.trial.set_user_attr("cost.gap_seconds", float(gap.seconds))
        raise StopTraining("ranked search, phase 1: the gap is measured; this context trains later if it ranks")
