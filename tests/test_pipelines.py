"""pipelines/: the demo and calibrate -> law jobs on the tiny model in a temporary store, and how
MLproject parameters become Hydra overrides."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.pipelines import DEMO_CALIBRATION, project_overrides, run_job
from opsd_platform.registry import describe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "rollout.max_new_tokens=12", "world.n_train=8", "world.n_val=4", "gap.n_problems=4",
        "trainer.max_steps=2", "optim.lr=1e-2"]


def test_mlflow_run_words_become_overrides():
    words = ["model=tiny trainer.max_steps=2", "", "calibrate.contexts=[none,reference]"]
    assert project_overrides(words, {}) == ["model=tiny", "trainer.max_steps=2", "calibrate.contexts=[none,reference]"]
    under_mlflow_run = {"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "sqlite:////x/m.db"}
    assert project_overrides(["seed=1"], under_mlflow_run) == ["seed=1", "tracking.uri=sqlite:////x/m.db"]
    assert project_overrides(["tracking.uri=sqlite:////y.db"], under_mlflow_run) == ["tracking.uri=sqlite:////y.db"]
    assert project_overrides(["seed=1"], {"MLFLOW_TRACKING_URI": "sqlite:////x/m.db"}) == ["seed=1"]


def log_demo_points(uri):
    """Known points in calibration `demo` (tiny random models score ~0 everywhere, so their gaps
    are all equal and give no law on their own); the demo's tiny runs are added to them."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd") or client.get_experiment(client.create_experiment("opsd"))
    for context, gap, improvement in [("none", 0.0, 0.01), ("feedback", 0.1, 0.12), ("reference", 0.4, 0.55)]:
        run = client.create_run(exp.experiment_id, tags={
            "kind": "train", "context": context, "world": "arithmetic", "model_family": "synthetic",
            "model": "synthetic", "seed": "0", "config_hash": "h", "calibrate.name": "demo"})
        client.log_metric(run.info.run_id, "gap/value", gap)
        client.log_metric(run.info.run_id, "improvement", improvement)
        client.set_terminated(run.info.run_id, "FINISHED")


def pipeline_job(script):
    """The `job` function of pipelines/<script> (what its `__main__` runs through `run_job`)."""
    return runpy.run_path(str(ROOT / "pipelines" / script))["job"]


def test_demo_calibrates_fits_registers_and_reports(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_demo_points(uri)
    # one search trial (trained fully): every step runs; the slow tier runs the demo's own search size
    search = "search.n_trials=1 search.n_startup_trials=1"
    code = run_job("demo", pipeline_job("demo.py"), [" ".join(TINY), search, f"tracking.uri={uri}"])
    out, err = capsys.readouterr()
    assert code == 0, out[-3000:] + err[-3000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    trained = client.search_runs([exp.experiment_id], "tags.kind = 'train' AND tags.model_family = 'tiny' "
                                                       "AND tags.`calibrate.name` = 'demo'")
    assert sorted(r.data.tags["context"] for r in trained) == ["feedback", "none", "reference"]
    assert all(r.info.status == "FINISHED" and "gap/value" in r.data.metrics for r in trained)
    versions = describe(uri)  # the search refits the law on its finished trials: a later version may win
    assert [v for v in versions if "champion" in v["aliases"]]
    summary = tmp_path / "demo" / "summary.md"
    text = summary.read_text()
    for part in ("## Calibration `demo`", "## Law", "@champion", "## Law-pruned search", "study `demo`: 1 trained",
                 f"opsd ui tracking.uri={uri}"):
        assert part in text
    study_report = tmp_path / "search" / "demo" / "report.html"
    assert f"Study report: `{study_report}`" in text and study_report.is_file()
    assert f"study report: {study_report}" in out
    assert text.count("| tiny/arithmetic/") == 3 and text.count("| synthetic/arithmetic/") == 3
    assert f"report: {summary}" in out and f"opsd ui tracking.uri={uri}" in out
    law_run = re.search(r"law run `(\w+)`", text).group(1)  # the demo's own (the search adds refits)
    assert "demo_summary.md" in {a.path for a in client.list_artifacts(law_run)}


def test_calibrate_law_with_too_few_configurations_registers_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    words = [*TINY, "calibrate.contexts=[reference]", "calibrate.seeds=[0]", f"tracking.uri={uri}"]
    assert run_job("calibrate_law", pipeline_job("calibrate_law.py"), words) == 2
    err = capsys.readouterr().err
    assert "the law could not be fitted: need at least 3 configurations, got 1" in err
    assert "nothing was registered" in err
    assert MlflowClient(tracking_uri=uri).search_registered_models() == []


@pytest.mark.parametrize("script", ["calibrate_law.py", "demo.py"])
def test_pipeline_script_bad_override_is_one_line_exit_2(tmp_path, script):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "OPSD_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, f"pipelines/{script}", "model=tiny trainer.max_stpes=2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "max_stpes" in out.stderr, out.stderr[-2000:]


def test_demo_grid_has_at_least_three_contexts():
    contexts = next(o for o in DEMO_CALIBRATION if o.startswith("calibrate.contexts="))
    assert len(contexts.split("=", 1)[1].strip("[]").split(",")) >= 3
