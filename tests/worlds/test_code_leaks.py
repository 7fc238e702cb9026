"""Leak-free feedback: nothing of a hidden test reaches the model (docs/code-judge.md), under both gradings."""

from __future__ import annotations

import pytest

from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.code import (
    TestCase,
)
from tests.worlds.code_helpers import judged

PUBLIC = TestCase("pub-000000\n", "PUB-000000\n")
SECRETS_A = [TestCase("h1-qzwxec\n", "H1-QZWXEC\n", hidden=True), TestCase("h2-rvtbyn\n", "H2-RVTBYN\n", hidden=True)]
SECRETS_B = [TestCase("h1-ukimlo\n", "H1-UKIMLO\n", hidden=True), TestCase("h2-pjhgfd\n", "H2-PJHGFD\n", hidden=True)]

# What a program can find in its sandbox: every file under its work dir, its own stdin, the
# environment and the command lines it can read. It prints whatever looks like a test's data
# other than its own input.
SNOOP = r'''
import os, re, sys
mine = sys.stdin.read()
seen = []
for root in (".", "/tmp", os.environ.get("HOME", ".")):
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                with open(os.path.join(dirpath, name), errors="ignore") as f:
                    seen.append(f.read())
            except OSError:
                pass
for path in ("/proc/self/cmdline", "/proc/1/cmdline", "/proc/self/environ", "/proc/1/environ"):
    try:
        with open(path, errors="ignore") as f:
            seen.append(f.read())
    except OSError:
        pass
seen.append(repr(dict(os.environ)))
found = set(re.findall(r"(?i)(?:pub|h[12])-[a-z0-9]{6}", " ".join(seen))) - {mine.strip()}
print("LEAK " + " ".join(sorted(found)) if found else mine.strip().upper())
'''


@pytest.mark.parametrize("grading", ["lcb", "lenient"])
def test_a_sandbox_holds_only_the_input_of_the_test_it_runs(grading):
    j = judged(SNOOP, [PUBLIC] + SECRETS_A, reveal=False, grading=grading)
    assert j.passed, j.feedback  # no test saw another test's input, nor any expected output
    # the public test's run shows what it found: its feedback holds its own output only
    j = judged(SNOOP.replace("mine.strip().upper())", "'wrong')"), [PUBLIC] + SECRETS_A, reveal=False, grading=grading)
    assert "Got:\nwrong" in j.feedback


# Programs that try to carry their hidden input out through the feedback; each first solves the
# public test, so that (under lcb) the hidden tests run.
_EXFILTRATE = {
    "print it": "print(data)\nprint(data, file=sys.stderr)\nprint(open('tests.json').read(), file=sys.stderr)",
    "exception named after it": "raise type(data.replace('-', '_').upper(), (Exception,), {})(data * 3)",
    "exit status": "sys.exit(data)",
    "timing": "import time, zlib\ntime.sleep(0.05 + (zlib.crc32(data.encode()) % 8) * 0.05)\nprint('x')",
    "forged records": (
        "import json\nrec = {'i': 1, 'status': 'runtime_error', 'error': data, 'traceback': data, 'exc_type': data}\n"
        "with open('results.jsonl', 'w') as f:\n"
        "    f.write(json.dumps({'compile_error': True, 'error': data, 'line': 1, 'text': data}) + '\\n')\n"
        "    f.write(json.dumps(rec) + '\\n')\nos._exit(0)"),
    "crash": "print(data, file=sys.stderr)\nimport ctypes\nctypes.string_at(0)",
    "memory": "x = [data] * (10 ** 9)",
}


def _hostile(action: str) -> str:
    body = "\n".join("    " + line for line in action.split("\n"))
    return ("import os, sys\ndata = sys.stdin.read().strip()\nif data == 'pub-000000':\n    print('PUB-000000')\n"
            f"else:\n{body}\n")


@pytest.mark.parametrize("public", [True, False], ids=["public first", "hidden only"])
@pytest.mark.parametrize("grading", ["lcb", "lenient"])
@pytest.mark.parametrize("how", list(_EXFILTRATE))
def test_no_hidden_input_or_output_reaches_the_feedback(how, grading, public):
    code = _hostile(_EXFILTRATE[how])
    prefix = [PUBLIC] if public else []
    got = [judged(code, prefix + secrets, reveal=False, grading=grading) for secrets in (SECRETS_A, SECRETS_B)]
    assert got[0].feedback == got[1].feedback  # a function of the categories only, not of the hidden data
    assert got[0].reward == got[1].reward
    for j, secrets in zip(got, (SECRETS_A, SECRETS_B)):
        for t in secrets:
            for secret in (t.input.strip(), t.output.strip(), t.input.strip().upper(), t.output.strip().lower(),
                           t.input.strip().replace("-", "_").upper()):
                assert secret not in j.feedback, (how, j.feedback)
        assert "Hidden tests: 0/2 passed; a hidden test failed: " in j.feedback
        assert "Traceback" not in j.feedback and "Error:" not in j.feedback


def test_hidden_failure_is_a_fixed_category_and_no_test_number():
    tests = [TestCase("1 2\n", "2\n"), TestCase("10 0\n", "10\n", hidden=True), TestCase("4 4\n", "8\n", hidden=True)]
    j = judged("a, b = map(int, input().split())\nprint(a // b + b)\n", tests, reveal=False, grading="lenient")
    assert j.reward == pytest.approx(1 / 3)
    assert j.feedback == ("Passed 1/3 tests.\nHidden tests: 0/2 passed; a hidden test failed: runtime error "
                          "(their inputs, outputs and errors are not shown).")
    j = judged("a, b = map(int, input().split())\nprint(a // b + b)\n", tests, reveal=True, grading="lenient")
    assert "Runtime error on hidden test 2." in j.feedback and "ZeroDivisionError" in j.feedback


def test_syntax_error_is_reported_when_every_test_is_hidden():
    j = judged("x = (\n", SECRETS_A, reveal=False, grading="lcb")
    assert j.feedback.startswith("Syntax error on line 1:") and j.reward == 0.0


def test_lenient_time_budget_covers_the_programs_not_the_sandbox_start_ups():
    many = [TestCase(f"{k} 1\n", f"{k + 1}\n", hidden=k > 0) for k in range(12)]
    j = judged("a, b = map(int, input().split())\nprint(a + b)\n", many, reveal=False,
               limits=SandboxLimits(wall_s=1.0, cpu_s=2))
    assert j.passed, j.feedback  # twelve sandboxes take longer than 1 s to start; the program does not
    slow = "import time\ntime.sleep(0.5)\na, b = map(int, input().split())\nprint(a + b)\n"
    j = judged(slow, many[:3], reveal=False, limits=SandboxLimits(wall_s=1.2, cpu_s=2))
    assert j.reward == pytest.approx(2 / 3)
    assert "Hidden tests: 1/2 passed; a hidden test failed: time limit exceeded" in j.feedback
