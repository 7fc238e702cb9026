"""pipelines/: the calibrate -> law job on the tiny model in a temporary store, and how MLproject
parameters become Hydra overrides (the demo's own tests: tests/demo/test_demo.py)."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.jobs import project_overrides, run_job
from tests.helpers import ROOT

TINY = ["model=tiny", "rollout.max_new_tokens=12", "world.n_train=8", "world.n_val=4", "gap.n_problems=4",
        "trainer.max_steps=2", "optim.lr=1e-2"]


def test_mlflow_run_words_become_overrides():
    words = ["model=tiny trainer.max_steps=2", "", "calibrate.contexts=[none,reference]"]
    assert project_overrides(words, {}) == ["model=tiny", "trainer.max_steps=2", "calibrate.contexts=[none,reference]"]
    under_mlflow_run = {"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "sqlite:////x/m.db"}
    assert project_overrides(["seed=1"], under_mlflow_run) == ["seed=1", "tracking.uri=sqlite:////x/m.db"]
    assert project_overrides(["tracking.uri=sqlite:////y.db"], under_mlflow_run) == ["tracking.uri=sqlite:////y.db"]
    assert project_overrides(["seed=1"], {"MLFLOW_TRACKING_URI": "sqlite:////x/m.db"}) == ["seed=1"]


def pipeline_job(script):
    """The `job` function of pipelines/<script> (what its `__main__` runs through `run_job`)."""
    return runpy.run_path(str(ROOT / "pipelines" / script))["job"]


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
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "OPSD_HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, f"pipelines/{script}", "model=tiny trainer.max_stpes=2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "max_stpes" in out.stderr, out.stderr[-2000:]
