"""Sequential gap: measure the gap in batches of problems and stop once the pruning decision is settled.

The gap is the mean over problems of the paired difference d = (teacher passes - student passes)
/ samples, a number in [-1, 1]. Measured a batch of problems at a time, it comes with an
*anytime-valid* confidence sequence (CS): intervals [lo_t, hi_t] that contain the gap at every
t simultaneously with probability >= 1 - alpha, so the measurement may stop at a data-dependent
time without inflating the error (a fixed-n interval re-tested after every batch would; Optuna's
own WilcoxonPruner docs warn of about twice the nominal rate).

The CS is the hedged betting CS of Waudby-Smith & Ramdas ("Estimating means of bounded random
variables by betting", JRSSB 2024, Hedged-CS with the predictable plug-in bets), on x = (d + 1) / 2
in [0, 1]; with ``population=N`` it is their without-replacement version ("Confidence sequences
for sampling without replacement", NeurIPS 2020), which targets the mean over the N problems of
the full measurement, the number the law was fitted on, and shrinks to it as t -> N. With
``population=None`` the problems are i.i.d. draws and the CS targets their expectation.

Stopping (``sequential_gap`` with a ``settle`` rule, e.g. ``law_settle``): after each batch the
rule sees the CS and answers "prune" (the law's upper prediction is below the bar for every gap
in the CS), "train" (it is at or above the bar for every gap in the CS: the decision cannot
change; with ``rule="confident"``, the issue's stricter reading: the law's *lower* prediction
clears the bar for every gap in the CS) or None (go on). Since the CS holds at all times with
probability >= 1 - alpha, the decision equals the one at the true gap with at least that
probability.

Pure functions: nothing here measures anything. benchmarks/pruning.py uses them on recorded
per-problem passes; a live search uses them through ``gap.sequential=true`` (config.GapConfig:
``sequential_batch``, ``sequential_alpha``, ``sequential_rule``): the trial's gate (search/gate.py)
builds the stopping rule from its pruner with ``policy_gate`` (decide_policy and the bar it would use now),
and measurements.sequential_gap measures the student and teacher sides a batch at a time
(``aligned_batch`` problems, on their own resumed sampling streams) and asks it after each batch,
with the without-replacement CS over the trial's N problems. A measurement that runs to the end
equals the full one bitwise and is stored as it; one that stops early is not stored (the
measurement store's docstring says why). Outside a search there is no law and bar to stop on:
the gap is measured in full. A trial that stops on "train" trains, and its gap (t < N problems) is
a point of the law's next refit: a noisier point, recorded as such (``gap/sequential_problems``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from opsd_platform.config.choices import RULES

PRUNE, TRAIN = "prune", "train"


def paired_differences(student_passes, teacher_passes, samples) -> np.ndarray:
    """Per-problem (teacher - student) pass rate, in [-1, 1]; ValueError names a bad entry."""
    s, t, n = (np.asarray(a, dtype=float) for a in (student_passes, teacher_passes, samples))
    if not (s.shape == t.shape == n.shape) or s.ndim != 1:
        raise ValueError(f"need three equal 1-D arrays, got shapes {s.shape}, {t.shape}, {n.shape}")
    bad = ~(np.isfinite(s) & np.isfinite(t) & np.isfinite(n)) | (n <= 0) | (s < 0) | (t < 0) | (s > n) | (t > n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"problem {i}: passes must lie in [0, samples] with samples > 0, got "
                         f"student {s[i]:g}, teacher {t[i]:g}, samples {n[i]:g}")
    return (t - s) / n


@dataclass(frozen=True)
class ConfidenceSequence:
    """lo[t-1], hi[t-1], mean[t-1]: the CS and the running mean of the first t differences."""

    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    alpha: float
    population: int | None


def confidence_sequence(
    diffs,
    *,
    alpha: float = 0.05,
    population: int | None = None,
    grid: int = 1001,
    c: float = 0.5,
    theta: float = 0.5,
) -> ConfidenceSequence:
    """Hedged betting CS for the mean of `diffs` (values in [-1, 1], in measurement order).

    Every candidate mean m on a grid of `grid` points carries two capital processes betting that
    the mean is above / below m, K+ = prod(1 + l+ (x_i - m_i)) and K- = prod(1 - l- (x_i - m_i)),
    with predictable bets l = sqrt(2 log(2/alpha) / (s2_{i-1} i log(1 + i))) truncated at c/m_i
    (resp. c/(1 - m_i)), s2 the regularised running variance; m is rejected once
    max(theta K+, (1 - theta) K-) reaches 1/alpha (Ville), and stays rejected (running
    intersection). m_i = m with replacement; without replacement (``population`` N), m_i =
    (N m - sum_{j<i} x_j) / (N - i + 1), the mean of what is left if the total mean is m, and a
    candidate whose m_i leaves [0, 1] is impossible. The interval is widened by one grid step so
    a mean between grid points is covered too; without replacement it is also cut to the
    deterministic bounds (the unseen problems' differences lie in [-1, 1]).
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"diffs: need a non-empty 1-D array, got shape {d.shape}")
    if not np.isfinite(d).all() or (np.abs(d) > 1 + 1e-12).any():
        raise ValueError("diffs: every paired difference must be finite and in [-1, 1]")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if population is not None and population < d.size:
        raise ValueError(f"population ({population}) is smaller than the number of differences ({d.size})")
    x = np.clip((d + 1.0) / 2.0, 0.0, 1.0)
    T = x.size
    t = np.arange(1, T + 1, dtype=float)

    # predictable plug-in bets (depend on x_1..x_{i-1} only)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)
    mu_prev = np.concatenate([[0.5], mu_hat[:-1]])
    s2 = (0.25 + np.cumsum((x - mu_prev) ** 2)) / (t + 1)
    s2_prev = np.concatenate([[0.25], s2[:-1]])
    lam = np.sqrt(2.0 * math.log(2.0 / alpha) / (s2_prev * t * np.log1p(t)))[:, None]

    m = np.linspace(0.0, 1.0, grid)[None, :]
    if population is None:
        m_i = np.broadcast_to(m, (T, grid))
        possible = np.ones((T, grid), dtype=bool)
    else:
        past = np.concatenate([[0.0], np.cumsum(x)[:-1]])[:, None]
        m_i = (population * m - past) / (population - t[:, None] + 1)
        possible = (m_i >= -1e-12) & (m_i <= 1 + 1e-12)
        m_i = np.clip(m_i, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        lam_up = np.minimum(lam, c / m_i)
        lam_down = np.minimum(lam, c / (1.0 - m_i))
    dev = x[:, None] - m_i
    log_up = np.cumsum(np.log1p(lam_up * dev), axis=0)
    log_down = np.cumsum(np.log1p(-lam_down * dev), axis=0)
    log_k = np.maximum(math.log(theta) + log_up, math.log(1 - theta) + log_down)
    rejected = (log_k >= math.log(1.0 / alpha)) | ~possible
    rejected = np.logical_or.accumulate(rejected, axis=0)

    step = 1.0 / (grid - 1)
    kept = ~rejected
    first, last = np.argmax(kept, axis=1), grid - 1 - np.argmax(kept[:, ::-1], axis=1)
    lo_x, hi_x = np.maximum(0.0, (first - 1) * step), np.minimum(1.0, (last + 1) * step)
    none = ~kept.any(axis=1)  # every candidate rejected (an error of probability < alpha): fall back to the mean
    mean_x = np.cumsum(x) / t
    lo_x, hi_x = np.where(none, mean_x, lo_x), np.where(none, mean_x, hi_x)
    if population is not None:
        seen = np.cumsum(x)
        sure_lo, sure_hi = seen / population, (seen + (population - t)) / population
        lo_x, hi_x = np.maximum(lo_x, sure_lo), np.minimum(hi_x, sure_hi)
        empty = lo_x > hi_x  # the betting CS missed: the deterministic bounds alone are still sure
        lo_x, hi_x = np.where(empty, sure_lo, lo_x), np.where(empty, sure_hi, hi_x)
    return ConfidenceSequence(2 * lo_x - 1, 2 * hi_x - 1, np.cumsum(d) / t, float(alpha), population)


@dataclass(frozen=True)
class SequentialGap:
    """Where a sequential measurement stopped: problems used (of n_total), the decision it settled
    (None: not settled, the full measurement decides), the CS then, and the running mean."""

    n_used: int
    n_total: int
    decision: str | None
    lo: float
    hi: float
    estimate: float

    @property
    def fraction(self) -> float:
        return self.n_used / self.n_total

    @property
    def gap(self) -> float:
        """The gap to report: the running mean, kept inside the CS (where the decision is settled);
        the exact mean once every problem is measured."""
        if self.n_used == self.n_total:
            return self.estimate
        return float(min(max(self.estimate, self.lo), self.hi))


def sequential_gap(
    diffs,
    settle: Callable[[float, float], str | None],
    *,
    alpha: float = 0.05,
    batch: int = 8,
    population: int | None | str = "all",
    cs: ConfidenceSequence | None = None,
    already: int = 0,
) -> SequentialGap:
    """Measure `diffs` (in order) `batch` problems at a time; after each batch ask
    ``settle(lo, hi)`` on the CS and stop at the first answer that is not None.

    population: "all" (default) -> without replacement from these len(diffs) problems (the
    target is their mean, the full measurement); an int N -> without replacement from N; None ->
    i.i.d. problems. cs: a precomputed ``confidence_sequence`` of the same diffs (a replay reuses
    it across decisions). already: the first `already` problems were measured before (by a
    decision that shares this measurement): they are used, and looked at first, for free.
    """
    d = np.asarray(diffs, dtype=float)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    n = d.size
    if cs is None:
        cs = confidence_sequence(d, alpha=alpha, population=n if population == "all" else population)
    elif cs.lo.size != n:
        raise ValueError(f"cs: has {cs.lo.size} steps for {n} differences")
    if not 0 <= already <= n:
        raise ValueError(f"already must be in [0, {n}], got {already!r}")
    checks = sorted({t for t in range(batch, n, batch) if t > already} | {n} | ({already} if already else set()))
    for t in checks:
        lo, hi = float(cs.lo[t - 1]), float(cs.hi[t - 1])
        decision = settle(lo, hi)
        if decision is not None:
            return SequentialGap(t, n, decision, lo, hi, float(cs.mean[t - 1]))
    return SequentialGap(n, n, None, float(cs.lo[-1]), float(cs.hi[-1]), float(cs.mean[-1]))


def law_settle(
    upper: Callable[[np.ndarray], np.ndarray],
    bar: float,
    *,
    lower: Callable[[np.ndarray], np.ndarray] | None = None,
    rule: str = "decision",
    points: int = 65,
) -> Callable[[float, float], str | None]:
    """The stopping rule of the law pruner (prune iff the law's upper prediction is below `bar`).

    upper(gaps) / lower(gaps): the law's prediction-interval bounds at an array of gaps. On
    [lo, hi] (`points` gaps, ends included): "prune" if max upper < bar; rule "decision":
    "train" if min upper >= bar (the pruner's decision is the same for every gap in the CS);
    rule "confident": "train" if min lower >= bar (needs `lower`). The upper bound of an OLS
    prediction interval is convex in the gap, so its maximum is at an end (exact) and its minimum
    is found on the grid.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "confident" and lower is None:
        raise ValueError("rule 'confident' needs the law's lower bound (lower=...)")

    def settle(lo: float, hi: float) -> str | None:
        gaps = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
        up = np.asarray(upper(gaps), dtype=float)
        if up.max() < bar:
            return PRUNE
        if rule == "decision" and up.min() >= bar:
            return TRAIN
        if rule == "confident" and np.asarray(lower(gaps), dtype=float).min() >= bar:
            return TRAIN
        return None

    return settle


# ----------------------------------------------------------------------------- live measurement (gap.sequential)


def aligned_batch(batch: int, samples: int, rows_per_call: int | None) -> int:
    """Problems per batch of a live sequential measurement: `batch` rounded up to the nearest
    multiple whose rows (``samples`` per problem, on either side) fill whole generate calls of
    `rows_per_call` rows. The HF engine generates `rows_per_call` rows at a time and its random
    draws depend on which rows share a call, so only then do the batches draw exactly what one
    full measurement draws (None: the engine schedules its own rows, nothing to align)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if not rows_per_call:
        return batch
    unit = rows_per_call // math.gcd(rows_per_call, samples)  # fewest problems that fill whole calls
    return -(-batch // unit) * unit


Settle = Callable[[float, float, dict], "str | None"]


@dataclass(frozen=True)
class StoppingRule:
    """What a live sequential gap stops on (a search's trial gate gives it, runs/gate.py):
    ``settle(lo, hi, covariates)`` after each batch ("prune", "train" or None: go on), or no
    settle and why (the decision will not depend on the gap: it is measured in full)."""

    settle: Settle | None
    why: str = ""


def policy_gate(policy: Callable[[float, dict], object], law: Callable[[], object], *,
                rule: str = "decision", gap_rules: tuple[str, ...]) -> StoppingRule:
    """The stopping rule of a live sequential gap, built from the pruner's own policy.

    policy(gap, covariates) -> pruner.Decision: ``decide_policy`` for this trial at that gap, with
    the study's inputs bound (and no calibration draw: calibration decides after the gap, it does
    not settle it); law() -> the LawView it predicts with; gap_rules: the rules whose outcome
    depends on the gap (pruner.GAP_RULES).

    No settle (and why) when the decision will not depend on the gap (already decided, not OPSD,
    startup, no law, no bar): then the gap is measured in full. Otherwise, after each batch,
    ``settle(lo, hi, covariates)`` (the CS and the law's covariates as measured so far, e.g.
    ``context_tokens``) asks the policy again at that gap, so the bar is the one the pruner would
    use now, and applies ``law_settle`` with the law's interval at ``Decision.level``.
    """
    probe = policy(0.0, {})
    if probe.rule not in (*gap_rules, "missing_input"):  # a covariate is known only once measured
        return StoppingRule(None, probe.reason)

    def settle(lo: float, hi: float, covariates: dict) -> str | None:
        decision = policy(float(lo), covariates)
        if decision.rule not in gap_rules:  # e.g. the law needs a covariate this trial does not record
            return None
        view = law()
        extra = {c: float(covariates[c]) for c in view.inputs if c != "gap"}

        def bounds(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            gaps = np.atleast_1d(np.asarray(gaps, dtype=float))
            _, lower, upper = view.predict({"gap": gaps, **{c: np.full(gaps.size, v) for c, v in extra.items()}},
                                           decision.level)
            return np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)

        return law_settle(lambda g: bounds(g)[1], float(decision.bar), lower=lambda g: bounds(g)[0], rule=rule)(lo, hi)

    return StoppingRule(settle)
