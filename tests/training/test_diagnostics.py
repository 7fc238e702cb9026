"""Diagnostics before a grid (training/diagnostics.py, benchmarks/diagnose.py): truncation shares,
position classes, where the divergence sits, and why a context is skipped."""

import pytest
import torch

from opsd_platform.training.diagnostics import (
    length_stats,
    monotone,
    position_classes,
    split_divergence,
    token_divergence_terms,
)
from opsd_platform.training.losses import token_divergence
from opsd_platform.worlds.base import Problem


def test_length_stats_count_cut_and_ended_generations():
    s = length_stats([48, 48, 12, 48], [False, True, True, False], 48)
    assert (s.n, s.capped, s.eos, s.mean_tokens) == (4, 0.5, 0.5, 39.0)  # an EOS at the cap is not cut


def test_position_classes_and_the_split_of_the_divergence():
    classes = position_classes(["```", "py", "x", "=", "1", "```", "</s>"], [False] * 6 + [True])
    assert classes == ["fence", "first", "first", "other", "other", "fence", "eos"]
    torch.manual_seed(0)
    s, t = torch.randn(1, 7, 30), torch.randn(1, 7, 30)
    tokens = torch.randint(0, 30, (1, 7))
    terms = token_divergence_terms(s, t, tokens, top_k=5)
    # the terms sum to the training loss's per-token divergence (reverse KL, top-K + tail, no clip)
    assert terms.sum(-1) == pytest.approx(token_divergence(s, t, tokens, support="topk", top_k=5), abs=1e-6)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, 6] = False  # past the end: not counted
    split = split_divergence(terms, mask, [classes])
    per = terms.sum(-1)[0]
    assert split.count == {"first": 2, "fence": 2, "eos": 0, "other": 2}
    assert split.total == pytest.approx(float(per[:6].sum()), rel=1e-5)
    assert split.share["fence"] == pytest.approx(float((per[0] + per[5]) / per[:6].sum()), rel=1e-5)
    assert split.tail_share == pytest.approx(float(terms[0, :6, -1].sum() / per[:6].sum()), rel=1e-5)


def test_monotone_within_a_tolerance():
    assert monotone([0.0, 0.1, 0.1, 0.3]) and not monotone([0.0, 0.2, 0.1])
    assert monotone([0.0, 0.2, 0.17], tolerance=0.05)


def test_a_world_without_references_says_which_contexts_were_skipped_and_why():
    from benchmarks.diagnose import skip_reason

    bare = [Problem(id="p", prompt="x", reference="")]
    assert "this world's problems have none" in skip_reason("reference", bare, [False])
    assert "this world's problems have none" in skip_reason("shuffled_reference", bare, [False])
    assert "no sample had a feedback context" in skip_reason("feedback", bare, [False])
    assert skip_reason("reference", [Problem(id="p", prompt="x", reference="1")], [True]) is None
