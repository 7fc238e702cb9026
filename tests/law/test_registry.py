"""The law in an MLflow registry on a temporary SQLite store: register, alias, promote, load, plot."""

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from opsd_platform import law, tracking
from opsd_platform.errors import RegistryError
from opsd_platform.law import plot as report, registry
from tests.helpers import FIXTURES, fluent_tracking


def make_points(n_configs=7, seeds=3, noise=0.03, seed=0, families=("smollm2",)):
    rng = np.random.default_rng(seed)
    rows = []
    for fam in families:
        for i in range(n_configs):
            gap = rng.uniform(-0.1, 0.7)
            for s in range(seeds):
                rows.append({"config": f"{fam}/arith/ctx{i}", "seed": s, "gap": gap + rng.normal(0, 0.01),
                             "improvement": 1.5 * gap + rng.normal(0, noise), "family": fam,
                             "context_tokens": 40.0 * i + rng.normal(0, 3)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"


@pytest.fixture(scope="module")
def registered(store):
    """v1 (champion), v2 with a worse hold-out RMSE (stays challenger), v3 with a better one (promoted)."""
    pts = make_points()
    fit1 = law.fit_law(pts)
    loo1 = law.leave_one_out(pts)
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    r1 = registry.register_law(fit1, tracking_uri=store, holdout=loo1, source_run_ids=["run-a", "run-b"])
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # no global state left behind
    worse = {**loo1, "rmse": loo1["rmse"] * 2}
    r2 = registry.register_law(law.fit_law(pts, method="hc3"), tracking_uri=store, holdout=worse, promote_if_better=True)
    fit3 = law.fit_law(pts, level=0.8)
    better = {**loo1, "rmse": loo1["rmse"] / 2}
    r3 = registry.register_law(fit3, tracking_uri=store, holdout=better, promote_if_better=True)
    return {"points": pts, "fits": (fit1, None, fit3), "results": (r1, r2, r3), "loo": loo1}


def test_register_aliases_and_promotion(store, registered):
    r1, r2, r3 = registered["results"]
    assert (r1["version"], r1["aliases"], r1["decision"]) == (1, ["champion"], "champion")
    assert (r2["version"], r2["aliases"], r2["decision"]) == (2, ["challenger"], "kept")
    assert ">=" in r2["reason"]
    assert (r3["version"], r3["aliases"], r3["decision"]) == (3, ["champion"], "promoted")
    assert "<" in r3["reason"]

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    tags = client.get_model_version(registry.DEFAULT_NAME, "1").tags
    assert tags["source_run_ids"] == "run-a,run-b" and tags["n_configs"] == "7" and tags["n_points"] == "21"
    assert float(tags["holdout_rmse"]) == registered["loo"]["rmse"] and tags["method"] == "ols"
    # read by people: 4 significant digits; parsed by promote (holdout_rmse): exact
    assert tags["slope"] == f"{registered['fits'][0].slope:.4g}"
    assert all(len(tags[k]) <= 10 for k in ("slope", "intercept", "r2", "level", "holdout_mae", "holdout_coverage"))
    run = client.get_run(r1["run_id"])
    assert run.data.tags["kind"] == "law" and run.info.status == "FINISHED"
    assert run.data.metrics["law/holdout_rmse"] == pytest.approx(registered["loo"]["rmse"])
    assert run.data.params == {}  # the fit is not sprayed into the run's params
    # the model's artifacts live beside the store, in the run's experiment (not ./mlruns of the cwd)
    logged = client.get_logged_model(client.get_model_version(registry.DEFAULT_NAME, "1").source.split("/")[-1])
    assert logged.experiment_id == run.info.experiment_id
    assert logged.artifact_location.startswith(Path(tracking.sqlite_path(store)).parent.as_uri())

    rows = registry.describe(store)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert rows[2]["aliases"] == ["champion"] and rows[1]["aliases"] == [] and rows[0]["aliases"] == []
    assert rows[2]["holdout_rmse"] == pytest.approx(registered["loo"]["rmse"] / 2)
    assert rows[1]["promotion"].startswith("kept:")
    table = registry.format_table(rows)
    assert "@champion" in table and table.count("\n") == 3 and "ho_rmse" in table

    # explicit promote: v1 is worse than v3 (same RMSE x2) -> kept; forced -> promoted; then back
    assert registry.promote(version=1, tracking_uri=store)["decision"] == "kept"
    forced = registry.promote(version=1, tracking_uri=store, force=True)
    assert forced["decision"] == "promoted" and forced["champion"] == 1
    assert registry.promote(version=3, tracking_uri=store)["decision"] == "promoted"
    assert registry.promote(version=3, tracking_uri=store)["decision"] == "unchanged"
    with pytest.raises(RegistryError, match="no alias 'challenger'"):
        registry.promote(tracking_uri=store)  # the challenger alias moved away when v3 was promoted


def test_a_law_without_hold_out_is_refused_and_the_first_validated_one_takes_champion(tmp_path):
    """A law with no leave-one-out error may not decide (law/holdout.py: check_law): registered as evidence, no
    alias; the first version that has one takes @champion (a search's learning loop promotes it)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    pts = make_points(n_configs=5, seeds=2)
    first = registry.register_law(law.fit_law(pts), tracking_uri=uri, holdout=None)
    assert first["decision"] == "refused" and first["aliases"] == [] and "leave-one-configuration-out" in first["reason"]
    second = registry.register_law(law.fit_law(pts), tracking_uri=uri, holdout=law.leave_one_out(pts),
                                   promote_if_better=True)
    assert second["decision"] == "champion" and second["aliases"] == ["champion"]
    assert registry.promote(version=1, tracking_uri=uri, force=True)["decision"] == "kept"  # refused: never, even forced


def test_plain_mlflow_load_matches_lawfit(store, registered):
    fit3 = registered["fits"][2]
    new = pd.DataFrame({"gap": [0.1, 0.3]})
    with fluent_tracking(store):  # exactly what the README tells users to do
        model = mlflow.pyfunc.load_model("models:/opsd-gap-law@champion")
        out = model.predict(new)
        wide = model.predict(new, params={"level": 0.95})
    assert not out["clipped"].any() and not wide["clipped"].any()
    out, wide = out.drop(columns="clipped"), wide.drop(columns="clipped")
    pd.testing.assert_frame_equal(out.reset_index(drop=True), fit3.predict(new), check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(wide.reset_index(drop=True), fit3.predict(new, level=0.95), rtol=1e-12)
    assert ((wide["upper"] - wide["lower"]) > (out["upper"] - out["lower"])).all()  # fit level is 0.8
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["gap"] and sig.params.params[0].default == 0.8


def test_pyfunc_rejects_bad_input(store, registered):
    model = registry.load_law(store)
    with pytest.raises(Exception, match="gap"):
        model.predict(pd.DataFrame({"gapp": [0.1]}))
    # bad input is MLflow's INVALID_PARAMETER_VALUE (a 400 from its scoring server), with the law's one line
    with pytest.raises(MlflowException, match="non-finite gap=nan in row 1"):
        model.predict(pd.DataFrame({"gap": [0.1, np.nan]}))
    with pytest.raises(Exception, match="column gap"):
        model.predict(pd.DataFrame({"gap": ["high"]}))
    with pytest.raises(MlflowException, match=r"level must be in \(0, 1\)"):
        model.predict(pd.DataFrame({"gap": [0.1]}), params={"level": 1.5})
    with pytest.raises(MlflowException, match=r"gap=5.0 in row 0 is outside \[-1, 1\]"):
        model.predict(pd.DataFrame({"gap": [5.0]}))
    # the model itself (no MLflow schema enforcement in front) names the problems too
    inner = model.unwrap_python_model()
    with pytest.raises(MlflowException, match="missing column 'gap'"):
        inner.predict(None, pd.DataFrame({"gapp": [0.1]}))
    with pytest.raises(MlflowException, match="'gap' must be numeric"):
        inner.predict(None, pd.DataFrame({"gap": ["high"]}))


def test_covariate_law_and_existing_run(store):
    pts = make_points(seed=3)
    fit = law.fit_law(pts, covariates=["context_tokens"])
    run_id = tracking.start_run(store, "calibrate", run_name="outer", tags={"kind": "calibrate"})
    loo = law.leave_one_out(pts, covariates=["context_tokens"])
    out = registry.register_law(fit, tracking_uri=store, name="law-cov", run_id=run_id, holdout=loo)
    assert out["run_id"] == run_id and out["aliases"] == ["champion"]
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "RUNNING"  # caller's run untouched
    model = registry.load_law(store, "law-cov")
    new = pd.DataFrame({"gap": [0.2], "context_tokens": [120.0]})
    pd.testing.assert_frame_equal(model.predict(new).drop(columns="clipped"), fit.predict(new), rtol=1e-12)
    with pytest.raises(Exception, match="context_tokens"):
        model.predict(pd.DataFrame({"gap": [0.2]}))
    # no hold-out: nothing shows it predicts, so it may not decide (law/holdout.py: check_law)
    second = registry.register_law(fit, tracking_uri=store, name="law-cov", promote_if_better=True)
    assert second["decision"] == "refused" and "leave-one-configuration-out" in second["reason"]


def test_unknown_name_and_alias(store, registered):
    with pytest.raises(RegistryError, match="no registered model 'nope'; registered models: .*opsd-gap-law"):
        registry.load_law(store, "nope")
    with pytest.raises(RegistryError, match=r"no alias 'gold'; aliases: @champion -> v3; versions: 1, 2, 3"):
        registry.load_law(store, alias="gold")
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote(version=9, tracking_uri=store)
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.describe(store, "nope")


def test_plot_law_writes_png(tmp_path):
    pts = make_points(n_configs=5, families=("smollm2", "qwen"))
    fit = law.fit_law(pts)
    path = report.plot_law(pts, fit, holdout=law.leave_one_out(pts), path=tmp_path / "plots" / "law.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert report.short_labels(["m/a/ref", "m/a/fb"]) == ["ref", "fb"]
    cov = law.fit_law(pts, covariates=["context_tokens"])
    assert report.plot_law(pts, cov, path=tmp_path / "cov.png").exists()


def test_source_run_ids_are_truncated_at_whole_ids():
    ids = [f"{i:032x}" for i in range(500)]
    text = registry._join_ids(ids)
    assert len(text) <= 4000 and text.endswith("more)") and text.split(",")[0] == ids[0]
    kept = text.split(",...")[0].split(",")
    assert all(k in ids for k in kept) and text.endswith(f"(+{500 - len(kept)} more)")
    assert registry._join_ids(["a", "b"]) == "a,b"


def test_a_law_registered_before_the_move_still_loads():
    """A model directory written by the flat package (tests/data/law_model_pre_move, provenance
    there) loads with today's code and predicts what it predicted when it was written."""
    model = mlflow.pyfunc.load_model(str(FIXTURES / "law_model_pre_move"))
    pred = model.predict(pd.DataFrame({"gap": [0.0, 0.2]}))
    np.testing.assert_allclose(pred["predicted_improvement"], [0.002239, 0.308280], atol=1e-6)
    np.testing.assert_allclose(pred["lower"], [-0.029772, 0.278254], atol=1e-6)
    assert (pred["upper"] > pred["predicted_improvement"]).all()
