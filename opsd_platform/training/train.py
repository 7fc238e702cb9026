"""``train(cfg)`` and ``run_gap(cfg)``: one OPSD training run / one gap measurement, each one
MLflow run from start to finish.

Order of a training: seed -> world -> model -> MLflow run (tags, params, config snapshot) ->
initial gap (when ``gap.enabled``) -> Lightning fit (validation before and after, see module.py)
-> summary. Any failure or interruption (an exception, Ctrl-C, SIGTERM) ends the run FAILED with
the reason in the ``failure_reason`` tag; metrics already logged stay.

Crash safety: every ``trainer.checkpoint_every`` steps (and at the last; none for a run no longer
than that) a checkpoint is written to ``<checkpoint root>/<run id>/step-NNNNNN`` (checkpoint.py),
and only then are the metrics of the steps it covers sent to MLflow (module.py explains why).
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import lightning as L
import yaml
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.training import checkpoint
from opsd_platform.training.checkpoint import Checkpoint, CheckpointError
from opsd_platform.config import TrainConfig, config_hash, default_home, flatten
from opsd_platform.training.gap import GapResult, measure_gap
from opsd_platform.models import load_policy
from opsd_platform.training.module import OPSDModule
from opsd_platform.training.rollout import make_engine
from opsd_platform.worlds import make_world

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: it is not reachable here
log = logging.getLogger(__name__)
# Lightning sets its loggers to INFO on import ("GPU available: False", tips): keep warnings only.
for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class RunInterrupted(RuntimeError):
    """Raised inside a run when the process receives SIGTERM, or when Lightning stops early."""


class StopTraining(Exception):
    """Raised on purpose by an ``after_gap`` hook or a Lightning callback given to `train` (a search
    pruning the trial): training stops there, the run ends FINISHED with the reason in its
    ``stopped`` tag and without a final validation, so it has no ``improvement``."""


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


def setup_run(cfg: TrainConfig):
    """(world, model, tokenizer) of `cfg`, after seeding and setting the thread count: the start of
    every run, and of `opsd compare-grpo`'s shared engine."""
    if cfg.trainer.num_threads:
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    world = make_world(cfg.world, seed=cfg.seed)
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
    return world, model, tokenizer


def measurement_store(cfg: TrainConfig):
    """Where reusable measurements live (measurements.py), or None with ``trainer.reuse_measurements=false``."""
    from opsd_platform.training.measurements import MeasurementStore

    return MeasurementStore.for_config(cfg) if cfg.trainer.reuse_measurements else None


def measure_initial_gap(cfg: TrainConfig, engine, world, gap_gate=None) -> GapResult:
    """The gap of `cfg` with the model behind `engine`, as configured in `cfg.gap` (each side
    reused from an earlier measurement with the same key when ``trainer.reuse_measurements``);
    gap_gate: the stopping rule of ``gap.sequential`` (measurements.gap)."""
    from opsd_platform.training import measurements

    batch_size = getattr(engine, "batch_size", None)  # the HF engine's rows per call; vLLM schedules its own
    if batch_size is not None:
        engine.batch_size = cfg.gap.batch_size
    try:
        return measurements.gap(cfg, engine, world, measurement_store(cfg), gate=gap_gate)
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
    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg.rollout.batch_size, seed=cfg.seed,
                         share_prefix=cfg.trainer.share_prompt_prefix, precision=cfg.trainer.precision)
    with _mlflow_run(cfg, "gap", parent_run_id, None) as (run_id, _):
        gap = measure_initial_gap(cfg, engine, world)
        _log_gap(MlflowClient(tracking_uri=cfg.tracking.resolved_uri()), run_id, cfg, gap)
    return run_id, gap


# --------------------------------------------------------------------------- checkpoints and resume

DDP_RUN_ENV = "OPSD_DDP_RUN_ID"  # set by rank 0 for the ranks Lightning starts
PROCESS_TAG = "opsd.process"  # host:pid of the process training the run
# Settings a resume may change: they do not change what is computed.
RESUME_MAY_CHANGE = {
    "resume", "tracking.run_name", "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.checkpoint_dir", "trainer.gradient_checkpointing",
    "trainer.share_prompt_prefix", "optim.fused",
}


def checkpoint_root(cfg: TrainConfig) -> Path:
    """``trainer.checkpoint_dir``, else ``checkpoints/`` beside a local SQLite store, else
    ``$OPSD_HOME/checkpoints``."""
    if cfg.trainer.checkpoint_dir:
        return Path(cfg.trainer.checkpoint_dir).expanduser().resolve()
    db = tracking.sqlite_path(cfg.tracking.resolved_uri())
    return (db.parent if db is not None else default_home()) / "checkpoints"


