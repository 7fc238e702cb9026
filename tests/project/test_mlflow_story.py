"""What a user reads in the MLflow UI: measurement runs named for what they measured, with their
params (model, world, the context with its revealed share, seed), not by a hash."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.cli import main


def test_measurement_runs_are_named_and_carry_their_params(tmp_path, tiny_overrides, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["gap", *tiny_overrides, "context=graded", "graded_fraction=0.25", "gap.n_problems=4", "seed=3"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd-measurements")
    runs = {r.data.tags["measurement.kind"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"gap_student", "gap_teacher"}
    teacher, student = runs["gap_teacher"], runs["gap_student"]
    assert teacher.info.run_name == "gap_teacher-graded@0.25-arithmetic-tiny-llama-s3"
    assert student.info.run_name == "gap_student-arithmetic-tiny-llama-s3"
    assert {k: teacher.data.params[k] for k in ("model", "world", "context", "seed", "problems")} == {
        "model": "tiny-llama", "world": "arithmetic", "context": "graded@0.25", "seed": "3", "problems": "4 train"}
    assert teacher.data.tags["context"] == "graded@0.25" and "context" not in student.data.params


def test_a_training_run_says_its_result_first(tmp_path, tiny_overrides, capsys):
    """The run's description (the top of its MLflow page) holds the improvement and the gap."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["train", *tiny_overrides, "trainer.max_steps=2", "gap.enabled=true", "gap.n_problems=4"]) == 0
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("opsd").experiment_id], "tags.kind = 'train'")[0]
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"**improvement {run.data.metrics['improvement']:+.3f}** (validation pass rate ")
    assert f"gap {run.data.metrics['gap/value']:+.3f} [" in note and "(context feedback)" in note
    tags = run.data.tags  # the headline as tags too: columns in the runs table
    assert float(tags["result.improvement"]) == pytest.approx(run.data.metrics["improvement"], abs=1e-4)
    assert float(tags["result.gap"]) == pytest.approx(run.data.metrics["gap/value"], abs=1e-4)
