"""The study's storage (an Optuna RDB storage with heartbeats) and ``prepare``: the schema, the study
and its parent MLflow run, created once and shared by every worker.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from opsd_platform import tracking
from opsd_platform.config import ConfigError, TrainConfig, default_home, flatten
from opsd_platform.config.compose import given_keys, train_config, with_overrides
from opsd_platform.search.pruner import GapLawPruner
from opsd_platform.search.settings import SearchConfig
from opsd_platform.search.space import Param, TrialSeededSampler, load_space, space_path

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_storage(tracking_uri: str, name: str = "optuna.db") -> str:
    """SQLite file `name` beside a local SQLite tracking store, else in $OPSD_HOME."""
    db = tracking.sqlite_path(tracking_uri)
    return f"sqlite:///{(db.parent if db else default_home()) / name}"


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
        raise ConfigError(f"search.storage: no database driver for {tracking.shown_url(url)} ({exc}); for PostgreSQL "
                          "write postgresql+psycopg2://... (psycopg2-binary), plain postgresql:// needs psycopg 3") from None
    except Exception as exc:  # sqlalchemy OperationalError, ArgumentError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"search.storage: cannot open {tracking.shown_url(url)}: {first}") from None


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


@dataclass(frozen=True)
class SearchBase:
    """What every trial of a search starts from: the command line composed once (`search_base`)."""

    config: TrainConfig  # a trial's config is this with its sampled keys set (compose.with_overrides)
    # The training overrides as given, the sampled keys left out: a record, never composed again. The
    # study keeps it (a worker process joining the study is checked against it) and the report shows it.
    overrides: tuple[str, ...]


def search_base(overrides: Sequence[str], settings: SearchConfig, composed: TrainConfig | None = None) -> SearchBase:
    """The base config of a search: `composed` (the overrides' config, when the caller has it) unless
    the overrides set keys the space samples, which are ignored (with a warning; `opsd search` has
    checked their values): then the rest, composed once. A trial shows no progress bar unless the
    overrides ask for one."""
    sampled = {p.key for p in load_space(settings.space)}
    dropped = given_keys(overrides, sampled)
    if dropped:
        log.warning("the search space samples these keys; ignored: %s", " ".join(dropped))
    base = [o for o in overrides if o not in dropped]
    config = composed if composed is not None and not dropped else train_config(base)
    if not given_keys(base, {"trainer.progress_bar"}):
        config = with_overrides(config, {"trainer.progress_bar": False})
    return SearchBase(config, tuple(base))


@dataclass
class StudyHandle:
    """Everything a worker needs: the study and the settings it was created with."""

    study: optuna.Study
    settings: SearchConfig
    base: SearchBase
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


PRUNER_KINDS = ("none", "median", "successive_halving", "hyperband", "law", "law_then_halving")


def curve_pruner(kind: str, max_steps: int) -> optuna.pruners.BasePruner:
    """A curve-based pruner of settings.CURVE_PRUNERS (the ranked search's; the replay's arms)."""
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_steps, reduction_factor=3)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    raise ValueError(f"unknown curve-based pruner {kind!r}")


class LawThenCurve(optuna.pruners.BasePruner):
    """The law decides before training (no intermediate value yet), a curve pruner afterwards."""

    def __init__(self, law: GapLawPruner, curve: optuna.pruners.BasePruner) -> None:
        self.law, self.curve = law, curve

    def prune(self, study: optuna.Study, trial) -> bool:
        return self.law.prune(study, trial) if trial.last_step is None else self.curve.prune(study, trial)


def pruner_of(kind: str, *, max_steps: int, n_startup_trials: int, median_warmup_steps: int | None,
              law: Callable[[], GapLawPruner]) -> optuna.pruners.BasePruner:
    """The study's pruner of a kind (PRUNER_KINDS), for the live search (make_pruner) and the replay
    (benchmarks/replay.py); `law` builds the law pruner (from the registry, or a law in memory)."""
    if kind in ("law", "law_then_halving"):
        return LawThenCurve(law(), curve_pruner("successive_halving", max_steps)) if kind == "law_then_halving" else law()
    if kind == "median":
        warmup = median_warmup_steps if median_warmup_steps is not None else max_steps // 3
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=warmup)
    if kind in ("successive_halving", "hyperband"):
        return curve_pruner(kind, max_steps)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r}; kinds: {', '.join(PRUNER_KINDS)}")


def make_pruner(settings: SearchConfig, tracking_uri: str, max_steps: int) -> optuna.pruners.BasePruner:
    if settings.strategy == "ranked":  # the law ranks before any trial; the curve pruner stops trainings (ranked_run.py)
        return curve_pruner(settings.curve_pruner, max_steps)
    return pruner_of(settings.pruner, max_steps=max_steps, n_startup_trials=settings.n_startup_trials,
                     median_warmup_steps=settings.median_warmup_steps, law=lambda: GapLawPruner(
                         tracking_uri, name=settings.law_name, alias=settings.law_alias,
                         n_startup_trials=settings.n_startup_trials, calibration_rate=settings.calibration_rate,
                         threshold=settings.threshold, level=settings.level, seed=settings.seed))


def make_sampler(settings: SearchConfig) -> optuna.samplers.BaseSampler:
    if settings.sampler == "random":
        return TrialSeededSampler(settings.seed)
    return optuna.samplers.TPESampler(seed=(settings.seed * 1_000_003 + os.getpid()) & 0xFFFFFFFF, constant_liar=True)


# Settings a worker joining a study must share with it (the others may differ per worker).
SHARED_SETTINGS = ("space", "n_trials", "pruner", "sampler", "seed", "n_startup_trials", "calibration_rate",
                   "threshold", "level", "law_name", "law_alias", "refit_every")


def prepare(search: SearchBase, settings: SearchConfig) -> StudyHandle:
    """Create (or open) the storage, the study and its parent MLflow run. Run it once before
    starting several workers (``search.prepare_only=true``); a single ``opsd search`` does it itself."""
    space = load_space(settings.space)
    base, base_cfg = list(search.overrides), search.config
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
    if study.metric_names is None:  # optuna-dashboard then says "improvement", not "Objective 0"
        study.set_metric_names(["improvement"])
    shared = {k: v for k, v in asdict(settings).items() if k in SHARED_SETTINGS}
    attrs = study.user_attrs
    if "opsd.parent_run_id" in attrs:  # the overrides as strings: what worker processes compare, through the storage
        for key, mine in (("base_overrides", list(base)), ("settings", shared), ("tracking_uri", uri),
                          ("experiment", experiment)):
            theirs = attrs.get(f"opsd.{key}")
            if theirs != mine:
                raise ConfigError(
                    f"search.study={settings.study!r} in {tracking.shown_url(url)} was created with {key} {theirs}; "
                    f"this worker has {mine} (use the same overrides, or another search.study)"
                )
        parent = attrs["opsd.parent_run_id"]
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")  # resumed (or extended) study
    else:
        parent = tracking.start_run(uri, experiment, f"search-{settings.study}", {
            "kind": "search", "search.study": settings.study, "search.pruner": settings.pruner,
            "search.storage": tracking.shown_url(url), "search.space": str(space_path(settings.space)),
        })
        tracking.log_params(uri, parent, {f"search.{k}": v for k, v in shared.items()})
        client.log_dict(parent, {"settings": asdict(settings), "base_overrides": list(base),
                                 "space": [asdict(p) for p in space]}, "search.json")
        for key, value in (("base_overrides", list(base)), ("settings", shared), ("tracking_uri", uri),
                           ("experiment", experiment), ("parent_run_id", parent)):
            study.set_user_attr(f"opsd.{key}", value)
    out = Path(settings.out_dir).expanduser().resolve() if settings.out_dir else (
        (tracking.sqlite_path(uri).parent if tracking.sqlite_path(uri) else default_home()) / "search" / settings.study)
    return StudyHandle(study, settings, search, space, flatten(base_cfg.to_dict()), uri, experiment, parent, url, out)


