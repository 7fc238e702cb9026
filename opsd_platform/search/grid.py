"""`opsd grid`: a recorded benchmark's grid of (configuration x seed) points, run by any number of
worker processes sharing one Optuna queue.

    conf/grid/<name>.yaml --points()--> [GridPoint]  (each config composed and validated first)
        --prepare()--> an Optuna study in an RDB storage, one WAITING trial per point not yet done
        --run_worker()--> each worker pops the oldest waiting trial, trains its point (train.py),
                          and the run's improvement is the trial's value

Why Optuna's storage and not a scheduler of our own: the queue (enqueued trials, popped oldest
first), the crash detection (heartbeats: a worker killed with SIGKILL stops beating and its trial
is marked FAIL after ``grace_period`` by whichever worker looks next) and the retry
(``RetryHeartbeatStaleTrialCallback``: the dead trial is re-enqueued once, ``max_retry``) all
exist there, across processes and machines (SQLite here; PostgreSQL for several machines).
Workers join or leave at any time; re-running the command resumes: points whose run is FINISHED
in the MLflow store, or already exported to the committed table (``grid.exported``), are not
trained again.

Each point is an ordinary training run (kind=train, gap measured first) tagged ``grid.name``,
``grid.slice``, ``grid.key`` and ``calibrate.name=<grid>/<slice>`` (so ``opsd fit-law
law.calibrations=[...]`` reads a slice straight from the store). Its initial validation and gap
come from the measurement store whenever another point already measured them (measurements.py).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.config import ConfigError, TrainConfig, config_hash, default_home, flatten
from opsd_platform.config.compose import conf_dir, train_config
from opsd_platform.process import quiet_libraries
from opsd_platform.runs.gate import Gate
from opsd_platform.search.settings import GridConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridPoint:
    """One (configuration, seed) of the grid: what to train and the key it is known by."""

    key: str  # "<slice>/<config hash>/seed<seed>": stable across sessions while config_hash is
    slice: str
    overrides: tuple[str, ...]  # base + slice + configuration + seed, as `opsd train` takes them
    seed: int
    config: str  # the config hash


# ----------------------------------------------------------------------------- the grid file


def spec_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path.resolve()
    return conf_dir() / "grid" / f"{spec}.yaml"


def load_spec(spec: str) -> dict:
    path = spec_path(spec)
    if not path.is_file():
        shipped = sorted(p.stem for p in (conf_dir() / "grid").glob("*.yaml"))
        raise ConfigError(f"grid.spec: no grid file {path} (shipped: {', '.join(shipped) or 'none'})")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"grid.spec: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("slices"), list) or not doc.get("name"):
        raise ConfigError(f"grid.spec: {path} must have a 'name' and a list of 'slices'")
    for i, s in enumerate(doc["slices"]):
        where = f"{path}: slices[{i}]"
        if not isinstance(s, dict) or not s.get("name"):
            raise ConfigError(f"{where}: each slice needs a 'name'")
        if ("configs" in s) == ("draw" in s):
            raise ConfigError(f"{where} ({s['name']}): give exactly one of 'configs' (a list of override lists) "
                              "or 'draw' ({space, n, seed})")
    doc["path"] = str(path)
    return doc


def draw_configs(space: str, n: int, seed: int, base: Sequence[str]) -> list[list[str]]:
    """n configurations drawn from a search space by Optuna's RandomSampler(seed): the same draw
    a random search of that space makes, reproducible from (space, n, seed)."""
    from opsd_platform.search.space import load_space, sample, to_overrides

    params_space = load_space(space)
    base_values = flatten(train_config(list(base)).to_dict())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(n):
        trial = study.ask()
        drawn.append(to_overrides(sample(trial, params_space, base_values)))
        study.tell(trial, 0.0)
    return drawn


def point_overrides(spec: dict, grid_slice: dict, conf: Sequence[str], seed: int,
                    user_overrides: Sequence[str] = ()) -> tuple[str, ...]:
    """A point's overrides, as `opsd train` takes them: the spec's base, the slice's, the configuration's,
    the user's (e.g. tracking.uri), the seed. Words, not a config: a slice picks config-group presets
    (world=..., model=...), which only composing conf/ applies, and a worker process composes them again."""
    base = [*spec.get("base", []), *grid_slice.get("overrides", [])]
    return (*base, *conf, *user_overrides, f"seed={seed}", "gap.enabled=true")


def points(spec: dict, user_overrides: Sequence[str] = (), only: Sequence[str] = ()) -> list[GridPoint]:
    """Every point of the grid, in order (slice, seed, configuration): slices in file order, or in
    the order `only` lists them (so a user can put the slice they need first); within a slice every
    configuration's first seed comes before any second seed, so a grid stopped half-way already
    holds one seed of the whole slice (a law can be fitted on it). Every config is composed and
    validated before anything runs. User overrides come last (e.g. tracking.uri)."""
    unknown = set(only) - {s["name"] for s in spec["slices"]}
    if unknown:
        raise ConfigError(f"grid.only: unknown slice(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(s['name'] for s in spec['slices'])}")
    by_name = {s["name"]: s for s in spec["slices"]}
    out: list[GridPoint] = []
    for s in [by_name[name] for name in dict.fromkeys(only)] if only else spec["slices"]:
        base = [*spec.get("base", []), *s.get("overrides", [])]
        configs = s["configs"] if "configs" in s else draw_configs(
            s["draw"]["space"], int(s["draw"]["n"]), int(s["draw"].get("seed", 0)), [*base, *user_overrides])
        for seed in s.get("seeds", spec.get("seeds", [0])):
            for conf in configs:
                overrides = point_overrides(spec, s, conf, seed, user_overrides)
                try:
                    cfg = train_config(list(overrides))
                except ConfigError as exc:
                    raise ConfigError(f"{spec['path']}: slice {s['name']}, configuration {conf}: {exc}") from None
                h = config_hash(cfg)
                out.append(GridPoint(f"{s['name']}/{h}/seed{seed}", s["name"], overrides, int(seed), h))
    keys = [p.key for p in out]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"{spec['path']}: the same point twice (equal configuration and seed): {', '.join(dupes[:3])}")
    return out


# ----------------------------------------------------------------------------- what is done


def finished_runs(uri: str, experiment: str, grid: str) -> dict[str, dict[str, Any]]:
    """Point key -> {run_id, improvement} of the grid's FINISHED runs in the MLflow store."""
    client = tracking.init_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.`grid.name` = '{grid}' AND attributes.status = 'FINISHED'",
                              max_results=50000)
    return {r.data.tags["grid.key"]: {"run_id": r.info.run_id, "improvement": r.data.metrics.get("improvement")}
            for r in runs if "grid.key" in r.data.tags and "improvement" in r.data.metrics}


