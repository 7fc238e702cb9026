"""``train(cfg)`` and ``run_gap(cfg)``: one OPSD training run / one gap measurement, each one
MLflow run from start to finish.

Order of a training: seed -> world -> model -> MLflow run (tags, params, config snapshot) ->
initial gap (when ``gap.enabled``) -> Lightning fit (validation before and after, see module.py)
-> summary. Any failure or interruption (an exception, Ctrl-C, SIGTERM) ends the run FAILED with
the reason in the ``failure_reason`` tag; metrics already logged stay.

Crash safety: every ``trainer.checkpoint_every`` steps (and at the last; none for a run no longer
than that) a checkpoint is written to ``<checkpoint root>/<run id>/step-NNNNNN`` (checkpoint.py),
and only then are the metrics of the steps it covers sent to MLflow (resume.py explains why).
``resume=<run id or path>`` reopens the same MLflow run (RUNNING again, ``failure_reason``
removed), restores the checkpoint and goes on from the next step without a second initial
validation or gap. A FINISHED run cannot be resumed; a RUNNING one only when the process that ran
it is gone (SIGKILL leaves runs RUNNING). A run that finishes removes its checkpoints (a full
model's is weights + EMA teacher + AdamW moments, ~2 GB for the default model) and keeps sha256
digests of its final policy, teacher and optimizer state as the tags
``opsd.{policy,teacher,optimizer}_sha256``.

Several processes (``trainer.devices`` > 1, ``trainer.strategy=ddp``): Lightning starts the other
ranks by running the same command again; they find the run id in ``OPSD_DDP_RUN_ID`` and neither
open nor log to an MLflow run: rank 0 owns it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import lightning as L
import yaml
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import ConfigError, TrainConfig, config_hash, flatten
from opsd_platform.errors import RunInterrupted, StopTraining
from opsd_platform.gap.measure import GapResult
from opsd_platform.models import load_policy
from opsd_platform.process import quiet_libraries
from opsd_platform.runs.gate import TrialGate
from opsd_platform.training.checkpoint import Checkpoint
from opsd_platform.training.module import OPSDModule
from opsd_platform.training.resume import (
    DDP_RUN_ENV,
    PROCESS_TAG,
    Checkpointer,
    check_same_config,
    checkpoint_root,
    die_with_rank0,
    interrupted_runs,
    is_ddp_worker,
    named_interrupts,
    relog_missing,
    reopen_run,
    resolve_resume,
    restore_module,
)
from opsd_platform.training.rollout import engine_for
from opsd_platform.worlds import make_world

log = logging.getLogger(__name__)


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
    tokens_generated: int = 0  # gap + rollout + validation response tokens
    stopped: str | None = None  # why a StopTraining ended it early (no improvement then)


class _FailureRecorder(L.Callback):
    """Remembers the exception Lightning saw (it turns Ctrl-C into SystemExit(1))."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.reason = f"{type(exception).__name__}: {exception}"


class GateCallback(L.Callback):
    """The gate's two decision points inside Lightning's fit (given a gate, train adds it)."""

    def __init__(self, gate: TrialGate, run_id: str) -> None:
        self.gate, self.run_id = gate, run_id

    def on_train_start(self, trainer, pl_module) -> None:
        self.gate.on_train_start(self.run_id)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = pl_module.history[-1] if pl_module.history else {}
        if "step" in row:
            self.gate.on_step(int(row["step"]), row)


def headline(init, final, gap: GapResult | None, stopped: str | None) -> str:
    """The run's description, the first thing its MLflow page shows (above some twenty metric
    charts): the result, the gap it started from, why it stopped early."""
    lines = []
    if init is not None and final is not None:
        lines.append(f"**improvement {final.pass_rate - init.pass_rate:+.3f}** "
                     f"(validation pass rate {init.pass_rate:.3f} -> {final.pass_rate:.3f})")
    if gap is not None:
        lines.append(f"gap {gap.gap:+.3f} [{gap.gap_ci[0]:+.3f}, {gap.gap_ci[1]:+.3f}] at step 0 (context {gap.context})")
    if stopped:
        lines.append(f"stopped early: {stopped}")
    return "  \n".join(lines) or "no validation (trainer.validate=false)"


