"""The embedded default model, for real: loads from its PyPI package, answers, trains (slow tier)."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from opsd_platform.config import ModelConfig, default_home
from opsd_platform.config.compose import train_config
from opsd_platform.models import SMOLLM2_SHA256, load_policy, sha256_file, smollm2_gguf
from opsd_platform.runs.train import train
from opsd_platform.training.rollout import HFGenerateEngine

pytestmark = pytest.mark.slow


def test_default_model_is_the_pinned_pretrained_instruct_model():
    assert sha256_file(smollm2_gguf(default_home() / "models")) == SMOLLM2_SHA256
    model, tok = load_policy(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    torch.manual_seed(0)
    out = HFGenerateEngine(model, tok).generate(["What is 7 + 5?"], n=1, max_new_tokens=32, temperature=0.0)
    assert "12" in out.texts[0], out.texts[0]  # a pretrained instruct model, not random weights


def test_short_opsd_run_on_the_default_model(tmp_path):
    cfg = train_config([
        "trainer.max_steps=2", "context=reference", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2", "rollout.max_new_tokens=32", "world.n_val=6",
        "trainer.progress_bar=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ])
    result = train(cfg)
    run = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == "SmolLM2-135M-Instruct"
    assert result.initial_pass_rate >= 0.25  # SmolLM2 adds single digits well (about 0.7 measured)
    assert run.data.metrics["train/loss"] > 0
