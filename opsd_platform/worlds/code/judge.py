"""Judging one response: the harness run in the sandbox (all tests together, or each hidden test in
its own sandbox), each test graded, and the feedback the model sees (nothing of a hidden test but
how many passed and one fixed category).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from opsd_platform.errors import WorldError
from opsd_platform.sandbox import SandboxLimits, run_python
from opsd_platform.worlds.base import Judgement, Problem
from opsd_platform.worlds.code.compare import (
    canonical_json,
    from_typed,
    lcb_line_matches,
    lcb_lines,
    lcb_stdout_matches,
    lcb_values_match,
    normalise_lines,
    parse_args,
    stdout_matches,
    values_match,
)
from opsd_platform.worlds.code.extract import (
    FULL_CAP,
    LCB_INT_MAX_STR_DIGITS,
    LCB_PRELUDE,
    LCB_TIMEOUT_S,
    LENIENT_PRELUDE,
    SHOW_CHARS,
    TB_LINES,
    TESTTYPES,
    TestCase,
    check_grading,
    extract_code,
)

_HARNESS_SRC = (Path(__file__).with_name("harness_program.py")).read_text(encoding="utf-8")



# ------------------------------------------------------------------------------------------
# Judging


def _clip(text: str, n: int = SHOW_CHARS) -> str:
    text = text.rstrip("\n")
    if len(text) > n:
        return text[:n] + f"... [{len(text) - n} more characters]"
    return text if text else "(empty)"


_PATH_RE = re.compile(r'File "(?:[^"]*/)?([^"/]+)"')


def _sanitize(text: str) -> str:
    text = _PATH_RE.sub(r'File "\1"', text)
    return re.sub(r"/tmp/opsd-sbx-[A-Za-z0-9_]+/work/|/tmp/(?=solution\.py|main\.py)", "", text)


def _tail(text: str, n: int = TB_LINES) -> str:
    lines = [ln for ln in _sanitize(text).rstrip().split("\n")]
    return "\n".join(lines[-n:])


@dataclass
class _Verdict:
    kind: str  # passed | wrong_answer | runtime_error | timeout | memory | output_limit | not_run
    detail: dict[str, Any]


_KIND_TEXT = {
    "wrong_answer": "wrong answer",
    "runtime_error": "runtime error",
    "timeout": "time limit exceeded",
    "memory": "memory limit exceeded",
    "output_limit": "output limit exceeded",
    "not_run": "not run",
}


def judge_code(
    code_response: str,
    tests: Sequence[TestCase],
    *,
    func_name: str | None,
    limits: SandboxLimits,
    reveal_hidden: bool,
    per_test_s: float | None = None,
    grading: str = "lenient",
) -> Judgement:
    """Run the tests of one response in the sandbox and grade them.

    reward = passed tests / all tests; passed = all tests pass.
    grading="lcb": LiveCodeBench's verdicts; each test gets `per_test_s` (default
    LCB_TIMEOUT_S = 6 s) and grading stops at the first failure (the tests after it count as not
    passed); `limits.wall_s`/`cpu_s` are replaced by a bound derived from the per-test limit.
    grading="lenient": `limits.wall_s` bounds all tests together and `per_test_s` (default
    min(6, wall_s)) each test inside it; every test is graded.
    A problem with hidden tests runs one sandbox per test, public tests first.
    """
    check_grading(grading)
    tests = list(tests)
    n = len(tests)
    if n == 0:
        return Judgement(0.0, "No tests to run for this problem.", False)
    code = extract_code(code_response, grading)
    if code is None or not code.strip():
        return Judgement(0.0, _no_code_feedback(grading, n), False)
    lcb = grading == "lcb"
    if per_test_s is None:
        per_test_s = LCB_TIMEOUT_S if lcb else min(6.0, float(limits.wall_s))
    cases: list[dict[str, Any]] = []
    inputs: dict[int, str] = {}
    for i, t in enumerate(tests):
        if t.testtype == "functional":
            if not func_name:
                raise WorldError("functional tests need a func_name")
            try:
                json.loads(t.output)
            except json.JSONDecodeError as e:
                raise WorldError(f"functional test {i + 1}: expected output is not JSON: {e.msg}") from None
            cases.append({"i": i, "type": "functional", "args": parse_args(t.input)})
        elif t.testtype == "stdin":
            cases.append({"i": i, "type": "stdin"})
            inputs[i] = t.input
        else:
            raise WorldError(f"unknown testtype {t.testtype!r}; valid: {', '.join(TESTTYPES)}")
    secret = [t.hidden and not reveal_hidden for t in tests]
    run = _Run(code, func_name, grading, per_test_s, limits, cases, inputs)
    verdicts: list[_Verdict | None] = [None] * n
    if not any(t.hidden for t in tests):
        compile_error = run.all_in_one(tests, verdicts)
    else:
        compile_error = run.one_by_one(tests, secret, verdicts)
    if compile_error is not None:
        return Judgement(0.0, _compile_feedback(compile_error, n), False)
    final = [v if v is not None else _Verdict("not_run", {}) for v in verdicts]
    n_pass = sum(v.kind == "passed" for v in final)
    feedback = _feedback(tests, final, n_pass, secret, per_test_s, limits, grading)
    return Judgement(n_pass / n, feedback, n_pass == n)


class _Run:
    """The sandbox runs of one response: all tests in one, or one test per sandbox."""

    def __init__(self, code, func_name, grading, per_test_s, limits, cases, inputs) -> None:
        self.code, self.func_name, self.grading = code, func_name, grading
        self.per_test_s, self.limits, self.cases, self.inputs = per_test_s, limits, cases, inputs
        self.lcb = grading == "lcb"
        n = len(cases)
        # LCB: its whole-run bound, (timeout + 1) * tests + 5 s, plus the load of the module.
        # Lenient: wall_s for all tests together.
        self.whole_run_s = (per_test_s + 1) * n + 5 + per_test_s if self.lcb else float(limits.wall_s)

    def _sandbox(self, idx: list[int], wall_s: float, per_test_s: float):
        """Run the tests at `idx` (with their inputs only) in one sandbox."""
        cfg = {
            "grading": self.grading, "per_test_s": per_test_s, "func_name": self.func_name,
            "prelude": LCB_PRELUDE if self.lcb else LENIENT_PRELUDE,
            "int_max_str_digits": LCB_INT_MAX_STR_DIGITS if self.lcb else None,
            "require_statements": self.lcb, "stop_on_error": self.lcb,
            "tests": [self.cases[i] for i in idx],
        }
        files = {"solution.py": self.code, "tests.json": json.dumps(cfg)}
        files.update({f"in/{i}.txt": self.inputs[i] for i in idx if i in self.inputs})
        collect = ["results.jsonl"] + [f"out/{i}.txt" for i in idx] + [f"val/{i}.json" for i in idx]
        limits = dataclasses.replace(self.limits, wall_s=wall_s)
        if self.lcb:
            limits = dataclasses.replace(limits, cpu_s=max(1, math.ceil(wall_s)))
        result = run_python(_HARNESS_SRC, limits=limits, files=files, collect=tuple(collect))
        records: dict[int, dict[str, Any]] = {}
        compile_error = None
        for line in result.files.get("results.jsonl", b"").decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("compile_error"):
                compile_error = rec
                break
            i = rec.get("i")
            if isinstance(i, int) and not isinstance(i, bool) and i in idx and i not in records:
                records[i] = rec
        return compile_error, records, result

    def _grade_records(self, tests, idx, records, result, verdicts, limit_s: float) -> bool:
        """verdicts[i] for i in idx from one sandbox's records; False when grading stops here."""
        crashed = False
        for i in idx:
            rec = records.get(i)
            if rec is None:
                if crashed:
                    continue  # not run
                crashed = True
                verdicts[i] = _crash_verdict(result, limit_s)
            else:
                verdicts[i] = _grade(tests[i], rec, result.files, self.grading)
            if self.lcb and verdicts[i].kind != "passed":
                return False  # LCB stops at the first failure
        return True

    def all_in_one(self, tests, verdicts):
        idx = list(range(len(tests)))
        compile_error, records, result = self._sandbox(idx, self.whole_run_s, self.per_test_s)
        if compile_error is not None:
            return compile_error
        self._grade_records(tests, idx, records, result, verdicts, self.whole_run_s)
        return None

    def one_by_one(self, tests, secret, verdicts):
        """Public tests first, then the hidden ones, each in a sandbox of its own."""
        order = [i for i, t in enumerate(tests) if not t.hidden] + [i for i, t in enumerate(tests) if t.hidden]
        if secret[order[0]]:
            # A syntax error's message is shown, so it must come from a sandbox without hidden
            # input (the program can write results.jsonl): one without tests, where no code runs.
            compile_error, _, _ = self._sandbox([], 10.0, self.per_test_s)
            if compile_error is not None:
                return compile_error
        used = 0.0  # lenient: the programs' time so far (sandbox start-ups not counted, as in one run)
        for k, i in enumerate(order):
            if self.lcb:
                wall = limit_s = 2 * self.per_test_s + 5  # the module's load, the test, start-up
                per_test = self.per_test_s
            else:  # the lenient budget: all tests of the response together
                left = self.whole_run_s - used
                if left <= 0:
                    verdicts[i] = _Verdict("timeout", {"whole_run": True, "limit_s": self.whole_run_s})
                    return None
                per_test, limit_s = min(self.per_test_s, left), self.whole_run_s
                wall = min(2 * per_test + 5, left + 2)
            compile_error, records, result = self._sandbox([i], wall, per_test)
            if compile_error is not None:
                if k == 0 and not secret[i]:
                    return compile_error
                # compile() passed in an earlier sandbox: a record the program wrote itself
                records = {i: {"i": i, "status": "runtime_error"}}
            if self.lcb:
                if not self._grade_records(tests, [i], records, result, verdicts, limit_s):
                    return None
                continue
            rec = records.get(i)
            try:
                used += result.wall_s if rec is None else min(max(float(rec.get("time") or 0.0), 0.0), result.wall_s)
            except (TypeError, ValueError):
                used += result.wall_s
            if rec is not None and rec.get("status") == "timeout" and per_test < self.per_test_s:
                verdicts[i] = _Verdict("timeout", {"whole_run": True, "limit_s": self.whole_run_s})
                return None  # the budget ran out during this test: the rest are not run
            self._grade_records(tests, [i], records, result, verdicts, limit_s)
            if result.status == "timeout" and rec is None:
                return None  # the whole-run budget is spent: the rest are not run
        return None


