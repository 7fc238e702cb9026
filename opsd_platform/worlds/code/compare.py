"""Comparing what a program produced with what was expected, outside the sandbox: lenient (whitespace
collapsed, numbers within 1e-6) and LiveCodeBench's (line by line, exact decimals; ``==`` on values).
"""

from __future__ import annotations

import decimal
import fractions
import json
import math
import re
from typing import Any

from opsd_platform.errors import WorldError

# ------------------------------------------------------------------------------------------
# Comparison: lenient


def normalise_lines(text: str) -> list[str]:
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _float_token(tok: str) -> float | None:
    if not any(c in tok for c in ".eE") or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tok):
        return None
    try:
        return float(tok)
    except ValueError:
        return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def stdout_matches(expected: str, got: str) -> bool:
    """Lenient: whitespace runs collapsed, blank edge lines ignored, decimals within 1e-6."""
    exp_lines, got_lines = normalise_lines(expected), normalise_lines(got)
    if exp_lines == got_lines:
        return True
    if len(exp_lines) != len(got_lines):
        return False
    for e_line, g_line in zip(exp_lines, got_lines):
        e_toks, g_toks = e_line.split(), g_line.split()
        if len(e_toks) != len(g_toks):
            return False
        for e, g in zip(e_toks, g_toks):
            if e == g:
                continue
            ef = _float_token(e)
            if ef is None:
                return False
            try:
                gf = float(g)
            except ValueError:
                return False
            if not _close(ef, gf):
                return False
    return True


def values_match(expected: Any, got: Any) -> bool:
    """Lenient: bools strict, numbers within 1e-6, tuples as lists (at any depth)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        if isinstance(expected, float) or isinstance(got, float):
            if math.isnan(expected) or math.isnan(got):
                return math.isnan(expected) and math.isnan(got)
            return _close(float(expected), float(got))
        return expected == got
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(expected) == len(got) and all(values_match(e, g) for e, g in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(values_match(expected[k], got[k]) for k in expected)
    return expected == got


# ------------------------------------------------------------------------------------------
# Comparison: lcb (LiveCodeBench's rules)


def lcb_lines(text: str) -> list[str]:
    """LCB: the text stripped, split at newlines, each line stripped (inner blank lines count)."""
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[decimal.Decimal] | None:
    try:
        return [decimal.Decimal(tok) for tok in line.split()]
    except (decimal.InvalidOperation, ValueError, TypeError):
        return None


def lcb_line_matches(got: str, expected: str) -> bool:
    if got == expected:
        return True
    g, e = _decimals(got), _decimals(expected)
    if g is None or e is None:
        return False
    try:
        return g == e
    except decimal.InvalidOperation:  # a signalling NaN
        return False


def lcb_stdout_matches(expected: str, got: str) -> bool:
    """LCB: as many lines; each equal, or equal as a list of exact decimals."""
    exp_lines, got_lines = lcb_lines(expected), lcb_lines(got)
    return len(exp_lines) == len(got_lines) and all(lcb_line_matches(g, e) for g, e in zip(got_lines, exp_lines))


class _Opaque:
    """A returned value that is not plain data: equal to nothing (its own __eq__ never runs here)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<{self.name}>"


def from_typed(v: Any) -> Any:
    """Inverse of the harness's to_typed, for plain data only; raises ValueError on a bad form."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [from_typed(x) for x in v]
    if isinstance(v, dict) and len(v) >= 1:
        if "int" in v:
            return int(str(v["int"]), 16)
        if "tuple" in v:
            return tuple(from_typed(x) for x in v["tuple"])
        if "dict" in v:
            return {from_typed(k): from_typed(x) for k, x in v["dict"]}
        if "set" in v:
            items = [from_typed(x) for x in v["set"]]
            return frozenset(items) if v.get("frozen") else set(items)
        if "complex" in v:
            re_, im = v["complex"]
            return complex(float(re_), float(im))
        if "fraction" in v:
            num, den = v["fraction"]
            return fractions.Fraction(int(num), int(den))
        if "decimal" in v:
            return decimal.Decimal(str(v["decimal"]))
        if "other" in v:
            return _Opaque(str(v["other"]))
    raise ValueError("not a value the harness writes")


def lcb_values_match(expected: Any, got: Any) -> bool:
    """LCB: a top-level tuple becomes a list, then ``got == expected``."""
    if isinstance(got, tuple):
        got = list(got)
    try:
        return bool(got == expected)
    except Exception:  # RecursionError, a signalling NaN, ...
        return False


def parse_args(text: str) -> list[Any]:
    """Functional-test input: one JSON value per non-blank line."""
    args = []
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                args.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise WorldError(f"functional test input line {n} is not JSON: {e.msg}: {line[:80]!r}") from None
    return args




