"""The search space: ``conf/search/<name>.yaml`` keys with their distributions, sampled in order
(``when`` makes a key conditional on earlier ones), and the per-trial-seeded sampler.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import yaml
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from opsd_platform.config import ConfigError, TrainConfig, flatten
from opsd_platform.config.compose import conf_dir
from opsd_platform.search.settings import PARAM_TYPES


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
            raise ConfigError(f"{at}: not a training-config key (see opsd_platform/config/schema.py)")
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


