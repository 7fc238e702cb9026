"""One replayed search: a real in-memory Optuna study whose objective reads the recorded table.

A trial picks a recorded configuration (``suggest_categorical("config", ...)``; with the default
``permutation`` sampler every order is a random permutation of the search configurations,
enqueued, so all arms see the same trials), draws one of its recorded seeds (uniformly among the
seeds this study has not drawn for that configuration yet), and then, as a live trial would:

1. an arm that uses the gap pays for it (``Ledger.gap``: once per ``gap_key``, the student half
   once per ``gap_student_key``; the sequential arm pays the share of problems it measured) and
   records it as the trial's ``gap`` user attribute (with the covariates), then asks
   ``trial.should_prune()`` (the law arms: ``GapLawPruner``'s ``decide_policy``, the law kept in
   memory by the library's ``search.memory.LawMemory``, the live search's learning loop: refit
   after completed trials, promoted by the registry's rule, law.promotion);
2. the initial validation is paid (once per ``val_key``);
3. at each recorded validation step the trial reports the improvement so far
   (``val_pass_rate - val_initial``) and a curve-based pruner may stop it: it pays the cumulative
   training cost recorded at that step (``steps.csv``), intermediate validations included;
4. otherwise it pays the whole training and returns the recorded ``improvement``.

Arms that do not use the gap (none, median, successive_halving, hyperband) do not measure it, as
a live ``opsd search`` with ``pruner=none|median`` does not (``gap.enabled=false``). ``topk`` is no
Optuna pruner: it measures every trial's gap, then trains the trials with the largest gaps while
the budget (the ``law`` arm's spend on the same order, or ``topk_k`` trials) allows.

Every pruner is the library's (``search.study.pruner_of``, as the live search's ``make_pruner``);
the settings the pruners read are a ``SearchConfig`` (``ReplaySettings.search``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from benchmarks.replay_table import Run, Table
from opsd_platform.gap.sequential import confidence_sequence, law_settle, sequential_gap
from opsd_platform.search.memory import LawMemory, MemoryLawPruner, first_law
from opsd_platform.search.pruner import GAP_RULES, PRUNE, GapLawPruner, TrialFacts, decide_policy
from opsd_platform.search.settings import SearchConfig
from opsd_platform.search.study import LawThenCurve, pruner_of

ARMS = ("none", "median", "successive_halving", "hyperband", "topk", "law", "law_sequential", "law_then_halving")
LAW_ARMS = ("law", "law_sequential", "law_then_halving")
SAMPLERS = ("permutation", "random", "tpe")


@dataclass(frozen=True)
class ReplaySettings:
    """A replay's settings: the live search's own (``search``, a SearchConfig: the pruners read its
    n_startup_trials, calibration_rate, level, threshold, refit_every, median_warmup_steps, with its
    defaults and checks) and what only a replay has."""

    search: SearchConfig = field(default_factory=SearchConfig)
    n_trials: int | None = None  # default: the number of search configurations
    sampler: str = "permutation"
    method: str = "ols"  # the law's fit (law.fit_law's methods; ols refits in numpy)
    covariates: tuple[str, ...] = ()
    seq_alpha: float = 0.05
    seq_batch: int = 8
    seq_rule: str = "decision"
    topk_k: int | None = None  # default: as many as the law arm's budget allows


def replay_settings(**kw: Any) -> ReplaySettings:
    """ReplaySettings from flat keywords: those of SearchConfig go to ``search`` (n_trials and
    sampler excepted: a replay's mean another thing)."""
    names = {f.name for f in fields(SearchConfig)} - {"n_trials", "sampler"}
    search = {k: kw.pop(k) for k in list(kw) if k in names}
    return ReplaySettings(search=SearchConfig(**search), **kw)


# ============================================================================== costs


@dataclass
class Ledger:
    """What one study has spent; shared measurements are paid once."""

    cpu: float = 0.0
    tokens: float = 0.0
    gap_cpu: float = 0.0
    gap_tokens: float = 0.0
    gap_done: dict[str, float] = field(default_factory=dict)  # gap_key -> share of its problems measured
    student_done: dict[str, float] = field(default_factory=dict)  # gap_student_key -> share measured
    val_done: set[str] = field(default_factory=set)

    def _pay(self, cpu: float, tokens: float, gap: bool = False) -> None:
        self.cpu += cpu
        self.tokens += tokens
        if gap:
            self.gap_cpu += cpu
            self.gap_tokens += tokens

    def gap(self, run: Run, share: float = 1.0) -> None:
        """Measure `run`'s gap on the first `share` of its problems (what was measured before is free)."""
        teacher = max(0.0, share - self.gap_done.get(run.gap_key, 0.0))
        student = max(0.0, share - self.student_done.get(run.gap_student_key, 0.0))
        self._pay(teacher * (run.gap_cpu_s - run.gap_student_cpu_s) + student * run.gap_student_cpu_s,
                  teacher * (run.gap_tokens - run.gap_student_tokens) + student * run.gap_student_tokens, gap=True)
        self.gap_done[run.gap_key] = max(share, self.gap_done.get(run.gap_key, 0.0))
        self.student_done[run.gap_student_key] = max(share, self.student_done.get(run.gap_student_key, 0.0))

    def validation(self, run: Run) -> None:
        if run.val_key not in self.val_done:
            self.val_done.add(run.val_key)
            self._pay(run.val_initial_cpu_s, run.val_initial_tokens)

    def train(self, run: Run, step: int) -> None:
        self._pay(run.cum_cpu[step], run.cum_tokens[step])


# ============================================================================== one order of one arm


@dataclass
class TrialRecord:
    number: int
    run_id: str
    config: str
    state: str  # complete | pruned
    step: int  # training steps paid (0: pruned before training)
    value: float  # the recorded improvement of the run (what it reached or would have reached)
    bar: float | None  # the bar when pruned (the law's, or the best completed value)
    action: str | None = None  # the law's decision (train | prune | calibrate)
    rule: str | None = None
    gap_share: float = 1.0  # share of the gap's problems measured (sequential)
    full_action: str | None = None  # law_sequential: the decision on the full measurement (gap-dependent rules only)
    decision: dict | None = None  # the law's decision as recorded on the trial (pruner.* user attributes)


@dataclass
class OrderResult:
    arm: str
    order: int
    records: list[TrialRecord]
    curve: list[tuple[float, float, float | None]]  # after each event: (cpu, tokens, true mean of the incumbent)
    cpu: float
    tokens: float
    gap_cpu: float
    gap_tokens: float
    incumbent: str | None  # configuration of the best completed trial (by its recorded value)


def _draw(table: Table, config: str, order: int, number: int, drawn: dict[str, set[str]]) -> Run:
    ids = table.runs_of[config]
    fresh = [k for k in ids if k not in drawn.setdefault(config, set())] or ids
    run_id = fresh[int(np.random.default_rng([order, number, 17]).integers(len(fresh)))]
    drawn[config].add(run_id)
    return table.runs[run_id]


def _permutation(table: Table, order: int, n: int) -> list[str]:
    rng = np.random.default_rng([order, 1])
    seq: list[str] = []
    while len(seq) < n:
        seq.extend(rng.permutation(table.configs).tolist())
    return seq[:n]


def law_memory(table: Table, settings: ReplaySettings) -> LawMemory:
    """The law of one search in memory (search/memory.py): the first law, fitted on the table's
    law slice once for every order, then the live search's learning loop."""
    s = settings.search
    key = ("first law", settings.method, tuple(settings.covariates), s.level)
    if key not in table.cache:
        table.cache[key] = first_law(table.law_points, level=s.level, method=settings.method, covariates=settings.covariates)
    return LawMemory(table.law_points, level=s.level, refit_every=s.refit_every, method=settings.method,
                     covariates=settings.covariates, first=table.cache[key])


def make_pruner(arm: str, table: Table, settings: ReplaySettings, order: int, memory: LawMemory | None,
                law_pruner: GapLawPruner | None = None) -> optuna.pruners.BasePruner:
    """The library's pruner of the arm (study.pruner_of); the law arms' law is in memory (search/memory.py)."""
    s = settings.search
    law = lambda: law_pruner or MemoryLawPruner(  # noqa: E731
        memory, n_startup_trials=s.n_startup_trials, calibration_rate=s.calibration_rate, threshold=s.threshold,
        level=s.level, seed=order)
    kind = "law" if arm == "law_sequential" else "none" if arm == "topk" else arm
    return pruner_of(kind, max_steps=table.max_steps, n_startup_trials=s.n_startup_trials,
                     median_warmup_steps=s.median_warmup_steps, law=law)


def make_sampler(settings: ReplaySettings, order: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=order)
    return optuna.samplers.RandomSampler(seed=order)


class Replay:
    """One arm on one order: the study, its objective (module docstring) and its bookkeeping."""

    def __init__(self, table: Table, arm: str, order: int, settings: ReplaySettings, law_pruner: GapLawPruner | None = None,
                 given: Sequence[tuple[str, str]] | None = None) -> None:
        """given: (configuration, run_id) of each trial in turn, instead of a drawn order and seeds
        (a live search's trials, replayed: benchmarks/live_search.py)."""
        self.table, self.arm, self.order, self.s = table, arm, order, settings
        self.given = list(given) if given is not None else None
        for config, run_id in self.given or ():
            if table.runs.get(run_id) is None or table.runs[run_id].config != config:
                raise ValueError(f"given trial ({config}, {run_id}): not a run of that configuration in the table")
        self.ledger = Ledger()
        self.memory = law_memory(table, settings) if arm in LAW_ARMS and law_pruner is None else None
        self.pruner = make_pruner(arm, table, settings, order, self.memory, law_pruner)
        self.law = self.pruner.law if isinstance(self.pruner, LawThenCurve) else self.pruner
        self.records: list[TrialRecord] = []
        self.curve: list[tuple[float, float, float | None]] = []
        self.drawn: dict[str, set[str]] = {}
        self.best: tuple[float, str] | None = None  # (recorded value, config) of the best completed trial

    # -- bookkeeping
    def _note(self) -> None:
        self.curve.append((self.ledger.cpu, self.ledger.tokens, None if self.best is None else self.table.true_mean[self.best[1]]))

    def _finish(self, record: TrialRecord) -> None:
        self.records.append(record)
        if record.state == "complete" and (self.best is None or record.value > self.best[0]):
            self.best = (record.value, record.config)
        self._note()

    def result(self) -> OrderResult:
        l = self.ledger
        return OrderResult(self.arm, self.order, self.records, self.curve, l.cpu, l.tokens, l.gap_cpu, l.gap_tokens,
                           None if self.best is None else self.best[1])

    # -- the gap
    def _measure(self, trial: optuna.Trial, run: Run) -> tuple[float, float, str | None]:
        """(gap, share of problems measured, the decision on the full gap or None)."""
        if self.arm != "law_sequential":
            self.ledger.gap(run)
            return run.gap, 1.0, None
        inputs = self.law.policy_inputs(trial.study, trial)
        facts = TrialFacts(covariates=run.covariates)  # what the live trial's gate hands the pruner
        probe = decide_policy(facts.at(0.0), **inputs)  # which rule, which bar: they do not depend on the gap's value
        if probe.rule not in GAP_RULES:  # startup, no law, no bar: decided without the gap (measured in full, for the law's points)
            self.ledger.gap(run)
            return run.gap, 1.0, None
        full = decide_policy(facts.at(run.gap), **inputs).action
        n = run.diffs.size
        already = int(round(self.ledger.gap_done.get(run.gap_key, 0.0) * n))
        if already == n:
            return run.gap, 1.0, full
        view = inputs["law"]()
        covs = {c: run.covariates[c] for c in view.inputs if c != "gap"}

        def bounds(gaps: np.ndarray, which: int) -> np.ndarray:
            return view.predict({"gap": gaps, **{c: np.full(gaps.size, v) for c, v in covs.items()}}, self.s.search.level)[which]

        settle = law_settle(lambda g: bounds(g, 2), probe.bar, lower=lambda g: bounds(g, 1), rule=self.s.seq_rule)
        key = ("confidence sequence", run.gap_key, self.s.seq_alpha)  # depends on the recorded problems only: once per table
        if key not in self.table.cache:
            self.table.cache[key] = confidence_sequence(run.diffs, alpha=self.s.seq_alpha, population=n)
        seq = sequential_gap(run.diffs, settle, batch=self.s.seq_batch, cs=self.table.cache[key], already=already)
        self.ledger.gap(run, seq.fraction)
        return seq.gap, seq.fraction, full

    # -- the objective
    def objective(self, trial: optuna.Trial) -> float:
        config = trial.suggest_categorical("config", self.table.configs)
        run = (self.table.runs[self.given[trial.number][1]] if self.given is not None
               else _draw(self.table, config, self.order, trial.number, self.drawn))
        trial.set_user_attr("run_id", run.run_id)
        record = TrialRecord(trial.number, run.run_id, config, "complete", run.steps, run.improvement, None)
        if self.arm in LAW_ARMS:
            gap, record.gap_share, record.full_action = self._measure(trial, run)
            trial.set_user_attr("gap", gap)
            for key, value in run.covariates.items():
                trial.set_user_attr(key, value)
            # as the live search's gate asks it (search.gate.SearchGate.on_gap): the typed facts, recorded after
            pruned = self.law.judge(trial, TrialFacts(gap=gap, covariates=run.covariates)).prune
            attrs = dict(trial.user_attrs)
            record.action, record.rule = attrs.get("pruner.action"), attrs.get("pruner.rule")
            record.decision = {k: v for k, v in attrs.items() if k.startswith("pruner.")}
            if pruned:
                record.state, record.step, record.bar = "pruned", 0, attrs.get("pruner.bar")
                self.pending = record
                raise optuna.TrialPruned(attrs.get("pruner.reason"))
            self.pending_gap = gap
        self.ledger.validation(run)
        curve_pruned = self.arm in ("median", "successive_halving", "hyperband", "law_then_halving")
        for step, value in zip(run.val_steps.tolist(), run.val_values.tolist()):
            trial.report(value, step)
            if curve_pruned and step < run.steps and trial.should_prune():
                self.ledger.train(run, step)
                record.state, record.step = "pruned", step
                record.bar = None if self.best is None else self.best[0]
                self.pending = record
                raise optuna.TrialPruned(f"{self.arm} at step {step}")
        self.ledger.train(run, run.steps)
        self.pending = record
        return run.improvement

    def after_trial(self, study: optuna.Study, frozen) -> None:
        record, self.pending = self.pending, None
        self._finish(record)
        if self.memory is not None and frozen.state == TrialState.COMPLETE:
            self.memory.add(record.config, record.run_id, self.pending_gap, record.value,
                            {c: self.table.runs[record.run_id].covariates[c] for c in self.s.covariates})

    def run(self) -> OrderResult:
        n = len(self.given) if self.given is not None else self.s.n_trials or len(self.table.configs)
        study = optuna.create_study(direction="maximize", sampler=make_sampler(self.s, self.order), pruner=self.pruner,
                                    study_name=f"replay-{self.arm}-{self.order}")
        if self.given is not None or self.s.sampler == "permutation":
            order = [c for c, _ in self.given] if self.given is not None else _permutation(self.table, self.order, n)
            for config in order:
                study.enqueue_trial({"config": config})
        self.pending = self.pending_gap = None
        study.optimize(self.objective, n_trials=n, callbacks=[self.after_trial], gc_after_trial=False)
        return self.result()


def run_topk(table: Table, order: int, settings: ReplaySettings, trials: list[TrialRecord], budget_cpu: float | None) -> OrderResult:
    """Measure the gap of every trial of the order (`trials`: another arm's, for the same
    configurations and seeds), then train the largest gaps: the first `topk_k`, or as many as
    fit in `budget_cpu` (at least one)."""
    replay = Replay(table, "none", order, settings)
    replay.arm = "topk"
    runs = [table.runs[t.run_id] for t in trials]
    for run in runs:
        replay.ledger.gap(run)
    replay._note()
    ranked = sorted(range(len(runs)), key=lambda i: (-runs[i].gap, i))
    trained = set()
    for rank, i in enumerate(ranked):
        run = runs[i]
        if settings.topk_k is not None:
            go = rank < settings.topk_k
        else:
            extra = run.cum_cpu[run.steps] + (0.0 if run.val_key in replay.ledger.val_done else run.val_initial_cpu_s)
            go = rank == 0 or budget_cpu is None or replay.ledger.cpu + extra <= budget_cpu + 1e-9
        if not go:
            break
        replay.ledger.validation(run)
        replay.ledger.train(run, run.steps)
        trained.add(i)
        replay._finish(TrialRecord(trials[i].number, run.run_id, run.config, "complete", run.steps, run.improvement, None))
    bar = replay.best[0] if replay.best else None
    for i, run in enumerate(runs):
        if i not in trained:
            replay.records.append(TrialRecord(trials[i].number, run.run_id, run.config, "pruned", 0, run.improvement, bar, PRUNE))
    return replay.result()
