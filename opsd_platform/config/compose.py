"""Hydra composition: ``conf/<name>.yaml`` + command-line overrides -> validated dataclasses.

Uses Hydra's compose API (not ``@hydra.main``: no working-directory change, no output folders,
and a search or calibration can compose one config per trial in-process). The dataclasses of
``opsd_platform.config`` are bound to Hydra's ConfigStore as ``train_schema``, so every field can
be overridden by name and types are checked while composing; each command's own section (``search.``,
``calibrate.``, ``law.``, ``grid.``, ...) is composed the same way from its dataclass, stored as
``opsd_section_<name>``. Every problem is a ``ConfigError``
whose one-line message names the key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from opsd_platform.config import ConfigError, TrainConfig, flatten


def conf_dir() -> Path:
    here = Path(os.environ.get("OPSD_CONF_DIR") or Path(__file__).resolve().parents[2] / "conf")
    if not (here / "train.yaml").exists():
        raise ConfigError(f"config directory {here} has no train.yaml; set OPSD_CONF_DIR to the project's conf/")
    return here


def compose(config_name: str, overrides: Sequence[str], schema: type | None = None, section: str = ""):
    """Compose `conf/<config_name>.yaml` (or a node of Hydra's ConfigStore) with command-line
    overrides into an OmegaConf object. `schema` (under the key `section`, when given), if any,
    names the valid keys in the message for an unknown one."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        unknown = _unknown_override(exc, schema, section) if schema is not None else None
        if unknown:
            raise ConfigError(unknown) from None
        message = str(exc).split("Config search path")[0]  # Hydra appends its search path: noise here
        if exc.__cause__ is not None:  # e.g. "Error merging override x=y" hides the why in its cause
            message += f": {str(exc.__cause__).splitlines()[0]}"
        raise ConfigError(f"bad config override: {' '.join(message.split())}") from None


def _unknown_override(exc: Exception, schema: type, section: str = "") -> str | None:
    """The message for an override of a key the schema does not have, naming the valid keys
    (Hydra's own suggests `+key=value`, which `_reject_unknown_keys` then refuses)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not key:
        return None
    parts = key.split(".")
    if section:  # a section's node is {section: schema}
        if parts[0] != section:
            return None
        parts = parts[1:]
    for name in parts[:-1]:
        sub = {f.name: f.default_factory for f in dataclasses.fields(schema)}.get(name)
        if not (isinstance(sub, type) and dataclasses.is_dataclass(sub)):
            return None
        schema = sub
    valid = ", ".join(f.name for f in dataclasses.fields(schema))
    return f"config error: unknown key {key}; valid keys here: {valid}"


def _register_schemas() -> None:
    """Bind the dataclasses to Hydra's ConfigStore, so every field can be overridden by name
    (not only those the YAML files spell out) and types are checked while composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def to_train_config(cfg) -> TrainConfig:
    """Merge a composed config onto TrainConfig; unknown keys / wrong types / bad values -> ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        _reject_unknown_keys(OmegaConf.to_container(merged), TrainConfig)
        return _check_tracking(OmegaConf.to_object(merged))
    except ConfigError as exc:
        raise ConfigError(f"config error: {exc}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config error: {str(exc).splitlines()[0]} ({_where(exc)})") from None


def _reject_unknown_keys(values: dict, schema: type, prefix: str = "") -> None:
    """OmegaConf quietly keeps keys added with `+key=...`; a typo must not be silently ignored."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}{key}; valid keys here: {', '.join(fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and sub is not None and dataclasses.is_dataclass(sub):
            _reject_unknown_keys(value, sub, f"{prefix}{key}.")


def _where(exc) -> str:
    key = getattr(exc, "full_key", None)
    return f"key {key}" if key else "see conf/ and opsd_platform/config/schema.py"


def train_config(overrides: Sequence[str]) -> TrainConfig:
    """The validated `opsd train` config for these overrides."""
    return to_train_config(compose("train", overrides, schema=TrainConfig))


def with_overrides(cfg: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """`cfg` with the dotted keys of `values` set (a trial's sampled keys, a point's context and seed):
    typed, and validated as a composed config is (OmegaConf's type checks, then every section's
    own checks), without composing the command line again. Leaf keys only: a config group
    (``model=tiny``, ``world=pyfunc``) picks a preset, which only composing from conf/ can do."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    valid = set(flatten(cfg.to_dict()))
    node = OmegaConf.structured(cfg)
    try:
        for key, value in values.items():
            if key not in valid:
                raise ConfigError(f"unknown key {key} (not a training-config key)")
            OmegaConf.update(node, key, value, merge=False)
        return OmegaConf.to_object(node)
    except ConfigError as exc:
        raise ConfigError(f"config error: {exc}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config error: {str(exc).splitlines()[0]} ({_where(exc)})") from None


def given_keys(overrides: Sequence[str], keys: Collection[str]) -> list[str]:
    """The overrides (as given) that set one of `keys`: those a command sets itself."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]


@dataclasses.dataclass
class CommandLine:
    """A command line composed once into typed configs."""

    configs: dict[str, Any]  # section name -> its dataclass; "train" -> the TrainConfig, when the command takes one
    words: dict[str, list[str]]  # section name -> its overrides as given (to start a worker process with them)
    rest: list[str]  # the training overrides as given: records (a study's, a calibration's), config-group presets


def parse_command(sections: Sequence[tuple[str, type]], overrides: Sequence[str], train: bool) -> CommandLine:
    """Each `(section, dataclass)` composed from its ``section.key=value`` overrides, then (`train`) the
    TrainConfig from the overrides left. Every value checked; the first problem is a ConfigError."""
    rest, out = list(overrides), CommandLine({}, {}, [])
    for name, schema in sections:
        out.words[name], rest = split_section(rest, name)
        out.configs[name] = section_config(schema, name, out.words[name])
    out.rest = rest
    if train:
        out.configs["train"] = train_config(rest)
    return out


def split_section(overrides: Sequence[str], section: str) -> tuple[list[str], list[str]]:
    """(overrides of `section.` keys, the rest): sections that are not part of the train config."""
    mine = [o for o in overrides if o.lstrip("+").startswith(section + ".")]
    return mine, [o for o in overrides if o not in mine]


def section_config(schema: type, section: str, overrides: Sequence[str]):
    """The `section` dataclass (search, calibrate, law, grid, ...) composed by Hydra from the
    `section.key=value` overrides among `overrides`: the same override grammar, type checks and
    messages as the train config (one config path), the dataclass's defaults as the only defaults.
    The section's schema is a node of Hydra's ConfigStore, ``{section: schema}``; with ``section=""``
    the schema is a command's whole config (``opsd law``: ``name=... version=...``)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    mine = split_section(overrides, section)[0] if section else list(overrides)
    node = f"opsd_section_{section or schema.__name__}"
    ConfigStore.instance().store(name=node, node={section: schema} if section else schema)
    composed = compose(node, mine, schema=schema, section=section)
    values = composed[section] if section else composed
    prefix = f"{section}." if section else ""
    try:
        _reject_unknown_keys(OmegaConf.to_container(values), schema, prefix)
    except ConfigError as exc:  # a key added with `+section.key=...`
        raise ConfigError(f"config error: {exc}") from None
    try:
        config = OmegaConf.to_object(values)  # the dataclass's own checks raise ConfigError as they are
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f"{prefix}{key}" if key else f"section {section or schema.__name__}"
        raise ConfigError(f"config error: {where}: {str(exc).splitlines()[0]}") from None
    try:
        return _check_tracking(config, prefix)
    except ConfigError as exc:
        raise ConfigError(f"config error: {exc}") from None


def _check_tracking(config, prefix: str = ""):
    """`config` unless its tracking section (or itself, one) names no experiment: MLflow would
    refuse it only once the model is loaded and the run about to open."""
    from opsd_platform.config import TrackingConfig

    tracking = config if isinstance(config, TrackingConfig) else getattr(config, "tracking", None)
    if isinstance(tracking, TrackingConfig) and not tracking.experiment.strip():
        key = prefix.rstrip(".") if isinstance(config, TrackingConfig) else f"{prefix}tracking"
        raise ConfigError(f"{key}.experiment: must not be empty (default: opsd)")
    return config


def describe_fields(schema: type, prefix: str = "") -> list[str]:
    """One line per field of a config dataclass (sections walked): ``key = default  help``, with
    ``[how]`` on the fields that change how a result is computed, not what (config_hash ignores them)."""
    lines: list[str] = []
    instance = schema()
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe_fields(type(value), name + ".")
            continue
        mark = "  [how]" if f.metadata.get("how") else ""
        lines.append(f"  {name} = {value!r}{mark}\n      {f.metadata.get('help', '')}".rstrip())
    return lines
