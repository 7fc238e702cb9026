"""The contract every world keeps: problems in, judgements out.

A *world* hands out problems (deterministic given a seed) and judges a model's response to one
problem into a reward in [0, 1] plus feedback *text* — the rich signal OPSD learns from. Worlds
know nothing about models, tokenizers or training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from opsd_platform.errors import WorldError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Problem:
    """One task as the student sees it, plus what only the world (and privileged teachers) know."""

    id: str  # stable id, unique within a world and split (e.g. "arith-train-00017")
    prompt: str  # the task text shown to the student (no chat template applied)
    reference: str  # a reference answer or solution, shown only by the `reference` context
    difficulty: int = 1  # world-specific grade, 1 = easiest
    data: dict[str, Any] = field(default_factory=dict)  # judge-only data (answer, tests, ...)
    # How an answer to this problem is written, so contexts can show the reference in that form:
    # "text", or a code-fence language ("python": the reference goes inside ```python ... ```).
    reference_format: str = "text"
    # A longer derivation of the answer than `reference` where the world has one ("" = none): what
    # the graded context reveals a share of, so its share is a dial (contexts.py, form 2).
    worked: str = ""


@dataclass(frozen=True)
class Judgement:
    """The world's verdict on one response."""

    reward: float  # in [0, 1]; 1.0 = fully correct
    feedback: str  # human-readable feedback, like a code judge or a grader would give
    passed: bool  # True when the response counts as solved (reward == 1.0 for binary worlds)


@runtime_checkable
class World(Protocol):
    """What the trainer, the gap measurement and `opsd judge` need from a world."""

    name: str

    def problems(self, split: str) -> list[Problem]:
        """The problems of `split` ("train" or "val"), identical for identical world config."""
        ...

    def judge(self, problem: Problem, response: str) -> Judgement:
        """Judge one model response (raw model text) to `problem`."""
        ...

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        """Judge pairs; worlds that run code may parallelise. Same order as the inputs."""
        ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise WorldError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