def _no_code_feedback(grading: str, n: int) -> str:
    if grading == "lcb":
        return ("No code block found: the code is what lies between the last two lines that contain ``` "
                "(LiveCodeBench's rule), so end the response with the complete solution in one ```python "
                f"code block.\nPassed 0/{n} tests.")
    return ("No ```python code block found in the response: put the complete solution in a "
            f"```python code block.\nPassed 0/{n} tests.")


def _crash_verdict(result, limit_s: float) -> _Verdict:
    if result.status == "timeout":
        return _Verdict("timeout", {"whole_run": True, "limit_s": limit_s})
    if result.status == "output_limit":
        return _Verdict("output_limit", {"whole_run": True})
    if result.status == "memory":
        return _Verdict("memory", {})
    if result.returncode is not None and result.returncode < 0:
        import signal as _signal

        try:
            sig = _signal.Signals(-result.returncode).name
        except ValueError:
            sig = f"signal {-result.returncode}"
        if sig == "SIGKILL":
            return _Verdict("memory", {"note": "the program was killed (SIGKILL), most likely for memory"})
        return _Verdict("runtime_error", {"error": f"the program crashed ({sig})",
                                          "traceback": _tail(result.stderr), "exc_type": sig})
    return _Verdict("runtime_error", {
        "error": f"the program exited abruptly (exit code {result.returncode})",
        "traceback": _tail(result.stderr), "exc_type": "exit"})


