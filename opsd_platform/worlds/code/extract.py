"""What a code answer is checked against (TestCase, the test types, LiveCodeBench's limits) and how
the program is cut out of a model response (``extract_code``: LCB's last two fence lines, or the
lenient last ```python block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from opsd_platform.config.choices import GRADINGS
from opsd_platform.errors import WorldError

TESTTYPES = ("stdin", "functional")
SHOW_CHARS = 300  # characters of input/expected/got shown in feedback
TB_LINES = 8
FULL_CAP = 256 * 1024  # lenient: outputs larger than this are compared without the float tolerance

# LiveCodeBench's grading constants (lcb_runner: runner/parser.py --timeout, the import string
# and the limits of evaluation/testing_util.py and compute_code_generation_metrics.py).
LCB_TIMEOUT_S = 6.0  # per test (signal.alarm(6))
LCB_RECURSION_LIMIT = 50_000
LCB_INT_MAX_STR_DIGITS = 50_000
# `from X import *` for each, in this order, then `import X` for each but builtins and typing.
LCB_STAR_IMPORTS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                     "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
LCB_PRELUDE = (
    "".join(f"from {m} import *\n" for m in LCB_STAR_IMPORTS)
    + "".join(f"import {m}\n" for m in LCB_STAR_IMPORTS if m not in ("builtins", "typing"))
    + f"sys.setrecursionlimit({LCB_RECURSION_LIMIT})\n"
)
# The lenient judge's prelude (unchanged).
LENIENT_PRELUDE = """import sys, os, math, re, string, heapq, bisect, itertools, functools, collections, random
from typing import *
from collections import defaultdict, deque, Counter, OrderedDict
from functools import lru_cache, reduce, cache, cmp_to_key
from itertools import accumulate, permutations, combinations, product, groupby
from heapq import heappush, heappop, heapify
from bisect import bisect_left, bisect_right, insort
from math import inf, gcd, sqrt, ceil, floor, comb, factorial, isqrt
"""


def check_grading(grading: str) -> None:
    if grading not in GRADINGS:
        raise WorldError(f"unknown grading {grading!r}; valid: {', '.join(GRADINGS)}")


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest test class

    input: str  # stdin text, or newline-separated JSON arguments (functional)
    output: str  # expected stdout, or the JSON of the expected return value (functional)
    testtype: str = "stdin"  # "stdin" | "functional"
    hidden: bool = False  # private test: feedback does not reveal its input/expected output

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "testtype": self.testtype,
                "hidden": self.hidden}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TestCase":
        return cls(d["input"], d["output"], d.get("testtype", "stdin"), bool(d.get("hidden", False)))




# Code extraction

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n`]*$")
_PY_LANGS = {"python", "py", "python3", "py3"}


def extract_code(response: str, grading: str = "lenient") -> str | None:
    """The program in a model response, as `grading` finds it; None when there is none."""
    check_grading(grading)
    if not isinstance(response, str):
        return None
    return _extract_lcb(response) if grading == "lcb" else _extract_lenient(response)


def _extract_lcb(response: str) -> str | None:
    """LiveCodeBench's rule: the lines strictly between the last two lines that contain ```
    anywhere (a language tag, a ``~~~`` fence, an unterminated fence or a closing fence glued to
    code count for nothing more); None with fewer than two such lines."""
    lines = response.split("\n")
    marks = [k for k, line in enumerate(lines) if "```" in line]
    if len(marks) < 2:
        return None
    return "\n".join(lines[marks[-2] + 1 : marks[-1]]) + "\n"


def _extract_lenient(response: str) -> str | None:
    """The last fenced block whose info string is python/py/python3 wins (models often show an
    example or a wrong attempt first and the final answer last); without one, the last fenced
    block of any language; without any fence, None. A fence still open at the end of the text
    (a truncated generation) counts as a block running to the end; a closing fence glued to the
    last code line (``return x```"``) is accepted.
    """
    blocks: list[tuple[str, str]] = []  # (language, code)
    lang: str | None = None
    fence = ""
    body: list[str] = []
    for line in response.split("\n"):
        if lang is None:
            m = _FENCE.match(line)
            if m:
                fence, lang, body = m.group(1), m.group(2).lower(), []
            continue
        stripped = line.strip()
        if stripped.startswith(fence[0] * 3) and stripped.strip(fence[0]) == "" and len(stripped) >= len(fence):
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif line.rstrip().endswith(fence) and fence[0] == "`" and line.strip() != fence:
            body.append(line.rstrip()[: -len(fence)])
            blocks.append((lang, "\n".join(body)))
            lang = None
        else:
            body.append(line)
    if lang is not None:  # unterminated block at the end
        blocks.append((lang, "\n".join(body)))
    if not blocks:
        return None
    python_blocks = [code for lg, code in blocks if lg in _PY_LANGS]
    code = python_blocks[-1] if python_blocks else blocks[-1][1]
    return code.strip("\n") + "\n" if code.strip() else ""




