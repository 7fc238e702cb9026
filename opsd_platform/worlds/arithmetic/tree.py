"""Problems as expression trees: the levels, the tree (int leaves, BinOp nodes), its value, its text,
its JSON form, the wrong values a student gets by ignoring parentheses or precedence, and the
seeded generator of each difficulty.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Union

from opsd_platform.errors import WorldError

DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4, 5)
LEVEL_DESCRIPTIONS: dict[int, str] = {
    1: "single-digit addition",
    2: "two-digit addition or subtraction",
    3: "two-digit by one-digit multiplication, or a three-term sum",
    4: "two steps with parentheses",
    5: "two-digit products and parenthesised expressions, possibly negative",
}

OPS = ("+", "-", "*")
OP_NOUNS = {"+": "an addition", "-": "a subtraction", "*": "a multiplication"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions")


# --------------------------------------------------------------------------- expression trees


@dataclass(frozen=True)
class BinOp:
    """One binary operation; leaves are plain non-negative ints."""

    op: str
    left: Node
    right: Node


Node = Union[int, BinOp]


def apply_op(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise WorldError(f"unknown operator {op!r}; valid: {', '.join(OPS)}")


def evaluate(node: Node) -> int:
    """The exact integer value of an expression tree."""
    if isinstance(node, int):
        return node
    return apply_op(node.op, evaluate(node.left), evaluate(node.right))


def render(node: Node, parentheses: bool = True) -> str:
    """Infix text, e.g. "(37 + 48) * 3"; with ``parentheses=False`` the bare token sequence."""
    if isinstance(node, int):
        return str(node)
    left, right = render(node.left, parentheses), render(node.right, parentheses)
    if parentheses:
        prec = _PRECEDENCE[node.op]
        if isinstance(node.left, BinOp) and _PRECEDENCE[node.left.op] < prec:
            left = f"({left})"
        if isinstance(node.right, BinOp):
            right_prec = _PRECEDENCE[node.right.op]
            if right_prec < prec or (right_prec == prec and node.op == "-"):
                right = f"({right})"
    return f"{left} {node.op} {right}"


def tree_to_json(node: Node) -> int | list[Any]:
    if isinstance(node, int):
        return node
    return [node.op, tree_to_json(node.left), tree_to_json(node.right)]


def tree_from_json(obj: Any) -> Node:
    if isinstance(obj, bool):
        raise WorldError(f"bad expression tree leaf {obj!r}")
    if isinstance(obj, int):
        return obj
    if isinstance(obj, (list, tuple)) and len(obj) == 3 and obj[0] in OPS:
        return BinOp(obj[0], tree_from_json(obj[1]), tree_from_json(obj[2]))
    raise WorldError(f"bad expression tree node {obj!r}; expected an int or [op, left, right]")


def internal_nodes(node: Node) -> list[BinOp]:
    if isinstance(node, int):
        return []
    return [*internal_nodes(node.left), *internal_nodes(node.right), node]


def flat_tokens(node: Node) -> list[int | str]:
    if isinstance(node, int):
        return [node]
    return [*flat_tokens(node.left), node.op, *flat_tokens(node.right)]


def eval_left_to_right(tokens: list[int | str]) -> int:
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = apply_op(str(op), value, int(number))
    return value


def eval_without_parentheses(tokens: list[int | str]) -> int:
    """Usual precedence (multiplication first) on the bare token sequence."""
    collapsed: list[int | str] = [tokens[0]]
    for op, number in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            collapsed[-1] = int(collapsed[-1]) * int(number)
        else:
            collapsed += [op, number]
    return eval_left_to_right(collapsed)


# --------------------------------------------------------------------------- generation


def _two_digit(rng: random.Random) -> int:
    return rng.randint(10, 99)


def generate_tree(rng: random.Random, difficulty: int) -> BinOp:
    if difficulty == 1:
        return BinOp("+", rng.randint(0, 9), rng.randint(0, 9))
    if difficulty == 2:
        a, b = _two_digit(rng), _two_digit(rng)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        return BinOp(op, a, b)
    if difficulty == 3:
        if rng.random() < 0.5:
            return BinOp("*", rng.randint(11, 99), rng.randint(2, 9))
        while True:  # a +/- b +/- c that stays non-negative at every step
            first = BinOp(rng.choice("+-"), _two_digit(rng), _two_digit(rng))
            tree = BinOp(rng.choice("+-"), first, _two_digit(rng))
            if all(evaluate(n) >= 0 for n in internal_nodes(tree)):
                return tree
    if difficulty == 4:
        a, b, c = _two_digit(rng), _two_digit(rng), rng.randint(2, 9)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        inner = BinOp(op, a, b)
        return BinOp("*", inner, c) if rng.random() < 0.5 else BinOp("*", c, inner)
    if difficulty == 5:
        form = rng.randrange(3)
        if form == 0:  # (a - b) * (c + d), negative when a < b
            left = BinOp("-", _two_digit(rng), _two_digit(rng))
            return BinOp("*", left, BinOp("+", rng.randint(2, 9), rng.randint(2, 9)))
        if form == 1:  # (a + b) * (c - d), negative when c < d
            c, d = rng.sample(range(1, 10), 2)
            return BinOp("*", BinOp("+", _two_digit(rng), _two_digit(rng)), BinOp("-", c, d))
        return BinOp("-", BinOp("*", rng.randint(11, 99), rng.randint(11, 99)), rng.randint(100, 999))
    raise difficulty_error(difficulty)


def difficulty_error(difficulty: object) -> WorldError:
    levels = "; ".join(f"{k} = {v}" for k, v in LEVEL_DESCRIPTIONS.items())
    return WorldError(
        f"arithmetic difficulty must be an integer from {DIFFICULTIES[0]} to {DIFFICULTIES[-1]}, "
        f"got {difficulty!r} ({levels})"
    )


