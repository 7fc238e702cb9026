"""The law stage's settings: the ``calibrate.*``, ``law.*`` and ``export.*`` keys and those of
``opsd law show|promote``. Light on purpose (dataclasses, the config layer, names.py): the CLI checks
a command line against them before importing pandas or MLflow, so a config error comes in a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opsd_platform.config import ConfigError, TrackingConfig
from opsd_platform.law.names import DEFAULT_NAME, METHODS


@dataclass
class CalibrateConfig:
    name: str = field(default="default", metadata={"help": "calibration name: resuming matches on it"})
    contexts: list[str] = field(
        default_factory=lambda: ["none", "static", "feedback", "peer_solution", "reference"],
        metadata={"help": "context types of the grid"},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "seeds per configuration"})
    worlds: list[str] = field(default_factory=list, metadata={"help": "world config groups (empty: the base one)"})
    models: list[str] = field(default_factory=list, metadata={"help": "model config groups (empty: the base one)"})

    def __post_init__(self) -> None:
        if not self.contexts:
            raise ConfigError("calibrate.contexts: must list at least one context type")
        if not self.seeds:
            raise ConfigError("calibrate.seeds: must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"calibrate.seeds: duplicate seeds in {self.seeds}")


@dataclass
class FitLawConfig:
    experiment: str = field(default="opsd", metadata={"help": "experiment holding the training runs"})
    calibration: str | None = field(default=None, metadata={"help": "only points of this calibration name"})
    calibrations: list[str] = field(
        default_factory=list,
        metadata={"help": "only points of these calibration names (with `calibration`, of any of them), "
                          "e.g. one per model family"},
    )
    method: str = field(default="ols", metadata={"help": "ols, wls (by seed variance) or hc3"})
    level: float = field(default=0.9, metadata={"help": "prediction-interval level"})
    covariates: list[str] = field(default_factory=list, metadata={"help": "extra regressors, e.g. context_tokens"})
    holdout_groups: list[str] = field(
        default_factory=lambda: ["context", "world", "family"], metadata={"help": "grouped hold-out columns"}
    )
    name: str = field(default=DEFAULT_NAME, metadata={"help": "registered model name"})
    register: bool = field(default=True, metadata={"help": "register the fitted law"})
    promote: bool = field(default=False, metadata={"help": "promote to @champion if hold-out error is lower"})
    out_dir: str | None = field(default=None, metadata={
        "help": "where the plot and tables go (default: law/ beside a SQLite store)"})
    table: str | None = field(
        default=None,
        metadata={"help": "fit on an exported table (a directory holding runs.csv, or the file) "
                          "instead of the store's runs"},
    )
    slices: list[str] = field(
        default_factory=list,
        metadata={"help": "with law.table: only rows of these grid slices (empty = all), e.g. [law-arithmetic]"},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"law.method: unknown value {self.method!r}; valid: {', '.join(METHODS)}")
        if not 0 < self.level < 1:
            raise ConfigError(f"law.level: must be in (0, 1), got {self.level}")


@dataclass
class ExportConfig:
    grid: str | None = field(default="bench-v1", metadata={
        "help": "the grid's name (grid files' 'name'); null = every train run with a gap"})
    out: str = field(default="benchmarks/data", metadata={"help": "directory of the three CSV files (merged into)"})


@dataclass
class LawCommandConfig:
    """`opsd law show|promote`: which registered law, and for promote which version."""

    name: str = field(default=DEFAULT_NAME, metadata={"help": "the registered model's name"})
    version: str | None = field(default=None, metadata={
        "help": "promote: the version to make @champion (default: @challenger's)"})
    force: bool = field(default=False, metadata={
        "help": "promote: even when the challenger is not better on held-out data"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
