"""Calibration: the points the gap law is fitted on.

A grid of configurations (context types x seeds, optionally x worlds and x models); for each
point: the initial gap, then a full OPSD training, then the improvement, all in one MLflow run
nested under one parent run for the calibration. The user's overrides are composed with Hydra once
per model and world preset (``bases``), exactly as ``opsd train`` would compose them; a point's
config is that base with its context and seed set (``compose.with_overrides``).

Resumable: a point whose run already FINISHED in the store (same calibration name, same point
key) is skipped, so re-running the same command after a crash only does what is missing. A point
that fails is recorded FAILED with its reason and the grid goes on; the command then exits
non-zero so the failure is not missed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import ConfigError, TrainConfig, config_hash
from opsd_platform.config.compose import given_keys, train_config, with_overrides
from opsd_platform.law.settings import CalibrateConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One grid point: the key that identifies it in the store."""

    key: str  # "<model>/<world>/<context>/seed<seed>#<hash of the rest of the config>"


def bases(overrides: Sequence[str], cal: CalibrateConfig, composed: TrainConfig | None = None) -> list[TrainConfig]:
    """The training overrides composed once per model and world of the grid (calibrate.models and
    calibrate.worlds pick config-group presets, which only composing conf/ applies); `composed`, the
    overrides' own config when the caller has it, serves a grid without such presets. The grid sets
    context and seed per point: the same keys among the overrides are ignored."""
    owned = {"context", "seed"} | ({"model"} if cal.models else set()) | ({"world"} if cal.worlds else set())
    given = given_keys(overrides, owned)
    if given:
        log.warning("the grid sets %s; the same keys among the overrides are ignored", ", ".join(sorted(owned)))
    if not cal.models and not cal.worlds:
        return [composed if composed is not None else train_config(list(overrides))]
    base = [o for o in overrides if o not in given]
    return [train_config([*base, *([f"model={model}"] if model else []), *([f"world={world}"] if world else [])])
            for model in cal.models or [None] for world in cal.worlds or [None]]


def grid(configs: Sequence[TrainConfig], cal: CalibrateConfig) -> list[tuple[Point, TrainConfig]]:
    """All grid points with their validated configs (every config is checked before any runs): each
    base config (`bases`) x context x seed."""
    points = []
    for base in configs:
        for context in cal.contexts:
            for seed in cal.seeds:
                cfg = with_overrides(base, {"context": context, "seed": seed, "gap.enabled": True})
                if cfg.algorithm != "opsd":
                    raise ConfigError(f"calibrate: algorithm={cfg.algorithm}: the law is fitted on OPSD runs (it "
                                      "predicts OPSD's improvement from the gap); calibrate with algorithm=opsd")
                key = f"{cfg.model.name}/{cfg.world.name}/{context}/seed{seed}#{config_hash(cfg)}"
                points.append((Point(key), cfg))
    return points


def _find_parent(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.kind = 'calibrate' AND tags.`calibrate.name` = '{name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def finished_points(client: MlflowClient, experiment_id: str, name: str) -> dict[str, str]:
    """Point key -> run id of the points of calibration `name` already FINISHED in the store."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.kind = 'train' AND tags.`calibrate.name` = '{name}' AND attributes.status = 'FINISHED'",
        max_results=10000,
    )
    return {r.data.tags["calibrate.key"]: r.info.run_id for r in runs if "calibrate.key" in r.data.tags}


@dataclass
class CalibrationResult:
    parent_run_id: str
    done: list[str]  # run ids trained now
    skipped: list[str]  # run ids found finished in the store
    failed: list[tuple[str, str]]  # (point key, reason)
    seconds: float


def calibrate(configs: Sequence[TrainConfig], cal: CalibrateConfig, progress=print) -> CalibrationResult:
    """Run (or resume) calibration `cal.name`: a gap + a training per grid point of the base
    configs (`bases`: one per model and world)."""
    from opsd_platform.errors import RunInterrupted
    from opsd_platform.runs.train import train  # heavy imports only when calibrating

    points = grid(configs, cal)
    first = points[0][1]
    uri, experiment = first.tracking.resolved_uri(), first.tracking.experiment
    client = tracking.init_store(uri)
    exp_id = tracking.ensure_experiment(client, uri, experiment)
    parent = _find_parent(client, exp_id, cal.name)
    if parent is None:
        parent = tracking.start_run(uri, experiment, f"calibrate-{cal.name}", {"kind": "calibrate", "calibrate.name": cal.name})
        client.log_dict(parent, {"contexts": cal.contexts, "seeds": cal.seeds, "worlds": cal.worlds,
                                 "models": cal.models, "base_configs": [c.to_dict() for c in configs]},
                        "calibrate.json")
    else:
        client.update_run(parent, status="RUNNING")
    started = time.perf_counter()
    done_before = finished_points(client, exp_id, cal.name)
    result = CalibrationResult(parent, [], [], [], 0.0)
    try:
        for i, (point, cfg) in enumerate(points, 1):
            tag = f"[{i}/{len(points)}] {point.key}"
            if point.key in done_before:
                result.skipped.append(done_before[point.key])
                progress(f"{tag}: already in the store (run {done_before[point.key]}), skipped")
                continue
            progress(f"{tag}: measuring the gap, then training {cfg.trainer.max_steps} steps")
            tags = {"calibrate.name": cal.name, "calibrate.key": point.key}
            try:
                out = train(cfg, parent_run_id=parent, extra_tags=tags)
            except RunInterrupted:
                raise  # SIGTERM / Ctrl-C stops the calibration; re-running resumes it
            except Exception as exc:  # recorded FAILED by train(); the grid goes on
                result.failed.append((point.key, f"{type(exc).__name__}: {exc}"))
                progress(f"{tag}: FAILED ({type(exc).__name__}: {exc})")
                continue
            result.done.append(out.run_id)
            progress(f"{tag}: gap {out.gap.gap:+.3f}, improvement {out.improvement:+.3f} ({out.seconds:.0f} s)")
    except BaseException as exc:
        tracking.fail_run(uri, parent, f"{type(exc).__name__}: {exc}")
        raise
    result.seconds = time.perf_counter() - started
    client.log_metric(parent, "calibrate/points_done", len(result.done))
    client.log_metric(parent, "calibrate/points_skipped", len(result.skipped))
    client.log_metric(parent, "calibrate/points_failed", len(result.failed))
    if result.failed:
        client.set_tag(parent, tracking.FAILURE_TAG, "; ".join(f"{k}: {r}" for k, r in result.failed)[:5000])
    client.set_terminated(parent, "FAILED" if result.failed else "FINISHED")
    return result
