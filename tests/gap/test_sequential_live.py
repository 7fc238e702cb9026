"""gap.sequential wired into live measurement (measurements.sequential_gap, search.gate.SearchGate.sequential_rule)
on the tiny model: a measurement that may not stop equals the full one bitwise (and is stored as
it), a bar far from the gap stops it after the first batch, a search trial decides as it would on
the full gap, outside a search it measures in full, and bad settings name their key."""

import dataclasses
import logging

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from opsd_platform.cli import main
from opsd_platform.config import ConfigError, config_hash
from opsd_platform.config.compose import train_config
from opsd_platform.gap import measurements
from opsd_platform.gap.measure import measure_student, measure_teacher
from opsd_platform.gap.sequential import PRUNE, TRAIN, StoppingRule, aligned_batch
from opsd_platform.models import load_policy
from opsd_platform.search.gate import SearchGate
from opsd_platform.search.pruner import GapLawPruner
from opsd_platform.training.rollout import HFGenerateEngine
from opsd_platform.worlds import make_world
from tests.helpers import FAST

# 12 problems x 3 samples, 6 rows per generate call: batches of 3 problems round up to 4 (12 rows)
SEQ = ["context=feedback", "gap.n_problems=12", "gap.samples=3", "gap.batch_size=6", "gap.bootstrap=200",
       "rollout.temperature=1.0", "gap.sequential=true", "gap.sequential_batch=3"]
COMPARED = ("n_problems", "student_pass_rate", "teacher_pass_rate", "gap", "student_ci", "teacher_ci", "gap_ci",
            "teacher_coverage", "tokens_generated", "teacher_prompt_tokens", "per_problem", "examples", "student_tokens")


@pytest.fixture
def setup(tiny_overrides):
    cfg = train_config(tiny_overrides + SEQ)
    model, tok = load_policy(cfg.model)
    return cfg, HFGenerateEngine(model, tok, batch_size=cfg.gap.batch_size), make_world(cfg.world)


def test_aligned_batch_fills_whole_generate_calls():
    assert aligned_batch(3, 3, 6) == 4 and aligned_batch(8, 4, 64) == 16 and aligned_batch(5, 4, 16) == 8
    assert aligned_batch(5, 3, None) == 5  # an engine that schedules its own rows
    with pytest.raises(ValueError, match="batch"):
        aligned_batch(0, 3, 6)


def test_a_sequential_gap_that_never_stops_equals_the_full_one_and_is_stored_as_it(setup):
    cfg, engine, world = setup
    store = measurements.MeasurementStore.for_config(cfg)
    seen = []
    never = lambda lo, hi, covariates: seen.append((lo, hi, covariates)) or None  # noqa: E731
    seq = measurements.gap(cfg, engine, world, store, StoppingRule(never))
    assert [len(seen), seq.sequential["batch"], seq.sequential["problems"]] == [3, 4, 12]  # checked at 4, 8, 12
    assert seq.sequential["decision"] is None and seq.sequential["saved_fraction"] == 0
    assert seen[-1][0] == pytest.approx(seq.gap) and seen[-1][1] == pytest.approx(seq.gap)  # exact at the end
    assert seen[0][1] - seen[0][0] > seen[1][1] - seen[1][0] > 0  # the CS shrinks batch by batch

    # the full measurement, one call per side, no store: the same answers, bit for bit
    problems = world.problems("train")[:12]
    sampling = measurements.gap_sampling(cfg)
    student = measure_student(engine, world, problems, sampling, cfg.seed)
    teacher = measure_teacher(engine, world, problems, cfg.context, student.evaluation, sampling, cfg.seed)
    for kind, fields, side in (("gap_student", measurements.student_key_fields(cfg), student),
                               ("gap_teacher", measurements.teacher_key_fields(cfg), teacher)):
        stored, _ = store.load(store.find(kind, measurements.key_of(fields)))
        assert stored == side.evaluation, kind  # Evaluation is a dataclass: texts, verdicts, floats, all equal
    assert len(set(student.evaluation.texts)) > 1
    full = measurements.gap(dataclasses.replace(cfg, gap=dataclasses.replace(cfg.gap, sequential=False)), engine, world, None)
    for name in COMPARED:
        assert getattr(seq, name) == getattr(full, name), name


def test_a_bar_far_from_the_gap_stops_after_the_first_batch(setup):
    cfg, engine, world = setup
    for decision in (PRUNE, TRAIN):
        far = lambda lo, hi, covariates, d=decision: d  # noqa: E731  (the law says the same for every gap)
        seq = measurements.gap(cfg, engine, world, None, StoppingRule(far))
        info = seq.sequential
        assert (info["problems"], info["problems_total"], info["decision"], seq.n_problems) == (4, 12, decision, 4)
        assert info["cs_low"] <= seq.gap <= info["cs_high"] and info["cs_high"] - info["cs_low"] > 0
        assert info["saved_fraction"] == pytest.approx(8 / 12) and info["saved_tokens_est"] == pytest.approx(2 * seq.tokens_generated)
        assert len(seq.per_problem) == 4 and seq.metrics()["gap/sequential_problems"] == 4


