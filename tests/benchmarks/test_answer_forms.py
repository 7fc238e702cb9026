"""The answer-form report (benchmarks/answer_forms.py): skeletons, forms, and runs read from a real store."""

import mlflow
import pandas as pd
import pytest

from benchmarks.answer_forms import forms, run_rows, skeleton


def test_skeleton_keeps_the_words_and_masks_every_number():
    assert skeleton("6 + 2  =\n8.") == "# + # = #."
    assert skeleton("The answer is -12.5") == "The answer is #"
    assert skeleton("The answer is 11") == skeleton("The answer is 3")  # one form, two numbers
    assert skeleton("To add 9 + 9, you simply add 9 to 9.") == "To add # + #, you simply add # to #."


def test_forms_find_the_dominant_form_and_its_share():
    samples = [{"response": "6 + 2 = 8", "passed": True}, {"response": "1 + 1 = 3", "passed": False},
               {"response": "The answer is 8", "passed": True}, {"response": "7 + 0 = 7", "passed": True}]
    out = forms(samples)
    assert out["top_form"] == "# + # = #" and out["top_share"] == pytest.approx(0.75)
    assert out["pass"] == pytest.approx(0.75) and out["forms"] == pytest.approx(0.5)
    assert out["example"] == "6 + 2 = 8"
    assert forms([]) == {"n": 0}


@pytest.fixture
def store(tmp_path):
    """A real MLflow store in tmp_path as the current tracking URI (the previous one restored after)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def test_run_rows_read_a_real_store_and_list_runs_without_samples_as_missing(store):
    tmp_path = store
    client = mlflow.MlflowClient()
    exp = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    logged = client.create_run(exp).info.run_id
    client.log_dict(logged, [{"response": "6 + 2 = 8", "passed": True}] * 2, "samples/val_initial.json")
    client.log_dict(logged, [{"response": "The answer is 11", "passed": False}] * 2, "samples/val_final.json")
    bare = client.create_run(exp).info.run_id  # a run that logged nothing
    table = pd.DataFrame({"slice": "law-x", "run_id": [logged, bare], "context": ["retry", "none"],
                          "graded_fraction": [None, None], "seed": [0, 0], "improvement": [-0.4, 0.0]})
    first, second = run_rows(table)
    assert first["run_id"] == logged and not first["missing"]  # sorted by improvement
    assert first["top_form_initial"] == "# + # = #" and first["top_form"] == "The answer is #"
    assert first["pass"] == 0.0 and first["top_share"] == 1.0
    assert second == {"slice": "law-x", "run_id": bare, "context": "none", "seed": 0, "improvement": 0.0,
                      "missing": True}
