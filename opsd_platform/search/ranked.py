"""The ranked search (``search.strategy=ranked``): the gap law ranks the candidate contexts it can
see, trains them best-predicted first and stops when none left can win. One policy, two callers:
the live search (``run_ranked_search`` in ranked_run.py) and the replay of the recorded table
(benchmarks/ranked.py) drive this same ``RankedPolicy`` and record the same decisions.

The policy is a small state machine over the candidates (configurations, in the order the search
drew them), asked ``next()`` for a ``Step`` and told what was measured:

- **Which law.** A *prior* (a law fitted elsewhere, e.g. ``models:/opsd-gap-law@<alias>``: another
  family, world or an earlier study) replaces startup trials. Without one, the first candidates
  train in the drawn order (``startup``) under the curve-based pruner, as the curve-based arm
  would, and those trained to the end make the study's own fit (the points are then the
  survivors of the pruner: a selection the own fit's slope carries). Either
  law decides only when ``law.holdout.check_law`` says it may (>= 5 configurations, >= 3 residual
  degrees of freedom, a non-degenerate interval, a slope interval excluding 0, a leave-one-out
  error below a constant predictor's); the own fit is refitted and re-checked after every trained
  candidate. A law that may not decide is not used: the search says why (one line, in the
  decisions) and runs the curve-based pruner alone, paying no gap.
- **What the law can see.** The law maps a context's gap to an improvement at fixed other
  settings. When the candidates differ in more than their context (several configurations share a
  context: learning rates, losses, teacher kinds), the law cannot rank them: the curve-based
  pruner (Optuna's successive halving) searches them alone, and no gap is paid.
- **Phase 1, the gaps.** With a law that may decide, the gap of every waiting candidate is
  measured (shared measurements are paid once by the caller).
- **Phase 2, ranked training.** The waiting candidate with the highest predicted improvement
  trains next. **Stopping rule:** before each, the search stops when the *largest upper bound*
  (at ``level``) over every waiting candidate is below the incumbent's measured improvement (the
  best trained so far); the waiting candidates are then not trained (decision ``stop``).
  Its error: when the law is right, a candidate's new improvement exceeds its upper bound with
  probability (1 - level) / 2, and a stopped candidate can beat the incumbent only then; so the
  share of candidates wrongly stopped is at most (1 - level) / 2 (5 % at level 0.9), tested on
  synthetic laws in tests/search/test_ranked.py.
- **The prior on trial.** The first ``prior_test_trials`` candidates trained under a prior test
  it: a measured improvement *above* the prior's ``prior_test_level`` upper bound is a miss (the
  direction that makes the stopping rule stop wrongly; a prior that over-predicts only stops
  later, and its ranking may still hold). More than ``prior_max_misses`` misses and the prior is
  dropped for the study's own fit: used at once if it may decide, else the next candidates train
  in the drawn order under the curve pruner until it may (as without a prior). Every decision names its law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from opsd_platform.law import LawError, LawFit
from opsd_platform.law.holdout import LawCheck, fit_and_check

RANKED, CURVE, STARTUP = "ranked", "curve", "startup"
MEASURE, TRAIN, STOP, DONE = "measure", "train", "stop", "done"


@dataclass(frozen=True)
class RankedSettings:
    level: float = 0.9  # the stopping rule's interval level
    prior_test_trials: int = 2  # trained candidates that test a prior
    prior_test_level: float = 0.99  # a measured improvement outside this interval of the prior is a miss
    prior_max_misses: int = 0  # more misses than this among the test trials: the prior is dropped

    def __post_init__(self) -> None:
        if not 0 < self.level < 1 or not 0 < self.prior_test_level < 1:
            raise ValueError(f"level and prior_test_level must be in (0, 1), got {self.level}, {self.prior_test_level}")
        if self.prior_test_trials < 0 or self.prior_max_misses < 0:
            raise ValueError("prior_test_trials and prior_max_misses must be >= 0")


@dataclass(frozen=True)
class Step:
    """One decision: measure gaps, train a candidate (fully, or under the curve pruner), stop, done."""

    kind: str  # measure | train | stop | done
    keys: tuple[str, ...] = ()
    rule: str = ""  # phase1 | ranked | startup | curve | stop | done
    reason: str = ""
    law: str | None = None  # which law decided ("prior models:/...@champion", "own fit on 6 configurations")
    curve: bool = False  # train under the curve-based pruner (may stop mid-training)
    predicted: float | None = None
    lower: float | None = None
    upper: float | None = None
    bar: float | None = None  # the incumbent's improvement when the step was decided


@dataclass
class Candidate:
    key: str
    context: str
    gap: float | None = None
    improvement: float | None = None
    state: str = "waiting"  # waiting | trained | pruned (by the curve pruner) | stopped
    law: str | None = None  # the law that decided to train it


@dataclass
class RankedPolicy:
    """The policy of the module docstring over `candidates` ((key, context) in the drawn order)."""

    candidates: Sequence[tuple[str, str]]
    prior: LawFit | None = None
    prior_check: LawCheck | None = None
    prior_label: str = "prior"
    settings: RankedSettings = field(default_factory=RankedSettings)

    def __post_init__(self) -> None:
        self.items = {k: Candidate(k, c) for k, c in self.candidates}
        if len(self.items) != len(self.candidates):
            raise ValueError("RankedPolicy: a candidate key appears twice")
        self.order = [k for k, _ in self.candidates]
        self.steps: list[Step] = []
        self.notes: list[str] = []  # one line per change of law or mode
        self.law: LawFit | None = None
        self.law_label: str | None = None
        self.tested = self.misses = 0
        contexts = [c for _, c in self.candidates]
        shared = len(set(contexts)) < len(contexts)
        if shared:
            self._curve(f"the law cannot rank these candidates: {len(contexts)} configurations over {len(set(contexts))} "
                        "contexts differ in settings it was not fitted across; the curve-based pruner alone")
        elif self.prior is not None:
            check = self.prior_check
            if self.prior.covariates:
                self._curve(f"{self.prior_label} needs covariates {self.prior.covariates}; the ranked search uses a gap-only law")
            elif check is None or not check.usable:
                self._curve(f"{self.prior_label}: {check.reason if check else 'not checked'}; the curve-based pruner alone")
            else:
                self._use(self.prior, self.prior_label, f"{self.prior_label} decides ({check.reason})")
        else:
            self.mode = STARTUP
            self.notes.append("no prior law: the first candidates train under the curve-based pruner until the "
                              "study's own fit may decide")

    # ------------------------------------------------------------------ state changes

    def _curve(self, why: str) -> None:
        self.mode, self.law, self.law_label = CURVE, None, None
        self.notes.append(why)

    def _use(self, law: LawFit, label: str, why: str) -> None:
        self.mode, self.law, self.law_label = RANKED, law, label
        self.notes.append(why)

    def _own_fit(self) -> tuple[LawFit | None, LawCheck | None, str]:
        done = [c for c in self.items.values() if c.state == "trained" and c.gap is not None]
        if len(done) < 3:
            return None, None, f"{len(done)} trained configurations with a gap (a fit needs 3)"
        try:  # OLS on the trained configurations, its leave-one-out error and the check, in numpy
            fit, _, check = fit_and_check(np.arange(len(done)), [c.gap for c in done], [c.improvement for c in done],
                                          self.settings.level)
        except LawError as exc:
            return None, None, str(exc)
        return fit, check, check.reason

    def _refit(self, dropped: str | None = None) -> None:
        fit, check, why = self._own_fit()
        label = f"own fit on {fit.n_configs} configurations" if fit is not None else "own fit"
        if fit is not None and check is not None and check.usable:
            self._use(fit, label, (f"{dropped}; " if dropped else "") + f"{label} decides ({why})")
        elif dropped:  # as without a prior: train in the drawn order until the own fit may decide
            self.mode, self.law, self.law_label = STARTUP, None, None
            self.notes.append(f"{dropped}; {label}: {why}; the next candidates train under the curve-based "
                              "pruner until it may decide")
        elif self.mode == RANKED:
            self._curve(f"{label}: {why}; the curve-based pruner for the rest")

    # ------------------------------------------------------------------ what the caller tells

    def gap(self, key: str, gap: float) -> None:
        if not math.isfinite(gap):
            raise ValueError(f"candidate {key!r}: gap {gap!r} is not finite")
        self.items[key].gap = float(gap)

    def result(self, key: str, improvement: float | None, complete: bool) -> None:
        """A trained candidate's outcome: its improvement (complete), or pruned by the curve pruner."""
        c = self.items[key]
        c.state, c.improvement = ("trained", float(improvement)) if complete else ("pruned", None)
        if not complete:
            return
        if self.mode == RANKED and self.law is self.prior and self.tested < self.settings.prior_test_trials and c.gap is not None:
            _, lo, hi = self.prior.predict_gaps([c.gap], self.settings.prior_test_level)
            self.tested += 1
            self.misses += int(c.improvement > hi[0])
            if self.misses > self.settings.prior_max_misses:
                self._refit(dropped=f"{self.prior_label} dropped: {key} improved {c.improvement:+.3f}, above its "
                                    f"{self.settings.prior_test_level:.0%} interval [{lo[0]:+.3f}, {hi[0]:+.3f}]")
        elif self.mode == STARTUP or (self.mode == RANKED and self.law is not self.prior):
            self._refit()

    # ------------------------------------------------------------------ the decision

    def _waiting(self) -> list[Candidate]:
        return [self.items[k] for k in self.order if self.items[k].state == "waiting"]

    def incumbent(self) -> Candidate | None:
        done = [c for c in self.items.values() if c.state == "trained"]
        return max(done, key=lambda c: c.improvement) if done else None

    def next(self) -> Step:
        """The next step (recorded in ``steps``); the caller does it and reports back."""
        step = self._decide()
        self.steps.append(step)
        for key in step.keys if step.kind == STOP else ():
            self.items[key].state = "stopped"
        if step.kind == TRAIN:
            self.items[step.keys[0]].law = step.law
        return step

    def _decide(self) -> Step:
        waiting = self._waiting()
        if not waiting:
            return Step(DONE, rule=DONE, reason="every candidate is decided")
        inc = self.incumbent()
        bar = None if inc is None else inc.improvement
        if self.mode == CURVE:
            return Step(TRAIN, (waiting[0].key,), CURVE, self.notes[-1], curve=True, bar=bar)
        unmeasured = tuple(c.key for c in waiting if c.gap is None)
        if self.mode == STARTUP:
            first = waiting[0]
            if first.gap is None:
                return Step(MEASURE, (first.key,), STARTUP, "startup: its gap, a point of the study's own fit")
            # under the curve pruner: until a law may decide, a startup candidate costs what the
            # curve-based arm would pay for it (plus its gap); one it prunes gives the fit no point
            return Step(TRAIN, (first.key,), STARTUP, f"startup: {self.notes[-1]}", curve=True, bar=bar)
        if unmeasured:
            return Step(MEASURE, unmeasured, "phase1", f"phase 1: the gap of every waiting candidate ({self.law_label})",
                        law=self.law_label)
        mean, lo, hi = self.law.predict_gaps([c.gap for c in waiting], self.settings.level)
        pct = f"{self.settings.level:.0%}"
        if bar is not None and float(hi.max()) < bar:
            top = int(np.argmax(hi))
            return Step(STOP, tuple(c.key for c in waiting), STOP,
                        f"stop: the highest {pct} upper bound of the {len(waiting)} waiting candidates, {hi[top]:+.3f} "
                        f"({waiting[top].key}), is below the incumbent's {bar:+.3f} ({inc.key}; {self.law_label})",
                        law=self.law_label, predicted=float(mean[top]), lower=float(lo[top]), upper=float(hi[top]), bar=bar)
        best = int(np.argmax(mean))  # ties: the first drawn
        c = waiting[best]
        return Step(TRAIN, (c.key,), RANKED,
                    f"ranked: gap {c.gap:+.3f} -> predicted {mean[best]:+.3f} [{lo[best]:+.3f}, {hi[best]:+.3f}], the highest "
                    f"of {len(waiting)} waiting ({self.law_label})", law=self.law_label, predicted=float(mean[best]),
                    lower=float(lo[best]), upper=float(hi[best]), bar=bar)


