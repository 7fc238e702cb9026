"""Checkpoints and resume of a training run: where its checkpoints live, which one ``resume=`` names,
the checks that the resumed config is the same, the MLflow run reopened (and what a crash left
unlogged logged again), the callback that writes a checkpoint and only then releases the metrics
it covers, and how DDP ranks other than 0 find the run.

What a checkpoint promises (the module's side: ``module_state``, ``module_meta`` and
``restore_module`` below, ``OPSDModule.log_metrics``):
- Metrics are held back and reach MLflow only once a checkpoint covering their step is on disk
  (and at the end of the run, finished or failed). A run killed with SIGKILL therefore has in its
  store exactly the steps its newest checkpoint covers; a resume re-runs the steps after it and
  logs them once. MLflow cannot delete one step of a metric, so this is how "no step missing or
  duplicated" holds; the price is that live metrics lag by up to ``checkpoint_every`` steps.
- A failure that the process survives (an exception, Ctrl-C, SIGTERM) flushes the held-back
  metrics so the failed run shows everything it did. Resuming it re-runs the steps after its
  newest checkpoint without logging them again (``skip_logging_through``): the store keeps the
  values of the first attempt, which on CPU equal the re-run's except for timings.
- A resume restores weights (or the LoRA adapter), optimizer, EMA teacher, the counters, the
  initial validation (so ``improvement`` is still against the original initial pass rate), the
  data position and, at the first resumed step, every RNG: on CPU the resumed run's weights are
  bitwise those of an uninterrupted run with the same seed and thread count (with
  ``rollout.engine=hf``; vLLM's own sampler state is not checkpointed, and GPU kernels need not
  be deterministic, so there a resume is exact in everything but the sampled tokens).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import lightning as L
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import TrainConfig, config_hash, default_home, flatten, how_fields
from opsd_platform.errors import CheckpointError, RunInterrupted
from opsd_platform.training import checkpoint
from opsd_platform.training.checkpoint import Checkpoint
from opsd_platform.training.evaluation import Evaluation
from opsd_platform.training.module import OPSDModule

log = logging.getLogger(__name__)


DDP_RUN_ENV = "OPSD_DDP_RUN_ID"  # set by rank 0 for the ranks Lightning starts
PROCESS_TAG = "opsd.process"  # host:pid of the process training the run
# Settings a resume may change: they do not change what is computed.
# What a resume may change: the run's name, and the fields config/schema.py marks how-not-what
# at level "resume" (threads, progress bar, checkpoints, kernels); anything else must be as trained.
RESUME_MAY_CHANGE = {"resume", "tracking.run_name", *how_fields("resume")}


def checkpoint_root(cfg: TrainConfig) -> Path:
    """``trainer.checkpoint_dir``, else ``checkpoints/`` beside a local SQLite store, else
    ``$OPSD_HOME/checkpoints``."""
    if cfg.trainer.checkpoint_dir:
        return Path(cfg.trainer.checkpoint_dir).expanduser().resolve()
    db = tracking.sqlite_path(cfg.tracking.resolved_uri())
    return (db.parent if db is not None else default_home()) / "checkpoints"


def resolve_resume(cfg: TrainConfig) -> Checkpoint:
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


def interrupted_runs(cfg: TrainConfig) -> list[tuple[str, int]]:
    """(run id, newest checkpoint step) of the runs of this configuration (its config_hash) that
    ended without finishing, are not being trained by a live process, and can be resumed."""
    root = checkpoint_root(cfg)
    if not root.is_dir():
        return []
    uri = cfg.tracking.resolved_uri()
    client = tracking.init_store(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], f"tags.config_hash = '{config_hash(cfg)}' and tags.kind = 'train'",
                              max_results=50)
    found = []
    for run in runs:
        if run.info.status == "FINISHED" or _owner_alive(run.data.tags.get(PROCESS_TAG)):
            continue
        saved = checkpoint.list_checkpoints(root / run.info.run_id)
        if saved:
            found.append((run.info.run_id, saved[-1].step))
    return found


def newest_step(cfg: TrainConfig, run_id: str | None) -> int | None:
    """The step of `run_id`'s newest checkpoint, None without one."""
    saved = checkpoint.list_checkpoints(checkpoint_root(cfg) / run_id) if run_id else []
    return saved[-1].step if saved else None


