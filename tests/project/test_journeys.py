"""README "Quick start": every `<!-- journey: NAME -->` block is run as written, in bash at the
repository root, against a temporary $OPSD_HOME. The only change: the UI journey's final
`opsd ui` line is started in the background on a free port (and stopped once /health answers)."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.cli import main
from tests.helpers import ROOT, free_port, log_points, serving

JOURNEY = re.compile(r"<!-- journey: (\w+) -->\s*```bash\n(.*?)```", re.DOTALL)


def journeys() -> dict[str, str]:
    return dict(JOURNEY.findall((ROOT / "README.md").read_text()))


def shell_env(home: Path) -> dict[str, str]:
    """What `source .venv/bin/activate` gives, plus a temporary store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}", OPSD_HOME=str(home),
               HF_HUB_OFFLINE="1")
    return env


def run_block(block: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=shell_env(home),
                          capture_output=True, text=True, timeout=timeout)


def test_readme_has_the_three_journeys():
    found = journeys()
    assert set(found) == {"ui", "search", "predictor"}
    assert found["ui"].strip().splitlines()[-1].startswith("opsd ui")
    assert "opsd search model=tiny" in found["search"]
    assert 'mlflow.pyfunc.load_model("models:/opsd-gap-law@champion")' in found["predictor"]


def test_predictor_journey(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # what `make demo` or `opsd fit-law` leaves in $OPSD_HOME
    configs = {"none": (0.0, 0.01), "static": (0.05, -0.02), "feedback": (0.1, 0.015), "peer_solution": (0.2, 0.005),
               "reference": (0.4, -0.005)}  # 5 configurations: a law that may decide
    log_points(uri, [(c, s, g + 0.01 * s, 0.02 + 1.5 * g + noise + 0.01 * s)
                     for c, (g, noise) in configs.items() for s in (0, 1)])
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibration=synthetic"]) == 0
    out = run_block(journeys()["predictor"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["predicted_improvement", "lower", "upper", "clipped"]
    rows = [[float(x) for x in line.split()[1:4]] for line in lines[1:]]
    assert len(rows) == 3
    assert rows[0][0] == pytest.approx(0.02, abs=0.02) and rows[2][0] == pytest.approx(0.47, abs=0.03)
    assert all(lo < mid < hi for mid, lo, hi in rows)


@pytest.mark.slow
def test_ui_journey(tmp_path):
    *commands, ui_line = journeys()["ui"].strip().splitlines()
    out = run_block("\n".join(commands), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("opsd").experiment_id], "tags.kind = 'train'")
    assert {r.info.run_name for r in runs} == {"tiny-reference", "tiny-feedback"}
    assert all(r.info.status == "FINISHED" and "improvement" in r.data.metrics for r in runs)

    port = free_port()
    command = ui_line.split("#")[0].strip() + f" port={port}"  # the README's line, on a free port
    with serving(["bash", "-c", f"exec {command}"], port, cwd=ROOT, env=shell_env(tmp_path)) as base:
        api = f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=opsd"
        assert json.loads(urllib.request.urlopen(api, timeout=10).read())["experiment"]["name"] == "opsd"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # six tiny trials: over 10 min when the 2 cores are shared with other jobs
def test_search_journey(tmp_path):
    out = run_block(journeys()["search"], tmp_path, timeout=1700)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = tmp_path / "search" / "quickstart" / "report.html"
    assert f"report: {report}" in out.stdout and report.stat().st_size > 1000
    # a law fitted on the first 3 tiny trials may not decide (law/holdout.py: check_law): the search says why and trains
    assert "the law may not decide: 3 configurations (needs >= 5)" in out.stdout
