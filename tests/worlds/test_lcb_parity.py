"""Parity of the code judge with LiveCodeBench's grader, category by category.

Every case below carries the verdict LiveCodeBench (LCB) gives it, reasoned from its grader
(``lcb_runner/evaluation/testing_util.py``: ``grade_stdio``, ``grade_call_based``,
``get_stripped_lines``, ``convert_line_to_decimals``, the import string, ``reliability_guard``;
``lcb_runner/utils/extraction_utils.py``: ``extract_code``; the 6 s ``--timeout`` of
``lcb_runner/runner/parser.py``; ``sys.set_int_max_str_digits(50000)`` in
``compute_code_generation_metrics.py``), the `why` saying which rule decides. The test asserts
`world.grading=lcb` gives LCB's verdict, except in the rows marked as a departure (LCB's accidents,
listed in docs/code-judge.md), and asserts the `lenient` verdict beside it.

CASES is the table in docs/code-judge.md: `test_docs_table_is_the_cases` fails when they differ;
`python -m tests.worlds.test_lcb_parity` prints the table to paste.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest

from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.code import TestCase, judge_code
from tests.helpers import ROOT

LIMITS = SandboxLimits(wall_s=10.0, cpu_s=10)


def py(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\n"


SUM = "a, b = map(int, input().split())\n"
AB = (TestCase("1 2\n", "3\n"),)


def fn(*pairs: tuple[str, str], hidden_from: int | None = None) -> tuple[TestCase, ...]:
    return tuple(TestCase(i, o, "functional", hidden_from is not None and k >= hidden_from)
                 for k, (i, o) in enumerate(pairs))


@dataclass(frozen=True)
class Case:
    category: str
    what: str
    response: str
    tests: tuple[TestCase, ...]
    lcb: bool  # LiveCodeBench's verdict
    lenient: bool  # world.grading=lenient
    why: str  # the rule of LCB's grader that decides
    ours: bool | None = None  # world.grading=lcb when it departs from LCB (an LCB accident), else = lcb
    func_name: str | None = None
    limits: SandboxLimits = field(default=LIMITS)

    @property
    def lcb_grading(self) -> bool:
        return self.lcb if self.ours is None else self.ours


CASES = [
    # ---------------------------------------------------------------- numbers
    Case("numbers", "`15.0` printed for `15`", py(SUM + "print(float(a + b) * 5)"), (TestCase("1 2\n", "15\n"),),
         True, False, "a line that differs is compared as a list of Decimal: Decimal('15.0') == Decimal('15')"),
    Case("numbers", "`1E+2` printed for `100`", py("input()\nprint('1E+2')"), (TestCase("x\n", "100\n"),),
         True, False, "Decimal('1E+2') == Decimal('100')"),
    Case("numbers", "one more digit than expected (`0.3333333` for `0.333333`)", py("input()\nprint('%.7f' % (1 / 3))"),
         (TestCase("x\n", "0.333333\n"),), False, True, "exact decimals: no tolerance"),
    Case("numbers", "returned float off by 5e-17 (`0.1 + 0.2` for `0.3`)", py("def f(x):\n    return 0.1 + 0.2"),
         fn(("1", "0.3")), False, True, "returned values are compared with ==", func_name="f"),
    Case("numbers", "returned `1` for `true`", py("def f(x):\n    return 1"), fn(("1", "true")),
         True, False, "1 == True", func_name="f"),
    Case("numbers", "returned `2.0` for `2`", py("def f(x):\n    return 2.0"), fn(("1", "2")),
         True, True, "2.0 == 2", func_name="f"),
    # ---------------------------------------------------------------- whitespace
    Case("whitespace", "two spaces between words", py("input()\nprint('a  b')"), (TestCase("x\n", "a b\n"),),
         False, True, "lines are only strip()ped; 'a  b' is no list of decimals"),
    Case("whitespace", "two spaces between numbers", py(SUM + "print(a, '', b)"), (TestCase("1 2\n", "1 2\n"),),
         True, True, "split() gives the same decimals"),
    Case("whitespace", "trailing spaces and blank lines", py(SUM + "print(a + b, '  ')\nprint()\nprint()"), AB,
         True, True, "the text and each line are strip()ped"),
    Case("whitespace", "an inner blank line missing", py("input()\nprint(1)\nprint(2)"), (TestCase("x\n", "1\n\n2\n"),),
         False, False, "inner blank lines count: 2 lines for 3"),
    # ---------------------------------------------------------------- containers
    Case("containers", "list of tuples for a list of lists", py("def f(a):\n    return [(x, x) for x in a]"),
         fn(("[1, 2]", "[[1, 1], [2, 2]]")), False, True, "only a top-level tuple becomes a list", func_name="f"),
    Case("containers", "top-level tuple for a list", py("def f(a):\n    return tuple(a)"), fn(("[1, 2]", "[1, 2]")),
         True, True, "isinstance(prediction, tuple): list(prediction)", func_name="f"),
    Case("containers", "dict with int keys for JSON string keys", py("def f(a):\n    return {1: a}"),
         fn(("5", '{"1": 5}')), False, True, "{1: 5} != {'1': 5}", func_name="f"),
    # ---------------------------------------------------------------- code extraction
    Case("extraction", "python block, then an output block",
         "```python\n" + SUM + "print(a + b)\n```\nOutput:\n```\n3\n```\n", AB,
         False, True, "the lines between the last two lines containing ```: the program is `3`"),
    Case("extraction", "unterminated fence", "```python\n" + SUM + "print(a + b)\n", AB,
         False, True, "fewer than two ``` lines: no code"),
    Case("extraction", "closing fence glued to the last line", "```python\n" + SUM + "print(a + b)```\n", AB,
         False, True, "the glued line holds the second ```, so it is not code: nothing prints"),
    Case("extraction", "`~~~` fences", "~~~python\n" + SUM + "print(a + b)\n~~~\n", AB,
         False, True, "only ``` counts"),
    Case("extraction", "a wrong block first, the answer last", py(SUM + "print(a - b)") + "Fixed:\n" + py(SUM + "print(a + b)"),
         AB, True, True, "the last block"),
    Case("extraction", "python block, then a prose line that mentions ```",
         py(SUM + "print(a + b)") + "(the code is in the ``` block above)\n", AB,
         False, True, "a line that contains ``` anywhere is a fence: the code is the prose between"),
    # ---------------------------------------------------------------- prelude
    Case("prelude", "`statistics.median` without an import", py(SUM + "print(int(statistics.median([a + b])))"), AB,
         True, False, "the import string has `import statistics`"),
    Case("prelude", "`deepcopy` without an import", py(SUM + "print(deepcopy(a + b))"), AB,
         True, False, "the import string has `from copy import *`"),
    Case("prelude", "`json.dumps` without an import", py(SUM + "print(json.dumps(a + b))"), AB,
         True, False, "the import string has `import json`"),
    Case("prelude", "`time.time()` without an import", py("t = time.time()\n" + SUM + "print(a + b)"), AB,
         False, False, "`from datetime import *` binds `time` to datetime.time, which has no time()"),
    Case("prelude", "`defaultdict`, `List` without an import",
         py("class Solution:\n    def f(self, a: List[int]) -> int:\n        d = defaultdict(int)\n"
            "        for x in a:\n            d[x] += 1\n        return len(d)"), fn(("[1, 1, 2]", "2")),
         True, True, "both preludes import them", func_name="f"),
    # ---------------------------------------------------------------- interpreter limits
    Case("recursion limit", "recursion 5000 deep", py("def d(n):\n    return 0 if n == 0 else 1 + d(n - 1)\n"
                                                         + SUM + "print(a + b + d(5000) - 5000)"), AB,
         True, False, "sys.setrecursionlimit(50000)"),
    Case("int digits", "printing a 5001-digit integer", py(SUM + "x = 10 ** 5000\nprint(a + b + len(str(x)) - 5001)"), AB,
         True, False, "sys.set_int_max_str_digits(50000)"),
    # ---------------------------------------------------------------- time limit
    Case("time limit", "three tests of 0.8 s each (lenient: 2 s for all)",
         py("import time\ntime.sleep(0.8)\n" + SUM + "print(a + b)"),
         (TestCase("1 2\n", "3\n"), TestCase("2 2\n", "4\n"), TestCase("3 2\n", "5\n")),
         True, False, "signal.alarm(6) per test", limits=SandboxLimits(wall_s=2.0, cpu_s=5)),
    # ---------------------------------------------------------------- exit status
    Case("exit status", "`sys.exit(1)` after a correct output", py("import sys\n" + SUM + "print(a + b)\nsys.exit(1)"), AB,
         True, False, "call_method catches SystemExit and grades the output"),
    Case("exit status", "`raise SystemExit('done')` after a correct output", py(SUM + "print(a + b)\nraise SystemExit('done')"),
         AB, True, False, "SystemExit is caught, whatever its code"),
    Case("exit status", "`exit()` after a correct output", py(SUM + "print(a + b)\nexit()"), AB,
         True, True, "SystemExit is caught"),
    Case("exit status", "`exit()` inside a function under test", py("def f(x):\n    exit()"), fn(("1", "null")),
         False, False, "SystemExit escapes grade_call_based and ends the worker: every test fails", func_name="f"),
    # ---------------------------------------------------------------- functional target
    Case("functional target", "`class Solution` in a comment, a plain function",
         py("# no class Solution needed\ndef f(x):\n    return x"), fn(("1", "1")),
         False, True, "`\"class Solution\" in code` decides: tmp_sol.Solution() fails", func_name="f"),
    # ---------------------------------------------------------------- stdin
    Case("stdin", "iterating `sys.stdin`", py("import sys\nfor line in sys.stdin:\n    a, b = map(int, line.split())\n"
                                               "    print(a + b)"), AB,
         True, True, "sys.stdin is a StringIO of the input, which iterates (a failure here was once expected)"),
    # ---------------------------------------------------------------- LCB accidents, not reproduced
    Case("LCB accident", "`open(0).read()`", py("a, b = map(int, open(0).read().split())\nprint(a + b)"), AB,
         False, True, "`from builtins import *` binds the real open, which reads the grader's own stdin", ours=True),
    Case("LCB accident", "`global` of a top-level name", py("s = 0\ndef inc():\n    global s\n    s += 1\n"
                                                             + SUM + "inc()\nprint(a + b + s - 1)"), AB,
         False, True, "the program runs inside `def wrapped_function()`: `s` is no global", ours=True),
    Case("LCB accident", "`quit()` after a correct output", py(SUM + "print(a + b)\nquit()"), AB,
         False, True, "reliability_guard sets builtins.quit = None", ours=True),
    Case("LCB accident", "`sys.stdin.buffer`", py("import sys\na, b = map(int, sys.stdin.buffer.readline().split())\n"
                                                   "print(a + b)"), AB,
         False, True, "sys.stdin is a StringIO: no .buffer", ours=True),
    Case("LCB accident", "`sys.stdout.buffer.write`", py("import sys\n" + SUM + "sys.stdout.buffer.write(b'%d' % (a + b))"), AB,
         False, True, "sys.stdout is a StringIO: no .buffer", ours=True),
    Case("LCB accident", "`os.write(1, ...)`", py("import os\n" + SUM + "os.write(1, b'%d' % (a + b))"), AB,
         False, True, "only sys.stdout is captured", ours=True),
    Case("LCB accident", "`os.getcwd()`", py("import os\nos.getcwd()\n" + SUM + "print(a + b)"), AB,
         False, True, "reliability_guard sets os.getcwd (and os.remove, subprocess.Popen, ...) to None", ours=True),
    Case("LCB accident", "`if __name__ == '__main__':` not the last statement",
         py("def main():\n    " + SUM + "    print(a + b)\nif __name__ == '__main__':\n    main()\nDONE = True"), AB,
         False, True, "clean_if_name unwraps only a last statement; the module is named tmp_sol", ours=True),
    Case("LCB accident", "`from __future__ import annotations`",
         py("from __future__ import annotations\n" + SUM + "print(a + b)"), AB,
         False, True, "the import string comes first: a __future__ import after it is a SyntaxError", ours=True),
    Case("LCB accident", "a top-level `return`", py(SUM + "print(a + b)\nif a:\n    return\nprint(0)"), AB,
         True, False, "the program runs inside `def wrapped_function()`, where return is legal", ours=False),
    Case("LCB accident", "state kept between tests (one Solution() for all)",
         py("class Solution:\n    def __init__(self):\n        self.calls = 0\n    def f(self, x):\n"
            "        self.calls += 1\n        return x + self.calls - 1"), fn(("1", "1"), ("2", "2"), hidden_from=1),
         False, True, "LCB makes one Solution() for all tests; here each test runs in a fresh process", ours=True,
         func_name="f"),
]


def _judge(case: Case, grading: str):
    return judge_code(case.response, list(case.tests), func_name=case.func_name, limits=case.limits,
                      reveal_hidden=False, grading=grading)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.what}" for c in CASES])
def test_verdicts_of_lcb_and_lenient_grading(case):
    got_lcb = _judge(case, "lcb")
    assert got_lcb.passed is case.lcb_grading, (case.why, got_lcb.feedback)
    got_lenient = _judge(case, "lenient")
    assert got_lenient.passed is case.lenient, got_lenient.feedback


def _mark(verdict: bool) -> str:
    return "pass" if verdict else "fail"


def table() -> str:
    rows = ["| category | case | LCB | `lcb` | `lenient` | LCB's rule |", "|---|---|---|---|---|---|"]
    for c in CASES:
        ours = _mark(c.lcb_grading) + ("" if c.ours is None else " (departure)")
        rows.append(f"| {c.category} | {c.what} | {_mark(c.lcb)} | {ours} | {_mark(c.lenient)} | {c.why} |")
    return "\n".join(rows)


def test_docs_table_is_the_cases():
    doc = (ROOT / "docs" / "code-judge.md").read_text()
    assert table() in doc, "docs/code-judge.md: paste the output of `python -m tests.worlds.test_lcb_parity`"


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
