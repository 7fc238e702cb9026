"""Measurements that do not depend on the training configuration: measured once per key, reused.

At step 0 every teacher kind is the initial model, so (algorithm.md, section 6):

    initial validation  depends on  model, world, validation sampling settings, seed
    gap, student side   depends on  model, world, gap problems, sampling settings, seed
    gap, teacher side   depends on  the student side's key + the context (+ graded_fraction)

and on nothing else: not the learning rate, divergence, top-K or teacher kind. A grid of
configurations x seeds (or a search whose trials share sampling settings) therefore measures
the initial validation once per seed and the gap once per (context, seed), not once per point.

Each measurement is a FINISHED MLflow run in the experiment ``<experiment>-measurements`` with
the tags ``measurement.kind`` and ``measurement.key`` (a hash of the key's fields, which are
logged as the artifact ``key.json``), the answers as ``measurement.json`` (per-problem pass rates,
texts, verdicts: what the gap and the contexts need) and its cost as metrics (``cpu_s``,
``seconds``, ``tokens``). A reuse is identical to measuring again because every measurement
samples from a stream seeded by (seed, its name) (``evaluation.seeded_stream``) and the key holds
everything else it depends on, the torch thread count included (matmul reductions, and so the
sampled tokens, may differ between thread counts). World settings that change nothing measured
(the code judge of a world that runs no code) are left out, as in config_hash (config.world_fields),
so a setting added later does not orphan the measurements recorded before it.

Two processes that need the same key at the same moment may both measure it; both get the same
result and the first stored is the one reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import TrainConfig, world_fields
from opsd_platform.evaluation import Evaluation, cpu_seconds, seeded_stream
from opsd_platform.gap import GapResult, Sampling, Side, combine, measure_student, measure_teacher

log = logging.getLogger(__name__)

KINDS = ("val_initial", "gap_student", "gap_teacher")


# ----------------------------------------------------------------------------- keys (pure)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _model_fields(cfg: TrainConfig) -> dict:
    m = asdict(cfg.model)
    for k in ("name", "family", "cache_dir"):  # labels and where a cache lives: not what is computed
        m.pop(k)
    if cfg.model.source != "tiny":
        m.pop("tiny")
    return m


def val_key_fields(cfg: TrainConfig) -> dict:
    r = cfg.rollout
    return {"kind": "val_initial", "model": _model_fields(cfg), "world": world_fields(cfg.world), "seed": cfg.seed,
            "sampling": {"k": r.val_samples, "temperature": r.val_temperature, "top_p": r.val_top_p,
                         "max_new_tokens": r.max_new_tokens, "engine": r.engine}, "threads": _threads()}


def gap_sampling(cfg: TrainConfig) -> Sampling:
    r = cfg.rollout
    return Sampling(cfg.gap.samples or r.samples_per_prompt, r.max_new_tokens, r.temperature, r.top_p)


def student_key_fields(cfg: TrainConfig) -> dict:
    return {"kind": "gap_student", "model": _model_fields(cfg), "world": world_fields(cfg.world), "seed": cfg.seed,
            "problems": {"split": cfg.gap.split, "n": cfg.gap.n_problems},
            "sampling": {**asdict(gap_sampling(cfg)), "engine": cfg.rollout.engine}, "threads": _threads()}


def teacher_key_fields(cfg: TrainConfig) -> dict:
    context = {"context": cfg.context}
    if cfg.context == "graded":
        context["graded_fraction"] = cfg.graded_fraction
    return {**student_key_fields(cfg), "kind": "gap_teacher", **context}


def key_of(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the store


class MeasurementStore:
    """Measurements as MLflow runs (see the module doc), looked up by kind and key."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = f"{experiment}-measurements"
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> "MeasurementStore":
        return cls(cfg.tracking.resolved_uri(), cfg.tracking.experiment)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = tracking.ensure_experiment(self.client, self.uri, self.experiment)
        return self._experiment_id

    def find(self, kind: str, key: str) -> str | None:
        """The run id of a finished measurement of `kind` with `key`, the oldest if several."""
        runs = self.client.search_runs(
            [self.experiment_id()],
            f"tags.`measurement.kind` = '{kind}' AND tags.`measurement.key` = '{key}' AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def load(self, run_id: str) -> tuple[Evaluation, dict[str, float]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, "measurement.json", tmp)
            evaluation = Evaluation.from_json(json.loads(Path(path).read_text()))
        return evaluation, dict(self.client.get_run(run_id).data.metrics)

    def save(self, kind: str, fields: dict, evaluation: Evaluation, cost: dict[str, float]) -> str:
        key = key_of(fields)
        run_id = tracking.start_run(self.uri, self.experiment, f"{kind}-{key}",
                                    {"kind": "measurement", "measurement.kind": kind, "measurement.key": key,
                                     "seed": str(fields["seed"]), **({"context": fields["context"]} if "context" in fields else {})})
        self.client.log_dict(run_id, fields, "key.json")
        self.client.log_dict(run_id, evaluation.to_json(), "measurement.json")
        for name, value in cost.items():
            self.client.log_metric(run_id, name, float(value))
        self.client.log_metric(run_id, "pass_rate", evaluation.pass_rate)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _cached(store: MeasurementStore | None, kind: str, fields: dict, measure: Callable[[], Side]) -> Side:
    """Reuse the stored measurement with these key fields, or measure and store it."""
    key = key_of(fields)
    if store is not None and (run_id := store.find(kind, key)) is not None:
        evaluation, metrics = store.load(run_id)
        log.info("reusing %s %s (run %s)", kind, key, run_id)
        return Side(evaluation, metrics.get("cpu_s", 0.0), metrics.get("seconds", 0.0), reused=True, key=key)
    side = measure()
    if store is not None:
        store.save(kind, fields, side.evaluation, {"cpu_s": side.cpu_s, "seconds": side.seconds,
                                                   "tokens": side.evaluation.tokens})
    return Side(side.evaluation, side.cpu_s, side.seconds, key=key if store is not None else "")


# ----------------------------------------------------------------------------- what runs call


def initial_validation(cfg: TrainConfig, validate: Callable[[], Evaluation],
                       store: MeasurementStore | None) -> Side:
    """The initial validation of `cfg`'s run, from stream "val/0": reused, or measured by `validate`."""

    def measure() -> Side:
        t0, c0 = time.perf_counter(), cpu_seconds()
        with seeded_stream(cfg.seed, "val/0"):
            evaluation = validate()
        return Side(evaluation, cpu_seconds() - c0, time.perf_counter() - t0)

    return _cached(store, "val_initial", val_key_fields(cfg), measure)


def gap(cfg: TrainConfig, engine, world, store: MeasurementStore | None) -> GapResult:
    """The initial gap of `cfg` (its two sides reused where stored), as configured in `cfg.gap`."""
    problems = world.problems(cfg.gap.split)[: cfg.gap.n_problems]
    if not problems:
        raise ValueError(f"world {world.name!r} has no {cfg.gap.split} problems to measure the gap on")
    sampling = gap_sampling(cfg)
    student = _cached(store, "gap_student", student_key_fields(cfg),
                      lambda: measure_student(engine, world, problems, sampling, cfg.seed))
    teacher = _cached(store, "gap_teacher", teacher_key_fields(cfg),
                      lambda: measure_teacher(engine, world, problems, cfg.context, student.evaluation, sampling,
                                              cfg.seed, cfg.graded_fraction))
    return combine(cfg.context, problems, sampling, student, teacher, n_boot=cfg.gap.bootstrap,
                   level=cfg.gap.level, seed=cfg.seed, graded_fraction=cfg.graded_fraction)
