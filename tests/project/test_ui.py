"""`opsd ui` serves the MLflow UI and its REST API on a local store (slow tier: the server takes
~15 s to start). tests/project/test_browser.py looks at the pages in a real browser."""

import json
import urllib.request

import pytest

from tests.helpers import free_port, opsd_ui, serving

pytestmark = pytest.mark.slow


def test_opsd_ui_serves_the_store(tmp_path):
    port = free_port()
    # a new store: asked for
    with serving(opsd_ui(f"sqlite:///{tmp_path}/mlflow.db", port, "create=true"), port) as base:
        page = urllib.request.urlopen(f"{base}/", timeout=5).read().decode()
        assert "MLflow" in page


def test_opsd_ui_api_shows_runs_and_the_champion_law(tmp_path):
    from mlflow.tracking import MlflowClient

    from opsd_platform.cli import main
    from tests.helpers import log_points

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, [(c, s, g + 0.01 * s, 1.2 * g + 0.01 * s + e)
                     for c, g, e in [("none", 0.0, 0.01), ("feedback", 0.1, -0.01), ("reference", 0.4, 0.0),
                                       ("static", 0.2, 0.02), ("peer_solution", 0.3, -0.02)] for s in (0, 1)])
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibration=synthetic"]) == 0
    exp_id = MlflowClient(tracking_uri=uri).get_experiment_by_name("opsd").experiment_id
    port = free_port()
    with serving(opsd_ui(uri, port), port) as base:
        def api(path, body=None):
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(f"{base}/ajax-api/2.0/mlflow/{path}", data=data,
                                         headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=10).read())

        runs = api("runs/search", {"experiment_ids": [exp_id], "filter": "tags.kind = 'train'"})["runs"]
        assert len(runs) == 10  # 5 configurations: a law on fewer may not decide (law/holdout.check_law)
        assert all({m["key"] for m in r["data"]["metrics"]} >= {"gap/value", "improvement"} for r in runs)
        model = api("registered-models/get?name=opsd-gap-law")["registered_model"]
        assert {"alias": "champion", "version": "1"} in model["aliases"]