def exported_points(path: str | None, grid: str) -> dict[str, dict[str, Any]]:
    """Point key -> {run_id, improvement} of the rows of an exported runs.csv from this grid."""
    if not path or not Path(path).is_file():
        return {}
    import pandas as pd

    table = pd.read_csv(path)
    if "point" not in table or "grid" not in table:
        return {}
    rows = table[table["grid"] == grid]
    return {r.point: {"run_id": r.run_id, "improvement": float(r.improvement)} for r in rows.itertuples()}


# ----------------------------------------------------------------------------- the queue


def default_storage(uri: str) -> str:
    """The grid's queue: grid.db where a search keeps optuna.db."""
    from opsd_platform.search.study import default_storage as beside_store

    return beside_store(uri, "grid.db")


class RetryDeadPoint:
    """A point whose worker stopped beating: its MLflow run FAILED with the reason, and the point
    re-enqueued (at most ``max_retry`` times) by Optuna's RetryHeartbeatStaleTrialCallback, given a
    copy that keeps only the point's key (nothing of the lost attempt)."""

    def __init__(self, uri: str, max_retry: int) -> None:
        self.uri = uri
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("run_id")
        reason = f"grid worker {trial.user_attrs.get('worker', '?')} lost (no heartbeat)"
        if run_id:
            try:
                from mlflow.tracking import MlflowClient

                if MlflowClient(tracking_uri=self.uri).get_run(run_id).info.status == "RUNNING":
                    tracking.fail_run(self.uri, run_id, f"{reason}; point re-queued")
            except Exception as exc:  # the retry matters more than the bookkeeping
                log.error("could not mark run %s failed: %s", run_id, exc)
        clean = copy.deepcopy(trial)
        clean.user_attrs = {"point": trial.user_attrs["point"], "retry_of": trial.number}
        self.retry(study, clean)
        log.warning("point %s (trial #%d): %s; re-queued", trial.user_attrs.get("point"), trial.number, reason)


def open_study(spec: dict, settings: GridConfig, uri: str) -> optuna.Study:
    from opsd_platform.search.settings import SearchConfig
    from opsd_platform.search.study import open_storage

    url = settings.storage or default_storage(uri)
    storage_settings = SearchConfig(heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period)
    storage = open_storage(url, storage_settings, RetryDeadPoint(uri, settings.max_retry))
    return optuna.create_study(storage=storage, study_name=f"grid-{spec['name']}", direction="maximize",
                               load_if_exists=True)


