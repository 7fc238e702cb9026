"""`opsd search`: an Optuna study over OPSD configurations, pruned by the registered gap law.

Pieces, in the order a trial meets them:

- **Space** (``conf/search/<name>.yaml`` or a path; ``load_space``): training-config keys with
  their distributions, sampled in order, optionally only ``when`` earlier keys have given values.
- **Trial config**: the user's overrides + the sampled values, composed with Hydra's compose API
  (``compose.train_config``), exactly as ``opsd train`` would compose them. Optuna is driven
  directly (Hydra's Optuna sweeper cannot prune inside a trial and pins an old Optuna).
- **Trial**: one ``train()`` run nested under the study's parent MLflow run. With the law pruner
  it first measures the initial gap; ``GapLawPruner`` (pruner.py) then decides (a GRPO trial,
  ``algorithm`` being a key like any other, measures no gap and is never pruned by the law,
  which predicts OPSD only: its decision, rule ``not_opsd``, is recorded as training starts); a
  pruned trial stops there (its run ends FINISHED with tag ``stopped``, the predicted improvement and its
  interval as metrics, and no ``improvement``). With ``MedianPruner`` each step reports an
  intermediate value (see ``StepReporter``) and a pruned trial stops mid-training.
- **Callbacks** (ours; the optuna-integration MLflow callback is deprecated and logs a pruned
  trial's last intermediate value as if final): the trial's run gets its Optuna state, decision,
  tokens and seconds; the parent run the running best; every trial has exactly one run (one is
  created, FAILED, for a trial that died before training started).
- **Learning loop**: after every ``refit_every`` completed trials the law is refitted on all
  finished points of the experiment (calibration runs + completed trials), registered as
  ``@challenger`` and promoted when its hold-out RMSE is lower (registry.promote). Each trial
  records which law version decided it (``pruner.law_version``).
- **Storage and workers**: an Optuna RDB storage (SQLite file by default, beside a SQLite MLflow
  store; a PostgreSQL URL for many workers on many machines). ``prepare`` creates the schema,
  the study and the parent run once; any number of ``opsd search`` processes with the same
  overrides then share the study. Heartbeats mark a trial whose worker died FAILED after
  ``grace_period`` seconds; it is re-queued (``RetryHeartbeatStaleTrialCallback``, Optuna 5's
  name for ``RetryFailedTrialCallback``) and run by any worker. A trial stopped by Ctrl-C or
  SIGTERM is re-queued the same way. A worker stops when ``n_trials`` trials are accounted for
  (completed, pruned, or failed without a retry) and none is running or waiting, so a crashed
  study resumes by running the same command again.
- **Compute accounting and report** (study_report.py): tokens and seconds per trial and in
  total, the saving against training every trial fully (estimated for pruned trials from their
  measured gap, see ``study_report``), an HTML report, a table and plots on the parent run.
  ``search.compare=true`` runs the same search three ways (law pruning, MedianPruner, none) on
  the same per-trial-seeded configurations and measures the saving, the best configuration each
  found and the false-prune rate against the unpruned arm (``compare``).

Known limits: two workers that ask for a new trial at the same instant may together start up to
(workers - 1) trials more than ``n_trials``; none is lost or run twice.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import socket
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.compose import conf_dir, train_config
from opsd_platform.config import ConfigError, TrainConfig, default_home, flatten
from opsd_platform.pruner import PRUNE, Decision, GapLawPruner, best_completed, record_decision, stored_attrs
from opsd_platform.registry import CHAMPION, DEFAULT_NAME

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars per law load
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

PRUNERS = ("law", "median", "none")
SAMPLERS = ("random", "tpe")
PARAM_TYPES = ("float", "int", "categorical")
FINAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


# ============================================================================== configuration


@dataclass
class SearchConfig:
    study: str = field(default="default", metadata={"help": "study name: workers and resumes share it"})
    space: str = field(default="default", metadata={"help": "conf/search/<space>.yaml, or a path to a space YAML"})
    n_trials: int = field(default=12, metadata={"help": "trials of the study, over all workers (completed + pruned + failed)"})
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage URL: sqlite:////abs/optuna.db (default: beside a SQLite MLflow store, else "
                "$OPSD_HOME/optuna.db) or postgresql+psycopg2://user@host:port/db for many workers"})
    pruner: str = field(default="law", metadata={"help": "law (GapLawPruner), median (Optuna MedianPruner) or none"})
    sampler: str = field(default="random", metadata={
        "help": "random: seeded per trial number (reproducible, parallel-safe, the same configurations in every "
                "compare arm); tpe: Optuna TPE (seeded per worker process)"})
    seed: int = field(default=0, metadata={"help": "sampler seed (and the pruner's calibration draws)"})
    n_startup_trials: int = field(default=3, metadata={"help": "completed trials before any pruning (law and median)"})
    calibration_rate: float = field(default=0.2, metadata={"help": "share of would-be-pruned trials trained anyway (false-prune rate)"})
    threshold: float | None = field(default=None, metadata={"help": "fixed bar for the law pruner (default: best completed improvement)"})
    level: float = field(default=0.9, metadata={"help": "prediction-interval level of the law"})
    law_name: str = field(default=DEFAULT_NAME, metadata={"help": "registered law name"})
    law_alias: str = field(default=CHAMPION, metadata={"help": "alias of the law the pruner uses"})
    refit_every: int = field(default=1, metadata={"help": "refit + register a challenger law after this many completed trials (0 = never)"})
    median_warmup_steps: int | None = field(default=None, metadata={"help": "MedianPruner steps before pruning (default max_steps // 3)"})
    median_window: int = field(default=3, metadata={"help": "steps averaged into each intermediate value (rollout pass rate)"})
    heartbeat_interval: int = field(default=10, metadata={"help": "seconds between a running trial's heartbeats"})
    grace_period: int = field(default=60, metadata={"help": "seconds without a heartbeat before a trial counts as dead"})
    max_retry: int = field(default=2, metadata={"help": "re-runs of a trial whose worker died or was interrupted"})
    prepare_only: bool = field(default=False, metadata={"help": "create the storage, study and parent run, then exit (start workers after)"})
    compare: bool = field(default=False, metadata={"help": "run the search three ways (law, median, none) and compare them"})
    out_dir: str | None = field(default=None, metadata={"help": "report directory (default: search/<study> beside a SQLite MLflow store)"})

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"search.{key}: {message}")

        check(bool(self.study) and "/" not in self.study, "study", f"must be a non-empty name without '/', got {self.study!r}")
        check(self.n_trials >= 1, "n_trials", f"must be >= 1, got {self.n_trials}")
        check(self.pruner in PRUNERS, "pruner", f"unknown value {self.pruner!r}; valid: {', '.join(PRUNERS)}")
        check(self.sampler in SAMPLERS, "sampler", f"unknown value {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        check(self.n_startup_trials >= 0, "n_startup_trials", f"must be >= 0, got {self.n_startup_trials}")
        check(0.0 <= self.calibration_rate <= 1.0, "calibration_rate", f"must be in [0, 1], got {self.calibration_rate}")
        check(self.threshold is None or math.isfinite(self.threshold), "threshold", f"must be finite or null, got {self.threshold}")
        check(0.0 < self.level < 1.0, "level", f"must be in (0, 1), got {self.level}")
        check(self.refit_every >= 0, "refit_every", f"must be >= 0, got {self.refit_every}")
        check(self.median_warmup_steps is None or self.median_warmup_steps >= 0, "median_warmup_steps",
              f"must be >= 0 or null, got {self.median_warmup_steps}")
        check(self.median_window >= 1, "median_window", f"must be >= 1, got {self.median_window}")
        check(self.heartbeat_interval >= 1, "heartbeat_interval", f"must be >= 1, got {self.heartbeat_interval}")
        check(self.grace_period > self.heartbeat_interval, "grace_period",
              f"must be > heartbeat_interval ({self.heartbeat_interval}), got {self.grace_period}")
        check(self.max_retry >= 0, "max_retry", f"must be >= 0, got {self.max_retry}")
        check(bool(self.law_name) and bool(self.law_alias), "law_name", "law_name and law_alias must be non-empty")


# ============================================================================== the space


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution and the condition under which it is sampled."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple | None = None
    when: tuple[tuple[str, Any], ...] = ()

    def distribution(self):
        if self.type == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return CategoricalDistribution(list(self.choices))

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) == v for k, v in self.when)


def space_path(space: str) -> Path:
    """conf/search/<space>.yaml, or `space` itself when it is a path to a file."""
    path = Path(space).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in space:
        if not path.is_file():
            raise ConfigError(f"search.space: no such file {path}")
        return path.resolve()
    path = conf_dir() / "search" / f"{space}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (conf_dir() / "search").glob("*.yaml"))
        raise ConfigError(f"search.space: no {path}; spaces in conf/search: {', '.join(have) or 'none'}")
    return path


def parse_space(doc: Any, where: str) -> list[Param]:
    """Validated `Param`s from a space document ({"space": {key: spec}}); errors name the file and key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("space"), dict) or not doc["space"]:
        raise ConfigError(f"{where}: expected a mapping 'space:' with at least one key")
    valid_keys = set(flatten(TrainConfig().to_dict()))
    params: list[Param] = []
    for key, spec in doc["space"].items():
        at = f"{where}: space.{key}"
        if key not in valid_keys:
            raise ConfigError(f"{at}: not a training-config key (see opsd_platform/config.py)")
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected a mapping with 'type', got {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "when"}
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{at}.type: must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{at}.when: expected a mapping key: value, got {when!r}")
        for wkey in when:
            if wkey not in valid_keys:
                raise ConfigError(f"{at}.when: {wkey!r} is not a training-config key")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{at}.choices: must be a non-empty list")
            param = Param(key, kind, choices=tuple(choices), when=tuple(when.items()))
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                raise ConfigError(f"{at}: needs numbers low < high, got low={low!r}, high={high!r}")
            log_scale = bool(spec.get("log", False))
            if log_scale and low <= 0:
                raise ConfigError(f"{at}: log scale needs low > 0, got {low}")
            if kind == "int" and (int(low) != low or int(high) != high):
                raise ConfigError(f"{at}: int bounds must be whole numbers, got {low}, {high}")
            param = Param(key, kind, low=low, high=high, log=log_scale, step=spec.get("step"), when=tuple(when.items()))
        params.append(param)
    return params


