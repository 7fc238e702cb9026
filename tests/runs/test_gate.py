"""The trial gate (runs/gate.py, search/gate.py): train() takes one search hook, and the law pruner
decides from the typed GapResult the trial's gate hands it, recording the decision afterwards:
nothing is read back from the trial's user attributes to decide."""

import inspect

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config.compose import train_config
from opsd_platform.errors import StopTraining
from opsd_platform.gap.measure import GapResult
from opsd_platform.runs.train import train
from opsd_platform.search.gate import SearchGate
from opsd_platform.search.memory import LawMemory, MemoryLawPruner
from opsd_platform.search.pruner import TrialFacts, decide_policy


def law_study(uri: str, threshold: float = 0.5) -> optuna.Study:
    """A study pruned by a usable law (improvement ~ 1.5 gap on 10 configurations) held in memory,
    recording on the MLflow store at `uri`."""
    rng = np.random.default_rng(0)
    gaps = rng.uniform(-0.1, 0.6, 10)
    points = pd.DataFrame({"config": [f"c{i}" for i in range(10)], "seed": 0, "gap": gaps,
                           "improvement": 1.5 * gaps + rng.normal(0, 0.03, 10)})
    pruner = MemoryLawPruner(LawMemory(points, level=0.9, refit_every=0), n_startup_trials=0, threshold=threshold)
    pruner.tracking_uri = uri  # where the trial's run is (the registry's store, for a registered law)
    return optuna.create_study(direction="maximize", pruner=pruner)


def gap_result(gap: float) -> GapResult:
    return GapResult(context="feedback", n_problems=8, samples_per_problem=2, student_pass_rate=0.3,
                     teacher_pass_rate=0.3 + gap, gap=gap, student_ci=(0.2, 0.4), teacher_ci=(0.2, 0.4),
                     gap_ci=(gap - 0.1, gap + 0.1), level=0.9, teacher_coverage=1.0, tokens_generated=320,
                     teacher_prompt_tokens=60.0, seconds=1.0)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.init_store(uri)
    return uri, tracking.start_run(uri, "gate", "trial-0", {}, None)


def test_train_takes_one_search_hook_the_gate():
    assert list(inspect.signature(train).parameters) == ["cfg", "parent_run_id", "extra_tags", "gate"]
    assert inspect.signature(train).parameters["gate"].default is None


def test_the_pruner_decides_from_the_gap_it_is_handed_then_records_it(store):
    uri, run_id = store
    cfg = train_config(["model=tiny"])
    for gap, prunes in ((-0.1, True), (0.6, False)):
        trial = law_study(uri).ask()
        trial.set_user_attr("gap", 0.6 if prunes else -0.1)  # a stale attribute saying the opposite: never read
        gate = SearchGate(trial, cfg, law=True, curve=False, window=1, tracking_uri=uri)
        if prunes:
            with pytest.raises(StopTraining, match="pruned by the gap law v1"):
                gate.on_gap(run_id, gap_result(gap))
        else:
            gate.on_gap(run_id, gap_result(gap))
        assert gate.decision.prune is prunes and gate.decision.gap == pytest.approx(gap)
        # recorded afterwards, for the reports: the gap, the law's covariate, the decision (trial and run)
        attrs = trial.user_attrs
        assert attrs["gap"] == pytest.approx(gap) and attrs["context_tokens"] == 60.0
        assert attrs["pruner.action"] == gate.decision.action and attrs["mlflow_run_id"] == run_id
        assert MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["pruner.action"] == gate.decision.action


def test_a_trial_without_a_gap_is_decided_as_training_starts(store):
    """GRPO: the law predicts OPSD only, so it never prunes one (rule not_opsd), decided at the start."""
    uri, run_id = store
    trial = law_study(uri).ask()
    gate = SearchGate(trial, train_config(["model=tiny", "algorithm=grpo"]), law=True, curve=False, window=1,
                      tracking_uri=uri)
    gate.on_train_start(run_id)
    assert gate.decision.rule == "not_opsd" and trial.user_attrs["pruner.rule"] == "not_opsd"


def test_typed_facts_and_recorded_attributes_give_the_same_decision(store):
    """The typed path (a live trial's gate) and Optuna's interface (what a trial recorded) are one policy."""
    uri, _ = store
    study = law_study(uri)
    trial = study.ask()
    inputs = study.pruner.policy_inputs(study, trial)
    for gap in (-0.1, 0.2, 0.6, float("nan"), None):
        typed = decide_policy(TrialFacts(gap=gap, covariates={"context_tokens": 60.0}), **inputs)
        recorded = decide_policy({"gap": gap, "context_tokens": 60.0}, **inputs)
        assert typed == recorded