def queued_keys(study: optuna.Study) -> set[str]:
    """Keys of points that have a waiting, running or finished trial (a FAILed one whose retry
    is queued counts through the retry)."""
    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    return {t.user_attrs["point"] for t in study.get_trials(deepcopy=False, states=live) if "point" in t.user_attrs}


def prepare(spec: dict, grid_points: Sequence[GridPoint], settings: GridConfig, uri: str, experiment: str) -> optuna.Study:
    """Open the study and enqueue every point that is neither done nor queued (run once, before
    the workers start; running it again adds what is missing, e.g. after a FAILED point)."""
    client = tracking.init_store(uri)  # the MLflow schema once, before several workers race for it
    tracking.ensure_experiment(client, uri, experiment)
    tracking.ensure_experiment(client, uri, f"{experiment}-measurements")
    study = open_study(spec, settings, uri)
    done = {**exported_points(settings.exported, spec["name"]), **finished_runs(uri, experiment, spec["name"])}
    queued = queued_keys(study)
    for p in grid_points:
        if p.key not in queued and p.key not in done:
            study.enqueue_trial({}, user_attrs={"point": p.key})
    return study


# ----------------------------------------------------------------------------- a worker


class RunNamer(Gate):
    """The grid's trial gate: names the point's MLflow run on its trial once the gap is logged, so
    the run of a worker that dies while training is found (and reported) from the queue."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_gap(self, run_id: str, gap) -> None:
        self.trial.set_user_attr("run_id", run_id)


class Objective:
    """Train one point (or return its recorded result when it is already done)."""

    def __init__(self, spec: dict, by_key: dict[str, GridPoint], settings: GridConfig, uri: str, experiment: str,
                 progress: Callable[[str], None], user_overrides: Sequence[str] = ()) -> None:
        self.spec, self.by_key, self.settings, self.user_overrides = spec, by_key, settings, list(user_overrides)
        self._configs: dict[str, TrainConfig] = {}
        self.uri, self.experiment, self.progress = uri, experiment, progress

    def __call__(self, trial: optuna.Trial) -> float:
        from opsd_platform.errors import RunInterrupted
        from opsd_platform.runs.train import train

        key = trial.user_attrs.get("point")
        if key is not None and key not in self.by_key:  # queued by a newer grid file than this worker read
            self.by_key = {p.key: p for p in points(load_spec(self.spec["path"]), self.user_overrides)}
        if key is None or key not in self.by_key:  # asked as the queue ran dry, or a point no longer in the file
            raise optuna.TrialPruned(f"not a point of this grid: {key}")
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        done = {**exported_points(self.settings.exported, self.spec["name"]),
                **finished_runs(self.uri, self.experiment, self.spec["name"])}
        if key in done:  # a duplicate (another worker finished it meanwhile): nothing to train
            trial.set_user_attr("run_id", done[key]["run_id"])
            trial.set_user_attr("reused", True)
            return float(done[key]["improvement"])
        point = self.by_key[key]
        cfg = self.config(point)
        tags = {"grid.name": self.spec["name"], "grid.slice": point.slice, "grid.key": key,
                "grid.trial": str(trial.number), "calibrate.name": f"{self.spec['name']}/{point.slice}",
                "calibrate.key": key}
        self.progress(f"point {key}: gap, then {cfg.trainer.max_steps} steps (trial #{trial.number})")
        try:
            result = train(cfg, extra_tags=tags, gate=RunNamer(trial))
        except RunInterrupted:  # SIGTERM / Ctrl-C: the point goes back to the queue, this worker stops
            trial.study.enqueue_trial({}, user_attrs={"point": key, "interrupted": trial.number})
            raise KeyboardInterrupt from None
        trial.set_user_attr("run_id", result.run_id)
        self.progress(f"point {key}: gap {result.gap.gap:+.3f}, improvement {result.improvement:+.3f} "
                      f"({result.seconds:.0f} s)")
        return float(result.improvement)

    def config(self, point: GridPoint) -> TrainConfig:
        """The point's config, composed once per worker: a worker keeps training what it read at
        its start even if conf/ changes meanwhile (a new key in a YAML file would otherwise fail
        every later point of a worker whose schema predates it)."""
        if point.key not in self._configs:
            self._configs[point.key] = train_config([*point.overrides, f"trainer.num_threads={self.settings.threads}",
                                                     "trainer.progress_bar=false", "trainer.checkpoint_every=0"])
        return self._configs[point.key]

    def compose_all(self) -> None:
        for point in self.by_key.values():
            self.config(point)


def run_worker(study: optuna.Study, objective: Objective, poll_s: float = 10.0) -> int:
    """Pop and run points until none is waiting or running (waiting for running ones, so a dead
    worker's point is retried by someone); returns how many this worker ran."""
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))]
        if TrialState.WAITING in states:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            ran += 1
        elif TrialState.RUNNING in states:
            time.sleep(poll_s)
        else:
            return ran