def _grade(t: TestCase, rec: dict[str, Any], files: dict[str, bytes], grading: str) -> _Verdict:
    status = rec.get("status")
    if status != "ok":
        kind = status if status in ("timeout", "memory", "output_limit") else "runtime_error"
        return _Verdict(kind, {"error": str(rec.get("error", ""))[:2000], "traceback": str(rec.get("traceback", "")),
                               "exc_type": str(rec.get("exc_type", "")), "during_load": rec.get("during_load", False)})
    i = rec["i"]
    if t.testtype == "stdin":
        got = files.get(f"out/{i}.txt", b"").decode("utf-8", errors="replace")
        if grading == "lcb":
            ok = lcb_stdout_matches(t.output, got)
        elif len(got) > FULL_CAP:  # as the lenient judge always did: no float tolerance for huge outputs
            ok = normalise_lines(got) == normalise_lines(t.output)
        else:
            ok = stdout_matches(t.output, got)
        return _Verdict("passed" if ok else "wrong_answer", {"got": got})
    expected = json.loads(t.output)
    raw = files.get(f"val/{i}.json")
    if raw is None:
        return _Verdict("wrong_answer", {"got": str(rec.get("repr", "?")),
                                         "note": "the return value is not plain data" if grading == "lcb"
                                         else "the return value is not JSON-serialisable"})
    text = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
        if grading == "lcb":
            value = from_typed(value)
    except (ValueError, TypeError, KeyError, RecursionError):
        return _Verdict("wrong_answer", {"got": text[:1000]})
    if grading == "lcb":
        try:
            shown = repr(value)
        except RecursionError:
            shown = text[:1000]
        return _Verdict("passed" if lcb_values_match(expected, value) else "wrong_answer", {"got": shown})
    if len(text) > FULL_CAP:  # as the lenient judge always did: exact canonical JSON for huge values
        ok = canonical_json(value) == canonical_json(expected)
    else:
        ok = values_match(expected, value)
    return _Verdict("passed" if ok else "wrong_answer", {"got": text})


