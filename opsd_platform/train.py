"""``train(cfg)`` and ``run_gap(cfg)``: one OPSD training run / one gap measurement, each one
MLflow run from start to finish.

Order of a training: seed -> world -> model -> MLflow run (tags, params, config snapshot) ->
initial gap (when ``gap.enabled``) -> Lightning fit (validation before and after, see module.py)
-> summary. Any failure or interruption (an exception, Ctrl-C, SIGTERM) ends the run FAILED with
the reason in the ``failure_reason`` tag; metrics already logged stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import lightning as L
import yaml
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import TrainConfig, config_hash, flatten
from opsd_platform.gap import GapResult, measure_gap
from opsd_platform.models import load_policy
from opsd_platform.module import OPSDModule
from opsd_platform.rollout import HFGenerateEngine
from opsd_platform.worlds import make_world

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: it is not reachable here
log = logging.getLogger(__name__)
# Lightning sets its loggers to INFO on import ("GPU available: False", tips): keep warnings only.
for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class RunInterrupted(RuntimeError):
    """Raised inside a run when the process receives SIGTERM, or when Lightning stops early."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    initial_pass_rate: float | None
    final_pass_rate: float | None
    improvement: float | None
    gap: GapResult | None
    steps: int
    seconds: float
    seconds_per_step: float
    peak_rss_mb: float
    skipped_nonfinite: int


class _FailureRecorder(L.Callback):
    """Remembers the exception Lightning saw (it turns Ctrl-C into SystemExit(1))."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.reason = f"{type(exception).__name__}: {exception}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_tags(cfg: TrainConfig, kind: str) -> dict[str, str]:
    return {
        "config": f"{cfg.model.family}/{cfg.world.name}/{cfg.context}",
        "config_hash": config_hash(cfg),
        "kind": kind,
        "world": cfg.world.name,
        "context": cfg.context,
        "model": cfg.model.name,
        "model_family": cfg.model.family,
        "seed": str(cfg.seed),
    }


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception so the run is closed FAILED instead of vanishing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _mlflow_run(cfg: TrainConfig, kind: str, parent_run_id: str | None, extra_tags: dict[str, str] | None):
    """Open a run with tags, params and the config snapshot, closed by `tracking.closing_run`.

    Yields ``(run_id, reasons)`` (see `closing_run` for ``reasons``)."""
    uri = cfg.tracking.resolved_uri()
    tags = {**run_tags(cfg, kind), **(extra_tags or {})}
    # Our own readable default name: MLflow's random names repeat across runs here, because
    # seeding Python's `random` (seed_everything) also seeds MLflow's name generator.
    name = cfg.tracking.run_name or f"{kind}-{cfg.context}-{cfg.world.name}-s{cfg.seed}-{time.strftime('%m%d-%H%M%S')}"
    run_id = tracking.start_run(uri, cfg.tracking.experiment, name, tags, parent_run_id)
    client = MlflowClient(tracking_uri=uri)
    with tracking.closing_run(uri, run_id) as reasons, _sigterm_raises():
        tracking.log_params(uri, run_id, flatten(cfg.to_dict()))
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "config.yaml"
            snapshot.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            client.log_artifact(run_id, str(snapshot))
        yield run_id, reasons


def _setup(cfg: TrainConfig):
    if cfg.trainer.num_threads:
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    world = make_world(cfg.world, seed=cfg.seed)
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
    return world, model, tokenizer


def measure_initial_gap(cfg: TrainConfig, engine, world) -> GapResult:
    """The gap of `cfg` with the model behind `engine`, as configured in `cfg.gap`."""
    g, r = cfg.gap, cfg.rollout
    problems = world.problems(g.split)[: g.n_problems]
    return measure_gap(
        engine, world, problems, cfg.context,
        n=g.samples or r.samples_per_prompt, max_new_tokens=r.max_new_tokens,
        temperature=r.temperature, top_p=r.top_p, n_boot=g.bootstrap, level=g.level, seed=cfg.seed,
    )


def estimated_training_tokens(cfg: TrainConfig, mean_response_tokens: float) -> float:
    """Rollout tokens a full training of `cfg` generates (steps + two validations)."""
    r = cfg.rollout
    per_step = r.prompts_per_step * r.samples_per_prompt
    validation = 2 * cfg.world.n_val * r.val_samples if cfg.trainer.validate else 0
    return (cfg.trainer.max_steps * per_step + validation) * mean_response_tokens


def gap_token_ratio(cfg: TrainConfig, gap: GapResult) -> float:
    """The gap's generated tokens over those of a full training of `cfg` (rollouts only: training
    also runs two forwards and a backward per token, so its true share of compute is smaller)."""
    mean_len = gap.tokens_generated / (2 * gap.n_problems * gap.samples_per_problem)
    return gap.tokens_generated / estimated_training_tokens(cfg, mean_len)


def _log_gap(client: MlflowClient, run_id: str, cfg: TrainConfig, gap: GapResult) -> None:
    metrics = {**gap.metrics(), "gap/cost_tokens_ratio_est": gap_token_ratio(cfg, gap)}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=0)
    client.log_dict(run_id, gap.to_dict(), "gap.json")


def run_gap(cfg: TrainConfig, parent_run_id: str | None = None) -> tuple[str, GapResult]:
    """`opsd gap`: measure one configuration's initial gap as its own MLflow run (kind=gap)."""
    world, model, tokenizer = _setup(cfg)
    engine = HFGenerateEngine(model, tokenizer, cfg.rollout.batch_size)
    with _mlflow_run(cfg, "gap", parent_run_id, None) as (run_id, _):
        gap = measure_initial_gap(cfg, engine, world)
        _log_gap(MlflowClient(tracking_uri=cfg.tracking.resolved_uri()), run_id, cfg, gap)
    return run_id, gap


