"""The cheap gap (docs/cheap-gap.md): estimators from the student's own samples and one teacher scoring pass."""

import itertools

import numpy as np
import pytest
import torch

from opsd_platform.config.compose import train_config
from opsd_platform.gap.estimators import (
    SampleSummary,
    bootstrap,
    cov_pooled,
    cov_within,
    estimates,
    is_ess,
    is_gap,
    is_teacher_pass_rate,
    ll_diff,
    summarise,
)
from opsd_platform.gap.measure import Sampling, cheap_gap, measure_student, sample_student, score_rows
from opsd_platform.models import load_policy
from opsd_platform.training.rollout import HFGenerateEngine
from opsd_platform.training.scoring import LossSettings, micro_batch_loss, scoring_with
from opsd_platform.training.sequences import chat_ids
from opsd_platform.worlds import make_world

# ----------------------------------------------------------------------------- pure estimators


def hand_batch() -> SampleSummary:
    # 2 problems x 3 samples
    passed = np.array([[1, 0, 0], [1, 1, 0]], dtype=float)
    ratio = np.array([[0.6, 0.0, -0.3], [0.2, 0.5, 0.2]])
    log_w = np.log(np.array([[2.0, 1.0, 1.0], [1.0, 3.0, 1.0]]))
    return SampleSummary(passed, ratio, log_w)


def test_estimators_against_hand_computation():
    s = hand_batch()
    # pooled: mean p = 1/2, mean r = 1.2/6 = 0.2; products (p - .5)(r - .2) summed:
    # .5*.4 + (-.5)(-.2) + (-.5)(-.5) + .5*0 + .5*.3 + (-.5)*0 = .2 + .1 + .25 + .15 = .7, / 6
    assert cov_pooled(s) == pytest.approx(0.7 / 6)
    # within problem 1: p mean 1/3, r mean 0.1: (2/3)(.5) + (-1/3)(-.1) + (-1/3)(-.4) = 1/3 + 1/30 + 4/30 = .5; /3
    # within problem 2: p mean 2/3, r mean 0.3: (1/3)(-.1) + (1/3)(.2) + (-2/3)(-.1) = 1/30 + 2/30 = .1; /3
    assert cov_within(s) == pytest.approx((0.5 / 3 + 0.1 / 3) / 2)
    # passing r: .6, .2, .5 (mean .4333); failing: 0, -.3, .2 (mean -.0333)
    assert ll_diff(s) == pytest.approx(1.3 / 3 - (-0.1) / 3)
    # SNIS per problem: (2*1)/(4) = .5 and (1 + 3)/5 = .8 -> .65; student .5
    assert is_teacher_pass_rate(s) == pytest.approx(0.65)
    assert is_gap(s) == pytest.approx(0.15)
    # ESS: (sum w)^2 / sum w^2 = 16/6 and 25/11, over n = 3
    assert is_ess(s) == pytest.approx((16 / 6 + 25 / 11) / 2 / 3)


