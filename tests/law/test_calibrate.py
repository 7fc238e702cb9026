"""Calibration -> fit-law -> registry on the tiny model, through the real CLI and stores."""

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.cli import main
from opsd_platform.law import LawError
from opsd_platform.law.pipeline import collect_points
from opsd_platform.law.registry import describe
from tests.helpers import log_points


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = ["calibrate", "model=tiny", "calibrate.contexts=[none,feedback,reference]", "calibrate.seeds=[0,1]",
            "trainer.max_steps=2", f"tracking.uri={uri}", "trainer.progress_bar=false", "rollout.max_new_tokens=12",
            "world.n_val=6", "gap.n_problems=6", "optim.lr=1e-2"]
    assert main(args) == 0
    return uri, args


def test_calibration_records_parent_and_nested_runs(calibrated):
    uri, _ = calibrated
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'calibrate'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 6
    assert {(r.data.tags["context"], r.data.tags["seed"]) for r in children} == {
        (c, s) for c in ("none", "feedback", "reference") for s in ("0", "1")}
    for r in children:
        assert r.info.status == "FINISHED" and "gap/value" in r.data.metrics and "improvement" in r.data.metrics


def test_rerun_resumes_without_retraining(calibrated, capsys):
    uri, args = calibrated
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 trained, 6 already in the store, 0 failed" in out
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'train'")) == 6


def test_points_of_several_calibrations_are_collected_together(tmp_path):
    """One calibration per model family, fitted as one pooled law; other calibrations stay out."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, [("none", 0, 0.0, 0.0), ("feedback", 0, 0.1, 0.1)], calibration="fam-a", family="a")
    log_points(uri, [("none", 0, 0.05, 0.0), ("reference", 0, 0.3, 0.2)], calibration="fam-b", family="b")
    log_points(uri, [("none", 0, 0.9, -0.5)], calibration="other", family="c")
    points = collect_points(uri, "opsd", calibration=["fam-a", "fam-b"])
    assert sorted(points["family"]) == ["a", "a", "b", "b"]
    assert len(collect_points(uri, "opsd")) == 5
    with pytest.raises(LawError, match="of calibration 'x' or 'y'"):
        collect_points(uri, "opsd", calibration=["x", "y"])


def test_fit_law_over_two_families_prints_each_family_law_and_the_equal_slope_test(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gaps = [("none", 0.0), ("feedback", 0.1), ("peer_solution", 0.2), ("reference", 0.4)]
    log_points(uri, [(c, 0, g, 0.5 * g + 0.01 * i) for i, (c, g) in enumerate(gaps)], calibration="fam-a", family="a")
    log_points(uri, [(c, 0, g, 1.5 * g - 0.01 * i) for i, (c, g) in enumerate(gaps)], calibration="fam-b", family="b")
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibrations=[fam-a,fam-b]"]) == 0
    out = capsys.readouterr().out
    slopes = {line.split()[1]: float(line.split("slope ")[1].split()[0]) for line in out.splitlines() if line.startswith("family ")}
    assert slopes == pytest.approx({"a": 0.5, "b": 1.5}, abs=0.1)
    p = float(out.split("equal slopes across families: F=")[1].split("p=")[1].split()[0])
    assert p < 0.01  # slopes 0.5 and 1.5 with little noise: the test tells them apart
    assert "leave-one-family-out: MAE" in out


def test_fit_law_registers_a_champion_loadable_from_plain_python(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gaps = {"none": 0.0, "static": 0.05, "feedback": 0.1, "peer_solution": 0.2, "reference": 0.4}
    log_points(uri, [(c, s, g + 0.01 * s, 1.5 * g + (0.02 if s else -0.02) + 0.01 * i)
                     for i, (c, g) in enumerate(gaps.items()) for s in (0, 1)])
    points = collect_points(uri, "opsd", calibration="synthetic")
    assert len(points) == 10 and points["config"].nunique() == 5
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibration=synthetic"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-configuration-out" in out and "registered opsd-gap-law version 1" in out
    assert (tmp_path / "law" / "law_plot.png").stat().st_size > 10_000
    assert "champion" in str(describe(uri)[0]["aliases"])
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/opsd-gap-law@champion")
    pred = model.predict(pd.DataFrame({"gap": [0.0, 0.2]}))
    assert list(pred.columns)[:3] == ["predicted_improvement", "lower", "upper"]
    slope = (pred["predicted_improvement"][1] - pred["predicted_improvement"][0]) / 0.2
    assert slope == pytest.approx(1.5, abs=0.15)
    assert (pred["lower"] < pred["predicted_improvement"]).all() and (pred["predicted_improvement"] < pred["upper"]).all()
    assert main(["law", "show", f"tracking.uri={uri}"]) == 0
    assert "champion" in capsys.readouterr().out


def test_fit_law_bad_input_registers_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, [("none", 0, 0.1, 0.0), ("static", 0, 0.1, 0.1), ("reference", 0, 0.1, 0.2)])
    assert main(["fit-law", f"tracking.uri={uri}"]) == 2
    assert "the same gap (0.1)" in capsys.readouterr().err
    log_points(uri, [("x", 0, 0.1, 0.0)], experiment="two")
    assert main(["fit-law", f"tracking.uri={uri}", "law.experiment=two"]) == 2
    assert "need at least 3 configurations, got 1" in capsys.readouterr().err
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibration=nope"]) == 2
    assert "no finished training runs" in capsys.readouterr().err
    assert main(["fit-law", f"tracking.uri={uri}", "law.method=lasso"]) == 2
    assert "valid: ols, wls, hc3" in capsys.readouterr().err
    assert main(["law", "show", f"tracking.uri={uri}", "name=no-such-law"]) == 2
    assert "no-such-law" in capsys.readouterr().err
    assert MlflowClient(tracking_uri=uri).search_registered_models() == []
    empty = f"sqlite:///{tmp_path}/empty.db"
    assert main(["fit-law", f"tracking.uri={empty}"]) == 2
    assert "no experiment 'opsd'" in capsys.readouterr().err
