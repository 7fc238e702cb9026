"""Arithmetic world: graded integer arithmetic, a tolerant answer extractor and localising feedback.

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

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence, Union

from opsd_platform.worlds.base import Judgement, Problem, WorldError, check_split

DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4, 5)
LEVEL_DESCRIPTIONS: dict[int, str] = {
    1: "single-digit addition",
    2: "two-digit addition or subtraction",
    3: "two-digit by one-digit multiplication, or a three-term sum",
    4: "two steps with parentheses",
    5: "two-digit products and parenthesised expressions, possibly negative",
}

_OPS = ("+", "-", "*")
_OP_NOUNS = {"+": "an addition", "-": "a subtraction", "*": "a multiplication"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions")


# --------------------------------------------------------------------------- expression trees


@dataclass(frozen=True)
class BinOp:
    """One binary operation; leaves are plain non-negative ints."""

    op: str
    left: Node
    right: Node


Node = Union[int, BinOp]


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise WorldError(f"unknown operator {op!r}; valid: {', '.join(_OPS)}")


def evaluate(node: Node) -> int:
    """The exact integer value of an expression tree."""
    if isinstance(node, int):
        return node
    return _apply(node.op, evaluate(node.left), evaluate(node.right))


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
    if isinstance(obj, (list, tuple)) and len(obj) == 3 and obj[0] in _OPS:
        return BinOp(obj[0], tree_from_json(obj[1]), tree_from_json(obj[2]))
    raise WorldError(f"bad expression tree node {obj!r}; expected an int or [op, left, right]")


def _internal_nodes(node: Node) -> list[BinOp]:
    if isinstance(node, int):
        return []
    return [*_internal_nodes(node.left), *_internal_nodes(node.right), node]


def _flat_tokens(node: Node) -> list[int | str]:
    if isinstance(node, int):
        return [node]
    return [*_flat_tokens(node.left), node.op, *_flat_tokens(node.right)]


def _eval_left_to_right(tokens: list[int | str]) -> int:
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = _apply(str(op), value, int(number))
    return value


def _eval_without_parentheses(tokens: list[int | str]) -> int:
    """Usual precedence (multiplication first) on the bare token sequence."""
    collapsed: list[int | str] = [tokens[0]]
    for op, number in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            collapsed[-1] = int(collapsed[-1]) * int(number)
        else:
            collapsed += [op, number]
    return _eval_left_to_right(collapsed)


# --------------------------------------------------------------------------- generation


def _two_digit(rng: random.Random) -> int:
    return rng.randint(10, 99)


def _generate(rng: random.Random, difficulty: int) -> BinOp:
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
            if all(evaluate(n) >= 0 for n in _internal_nodes(tree)):
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
    raise _difficulty_error(difficulty)


def _difficulty_error(difficulty: object) -> WorldError:
    levels = "; ".join(f"{k} = {v}" for k, v in LEVEL_DESCRIPTIONS.items())
    return WorldError(
        f"arithmetic difficulty must be an integer from {DIFFICULTIES[0]} to {DIFFICULTIES[-1]}, "
        f"got {difficulty!r} ({levels})"
    )


# --------------------------------------------------------------------------- worked explanations


def _digits(n: int) -> list[int]:
    """Decimal digits of a non-negative int, ones first."""
    return [int(c) for c in reversed(str(n))]


def _carries(a: int, b: int) -> set[int]:
    """Places (0 = ones) that receive a carry when adding non-negative a and b by columns."""
    da, db = _digits(a), _digits(b)
    carry, places = 0, set()
    for i in range(max(len(da), len(db))):
        total = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) + carry
        carry = total // 10
        if carry:
            places.add(i + 1)
    return places


def _borrows(a: int, b: int) -> set[int]:
    """Places (0 = ones) that lend 1 to the place below when subtracting b from a >= b >= 0."""
    da, db = _digits(a), _digits(b)
    borrow, places = 0, set()
    for i in range(len(da)):
        borrow = int(da[i] - borrow < (db[i] if i < len(db) else 0))
        if borrow:
            places.add(i + 1)
    return places


def _explain_add(a: int, b: int) -> str:
    if a < 0 or b < 0 or (a < 10 and b < 10):
        return ""
    da, db = _digits(a), _digits(b)
    width = max(len(da), len(db))
    carry, parts = 0, []
    for i in range(width):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        total = sum(terms)
        text = f"bring down {total}" if len(terms) == 1 else "+".join(map(str, terms)) + f"={total}"
        last = i == width - 1
        if not last and total >= 10:
            text += f", write {total % 10} carry {total // 10}"
        carry = 0 if last else total // 10
        parts.append(text)
    return "; ".join(parts)


def _explain_sub(a: int, b: int) -> str:
    if a < 0 or b < 0:
        return ""
    if a < b:
        return f"{a} is less than {b}, so work out {b}-{a}={b - a} and make it negative"
    if a < 10:
        return ""
    da, db = _digits(a), _digits(b)
    borrow, parts = 0, []
    for i, top in enumerate(da):
        has_bottom = i < len(db)
        bottom = db[i] if has_bottom else 0
        need = top - borrow < bottom
        lhs = (f"1{top}" if need else str(top)) + ("-1" if borrow else "") + (f"-{bottom}" if has_bottom else "")
        value = top + 10 * need - borrow - bottom
        if "-" not in lhs:
            parts.append(f"bring down {top}")
        else:
            parts.append(f"{lhs}={value}" + (", borrow 1" if need else ""))
        borrow = int(need)
    return "; ".join(parts)


def _place_parts(n: int) -> list[int]:
    """Non-zero place-value parts of a non-negative int, largest first: 348 -> [300, 40, 8]."""
    return [d * 10**k for k, d in reversed(list(enumerate(_digits(n)))) if d]


def _explain_mul_non_negative(a: int, b: int) -> str:
    """Split one factor into place values: 48*7 -> "40*7=280, 8*7=56; 280+56=336"."""
    if a <= 1 or b <= 1 or (a < 10 and b < 10):
        return ""
    split_left = b < 10 or (a >= 10 and a < b)  # split the multi-digit factor, the smaller if both
    split, keep = (a, b) if split_left else (b, a)
    parts = _place_parts(split)
    if len(parts) < 2:
        return ""
    products = [p * keep for p in parts]
    terms = [f"{p}*{keep}={q}" if split_left else f"{keep}*{p}={q}" for p, q in zip(parts, products)]
    return ", ".join(terms) + "; " + "+".join(map(str, products)) + f"={sum(products)}"


def _explain_mul(a: int, b: int) -> str:
    if a >= 0 and b >= 0:
        return _explain_mul_non_negative(a, b)
    magnitude = abs(a) * abs(b)
    inner = _explain_mul_non_negative(abs(a), abs(b)) or f"{abs(a)}*{abs(b)}={magnitude}"
    if a < 0 and b < 0:
        sign = "a negative times a negative is positive"
    else:
        sign = "a negative times a positive is negative"
    return f"{inner}; {sign}"


def _explain(op: str, a: int, b: int) -> str:
    return {"+": _explain_add, "-": _explain_sub, "*": _explain_mul}[op](a, b)


def _fmt_operand(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def _collect_steps(node: Node, steps: list[str]) -> int:
    if isinstance(node, int):
        return node
    a, b = _collect_steps(node.left, steps), _collect_steps(node.right, steps)
    value = _apply(node.op, a, b)
    detail = _explain(node.op, a, b)
    step = f"{_fmt_operand(a)} {node.op} {_fmt_operand(b)} = {value}"
    steps.append(f"{step} ({detail})" if detail else step)
    return value


def reference_text(tree: Node) -> str:
    """Worked solution ending in "The answer is X." (the extractor reads X back)."""
    steps: list[str] = []
    value = _collect_steps(tree, steps)
    if len(steps) <= 1:
        return f"{steps[0] if steps else value}. The answer is {value}."
    body = " ".join(f"Step {i}: {step}." for i, step in enumerate(steps, 1))
    return f"{body} So {render(tree)} = {value}. The answer is {value}."


# --------------------------------------------------------------------------- answer extraction

_NUMBER = re.compile(r"(?<![\w.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9])")
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_MARKER = re.compile(
    r"\b(?:answer|result)\b\s*(?:(?:is|was|would be|will be|should be)\b\s*[:=]?|[:=])", re.IGNORECASE
)
_LINE_END_EQUALS = re.compile(r"=[\s*$]*(?P<num>" + _NUMBER.pattern + r")[\s*$]*[.!]?[\s*$]*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?![0-9])|\n")
_STARTS_EXPRESSION = re.compile(r"\s*[-+*/×x÷]\s*[0-9(]")


def _to_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _number_in_segment(segment: str) -> Decimal | None:
    """The number a marker points at; "7 + 5 = 12" after a marker means 12."""
    first = _NUMBER.search(segment)
    if first is None:
        return None
    if _STARTS_EXPRESSION.match(segment, first.end()) and "=" in segment[first.end() :]:
        after = segment[segment.rindex("=") + 1 :]
        found = _NUMBER.search(after)
        if found is not None:
            return _to_decimal(found.group())
    return _to_decimal(first.group())


def _marker_segment(text: str, end: int) -> str:
    """Text after a marker up to the end of its sentence; the next line if the rest is blank."""
    rest = text[end:]
    cut = _SENTENCE_END.search(rest)
    segment = rest[: cut.start()] if cut else rest
    if segment.strip(" \t:*_$`") == "" and cut is not None and cut.group() == "\n":
        for line in rest[cut.end() :].split("\n"):
            if line.strip():
                return line
    return segment


def extract_answer(text: str) -> Decimal | None:
    """The final number a free-text response commits to, or None when it contains no number.

    Preference: last ``\\boxed{X}``; last "answer is X" / "Answer: X" / "result is X"; last
    line ending in "= X"; last number anywhere. "1,234" is 1234, "-5" is negative, "12." is 12.
    """
    text = text.replace("\u2212", "-")  # unicode minus sign
    for match in reversed(list(_BOXED.finditer(text))):
        value = _number_in_segment(match.group(1))
        if value is not None:
            return value
    for match in reversed(list(_MARKER.finditer(text))):
        value = _number_in_segment(_marker_segment(text, match.end()))
        if value is not None:
            return value
    equals = list(_LINE_END_EQUALS.finditer(text))
    if equals:
        return _to_decimal(equals[-1].group("num"))
    numbers = _NUMBER.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


# --------------------------------------------------------------------------- feedback


def _place_name(k: int) -> str:
    return _PLACES[k] if k < len(_PLACES) else "highest"


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
            if k in _carries(a, b):
                hint += f": check the carry into the {place} place"
            elif k > 0 and abs(given - answer) == 10**k:
                hint += f": there is no carry into the {place} place"
            else:
                hint += f": re-add the {place} column"
        elif tree.op == "-" and a >= b >= 0:
            if k in _borrows(a, b):
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
            if given in [evaluate(n) for n in _internal_nodes(tree) if n is not tree]:
                hints.append("That is the value of an intermediate step; finish the whole expression.")
            tokens = _flat_tokens(tree)
            if "(" in render(tree):
                if given == _eval_without_parentheses(tokens):
                    hints.append("Work out the parts in parentheses first.")
            elif given == _eval_left_to_right(tokens):
                hints.append("Multiplication comes before addition and subtraction.")
        elif isinstance(tree.left, int) and isinstance(tree.right, int):
            for op in _OPS:
                if op != tree.op and _apply(op, tree.left, tree.right) == given:
                    hints.append(f"This problem asks for {_OP_NOUNS[tree.op]}, not {_OP_NOUNS[op]}.")
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


# --------------------------------------------------------------------------- the world


class ArithmeticWorld:
    """Integer arithmetic problems graded by difficulty; binary reward; feedback without answers."""

    name: str = "arithmetic"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32) -> None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty not in DIFFICULTIES:
            raise _difficulty_error(difficulty)
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
            tree = _generate(rng, self.difficulty)
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
