"""The MLflow UI in a real browser (slow tier): Debian's chromium, headless, driven by Selenium.

A temporary store gets two tiny training runs and a registered law; `opsd ui` serves it; the
experiment page must list the runs, a run's page its metrics, and the registered law's page the
`@champion` alias. Screenshots go to $OPSD_TEST_ARTIFACTS (default: the test's tmp dir) and
their paths are printed.
"""

import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from opsd_platform.cli import main
from tests.helpers import free_port, log_points, opsd_ui, serving

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tiny = ["model=tiny", "trainer.max_steps=2", "trainer.progress_bar=false", "rollout.max_new_tokens=12",
            "world.n_train=8", "world.n_val=4", f"tracking.uri={uri}"]
    for context in ("reference", "feedback"):
        assert main(["train", *tiny, f"context={context}", f"tracking.run_name=browser-{context}"]) == 0
    # 5 configurations off an exact line: a law that may decide (law/holdout.py: check_law), so it is @champion
    gaps = {"none": (0.0, 0.01), "static": (0.05, -0.01), "feedback": (0.1, 0.015), "peer_solution": (0.2, -0.005),
            "reference": (0.4, 0.0)}
    log_points(uri, [(c, s, g + 0.01 * s, 1.2 * g + noise + 0.01 * s) for c, (g, noise) in gaps.items() for s in (0, 1)])
    assert main(["fit-law", f"tracking.uri={uri}", "law.calibration=synthetic"]) == 0
    return uri


@pytest.fixture(scope="module")
def ui(store):
    port = free_port()
    with serving(opsd_ui(store, port), port) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no driver download: Debian's
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    where = Path(os.environ.get("OPSD_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def page_shows(driver, texts, timeout=60):
    """Wait until the rendered page's text holds every one of `texts` (the UI is a React app)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: all(t in body() for t in texts))
    except TimeoutException:
        missing = [t for t in texts if t not in body()]
        raise AssertionError(f"{driver.current_url} does not show {missing}; it shows:\n{body()[:3000]}") from None
    return body()


def screenshot(driver, shots, name):
    path = shots / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    assert path.stat().st_size > 5_000
    return path


def js_number(value: float) -> str:
    """How the UI prints a metric value (JavaScript's shortest round-trip form, as Python's repr)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def test_experiment_page_lists_the_runs_and_compare_shows_their_metrics(store, ui, browser, shots):
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("opsd")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'browser-%'", order_by=["attributes.run_name"])
    assert [r.info.run_name for r in runs] == ["browser-feedback", "browser-reference"]
    # MLflow 3 opens an experiment on its GenAI pages; the training-runs table is the ML workflow's
    browser.get(f"{ui}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
    page_shows(browser, ["Runs", "browser-reference", "browser-feedback", "fit-law"])
    screenshot(browser, shots, "experiment-runs")

    ids = ",".join(f'"{r.info.run_id}"' for r in runs)
    browser.get(f'{ui}/#/compare-runs?runs=[{ids}]&experiments=["{exp.experiment_id}"]')
    text = page_shows(browser, ["Comparing 2 Runs", "browser-reference", "browser-feedback", "Metrics",
                                "improvement", "rollout/pass_rate"])
    assert "context feedback reference" in text  # the parameter that differs, side by side
    screenshot(browser, shots, "compare-runs")


def test_run_page_shows_its_metric_values(store, ui, browser, shots):
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("opsd")
    run = client.search_runs([exp.experiment_id], "attributes.run_name = 'browser-reference'")[0]
    browser.get(f"{ui}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
    m = run.data.metrics
    wanted = ["browser-reference", "improvement", js_number(m["improvement"]), "train/loss", js_number(m["train/loss"])]
    page_shows(browser, wanted)
    screenshot(browser, shots, "run")


def test_registered_law_page_shows_the_champion_alias(store, ui, browser, shots):
    browser.get(f"{ui}/#/models/opsd-gap-law")
    text = page_shows(browser, ["opsd-gap-law", "Version 1", "Aliases", "champion"])
    assert "@ champion" in text or "@champion" in text
    screenshot(browser, shots, "registered-law")
