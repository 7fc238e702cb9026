"""The settings of a search (the ``search.*`` keys) and of a grid (``grid.*``), and the names they
choose between. Light on purpose (no Optuna, MLflow or torch): the CLI checks a command line against
them before importing what runs it, so a config error comes in a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opsd_platform.config import ConfigError
from opsd_platform.law.names import CHAMPION, DEFAULT_NAME

PRUNERS = ("law", "median", "none")
STRATEGIES = ("pruned", "ranked")
CURVE_PRUNERS = ("successive_halving", "hyperband")
SAMPLERS = ("random", "tpe")
PARAM_TYPES = ("float", "int", "categorical")


@dataclass
class SearchConfig:
    study: str = field(default="default", metadata={"help": "study name: workers and resumes share it"})
    space: str = field(default="default", metadata={"help": "conf/search/<space>.yaml, or a path to a space YAML"})
    n_trials: int = field(default=12, metadata={"help": "trials of the study, over all workers (completed + pruned + failed)"})
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage URL: sqlite:////abs/optuna.db (default: beside a SQLite MLflow store, else "
                "$OPSD_HOME/optuna.db) or postgresql+psycopg2://user@host:port/db for many workers"})
    pruner: str = field(default="law", metadata={"help": "law (GapLawPruner), median (Optuna MedianPruner) or none"})
    strategy: str = field(default="pruned", metadata={
        "help": "pruned: trials drawn by the sampler, each judged by search.pruner; ranked: the gap law ranks the space's "
                "contexts and trains the most promising first, stopping when none left can win (search/ranked.py)"})
    prior_law: str | None = field(default=None, metadata={
        "help": "ranked: a registered law that replaces startup trials, models:/<name>@<alias> (another family, world or "
                "an earlier study); default: none (the study fits its own)"})
    prior_law_force: bool = field(default=False, metadata={"help": "ranked: use a prior law fitted on another world"})
    inner_contexts: int = field(default=1, metadata={
        "help": "ranked: after the law's ranking, the trials left of n_trials sample the space's other keys inside this "
                "many contexts, the best by measured improvement (search/ranked_run.py)"})
    curve_pruner: str = field(default="successive_halving", metadata={
        "help": "ranked: the curve-based pruner of the inner phase (and where the law may not decide): successive_halving "
                "or hyperband (Optuna's)"})
    sampler: str = field(default="random", metadata={
        "help": "random: seeded per trial number (reproducible, parallel-safe, the same configurations in every "
                "compare arm); tpe: Optuna TPE (seeded per worker process)"})
    seed: int = field(default=0, metadata={"help": "sampler seed (and the pruner's calibration draws)"})
    n_startup_trials: int = field(default=3, metadata={"help": "completed trials before any pruning (law and median)"})
    calibration_rate: float = field(default=0.2, metadata={
        "help": "share of would-be-pruned trials trained anyway (false-prune rate)"})
    threshold: float | None = field(default=None, metadata={
        "help": "fixed bar for the law pruner (default: best completed improvement)"})
    level: float = field(default=0.9, metadata={"help": "prediction-interval level of the law"})
    law_name: str = field(default=DEFAULT_NAME, metadata={"help": "registered law name"})
    law_alias: str = field(default=CHAMPION, metadata={"help": "alias of the law the pruner uses"})
    refit_every: int = field(default=1, metadata={
        "help": "refit + register a challenger law after this many completed trials (0 = never)"})
    median_warmup_steps: int | None = field(default=None, metadata={
        "help": "MedianPruner steps before pruning (default max_steps // 3)"})
    median_window: int = field(default=3, metadata={"help": "steps averaged into each intermediate value (rollout pass rate)"})
    heartbeat_interval: int = field(default=10, metadata={"help": "seconds between a running trial's heartbeats"})
    grace_period: int = field(default=60, metadata={"help": "seconds without a heartbeat before a trial counts as dead"})
    max_retry: int = field(default=2, metadata={"help": "re-runs of a trial whose worker died or was interrupted"})
    prepare_only: bool = field(default=False, metadata={
        "help": "create the storage, study and parent run, then exit (start workers after)"})
    compare: bool = field(default=False, metadata={"help": "run the search three ways (law, median, none) and compare them"})
    out_dir: str | None = field(default=None, metadata={
        "help": "report directory (default: search/<study> beside a SQLite MLflow store)"})

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"search.{key}: {message}")

        check(bool(self.study) and "/" not in self.study, "study", f"must be a non-empty name without '/', got {self.study!r}")
        check(self.n_trials >= 1, "n_trials", f"must be >= 1, got {self.n_trials}")
        check(self.pruner in PRUNERS, "pruner", f"unknown value {self.pruner!r}; valid: {', '.join(PRUNERS)}")
        check(self.strategy in STRATEGIES, "strategy", f"unknown value {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        check(self.prior_law is None or (self.prior_law.startswith("models:/") and "@" in self.prior_law), "prior_law",
              f"must be models:/<name>@<alias>, got {self.prior_law!r}")
        check(self.prior_law is None or self.strategy == "ranked", "prior_law", "needs search.strategy=ranked")
        check(self.inner_contexts >= 1, "inner_contexts", f"must be >= 1, got {self.inner_contexts}")
        check(self.curve_pruner in CURVE_PRUNERS, "curve_pruner",
              f"unknown value {self.curve_pruner!r}; valid: {', '.join(CURVE_PRUNERS)}")
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


@dataclass
class GridConfig:
    spec: str = field(default="benchmark", metadata={"help": "conf/grid/<spec>.yaml, or a path to a grid file"})
    workers: int = field(default=2, metadata={"help": "worker processes to start (0 = run as one worker in this process)"})
    threads: int = field(default=1, metadata={"help": "torch threads per worker (one per core is fastest here)"})
    only: list[str] = field(default_factory=list, metadata={
        "help": "run only these slices, in the order listed (empty = all, in file order)"})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default: grid.db beside a SQLite MLflow store)"})
    exported: str | None = field(
        default="benchmarks/data/runs.csv",
        metadata={"help": "a committed runs.csv whose points count as done (null = none): a session that lost "
                          "its store resumes from the table"},
    )
    max_retry: int = field(default=1, metadata={"help": "re-runs of a point whose worker died"})
    heartbeat_interval: int = field(default=30, metadata={"help": "seconds between a running point's heartbeats"})
    grace_period: int = field(default=180, metadata={"help": "seconds without a heartbeat before a point counts as dead"})
    poll_s: float = field(default=60.0, metadata={"help": "seconds between progress lines while workers run"})
    dry_run: bool = field(default=False, metadata={"help": "list the points and what is done; run nothing"})

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"grid.workers: must be >= 0, got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"grid.threads: must be >= 1, got {self.threads}")
        if self.max_retry < 0:
            raise ConfigError(f"grid.max_retry: must be >= 0, got {self.max_retry}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"grid.grace_period: must be > heartbeat_interval ({self.heartbeat_interval}), "
                              f"got {self.grace_period}")
