"""The initial gap: bootstrap intervals, the paired measurement, and its MLflow record."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.cli import main
from opsd_platform.config.compose import train_config
from opsd_platform.gap.measure import bootstrap_means, measure_gap
from opsd_platform.models import load_policy
from opsd_platform.runs.train import run_gap, train
from opsd_platform.training.rollout import HFGenerateEngine
from opsd_platform.worlds import make_world


def test_bootstrap_intervals():
    s = np.array([0.0, 0.25, 0.5, 0.75, 1.0] * 4)
    (s_lo, s_hi), (t_lo, t_hi), (g_lo, g_hi) = bootstrap_means(s, s + 0.1, n_boot=500, level=0.9)
    assert s_lo < s.mean() < s_hi and t_lo < s.mean() + 0.1 < t_hi
    assert g_lo == pytest.approx(0.1) and g_hi == pytest.approx(0.1)  # paired: a constant shift is certain
    (lo, hi), _, _ = bootstrap_means(np.ones(8), np.ones(8))
    assert lo == hi == 1.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_means(np.ones(3), np.ones(4))


@pytest.mark.parametrize("context", ["none", "feedback", "reference"])
def test_measure_gap_on_tiny_model(tiny_overrides, context):
    cfg = train_config(tiny_overrides + [f"context={context}"])
    model, tok = load_policy(cfg.model)
    world = make_world(cfg.world)
    problems = world.problems("train")[:6]
    gap = measure_gap(HFGenerateEngine(model, tok), world, problems, context, n=3, max_new_tokens=12,
                      temperature=1.0, n_boot=200)
    assert gap.n_problems == 6 and gap.samples_per_problem == 3 and len(gap.per_problem) == 6
    assert gap.gap == pytest.approx(gap.teacher_pass_rate - gap.student_pass_rate)
    assert gap.gap_ci[0] <= gap.gap <= gap.gap_ci[1]
    assert 0 < gap.tokens_generated <= 2 * 6 * 3 * 12
    expected_coverage = {"none": 1.0, "reference": 1.0}.get(context)
    if expected_coverage is not None:
        assert gap.teacher_coverage == expected_coverage
    else:  # feedback only for failures
        student_fail = 1 - gap.student_pass_rate
        assert gap.teacher_coverage == pytest.approx(student_fail)
    if context == "reference":
        assert all("reference solution" in e["teacher_prompt"] for e in gap.examples)


def test_opsd_gap_is_an_mlflow_run(tiny_overrides, capsys):
    assert main(["gap", *tiny_overrides, "context=reference", "gap.n_problems=4"]) == 0
    out = capsys.readouterr().out
    assert "gap" in out and "of the rollout tokens" in out
    cfg = train_config(tiny_overrides + ["context=static", "gap.n_problems=4", "gap.samples=2"])
    run_id, gap = run_gap(cfg)
    client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "gap" and run.data.tags["context"] == "static"
    assert run.data.metrics["gap/value"] == pytest.approx(gap.gap)
    assert run.data.metrics["gap/tokens"] == gap.tokens_generated
    assert 0 < run.data.metrics["gap/cost_tokens_ratio_est"] < 1
    saved = json.loads(open(client.download_artifacts(run_id, "gap.json")).read())
    assert saved["n_problems"] == 4 and saved["samples_per_problem"] == 2


def test_training_with_gap_records_both_in_one_run(tiny_overrides):
    cfg = train_config(tiny_overrides + ["context=reference", "trainer.max_steps=2", "gap.enabled=true",
                                         "gap.n_problems=4"])
    result = train(cfg)
    metrics = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id).data.metrics
    assert metrics["gap/value"] == pytest.approx(result.gap.gap)
    assert "improvement" in metrics and "gap/cost_seconds_ratio" in metrics