def _compile_feedback(rec: dict[str, Any], n: int) -> str:
    line = rec.get("line")
    where = f" on line {line}" if line else ""
    msg = f"Syntax error{where}: {rec.get('error', 'SyntaxError')}"
    text = rec.get("text") or ""
    if text:
        msg += "\n    " + text.strip()
        off = rec.get("offset")
        if isinstance(off, int) and off > 0:
            indent = len(text) - len(text.lstrip())
            msg += "\n    " + " " * max(0, off - 1 - indent) + "^"
    return msg + f"\nPassed 0/{n} tests."


def _feedback(tests, verdicts, n_pass, secret, per_test_s, limits, grading) -> str:
    """Public tests: the first failure in detail (input, expected, got, traceback), the others by
    number. Hidden tests: how many passed and the category of the first failure, nothing else."""
    n = len(tests)
    if n_pass == n:
        return f"All {n} tests passed."
    lines = [f"Passed {n_pass}/{n} tests."]
    failures = [(i, v) for i, v in enumerate(verdicts) if v.kind not in ("passed", "not_run") and not secret[i]]
    if failures:
        i, v = failures[0]
        lines += _describe(tests[i], i, v, per_test_s, limits, grading)
        others = failures[1:]
        if others:
            parts = [f"{'hidden test' if tests[j].hidden else 'test'} {j + 1} ({_KIND_TEXT[w.kind]})" for j, w in others[:6]]
            more = f", and {len(others) - 6} more" if len(others) > 6 else ""
            lines.append("Also failed: " + ", ".join(parts) + more + ".")
    hidden = [verdicts[i] for i in range(n) if secret[i]]
    if hidden and any(v.kind != "passed" for v in hidden):
        h_pass = sum(v.kind == "passed" for v in hidden)
        h_fail = [v for v in hidden if v.kind not in ("passed", "not_run")]
        text = f"Hidden tests: {h_pass}/{len(hidden)} passed"
        if h_fail:
            text += f"; a hidden test failed: {_KIND_TEXT[h_fail[0].kind]}"
        lines.append(text + " (their inputs, outputs and errors are not shown).")
    not_run = sum(v.kind == "not_run" for v in verdicts)
    if not_run:
        if grading == "lcb":
            lines.append(f"{not_run} test(s) not run: grading stops at the first failing test, as LiveCodeBench's does.")
        else:
            lines.append(f"{not_run} test(s) not run: the program was stopped early.")
    return "\n".join(lines)


