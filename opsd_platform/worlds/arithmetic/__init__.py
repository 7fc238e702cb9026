"""Arithmetic world: graded integer arithmetic, a tolerant answer extractor and localising feedback.

Modules: tree (levels, expression trees, generation), explain (the worked reference), answers
(the extractor), feedback (the hints), world (ArithmeticWorld).

Why it is built this way:

* **Graded difficulty.** Level 1 is single-digit addition, 2 two-digit addition/subtraction,
  3 two-digit-by-one-digit multiplication or a three-term sum, 4 two steps with parentheses,
  5 two-by-two-digit products and parenthesised expressions whose value may be negative. The
  ladder lets the gap law be fitted against a difficulty axis within a single world.
* **Problems are expression trees.** Every problem is generated as a tree of binary operations
  and stored JSON-friendly in ``data["tree"]`` (``int`` leaves, ``[op, left, right]`` nodes) next
  to ``data["answer"]``. The judge re-reads the tree, so a serialised problem still gets the
  detailed hints (order of operations, intermediate steps, carries); without a tree it falls back
  to hints that only need the answer.
* **Binary reward.** An answer is right or wrong; partial credit for "close" numbers would reward
  guessing nearby values rather than computing.
* **Feedback localises the mistake but never states the correct value.** It says whether the
  answer is too high or too low, which digit places are wrong, whether a carry or borrow looks
  missed, or whether the student stopped after an intermediate step or ignored parentheses. The
  correct value (with a worked explanation) lives in ``Problem.reference``, which OPSD shows in a
  different teacher context; keeping the two apart is what makes the contexts comparable. Hints
  contain no digits at all, and the student's own number is echoed only when its digits do not
  contain the correct answer's digits, so not even a substring of the answer appears.
* **Tolerant extraction.** The student is a small instruct model that answers in free text
  ("7 + 5 = 12. The answer is 12."). We take, in order of preference: the last ``\\boxed{X}``;
  the last "answer is X" / "Answer: X" / "result is X"; the last line ending in "= X"; else the
  last number in the text. Negatives, thousands separators and trailing periods are handled.
* **Determinism and disjointness.** A private ``random.Random`` keyed by (seed, difficulty)
  draws distinct expressions; the validation problems are drawn first, so the validation set does
  not change when only ``n_train`` changes. No expression occurs twice across both splits.
"""

from opsd_platform.worlds.arithmetic.answers import extract_answer
from opsd_platform.worlds.arithmetic.explain import reference_text
from opsd_platform.worlds.arithmetic.feedback import NO_NUMBER_FEEDBACK, feedback_text
from opsd_platform.worlds.arithmetic.tree import (
                                                  DIFFICULTIES,
                                                  LEVEL_DESCRIPTIONS,
                                                  BinOp,
                                                  Node,
                                                  evaluate,
                                                  render,
                                                  tree_from_json,
                                                  tree_to_json,
)
from opsd_platform.worlds.arithmetic.world import ArithmeticWorld

__all__ = ["ArithmeticWorld", "DIFFICULTIES", "LEVEL_DESCRIPTIONS", "BinOp", "Node", "evaluate", "render", "tree_to_json",
           "tree_from_json", "reference_text", "extract_answer", "feedback_text", "NO_NUMBER_FEEDBACK"]
