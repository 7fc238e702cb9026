"""What identifies a configuration: its hash, the fields that change how a result is computed
but not what, and the world's settings as they enter keys (measurement keys: gap/measurements.py).

A field added to the config after configurations were recorded (bench-v1's points, registered
searches) must leave their hashes unchanged: it is declared in ``ADDED`` with the value every older
configuration implicitly had, and left out of the hash at that value. One rule, one table; a field
added without a line there changes every hash (tests/config/test_recorded_keys.py pins the recorded ones).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Callable

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


@dataclass(frozen=True)
class Added:
    """A field added after hashes were recorded: the hash version that added it, and the value every
    configuration before it implicitly had (at that value the field is left out of the hash)."""

    version: int
    absent: Any


# Version 1 is every field config_hash read when it was introduced; each later version added these.
# A new field gets a line here (the next version) unless it is marked how-not-what (HOW_LEVELS).
ADDED: dict[str, Added] = {
    "trainer.devices": Added(2, 1),  # more ranks sample more problems per step
    "algorithm": Added(3, "opsd"),  # GRPO beside OPSD; its loss options at their defaults: as before them
    **{f"loss.{key}": Added(3, getattr(LossConfig(), key)) for key in LossConfig.GRPO_FIELDS},
    "trainer.precision": Added(4, DEFAULT_PRECISION),  # fp32 matmuls
    "context_form": Added(5, 1),  # bench-v1's wording of the contexts (the default is now 2)
    "rollout.stop": Added(6, []),  # no stop rule
    "gap.sampling": Added(6, "rollout"),  # the gap at the rollout temperature
    "model.template": Added(7, None),  # the model's own prompt form
    "loss.clip_mode": Added(8, "entry"),  # the token clip per support entry (as every clip before it)
    "optim.eps": Added(9, 1e-8),  # torch's AdamW default, which every run before it used
}
HASH_VERSION = max(a.version for a in ADDED.values())

def _opsd(cfg: TrainConfig) -> bool:
    return cfg.algorithm == "opsd"


def _graded(cfg: TrainConfig) -> bool:
    return cfg.algorithm == "opsd" and cfg.context == "graded"


# What a configuration does not read is not part of what it is: a field (or a whole section) is
# hashed only where `reads` holds. GRPO has no teacher; only the graded context reveals a share.
READ_ONLY_WHEN: dict[str, Callable[[TrainConfig], bool]] = {
    "graded_fraction": _graded, "context": _opsd, "teacher": _opsd, "context_form": _opsd,
    **{f"loss.{f.name}": _opsd for f in fields(LossConfig) if f.name not in LossConfig.GRPO_FIELDS},
}
NOT_WHAT = ("seed", "tracking", "resume")  # which run of a configuration, where it is logged, what it resumes


def _drop(d: dict[str, Any], name: str) -> None:
    """Leave out the (dotted) field or section `name` of `d`, if it is still there."""
    *sections, key = name.split(".")
    for section in sections:
        d = d.get(section, {})
    d.pop(key, None)


def config_hash(cfg: TrainConfig) -> str:
    """Short hash of what defines a configuration: everything but the seed, where it is logged,
    and settings that change how it is computed, not what (fields marked "how": threads, progress
    bar, checkpoints, prefix sharing, batch sizes of the gap). Runs with equal hashes differ only by
    seed. Fields added later (ADDED) are left out at the value older configurations had, fields a
    configuration does not read (READ_ONLY_WHEN) always, and world settings as in `world_fields`."""
    d = cfg.to_dict()
    flat = flatten(d)
    for name in (*NOT_WHAT, *how_fields()):
        _drop(d, name)
    for name, added in ADDED.items():
        if flat[name] == added.absent:
            _drop(d, name)
    d["world"] = world_fields(cfg.world)
    for name, reads in READ_ONLY_WHEN.items():
        if not reads(cfg):
            _drop(d, name)
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