def _describe(t: TestCase, i: int, v: _Verdict, per_test_s, limits, grading) -> list[str]:
    """The feedback of one failed test whose content may be shown."""
    label = f"hidden test {i + 1}" if t.hidden else f"test {i + 1}"
    lines: list[str] = []
    if v.kind == "wrong_answer":
        lines.append(f"Wrong answer on {label}.")
        got = str(v.detail.get("got", ""))
        lines += [f"Input:\n{_clip(_show_input(t))}", f"Expected:\n{_clip(t.output)}", f"Got:\n{_clip(got)}"]
        if v.detail.get("note"):
            lines.append(f"({v.detail['note']})")
        diff = _first_difference(t, got, grading)
        if diff:
            lines.append(diff)
    elif v.kind == "runtime_error":
        if v.detail.get("during_load"):
            lines.append(f"Runtime error while loading the code (before {label}).")
        else:
            lines.append(f"Runtime error on {label}.")
        lines.append(f"Input:\n{_clip(_show_input(t))}")
        tb = v.detail.get("traceback") or ""
        lines.append(_tail(tb) if tb.strip() else _sanitize(v.detail.get("error", "")))
    elif v.kind == "timeout":
        if v.detail.get("whole_run"):
            lines.append(f"Time limit exceeded on {label}: the whole run exceeded {v.detail['limit_s']:g} s.")
        else:
            lines.append(f"Time limit exceeded on {label} (limit {per_test_s:g} s per test).")
        lines.append(f"Input:\n{_clip(_show_input(t))}")
    elif v.kind == "memory":
        lines.append(f"Memory limit exceeded on {label} (limit {limits.memory_mb} MB).")
        if v.detail.get("note"):
            lines.append(v.detail["note"])
        lines.append(f"Input:\n{_clip(_show_input(t))}")
    elif v.kind == "output_limit":
        lines.append(f"Output limit exceeded on {label}.")
    return lines


def _first_difference(t: TestCase, got: str, grading: str) -> str:
    """For multi-line stdin answers: where the first difference is (the clipped texts may hide it)."""
    if t.testtype != "stdin":
        return ""
    if grading == "lcb":
        exp_lines, got_lines, same = lcb_lines(t.output), lcb_lines(got), lambda e, g: lcb_line_matches(g, e)
    else:
        exp_lines, got_lines, same = normalise_lines(t.output), normalise_lines(got), stdout_matches
    if len(exp_lines) <= 1 and len(got_lines) <= 1:
        return ""
    for k, (e, g) in enumerate(zip(exp_lines, got_lines), start=1):
        if not same(e, g):
            return f"First difference on output line {k}: expected {_clip(e, 80)!r}, got {_clip(g, 80)!r}."
    if len(exp_lines) != len(got_lines):
        return f"Expected {len(exp_lines)} output lines, got {len(got_lines)}."
    return ""


def _show_input(t: TestCase) -> str:
    if t.testtype == "functional":
        try:
            return ", ".join(json.dumps(a) for a in parse_args(t.input))
        except WorldError:
            return t.input
    return t.input


# ------------------------------------------------------------------------------------------
# Worlds


def judge_all(world, problems: Sequence[Problem], responses: Sequence[str], workers: int) -> list[Judgement]:
    problems, responses = list(problems), list(responses)
    if len(problems) != len(responses):
        raise ValueError(f"judge_many: {len(problems)} problems but {len(responses)} responses")
    if not problems:
        return []
    if workers <= 1 or len(problems) == 1:
        return [world.judge(p, r) for p, r in zip(problems, responses)]
    with ThreadPoolExecutor(max_workers=min(workers, len(problems))) as pool:
        return list(pool.map(world.judge, problems, responses))


def tests_of(problem: Problem) -> list[TestCase]:
    try:
        return [TestCase.from_dict(d) for d in problem.data["tests"]]
    except (KeyError, TypeError) as e:
        raise WorldError(f"problem {problem.id!r} has no usable tests in data: {e}") from None



