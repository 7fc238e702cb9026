"""The registered law served by MLflow's own scoring server, in an interpreter where no
opsd_platform can be imported (the model's carried code only), as `mlflow models serve` runs it:
bad input is a 400 with one line, predictions are clipped to [-1, 1] and say so; and the model's
declared requirements cover every package its carried code imports."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from opsd_platform import law
from opsd_platform.law import registry
from tests.helpers import fluent_tracking, free_port

# Runs in a fresh interpreter: drops the editable install's finder (and any path holding the
# package), checks that opsd_platform is gone, then serves the model directory given as argv[1].
SERVE = """
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if "opsd_platform" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p and not (__import__("pathlib").Path(p) / "opsd_platform").is_dir()]
assert importlib.util.find_spec("opsd_platform") is None, "opsd_platform is still importable"
import mlflow, uvicorn
from mlflow.pyfunc import scoring_server
model = mlflow.pyfunc.load_model(sys.argv[1])
print("law code from", sys.modules["opsd_platform"].__file__, flush=True)
uvicorn.run(scoring_server.init(model), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A steep law (slope 3 on gaps in [0, 0.3]): at a gap of 0.9 it predicts about 2.7."""
    tmp = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    rows = [{"config": f"f/arith/c{i}", "seed": s, "gap": g, "improvement": 3 * g + rng.normal(0, 0.02), "family": "f"}
            for i, g in enumerate(np.linspace(0, 0.3, 6)) for s in range(2)]
    fit = law.fit_law(pd.DataFrame(rows))
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = registry.register_law(fit, tracking_uri=uri, holdout=law.leave_one_out(pd.DataFrame(rows)))
    with fluent_tracking(uri):  # a models:/ URI is read through the registry of the fluent API
        model_uri = f"models:/{registry.DEFAULT_NAME}/{out['version']}"
        return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "model")))


def test_the_version_has_a_description(model_dir):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{model_dir.parent}/mlflow.db"
    text = MlflowClient(uri, registry_uri=uri).get_model_version(registry.DEFAULT_NAME, "1").description
    assert text.startswith("Gap law: improvement = ") and "fitted on 6 configurations (12 runs)" in text
    assert "Held out (leave_one_out): RMSE" in text


def test_the_declared_requirements_cover_the_carried_code(model_dir):
    required = {line.split("==")[0].lower() for line in (model_dir / "requirements.txt").read_text().split()}
    files = [model_dir / "pyfunc_model.py", *(model_dir / "code").rglob("*.py")]
    imported = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            imported |= {n.split(".")[0] for n in names}
    # modules of the law the model loads (law/__init__ and what it imports), not the whole stage
    third_party = imported - set(sys.stdlib_module_names) - {"opsd_platform", "__future__"}
    needed = {m for m in third_party if m in {"mlflow", "numpy", "pandas", "scipy", "statsmodels"}}
    assert {"mlflow", "numpy", "pandas", "scipy"} <= needed and needed - {"statsmodels"} <= required
    assert (model_dir / "code" / "opsd_law_code" / "opsd_platform" / "law" / "fit.py").is_file()


def _post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(model_dir), str(port)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path_factory.getbasetemp(), env={**os.environ, "PYTHONPATH": ""})
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    yield port, log
    proc.terminate()
    proc.wait(timeout=30)


def test_served_without_an_installed_platform(server, model_dir):
    port, log = server
    assert f"law code from {model_dir}/code/opsd_law_code/opsd_platform/__init__.py" in log.read_text()
    status, body = _post(port, {"dataframe_split": {"columns": ["gap"], "data": [[0.1], [0.9]]}})
    assert status == 200, body
    near, far = body["predictions"]
    assert near["clipped"] is False and 0.1 < near["predicted_improvement"] < 0.5
    assert far["clipped"] is True and far["predicted_improvement"] == 1.0 and far["upper"] == 1.0  # not ~2.7


@pytest.mark.parametrize("body, reason", [
    ({"dataframe_split": {"columns": ["gap"], "data": [[5.0]]}}, "input: gap=5.0 in row 0 is outside [-1, 1]"),
    ({"dataframe_split": {"columns": ["gap"], "data": [[None]]}}, "input: non-finite gap=nan in row 0"),
    ({"dataframe_split": {"columns": ["gap"], "data": [[0.1]]}, "params": {"level": 1.5}}, "level must be in (0, 1), got 1.5"),
])
def test_bad_input_is_a_400_with_one_line(server, body, reason):
    status, answer = _post(server[0], body)
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
    assert answer["message"].splitlines()[-1].startswith(f"Error: {reason}"), answer["message"]
    assert "stack_trace" not in answer


@pytest.mark.slow
def test_served_by_mlflow_from_a_fresh_environment_of_its_requirements(model_dir, tmp_path):
    """What `mlflow models serve --env-manager virtualenv` does, step by step: a new virtual
    environment with only the model's requirements.txt installed (needs PyPI or a mirror, ~2-3
    min), then `mlflow models serve` from it. (The virtualenv manager itself also needs the
    `virtualenv` package and pyenv, which this project does not install.)"""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    # the base interpreter of this venv, not this venv's packages: the new one sees none of them
    pip = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "-r", str(model_dir / "requirements.txt")],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    check = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import opsd_platform"], capture_output=True, env=env, cwd=tmp_path)
    assert check.returncode != 0  # the platform is not there: the model's own copy must do
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([str(env_dir / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager",
                                 "local", "-h", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        status, body = _post(port, {"dataframe_split": {"columns": ["gap"], "data": [[0.1], [0.9]]}})
        assert status == 200 and [p["clipped"] for p in body["predictions"]] == [False, True], body
        status, body = _post(port, {"dataframe_split": {"columns": ["gap"], "data": [[5.0]]}})
        assert status == 400 and body["message"].splitlines()[-1].startswith("Error: input: gap=5.0"), body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
