"""Privileged-context builders: what the self-teacher sees besides the student's prompt.

Each builder is a pure function from one sample (its problem, its own attempt and the other
attempts at the same problem) to the privileged text appended to the student's prompt, or
``None`` when the context is unavailable for that sample; such a sample gets no teacher and no
loss. The table is a plain dict: ``CONTEXTS[name](sample)``.

Choices where the sources leave room (docs/method.md, "Privileged contexts"):
- ``feedback`` is available only for *failed* attempts: the feedback on a success ("Correct.")
  carries nothing to learn from, so successes get no teacher under this context.
- ``peer_solution`` / ``peer_hints`` use the best-rewarded *other* successful attempt at the same
  problem (ties: the earliest), never the sample itself.
- ``peer_hints`` is world-agnostic: the opening of a correct peer answer (about a third, at most
  a few lines), labelled as a hint, so the teacher sees the approach but not the whole answer.
- Long texts are cut (``MAX_CHARS``) so a runaway attempt cannot blow up the teacher's prompt.

Two wordings (``context_form``). Form 1 is bench-v1's, kept so its table can be reproduced: the
reference is shown as bare text under "do not copy it; answer in your own words" (Zhao et al.'s
instruction), and ``graded`` reveals the first words of that reference. On code that taught the
student an unfenced answer the grader cannot extract (bench-v1's collapse on code), and on
arithmetic's 9-word reference ``graded`` was a step, not a dial. Form 2 (the default):

- ``reference`` shows the reference *in the form the world's answer must take* (code inside the
  fence the grader reads, ``Problem.reference_format``), with no instruction that pulls the
  teacher away from that form;
- ``graded`` reveals the first share of the problem's *worked solution* (``Problem.worked``: a
  longer derivation where the world has one, else the reference) by whitespace-separated tokens,
  rounded up, inside the same fence, so the share is a dial rather than a step;
- two controls no anchor has: ``shuffled_reference`` (another problem's reference, same form: the
  context's form without its content) and ``retry`` (the sample's own attempt and a bare "it may
  be wrong; try again", for every sample: feedback's form without its verdict). If the gap law
  measures content, both controls sit near ``none``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from opsd_platform.config.choices import CONTEXTS as CONTEXT_NAMES, check_implemented
from opsd_platform.worlds.base import Judgement, Problem

MAX_CHARS = 1200  # cap on any quoted attempt, feedback or reference inside a teacher prompt
CONTEXT_FORMS = (1, 2)  # 1 = bench-v1's wording (reproduces its table), 2 = the answer's own form
DEFAULT_FORM = 2

STATIC_PREAMBLE = (
    "You are an expert problem solver. Read the task carefully, work through it step by step, "
    "check your result before you commit to it, and give the final answer exactly in the format "
    "the task asks for."
)


@dataclass(frozen=True)
class Attempt:
    """One sampled answer and the world's verdict on it."""

    response: str
    judgement: Judgement


@dataclass(frozen=True)
class Sample:
    """What a context builder may look at for one student sample."""

    problem: Problem
    attempt: Attempt  # this sample's own attempt
    peers: Sequence[Attempt]  # the other samples of the same problem (never this one)
    graded_fraction: float = 0.5  # share of the reference the graded context reveals
    form: int = DEFAULT_FORM  # the contexts' wording (module doc)
    other: Problem | None = None  # another problem of the batch (shuffled_reference's source)


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _best_peer(sample: Sample) -> Attempt | None:
    passed = [p for p in sample.peers if p.judgement.passed]
    if not passed:
        return None
    return max(passed, key=lambda p: p.judgement.reward)  # max() keeps the earliest on ties


def none_context(sample: Sample) -> str | None:
    return ""


def static_context(sample: Sample) -> str | None:
    return STATIC_PREAMBLE


def feedback_context(sample: Sample) -> str | None:
    if sample.attempt.judgement.passed:
        return None
    return (
        "An earlier attempt at this task:\n"
        f"{_cut(sample.attempt.response)}\n\n"
        "Feedback on that attempt:\n"
        f"{_cut(sample.attempt.judgement.feedback)}\n\n"
        "Use the feedback to give a correct answer."
    )


