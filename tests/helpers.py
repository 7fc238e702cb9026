"""What tests in several folders share: where things are, the tiny model's fast overrides, a real
MLflow store holding law points (and the law fitted on them), a tiny model with a perturbed copy,
one in-process Lightning fit, and a local server on a free port. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning as L

from opsd_platform.runs.gate import Gate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data"  # fixtures read by tests in several folders (provenance beside each)

# A search on the tiny model in seconds: two steps a trial, a few problems, a short bootstrap.
FAST = ["model=tiny", "trainer.max_steps=2", "rollout.max_new_tokens=8", "world.n_val=4", "rollout.val_samples=1",
        "rollout.prompts_per_step=2", "gap.n_problems=4", "gap.bootstrap=200", "optim.lr=1e-2"]

# improvement = -0.5 + 1.5 * gap, with seed noise: a law that predicts a loss near gap 0
LAW_POINTS = [(c, s, g + 0.01 * s, -0.5 + 1.5 * g + (0.03 if s else -0.03) + 0.02 * i)
              for i, (c, g) in enumerate({"none": 0.0, "static": 0.1, "feedback": 0.2, "peer_solution": 0.3,
                                          "reference": 0.5}.items()) for s in (0, 1)]


# ------------------------------------------------------------------------------ MLflow stores


def log_points(uri, points, experiment="opsd", calibration="synthetic", family="synthetic"):
    """Write law points into a real store as finished training runs (what calibrate leaves behind).

    Tiny random models give near-zero pass rates, so their gaps are often all equal (tested
    in tests/law/test_calibrate.py); known synthetic points exercise the fit -> register -> load path exactly."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    for context, seed, gap, improvement in points:
        run = client.create_run(exp.experiment_id, tags={
            "kind": "train", "context": context, "world": "arithmetic", "model_family": family,
            "model": family, "seed": str(seed), "config_hash": "h", "calibrate.name": calibration})
        client.log_metric(run.info.run_id, "gap/value", gap)
        client.log_metric(run.info.run_id, "improvement", improvement)
        client.set_terminated(run.info.run_id, "FINISHED")


def store_with_law(folder: Path, points):
    """A SQLite store in `folder` holding `points`, with the law fitted on them registered as
    opsd-gap-law (its files under folder/law): (the tracking URI, the fit-law report)."""
    from opsd_platform.law.pipeline import fit_and_register
    from opsd_platform.law.settings import FitLawConfig

    uri = f"sqlite:///{folder}/mlflow.db"
    log_points(uri, points)
    return uri, fit_and_register(uri, FitLawConfig(out_dir=str(folder / "law")))


def runs_logged(db: Path) -> int:
    """Runs in the SQLite store `db` (0 when there is no store)."""
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]


@contextlib.contextmanager
def fluent_tracking(uri: str):
    """MLflow's fluent API pointed at `uri` (a models:/ URI is read through its registry), and the
    environment's MLFLOW_TRACKING_URI as it was afterwards."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


# ------------------------------------------------------------------------------ the tiny model


def tiny_fp64_with_perturbed_copy():
    """The tiny model in fp64 (init_std 0.2, seed 0), its tokenizer, and an eval copy of it with
    every weight moved by 0.05 N(0, 1): a student and a teacher that differ everywhere."""
    import torch

    from opsd_platform.config import ModelConfig, TinyModelConfig
    from opsd_platform.models import load_policy

    torch.manual_seed(0)
    policy, tok = load_policy(ModelConfig(source="tiny", tiny=TinyModelConfig(init_std=0.2)), seed=0)
    policy = policy.double()
    other = copy.deepcopy(policy).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, other, tok


def fit_in_process(cfg, world=None, prepare=None):
    """One Lightning fit of `cfg` in this process on `world` (default: the config's), without
    logger or checkpoints; `prepare(module)` runs before it. Returns the OPSDModule."""
    from opsd_platform.models import load_policy
    from opsd_platform.training.module import OPSDModule
    from opsd_platform.worlds import make_world

    L.seed_everything(cfg.seed, verbose=False)
    model, tok = load_policy(cfg.model, seed=cfg.seed)
    module = OPSDModule(cfg, model, tok, world if world is not None else make_world(cfg.world, seed=cfg.seed))
    if prepare:
        prepare(module)
    L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module)
    return module


class FailBeforeStep(Gate):
    """A trial gate that fails the run once step - 1 has ended (and been checkpointed): a run that
    fails part way, to resume."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int, row: dict) -> None:
        if step + 1 == self.step:
            raise RuntimeError(f"injected failure before step {self.step}")


# ------------------------------------------------------------------------------ local servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], port: int, timeout: float = 120, **popen):
    """Start `command` (a UI server on `port`) in its own process group, wait for /health, yield
    the base URL; stop the whole group afterwards."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, f"{' '.join(command)} did not answer /health in {timeout:.0f} s"
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def opsd_ui(uri: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "opsd_platform.cli", "ui", f"tracking.uri={uri}", f"port={port}", *extra]
