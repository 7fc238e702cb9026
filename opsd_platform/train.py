"""``train(cfg)``: one OPSD training run, start to finish, recorded as one MLflow run.

Order: seed -> world -> model -> MLflow run (tags, params, config snapshot) -> Lightning fit
(validation before and after, see module.py) -> summary. Any failure or interruption (an
exception, Ctrl-C, SIGTERM) ends the run FAILED with the reason in the ``failure_reason`` tag;
metrics already logged stay.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.loggers import MLFlowLogger

from opsd_platform import tracking
from opsd_platform.config import TrainConfig, flatten
from opsd_platform.models import load_policy
from opsd_platform.module import OPSDModule
from opsd_platform.worlds import make_world

log = logging.getLogger(__name__)
# Lightning sets its loggers to INFO on import ("GPU available: False", tips): keep warnings only.
for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class RunInterrupted(RuntimeError):
    """Raised inside training when the process receives SIGTERM."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    initial_pass_rate: float | None
    final_pass_rate: float | None
    improvement: float | None
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


def run_tags(cfg: TrainConfig, kind: str = "train") -> dict[str, str]:
    return {
        "kind": kind,
        "world": cfg.world.name,
        "context": cfg.context,
        "model": cfg.model.name,
        "model_family": cfg.model.family,
        "seed": str(cfg.seed),
    }


def _sigterm_to_exception():
    """Turn SIGTERM into an exception so the run is closed FAILED instead of vanishing."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise RunInterrupted(f"received signal {signal.Signals(signum).name}")

    return signal.signal(signal.SIGTERM, handler)


def train(cfg: TrainConfig, parent_run_id: str | None = None) -> TrainResult:
    """Run one OPSD training; returns its summary. Raises on failure (after marking the run)."""
    if cfg.trainer.num_threads:
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    uri = cfg.tracking.resolved_uri()
    world = make_world(cfg.world, seed=cfg.seed)
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)

    run_id = tracking.start_run(uri, cfg.tracking.experiment, cfg.tracking.run_name, run_tags(cfg), parent_run_id)
    previous_handler = _sigterm_to_exception()
    recorder = _FailureRecorder()
    started = time.perf_counter()
    try:
        tracking.log_params(uri, run_id, flatten(cfg.to_dict()))
        logger = MLFlowLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri, run_id=run_id)
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "config.yaml"
            snapshot.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            logger.experiment.log_artifact(run_id, str(snapshot))
        module = OPSDModule(cfg, model, tokenizer, world)
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
        trainer.fit(module)
        if trainer.state.status.value != "finished":
            raise RunInterrupted(recorder.reason or f"training ended with status {trainer.state.status.value}")
        seconds = time.perf_counter() - started
        summary = {"sys/peak_rss_mb": peak_rss_mb(), "sys/seconds": seconds}
        logger.log_metrics(summary, step=cfg.trainer.max_steps)
        logger.experiment.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        reason = recorder.reason or f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SystemExit) and recorder.reason is None:
            reason = f"interrupted (exit code {exc.code})"
        log.error("run %s failed: %s", run_id, reason)
        tracking.fail_run(uri, run_id, reason + "\n" + "".join(traceback.format_exception(exc))[-3000:])
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    init, final = module.initial_val, module.final_val
    steps = cfg.trainer.max_steps
    return TrainResult(
        run_id=run_id,
        experiment_id=logger.experiment_id,
        tracking_uri=uri,
        initial_pass_rate=init.pass_rate if init else None,
        final_pass_rate=final.pass_rate if final else None,
        improvement=(final.pass_rate - init.pass_rate) if init and final else None,
        steps=steps,
        seconds=seconds,
        seconds_per_step=sum(h.get("time/step_s", 0.0) for h in module.history) / steps,
        peak_rss_mb=peak_rss_mb(),
        skipped_nonfinite=module.skipped_nonfinite,
    )


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: it is not reachable here
