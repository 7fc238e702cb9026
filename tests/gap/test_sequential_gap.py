"""Sequential gap (opsd_platform/gap/sequential.py): the confidence sequence is anytime-valid on
synthetic Bernoulli data (statistical tests with fixed seeds), the decision it settles is wrong
at most at the nominal rate, and it stops earlier the farther the gap is from the bar."""

import numpy as np
import pytest
from scipy import stats

from opsd_platform.gap.sequential import (
    PRUNE,
    TRAIN,
    confidence_sequence,
    law_settle,
    paired_differences,
    sequential_gap,
)

ALPHA = 0.1
REPS = 300


def bernoulli_diffs(rng, n_problems, p_student, p_teacher, samples=4):
    """Per-problem (teacher - student) pass rates of `samples` Bernoulli draws each."""
    s = rng.binomial(samples, p_student, n_problems)
    t = rng.binomial(samples, p_teacher, n_problems)
    return paired_differences(s, t, np.full(n_problems, samples))


def at_most_nominal(failures: int, reps: int, alpha: float) -> bool:
    """One-sided binomial test at the 0.1 % level: is the failure rate consistent with <= alpha?"""
    return failures <= stats.binom.ppf(0.999, reps, alpha)


def linear_law(intercept=-0.05, slope=1.2, half_width=0.05):
    """A law's interval bounds as functions of the gap (a constant-width band, enough for the rule)."""
    return ((lambda g: intercept + slope * np.asarray(g) + half_width),
            (lambda g: intercept + slope * np.asarray(g) - half_width))


def test_paired_differences_checks_its_input():
    assert paired_differences([0, 2], [4, 1], [4, 4]).tolist() == [1.0, -0.25]
    with pytest.raises(ValueError, match="problem 1"):
        paired_differences([0, 5], [4, 1], [4, 4])
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_differences([0], [1, 2], [4, 4])


def test_iid_confidence_sequence_covers_the_mean_at_all_times_at_the_nominal_rate():
    rng = np.random.default_rng(2026)
    misses = 0
    naive_misses = 0  # a fixed-n 90 % interval re-tested after every batch: what the CS replaces
    z = stats.norm.ppf(1 - ALPHA / 2)
    for _ in range(REPS):
        d = bernoulli_diffs(rng, 200, 0.4, 0.6)
        cs = confidence_sequence(d, alpha=ALPHA, population=None, grid=401)
        misses += bool(((cs.lo > 0.2) | (cs.hi < 0.2)).any())
        t = np.arange(1, d.size + 1)
        sd = np.array([d[:k].std(ddof=1) if k > 1 else 1.0 for k in t])
        half = z * sd / np.sqrt(t)
        batches = t[7::8] - 1
        naive_misses += bool((np.abs(cs.mean[batches] - 0.2) > half[batches]).any())
    assert at_most_nominal(misses, REPS, ALPHA), misses
    assert naive_misses > ALPHA * REPS * 1.5, naive_misses  # re-testing inflates the error well past alpha


def test_without_replacement_cs_targets_the_full_measurement_and_ends_on_it():
    rng = np.random.default_rng(7)
    misses = 0
    for _ in range(REPS):
        d = rng.permutation(bernoulli_diffs(rng, 64, 0.3, 0.45))
        cs = confidence_sequence(d, alpha=ALPHA, population=d.size, grid=401)
        misses += bool(((cs.lo > d.mean() + 1e-12) | (cs.hi < d.mean() - 1e-12)).any())
        assert cs.lo[-1] == pytest.approx(d.mean()) and cs.hi[-1] == pytest.approx(d.mean())
        assert (np.diff(cs.hi - cs.lo) <= 1e-12).all()  # a running intersection only shrinks
    assert at_most_nominal(misses, REPS, ALPHA), misses


@pytest.mark.parametrize("p_teacher, truth", [(0.52, PRUNE), (0.68, TRAIN)])
def test_the_settled_decision_is_wrong_at_most_at_the_nominal_rate(p_teacher, truth):
    # bar 0.15: the law's upper bound reaches it at gap 0.125; true gaps 0.12 and 0.28 are near it and far from it
    upper, lower = linear_law()
    settle = law_settle(upper, 0.15, lower=lower)
    assert (upper(p_teacher - 0.4) >= 0.15) == (truth == TRAIN)
    rng = np.random.default_rng(11 + int(100 * p_teacher))
    wrong = 0
    for _ in range(REPS):
        d = bernoulli_diffs(rng, 256, 0.4, p_teacher)
        cs = confidence_sequence(d, alpha=ALPHA, population=None, grid=401)
        result = sequential_gap(d, settle, batch=8, cs=cs)
        wrong += result.decision is not None and result.decision != truth
    assert at_most_nominal(wrong, REPS, ALPHA), wrong


def test_stops_earlier_when_the_gap_is_far_from_the_bar():
    upper, lower = linear_law()
    settle = law_settle(upper, 0.15, lower=lower)
    rng = np.random.default_rng(5)
    used = {}
    for name, p_teacher in (("far below", 0.40), ("near", 0.55), ("far above", 0.80)):
        runs = [sequential_gap(d, settle, batch=8, alpha=ALPHA)
                for d in (bernoulli_diffs(rng, 128, 0.4, p_teacher) for _ in range(40))]
        used[name] = np.mean([r.n_used for r in runs])
        if name != "near":
            assert all(r.decision == (PRUNE if name == "far below" else TRAIN) for r in runs)
    assert used["far below"] < 0.6 * used["near"] and used["far above"] < 0.6 * used["near"], used
    assert used["far below"] < 64 and used["far above"] < 64, used


def test_stopping_rules_batches_and_shared_measurements():
    d = np.array([1.0] * 16 + [0.0] * 16)
    upper, lower = linear_law(intercept=0.0, slope=1.0, half_width=0.1)
    never = lambda lo, hi: None  # noqa: E731
    full = sequential_gap(d, never, batch=8)
    assert (full.n_used, full.decision, full.gap) == (32, None, pytest.approx(0.5))
    assert full.lo == pytest.approx(0.5) and full.hi == pytest.approx(0.5)  # without replacement: exact at the end
    checked = []
    sequential_gap(d, lambda lo, hi: checked.append((lo, hi)), batch=10, already=13)
    assert len(checked) == 4  # at 13 (already measured, free), 20, 30 and 32
    train = sequential_gap(d, law_settle(upper, -0.5, lower=lower), batch=8)
    assert train.decision == TRAIN and train.n_used == 8 and train.lo <= train.gap <= train.hi
    confident = sequential_gap(d, law_settle(upper, 0.55, lower=lower, rule="confident"), batch=8)
    decision = sequential_gap(d, law_settle(upper, 0.55, lower=lower, rule="decision"), batch=8)
    assert decision.n_used <= confident.n_used  # the confident rule needs the lower bound to clear the bar
    with pytest.raises(ValueError, match="batch"):
        sequential_gap(d, never, batch=0)
    with pytest.raises(ValueError, match="rule"):
        law_settle(upper, 0.1, rule="maybe")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        confidence_sequence([0.5, 1.5])
