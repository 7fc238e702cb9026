"""The search space: ``conf/search/<name>.yaml`` keys with their distributions, sampled in order
(``when`` makes a key conditional on earlier ones), and the per-trial-seeded sampler.

A space may also list whole configurations (``configs:``, each a list of overrides): a trial then
first picks one of them (the categorical parameter ``config``, its overrides joined by spaces) and
samples the ``space:`` keys after it. That is how a search runs over configurations a table holds
(benchmarks/live_search.py searches a recorded grid slice this way).
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
    configs: tuple[tuple[tuple[str, Any], ...], ...] = ()  # type "configs": each choice's (key, value) pairs

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


CONFIG_PARAM = "config"  # the trial parameter of a space's `configs:` list


def parse_configs(configs: Any, valid_keys: set[str], where: str) -> Param:
    """The `configs:` list as one categorical `Param` (choices: each configuration's overrides
    joined by spaces; values parsed as YAML, as Hydra would)."""
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"{where}: configs: expected a non-empty list of configurations (lists of key=value)")
    labels, parsed = [], []
    for i, conf in enumerate(configs):
        at = f"{where}: configs[{i}]"
        if not isinstance(conf, list) or not conf or not all(isinstance(o, str) and "=" in o for o in conf):
            raise ConfigError(f"{at}: expected a non-empty list of key=value overrides, got {conf!r}")
        pairs = []
        for o in conf:
            key, value = o.split("=", 1)
            if key not in valid_keys:
                raise ConfigError(f"{at}: {key!r} is not a training-config key (see opsd_platform/config/schema.py)")
            pairs.append((key, yaml.safe_load(value) if value else value))
        label = " ".join(conf)
        if label in labels:
            raise ConfigError(f"{at}: the same configuration twice ({label})")
        labels.append(label)
        parsed.append(tuple(pairs))
    return Param(CONFIG_PARAM, "configs", choices=tuple(labels), configs=tuple(parsed))


def parse_space(doc: Any, where: str) -> list[Param]:
    """Validated `Param`s from a space document ({"space": {key: spec}}, and/or {"configs": [[...], ...]},
    which is sampled first); errors name the file and key."""
    has_configs = isinstance(doc, dict) and "configs" in doc
    if not isinstance(doc, dict) or not (has_configs or isinstance(doc.get("space"), dict) and doc["space"]):
        raise ConfigError(f"{where}: expected a mapping 'space:' with at least one key (or a 'configs:' list)")
    if not isinstance(doc.get("space", {}) or {}, dict):
        raise ConfigError(f"{where}: space: expected a mapping of keys, got {doc['space']!r}")
    valid_keys = set(flatten(TrainConfig().to_dict()))
    params: list[Param] = [parse_configs(doc["configs"], valid_keys, where)] if has_configs else []
    in_configs = {k for p in params for pairs in p.configs for k, _ in pairs}
    for key, spec in (doc.get("space") or {}).items():
        at = f"{where}: space.{key}"
        if key not in valid_keys:
            raise ConfigError(f"{at}: not a training-config key (see opsd_platform/config/schema.py)")
        if key in in_configs:
            raise ConfigError(f"{at}: also set by the configs: list (a key is either picked with a configuration or sampled)")
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
    """Sample the active keys of `space` in order; returns {key: value} of the sampled ones (a
    picked configuration's keys included, not the `config` parameter itself)."""
    values = dict(base_values)
    chosen: dict[str, Any] = {}
    for p in space:
        if not p.active(values):
            continue
        if p.type == "configs":  # a whole configuration: its keys join the values, as if sampled
            pairs = p.configs[p.choices.index(trial.suggest_categorical(p.key, list(p.choices)))]
            values.update(pairs)
            chosen.update(pairs)
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