def test_outside_a_search_it_measures_in_full_and_says_why_once(setup, monkeypatch):
    cfg, engine, world = setup
    monkeypatch.setattr(measurements, "_said_full", False)
    # Listen on the module's own logger: earlier tests in the same process may have left global
    # logging state behind (a library's logging.config call disables existing loggers, or changes
    # levels and propagation), which is not what this test is about.
    logger = logging.getLogger(measurements.__name__)
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)
    said: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = said.append
    logger.addHandler(handler)
    level, logger_level = logger.level, logging.WARNING
    logger.setLevel(logger_level)
    try:
        first = measurements.gap(cfg, engine, world, None)
        measurements.gap(cfg, engine, world, None)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    said = [r for r in said if "gap.sequential" in r.getMessage()]
    assert len(said) == 1 and "search trial" in said[0].getMessage()
    assert first.sequential is None and first.n_problems == 12


def test_the_gate_comes_from_the_pruners_policy_and_bar(law_uri):
    """law: improvement ~ -0.5 + 1.5 gap; around gap 0 its upper bound is well below +0.5 and above -1
    there, while over the whole range [-1, 1] it crosses both. (Not a bar of -1: the law clips its
    interval to [-1, 1], what an improvement can be, so nothing is ever below that bar.)"""
    cfg = train_config(["model=tiny", "gap.sequential=true"])
    for threshold, expected in ((0.5, PRUNE), (-0.9, TRAIN)):
        study = optuna.create_study(direction="maximize", pruner=GapLawPruner(
            law_uri, n_startup_trials=0, threshold=threshold, calibration_rate=1.0))  # calibration never settles
        rule = trial_gate(study.ask(), cfg).sequential_rule(cfg)
        assert rule.why == "" and rule.settle(-0.05, 0.05, {}) == expected
        assert rule.settle(-1.0, 1.0, {}) is None  # the whole range: the decision could still go either way
    study = optuna.create_study(direction="maximize", pruner=GapLawPruner(law_uri, n_startup_trials=3, threshold=0.5))
    rule = trial_gate(study.ask(), cfg).sequential_rule(cfg)
    assert rule.settle is None and "startup" in rule.why  # decided without the gap: measured in full (a law point)


def trial_gate(trial, cfg):
    return SearchGate(trial, cfg, law=True, curve=False, window=1, tracking_uri="")


def test_a_search_trial_decides_as_on_the_full_gap_and_records_what_it_saved(law_uri, tmp_path):
    """Bar +0.5 from the start (no startup trial): both searches prune every trial before training,
    the sequential one after a batch or two (of 4 problems) of the 16."""
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  context: {type: categorical, choices: [none, feedback]}\n")
    common = ["search", *FAST, f"tracking.uri={law_uri}", "search.n_trials=2", f"search.space={space}",
              "search.n_startup_trials=0", "search.calibration_rate=0", "search.threshold=0.5", "search.refit_every=0",
              "gap.n_problems=16", "gap.batch_size=8", "gap.sequential_batch=4", "trainer.reuse_measurements=false"]
    studies = {}
    for name, extra in (("full", []), ("seq", ["gap.sequential=true"])):
        storage = f"sqlite:///{tmp_path}/{name}.db"
        assert main([*common, f"search.storage={storage}", f"search.study={name}",
                     f"search.out_dir={tmp_path}/{name}", *extra]) == 0
        studies[name] = optuna.load_study(study_name=name, storage=storage).trials
    client = MlflowClient(tracking_uri=law_uri)
    for full, seq in zip(studies["full"], studies["seq"]):
        assert full.params == seq.params and full.state == seq.state == TrialState.PRUNED
        assert full.user_attrs["pruner.action"] == seq.user_attrs["pruner.action"] == "prune"
        assert "gap.sequential.problems" not in full.user_attrs
        a = seq.user_attrs
        used = a["gap.sequential.problems"]
        assert used < 16 and used % 4 == 0 and (a["gap.sequential.problems_total"], a["gap.sequential.decision"]) == (16, PRUNE)
        assert a["gap.sequential.cs_low"] <= a["gap"] <= a["gap.sequential.cs_high"]
        assert a["cost.gap_tokens"] < full.user_attrs["cost.gap_tokens"] and a["gap.sequential.saved_tokens_est"] > 0
        metrics = client.get_run(a["mlflow_run_id"]).data.metrics
        assert metrics["gap/sequential_problems"] == used and metrics["gap/sequential_saved_fraction"] == 1 - used / 16


@pytest.mark.parametrize("override, key", [
    ("gap.sequential_batch=0", "gap.sequential_batch"), ("gap.sequential_alpha=1.5", "gap.sequential_alpha"),
    ("gap.sequential_rule=maybe", "gap.sequential_rule"),
])
def test_bad_sequential_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_config([override])


def test_the_new_keys_change_no_hash_and_no_measurement_key():
    base, seq = train_config([]), train_config(["gap.sequential=true", "gap.sequential_batch=5",
                                                 "gap.sequential_alpha=0.1", "gap.sequential_rule=confident"])
    assert config_hash(base) == config_hash(seq)
    assert measurements.teacher_key_fields(base) == measurements.teacher_key_fields(seq)
