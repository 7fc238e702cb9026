"""Worked explanations (the problem's reference): each operation of the tree explained step by step,
with its carries, borrows and place-value parts.
"""

from __future__ import annotations

from opsd_platform.worlds.arithmetic.tree import BinOp, Node, apply_op, render

# --------------------------------------------------------------------------- worked explanations


def _digits(n: int) -> list[int]:
    """Decimal digits of a non-negative int, ones first."""
    return [int(c) for c in reversed(str(n))]


def carries(a: int, b: int) -> set[int]:
    """Places (0 = ones) that receive a carry when adding non-negative a and b by columns."""
    da, db = _digits(a), _digits(b)
    carry, places = 0, set()
    for i in range(max(len(da), len(db))):
        total = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) + carry
        carry = total // 10
        if carry:
            places.add(i + 1)
    return places


def borrows(a: int, b: int) -> set[int]:
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
    value = apply_op(node.op, a, b)
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




def worked_text(tree: Node) -> str:
    """A derivation long enough for the graded context to reveal a share of (contexts.py, form 2).

    A single-digit sum (difficulty 1) has a one-line reference ("3 + 4 = 7. The answer is 7."), so
    any prefix of it either hides the answer or shows it: a step. Here it is worked out by counting
    on from the left operand, one number at a time, so a prefix shows part of the count and the
    point where the answer appears moves with the right operand. Every other tree's reference is
    already a sequence of explained steps, and is returned as it is."""
    if isinstance(tree, BinOp) and tree.op == "+" and all(isinstance(x, int) and 0 <= x < 10
                                                          for x in (tree.left, tree.right)):
        a, b = tree.left, tree.right
        if b == 0:
            count = f"Start from {a}. Adding 0 changes nothing."
        else:
            count = f"Start from {a} and count up {b} more: " + ", ".join(str(a + k) for k in range(1, b + 1)) + "."
        return f"{count} So {a} + {b} = {a + b}. The answer is {a + b}."
    return reference_text(tree)
