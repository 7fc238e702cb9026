"""The OPSD loop on a tiny locally built model: it updates, it learns, it is tracked."""

import math
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config.compose import train_config
from opsd_platform.runs.train import train
from tests.helpers import fit_in_process as fit


@pytest.mark.parametrize("teacher", ["ema", "fixed", "live"])
def test_one_step_changes_every_trainable_parameter(tiny_overrides, teacher):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=1", "context=reference", "optim.lr=1e-3",
                                         "trainer.validate=false", f"teacher.kind={teacher}"])
    before = {}
    module = fit(cfg, prepare=lambda m: before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}))
    assert module.history[0]["train/loss"] > 0
    assert module.history[0]["teacher/mask_frac"] == 1.0
    for name, p in module.policy.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    if teacher == "ema":  # the EMA teacher moved towards the student, but not all the way
        for (name, t), s in zip(module.teacher.model.named_parameters(), module.policy.parameters()):
            assert not torch.equal(t, before[name]) and not torch.equal(t, s), name
    if teacher == "fixed":
        for name, t in module.teacher.model.named_parameters():
            assert torch.equal(t, before[name]), name


def test_fused_adamw_makes_the_same_steps_as_the_default_loop(tiny_overrides):
    base = tiny_overrides + ["trainer.max_steps=2", "context=reference", "optim.lr=1e-3", "trainer.validate=false"]
    fused = fit(train_config(base + ["optim.fused=true"]))
    loop = fit(train_config(base + ["optim.fused=false"]))
    assert fused.optimizers().optimizer.defaults["fused"] and not loop.optimizers().optimizer.defaults["fused"]
    assert [h["train/loss"] for h in fused.history] == pytest.approx([h["train/loss"] for h in loop.history], rel=1e-4)
    for (name, a), b in zip(fused.policy.named_parameters(), loop.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_lora_updates_only_the_adapter(tiny_overrides):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=1", "context=reference", "optim.lr=1e-2",
                                         "trainer.validate=false", "teacher.kind=fixed", "model.lora.enabled=true",
                                         "model.lora.r=4"])
    before = {}
    module = fit(cfg, prepare=lambda m: before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}))
    assert module.teacher.model is None  # fixed LoRA teacher = the base model with the adapter off
    for name, p in module.policy.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == p.requires_grad, name
        assert p.requires_grad == ("lora_" in name), name


def test_distillation_loss_falls_on_a_learnable_task(tiny_overrides):
    """With the reference answer as context and a fixed teacher, the student learns to match it."""
    cfg = train_config(tiny_overrides + ["trainer.max_steps=30", "context=reference", "optim.lr=3e-3",
                                         "teacher.kind=fixed", "trainer.validate=false"])
    losses = [h["train/loss"] for h in fit(cfg).history]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(math.isfinite(x) for x in losses)
    assert last < 0.6 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("support,divergence", [("full", "forward"), ("sampled", "reverse"), ("topk", "jsd")])
def test_other_losses_and_batch_reuse_run(tiny_overrides, support, divergence):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=2", "context=static", "trainer.validate=false",
                                         f"loss.support={support}", f"loss.divergence={divergence}",
                                         "trainer.updates_per_batch=2", "rollout.batch_size=5"])
    history = fit(cfg).history
    assert len(history) == 2 and all(math.isfinite(h["train/loss"]) for h in history)


def test_non_finite_loss_skips_the_step_and_goes_on(tiny_overrides):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=3", "context=none", "teacher.kind=fixed",
                                         "trainer.validate=false"])

    def poison_teacher(module):
        with torch.no_grad():
            module.teacher.model.lm_head.weight.fill_(float("nan"))

    before = {}

    def prepare(module):
        poison_teacher(module)
        before.update({k: v.detach().clone() for k, v in module.policy.named_parameters()})

    module = fit(cfg, prepare=prepare)
    assert module.skipped_nonfinite == 3
    assert [h["train/skipped_nonfinite"] for h in module.history] == [1.0, 2.0, 3.0]
    for name, p in module.policy.named_parameters():
        assert torch.equal(before[name], p.detach()), f"{name} changed in a skipped step"


