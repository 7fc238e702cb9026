"""The ``opsd`` command: thin shells over the library, configured with Hydra overrides.

    opsd train [key=value ...]        one OPSD training run, recorded in MLflow
    opsd gap [key=value ...]          the initial student vs self-teacher gap of one configuration
    opsd judge world=code problems=FILE.jsonl responses=FILE.jsonl
    opsd ui [tracking.uri=...] [port=5000]
    opsd setup                        fetch and convert the embedded default model once

Configs are composed with Hydra's compose API from ``conf/`` (``$OPSD_CONF_DIR`` overrides the
location), merged onto the dataclasses of ``opsd_platform.config`` and validated there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

USAGE = __doc__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def conf_dir() -> Path:
    here = Path(os.environ.get("OPSD_CONF_DIR") or Path(__file__).resolve().parents[1] / "conf")
    if not (here / "train.yaml").exists():
        raise CLIError(f"config directory {here} has no train.yaml; set OPSD_CONF_DIR to the project's conf/")
    return here


def compose(config_name: str, overrides: Sequence[str]):
    """Compose `conf/<config_name>.yaml` with command-line overrides into an OmegaConf object."""
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
        message = str(exc).split("Config search path")[0]  # Hydra appends its search path: noise here
        if exc.__cause__ is not None:  # e.g. "Error merging override x=y" hides the why in its cause
            message += f": {str(exc.__cause__).splitlines()[0]}"
        raise CLIError(f"bad config override: {' '.join(message.split())}") from None


def _register_schemas() -> None:
    """Bind the dataclasses to Hydra's ConfigStore, so every field can be overridden by name
    (not only those the YAML files spell out) and types are checked while composing."""
    from hydra.core.config_store import ConfigStore

    from opsd_platform.config import TrainConfig

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def to_train_config(cfg) -> "Any":
    """Merge a composed config onto TrainConfig; unknown keys / wrong types / bad values -> CLIError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from opsd_platform.config import ConfigError, TrainConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        _reject_unknown_keys(OmegaConf.to_container(merged), TrainConfig)
        return OmegaConf.to_object(merged)
    except ConfigError as exc:
        raise CLIError(f"config error: {exc}") from None
    except OmegaConfBaseException as exc:
        raise CLIError(f"config error: {str(exc).splitlines()[0]} ({_where(exc)})") from None


def _reject_unknown_keys(values: dict, schema: type, prefix: str = "") -> None:
    """OmegaConf quietly keeps keys added with `+key=...`; a typo must not be silently ignored."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key not in fields:
            raise CLIError(f"config error: unknown key {prefix}{key}; valid keys here: {', '.join(fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and sub is not None and dataclasses.is_dataclass(sub):
            _reject_unknown_keys(value, sub, f"{prefix}{key}.")


def _where(exc) -> str:
    key = getattr(exc, "full_key", None)
    return f"key {key}" if key else "see conf/ and opsd_platform/config.py"


def train_config(overrides: Sequence[str]):
    return to_train_config(compose("train", overrides))


# --------------------------------------------------------------------------- commands


def cmd_train(overrides: Sequence[str]) -> int:
    from opsd_platform import tracking
    from opsd_platform.train import train

    cfg = train_config(overrides)
    result = train(cfg)
    uri = result.tracking_uri
    print()
    print(f"MLflow run {result.run_id} (experiment {cfg.tracking.experiment}) in {uri}")
    if result.initial_pass_rate is not None:
        print(
            f"validation pass rate {result.initial_pass_rate:.3f} -> {result.final_pass_rate:.3f} "
            f"(improvement {result.improvement:+.3f})"
        )
    print(f"{result.steps} steps, {result.seconds_per_step:.2f} s/step, peak RSS {result.peak_rss_mb:.0f} MB")
    print(f"look at it: opsd ui tracking.uri={uri}   (or: {tracking.ui_command(uri)})")
    return 0


def cmd_gap(overrides: Sequence[str]) -> int:
    from opsd_platform.train import estimated_training_tokens, run_gap

    cfg = train_config(overrides)
    run_id, gap = run_gap(cfg)
    pct = lambda ci: f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"  # noqa: E731
    mean_len = gap.tokens_generated / (2 * gap.n_problems * gap.samples_per_problem)
    ratio = gap.tokens_generated / estimated_training_tokens(cfg, mean_len)
    print()
    print(f"context={gap.context}  {gap.n_problems} problems x {gap.samples_per_problem} samples "
          f"(teacher context for {gap.teacher_coverage:.0%} of samples)")
    print(f"student pass rate {gap.student_pass_rate:.3f} {pct(gap.student_ci)}")
    print(f"teacher pass rate {gap.teacher_pass_rate:.3f} {pct(gap.teacher_ci)}")
    print(f"gap               {gap.gap:+.3f} {pct(gap.gap_ci)}  ({gap.level:.0%} bootstrap over problems)")
    print(f"cost: {gap.tokens_generated} tokens, {gap.seconds:.1f} s; {ratio:.1%} of the rollout tokens of a "
          f"{cfg.trainer.max_steps}-step training (which also runs 2 forwards + 1 backward per token)")
    print(f"MLflow run {run_id} in {cfg.tracking.resolved_uri()}")
    return 0


def cmd_judge(overrides: Sequence[str]) -> int:
    from omegaconf import OmegaConf

    from opsd_platform.config import ConfigError, WorldConfig
    from opsd_platform.worlds import make_world
    from opsd_platform.worlds.base import WorldError
    from opsd_platform.worlds.jsonl import judge_responses

    cfg = compose("judge", overrides)
    world_fields = OmegaConf.to_container(cfg.world, resolve=True)
    if cfg.problems is not None:
        world_fields["path"] = str(cfg.problems)
    try:
        world_cfg = WorldConfig(**world_fields)
        world = make_world(world_cfg, seed=int(cfg.seed))
        problems = {p.id: p for split in ("train", "val") for p in world.problems(split)}
        results = judge_responses(world, problems, str(cfg.responses))
    except (ConfigError, WorldError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    passed = 0
    for row in results:
        passed += bool(row["passed"])
        print(f"== {row['question_id']}  reward={row['reward']:.3f}  passed={row['passed']}")
        print(row["feedback"].rstrip())
    print(f"\n{passed}/{len(results)} responses passed")
    return 0


def cmd_ui(overrides: Sequence[str]) -> int:
    from opsd_platform import tracking
    from opsd_platform.config import TrackingConfig

    cfg = compose("ui", overrides)
    uri = TrackingConfig(uri=cfg.tracking.uri).resolved_uri()
    tracking.init_store(uri)
    cmd = tracking.ui_command(uri).split() + ["--host", str(cfg.host), "--port", str(cfg.port)]
    print(f"MLflow UI for {uri} at http://{cfg.host}:{cfg.port}  (Ctrl-C to stop)")
    return subprocess.call([sys.executable, "-m", "mlflow", *cmd[1:]])


def cmd_setup(overrides: Sequence[str]) -> int:
    from opsd_platform.models import load_policy

    cfg = train_config(overrides)
    model, tokenizer = load_policy(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    print(f"model ready: {cfg.model.name} ({n / 1e6:.1f}M parameters, vocabulary {len(tokenizer)})")
    return 0


COMMANDS = {"train": cmd_train, "gap": cmd_gap, "judge": cmd_judge, "ui": cmd_ui, "setup": cmd_setup}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"opsd: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[command](overrides)
    except CLIError as exc:
        print(f"opsd {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