def drive(policy: RankedPolicy, measure: Callable[[str, Step], float],
          train: Callable[[str, Step], tuple[float | None, bool]], stop: Callable[[Step], None] = lambda step: None) -> list[Step]:
    """The order of operations of a ranked search, for every caller: ask the policy, do what it
    says (``measure(key, step) -> gap``; ``train(key, step) -> (improvement, complete)``, under the
    curve pruner when ``step.curve``; ``stop(step)`` for the candidates left untrained), report back;
    until it says stop or done. Returns the policy's decisions."""
    while True:
        step = policy.next()
        if step.kind == MEASURE:
            for key in step.keys:
                policy.gap(key, measure(key, step))
        elif step.kind == TRAIN:
            value, complete = train(step.keys[0], step)
            policy.result(step.keys[0], value, complete)
        else:
            if step.kind == STOP:
                stop(step)
            return policy.steps


def chosen_contexts(policy: RankedPolicy, k: int) -> list[str]:
    """The contexts the inner phase searches (ranked_run.py): those of the `k` candidates trained to
    the end with the best measured improvements, the incumbent first (ties: the first drawn)."""
    done = [c for c in (policy.items[key] for key in policy.order) if c.state == "trained"]
    ranked = sorted(done, key=lambda c: -c.improvement)  # stable: ties keep the drawn order
    return list(dict.fromkeys(c.context for c in ranked))[:k]