def load_space(space: str) -> list[Param]:
    path = space_path(space)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_space(doc, str(path))


def sample(trial: optuna.Trial, space: Sequence[Param], base_values: dict[str, Any]) -> dict[str, Any]:
    """Sample the active keys of `space` in order; returns {key: value} of the sampled ones."""
    values = dict(base_values)
    chosen: dict[str, Any] = {}
    for p in space:
        if not p.active(values):
            continue
        if p.type == "float":
            value = trial.suggest_float(p.key, float(p.low), float(p.high), log=p.log)
        elif p.type == "int":
            value = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log, step=p.step or 1)
        else:
            value = trial.suggest_categorical(p.key, list(p.choices))
        values[p.key] = chosen[p.key] = value
    return chosen


def to_overrides(params: dict[str, Any]) -> list[str]:
    """{key: value} -> Hydra overrides (floats exact, booleans lower-case)."""
    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v)
        return str(v)

    return [f"{k}={show(v)}" for k, v in params.items()]


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Independent random sampling seeded by (seed, trial number, parameter name): a trial's
    configuration depends on nothing else, so parallel workers never repeat one another and the
    arms of a comparison see the same configuration at the same trial number."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        rng = np.random.RandomState([self.seed & 0xFFFFFFFF, trial.number, zlib.crc32(param_name.encode())])
        d = param_distribution
        if isinstance(d, CategoricalDistribution):
            return d.choices[rng.randint(len(d.choices))]
        low, high = float(d.low), float(d.high)
        if d.log:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        if isinstance(d, IntDistribution):
            step = d.step
            value = int(min(high, max(low, d.low + round((value - d.low) / step) * step)))
        elif d.step is not None:
            value = min(high, max(low, d.low + round((value - d.low) / d.step) * d.step))
        return value


