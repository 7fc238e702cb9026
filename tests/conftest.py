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