def test_training_run_is_recorded_in_mlflow(tiny_overrides):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=3", "context=feedback", "seed=1"])
    result = train(cfg)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["world"] == "arithmetic" and run.data.tags["context"] == "feedback"
    assert run.data.tags["model"] == "tiny-llama" and run.data.tags["kind"] == "train"
    assert run.data.params["optim.lr"] == "1e-05" and run.data.params["seed"] == "1"
    for key in ("train/loss", "rollout/reward_mean", "rollout/response_len", "teacher/mask_frac",
                "val/pass_rate", "improvement", "time/step_s"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1, 2, 3]
    val = client.get_metric_history(result.run_id, "val/pass_rate")
    assert [m.step for m in val] == [0, 3]
    assert run.data.metrics["improvement"] == pytest.approx(val[1].value - val[0].value)
    assert result.improvement == pytest.approx(run.data.metrics["improvement"])
    assert "config.yaml" in [a.path for a in client.list_artifacts(result.run_id)]
    assert {a.path for a in client.list_artifacts(result.run_id, "samples")} == {
        "samples/val_initial.json", "samples/val_final.json"}
    final = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/samples/val_final.json")
    assert len(final) == cfg.world.n_val * cfg.rollout.val_samples  # every answer, not a sample of them
    assert sum(r["passed"] for r in final) / len(final) == pytest.approx(val[1].value)


def test_interrupted_run_ends_failed_with_reason(tiny_overrides, tmp_path):
    """Ctrl-C in the middle of `opsd train`: the run ends FAILED, its metrics kept."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "opsd_platform.cli", "train", *tiny_overrides, "trainer.max_steps=100000",
           "trainer.validate=false", "trainer.checkpoint_every=1"]  # metrics reach MLflow with checkpoints
    # A shell runs background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN: give
    # the child the default disposition, as a terminal would, so Ctrl-C is delivered as under a user.
    # The store exists before the child starts: a bare client polling a store that the child is
    # still creating would migrate the same fresh SQLite file at once and crash the child
    # (init_store creates it under the store's lock, as every opsd process does).
    client = tracking.init_store(uri)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        run_id = None
        while time.time() < deadline and run_id is None:
            time.sleep(1)
            try:
                runs = client.search_runs(client.get_experiment_by_name("opsd").experiment_id)
                if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                    run_id = runs[0].info.run_id
            except Exception:
                pass
        assert run_id, "training never logged a step"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:  # never leave a 100000-step training behind when the test fails
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    run = client.get_run(run_id)
    assert run.info.status == "FAILED", out[-2000:]
    assert "KeyboardInterrupt" in run.data.tags["failure_reason"]
    assert len(client.get_metric_history(run_id, "train/loss")) >= 1


def test_adam_eps_damps_the_steps_a_noise_gradient_makes(tiny_overrides):
    """Under `none` the teacher is the student, so the first gradient is float noise; Adam divides it
    by its own size and moves the parameters by ~lr anyway (the drift bench-v2's `none` control
    showed). `optim.eps` above the noise's per-parameter size damps that step."""
    cfg = tiny_overrides + ["trainer.max_steps=1", "context=none", "optim.lr=1e-3", "optim.weight_decay=0",
                            "trainer.validate=false", "teacher.kind=fixed"]
    moved = {}
    for eps in (1e-8, 1e-2):
        before = {}
        module = fit(train_config(cfg + [f"optim.eps={eps}"]),
                     prepare=lambda m: before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}))
        assert module.optimizers().optimizer.defaults["eps"] == eps
        assert module.history[0]["train/grad_norm"] < 1e-3  # noise, not signal
        moved[eps] = max((p.detach() - before[k]).abs().max().item() for k, p in module.policy.named_parameters())
    assert moved[1e-8] > 1e-4  # ~lr: a full step on noise
    assert moved[1e-2] < moved[1e-8] / 10
