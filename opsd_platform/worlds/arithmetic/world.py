"""ArithmeticWorld: the problems of each split (validation drawn first, no expression twice) and the
judge (binary reward, localising feedback).
"""

from __future__ import annotations

import random
from typing import Sequence

from opsd_platform.errors import WorldError
from opsd_platform.worlds.arithmetic.answers import extract_answer
from opsd_platform.worlds.arithmetic.explain import reference_text, worked_text
from opsd_platform.worlds.arithmetic.feedback import NO_NUMBER_FEEDBACK, feedback_text
from opsd_platform.worlds.arithmetic.tree import (
    DIFFICULTIES,
    BinOp,
    difficulty_error,
    evaluate,
    generate_tree,
    render,
    tree_from_json,
    tree_to_json,
)
from opsd_platform.worlds.base import Judgement, Problem, check_split

# --------------------------------------------------------------------------- the world


class ArithmeticWorld:
    """Integer arithmetic problems graded by difficulty; binary reward; feedback without answers."""

    name: str = "arithmetic"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32) -> None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty not in DIFFICULTIES:
            raise difficulty_error(difficulty)
        for label, n in (("n_train", n_train), ("n_val", n_val)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise WorldError(f"arithmetic {label} must be a non-negative integer, got {n!r}")
        if difficulty == 1 and n_train + n_val > 100:
            raise WorldError(
                f"arithmetic difficulty 1 has only 100 distinct problems (single-digit sums); "
                f"n_train + n_val = {n_train + n_val} is too many"
            )
        self.seed, self.difficulty, self.n_train, self.n_val = seed, difficulty, n_train, n_val
        self._splits = self._build()

    def _build(self) -> dict[str, list[Problem]]:
        rng = random.Random(f"arithmetic:{self.seed}:{self.difficulty}")
        seen: set[str] = set()
        trees: list[BinOp] = []
        total = self.n_val + self.n_train
        attempts = 0
        while len(trees) < total:
            attempts += 1
            if attempts > 1000 + 200 * total:
                raise WorldError(f"could not draw {total} distinct arithmetic problems at difficulty {self.difficulty}")
            tree = generate_tree(rng, self.difficulty)
            key = render(tree)
            if key not in seen:
                seen.add(key)
                trees.append(tree)
        # Validation first: the val set stays the same when only n_train changes.
        return {
            "val": [self._problem("val", i, t) for i, t in enumerate(trees[: self.n_val])],
            "train": [self._problem("train", i, t) for i, t in enumerate(trees[self.n_val :])],
        }

    def _problem(self, split: str, index: int, tree: BinOp) -> Problem:
        expression = render(tree)
        answer = evaluate(tree)
        return Problem(
            id=f"arith-{split}-{index:05d}",
            prompt=f"What is {expression}? Give the final answer as a number at the end.",
            reference=reference_text(tree),
            worked=worked_text(tree),
            difficulty=self.difficulty,
            data={"answer": answer, "expression": expression, "tree": tree_to_json(tree)},
        )

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._splits[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        if "answer" not in problem.data:
            raise WorldError(f"problem {problem.id!r} has no data['answer']; not an arithmetic problem")
        answer = int(problem.data["answer"])
        tree = tree_from_json(problem.data["tree"]) if "tree" in problem.data else None
        given = extract_answer(response)
        if given is None:
            return Judgement(reward=0.0, feedback=NO_NUMBER_FEEDBACK, passed=False)
        if given == answer:
            return Judgement(reward=1.0, feedback="Correct.", passed=True)
        return Judgement(reward=0.0, feedback=feedback_text(tree, answer, given), passed=False)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        if len(problems) != len(responses):
            raise WorldError(
                f"judge_many needs one response per problem: got {len(problems)} problems "
                f"and {len(responses)} responses"
            )
        return [self.judge(p, r) for p, r in zip(problems, responses)]
