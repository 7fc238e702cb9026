"""Gap estimators that need no teacher sampling: pure functions of the student's own samples.

The pass-rate gap (gap.py) makes the self-teacher *generate* one answer per student sample. The
estimators here read only what the student side already has, per sample i of problem b:

    passed[b, i]       its verdict (0/1)
    log p_S(y_t)       each sampled token's log-prob under the student (recorded at sampling)
    log p_T(y_t)       the same token's log-prob under the self-teacher's prompt: ONE scoring
                       pass over the student's tokens (gap.cheap_gap), no generation

and summarise them per sample as the mean per-token log-ratio

    r[b, i] = mean_t (log p_T(y_t) - log p_S(y_t))

and the truncated log importance weight ``log_w[b, i] = sum_t min(log p_T - log p_S, log clip)``.
Every estimator below maps ``[B, n]`` arrays to one number; ``bootstrap`` gives its percentile
interval by resampling problems (rows), as the pass-rate gap's intervals do.

Why each one (the first three are the issue's; the fourth is the one the first-order argument
actually gives):

- ``cov_pooled``: Cov(passed, r) over all samples. One reverse-KL OPSD step moves probability
  towards samples the teacher likes more than the student does (r > 0); if those are the passing
  ones the pass rate goes up.
- ``ll_diff``: mean r on passing samples minus mean r on failing ones (pooled): the same question
  asked as a difference of means, which does not shrink when the pass rate is near 0 or 1.
- ``is_gap``: the teacher's pass rate estimated by self-normalised importance sampling within each
  problem (weights w = exp(log_w), per-token ratios truncated above at ``clip``), minus the
  student's pass rate; ``is_ess`` is the mean effective sample size per problem over n, the
  warning light: near 1/n the weights sit on one sample and the estimate is that sample's verdict.
  Exact only when the gap samples at temperature 1 and top-p 1 (the recorded log-probs are those
  of the raw policy); and a problem none of whose student samples pass gets a teacher estimate of 0
  whatever the teacher would do, so the estimate is biased towards the student where it fails.
- ``cov_within``: the mean over problems of the covariance *within* each problem. For a softmax
  over a problem's answers with one free logit per answer, one step of the sequence-level
  reverse-KL gradient changes that problem's pass rate by (step size) x Cov_{y ~ p_S}(pass(y),
  r(y)): the first-order effect is a within-problem covariance. The pooled covariance adds the
  between-problem part (easy problems with a teacher that is also more confident there), which
  no step on a problem's own answers turns into passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

ESTIMATORS = ("cov_pooled", "ll_diff", "is_gap", "cov_within")
DEFAULT_CLIP = 2.0  # per-token ratio truncation of the IS weights (truncated IS's usual C)


@dataclass(frozen=True)
class SampleSummary:
    """What the estimators read, one row per problem and one column per student sample."""

    passed: np.ndarray  # [B, n] 0/1
    ratio: np.ndarray  # [B, n] mean per-token log p_T - log p_S
    log_weight: np.ndarray  # [B, n] sum over tokens of the truncated per-token log-ratio

    def rows(self, idx: np.ndarray) -> "SampleSummary":
        return SampleSummary(self.passed[idx], self.ratio[idx], self.log_weight[idx])


def summarise(passed: np.ndarray, student_logp: np.ndarray, teacher_logp: np.ndarray, mask: np.ndarray,
              n: int, clip: float = DEFAULT_CLIP) -> SampleSummary:
    """Per-sample summaries of N = B * n samples (problem-major rows, tokens [N, T] with `mask`)."""
    if clip <= 1.0:
        raise ValueError(f"clip must be > 1 (a per-token ratio cap), got {clip}")
    passed = np.asarray(passed, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if passed.ndim != 1 or len(passed) % n or mask.shape[0] != len(passed):
        raise ValueError(f"need N = B * n rows (n={n}): passed {passed.shape}, mask {mask.shape}")
    diff = np.where(mask, np.asarray(teacher_logp, dtype=float) - np.asarray(student_logp, dtype=float), 0.0)
    tokens = np.maximum(mask.sum(axis=1), 1)
    ratio = diff.sum(axis=1) / tokens
    log_weight = np.where(mask, np.minimum(diff, np.log(clip)), 0.0).sum(axis=1)
    b = len(passed) // n
    return SampleSummary(passed.reshape(b, n), ratio.reshape(b, n), log_weight.reshape(b, n))


# ----------------------------------------------------------------------------- the estimators


def cov_pooled(s: SampleSummary) -> float:
    p, r = s.passed.ravel(), s.ratio.ravel()
    return float(np.mean((p - p.mean()) * (r - r.mean())))


def cov_within(s: SampleSummary) -> float:
    p = s.passed - s.passed.mean(axis=1, keepdims=True)
    r = s.ratio - s.ratio.mean(axis=1, keepdims=True)
    return float(np.mean((p * r).mean(axis=1)))


def ll_diff(s: SampleSummary) -> float:
    """NaN when no sample passes or none fails (the difference is undefined there)."""
    p, r = s.passed.ravel().astype(bool), s.ratio.ravel()
    if p.all() or not p.any():
        return float("nan")
    return float(r[p].mean() - r[~p].mean())


def _snis_weights(s: SampleSummary) -> np.ndarray:  # [B, n], each row sums to 1
    w = np.exp(s.log_weight - s.log_weight.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def is_teacher_pass_rate(s: SampleSummary) -> float:
    return float(np.mean((_snis_weights(s) * s.passed).sum(axis=1)))


def is_gap(s: SampleSummary) -> float:
    return is_teacher_pass_rate(s) - float(s.passed.mean())


def is_ess(s: SampleSummary) -> float:
    """Mean effective sample size per problem, (sum w)^2 / sum w^2, as a fraction of n (1/n .. 1)."""
    w = _snis_weights(s)
    return float(np.mean(1.0 / (w**2).sum(axis=1)) / s.passed.shape[1])


FUNCTIONS: dict[str, Callable[[SampleSummary], float]] = {
    "cov_pooled": cov_pooled, "ll_diff": ll_diff, "is_gap": is_gap, "cov_within": cov_within}


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Estimate:
    value: float
    ci: tuple[float, float]
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap(fn: Callable[[SampleSummary], float], s: SampleSummary, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Estimate:
    """fn(s) with a percentile interval over problems resampled with replacement (replicates where
    fn is undefined, NaN, are left out)."""
    rng = np.random.default_rng(seed)
    b = s.passed.shape[0]
    reps = np.array([fn(s.rows(rng.integers(0, b, size=b))) for _ in range(n_boot)])
    reps = reps[np.isfinite(reps)]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(reps, q) if len(reps) else (float("nan"), float("nan"))
    return Estimate(fn(s), (float(lo), float(hi)), level)


def estimates(s: SampleSummary, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """Every estimator of ``ESTIMATORS`` plus the IS teacher pass rate and ESS, with intervals."""
    out = {name: bootstrap(FUNCTIONS[name], s, n_boot, level, seed) for name in ESTIMATORS}
    out["is_teacher_pass_rate"] = bootstrap(is_teacher_pass_rate, s, n_boot, level, seed)
    out["is_ess"] = bootstrap(is_ess, s, n_boot, level, seed)
    return out
