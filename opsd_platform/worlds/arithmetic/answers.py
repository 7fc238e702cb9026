"""The tolerant answer extractor: the last \\boxed{X}, else the last "answer is X", else the last
line ending in "= X", else the last number; negatives, thousands separators, trailing periods.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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