def peer_solution_context(sample: Sample) -> str | None:
    peer = _best_peer(sample)
    if peer is None:
        return None
    return (
        "A correct solution to this task, written by someone else:\n"
        f"{_cut(peer.response)}\n\n"
        "Give your own correct answer."
    )


def hint_from(response: str, max_lines: int = 3, max_chars: int = 240) -> str:
    """The opening of a correct answer: about a third of it, at most a few lines."""
    text = response.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()][:max_lines]
    opening = "\n".join(lines)
    return _cut(opening[: max(1, min(len(text) // 3, max_chars))], max_chars)


def peer_hints_context(sample: Sample) -> str | None:
    peer = _best_peer(sample)
    if peer is None:
        return None
    return f"Hint: a correct answer to this task starts like this:\n{hint_from(peer.response)}"


def peer_or_feedback_context(sample: Sample) -> str | None:
    """SDPO's default: a peer's solution when one exists, else the sample's own feedback."""
    return peer_solution_context(sample) or feedback_context(sample)


def show_reference(problem: Problem, text: str) -> str:
    """`text` (all or part of the problem's reference) in the form the world's answer takes."""
    if problem.reference_format == "text":
        return _cut(text)
    return f"```{problem.reference_format}\n{_cut(text)}\n```"


def reference_context(sample: Sample) -> str | None:
    if not sample.problem.reference.strip():
        return None
    if sample.form == 1:
        return (
            "A reference solution (do not copy it; answer in your own words):\n"
            f"{_cut(sample.problem.reference)}"
        )
    return f"A reference solution to this task:\n{show_reference(sample.problem, sample.problem.reference)}"


def shuffled_reference_context(sample: Sample) -> str | None:
    """Control: another problem's reference in `reference`'s exact form (its content is wrong)."""
    other = sample.other
    if other is None or not other.reference.strip() or not sample.problem.reference.strip():
        return None
    return f"A reference solution to this task:\n{show_reference(sample.problem, other.reference)}"


def retry_context(sample: Sample) -> str | None:
    """Control: `feedback`'s form without its content (no verdict, no feedback), for every sample."""
    return (
        "An earlier attempt at this task:\n"
        f"{_cut(sample.attempt.response)}\n\n"
        "It may be wrong. Try again."
    )


def reference_prefix(reference: str, fraction: float) -> str:
    """The first ``round(fraction * words)`` whitespace-separated words of `reference` (line breaks
    kept), so 0 reveals nothing and 1 all of it. bench-v1's rule (form 1): Python's round() sends
    4.5 to 4, so on a 9-word reference 0.5 showed 4 words."""
    words = reference.strip().split(" ")
    keep = round(fraction * len(words))
    return " ".join(words[:keep]).strip()


def worked_prefix(worked: str, fraction: float) -> str:
    """The first ``ceil(fraction * tokens)`` whitespace-separated tokens of `worked`, its line breaks
    and indentation kept (form 2): 0 reveals nothing, 1 all of it, and every share > 0 at least one
    token. Splitting on runs of whitespace (not single spaces) makes a code line's indentation
    part of the token after it, so a revealed prefix is code as written."""
    text = worked.strip()
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    keep = math.ceil(fraction * len(spans) - 1e-9)
    return text[: spans[keep - 1][1]] if keep > 0 else ""


def graded_context(sample: Sample) -> str | None:
    """A chosen share of the reference (``graded_fraction``): a knob that moves the gap between
    ``none`` (0) and ``reference``-like (1), for covering the law's gap axis densely (docs/method.md,
    "Privileged contexts"). The teacher is told it sees only the beginning."""
    problem = sample.problem
    if not problem.reference.strip():
        return None
    if sample.form == 1:
        shown = reference_prefix(problem.reference, sample.graded_fraction)
        if not shown:
            return ""
        if sample.graded_fraction >= 1.0:
            return f"A reference solution (do not copy it; answer in your own words):\n{_cut(shown)}"
        return ("The beginning of a reference solution (the rest is hidden; do not copy it, finish the task in "
                f"your own words):\n{_cut(shown)}")
    shown = worked_prefix(problem.worked or problem.reference, sample.graded_fraction)
    if not shown:
        return ""
    if sample.graded_fraction >= 1.0:
        return f"A worked solution to this task:\n{show_reference(problem, shown)}"
    return f"The beginning of a worked solution to this task (the rest is hidden):\n{show_reference(problem, shown)}"


ContextBuilder = Callable[[Sample], "str | None"]

CONTEXTS: dict[str, ContextBuilder] = {
    "none": none_context,
    "static": static_context,
    "feedback": feedback_context,
    "peer_hints": peer_hints_context,
    "peer_solution": peer_solution_context,
    "peer_or_feedback": peer_or_feedback_context,
    "reference": reference_context,
    "graded": graded_context,
    "shuffled_reference": shuffled_reference_context,
    "retry": retry_context,
}
check_implemented("context", CONTEXT_NAMES, CONTEXTS)


def get_builder(name: str) -> ContextBuilder:
    try:
        return CONTEXTS[name]
    except KeyError:
        raise ValueError(f"unknown context {name!r}; valid: {', '.join(CONTEXTS)}") from None


def teacher_message(problem_prompt: str, privileged: str) -> str:
    """The teacher's user message: the student's prompt, then the privileged context."""
    return problem_prompt if not privileged else f"{problem_prompt}\n\n{privileged}"


def build_group(
    name: str,
    problem: Problem,
    attempts: Sequence[Attempt],
    graded_fraction: float = 0.5,
    form: int = DEFAULT_FORM,
    other: Problem | None = None,
) -> list[str | None]:
    """Teacher user messages for all n samples of one problem (None = no teacher for it)."""
    builder = get_builder(name)
    if form not in CONTEXT_FORMS:
        raise ValueError(f"unknown context form {form!r}; valid: {', '.join(map(str, CONTEXT_FORMS))}")
    out: list[str | None] = []
    for i, attempt in enumerate(attempts):
        peers = [a for j, a in enumerate(attempts) if j != i]
        privileged = builder(Sample(problem, attempt, peers, graded_fraction, form, other))
        out.append(None if privileged is None else teacher_message(problem.prompt, privileged))
    return out


def build_for_rollouts(
    name: str,
    problems: Sequence[Problem],  # [B]
    texts: Sequence[str],  # [B*n] responses, problem-major (n consecutive rows per problem)
    judgements: Sequence[Judgement],  # [B*n]
    n: int,
    graded_fraction: float = 0.5,
    form: int = DEFAULT_FORM,
) -> list[str | None]:  # [B*n] teacher user message of each row, None = no teacher
    """Teacher messages for a whole rollout batch, one problem's group of n samples at a time.
    A problem's `other` (shuffled_reference's source) is the next problem of the batch with a
    different reference, cyclically; None when the batch has no such problem."""
    if len(texts) != len(problems) * n or len(judgements) != len(texts):
        raise ValueError(f"{len(problems)} problems x n={n} but {len(texts)} texts and {len(judgements)} judgements")
    out: list[str | None] = []
    for b, problem in enumerate(problems):
        rows = range(b * n, (b + 1) * n)
        others = [problems[(b + k) % len(problems)] for k in range(1, len(problems))]
        other = next((p for p in others if p.reference.strip() != problem.reference.strip()), None)
        out += build_group(name, problem, [Attempt(texts[i], judgements[i]) for i in rows], graded_fraction, form,
                           other)
    return out


def context_label(context: object, graded_fraction: object = None) -> str:
    """A configuration's context as people read it: the graded context with its revealed share
    (``graded@0.75``), so configurations that differ only in that share are told apart by name
    (in tables, plots and the demo) rather than by config hash."""
    if context == "graded" and graded_fraction is not None:
        try:
            share = float(graded_fraction)  # a float, or an MLflow param / CSV cell holding one
        except (TypeError, ValueError):
            return str(context)
        if not math.isnan(share):
            return f"graded@{share:g}"
    return str(context)