def train(cfg: TrainConfig, parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> TrainResult:
    """Run one OPSD training; returns its summary. Raises on failure (after marking the run)."""
    world, model, tokenizer = _setup(cfg)
    uri = cfg.tracking.resolved_uri()
    started = time.perf_counter()
    recorder = _FailureRecorder()
    gap = None
    with _mlflow_run(cfg, "train", parent_run_id, extra_tags) as (run_id, reasons):
        module = OPSDModule(cfg, model, tokenizer, world)
        if cfg.gap.enabled:
            gap = measure_initial_gap(cfg, module.engine, world)
            _log_gap(MlflowClient(tracking_uri=uri), run_id, cfg, gap)
        logger = MLFlowLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri, run_id=run_id)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=logger,
            callbacks=[recorder],
            enable_checkpointing=False,
            enable_progress_bar=cfg.trainer.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        try:
            trainer.fit(module)
        finally:
            if recorder.reason:
                reasons.append(recorder.reason)
        if trainer.state.status.value != "finished":
            raise RunInterrupted(recorder.reason or f"training ended with status {trainer.state.status.value}")
        seconds = time.perf_counter() - started
        summary = {"sys/peak_rss_mb": peak_rss_mb(), "sys/seconds": seconds}
        if gap is not None:
            summary["gap/cost_seconds_ratio"] = gap.seconds / max(seconds - gap.seconds, 1e-9)
        logger.log_metrics(summary, step=cfg.trainer.max_steps)

    init, final = module.initial_val, module.final_val
    steps = cfg.trainer.max_steps
    return TrainResult(
        run_id=run_id,
        experiment_id=logger.experiment_id,
        tracking_uri=uri,
        initial_pass_rate=init.pass_rate if init else None,
        final_pass_rate=final.pass_rate if final else None,
        improvement=(final.pass_rate - init.pass_rate) if init and final else None,
        gap=gap,
        steps=steps,
        seconds=seconds,
        seconds_per_step=sum(h.get("time/step_s", 0.0) for h in module.history) / steps,
        peak_rss_mb=peak_rss_mb(),
        skipped_nonfinite=module.skipped_nonfinite,
    )