def headline_tags(init, final, gap: GapResult | None) -> dict[str, str]:
    """The headline numbers as tags (`result.*`), so the runs table can show them as columns and a
    run's overview lists them beside its description. The metrics of the same names stay: export,
    the law and the search read those."""
    tags = {}
    if init is not None and final is not None:
        tags.update({"result.improvement": f"{final.pass_rate - init.pass_rate:+.4f}",
                     "result.val_initial": f"{init.pass_rate:.4f}", "result.val_final": f"{final.pass_rate:.4f}"})
    if gap is not None:
        tags["result.gap"] = f"{gap.gap:+.4f}"
    return tags


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_tags(cfg: TrainConfig, kind: str) -> dict[str, str]:
    label = cfg.context if cfg.algorithm == "opsd" else cfg.algorithm  # GRPO reads no context
    return {
        "config": f"{cfg.model.family}/{cfg.world.name}/{label}",
        "config_hash": config_hash(cfg),
        "kind": kind,
        "algorithm": cfg.algorithm,
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
    label = cfg.context if cfg.algorithm == "opsd" else cfg.algorithm
    name = cfg.tracking.run_name or f"{kind}-{label}-{cfg.world.name}-s{cfg.seed}-{time.strftime('%m%d-%H%M%S')}"
    run_id = tracking.start_run(uri, cfg.tracking.experiment, name, tags, parent_run_id)
    client = MlflowClient(tracking_uri=uri)
    with tracking.closing_run(uri, run_id) as reasons, _sigterm_raises():
        tracking.log_params(uri, run_id, flatten(cfg.to_dict()))
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "config.yaml"
            snapshot.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            client.log_artifact(run_id, str(snapshot))
        yield run_id, reasons


def check_accelerator(cfg: TrainConfig) -> None:
    """Refuse an accelerator this machine lacks before any run opens (Lightning would fail after)."""
    import torch

    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu: no CUDA GPU is visible to this process; use "
                          "trainer.accelerator=cpu (or auto: a GPU when there is one)")


def setup_run(cfg: TrainConfig):
    """(world, model, tokenizer) of `cfg`, after seeding and setting the thread count: the start of
    every run, and of `opsd compare-grpo`'s shared engine."""
    quiet_libraries()  # again, now that Lightning is loaded: its log level (process.py)
    check_accelerator(cfg)
    if cfg.trainer.num_threads:
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    world = make_world(cfg.world, seed=cfg.seed)
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
    return world, model, tokenizer


def measurement_store(cfg: TrainConfig):
    """Where reusable measurements live (measurements.py), or None with ``trainer.reuse_measurements=false``."""
    from opsd_platform.gap.measurements import MeasurementStore

    return MeasurementStore.for_config(cfg) if cfg.trainer.reuse_measurements else None


def measure_initial_gap(cfg: TrainConfig, engine, world, gate: TrialGate | None = None) -> GapResult:
    """The gap of `cfg` with the model behind `engine`, as configured in `cfg.gap` (each side
    reused from an earlier measurement with the same key when ``trainer.reuse_measurements``);
    with ``gap.sequential``, under the stopping rule `gate` gives now (measurements.gap)."""
    from opsd_platform.gap import measurements

    batch_size = getattr(engine, "batch_size", None)  # the HF engine's rows per call; vLLM schedules its own
    if batch_size is not None:
        engine.batch_size = cfg.gap.batch_size
    try:
        rule = gate.sequential_rule(cfg) if gate is not None and cfg.gap.sequential else None
        return measurements.gap(cfg, engine, world, measurement_store(cfg), rule)
    finally:
        if batch_size is not None:
            engine.batch_size = batch_size


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
    from mlflow.entities import Metric

    metrics = {**gap.metrics(), "gap/cost_tokens_ratio_est": gap_token_ratio(cfg, gap)}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
    client.log_dict(run_id, gap.to_dict(), "gap.json")