def _resolve_resume(cfg: TrainConfig) -> Checkpoint:
    try:
        return checkpoint.resolve(cfg.resume, checkpoint_root(cfg))
    except CheckpointError:
        uri = cfg.tracking.resolved_uri()
        db = tracking.sqlite_path(uri)
        status = None
        if db is None or db.exists():
            with contextlib.suppress(Exception):
                status = MlflowClient(tracking_uri=uri).get_run(cfg.resume).info.status
        if status == "FINISHED":
            raise CheckpointError(f"resume={cfg.resume}: run {cfg.resume} is FINISHED (a finished run's checkpoints "
                                  "are removed); there is nothing to resume") from None
        raise


def _is_ddp_worker() -> bool:
    """A rank > 0 that Lightning started for a run rank 0 owns."""
    return bool(os.environ.get(DDP_RUN_ENV)) and os.environ.get("LOCAL_RANK", "0") != "0"


def _die_with_rank0() -> None:
    """Make this DDP rank > 0 die when rank 0 (its parent) does, even by SIGKILL, instead of
    waiting in a collective (Linux ``PR_SET_PDEATHSIG``; elsewhere gloo's broken sockets do it)."""
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # rank 0 died before the line above
        os._exit(1)


def _check_same_config(cfg: TrainConfig, saved: dict, ckpt: Checkpoint) -> None:
    now, then = flatten(cfg.to_dict()), flatten(saved)
    then.setdefault("algorithm", "opsd")  # a checkpoint from before there was a choice
    differ = [k for k in now if k in then and k not in RESUME_MAY_CHANGE and now[k] != then[k]]
    if differ:
        shown = ", ".join(f"{k} (checkpoint {then[k]!r}, now {now[k]!r})" for k in differ[:6])
        raise CheckpointError(
            f"resume={cfg.resume}: the config differs from the one {ckpt.path} was trained with: {shown}"
            f"{' ...' if len(differ) > 6 else ''}; pass the run's own overrides (its config.yaml artifact)")


