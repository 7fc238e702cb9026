"""The initial gap: self-teacher pass rate minus student pass rate, before any training.

On the same problems and the same n student samples per problem:

    student  -> n answers per problem, judged                      -> student pass rate
    contexts -> each sample's teacher prompt (as training builds it)
    teacher  -> one answer per sample, *generated* by the same model under that teacher prompt,
                judged                                             -> self-teacher pass rate
    gap = teacher - student, with bootstrap intervals over problems (paired)

A sample whose context is unavailable (no peer succeeded, a success under `feedback`, ...) gets
no teacher in training. Here its teacher answer is generated under the *plain* student prompt,
so it contributes zero to the gap in expectation. Scoring it as the student's own outcome instead
would bias the gap upwards for contexts given only to failures: resampling alone already fixes
some failures (docs/method.md, "The gap"). This is a departure from a literal "teacher = student
for unavailable contexts", on purpose.

The measurement is one rollout pass (student + teacher generations, no backward), a small
fraction of a training run; ``GapResult`` carries its cost in tokens and seconds.

Each side samples from a stream of its own (``evaluation.seeded_stream``): the student side from
"gap/student", the teacher side from "gap/teacher/<context>". The student side therefore does not
depend on the context, and either side can be measured once and reused by every run that shares
its key (measurements.py) with the same result as measuring it again.

The cheap gap (the end of this module; issue 31, docs/cheap-gap.md): the estimators of
gap_estimators.py from the student side plus ONE teacher scoring pass per context, no teacher
generation:

    student  -> n answers per problem under the plain prompt, from stream "gap/student" (the very
                answers measure_student draws), kept with their tokens and the log-prob of
                each sampled token under the raw policy (the HF engine records it while sampling)
    contexts -> each sample's teacher message (teacher_messages: as the pass-rate gap)
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
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from opsd_platform.config.choices import DEFAULT_PRECISION
from opsd_platform.gap.estimators import DEFAULT_CLIP, Estimate, SampleSummary, estimates, summarise
from opsd_platform.training.contexts import DEFAULT_FORM, build_for_rollouts
from opsd_platform.training.evaluation import Evaluation, Stream, cpu_seconds, evaluate, judged, seeded_stream
from opsd_platform.training.precision import autocast
from opsd_platform.training.rollout import Rollouts
from opsd_platform.training.scoring import sampled_token_logprobs
from opsd_platform.training.sequences import chat_ids, chunks, model_device
from opsd_platform.worlds.base import Problem, World


@dataclass(frozen=True)
class GapResult:
    context: str
    n_problems: int
    samples_per_problem: int
    student_pass_rate: float
    teacher_pass_rate: float
    gap: float
    student_ci: tuple[float, float]
    teacher_ci: tuple[float, float]
    gap_ci: tuple[float, float]
    level: float  # confidence level of the intervals
    teacher_coverage: float  # share of samples that had a privileged context
    tokens_generated: int  # student + teacher response tokens
    teacher_prompt_tokens: float  # mean teacher prompt length (a confounder the law can check)
    seconds: float
    per_problem: list[dict] = field(default_factory=list)  # id, student, teacher pass rates
    examples: list[dict] = field(default_factory=list)  # a few (prompt, student, teacher) triples
    cpu_s: float = 0.0  # CPU seconds of both sides when they were measured (reused ones included)
    student_cpu_s: float = 0.0  # of which the student side (shared by every context)
    student_tokens: int = 0  # response tokens of the student side
    student_key: str = ""  # measurement keys of the two sides (measurements.py), "" when not stored
    teacher_key: str = ""
    reused: list[str] = field(default_factory=list)  # sides loaded from earlier measurements
    # gap.sequential (measurements.py): where the measurement stopped, its confidence sequence and
    # what stopping saved; None for a full measurement made the usual way
    sequential: dict | None = None

    def metrics(self) -> dict[str, float]:
        """Flat `gap/...` metrics for MLflow."""
        return {
            "gap/value": self.gap,
            "gap/student_pass_rate": self.student_pass_rate,
            "gap/teacher_pass_rate": self.teacher_pass_rate,
            "gap/ci_low": self.gap_ci[0],
            "gap/ci_high": self.gap_ci[1],
            "gap/student_ci_low": self.student_ci[0],
            "gap/student_ci_high": self.student_ci[1],
            "gap/teacher_ci_low": self.teacher_ci[0],
            "gap/teacher_ci_high": self.teacher_ci[1],
            "gap/teacher_coverage": self.teacher_coverage,
            "gap/tokens": float(self.tokens_generated),
            "gap/teacher_prompt_tokens": self.teacher_prompt_tokens,
            "gap/seconds": self.seconds,
            "gap/cpu_s": self.cpu_s,
            "gap/student_cpu_s": self.student_cpu_s,
            "gap/student_tokens": float(self.student_tokens),
            "gap/reused_sides": float(len(self.reused)),
            **({f"gap/sequential_{k}": float(v) for k, v in self.sequential.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)} if self.sequential else {}),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_means(
    student: np.ndarray,  # [B] per-problem student pass rate
    teacher: np.ndarray,  # [B] per-problem teacher pass rate
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Percentile intervals for the student mean, the teacher mean and the paired gap."""
    if len(student) != len(teacher) or len(student) == 0:
        raise ValueError(f"need equal, non-empty per-problem arrays, got {len(student)} and {len(teacher)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(student), size=(n_boot, len(student)))
    s, t = student[idx].mean(axis=1), teacher[idx].mean(axis=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(x, q)
        return float(lo), float(hi)

    return interval(s), interval(t), interval(t - s)


@dataclass(frozen=True)
class Sampling:
    """How the gap samples (shared by its student and teacher sides)."""

    n: int  # student samples per problem
    max_new_tokens: int
    temperature: float
    top_p: float = 1.0

    def kwargs(self) -> dict:
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


@dataclass(frozen=True)
class Side:
    """One side of the gap, measured now or reused: its answers and what measuring them cost."""

    evaluation: Evaluation
    cpu_s: float  # CPU seconds the measurement took when it was made
    seconds: float  # wall seconds, likewise
    reused: bool = False  # True when loaded from an earlier measurement (nothing spent now)
    key: str = ""  # the measurement's key (measurements.py), "" when not stored


STUDENT_STREAM = "gap/student"


def teacher_stream(context: str, graded_fraction: float = 0.5) -> str:
    """The teacher side's stream label."""
    return f"gap/teacher/{context}" + (f"/{graded_fraction!r}" if context == "graded" else "")


def measure_student(engine, world: World, problems: Sequence[Problem], sampling: Sampling, seed: int,
                    stream: Stream | None = None) -> Side:
    """The student side: n answers per problem under the plain prompt, from stream "gap/student"
    (`stream`: that stream, resumed where an earlier batch of problems left it)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    with stream.resume() if stream is not None else seeded_stream(seed, STUDENT_STREAM):
        ev = evaluate(engine, world, problems, [p.prompt for p in problems], k=sampling.n, **sampling.kwargs())
    return Side(ev, cpu_seconds() - c0, time.perf_counter() - t0)


def teacher_messages(context: str, problems: Sequence[Problem], student: Evaluation, n: int,
                     graded_fraction: float = 0.5, form: int = DEFAULT_FORM) -> tuple[list[str], list[bool]]:
    """Each student sample's teacher message (the plain prompt where its context is unavailable,
    see the module doc) and whether it had a privileged context."""
    built = build_for_rollouts(context, problems, student.texts, student.judgements, n, graded_fraction, form)
    messages = [m if m is not None else problems[i // n].prompt for i, m in enumerate(built)]
    return messages, [m is not None for m in built]


def measure_teacher(engine, world: World, problems: Sequence[Problem], context: str, student: Evaluation,
                    sampling: Sampling, seed: int, graded_fraction: float = 0.5, stream: Stream | None = None,
                    form: int = DEFAULT_FORM) -> Side:
    """The teacher side: one answer per student sample under its teacher message, from stream
    "gap/teacher/<context>" (so it does not depend on how the student side was obtained;
    `stream`: that stream, resumed where an earlier batch of problems left it)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = sampling.n
    messages, _ = teacher_messages(context, problems, student, n, graded_fraction, form)
    row_problems = [problems[i // n] for i in range(len(messages))]
    with stream.resume() if stream is not None else seeded_stream(seed, teacher_stream(context, graded_fraction)):
        ev = evaluate(engine, world, row_problems, messages, k=1, **sampling.kwargs())
    return Side(ev, cpu_seconds() - c0, time.perf_counter() - t0)


def combine(context: str, problems: Sequence[Problem], sampling: Sampling, student: Side, teacher: Side, *,
            n_boot: int = 2000, level: float = 0.95, seed: int = 0, n_examples: int = 4,
            graded_fraction: float = 0.5, form: int = DEFAULT_FORM) -> GapResult:
    """The gap of two measured sides: pass rates, paired bootstrap intervals, costs, examples."""
    n = sampling.n
    messages, has_context = teacher_messages(context, problems, student.evaluation, n, graded_fraction, form)
    row_problems = [problems[i // n] for i in range(len(messages))]
    s_ev, t_ev = student.evaluation, teacher.evaluation
    s_pass = np.array(s_ev.per_problem)
    t_pass = np.array(t_ev.per_problem).reshape(len(problems), n).mean(axis=1)
    s_ci, t_ci, g_ci = bootstrap_means(s_pass, t_pass, n_boot=n_boot, level=level, seed=seed)
    examples = [
        {
            "problem": row_problems[i].id,
            "teacher_prompt": messages[i],
            "student": s_ev.texts[i],
            "student_passed": s_ev.judgements[i].passed,
            "teacher": t_ev.texts[i],
            "teacher_passed": t_ev.judgements[i].passed,
        }
        for i in range(len(messages))
        if has_context[i]
    ][:n_examples]
    return GapResult(
        context=context,
        n_problems=len(problems),
        samples_per_problem=n,
        student_pass_rate=float(s_pass.mean()),
        teacher_pass_rate=float(t_pass.mean()),
        gap=float(t_pass.mean() - s_pass.mean()),
        student_ci=s_ci,
        teacher_ci=t_ci,
        gap_ci=g_ci,
        level=level,
        teacher_coverage=float(np.mean(has_context)),
        tokens_generated=s_ev.tokens + t_ev.tokens,
        teacher_prompt_tokens=t_ev.prompt_tokens,
        seconds=student.seconds + teacher.seconds,
        per_problem=[
            {"id": p.id, "student": float(s), "teacher": float(t)} for p, s, t in zip(problems, s_pass, t_pass)
        ],
        examples=examples,
        cpu_s=student.cpu_s + teacher.cpu_s,
        student_cpu_s=student.cpu_s,
        student_tokens=s_ev.tokens,
        student_key=student.key,
        teacher_key=teacher.key,
        reused=[name for name, side in (("student", student), ("teacher", teacher)) if side.reused],
    )


def measure_gap(
    engine,
    world: World,
    problems: Sequence[Problem],
    context: str,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    n_examples: int = 4,
    graded_fraction: float = 0.5,
    form: int = DEFAULT_FORM,
) -> GapResult:
    """Student vs self-teacher pass rate on `problems`, n samples each (see the module doc)."""
    if not problems:
        raise ValueError("measure_gap needs at least one problem")
    sampling = Sampling(n, max_new_tokens, temperature, top_p)
    student = measure_student(engine, world, problems, sampling, seed)
    teacher = measure_teacher(engine, world, problems, context, student.evaluation, sampling, seed, graded_fraction,
                              form=form)
    return combine(context, problems, sampling, student, teacher, n_boot=n_boot, level=level, seed=seed,
                   n_examples=n_examples, graded_fraction=graded_fraction, form=form)


# ----------------------------------------------------------------------------- the cheap gap (module doc)


@dataclass(frozen=True)
class StudentSamples:
    """The gap's student side with its tokens: what the cheap gap scores."""

    rollouts: Rollouts
    evaluation: Evaluation
    cpu_s: float
    seconds: float


def sample_student(engine, world: World, problems: Sequence[Problem], sampling: Sampling, seed: int) -> StudentSamples:
    """measure_student, keeping the rollouts: same stream, same call, same answers."""
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
              level: float = 0.95, seed: int = 0, form: int = DEFAULT_FORM) -> tuple[CheapGapResult, SampleSummary]:
    """The estimators of `context`'s gap at step 0 (module doc), and the per-sample summary."""
    ro = student.rollouts
    if ro.logprobs is None:
        raise ValueError("cheap_gap needs the sampled tokens' log-probs (the HF and vLLM engines record them)")
    t0, c0 = time.perf_counter(), cpu_seconds()
    messages, has_context = teacher_messages(context, problems, student.evaluation, n, graded_fraction, form)
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