def run_gap(cfg: TrainConfig, parent_run_id: str | None = None) -> tuple[str, GapResult]:
    """`opsd gap`: measure one configuration's initial gap as its own MLflow run (kind=gap)."""
    world, model, tokenizer = setup_run(cfg)
    engine = engine_for(cfg, model, tokenizer)
    with _mlflow_run(cfg, "gap", parent_run_id, None) as (run_id, _):
        gap = measure_initial_gap(cfg, engine, world)
        _log_gap(MlflowClient(tracking_uri=cfg.tracking.resolved_uri()), run_id, cfg, gap)
    return run_id, gap


@contextlib.contextmanager
def _training_run(cfg: TrainConfig, parent_run_id, extra_tags, ckpt: Checkpoint | None):
    """The MLflow run this process trains: a new one, a resumed one, or (a DDP rank > 0) rank 0's.
    Yields ``(run_id, reasons)`` like `_mlflow_run`."""
    if is_ddp_worker():
        yield os.environ[DDP_RUN_ENV], []
        return
    uri = cfg.tracking.resolved_uri()
    if ckpt is None:
        with _mlflow_run(cfg, "train", parent_run_id, extra_tags) as (run_id, reasons):
            MlflowClient(tracking_uri=uri).set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{os.getpid()}")
            yield run_id, reasons
        return
    run_id = reopen_run(uri, ckpt, cfg.resume)
    with tracking.closing_run(uri, run_id) as reasons, _sigterm_raises():
        MlflowClient(tracking_uri=uri).set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{os.getpid()}")
        yield run_id, reasons


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def train(
    cfg: TrainConfig,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    *,
    gate: TrialGate | None = None,
) -> TrainResult:
    """Run one OPSD training; returns its summary. Raises on failure (after marking the run).

    gate: a search's trial gate (gate.py), called at each decision point: the sequential gap's
    stopping rule, the gap measured and logged (before the initial validation: a trial the law
    prunes pays for the gap only), the start of training, each step. It may raise `StopTraining`
    to end the run early on purpose. Without a search, no gate.

    With ``cfg.resume`` set, continues that run from its newest checkpoint (module docstring)."""
    ckpt = resolve_resume(cfg) if cfg.resume else None
    if ckpt is not None:  # before loading anything: a wrong config fails in a second
        check_same_config(cfg, ckpt.meta()["config"], ckpt)
    worker = is_ddp_worker()
    if worker:
        die_with_rank0()
    elif ckpt is None:
        for run_id, step in interrupted_runs(cfg):
            log.warning("an interrupted run of this configuration exists: run %s, checkpoint at step %d of %d; this "
                        "starts a new run from step 0 (to continue that one instead, add resume=%s)",
                        run_id, step, cfg.trainer.max_steps, run_id)
    world, model, tokenizer = setup_run(cfg)
    uri = cfg.tracking.resolved_uri()
    started = time.perf_counter()
    recorder = _FailureRecorder()
    gap = None
    stopped: str | None = None
    opened: list[str] = []
    with named_interrupts(cfg, recorder, opened), _training_run(cfg, parent_run_id, extra_tags, ckpt) as (run_id, reasons):
        opened.append(run_id)
        module = OPSDModule(cfg, model, tokenizer, world)
        resume_ranks = None
        if ckpt is not None:
            meta, state = ckpt.meta(), ckpt.state()
            restore_module(module, state, meta)
            resume_ranks = state["ranks"]
            if not worker:
                module.skip_logging_through = relog_missing(uri, run_id, meta["pending_metrics"])
            log.warning("resuming run %s from %s (step %d of %d)", run_id, ckpt.path, ckpt.step, cfg.trainer.max_steps)
        if cfg.gap.enabled and ckpt is None and not worker:
            gap = measure_initial_gap(cfg, module.engine, world, gate)
            _log_gap(MlflowClient(tracking_uri=uri), run_id, cfg, gap)
        logger = False if worker else MLFlowLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri, run_id=run_id)
        checkpointer = None
        if cfg.trainer.checkpointing:
            checkpointer = Checkpointer(cfg, checkpoint_root(cfg) / run_id, run_id, resume_ranks)
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
            use_distributed_sampler=False,  # each rank's problems come from module.train_dataloader
            max_epochs=1,
            logger=logger,
            callbacks=[recorder, *([checkpointer] if checkpointer else []),
                       *([GateCallback(gate, run_id)] if gate is not None else [])],
            enable_checkpointing=False,
            enable_progress_bar=cfg.trainer.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        try:
            if gate is not None and gap is not None:  # the law decides first: a pruned trial pays no validation
                gate.on_gap(run_id, gap)
            if cfg.trainer.validate and ckpt is None and not worker:  # before fit: it may be reused
                from opsd_platform.gap.measurements import initial_validation

                module.set_initial_validation(initial_validation(cfg, module.validate_policy, measurement_store(cfg)))
            with _env(DDP_RUN_ENV, run_id if cfg.trainer.devices > 1 and not worker else None):
                trainer.fit(module)
        except StopTraining as stop:
            stopped = str(stop) or "stopped early"
            MlflowClient(tracking_uri=uri).set_tag(run_id, "stopped", stopped[:5000])
        finally:
            module.flush_metrics()  # what the newest checkpoint does not cover (see module.py)
            if recorder.reason and stopped is None:
                reasons.append(recorder.reason)
        if stopped is None and trainer.state.status.value != "finished":
            raise RunInterrupted(recorder.reason or f"training ended with status {trainer.state.status.value}")
        seconds = time.perf_counter() - started
        summary = {"sys/peak_rss_mb": peak_rss_mb(), "sys/seconds": seconds}
        if gap is not None:
            summary["gap/cost_seconds_ratio"] = gap.seconds / max(seconds - gap.seconds, 1e-9)
        if not worker:
            logger.log_metrics(summary, step=cfg.trainer.max_steps)
            client = MlflowClient(tracking_uri=uri)
            if stopped is None:
                for name, digest in module.digests().items():
                    client.set_tag(run_id, f"opsd.{name}_sha256", digest)
            if module.rank_report is not None:
                client.log_dict(run_id, module.rank_report, "ddp_ranks.json")
            client.set_tag(run_id, "mlflow.note.content", headline(module.initial_val, module.final_val, gap, stopped))
            for key, value in headline_tags(module.initial_val, module.final_val, gap).items():
                client.set_tag(run_id, key, value)
    if not worker:  # FINISHED now: nothing left to resume
        shutil.rmtree(checkpoint_root(cfg) / run_id, ignore_errors=True)

    init, final = module.initial_val, module.final_val
    steps = sum("train/loss" in h for h in module.history)
    tokens = module.tokens_generated + sum(e.tokens for e in (init, final) if e) + (gap.tokens_generated if gap else 0)
    return TrainResult(
        run_id=run_id,
        experiment_id=logger.experiment_id if logger else "",
        tracking_uri=uri,
        initial_pass_rate=init.pass_rate if init else None,
        final_pass_rate=final.pass_rate if final else None,
        improvement=(final.pass_rate - init.pass_rate) if init and final else None,
        gap=gap,
        steps=steps,
        seconds=seconds,
        seconds_per_step=sum(h.get("time/step_s", 0.0) for h in module.history) / max(steps, 1),
        peak_rss_mb=peak_rss_mb(),
        skipped_nonfinite=module.skipped_nonfinite,
        tokens_generated=tokens,
        stopped=stopped,
    )