# ============================================================================== storage and study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_storage(tracking_uri: str) -> str:
    db = tracking.sqlite_path(tracking_uri)
    return f"sqlite:///{(db.parent if db else default_home()) / 'optuna.db'}"


def shown_url(url: str) -> str:
    """The URL with any password hidden (for messages and tags)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, settings: SearchConfig, on_stale: Callable | None) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; creates the schema on first use. Errors name search.storage."""
    engine_kwargs: dict[str, Any] = {}
    schema_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    if url.startswith("sqlite:"):
        db = tracking.sqlite_path(url)
        if db is None or not db.is_absolute():
            raise ConfigError(f"search.storage: use an absolute SQLite path (sqlite:////abs/path/optuna.db), got {url}")
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}  # several workers on one file wait for the lock
        # workers started together on a fresh file would race to create the schema ("table ... already exists")
        schema_lock = tracking.file_lock(db.with_name(db.name + ".lock"))
    elif url.startswith("postgresql"):
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with schema_lock:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period, heartbeat_stale_trial_callback=on_stale,
            )
    except ImportError as exc:
        raise ConfigError(f"search.storage: no database driver for {shown_url(url)} ({exc}); for PostgreSQL "
                          "write postgresql+psycopg2://... (psycopg2-binary), plain postgresql:// needs psycopg 3") from None
    except Exception as exc:  # sqlalchemy OperationalError, ArgumentError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"search.storage: cannot open {shown_url(url)}: {first}") from None