@contextlib.contextmanager
def named_interrupts(cfg: TrainConfig, recorder, opened: list[str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM out of an open run (`opened`: its id, once open) -> `RunInterrupted` naming
    the run and its newest checkpoint, so the caller can say how to continue it. Lightning turns
    Ctrl-C into SystemExit: `recorder.reason` (the exception it saw) tells them apart."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, RunInterrupted) as exc:
        ctrl_c = isinstance(exc, KeyboardInterrupt) or (recorder.reason or "").startswith("KeyboardInterrupt")
        if not opened or not (ctrl_c or "SIGTERM" in str(exc)):
            raise
        signal_name = "SIGINT" if ctrl_c else "SIGTERM"
        raise RunInterrupted(f"interrupted ({signal_name})", run_id=opened[0], signal=signal_name,
                             checkpoint_step=newest_step(cfg, opened[0])) from exc


def is_ddp_worker() -> bool:
    """A rank > 0 that Lightning started for a run rank 0 owns."""
    return bool(os.environ.get(DDP_RUN_ENV)) and os.environ.get("LOCAL_RANK", "0") != "0"


def die_with_rank0() -> None:
    """Make this DDP rank > 0 die when rank 0 (its parent) does, even by SIGKILL, instead of
    waiting in a collective (Linux ``PR_SET_PDEATHSIG``; elsewhere gloo's broken sockets do it)."""
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # rank 0 died before the line above
        os._exit(1)


def check_same_config(cfg: TrainConfig, saved: dict, ckpt: Checkpoint) -> None:
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


def reopen_run(uri: str, ckpt: Checkpoint, resume: str) -> str:
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


def relog_missing(uri: str, run_id: str, pending: list[dict]) -> int:
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


# ----------------------------------------------------------------------------- what a checkpoint holds of the module


def _checkpoint_keys(module: OPSDModule) -> set[str] | None:
    """State-dict keys a checkpoint holds: the adapter's with LoRA (the base is rebuilt from the
    model source), else all (None)."""
    if not module.cfg.model.lora.enabled:
        return None
    return {n for n, p in module.policy.named_parameters() if p.requires_grad}


def module_state(module: OPSDModule) -> dict:
    """Weights (or adapter), EMA teacher and optimizer state: the tensors of a checkpoint."""
    keys = _checkpoint_keys(module)
    return {
        "policy": {k: v for k, v in module.policy.state_dict().items() if keys is None or k in keys},
        "teacher": module.teacher.state_dict(keys) if module.teacher is not None else None,
        "optimizer": module.trainer.optimizers[0].state_dict(),
    }


def module_meta(module: OPSDModule) -> dict:
    """The JSON side of a checkpoint: counters, the initial validation, held-back metrics."""
    init = module.initial_val
    return {
        "skipped_nonfinite": module.skipped_nonfinite,
        "initial_val": None if init is None else {
            "pass_rate": init.pass_rate, "reward_mean": init.reward_mean, "per_problem": init.per_problem,
            "tokens": init.tokens, "prompt_tokens": init.prompt_tokens},
        "pending_metrics": list(module.pending_metrics),
        "cost_cpu_s": module.training_cost()["cost/cpu_s"],
        "val_tokens": module.val_tokens,
    }


def restore_module(module: OPSDModule, state: dict, meta: dict) -> None:
    """Restore what `module_state` / `module_meta` saved at step ``meta["step"]`` (before fit)."""
    keys = _checkpoint_keys(module)
    missing, unexpected = module.policy.load_state_dict(state["policy"], strict=False)
    lacking = (keys - set(state["policy"])) if keys is not None else set(missing)
    if unexpected or lacking:
        raise ValueError(f"checkpoint weights do not fit this model: missing {sorted(lacking)[:5]}, "
                         f"unexpected {unexpected[:5]} (was it written with other model / LoRA settings?)")
    if module.teacher is not None:
        module.teacher.load_state_dict(state["teacher"])
    module.optimizer_state_to_load = state["optimizer"]
    module.start_step = int(meta["step"])
    module.skipped_nonfinite = int(meta["skipped_nonfinite"])
    module.cost_cpu_s = float(meta.get("cost_cpu_s", 0.0))
    module.val_tokens = int(meta.get("val_tokens", 0))
    if meta.get("initial_val"):
        module.initial_val = Evaluation(**meta["initial_val"], texts=[], judgements=[])
    sync = getattr(module.engine, "sync_weights", None)
    if sync is not None:  # an engine with its own copy of the weights
        sync(module.policy)


# ----------------------------------------------------------------------------- the callback


class Checkpointer(L.Callback):
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
                    **module_meta(module)}
            checkpoint.save(self.run_dir, step, {**module_state(module), "ranks": ranks}, meta)
            checkpoint.prune(self.run_dir, self.keep)
            self.saved.append(step)
        module.flush_metrics()  # only now: a resume will not run these steps again



