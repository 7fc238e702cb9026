"""Measurements that do not depend on the training configuration: measured once per key, reused.

At step 0 every teacher kind is the initial model, so (docs/method.md, "What the gap can and cannot tell apart"):

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

Two processes that need the same key at the same moment do not both measure it: the measurement
holds a file lock per key (beside a SQLite store, else under $OPSD_HOME/locks), and the second
waits and reuses the first's. One key, one measurement: bench-v1's grid, whose workers could
measure a key twice, recorded pyfunc rows sharing a student key with two different student
measurements (a code verdict or a float reduction that differs between two runs is enough).

The sequential gap (``gap.sequential``, ``sequential_gap`` below) and the store: a side stored in
full serves it (a stored student side is read a batch at a time, so only the teacher side is
measured; both stored: the full gap, for free, and nothing to stop). A sequential measurement
that runs to the end draws exactly what the full one draws, so its sides are stored under the
full keys. One that stops early is *not* stored: going on from it later would need its sampling
streams' generator state at the stop, which the store does not keep, and a prefix under a key of
its own would serve only a configuration with that many problems. A later trial with the same
key measures its prefix again, which costs no more than the first one did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import TrainConfig, default_home, world_fields
from opsd_platform.config.choices import DEFAULT_PRECISION
from opsd_platform.gap.measure import (
    STUDENT_STREAM,
    GapResult,
    Sampling,
    Side,
    combine,
    measure_student,
    measure_teacher,
    teacher_stream,
)
from opsd_platform.gap.sequential import StoppingRule, aligned_batch, confidence_sequence, paired_differences
from opsd_platform.training.evaluation import Evaluation, Stream, concat, cpu_seconds, seeded_stream, take

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
    if m["template"] is None:  # the model's own prompt form: older keys have no field
        m.pop("template")
    if cfg.model.source != "tiny":
        m.pop("tiny")
    if cfg.trainer.precision != DEFAULT_PRECISION:  # bf16 matmuls sample other tokens; fp32 keeps older keys
        m["precision"] = cfg.trainer.precision
    return m


def _stop(cfg: TrainConfig) -> dict:
    return {"stop": list(cfg.rollout.stop)} if cfg.rollout.stop else {}  # none: older keys have no field


def val_key_fields(cfg: TrainConfig) -> dict:
    r = cfg.rollout
    return {"kind": "val_initial", "model": _model_fields(cfg), "world": world_fields(cfg.world), "seed": cfg.seed,
            "sampling": {"k": r.val_samples, "temperature": r.val_temperature, "top_p": r.val_top_p,
                         "max_new_tokens": r.max_new_tokens, "engine": r.engine, **_stop(cfg)}, "threads": _threads()}


def gap_sampling(cfg: TrainConfig) -> Sampling:
    """How both sides of the gap sample: at the rollout's temperature (bench-v1) or at the
    validation's (gap.sampling=validation: the temperature the predicted improvement is measured at)."""
    r = cfg.rollout
    if cfg.gap.sampling == "validation":
        return Sampling(cfg.gap.samples or r.samples_per_prompt, r.max_new_tokens, r.val_temperature, r.val_top_p)
    return Sampling(cfg.gap.samples or r.samples_per_prompt, r.max_new_tokens, r.temperature, r.top_p)


def student_key_fields(cfg: TrainConfig) -> dict:
    return {"kind": "gap_student", "model": _model_fields(cfg), "world": world_fields(cfg.world), "seed": cfg.seed,
            "problems": {"split": cfg.gap.split, "n": cfg.gap.n_problems},
            "sampling": {**asdict(gap_sampling(cfg)), "engine": cfg.rollout.engine, **_stop(cfg)},
            "threads": _threads()}


def teacher_key_fields(cfg: TrainConfig) -> dict:
    context = {"context": cfg.context}
    if cfg.context == "graded":
        context["graded_fraction"] = cfg.graded_fraction
    if cfg.context_form != 1:  # bench-v1's wording: older keys have no form
        context["context_form"] = cfg.context_form
    return {**student_key_fields(cfg), "kind": "gap_teacher", **context}


def measurement_params(fields: dict, model: str | None) -> dict[str, str]:
    """What a measurement run is about, as people read it (its params; the key's hash says nothing):
    model, world, the context with its revealed share (``graded@0.25``), seed, problems, samples."""
    from opsd_platform.training.contexts import context_label

    about = {"model": model or fields["model"].get("source", ""), "world": str(fields["world"].get("name", "")),
             "seed": str(fields["seed"]), "threads": str(fields.get("threads", ""))}
    if "context" in fields:
        about["context"] = context_label(fields["context"], fields.get("graded_fraction"))
    if "problems" in fields:
        about["problems"] = f"{fields['problems']['n']} {fields['problems']['split']}"
    about["samples"] = str(fields["sampling"].get("k", fields["sampling"].get("n", "")))
    return about