def trial_run_id(client, experiment_id: str, study: str, number: int) -> str | None:
    """The MLflow run of trial `number` of `study` (by its tags), if one was created."""
    runs = client.search_runs(
        [experiment_id], f"tags.`search.study` = '{study}' AND tags.`search.trial` = '{number}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


class RetryDeadTrial:
    """Heartbeat-stale (or interrupted) trial -> its MLflow run FAILED with the reason, and the
    trial re-queued as WAITING with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback,
    given a copy of the trial without its user attributes, so nothing measured by the lost attempt
    leaks into the retry)."""

    def __init__(self, tracking_uri: str, experiment: str, max_retry: int, grace_period: int) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.grace_period = grace_period
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> None:
        reason = reason or f"worker {trial.user_attrs.get('worker', '?')} lost: no heartbeat for {self.grace_period} s"
        try:
            client = tracking.init_store(self.tracking_uri)
            exp = client.get_experiment_by_name(self.experiment)
            run_id = trial.user_attrs.get("mlflow_run_id") or (
                exp and trial_run_id(client, exp.experiment_id, study.study_name, trial.number))
            if run_id and client.get_run(run_id).info.status == "RUNNING":
                tracking.fail_run(self.tracking_uri, run_id, f"{reason}; trial #{trial.number} re-queued")
        except Exception as exc:  # the retry matters more than the MLflow bookkeeping
            log.error("could not mark the MLflow run of trial #%d failed: %s", trial.number, exc)
        clean = copy.deepcopy(trial)
        clean.user_attrs = {"retry_of": trial.number, "retry_reason": reason}
        self.retry(study, clean)
        log.warning("trial #%d: %s; re-queued", trial.number, reason)


@dataclass
class StudyHandle:
    """Everything a worker needs: the study and the settings it was created with."""

    study: optuna.Study
    settings: SearchConfig
    base_overrides: list[str]
    space: list[Param]
    base_values: dict[str, Any]
    tracking_uri: str
    experiment: str
    parent_run_id: str
    storage_url: str
    out_dir: Path

    @property
    def name(self) -> str:
        return self.study.study_name


def make_pruner(settings: SearchConfig, tracking_uri: str, max_steps: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "law":
        return GapLawPruner(
            tracking_uri, name=settings.law_name, alias=settings.law_alias, n_startup_trials=settings.n_startup_trials,
            calibration_rate=settings.calibration_rate, threshold=settings.threshold, level=settings.level, seed=settings.seed,
        )
    if settings.pruner == "median":
        warmup = settings.median_warmup_steps if settings.median_warmup_steps is not None else max_steps // 3
        return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=warmup)
    return optuna.pruners.NopPruner()


def make_sampler(settings: SearchConfig) -> optuna.samplers.BaseSampler:
    if settings.sampler == "random":
        return TrialSeededSampler(settings.seed)
    return optuna.samplers.TPESampler(seed=(settings.seed * 1_000_003 + os.getpid()) & 0xFFFFFFFF, constant_liar=True)


# Settings a worker joining a study must share with it (the others may differ per worker).
SHARED_SETTINGS = ("space", "n_trials", "pruner", "sampler", "seed", "n_startup_trials", "calibration_rate",
                   "threshold", "level", "law_name", "law_alias", "refit_every")


def prepare(base_overrides: Sequence[str], settings: SearchConfig) -> StudyHandle:
    """Create (or open) the storage, the study and its parent MLflow run. Run it once before
    starting several workers (``search.prepare_only=true``); a single ``opsd search`` does it itself."""
    space = load_space(settings.space)
    sampled = {p.key for p in space}
    base = [o for o in base_overrides if o.split("=", 1)[0].lstrip("+") not in sampled]
    dropped = [o for o in base_overrides if o not in base]
    if dropped:
        log.warning("the search space samples these keys; ignored: %s", " ".join(dropped))
    base_cfg = train_config(base)
    uri, experiment = base_cfg.tracking.resolved_uri(), base_cfg.tracking.experiment
    client = tracking.init_store(uri)
    tracking.ensure_experiment(client, uri, experiment)
    url = settings.storage or default_storage(uri)
    stale = RetryDeadTrial(uri, experiment, settings.max_retry, settings.grace_period)
    storage = open_storage(url, settings, stale)
    study = optuna.create_study(
        storage=storage, study_name=settings.study, direction="maximize", load_if_exists=True,
        sampler=make_sampler(settings), pruner=make_pruner(settings, uri, base_cfg.trainer.max_steps),
    )
    shared = {k: v for k, v in asdict(settings).items() if k in SHARED_SETTINGS}
    attrs = study.user_attrs
    if "opsd.parent_run_id" in attrs:
        for key, mine in (("base_overrides", list(base)), ("settings", shared), ("tracking_uri", uri), ("experiment", experiment)):
            theirs = attrs.get(f"opsd.{key}")
            if theirs != mine:
                raise ConfigError(
                    f"search.study={settings.study!r} in {shown_url(url)} was created with {key} {theirs}; "
                    f"this worker has {mine} (use the same overrides, or another search.study)"
                )
        parent = attrs["opsd.parent_run_id"]
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")  # resumed (or extended) study
    else:
        parent = tracking.start_run(uri, experiment, f"search-{settings.study}", {
            "kind": "search", "search.study": settings.study, "search.pruner": settings.pruner,
            "search.storage": shown_url(url), "search.space": str(space_path(settings.space)),
        })
        tracking.log_params(uri, parent, {f"search.{k}": v for k, v in shared.items()})
        client.log_dict(parent, {"settings": asdict(settings), "base_overrides": list(base),
                                 "space": [asdict(p) for p in space]}, "search.json")
        for key, value in (("base_overrides", list(base)), ("settings", shared), ("tracking_uri", uri),
                           ("experiment", experiment), ("parent_run_id", parent)):
            study.set_user_attr(f"opsd.{key}", value)
    out = Path(settings.out_dir).expanduser().resolve() if settings.out_dir else (
        (tracking.sqlite_path(uri).parent if tracking.sqlite_path(uri) else default_home()) / "search" / settings.study)
    return StudyHandle(study, settings, list(base), space, flatten(base_cfg.to_dict()), uri, experiment, parent, url, out)


# ============================================================================== one trial


class WorkerInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a trial: the trial is re-queued and this worker stops."""


class StepReporter(L.Callback):
    """Reports each training step to the trial: the running mean of the rollout pass rate over the
    last `window` steps (the only per-step signal that costs nothing extra; a validation per step
    would double a trial's cost). With `prune`, asks the study's pruner (MedianPruner) after each
    report and stops the training when it says so."""

    def __init__(self, trial: optuna.Trial, window: int, prune: bool, tracking_uri: str,
                 decide_at_start: bool = False) -> None:
        self.trial, self.window, self.prune, self.tracking_uri = trial, window, prune, tracking_uri
        self.decide_at_start = decide_at_start  # a trial that measures no gap (GRPO) asks the law pruner here
        self.values: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        from opsd_platform.train import StopTraining

        run_id = getattr(trainer.logger, "run_id", None)
        if run_id and "mlflow_run_id" not in self.trial.user_attrs:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        if self.decide_at_start and self.trial.should_prune():  # recorded on the trial and its run (rule not_opsd)
            decision = Decision.from_attrs(stored_attrs(self.trial.study, self.trial))
            raise StopTraining(f"pruned: {decision.reason if decision else 'by the pruner'}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from opsd_platform.train import StopTraining

        last = pl_module.history[-1] if pl_module.history else {}
        if "rollout/pass_rate" not in last:
            return
        self.values.append(float(last["rollout/pass_rate"]))
        step = int(last["step"])
        value = float(np.mean(self.values[-self.window:]))
        self.trial.report(value, step)
        if self.prune and self.trial.should_prune():
            best = best_completed(self.trial.study)
            decision = Decision(
                PRUNE, "median", f"MedianPruner: step {step} running pass rate {value:.3f} is below the median of "
                f"earlier trials at this step", bar=best[0] if best else None,
                bar_source=f"best trial #{best[1]}" if best else None)
            record_decision(self.trial.study, self.trial, decision, self.tracking_uri)
            raise StopTraining(decision.reason)


class Objective:
    """The trial function: sample, compose, (gap -> law decision), train; returns the improvement."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress

    def __call__(self, trial: optuna.Trial) -> float:
        from opsd_platform.train import RunInterrupted, train

        h, s = self.h, self.h.settings
        trial.set_user_attr("worker", worker_id())
        params = sample(trial, h.space, h.base_values)
        overrides = to_overrides(params)
        # A GRPO trial measures no gap: the law predicts OPSD only and never prunes it (pruner.py)
        algorithm = params.get("algorithm", h.base_values.get("algorithm", "opsd"))
        label = params.get("context", h.base_values["context"]) if algorithm == "opsd" else algorithm
        extra = [f"gap.enabled={'true' if s.pruner == 'law' and algorithm == 'opsd' else 'false'}",
                 f"tracking.run_name=trial-{trial.number}-{label}"]
        if not any(o.lstrip("+").startswith("trainer.progress_bar=") for o in h.base_overrides):
            extra.append("trainer.progress_bar=false")
        trial.set_user_attr("overrides", overrides)
        cfg = train_config([*h.base_overrides, *overrides, *extra])
        trial.set_user_attr("algorithm", cfg.algorithm)
        tags = {"search.study": h.name, "search.trial": str(trial.number), "search.pruner": s.pruner}
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            tags["search.retry_of"] = str(retry_of)
        reporter = StepReporter(trial, s.median_window, s.pruner == "median", h.tracking_uri,
                                decide_at_start=s.pruner == "law" and cfg.algorithm != "opsd")
        after_gap = (lambda run_id, gap: self.after_gap(trial, cfg, run_id, gap)) if s.pruner == "law" else None
        gap_gate = (lambda: self.gap_gate(trial, cfg)) if s.pruner == "law" and cfg.gap.sequential else None
        try:
            result = train(cfg, parent_run_id=h.parent_run_id, extra_tags=tags, after_gap=after_gap, callbacks=[reporter],
                           gap_gate=gap_gate)
        except (KeyboardInterrupt, RunInterrupted) as exc:
            frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            RetryDeadTrial(h.tracking_uri, h.experiment, s.max_retry, s.grace_period)(
                trial.study, frozen, reason=f"interrupted ({type(exc).__name__}: {exc})")
            # a KeyboardInterrupt: Optuna marks the trial FAILED and stops the worker (an Exception
            # would be caught by `catch` and the worker would go on to the next trial)
            raise WorkerInterrupted(str(exc)) from exc
        cost = {"cost.tokens": int(result.tokens_generated), "cost.seconds": float(result.seconds), "cost.steps": result.steps,
                "mlflow_run_id": result.run_id}
        if result.stopped is None:
            cost.update({"cost.full_tokens_est": int(result.tokens_generated), "cost.full_seconds_est": float(result.seconds)})
        elif s.pruner == "median":  # what the rest of the steps would have cost, at this trial's own rate
            steps_left = cfg.trainer.max_steps - result.steps
            per_step = result.seconds / max(result.steps, 1)
            cost["cost.full_seconds_est"] = float(result.seconds + steps_left * per_step)
            cost["cost.full_tokens_est"] = int(result.tokens_generated * cfg.trainer.max_steps / max(result.steps, 1))
        for key, value in cost.items():
            trial.set_user_attr(key, value)
        if result.stopped is not None:
            raise optuna.TrialPruned(result.stopped)
        if result.improvement is None:
            raise RuntimeError("the training reported no improvement (trainer.validate=false?): nothing to optimise")
        trial.set_user_attr("improvement", float(result.improvement))
        decision = Decision.from_attrs(stored_attrs(trial.study, trial))
        if decision is not None and decision.action == "calibrate":  # was it a false prune after all?
            trial.set_user_attr("pruner.false_prune", bool(result.improvement > decision.bar))
        return float(result.improvement)

    @staticmethod
    def gap_gate(trial: optuna.Trial, cfg: TrainConfig):
        """gap.sequential: (stopping rule, "") from the study's own pruner (its policy and the bar it
        would use now, sequential.policy_gate), or (None, why) when the decision will not depend on
        the gap. Built as the measurement starts, so the bar is as fresh as the pruner's will be."""
        from opsd_platform.pruner import GAP_RULES, decide_policy
        from opsd_platform.sequential import policy_gate

        pruner = trial.study.pruner
        if not isinstance(pruner, GapLawPruner):
            return None, "the study's pruner is not the gap law"
        inputs = {**pruner.policy_inputs(trial.study, trial), "calibration_rate": 0.0}  # calibration decides after
        return policy_gate(lambda attrs: decide_policy(attrs, **inputs), inputs["law"], dict(trial.user_attrs),
                           rule=cfg.gap.sequential_rule, gap_rules=GAP_RULES)

    def after_gap(self, trial: optuna.Trial, cfg: TrainConfig, run_id: str, gap) -> None:
        """Record the gap, then let the pruner decide before any training (StopTraining to prune)."""
        from opsd_platform.train import StopTraining, estimated_training_tokens

        mean_len = gap.tokens_generated / max(1, 2 * gap.n_problems * gap.samples_per_problem)
        attrs = {
            "mlflow_run_id": run_id, "gap": float(gap.gap), "gap_ci": [float(gap.gap_ci[0]), float(gap.gap_ci[1])],
            "context_tokens": float(gap.teacher_prompt_tokens), "cost.gap_tokens": int(gap.tokens_generated),
            "cost.gap_seconds": float(gap.seconds),
            "cost.train_tokens_est": float(estimated_training_tokens(cfg, mean_len)),
            # gap.sequential: problems measured (of problems_total), the CS, the decision it settled, cost saved
            **{f"gap.sequential.{k}": v for k, v in (gap.sequential or {}).items()},
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value if (not isinstance(value, float) or math.isfinite(value)) else None)
        if trial.should_prune():
            decision = Decision.from_attrs(stored_attrs(trial.study, trial))
            raise StopTraining(f"pruned by the gap law v{decision.law_version}: {decision.reason}")


# ============================================================================== callbacks


class MlflowTrialCallback:
    """After each trial: its Optuna outcome on its own run, the running totals on the parent run."""

    def __init__(self, handle: StudyHandle) -> None:
        self.h = handle

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.tracking import MlflowClient

        h = self.h
        client = MlflowClient(tracking_uri=h.tracking_uri)
        exp_id = client.get_experiment_by_name(h.experiment).experiment_id
        run_id = trial.user_attrs.get("mlflow_run_id") or trial_run_id(client, exp_id, h.name, trial.number)
        if run_id is None:  # died before training started (a bad sampled value, ...): still one run per trial
            reason = trial.system_attrs.get("fail_reason", "failed before its training run started")
            run_id = tracking.start_run(h.tracking_uri, h.experiment, f"trial-{trial.number}", {
                "kind": "train", "search.study": h.name, "search.trial": str(trial.number), "search.pruner": h.settings.pruner,
            }, h.parent_run_id)
            tracking.fail_run(h.tracking_uri, run_id, reason)
        decision = Decision.from_attrs(trial.user_attrs)
        client.set_tag(run_id, "search.state", trial.state.name)
        client.set_tag(run_id, "search.decision", decision.action if decision else ("prune" if trial.state == TrialState.PRUNED else "train"))
        client.set_tag(run_id, "search.params", json.dumps(trial.params)[:5000])
        for key in ("cost.tokens", "cost.seconds"):
            if key in trial.user_attrs:
                client.log_metric(run_id, "search/" + key.split(".")[1], float(trial.user_attrs[key]))
        if trial.state == TrialState.COMPLETE:
            client.log_metric(run_id, "search/improvement", float(trial.value))
        step = trial.number
        if "cost.tokens" in trial.user_attrs:
            client.log_metric(h.parent_run_id, "search/trial_tokens", float(trial.user_attrs["cost.tokens"]), step=step)
            client.log_metric(h.parent_run_id, "search/trial_seconds", float(trial.user_attrs["cost.seconds"]), step=step)
        best = best_completed(study)
        if best is not None:
            client.log_metric(h.parent_run_id, "search/best_improvement", best[0], step=step)


class LearningLoop:
    """After every `refit_every` completed trials: refit the law on all finished points, register it
    as @challenger and promote it when its hold-out RMSE is lower; recorded on the trial."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.tracking import MlflowClient

        from opsd_platform.law import LawError
        from opsd_platform.law_pipeline import FitLawConfig, fit_and_register

        h, s = self.h, self.h.settings
        if s.pruner != "law" or s.refit_every == 0 or trial.state != TrialState.COMPLETE:
            return
        n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n_done % s.refit_every:
            return
        cfg = FitLawConfig(experiment=h.experiment, name=s.law_name, level=s.level, promote=True,
                           out_dir=str(h.out_dir / "law"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = fit_and_register(h.tracking_uri, cfg)
        except LawError as exc:
            record = {"refit": "skipped", "reason": str(exc)}
        else:
            reg = report.registration or {}
            champion = MlflowClient(tracking_uri=h.tracking_uri).get_registered_model(s.law_name).aliases.get(CHAMPION)
            record = {"refit": "registered", "version": reg.get("version"), "decision": reg.get("decision"),
                      "reason": reg.get("reason"), "champion": None if champion is None else int(champion),
                      "n_points": int(report.fit.n_points), "holdout_rmse": float(report.loo["rmse"])}
            MlflowClient(tracking_uri=h.tracking_uri).log_metric(
                h.parent_run_id, "search/law_champion_version", float(record["champion"] or 0), step=trial.number)
        study.set_user_attr(f"law.refit.{trial.number}", record)  # a finished trial's attributes are frozen
        self.progress(f"  law refit after trial #{trial.number}: " + (
            f"v{record['version']} {record['decision']} ({record['reason']})" if record["refit"] == "registered"
            else f"skipped ({record['reason']})"))


# ============================================================================== workers


@dataclass
class Tally:
    final: list[FrozenTrial]  # completed, pruned, or failed without a retry
    running: list[FrozenTrial]
    waiting: list[FrozenTrial]
    retried: set[int]


def tally(study: optuna.Study) -> Tally:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    final = [t for t in trials if t.state in FINAL_STATES or (t.state == TrialState.FAIL and t.number not in retried)]
    return Tally(final, [t for t in trials if t.state == TrialState.RUNNING],
                 [t for t in trials if t.state == TrialState.WAITING], retried)


def study_done(study: optuna.Study, n_trials: int) -> bool:
    t = tally(study)
    return len(t.final) >= n_trials and not t.running and not t.waiting


def describe_trial(t: FrozenTrial) -> str:
    d = Decision.from_attrs(t.user_attrs)
    params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in t.params.items())
    head = f"trial #{t.number} {t.state.name.lower()}"
    if t.state == TrialState.COMPLETE:
        head += f", improvement {t.value:+.3f}"
    if "gap" in t.user_attrs and t.user_attrs["gap"] is not None:
        head += f", gap {t.user_attrs['gap']:+.3f}"
    if d is not None:
        head += f", {d.action} ({d.rule})"
    if "cost.seconds" in t.user_attrs:
        head += f", {t.user_attrs['cost.seconds']:.0f} s"
    return f"{head} [{params}]"


def guarded(callback: Callable[[optuna.Study, FrozenTrial], None]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Bookkeeping after a trial must not stop the worker (the trial itself is already told)."""
    def call(study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            callback(study, trial)
        except Exception as exc:
            log.error("%s after trial #%d failed: %s: %s", type(callback).__name__, trial.number, type(exc).__name__, exc)

    return call


def run_worker(handle: StudyHandle, progress: Callable[[str], None] = print) -> int:
    """Run trials of the study until it is done (see the module docstring); returns how many this
    worker ran. Waits for other workers' running trials, so one of theirs that dies is retried."""
    study, n = handle.study, handle.settings.n_trials
    objective = Objective(handle, progress)
    callbacks = [guarded(MlflowTrialCallback(handle)), guarded(LearningLoop(handle, progress)),
                 lambda st, tr: progress(describe_trial(tr))]
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        t = tally(study)
        if t.waiting or len(t.final) + len(t.running) < n:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
            ran += 1
        elif t.running:
            time.sleep(min(handle.settings.heartbeat_interval, 5))  # another worker's trial: wait for it (or its heartbeat to stop)
        else:
            return ran


# ============================================================================== the command


@dataclass
class SearchResult:
    study: str
    parent_run_id: str
    tracking_uri: str
    storage: str
    ran: int
    done: bool
    report: Any = None  # study_report.StudyReport when the study is done
    handle: StudyHandle | None = None


def finalize(handle: StudyHandle, progress: Callable[[str], None] = print):
    """The study's report (HTML, tables, plots) on disk and on the parent run; the parent run
    ends FINISHED; each law version that decided trials gets a tag listing them."""
    from mlflow.tracking import MlflowClient

    from opsd_platform.study_report import write_report

    report = write_report(handle)
    client = MlflowClient(tracking_uri=handle.tracking_uri)
    for key, value in report.metrics.items():
        if value is not None and math.isfinite(value):
            client.log_metric(handle.parent_run_id, key, float(value))
    for path in report.files:
        client.log_artifact(handle.parent_run_id, str(path), "report")
    by_version: dict[int, list[int]] = {}
    for t in handle.study.get_trials(deepcopy=False):
        d = Decision.from_attrs(t.user_attrs)
        if d is not None and d.action == PRUNE and d.law_version is not None:
            by_version.setdefault(int(d.law_version), []).append(t.number)
    for version, numbers in by_version.items():
        try:
            client.set_model_version_tag(handle.settings.law_name, str(version), f"search.{handle.name}.pruned_trials",
                                         ",".join(map(str, sorted(numbers)))[:4000])
        except Exception as exc:
            log.warning("could not tag law v%s: %s", version, exc)
    client.set_tag(handle.parent_run_id, "search.report", str(report.html))
    client.set_terminated(handle.parent_run_id, "FINISHED")
    progress(f"report: {report.html}")
    return report


def search(base_overrides: Sequence[str], settings: SearchConfig, progress: Callable[[str], None] = print):
    """`opsd search`: prepare (or join) the study, run trials until it is done, then report.
    Returns a SearchResult (a Comparison with search.compare)."""
    if settings.compare:
        return compare(base_overrides, settings, progress)
    handle = prepare(base_overrides, settings)
    progress(f"study {handle.name!r} in {shown_url(handle.storage_url)}; parent MLflow run {handle.parent_run_id} "
             f"in {handle.tracking_uri}")
    if settings.prepare_only:
        return SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url, 0, False, handle=handle)
    try:
        ran = run_worker(handle, progress)
    except BaseException as exc:
        # The parent run stays RUNNING: other workers may go on, and a re-run resumes the study.
        progress(f"worker stopped: {type(exc).__name__}: {exc}; run the same command again to resume")
        raise
    done = study_done(handle.study, settings.n_trials)
    report = finalize(handle, progress) if done else None
    return SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url, ran, done, report, handle)


# ============================================================================== comparison


ARMS = ("none", "median", "law")


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    files: list[Path]
    run_id: str
    results: dict[str, SearchResult]


def compare(base_overrides: Sequence[str], settings: SearchConfig, progress: Callable[[str], None] = print) -> Comparison:
    """The same search three ways on the same per-trial-seeded configurations: no pruning (every
    trial trained fully: the reference), Optuna's MedianPruner, and the gap law. Writes
    comparison.json/.csv/.png and logs them on a ``kind=search-compare`` run."""
    from opsd_platform.study_report import write_comparison

    if settings.sampler != "random":
        raise ConfigError("search.compare: needs search.sampler=random (the arms must see the same configurations)")
    results: dict[str, SearchResult] = {}
    for arm in ARMS:
        study = f"{settings.study}-{arm}"
        out_dir = str(Path(settings.out_dir).expanduser() / study) if settings.out_dir else None
        arm_settings = SearchConfig(**{**asdict(settings), "compare": False, "pruner": arm, "study": study, "out_dir": out_dir})
        progress(f"== compare: {arm} ({arm_settings.study})")
        results[arm] = search(base_overrides, arm_settings, progress)
        if not results[arm].done:
            raise RuntimeError(f"compare: study {arm_settings.study!r} is not done (another worker still running?)")
    return write_comparison(results, settings, progress)