# ----------------------------------------------------------------------------- the command


@dataclass
class GridStatus:
    total: int
    done: int
    running: list[str]
    failed: list[str]


def status(study: optuna.Study, grid_points: Sequence[GridPoint], uri: str, experiment: str, settings: GridConfig,
           name: str) -> GridStatus:
    done = {**exported_points(settings.exported, name), **finished_runs(uri, experiment, name)}
    keys = {p.key for p in grid_points}
    trials = study.get_trials(deepcopy=False)
    running = [t.user_attrs.get("point", "?") for t in trials if t.state == TrialState.RUNNING]
    again = queued_keys(study)  # a failed point that is queued again (retried, interrupted) is not failed
    failed = sorted({t.user_attrs.get("point", "?") for t in trials if t.state == TrialState.FAIL
                     and t.user_attrs.get("point") not in done and t.user_attrs.get("point") not in again})
    return GridStatus(len(keys), len(keys & set(done)), running, failed)


def worker_command(overrides: Sequence[str], grid_overrides: Sequence[str]) -> list[str]:
    """A worker process's command line: the overrides as given cross the process boundary as words."""
    kept = [o for o in grid_overrides if not o.lstrip("+").startswith("grid.workers=")]
    return [sys.executable, "-m", "opsd_platform.cli", "grid", *kept, *overrides, "grid.workers=0"]


def run_grid(overrides: Sequence[str], settings: GridConfig, progress: Callable[[str], None] = print,
             grid_overrides: Sequence[str] = ()) -> GridStatus:
    """Prepare the queue, then run `settings.workers` worker processes (started with `overrides`
    and `grid_overrides`, the grid.* keys), or be the one worker."""
    quiet_libraries()  # again, now that Optuna is loaded: its log level (process.py)
    spec = load_spec(settings.spec)
    grid_points = points(spec, overrides, settings.only)
    first = train_config(list(grid_points[0].overrides)) if grid_points else train_config(list(overrides))
    uri, experiment = first.tracking.resolved_uri(), first.tracking.experiment
    if settings.dry_run:  # nothing is created or queued
        done = {**exported_points(settings.exported, spec["name"]), **finished_runs(uri, experiment, spec["name"])}
        for p in grid_points:
            shown = " ".join(o for o in p.overrides if o not in spec.get("base", []))
            progress(f"  {'done' if p.key in done else '    '}  {p.key}  {shown}")
        return GridStatus(len(grid_points), sum(p.key in done for p in grid_points), [], [])
    study = prepare(spec, grid_points, settings, uri, experiment)
    st = status(study, grid_points, uri, experiment, settings, spec["name"])
    progress(f"grid {spec['name']} ({spec['path']}): {st.total} points, {st.done} done, storage "
             f"{settings.storage or default_storage(uri)}, MLflow {uri}")
    if settings.workers == 0:
        objective = Objective(spec, {p.key: p for p in grid_points}, settings, uri, experiment, progress, overrides)
        objective.compose_all()
        run_worker(study, objective)
        return status(study, grid_points, uri, experiment, settings, spec["name"])
    db = tracking.sqlite_path(uri)
    logs = (db.parent if db else default_home()) / "grid-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)}
    procs = []
    for i in range(settings.workers):
        out = open(logs / f"{spec['name']}-worker{i}-{time.strftime('%Y%m%d-%H%M%S')}.log", "w")
        procs.append((subprocess.Popen(worker_command(overrides, grid_overrides), stdout=out, stderr=subprocess.STDOUT, env=env), out))
    progress(f"started {len(procs)} workers x {settings.threads} thread(s); logs in {logs}")
    started = time.time()

    def stop(signum, frame):  # SIGTERM to this process: stop the workers the same way as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(settings.poll_s)
            st = status(study, grid_points, uri, experiment, settings, spec["name"])
            progress(f"[{time.strftime('%H:%M:%S')}] {st.done}/{st.total} done, running: {', '.join(st.running) or '-'}"
                     f"{f', failed: {len(st.failed)}' if st.failed else ''} ({(time.time() - started) / 60:.0f} min)")
    except KeyboardInterrupt:
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, out in procs:
            out.close()
    return status(study, grid_points, uri, experiment, settings, spec["name"])
