"""Two CPU processes under Lightning's DDP (gloo): different rollouts per rank, one set of weights."""

import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from opsd_platform.config.compose import train_config
from opsd_platform.models import load_policy
from opsd_platform.training.checkpoint import tensors_digest


def test_two_ranks_train_on_different_problems_and_stay_identical(tiny_overrides, tmp_path):
    overrides = tiny_overrides + [
        "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=2", "trainer.num_threads=1",
        "trainer.validate=false", "context=reference", "optim.lr=1e-3", "teacher.kind=ema",
        "trainer.checkpoint_every=1",
    ]
    proc = subprocess.run([sys.executable, "-m", "opsd_platform.cli", "train", *overrides],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    cfg = train_config(overrides)
    client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("opsd").experiment_id])  # rank 1 opened none
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    # only rank 0 logs: one value per step; the loss is the mean over both ranks
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]

    ranks = json.loads(Path(client.download_artifacts(run_id, "ddp_ranks.json", str(tmp_path))).read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    # each rank sampled its own problems ...
    k = cfg.rollout.prompts_per_step
    for step in range(2):
        mine, theirs = (set(r["problems"][step * k : (step + 1) * k]) for r in ranks)
        assert len(mine) == k and not mine & theirs, (step, mine, theirs)
    # ... yet gradients were all-reduced: the same weights and the same EMA teacher on both ranks,
    # changed from the (shared) initial weights, the teacher between initial and policy
    model, _ = load_policy(cfg.model, seed=cfg.seed)
    initial = tensors_digest(model.state_dict())
    assert ranks[0]["policy"] == ranks[1]["policy"] != initial
    assert ranks[0]["teacher"] == ranks[1]["teacher"] not in (initial, ranks[0]["policy"])
    assert run.data.tags["opsd.policy_sha256"] == ranks[0]["policy"]
    assert ranks[0]["optimizer"] == ranks[1]["optimizer"]
