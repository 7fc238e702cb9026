"""Worlds: problem sets with judges that return a reward and feedback text.

``make_world(cfg, seed)`` builds the world a config names; ``WORLD_CLASSES`` is the one place
that maps names to classes (imported lazily: the code worlds pull in the sandbox).
"""

from __future__ import annotations

import importlib

from opsd_platform.errors import WorldError
from opsd_platform.worlds.base import Judgement, Problem, World

WORLD_CLASSES = {
    "arithmetic": "opsd_platform.worlds.arithmetic:ArithmeticWorld",
    "hidden_rule": "opsd_platform.worlds.hidden_rule:HiddenRuleWorld",
    "pyfunc": "opsd_platform.worlds.pyfunc:PyFuncWorld",
    "code": "opsd_platform.worlds.code.world:CodeJsonlWorld",
}


def make_world(cfg, seed: int = 0) -> World:
    """Build the world named by a `WorldConfig` (problems are deterministic given `seed`)."""
    if cfg.name not in WORLD_CLASSES:
        raise WorldError(f"unknown world {cfg.name!r}; valid: {', '.join(WORLD_CLASSES)}")
    module, _, cls_name = WORLD_CLASSES[cfg.name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cfg.name in ("arithmetic", "hidden_rule"):
        return cls(seed=seed, difficulty=cfg.difficulty, n_train=cfg.n_train, n_val=cfg.n_val)
    from opsd_platform.sandbox import SandboxLimits

    limits = SandboxLimits(wall_s=cfg.timeout_s, cpu_s=max(1, int(cfg.timeout_s)))
    grading = cfg.grading or ("lcb" if cfg.name == "code" else "lenient")
    if cfg.name == "pyfunc":
        return cls(seed=seed, difficulty=cfg.difficulty, n_train=cfg.n_train, n_val=cfg.n_val, limits=limits,
                   grading=grading)
    return cls(cfg.path, seed=seed, val_fraction=cfg.val_fraction, limits=limits, reveal_hidden=cfg.reveal_hidden,
               grading=grading)


__all__ = ["WORLD_CLASSES", "Judgement", "Problem", "World", "WorldError", "make_world"]