def _owner_alive(tag: str | None) -> int | None:
    """The pid in a ``host:pid`` tag if that process still runs `opsd` on this host."""
    host, _, pid = (tag or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return int(pid) if b"opsd" in cmdline else None


def _reopen_run(uri: str, ckpt: Checkpoint, resume: str) -> str:
    """Make the checkpoint's MLflow run RUNNING again, after checking it may be resumed."""
    client = MlflowClient(tracking_uri=uri)
    run_id = ckpt.run_id
    try:
        run = client.get_run(run_id)
    except Exception:
        raise CheckpointError(f"resume={resume}: checkpoint {ckpt.path} belongs to MLflow run {run_id}, "
                              f"which is not in the store {uri} (pass its tracking.uri)") from None
    status = run.info.status
    if status == "FINISHED":
        raise CheckpointError(f"resume={resume}: run {run_id} is FINISHED; there is nothing to resume "
                              "(start a new run instead)")
    if status == "RUNNING" and (pid := _owner_alive(run.data.tags.get(PROCESS_TAG))):
        raise CheckpointError(f"resume={resume}: run {run_id} is still being trained by process {pid}; "
                              "stop it first")
    client.update_run(run_id, status="RUNNING")
    if tracking.FAILURE_TAG in run.data.tags:
        client.delete_tag(run_id, tracking.FAILURE_TAG)
    resumes = int(run.data.tags.get("opsd.resumes", "0")) + 1
    client.set_tag(run_id, "opsd.resumes", str(resumes))
    client.set_tag(run_id, f"opsd.resume{resumes}_from", f"{ckpt.step} (was {status})")
    return run_id


def _relog_missing(uri: str, run_id: str, pending: list[dict]) -> int:
    """Log the checkpoint's held-back metrics that the store lacks (a SIGKILL between writing the
    checkpoint and sending them); returns the last train step the store holds."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    keys = {k for entry in pending for k in entry if k != "step"} | {"train/loss"}
    have = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    now = int(time.time() * 1000)
    missing = [Metric(k, float(v), now, int(e["step"])) for e in pending for k, v in e.items()
               if k != "step" and int(e["step"]) not in have[k]]
    client.log_batch(run_id, metrics=missing)  # split into requests of at most 1000 metrics by MLflow
    logged = have["train/loss"] | {m.step for m in missing if m.key == "train/loss"}
    return max(logged, default=0)


class _Checkpointer(L.Callback):
    """Writes a checkpoint every `every` steps and at the last, then sends the metrics it covers;
    restores the RNG states of a resume just before the first resumed step."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, run_id: str, resume_ranks: list[dict] | None):
        self.every, self.keep, self.max_steps = cfg.trainer.checkpoint_every, cfg.trainer.keep_checkpoints, cfg.trainer.max_steps
        self.run_dir, self.run_id, self.config = run_dir, run_id, cfg.to_dict()
        self.resume_ranks = resume_ranks
        self.saved: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ranks, self.resume_ranks = self.resume_ranks, None
        if ranks is None:
            return
        if len(ranks) == trainer.world_size:
            mine = ranks[trainer.global_rank]
            checkpoint.set_rng_state(mine["rng"])
            pl_module.tokens_generated = int(mine["tokens_generated"])
        else:  # another number of processes: data and weights resume exactly, sampling does not
            log.warning("checkpoint written by %d processes, resuming with %d: RNG streams start afresh",
                        len(ranks), trainer.world_size)
            if trainer.is_global_zero:
                pl_module.tokens_generated = sum(int(r["tokens_generated"]) for r in ranks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.start_step + batch_idx + 1
        if step % self.every == 0 or step == self.max_steps:
            self.save(trainer, pl_module, step)

    def save(self, trainer, module: OPSDModule, step: int) -> None:
        mine = {"rng": checkpoint.rng_state(), "tokens_generated": module.tokens_generated}
        ranks = [mine]
        if trainer.world_size > 1:
            import torch.distributed as dist

            ranks = [{} for _ in range(trainer.world_size)]
            dist.all_gather_object(ranks, mine)
        if trainer.is_global_zero:
            meta = {"run_id": self.run_id, "config": self.config, "world_size": trainer.world_size,
                    **module.training_meta()}
            checkpoint.save(self.run_dir, step, {**module.training_state(), "ranks": ranks}, meta)
            checkpoint.prune(self.run_dir, self.keep)
            self.saved.append(step)
        module.flush_metrics()  # only now: a resume will not run these steps again


@contextlib.contextmanager
def _training_run(cfg: TrainConfig, parent_run_id, extra_tags, ckpt: Checkpoint | None):
    """The MLflow run this process trains: a new one, a resumed one, or (a DDP rank > 0) rank 0's.
    Yields ``(run_id, reasons)`` like `_mlflow_run`."""
    if _is_ddp_worker():
        yield os.environ[DDP_RUN_ENV], []
        return
    uri = cfg.tracking.resolved_uri()
    if ckpt is None:
        with _mlflow_run(cfg, "train", parent_run_id, extra_tags) as (run_id, reasons):
            MlflowClient(tracking_uri=uri).set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{os.getpid()}")
            yield run_id, reasons
        return
    run_id = _reopen_run(uri, ckpt, cfg.resume)
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
    after_gap: Callable[[str, GapResult], None] | None = None,
    callbacks: Sequence[L.Callback] = (),
    gap_gate: Callable[[], tuple[Callable | None, str]] | None = None,
) -> TrainResult:
    """Run one OPSD training; returns its summary. Raises on failure (after marking the run).

    after_gap(run_id, gap): called once the initial gap is measured and logged (``gap.enabled``),
    before training; callbacks: extra Lightning callbacks (e.g. one reporting each step to a
    search). Either may raise `StopTraining` to end the run early on purpose. gap_gate: with
    ``gap.sequential``, () -> (stopping rule or None, why), called as the gap measurement starts
    (a search trial builds it from its pruner: search.Objective).

    With ``cfg.resume`` set, continues that run from its newest checkpoint (module docstring)."""
    ckpt = _resolve_resume(cfg) if cfg.resume else None
    if ckpt is not None:  # before loading anything: a wrong config fails in a second
        _check_same_config(cfg, ckpt.meta()["config"], ckpt)
    worker = _is_ddp_worker()
    if worker:
        _die_with_rank0()
    world, model, tokenizer = setup_run(cfg)
    uri = cfg.tracking.resolved_uri()
    started = time.perf_counter()
    recorder = _FailureRecorder()
    gap = None
    stopped: str | None = None
    with _training_run(cfg, parent_run_id, extra_tags, ckpt) as (run_id, reasons):
        module = OPSDModule(cfg, model, tokenizer, world)
        resume_ranks = None
        if ckpt is not None:
            meta, state = ckpt.meta(), ckpt.state()
            module.load_training_state(state, meta)
            resume_ranks = state["ranks"]
            if not worker:
                module.skip_logging_through = _relog_missing(uri, run_id, meta["pending_metrics"])
            log.warning("resuming run %s from %s (step %d of %d)", run_id, ckpt.path, ckpt.step, cfg.trainer.max_steps)
        if cfg.gap.enabled and ckpt is None and not worker:
            gap = measure_initial_gap(cfg, module.engine, world, gap_gate)
            _log_gap(MlflowClient(tracking_uri=uri), run_id, cfg, gap)
        if cfg.trainer.validate and ckpt is None and not worker:  # before fit: it may be reused
            from opsd_platform.training.measurements import initial_validation

            module.set_initial_validation(initial_validation(cfg, module.validate_policy, measurement_store(cfg)))
        logger = False if worker else MLFlowLogger(experiment_name=cfg.tracking.experiment, tracking_uri=uri, run_id=run_id)
        checkpointer = None
        if cfg.trainer.checkpointing:
            checkpointer = _Checkpointer(cfg, checkpoint_root(cfg) / run_id, run_id, resume_ranks)
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
            use_distributed_sampler=False,  # each rank's problems come from module.train_dataloader
            max_epochs=1,
            logger=logger,
            callbacks=[recorder, *([checkpointer] if checkpointer else []), *callbacks],
            enable_checkpointing=False,
            enable_progress_bar=cfg.trainer.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        try:
            if after_gap is not None and gap is not None:
                after_gap(run_id, gap)
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