def test_ll_diff_undefined_without_both_outcomes():
    s = SampleSummary(np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
    assert np.isnan(ll_diff(s))


def test_summarise_means_and_truncates_per_token():
    passed = np.array([1, 0])
    student = np.array([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    teacher = np.array([[0.0, -2.5, 9.0], [-0.5, 0.5, -1.5]])  # row 0's third token is past its end
    mask = np.array([[True, True, False], [True, True, True]])
    s = summarise(passed, student, teacher, mask, n=2, clip=2.0)
    assert s.ratio.shape == (1, 2)
    assert s.ratio[0, 0] == pytest.approx((1.0 - 0.5) / 2)
    assert s.ratio[0, 1] == pytest.approx((0.0 + 1.0 - 1.0) / 3)
    # per-token log-ratios capped at log 2 above, not below
    assert s.log_weight[0, 0] == pytest.approx(np.log(2.0) - 0.5)
    assert s.log_weight[0, 1] == pytest.approx(0.0 + np.log(2.0) - 1.0)
    with pytest.raises(ValueError, match="clip"):
        summarise(passed, student, teacher, mask, n=2, clip=1.0)


def test_bootstrap_interval_brackets_and_is_degenerate_for_a_constant():
    s = hand_batch()
    e = bootstrap(is_gap, s, n_boot=300, level=0.9)
    assert e.value == pytest.approx(0.15) and e.ci[0] <= e.ci[1]
    same = SampleSummary(np.tile([[1.0, 0.0]], (5, 1)), np.tile([[0.3, -0.1]], (5, 1)), np.zeros((5, 2)))
    c = bootstrap(cov_within, same, n_boot=100)
    assert c.ci[0] == pytest.approx(c.value) and c.ci[1] == pytest.approx(c.value)
    assert set(estimates(s, n_boot=50)) == {"cov_pooled", "ll_diff", "is_gap", "cov_within",
                                           "is_teacher_pass_rate", "is_ess"}


def _toy_model(rng, vocab: int, length: int):
    """log p(token | prefix) for every prefix of a tiny autoregressive model, fp64."""
    table = {}
    for t in range(length):
        for prefix in itertools.product(range(vocab), repeat=t):
            table[prefix] = np.log(rng.dirichlet(np.ones(vocab)))
    return table


def test_is_estimate_converges_to_the_exact_teacher_pass_rate():
    rng = np.random.default_rng(0)
    vocab, length = 3, 3
    student, teacher = _toy_model(rng, vocab, length), _toy_model(rng, vocab, length)

    def passes(y):  # a verdict the teacher and student disagree on
        return float(sum(y) % 2 == 0)

    def logp(model, y):
        return np.array([model[tuple(y[:t])][y[t]] for t in range(len(y))])

    exact = sum(np.exp(logp(teacher, y).sum()) * passes(y) for y in itertools.product(range(vocab), repeat=length))
    student_rate = sum(np.exp(logp(student, y).sum()) * passes(y)
                       for y in itertools.product(range(vocab), repeat=length))
    n = 40000
    ys = []
    for _ in range(n):
        y = []
        for t in range(length):
            y.append(int(rng.choice(vocab, p=np.exp(student[tuple(y)]))))
        ys.append(y)
    s_lp = np.array([logp(student, y) for y in ys])
    t_lp = np.array([logp(teacher, y) for y in ys])
    summary = summarise(np.array([passes(y) for y in ys]), s_lp, t_lp, np.ones_like(s_lp, bool), n=n, clip=1e12)
    assert abs(exact - student_rate) > 0.05  # the test can tell the teacher from the student
    assert is_teacher_pass_rate(summary) == pytest.approx(exact, abs=0.015)


# ----------------------------------------------------------------------------- the scoring pass (tiny model)


@pytest.fixture
def tiny(tiny_overrides):
    cfg = train_config(tiny_overrides)
    model, tok = load_policy(cfg.model)
    return cfg, model, tok, make_world(cfg.world)


def test_student_side_is_the_gap_student_side(tiny):
    cfg, model, tok, world = tiny
    problems = world.problems("train")[:4]
    sampling = Sampling(3, 10, 1.0)
    ours = sample_student(HFGenerateEngine(model, tok), world, problems, sampling, seed=5)
    theirs = measure_student(HFGenerateEngine(model, tok), world, problems, sampling, seed=5).evaluation
    assert ours.evaluation.texts == theirs.texts and ours.evaluation.per_problem == theirs.per_problem


def test_scored_logprobs_equal_sampling_and_training_logprobs(tiny):
    cfg, model, tok, world = tiny
    problems = world.problems("train")[:3]
    student = sample_student(HFGenerateEngine(model, tok), world, problems, Sampling(4, 10, 1.0), seed=1)
    ro = student.rollouts
    rows = list(range(len(ro)))
    scored = score_rows(model, ro.prompt_ids, ro, rows, tok.pad_token_id, batch_size=5)
    mask = ro.response_mask
    assert mask.sum() > 0
    torch.testing.assert_close(scored[mask], ro.logprobs[mask], atol=1e-4, rtol=1e-4)  # recorded at sampling
    train = micro_batch_loss(model, lambda: scoring_with(model), ro.prompt_ids, ro.prompt_ids, ro.response_ids,
                             mask, tok.pad_token_id, LossSettings(), need_token_logp=True)
    torch.testing.assert_close(scored[mask], train.token_logp.detach()[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context", ["reference", "feedback", "none"])
def test_cheap_gap_on_tiny_model(tiny, context):
    cfg, model, tok, world = tiny
    problems = world.problems("train")[:4]
    n = 3
    student = sample_student(HFGenerateEngine(model, tok), world, problems, Sampling(n, 10, 1.0), seed=0)
    result, summary = cheap_gap(model, tok, context, problems, student, n, n_boot=100)
    assert summary.ratio.shape == (4, n)
    passed = np.array([j.passed for j in student.evaluation.judgements], dtype=float).reshape(4, n)
    np.testing.assert_array_equal(summary.passed, passed)
    assert result.student_pass_rate == pytest.approx(student.evaluation.pass_rate)
    if context == "none":  # the teacher message is the student's prompt: nothing scored, log-ratio 0
        assert result.scored_tokens == 0 and np.all(summary.ratio == 0.0) and result.estimates["is_gap"].value == 0.0
    elif context == "feedback":  # only failures get the context: a passing sample's teacher is the student
        assert result.teacher_coverage == pytest.approx(1 - passed.mean())
        assert np.all(summary.ratio[passed == 1] == 0.0)
    else:
        assert result.teacher_coverage == 1.0 and np.all(summary.ratio != 0.0)
        # the scored teacher log-probs are those of the teacher prompt, by hand for one row
        from opsd_platform.gap.measure import teacher_messages

        messages, _ = teacher_messages(context, problems, student.evaluation, n)
        ro = student.rollouts
        one = score_rows(model, [chat_ids(tok, messages[0])], ro, [0], tok.pad_token_id)
        m = ro.response_mask[0]
        expected = ((one[0] - ro.logprobs[0])[m]).mean().item()
        assert summary.ratio[0, 0] == pytest.approx(expected, abs=1e-5)
    for e in result.estimates.values():
        assert np.isnan(e.value) or np.isfinite(e.value)
    assert result.cpu_s >= 0 and set(result.metrics()) >= {"gap_est/cov_within", "gap_est/is_ess_ci_low"}
