"""Diagnostics on the initial model: what would make a benchmark's result an artefact.

Before a grid trains anything, a few minutes of sampling tell whether its numbers will be about
OPSD or about how they were measured (bench-v2's first step):

- **Truncation**: the share of generations that hit the token cap (cut mid-answer: the grader sees
  half an answer and training learns from it) and the share that end on an EOS of their own.
- **Format**: the share of generations from which the world's grader can extract an answer at all
  (a context that teaches a form the grader rejects turns every teacher win into a loss).
- **Where the divergence sits**: the per-token reverse KL(student || teacher) on the student's own
  samples, split by position class: the first tokens, code-fence tokens, the EOS, the rest, and
  the share carried by the top-K support's tail bucket (mass the student's top K does not hold).

The functions here are pure (tensors, texts and judgements in, numbers out); the runner that
samples and scores is ``benchmarks/diagnose.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from opsd_platform.training.losses import divergence_terms, support_index, support_logprobs

FIRST_TOKENS = 3  # positions counted as "first tokens" (the opening a context most often changes)
POSITION_CLASSES = ("first", "fence", "eos", "other")


@dataclass(frozen=True)
class LengthStats:
    """How a batch of generations ended."""

    n: int
    mean_tokens: float
    capped: float  # share that used every allowed token without an EOS (cut by the cap)
    eos: float  # share that ended on an EOS (or a stop string) of their own


def length_stats(lengths: Sequence[int], ended: Sequence[bool], max_new_tokens: int) -> LengthStats:
    """Shares of capped and self-ended generations. A generation that ended exactly at the cap
    on its own EOS counts as ended, not capped."""
    if len(lengths) != len(ended):
        raise ValueError(f"{len(lengths)} lengths but {len(ended)} end flags")
    n = len(lengths)
    if n == 0:
        return LengthStats(0, float("nan"), float("nan"), float("nan"))
    capped = sum(1 for k, e in zip(lengths, ended) if not e and k >= max_new_tokens)
    return LengthStats(n, sum(lengths) / n, capped / n, sum(bool(e) for e in ended) / n)


def position_classes(token_texts: Sequence[str], is_eos: Sequence[bool]) -> list[str]:
    """Each response position's class: "eos" (the EOS token), "fence" (a token holding part of a
    ``` fence: a backtick), "first" (one of the first FIRST_TOKENS), else "other". EOS and fence
    win over "first", so a reply that opens with a fence counts it as a fence."""
    out = []
    for t, (text, eos) in enumerate(zip(token_texts, is_eos)):
        if eos:
            out.append("eos")
        elif "`" in text:
            out.append("fence")
        elif t < FIRST_TOKENS:
            out.append("first")
        else:
            out.append("other")
    return out


@dataclass(frozen=True)
class DivergenceSplit:
    """Where the per-token divergence of a batch sits."""

    total: float  # sum of the per-token divergence over all scored positions
    mean_per_token: float
    share: dict[str, float]  # POSITION_CLASSES -> share of `total`
    mean: dict[str, float]  # POSITION_CLASSES -> mean divergence per token of that class
    count: dict[str, int]  # POSITION_CLASSES -> scored positions of that class
    tail_share: float  # share of `total` carried by the support's tail bucket


def token_divergence_terms(
    student_logits: torch.Tensor,  # [N, T, V]
    teacher_logits: torch.Tensor,  # [N, T, V]
    tokens: torch.Tensor,  # [N, T]
    top_k: int = 20,
) -> torch.Tensor:  # [N, T, K+1] per-outcome terms of KL(s || t) on the student's top-K + tail
    """The per-outcome terms of the training loss's default divergence (reverse KL on the
    student's top-K plus a tail bucket), before any clip: their sum over the last axis is the
    per-token loss, and the last entry is the tail bucket's part."""
    index = support_index(student_logits, tokens, "topk", top_k)
    log_s = support_logprobs(student_logits, index, "topk")
    log_t = support_logprobs(teacher_logits, index, "topk")
    return divergence_terms(log_s, log_t, "reverse")


def split_divergence(terms: torch.Tensor, mask: torch.Tensor, classes: Sequence[Sequence[str]]) -> DivergenceSplit:
    """terms [N, T, S] (tail last), mask [N, T] (scored positions), classes [N][T] -> the split.

    Rows of `classes` may be shorter than T: positions past a row's end must be masked out."""
    per_token = terms.sum(-1)  # [N, T]
    tail = terms[..., -1]  # [N, T]
    sums = {c: 0.0 for c in POSITION_CLASSES}
    counts = {c: 0 for c in POSITION_CLASSES}
    total = tail_total = 0.0
    for i, row in enumerate(classes):
        for t, c in enumerate(row):
            if not bool(mask[i, t]):
                continue
            value = float(per_token[i, t])
            sums[c] += value
            counts[c] += 1
            total += value
            tail_total += float(tail[i, t])
    n = sum(counts.values())
    safe = total if total > 0 else float("nan")
    return DivergenceSplit(
        total=total,
        mean_per_token=total / n if n else float("nan"),
        share={c: sums[c] / safe for c in POSITION_CLASSES},
        mean={c: (sums[c] / counts[c] if counts[c] else float("nan")) for c in POSITION_CLASSES},
        count=counts,
        tail_share=tail_total / safe,
    )


def monotone(values: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether `values` never fall by more than `tolerance` from one to the next (non-decreasing
    within measurement noise): the check on the graded context's gap against its share."""
    return all(b >= a - tolerance for a, b in zip(values, values[1:]))
