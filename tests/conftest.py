"""Fixtures for the whole suite. The tests mirror the package: tests/<stage>/ holds the tests of
opsd_platform/<stage>/, tests/benchmarks/ those of benchmarks/, tests/project/ those of the top-level
modules and of the project as a whole (layers, lint, packaging, the README's journeys). What tests
in several folders share is in tests/helpers.py; the fixture files are in tests/data/. Every folder
is a package (an __init__.py), so two test files may share a name and `from tests.helpers import`
resolves under a plain `pytest` too."""


import pytest

from opsd_platform.process import configure_process

configure_process()  # as every entry point does first (opsd_platform/process.py)


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that shrink the real config to a tiny, fast run in a temporary MLflow store."""
    return [
        "model=tiny",
        "trainer.progress_bar=false",
        "rollout.max_new_tokens=16",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "world.n_train=16",
        "world.n_val=8",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]


@pytest.fixture(scope="module")
def law_uri(tmp_path_factory):
    """A tmp MLflow store whose registry holds a real law (fitted by law/fit.py) as @champion v1."""
    from tests.helpers import LAW_POINTS, store_with_law  # after HF_HUB_OFFLINE is set above

    uri, report = store_with_law(tmp_path_factory.mktemp("law"), LAW_POINTS)
    assert report.registration["version"] == 1 and report.fit.slope == pytest.approx(1.5, abs=0.2)
    return uri
