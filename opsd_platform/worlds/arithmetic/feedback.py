"""Feedback that localises the mistake but never states the correct value: too high or too low,
which digit places are wrong, a missed carry or borrow, an intermediate step, ignored parentheses.
"""

from __future__ import annotations

from decimal import Decimal

from opsd_platform.worlds.arithmetic.explain import borrows, carries
from opsd_platform.worlds.arithmetic.tree import (
    OP_NOUNS,
    OPS,
    PLACES,
    BinOp,
    Node,
    apply_op,
    eval_left_to_right,
    eval_without_parentheses,
    evaluate,
    flat_tokens,
    internal_nodes,
    render,
)

# --------------------------------------------------------------------------- feedback


def _place_name(k: int) -> str:
    return PLACES[k] if k < len(PLACES) else "highest"


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _digit_hints(tree: Node | None, answer: int, given: int) -> list[str]:
    if given == answer or (answer != 0 and given == -answer):
        return []
    if given < 0 <= answer:
        return ["Your answer should not be negative."]
    if answer < 0 <= given:
        return ["The result should be negative."]
    sa, sg = str(abs(answer)), str(abs(given))
    if len(sa) != len(sg):
        return ["Your answer has too many digits." if len(sg) > len(sa) else "Your answer has too few digits."]
    wrong = [k for k in range(len(sa)) if sa[-1 - k] != sg[-1 - k]]
    if len(wrong) > 3:
        return ["Most of the digits are wrong; redo the calculation step by step."]
    if len(wrong) > 1:
        return [f"The {_join_words([_place_name(k) for k in wrong])} digits are wrong."]
    k = wrong[0]
    place = _place_name(k)
    hint = f"The {place} digit is wrong"
    if isinstance(tree, BinOp) and isinstance(tree.left, int) and isinstance(tree.right, int):
        a, b = tree.left, tree.right
        if tree.op == "+" and a >= 0 and b >= 0:
            if k in carries(a, b):
                hint += f": check the carry into the {place} place"
            elif k > 0 and abs(given - answer) == 10**k:
                hint += f": there is no carry into the {place} place"
            else:
                hint += f": re-add the {place} column"
        elif tree.op == "-" and a >= b >= 0:
            if k in borrows(a, b):
                hint += f": check the borrow from the {place} place"
            elif k > 0 and abs(given - answer) == 10**k:
                hint += f": nothing is borrowed from the {place} place"
            else:
                hint += f": redo the {place} column"
    return [hint + "."]


def _hints(tree: Node | None, answer: int, given: int) -> list[str]:
    """Where the mistake probably is, in words only (never a digit)."""
    hints: list[str] = []
    if isinstance(tree, BinOp):
        multi_step = isinstance(tree.left, BinOp) or isinstance(tree.right, BinOp)
        if multi_step:
            if given in [evaluate(n) for n in internal_nodes(tree) if n is not tree]:
                hints.append("That is the value of an intermediate step; finish the whole expression.")
            tokens = flat_tokens(tree)
            if "(" in render(tree):
                if given == eval_without_parentheses(tokens):
                    hints.append("Work out the parts in parentheses first.")
            elif given == eval_left_to_right(tokens):
                hints.append("Multiplication comes before addition and subtraction.")
        elif isinstance(tree.left, int) and isinstance(tree.right, int):
            for op in OPS:
                if op != tree.op and apply_op(op, tree.left, tree.right) == given:
                    hints.append(f"This problem asks for {OP_NOUNS[tree.op]}, not {OP_NOUNS[op]}.")
                    break
    if answer != 0 and given == -answer:
        hints.append("The sign of your answer is wrong.")
    hints += _digit_hints(tree, answer, given)
    return hints


def _show(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def feedback_text(tree: Node | None, answer: int, given: Decimal) -> str:
    """Feedback on a wrong answer; it never contains the correct answer's digits."""
    shown = _show(given)
    if str(abs(answer)) in shown:
        head = "Your final answer is incorrect"
    else:
        head = f"Your final answer {shown} is incorrect"
    parts = [f"{head}: it is {'too high' if given > answer else 'too low'}."]
    if given != given.to_integral_value():
        parts.append("The answer is a whole number.")
    else:
        parts += _hints(tree, answer, int(given))[:2]
    if len(parts) == 1:
        parts.append("Recheck each step of the calculation.")
    return " ".join(parts)


NO_NUMBER_FEEDBACK = (
    "No number found in your answer. Work it out and end with the final answer as a number, "
    "e.g. 'The answer is <number>.'"
)


