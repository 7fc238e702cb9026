"""The ranked arms of the replay: ``opsd_platform.search.ranked.RankedPolicy`` (the live search's
policy, not a copy) driven over the recorded table.

- ``ranked``: no prior; the first drawn candidates train fully (their gaps measured) until the
  study's own fit may decide;
- ``ranked_prior``: the table's first law (fitted on the law slices: another family's or another
  world's contexts in the transfer scenarios) is the prior.

The trials are those of every other arm on the same order: the same permutation of the
configurations and the same recorded seed per configuration (``_draw`` at its drawn position).
Each trial runs in a real in-memory Optuna study with Optuna's ``SuccessiveHalvingPruner`` (the
curve-based pruner, used when the policy says the law may not decide or cannot see), through
``Replay.objective``, so costs are charged exactly as for the other arms: gaps once per key (the
student half once per student key), the initial validation once per key, training up to the step
a curve pruner stops it. A candidate the stopping rule leaves untrained costs nothing more (its
gap, if measured, is paid); it is recorded as pruned with rule ``stop``.
"""

from __future__ import annotations

import optuna

from benchmarks.replay import OrderResult, Replay, ReplaySettings, TrialRecord, _draw, _permutation
from benchmarks.replay_table import Table
from opsd_platform.law import LawError
from opsd_platform.law.holdout import check_points
from opsd_platform.search.ranked import RankedPolicy, RankedSettings, drive

RANKED_ARMS = ("ranked", "ranked_prior")


def prior_of(table: Table, settings: ReplaySettings):
    """(fit, check) of the table's first law, once per table (None, None: no law slice / unfittable)."""
    key = ("ranked prior", settings.search.level)
    if key not in table.cache:
        from opsd_platform.law import fit_law

        try:
            fit = fit_law(table.law_points, level=settings.search.level) if len(table.law_points) else None
        except LawError:
            fit = None
        table.cache[key] = (fit, None if fit is None
                            else check_points(table.law_points, fit, level=settings.search.level))
    return table.cache[key]


def context_of(table: Table, config: str) -> str:
    """The unit the law sees: the teacher's context of the configuration's runs (a graded context
    with its share of graded problems, as the law's points are labelled: graded@0.75)."""
    run = table.runs[table.runs_of[config][0]]
    share = run.covariates.get("graded_fraction")
    return run.context if share is None or run.context != "graded" else f"{run.context}@{share:g}"


class RankedReplay(Replay):
    """One ranked arm on one order; ``policy`` holds every decision (``policy.steps``)."""

    def __init__(self, table: Table, arm: str, order: int, settings: ReplaySettings,
                 ranked: RankedSettings | None = None, prior=None) -> None:
        super().__init__(table, "none", order, settings, given=[])
        self.arm = arm
        n = settings.n_trials or len(table.configs)
        seq = _permutation(table, order, n)
        drawn: dict[str, set[str]] = {}
        self.runs = {}
        for number, config in enumerate(seq):  # the run each other arm draws for this configuration
            run = _draw(table, config, order, number, drawn)
            self.runs.setdefault(config, run)
        fit, check = ((prior if prior is not None else prior_of(table, settings)) if arm == "ranked_prior"
                      else (None, None))
        self.policy = RankedPolicy([(c, context_of(table, c)) for c in self.runs], fit, check,
                                   "prior (the table's law slices)",
                                   ranked or RankedSettings(level=settings.search.level))

    def run(self) -> OrderResult:
        name = self.arm
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=self.order),
                                    pruner=optuna.pruners.SuccessiveHalvingPruner(), study_name=f"replay-{name}-{self.order}")
        self.pending = self.pending_gap = None

        def measure(key: str, step) -> float:
            self.ledger.gap(self.runs[key])
            self._note()
            return self.runs[key].gap

        def train(key: str, step) -> tuple[float | None, bool]:
            self.arm = "successive_halving" if step.curve else "none"  # Replay.objective: curve-pruned, or trained fully
            self.given.append((key, self.runs[key].run_id))
            study.enqueue_trial({"config": key})
            study.optimize(self.objective, n_trials=1, callbacks=[self.after_trial], gc_after_trial=False)
            record = self.records[-1]
            return record.value, record.state == "complete"

        def stop(step) -> None:
            for key in step.keys:
                run = self.runs[key]
                self.records.append(TrialRecord(len(self.records), run.run_id, key, "pruned", 0, run.improvement, step.bar,
                                                "prune", "stop"))

        drive(self.policy, measure, train, stop)
        self.arm = name
        result = self.result()
        result.notes = list(self.policy.notes)  # the law changes of this order, one line each
        return result
