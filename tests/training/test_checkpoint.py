"""Crash-safe training: checkpoints on disk, and a real `opsd train` killed with SIGKILL and resumed."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from opsd_platform.config.compose import train_config
from opsd_platform.errors import CheckpointError
from opsd_platform.runs.train import train
from opsd_platform.training import checkpoint
from tests.helpers import FailBeforeStep

# ----------------------------------------------------------------------------- pure helpers


def _save(run_dir: Path, step: int, value: float = 1.0):
    return checkpoint.save(run_dir, step, {"w": torch.full((3,), value)}, {"run_id": run_dir.name})


def test_save_is_complete_or_absent_and_prune_keeps_the_newest(tmp_path):
    run_dir = tmp_path / "run1"
    for step in (2, 4, 6):
        _save(run_dir, step, float(step))
    # a writer killed half-way leaves only a hidden temporary dir: never listed, removed by prune
    partial = run_dir / ".step-000008.tmp-999999999"
    partial.mkdir()
    (partial / checkpoint.STATE_FILE).write_bytes(b"truncated")
    assert [c.step for c in checkpoint.list_checkpoints(run_dir)] == [2, 4, 6]
    assert checkpoint.resolve("run1", tmp_path).step == 6
    removed = checkpoint.prune(run_dir, keep=2)
    assert [p.name for p in removed] == ["step-000002"]
    assert not partial.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["step-000004", "step-000006"]
    # saving a step again replaces it whole
    _save(run_dir, 6, 60.0)
    ckpt = checkpoint.resolve(str(run_dir / "step-000006"), tmp_path)
    assert torch.equal(ckpt.state()["w"], torch.full((3,), 60.0)) and ckpt.run_id == "run1"


def test_resolve_names_what_is_missing_and_lists_what_exists(tmp_path):
    _save(tmp_path / "abc", 4)
    with pytest.raises(CheckpointError, match=r"run nope has no checkpoint .*abc \(steps 4\)"):
        checkpoint.resolve("nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no checkpoint"):
        checkpoint.resolve(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(CheckpointError, match=r"no such file"):
        checkpoint.resolve(str(tmp_path / "missing" / "step-000004"), tmp_path)
    with pytest.raises(CheckpointError, match=r"no run has a checkpoint"):
        checkpoint.resolve("abc", tmp_path / "elsewhere")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    ckpt = checkpoint.save(tmp_path / "r", 1, {"rng": state}, {"run_id": "r"})
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(ckpt.state()["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# ----------------------------------------------------------------------------- resume errors


@pytest.mark.parametrize("every, max_steps, expected",
                         [(2, 4, True), (3, 4, True), (4, 4, False), (10, 3, False), (0, 4, False)])
def test_a_run_no_longer_than_the_checkpoint_interval_writes_none(every, max_steps, expected):
    """Its only checkpoint would cover its end: ~2 GB written and deleted again for nothing."""
    cfg = train_config([f"trainer.checkpoint_every={every}", f"trainer.max_steps={max_steps}"])
    assert cfg.trainer.checkpointing is expected


def test_a_failed_lora_run_resumes_in_process_without_duplicate_steps(tiny_overrides, tmp_path):
    """An exception after step 3 (newest checkpoint: step 2) ends the run FAILED with steps 1..3
    logged; the resume re-runs step 3 without logging it again and ends with the adapter, EMA
    teacher and optimizer of an uninterrupted run; a finished run cannot be resumed."""
    base = tiny_overrides + ["trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.validate=false",
                             "model.lora.enabled=true", "model.lora.r=4", "optim.lr=1e-2", "context=reference"]
    reference = train(train_config(base + [f"tracking.uri=sqlite:///{tmp_path}/reference.db"]))
    with pytest.raises(Exception, match="injected failure"):
        train(train_config(base), gate=FailBeforeStep(4))
    (run_dir,) = (tmp_path / "checkpoints").iterdir()
    run_id = run_dir.name
    assert [c.step for c in checkpoint.list_checkpoints(run_dir)] == [2]
    saved = checkpoint.list_checkpoints(run_dir)[0].state()
    assert saved["policy"] and all("lora_" in k for k in saved["policy"])  # the adapter only
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "FAILED"
    assert _steps(client, run_id, "train/loss") == [1, 2, 3]  # flushed on failure

    with pytest.raises(CheckpointError, match=r"optim.lr \(checkpoint 0.01, now 0.001\)"):
        train(train_config(base + [f"resume={run_id}", "optim.lr=1e-3"]))
    result = train(train_config(base + [f"resume={run_dir}"]))  # a run's checkpoint dir works too
    assert result.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert _steps(client, run_id, "train/loss") == [1, 2, 3, 4]
    assert not run_dir.exists()  # a finished run's checkpoints are removed
    ref_tags = MlflowClient(tracking_uri=reference.tracking_uri).get_run(reference.run_id).data.tags
    for part in ("policy", "teacher", "optimizer"):
        assert run.data.tags[f"opsd.{part}_sha256"] == ref_tags[f"opsd.{part}_sha256"], part
    with pytest.raises(CheckpointError, match=rf"run {run_id} is FINISHED"):
        train(train_config(base + [f"resume={run_id}"]))


def test_resume_relogs_what_a_kill_mid_flush_left_out(tmp_path):
    """A SIGKILL while a checkpoint's metrics are being sent (step by step) leaves a prefix of them
    in the store; the resume logs the rest from the checkpoint's held-back metrics, each step once."""
    from opsd_platform.training.resume import relog_missing

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("opsd")).info.run_id
    for step in (1, 2, 3):  # checkpoint 2's steps, and step 3 of checkpoint 4's before the kill
        client.log_metric(run_id, "train/loss", 1.0 / step, step=step)
        client.log_metric(run_id, "rollout/reward_mean", 0.1 * step, step=step)
    pending = [{"step": s, "train/loss": 1.0 / s, "rollout/reward_mean": 0.1 * s} for s in (3, 4)]
    assert relog_missing(client.tracking_uri, run_id, pending) == 4
    for key in ("train/loss", "rollout/reward_mean"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [1, 2, 3, 4], key


def test_resume_without_a_checkpoint_exits_2_naming_it(tiny_overrides):
    proc = subprocess.run([sys.executable, "-m", "opsd_platform.cli", "train", *tiny_overrides, "resume=0123abcd"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "resume=0123abcd: run 0123abcd has no checkpoint" in proc.stderr


# ----------------------------------------------------------------------------- SIGKILL and resume


def _opsd_train(overrides, **kw):
    return subprocess.Popen([sys.executable, "-m", "opsd_platform.cli", "train", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow  # three `opsd train` processes: ~45 s of CPU on 2 cores
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tiny_overrides, tmp_path):
    """SIGKILL after the step-4 (or later) checkpoint, resume with `resume=<run id>`: the same MLflow
    run finishes with each of steps 1..8 logged exactly once, and the final weights, teacher and
    optimizer are bitwise those of an uninterrupted run with the same seed (CPU, one thread)."""
    common = [o for o in tiny_overrides if not o.startswith("tracking.uri=")] + [
        "trainer.max_steps=8", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=8",
        "trainer.num_threads=1", "seed=3", "context=reference"]
    store, ref_store = tmp_path / "killed", tmp_path / "reference"
    uri, ref_uri = f"sqlite:///{store}/mlflow.db", f"sqlite:///{ref_store}/mlflow.db"
    killed = _opsd_train(common + [f"tracking.uri={uri}"])
    reference = _opsd_train(common + [f"tracking.uri={ref_uri}"])  # runs alongside, uninterrupted

    root = store / "checkpoints"
    deadline = time.time() + 240
    newest = None
    while time.time() < deadline and killed.poll() is None:
        found = [c for d in (root.iterdir() if root.is_dir() else []) for c in checkpoint.list_checkpoints(d)]
        if found and max(c.step for c in found) >= 4:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, f"not killed mid-run: {killed.stdout.read()[-3000:]}"
    (run_dir,) = root.iterdir()
    run_id = run_dir.name
    newest = checkpoint.list_checkpoints(run_dir)[-1].step
    assert 4 <= newest < 8, f"killed too late to test a resume (newest checkpoint {newest})"
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could close it
    logged = _steps(client, run_id, "train/loss")
    # metrics reach the store only with the checkpoint that covers them, one step's batch at a
    # time: the kill may fall before, during or after sending checkpoint k's steps, so the store
    # holds steps 1..m for some m from the previous checkpoint's step to k (the resume re-logs the
    # rest from the checkpoint's held-back metrics, asserted below)
    assert logged in [list(range(1, m + 1)) for m in range(newest - 2, newest + 1)], (logged, newest)

    resumed = _opsd_train(common + [f"tracking.uri={uri}", f"resume={run_id}"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming run {run_id}" in out
    out_ref, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out_ref[-3000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert run.data.tags["opsd.resumes"] == "1"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same run, not a new one
    for key in ("train/loss", "rollout/reward_mean", "time/step_s"):
        assert _steps(client, run_id, key) == list(range(1, 9)), key
    val = sorted(client.get_metric_history(run_id, "val/pass_rate"), key=lambda m: m.step)
    assert [m.step for m in val] == [0, 8]  # no second initial validation
    assert run.data.metrics["improvement"] == pytest.approx(val[1].value - val[0].value)

    ref_client = MlflowClient(tracking_uri=ref_uri)
    (ref_run,) = ref_client.search_runs([ref_client.get_experiment_by_name("opsd").experiment_id])
    ref_id = ref_run.info.run_id
    for key in ("train/loss", "val/pass_rate", "improvement", "rollout/tokens_total"):
        ours = [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        theirs = [m.value for m in sorted(ref_client.get_metric_history(ref_id, key), key=lambda m: m.step)]
        assert ours == theirs, key
    # bitwise the same final weights, EMA teacher and AdamW state (sha256 of every tensor's bytes)
    for part in ("policy", "teacher", "optimizer"):
        tag = f"opsd.{part}_sha256"
        assert run.data.tags[tag] == ref_run.data.tags[tag], part
    assert not run_dir.exists()  # finished: its checkpoints are removed
