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
some failures (algorithm.md, section 2). This is a departure from a literal "teacher = student
for unavailable contexts", on purpose.

The measurement is one rollout pass (student + teacher generations, no backward), a small
fraction of a training run; ``GapResult`` carries its cost in tokens and seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from opsd_platform.contexts import build_for_rollouts
from opsd_platform.evaluation import evaluate
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
) -> GapResult:
    """Student vs self-teacher pass rate on `problems`, n samples each (see the module doc)."""
    if not problems:
        raise ValueError("measure_gap needs at least one problem")
    started = time.perf_counter()
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    student = evaluate(engine, world, problems, [p.prompt for p in problems], k=n, **sampling)

    built = build_for_rollouts(context, problems, student.texts, student.judgements, n)
    has_context = [m is not None for m in built]
    row_problems = [problems[i // n] for i in range(len(built))]
    teacher_messages = [m if m is not None else row_problems[i].prompt for i, m in enumerate(built)]
    teacher = evaluate(engine, world, row_problems, teacher_messages, k=1, **sampling)

    s_pass = np.array(student.per_problem)
    t_pass = np.array(teacher.per_problem).reshape(len(problems), n).mean(axis=1)
    s_ci, t_ci, g_ci = bootstrap_means(s_pass, t_pass, n_boot=n_boot, level=level, seed=seed)
    examples = [
        {
            "problem": row_problems[i].id,
            "teacher_prompt": teacher_messages[i],
            "student": student.texts[i],
            "student_passed": student.judgements[i].passed,
            "teacher": teacher.texts[i],
            "teacher_passed": teacher.judgements[i].passed,
        }
        for i in range(len(teacher_messages))
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
        tokens_generated=student.tokens + teacher.tokens,
        teacher_prompt_tokens=teacher.prompt_tokens,
        seconds=time.perf_counter() - started,
        per_problem=[
            {"id": p.id, "student": float(s), "teacher": float(t)} for p, s, t in zip(problems, s_pass, t_pass)
        ],
        examples=examples,
    )