def key_of(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the store


class MeasurementStore:
    """Measurements as MLflow runs (see the module doc), looked up by kind and key."""

    def __init__(self, uri: str, experiment: str, model: str | None = None) -> None:
        self.uri = uri
        self.experiment = f"{experiment}-measurements"
        self.model = model  # the model's name, for the runs' names and params (not in the key: a label)
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> "MeasurementStore":
        return cls(cfg.tracking.resolved_uri(), cfg.tracking.experiment, cfg.model.name)

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
        about = measurement_params(fields, self.model)
        name = "-".join([kind, *(about[k] for k in ("context", "world", "model") if about.get(k)), f"s{about['seed']}"])
        run_id = tracking.start_run(self.uri, self.experiment, name,
                                    {"kind": "measurement", "measurement.kind": kind, "measurement.key": key,
                                     **{k: v for k, v in about.items() if k in ("seed", "context", "world", "model")}})
        tracking.log_params(self.uri, run_id, about)
        self.client.log_dict(run_id, fields, "key.json")
        self.client.log_dict(run_id, evaluation.to_json(), "measurement.json")
        for name, value in cost.items():
            self.client.log_metric(run_id, name, float(value))
        self.client.log_metric(run_id, "pass_rate", evaluation.pass_rate)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _stored(store: MeasurementStore | None, kind: str, fields: dict) -> Side | None:
    """The stored measurement with these key fields, or None."""
    key = key_of(fields)
    if store is None or (run_id := store.find(kind, key)) is None:
        return None
    evaluation, metrics = store.load(run_id)
    log.info("reusing %s %s (run %s)", kind, key, run_id)
    return Side(evaluation, metrics.get("cpu_s", 0.0), metrics.get("seconds", 0.0), reused=True, key=key)


def _save(store: MeasurementStore | None, kind: str, fields: dict, side: Side) -> Side:
    if store is None:
        return side
    store.save(kind, fields, side.evaluation, {"cpu_s": side.cpu_s, "seconds": side.seconds,
                                               "tokens": side.evaluation.tokens})
    return Side(side.evaluation, side.cpu_s, side.seconds, key=key_of(fields))


def _key_lock(store: MeasurementStore, kind: str, key: str) -> Path:
    db = tracking.sqlite_path(store.uri)
    root = db.parent / "locks" if db is not None else default_home() / "locks"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{kind}-{key}.lock"


def _cached(store: MeasurementStore | None, kind: str, fields: dict, measure: Callable[[], Side]) -> Side:
    """Reuse the stored measurement with these key fields, or measure and store it, holding the
    key's lock meanwhile so that a key is measured once however many processes want it."""
    if store is None:
        return measure()
    stored = _stored(store, kind, fields)
    if stored is not None:
        return stored
    with tracking.file_lock(_key_lock(store, kind, key_of(fields))):
        stored = _stored(store, kind, fields)  # measured by another process while we waited
        return stored if stored is not None else _save(store, kind, fields, measure())


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


_said_full = False  # "gap.sequential=true but no law and bar here" is said once per process


def gap(cfg: TrainConfig, engine, world, store: MeasurementStore | None,
        rule: StoppingRule | None = None) -> GapResult:
    """The initial gap of `cfg` (its two sides reused where stored), as configured in `cfg.gap`.

    rule: with ``gap.sequential``, the stopping rule a search trial's gate gives as the
    measurement starts (sequential.policy_gate): the gap is measured in batches and stops once
    ``rule.settle`` settles the decision (``sequential_gap``); a rule without one measures in full
    (``rule.why``); None (no search): in full."""
    global _said_full
    problems = world.problems(cfg.gap.split)[: cfg.gap.n_problems]
    if not problems:
        raise ValueError(f"world {world.name!r} has no {cfg.gap.split} problems to measure the gap on")
    sampling = gap_sampling(cfg)
    if cfg.gap.sequential:
        if rule is not None and rule.settle is not None:
            return sequential_gap(cfg, engine, world, store, problems, sampling, rule.settle)
        if rule is not None:
            log.info("gap.sequential: measured in full: %s", rule.why)
        elif not _said_full:
            _said_full = True
            log.warning("gap.sequential=true: measured in full, since only a law-pruned search trial has the law "
                        "and the bar a sequential gap stops on")
    student = _cached(store, "gap_student", student_key_fields(cfg),
                      lambda: measure_student(engine, world, problems, sampling, cfg.seed))
    teacher = _cached(store, "gap_teacher", teacher_key_fields(cfg),
                      lambda: measure_teacher(engine, world, problems, cfg.context, student.evaluation, sampling,
                                              cfg.seed, cfg.graded_fraction, form=cfg.context_form))
    return combine(cfg.context, problems, sampling, student, teacher, n_boot=cfg.gap.bootstrap,
                   level=cfg.gap.level, seed=cfg.seed, graded_fraction=cfg.graded_fraction, form=cfg.context_form)


def sequential_gap(cfg: TrainConfig, engine, world, store: MeasurementStore | None, problems, sampling: Sampling,
                   settle: Callable[[float, float, dict], str | None]) -> GapResult:
    """The gap measured ``gap.sequential_batch`` problems at a time (sequential.py): after each
    batch, the without-replacement CS of the paired differences so far and the law's covariates
    go to ``settle``, and the measurement stops at its first answer that is not None.

    Each side keeps its own sampling stream across batches (evaluation.Stream), and a batch fills
    whole generate calls (sequential.aligned_batch), so one that runs to the end equals the full
    measurement (same answers, same GapResult but for seconds and CPU-s) and is stored as it.
    Stopped at t < N problems, the GapResult describes those t (``n_problems``, costs, intervals)
    and its ``gap`` is their mean kept inside the CS, where the settled decision holds for every
    gap; ``sequential`` records t, N, the CS, the decision and the cost saved (estimated: what was
    measured now, per problem, times the problems left). Store interaction: module docstring."""
    g = cfg.gap
    n, total = sampling.n, len(problems)
    step = aligned_batch(g.sequential_batch, n, getattr(engine, "batch_size", None))
    s_fields, t_fields = student_key_fields(cfg), teacher_key_fields(cfg)
    s_stored, t_stored = _stored(store, "gap_student", s_fields), _stored(store, "gap_teacher", t_fields)
    s_stream, t_stream = Stream(cfg.seed, STUDENT_STREAM), Stream(cfg.seed, teacher_stream(cfg.context, cfg.graded_fraction))
    s_parts: list[Side] = []
    t_parts: list[Side] = []
    settled, lo, hi, used = None, float("nan"), float("nan"), 0
    # both sides stored: one "batch" of every problem, free (the CS is exact there)
    checks = [total] if s_stored is not None and t_stored is not None else [*range(step, total, step), total]
    for stop in checks:
        start, batch = used, problems[used:stop]
        s_side = (Side(take(s_stored.evaluation, start, stop, n), 0.0, 0.0, reused=True) if s_stored is not None
                  else measure_student(engine, world, batch, sampling, cfg.seed, stream=s_stream))
        t_side = (Side(take(t_stored.evaluation, start, stop, n), 0.0, 0.0, reused=True) if t_stored is not None
                  else measure_teacher(engine, world, batch, cfg.context, s_side.evaluation, sampling, cfg.seed,
                                       cfg.graded_fraction, stream=t_stream, form=cfg.context_form))
        s_parts.append(s_side)
        t_parts.append(t_side)
        used = stop
        s_ev, t_ev = concat([p.evaluation for p in s_parts]), concat([p.evaluation for p in t_parts])
        # passes per problem as the replay reads them (benchmarks/replay_table.py): (teacher - student) / samples
        student_passes = np.rint(np.array(s_ev.per_problem) * n)
        teacher_passes = np.array(t_ev.per_problem).reshape(used, n).sum(axis=1)  # one answer per student sample
        diffs = paired_differences(student_passes, teacher_passes, np.full(used, n))
        cs = confidence_sequence(diffs, alpha=g.sequential_alpha, population=total)
        lo, hi = float(cs.lo[-1]), float(cs.hi[-1])
        settled = settle(lo, hi, {"context_tokens": float(t_ev.prompt_tokens)})
        if settled is not None:
            break

    def side(parts: list[Side], stored: Side | None, kind: str, fields: dict) -> Side:
        if stored is not None:  # reused: what it cost when measured, for the problems used
            share = used / total
            return Side(take(stored.evaluation, 0, used, n), stored.cpu_s * share, stored.seconds * share,
                        reused=True, key=stored.key)
        measured = Side(concat([p.evaluation for p in parts]), sum(p.cpu_s for p in parts),
                        sum(p.seconds for p in parts))
        return _save(store, kind, fields, measured) if used == total else measured  # a prefix is not stored

    student = side(s_parts, s_stored, "gap_student", s_fields)
    teacher = side(t_parts, t_stored, "gap_teacher", t_fields)
    result = combine(cfg.context, problems[:used], sampling, student, teacher, n_boot=g.bootstrap, level=g.level,
                     seed=cfg.seed, graded_fraction=cfg.graded_fraction, form=cfg.context_form)
    # cost saved: the sides measured now, at their cost per problem, over the problems not measured
    now = [sd for sd in (student, teacher) if not sd.reused]
    left = (total - used) / used
    info = {"problems": used, "problems_total": total, "batch": step, "alpha": g.sequential_alpha,
            "rule": g.sequential_rule, "decision": settled, "cs_low": lo, "cs_high": hi,
            "saved_fraction": 1 - used / total,
            "saved_tokens_est": left * sum(sd.evaluation.tokens for sd in now),
            "saved_cpu_s_est": left * sum(sd.cpu_s for sd in now)}
    value = result.gap if used == total else min(max(result.gap, lo), hi)
    return dataclasses.replace(result, gap=value, sequential=info)
