"""What identifies a configuration: its hash, the fields that change how a result is computed
but not what, and the world's settings as they enter keys (measurement keys: training/measurements.py).

Every "keeps older hashes" branch below exists so that a field added later leaves the hashes of
configurations recorded before it (bench-v1's points, registered searches) unchanged: a field at
the value every older configuration implicitly had is left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from opsd_platform.config.choices import DEFAULT_PRECISION
from opsd_platform.config.schema import LossConfig, TrainConfig, WorldConfig


def world_fields(world: WorldConfig) -> dict[str, Any]:
    """The world's settings as they enter a key (config_hash, measurement keys): ``grading`` only
    where code is judged by another judge than the one every older key had (``lenient``), so a
    field added later leaves older keys unchanged."""
    d = asdict(world)
    if d["grading"] in (None, "lenient") or d["name"] not in ("code", "pyfunc"):
        d.pop("grading")
    return d


# How, not what: a field marked "how" changes how a result is computed (threads, batch sizes,
# checkpoints, kernels), never the result. `config_hash` leaves every marked field out, and a resume
# may change those marked "resume"; those marked "run" stay fixed for a run's life.
HOW_LEVELS = ("resume", "run")


def how_fields(level: str | None = None) -> dict[str, str]:
    """{"section.key": level} of the fields marked how-not-what (only `level`'s when given)."""
    out: dict[str, str] = {}
    for f in fields(TrainConfig):
        if not (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
            continue  # not a section
        for sub in fields(f.default_factory):
            mark = sub.metadata.get("how")
            if mark is not None and mark not in HOW_LEVELS:
                raise ValueError(f"{f.name}.{sub.name}: how mark {mark!r}; valid: {', '.join(HOW_LEVELS)}")
            if mark is not None and (level is None or mark == level):
                out[f"{f.name}.{sub.name}"] = mark
    return out


def config_hash(cfg: TrainConfig) -> str:
    """Short hash of what defines a configuration: everything but the seed, where it is logged,
    and settings that change how it is computed, not what (threads, progress bar, checkpoints,
    prefix sharing, batch sizes of the gap). Runs with equal hashes differ only by seed. An OPSD
    configuration hashes without ``algorithm`` and GRPO's loss options (as before they existed); a
    GRPO one without the teacher's settings (context, teacher, OPSD's loss options), which it never reads."""
    d = cfg.to_dict()
    d.pop("seed")
    d.pop("tracking")
    if cfg.context != "graded":  # only the graded context reads it; dropping it keeps older hashes
        d.pop("graded_fraction")
    for name in how_fields():  # how, not what (the fields' "how" mark): never in the hash
        section, key = name.split(".")
        d[section].pop(key)
    d.pop("resume")
    if cfg.model.template is None:  # the model's own prompt form, as every older configuration
        d["model"].pop("template")
    if not cfg.rollout.stop:  # no stop rule, as every older configuration
        d["rollout"].pop("stop")
    if cfg.gap.sampling == "rollout":  # the gap at the rollout temperature, as every older configuration
        d["gap"].pop("sampling")
    if cfg.context_form == 1:  # bench-v1's wording: dropping the field keeps its hashes
        d.pop("context_form")
    if d["trainer"]["precision"] == DEFAULT_PRECISION:  # fp32, as every older configuration: keeps their hashes
        d["trainer"].pop("precision")
    if d["trainer"]["devices"] == 1:  # more ranks sample more problems per step; one keeps older hashes
        d["trainer"].pop("devices")
    d["world"] = world_fields(cfg.world)
    if cfg.algorithm == "opsd":  # the default: dropping the field and GRPO's options keeps older hashes
        d.pop("algorithm")
        for key in LossConfig.GRPO_FIELDS:
            d["loss"].pop(key)
    else:  # GRPO: drop what it does not read (the teacher's settings), and its options at their defaults
        for key in ("context", "graded_fraction", "teacher", "context_form"):
            d.pop(key, None)
        defaults = LossConfig()
        d["loss"] = {k: v for k, v in d["loss"].items()
                     if k in LossConfig.GRPO_FIELDS and v != getattr(defaults, k)}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
