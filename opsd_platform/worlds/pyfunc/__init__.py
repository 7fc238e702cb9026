"""world=pyfunc: Python function synthesis from a bank of parameterised templates (bank.py, a
declared data catalogue), each problem's tests computed by running the template's reference; judged
by the code judge (worlds/code/judge.py), lenient grading by default."""

from __future__ import annotations

from typing import Sequence

from opsd_platform.errors import WorldError
from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.base import Judgement, Problem, check_split
from opsd_platform.worlds.code.extract import check_grading
from opsd_platform.worlds.code.judge import judge_all, judge_code, tests_of


class PyFuncWorld:
    """Python function synthesis from a bank of parameterised templates (see bank.py).

    `difficulty` selects the templates of exactly that grade (1 = one-liner, 2 = short loop,
    3 = loop with a corner case). Problems are deterministic for (seed, difficulty) and the
    first n_train/n_val of each split do not depend on the other split's size; train and val
    never share a (template, parameters) task: the split is a hash of that key.

    Graded `lenient` by default (floats within 1e-6, tuples as lists: the expected values are
    what the reference returns, JSON-encoded); `grading="lcb"` applies LiveCodeBench's rules.
    All tests are public: one sandbox runs them all.
    """

    name = "pyfunc"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32,
                 limits: SandboxLimits | None = None, workers: int = 2, grading: str = "lenient") -> None:
        from opsd_platform.worlds.pyfunc.bank import DIFFICULTIES, generate_problems

        check_grading(grading)

        if difficulty not in DIFFICULTIES:
            raise WorldError(f"pyfunc difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        for label, v in (("n_train", n_train), ("n_val", n_val)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WorldError(f"pyfunc {label} must be an int >= 0, got {v!r}")
        self.seed, self.difficulty, self.n_train, self.n_val = seed, difficulty, n_train, n_val
        self.limits = limits or SandboxLimits(wall_s=10.0, cpu_s=10)
        self.workers = workers
        self.grading = grading
        self._problems = generate_problems(seed, difficulty, n_train, n_val)

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._problems[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        return judge_code(response, tests_of(problem), func_name=problem.data.get("func_name"),
                          limits=self.limits, reveal_hidden=True, grading=self.grading)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        return judge_all(self, problems, responses, self.workers)
