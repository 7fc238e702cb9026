"""The cheap gap: the estimators of gap_estimators.py, from the gap's student side plus ONE teacher
scoring pass per context (no teacher generation).

    student  -> n answers per problem under the plain prompt, from stream "gap/student" (the very
                answers gap.measure_student draws), kept with their tokens and the log-prob of
                each sampled token under the raw policy (the HF engine records it while sampling)
    contexts -> each sample's teacher message (gap.teacher_messages: as the pass-rate gap)
    teacher  -> the step-0 self-teacher is the initial model: it *scores* the student's tokens
                under each sample's teacher prompt (scoring.sampled_token_logprobs, the lean
                scorer's teacher half), micro-batch by micro-batch, no grad
    estimate -> per-sample log-ratios -> every estimator with its bootstrap interval over problems

A sample whose context is unavailable has the plain prompt as its teacher message, so its
teacher is the student itself: its log-ratio is 0 by definition and it is not scored (the pass-rate
gap generates an answer for it; here it costs nothing). The same holds for any teacher message
equal to the student's prompt (the context ``none``). ``CheapGapResult.cpu_s`` is the scoring
pass alone: the student side is shared with the pass-rate gap and with every context.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from opsd_platform.training.evaluation import Evaluation, cpu_seconds, judged, seeded_stream
from opsd_platform.training.gap import STUDENT_STREAM, Sampling, teacher_messages
from opsd_platform.training.gap_estimators import DEFAULT_CLIP, Estimate, SampleSummary, estimates, summarise
from opsd_platform.training.precision import DEFAULT_PRECISION, autocast
from opsd_platform.training.rollout import Rollouts, chat_ids, chunks, model_device
from opsd_platform.training.scoring import sampled_token_logprobs
from opsd_platform.worlds.base import Problem, World


@dataclass(frozen=True)
class StudentSamples:
    """The gap's student side with its tokens: what the cheap gap scores."""

    rollouts: Rollouts
    evaluation: Evaluation
    cpu_s: float
    seconds: float


def sample_student(engine, world: World, problems: Sequence[Problem], sampling: Sampling, seed: int) -> StudentSamples:
    """gap.measure_student, keeping the rollouts: same stream, same call, same answers."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    with seeded_stream(seed, STUDENT_STREAM):
        rollouts = engine.generate([p.prompt for p in problems], n=sampling.n, **sampling.kwargs())
        evaluation = judged(world, problems, rollouts, sampling.n)
    return StudentSamples(rollouts, evaluation, cpu_seconds() - c0, time.perf_counter() - t0)


@torch.inference_mode()
def score_rows(model, prompts: Sequence[Sequence[int]], rollouts: Rollouts, rows: Sequence[int], pad_id: int, *,
               batch_size: int = 16, share_prefix: bool = True, precision: str = DEFAULT_PRECISION) -> torch.Tensor:
    """[len(rows), T] log-prob of each sampled token of `rows` under `model` and that row's prompt
    in `prompts` (indexed like the rollouts' rows), `batch_size` rows per forward pass."""
    out = torch.zeros((len(rows), rollouts.response_ids.shape[1]), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, model_device(model)):
            for sl in chunks(len(rows), batch_size):
                chunk = list(rows[sl])
                logp = sampled_token_logprobs(model, [prompts[i] for i in chunk], rollouts.response_ids[chunk],
                                              rollouts.response_mask[chunk], pad_id, share_prefix)
                out[sl] = logp.float().cpu()
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class CheapGapResult:
    context: str
    n_problems: int
    samples_per_problem: int
    student_pass_rate: float
    estimates: dict[str, Estimate]  # gap_estimators.ESTIMATORS + is_teacher_pass_rate, is_ess
    teacher_coverage: float  # share of samples with a privileged context
    scored_tokens: int  # response tokens the teacher scored
    cpu_s: float  # the teacher scoring pass
    seconds: float
    clip: float  # the IS weights' per-token ratio cap

    def metrics(self) -> dict[str, float]:
        """Flat `gap_est/...` metrics for MLflow."""
        out = {"gap_est/cpu_s": self.cpu_s, "gap_est/seconds": self.seconds,
               "gap_est/scored_tokens": float(self.scored_tokens)}
        for name, e in self.estimates.items():
            out.update({f"gap_est/{name}": e.value, f"gap_est/{name}_ci_low": e.ci[0],
                        f"gap_est/{name}_ci_high": e.ci[1]})
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimates"] = {k: v.to_dict() for k, v in self.estimates.items()}
        return d


def cheap_gap(model, tokenizer, context: str, problems: Sequence[Problem], student: StudentSamples, n: int, *,
              graded_fraction: float = 0.5, batch_size: int = 16, share_prefix: bool = True,
              precision: str = DEFAULT_PRECISION, clip: float = DEFAULT_CLIP, n_boot: int = 2000,
              level: float = 0.95, seed: int = 0) -> tuple[CheapGapResult, SampleSummary]:
    """The estimators of `context`'s gap at step 0 (module doc), and the per-sample summary."""
    ro = student.rollouts
    if ro.logprobs is None:
        raise ValueError("cheap_gap needs the sampled tokens' log-probs (the HF and vLLM engines record them)")
    t0, c0 = time.perf_counter(), cpu_seconds()
    messages, has_context = teacher_messages(context, problems, student.evaluation, n, graded_fraction)
    # a teacher message equal to the student's prompt (no context, or the context `none`) makes the
    # teacher the student: log-ratio 0 by definition, nothing to score
    rows = [i for i, has in enumerate(has_context) if has and messages[i] != problems[i // n].prompt]
    prompts = {i: chat_ids(tokenizer, messages[i]) for i in rows}
    teacher = ro.logprobs.clone()  # no context: the teacher is the student, log-ratio 0
    if rows:
        teacher[rows] = score_rows(model, prompts, ro, rows, tokenizer.pad_token_id, batch_size=batch_size,
                                   share_prefix=share_prefix, precision=precision)
    cpu_s, seconds = cpu_seconds() - c0, time.perf_counter() - t0
    passed = np.array([j.passed for j in student.evaluation.judgements], dtype=float)
    mask = ro.response_mask.numpy()
    summary = summarise(passed, ro.logprobs.numpy(), teacher.numpy(), mask, n, clip)
    result = CheapGapResult(
        context=context, n_problems=len(problems), samples_per_problem=n,
        student_pass_rate=float(passed.mean()), estimates=estimates(summary, n_boot, level, seed),
        teacher_coverage=float(np.mean(has_context)), scored_tokens=int(mask[rows].sum()) if rows else 0,
        cpu_s=cpu_s, seconds=seconds, clip=clip,
    )
    return result, summary
