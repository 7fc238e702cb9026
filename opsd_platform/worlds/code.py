"""Code worlds: extract the program from a model response, run all tests in one sandbox, and
turn the outcome into judge-like feedback.

Two test types, as in LiveCodeBench:

* ``stdin``: the program reads ``input`` from stdin; its stdout is compared with ``output`` after
  whitespace normalisation (per line, runs of blanks collapsed, leading/trailing blank lines
  ignored; a token whose expected form is a decimal number may differ by 1e-6 relative/absolute).
* ``functional``: ``input`` is newline-separated JSON values, one per argument; the function
  ``func_name`` (``Solution().func_name`` if the code defines ``class Solution``) is called and
  its result compared with the JSON-decoded ``output`` (tuples as lists, floats to 1e-6).

Anti-gaming: the expected outputs never enter the sandbox. The harness only runs the candidate on
the inputs and reports what it produced; the comparison happens here, in the trusted process.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
import base64
import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from ..sandbox import SandboxLimits, run_python
from .base import Judgement, Problem, WorldError, check_split
from .jsonl import read_jsonl

__all__ = [
    "TestCase",
    "extract_code",
    "judge_code",
    "PyFuncWorld",
    "CodeJsonlWorld",
    "decode_lcb_tests",
]

TESTTYPES = ("stdin", "functional")
_SHOW = 300  # characters of input/expected/got shown in feedback
_TB_LINES = 8
_FULL_CAP = 256 * 1024  # outputs larger than this come back as a hash of the normalised text


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


# ------------------------------------------------------------------------------------------
# Code extraction

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n`]*$")
_PY_LANGS = {"python", "py", "python3", "py3"}


def extract_code(response: str) -> str | None:
    """The program in a model response.

    The last fenced block whose info string is python/py/python3 wins (models often show an
    example or a wrong attempt first and the final answer last); without one, the last fenced
    block of any language; without any fence, None. A fence still open at the end of the text
    (a truncated generation) counts as a block running to the end; a closing fence glued to the
    last code line (``return x```"``) is accepted.
    """
    if not isinstance(response, str):
        return None
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


# ------------------------------------------------------------------------------------------
# Normalisation shared (as source) by the harness and the judge

_NORMALISE_SRC = '''
def normalise_lines(text):
    lines = [" ".join(line.split()) for line in text.replace("\\r\\n", "\\n").split("\\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines

def normalised_hash(text):
    import hashlib
    return hashlib.sha256("\\n".join(normalise_lines(text)).encode("utf-8", "replace")).hexdigest()

def canonical_json(value):
    import json
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
'''
_norm_ns: dict[str, Any] = {}
exec(compile(_NORMALISE_SRC, "<normalise>", "exec"), _norm_ns)  # our own code, not user input
normalise_lines = _norm_ns["normalise_lines"]
normalised_hash = _norm_ns["normalised_hash"]
canonical_json = _norm_ns["canonical_json"]

# The harness: runs inside the sandbox as main.py next to solution.py, tests.json and in/K.txt.
# Writes one JSON line per test to results.jsonl as soon as the test is done.
_HARNESS_SRC = (
    r'''
import builtins, io, json, os, signal, sys, threading, time, traceback
'''
    + _NORMALISE_SRC
    + r'''
PRELUDE = """import sys, os, math, re, string, heapq, bisect, itertools, functools, collections, random
from typing import *
from collections import defaultdict, deque, Counter, OrderedDict
from functools import lru_cache, reduce, cache, cmp_to_key
from itertools import accumulate, permutations, combinations, product, groupby
from heapq import heappush, heappop, heapify
from bisect import bisect_left, bisect_right, insort
from math import inf, gcd, sqrt, ceil, floor, comb, factorial, isqrt
"""
HARNESS_GLOBALS = globals()

class _Deadline(BaseException):
    pass

_armed = [False]

def _alarm(signum, frame):
    # Never raise inside the harness itself (the interval timer fires again 50 ms later).
    if _armed[0] and frame is not None and frame.f_globals is not HARNESS_GLOBALS:
        raise _Deadline()

def _tb_tail(exc):
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, limit=None)
    frames = [f for f in te.stack if f.filename != __file__ and not f.filename.endswith("main.py")]
    for f in frames:
        f.filename = os.path.basename(f.filename)
    te.stack = traceback.StackSummary.from_list(frames)
    lines = "".join(te.format(chain=False)).rstrip("\n").split("\n")
    return "\n".join(lines[-12:])

def _exc_line(exc):
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]

def _join_threads(deadline):
    me = threading.current_thread()
    for th in threading.enumerate():
        if th is me or th.daemon:
            continue
        th.join(max(0.0, deadline - time.monotonic()))
        if th.is_alive():
            raise _Deadline()

def run_limited(fn, per_test):
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    out = {"status": "ok"}
    _armed[0] = True
    signal.setitimer(signal.ITIMER_REAL, per_test, 0.05)
    try:
        try:
            out["value"] = fn(t0 + per_test)
        finally:
            _armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        out = {"status": "timeout"}
    except MemoryError:
        out = {"status": "memory"}
    except SystemExit as e:
        if e.code not in (None, 0):
            out = {"status": "runtime_error", "error": "SystemExit: %r" % (e.code,), "exc_type": "SystemExit", "traceback": ""}
    except OSError as e:
        if getattr(e, "errno", None) == 27:  # EFBIG: output file over RLIMIT_FSIZE
            out = {"status": "output_limit"}
        else:
            out = {"status": "runtime_error", "error": _exc_line(e), "exc_type": type(e).__name__, "traceback": _tb_tail(e)}
    except BaseException as e:
        out = {"status": "runtime_error", "error": _exc_line(e), "exc_type": type(e).__name__, "traceback": _tb_tail(e)}
    _armed[0] = False
    out["time"] = round(time.monotonic() - t0, 4)
    return out

def redirect(path, flags, target):
    # the program may have closed fd 0/1 (e.g. via open(0)), so the new fd can be the target
    fd = os.open(path, flags, 0o600)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)

def fresh_namespace(name):
    ns = {"__name__": name, "__builtins__": builtins}
    exec(PRELUDE, ns)
    return ns

def to_json_value(v):
    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError("not JSON serialisable: %s" % type(o).__name__)
    return json.dumps(v, allow_nan=True, default=default)

def main():
    with open("tests.json", encoding="utf-8") as f:
        cfg = json.load(f)
    per_test = float(cfg["per_test_s"])
    full_cap = int(cfg["full_cap"])
    res = open("results.jsonl", "w", encoding="utf-8")

    def emit(obj):
        line = json.dumps(obj)
        try:
            res.write(line + "\n")
            res.flush()
        except OSError:
            pass

    with open("solution.py", encoding="utf-8") as f:
        src = f.read()
    try:
        code = compile(src, "solution.py", "exec")
    except SyntaxError as e:
        kind = "" if type(e) is SyntaxError else type(e).__name__ + ": "
        emit({"compile_error": True, "error": kind + str(e.msg), "line": e.lineno,
              "offset": e.offset, "text": (e.text or "").rstrip("\n")[:300]})
        return
    except BaseException as e:
        emit({"compile_error": True, "error": _exc_line(e), "line": None, "offset": None, "text": ""})
        return

    func_target = None
    load_error = None
    if any(t["type"] == "functional" for t in cfg["tests"]):
        name = cfg["func_name"]
        redirect(os.devnull, os.O_RDONLY, 0)
        redirect(os.devnull, os.O_WRONLY, 1)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        ns = fresh_namespace("solution")
        def load(deadline):
            exec(code, ns)
        r = run_limited(load, per_test)
        if r["status"] != "ok":
            load_error = r
        else:
            cls = ns.get("Solution")
            if callable(ns.get(name)) and not isinstance(ns.get(name), type):
                fn = ns[name]
                func_target = lambda args: fn(*args)
            elif isinstance(cls, type) and hasattr(cls, name):
                func_target = lambda args: getattr(cls(), name)(*args)
            elif isinstance(cls, type):
                load_error = {"status": "runtime_error", "exc_type": "AttributeError", "traceback": "",
                              "error": "AttributeError: class Solution has no method %r" % name}
            else:
                load_error = {"status": "runtime_error", "exc_type": "NameError", "traceback": "",
                              "error": "NameError: no function named %r is defined" % name}

    for i, t in enumerate(cfg["tests"]):
        if t["type"] == "functional":
            if load_error is not None:
                emit(dict(load_error, i=i, during_load=True))
                continue
            args = t["args"]
            redirect(os.devnull, os.O_RDONLY, 0)
            redirect(os.devnull, os.O_WRONLY, 1)
            def call(deadline):
                v = func_target(args)
                _join_threads(deadline)
                return v
            r = run_limited(call, per_test)
            if r["status"] == "ok":
                value = r.pop("value")
                try:
                    text = to_json_value(value)
                except (TypeError, ValueError) as e:
                    r["repr"] = repr(value)[:1000]
                else:
                    if len(text) <= full_cap:
                        r["value"] = text
                    else:
                        r["value_hash"] = __import__("hashlib").sha256(
                            canonical_json(json.loads(text)).encode()).hexdigest()
                        r["value_head"] = text[:1000]
            else:
                r.pop("value", None)
            r["i"] = i
            emit(r)
        else:
            redirect(os.path.join("in", "%d.txt" % i), os.O_RDONLY, 0)
            redirect("out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 1)
            stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="replace")
            stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="replace")
            sys.stdin, sys.stdout = stdin, stdout
            ns = fresh_namespace("__main__")
            def prog(deadline):
                exec(code, ns)
                _join_threads(deadline)
                stdout.flush()
            r = run_limited(prog, per_test)
            r.pop("value", None)
            try:
                stdout.flush()
            except BaseException:
                pass
            sys.stdout = sys.__stdout__
            try:
                with open("out.txt", "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            text = data.decode("utf-8", errors="replace")
            r["out_hash"] = normalised_hash(text)
            if len(text) <= full_cap:
                r["out"] = text
            else:
                r["out_head"] = text[:1000]
            r["i"] = i
            emit(r)
    res.close()

try:
    main()
finally:
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(0)
'''
)


# ------------------------------------------------------------------------------------------
# Comparison


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


# ------------------------------------------------------------------------------------------
# Judging


def _clip(text: str, n: int = _SHOW) -> str:
    text = text.rstrip("\n")
    if len(text) > n:
        return text[:n] + f"... [{len(text) - n} more characters]"
    return text if text else "(empty)"


_PATH_RE = re.compile(r'File "(?:[^"]*/)?([^"/]+)"')


def _sanitize(text: str) -> str:
    text = _PATH_RE.sub(r'File "\1"', text)
    return re.sub(r"/tmp/opsd-sbx-[A-Za-z0-9_]+/work/|/tmp/(?=solution\.py|main\.py)", "", text)


def _tail(text: str, n: int = _TB_LINES) -> str:
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
) -> Judgement:
    """Run every test of one response in ONE sandbox process and grade it.

    reward = passed tests / all tests; passed = all tests pass. `limits.wall_s` bounds the whole
    run (all tests together); `per_test_s` (default min(6, wall_s)) bounds each test inside it.
    """
    tests = list(tests)
    n = len(tests)
    if n == 0:
        return Judgement(0.0, "No tests to run for this problem.", False)
    code = extract_code(code_response)
    if code is None or not code.strip():
        return Judgement(
            0.0,
            "No ```python code block found in the response: put the complete solution in a "
            f"```python code block.\nPassed 0/{n} tests.",
            False,
        )
    if per_test_s is None:
        per_test_s = min(6.0, float(limits.wall_s))
    cases = []
    files: dict[str, str] = {"solution.py": code}
    for i, t in enumerate(tests):
        if t.testtype == "functional":
            if not func_name:
                raise WorldError("functional tests need a func_name")
            try:
                json.loads(t.output)
            except json.JSONDecodeError as e:
                raise WorldError(f"functional test {i + 1}: expected output is not JSON: {e.msg}") from None
            cases.append({"type": "functional", "args": parse_args(t.input)})
        elif t.testtype == "stdin":
            cases.append({"type": "stdin"})
            files[f"in/{i}.txt"] = t.input
        else:
            raise WorldError(f"unknown testtype {t.testtype!r}; valid: {', '.join(TESTTYPES)}")
    files["tests.json"] = json.dumps(
        {"per_test_s": per_test_s, "full_cap": _FULL_CAP, "func_name": func_name, "tests": cases}
    )
    result = run_python(_HARNESS_SRC, limits=limits, files=files, collect=("results.jsonl",))
    records: dict[int, dict[str, Any]] = {}
    compile_error: dict[str, Any] | None = None
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
        if isinstance(i, int) and 0 <= i < n and i not in records:
            records[i] = rec
    if compile_error is not None:
        return Judgement(0.0, _compile_feedback(compile_error, n), False)

    verdicts: list[_Verdict] = []
    stopped = False
    for i, t in enumerate(tests):
        rec = records.get(i)
        if rec is None:
            if stopped:
                verdicts.append(_Verdict("not_run", {}))
                continue
            stopped = True
            verdicts.append(_crash_verdict(result, limits))
            continue
        verdicts.append(_grade(t, rec, per_test_s, limits))
    n_pass = sum(v.kind == "passed" for v in verdicts)
    feedback = _feedback(tests, verdicts, n_pass, reveal_hidden, per_test_s, limits, result)
    return Judgement(n_pass / n, feedback, n_pass == n)


def _crash_verdict(result, limits: SandboxLimits) -> _Verdict:
    if result.status == "timeout":
        return _Verdict("timeout", {"whole_run": True})
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


def _grade(t: TestCase, rec: dict[str, Any], per_test_s: float, limits: SandboxLimits) -> _Verdict:
    status = rec.get("status")
    if status != "ok":
        kind = status if status in ("timeout", "memory", "output_limit") else "runtime_error"
        return _Verdict(kind, {"error": str(rec.get("error", ""))[:2000], "traceback": str(rec.get("traceback", "")),
                               "exc_type": str(rec.get("exc_type", "")), "during_load": rec.get("during_load", False)})
    if t.testtype == "stdin":
        if isinstance(rec.get("out"), str):
            got = rec["out"]
            ok = stdout_matches(t.output, got)
        else:
            got = str(rec.get("out_head", "")) + "..."
            ok = rec.get("out_hash") == normalised_hash(t.output)
        return _Verdict("passed" if ok else "wrong_answer", {"got": got})
    expected = json.loads(t.output)
    if isinstance(rec.get("value"), str):
        try:
            got_v = json.loads(rec["value"])
        except ValueError:
            return _Verdict("wrong_answer", {"got": rec["value"][:1000]})
        ok = values_match(expected, got_v)
        return _Verdict("passed" if ok else "wrong_answer", {"got": rec["value"]})
    if "value_hash" in rec:
        ok = rec["value_hash"] == hashlib.sha256(canonical_json(expected).encode()).hexdigest()
        return _Verdict("passed" if ok else "wrong_answer", {"got": str(rec.get("value_head", "")) + "..."})
    return _Verdict("wrong_answer", {"got": str(rec.get("repr", "?")), "note": "the return value is not JSON-serialisable"})


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


def _feedback(tests, verdicts, n_pass, reveal_hidden, per_test_s, limits, result) -> str:
    n = len(tests)
    lines = [f"Passed {n_pass}/{n} tests."]
    failures = [(i, v) for i, v in enumerate(verdicts) if v.kind not in ("passed", "not_run")]
    if not failures:
        if n_pass == n:
            lines[0] = f"All {n} tests passed."
        return "\n".join(lines)
    i, v = failures[0]
    t = tests[i]
    hidden = t.hidden and not reveal_hidden
    label = f"hidden test {i + 1}" if t.hidden else f"test {i + 1}"
    shown = not hidden
    if v.kind == "wrong_answer":
        lines.append(f"Wrong answer on {label}.")
        if shown:
            lines += [f"Input:\n{_clip(_show_input(t))}", f"Expected:\n{_clip(_show_output(t))}",
                      f"Got:\n{_clip(str(v.detail.get('got', '')))}"]
            if v.detail.get("note"):
                lines.append(f"({v.detail['note']})")
            diff = _first_difference(t, str(v.detail.get("got", "")))
            if diff:
                lines.append(diff)
    elif v.kind == "runtime_error":
        err = v.detail.get("error", "")
        if v.detail.get("during_load"):
            lines.append(f"Runtime error while loading the code (before {label}).")
        else:
            lines.append(f"Runtime error on {label}.")
        if shown:
            lines.append(f"Input:\n{_clip(_show_input(t))}")
            tb = v.detail.get("traceback") or ""
            lines.append(_tail(tb) if tb.strip() else _sanitize(err))
        else:
            lines.append(f"Error type: {v.detail.get('exc_type') or 'error'}")
    elif v.kind == "timeout":
        if v.detail.get("whole_run"):
            lines.append(f"Time limit exceeded on {label}: the whole run exceeded {limits.wall_s:g} s.")
        else:
            lines.append(f"Time limit exceeded on {label} (limit {per_test_s:g} s per test).")
        if shown:
            lines.append(f"Input:\n{_clip(_show_input(t))}")
    elif v.kind == "memory":
        lines.append(f"Memory limit exceeded on {label} (limit {limits.memory_mb} MB).")
        if v.detail.get("note"):
            lines.append(v.detail["note"])
        if shown:
            lines.append(f"Input:\n{_clip(_show_input(t))}")
    elif v.kind == "output_limit":
        lines.append(f"Output limit exceeded on {label}.")
    others = failures[1:]
    if others:
        parts = [f"{'hidden test' if tests[j].hidden else 'test'} {j + 1} ({_KIND_TEXT[w.kind]})" for j, w in others[:6]]
        more = f", and {len(others) - 6} more" if len(others) > 6 else ""
        lines.append("Also failed: " + ", ".join(parts) + more + ".")
    not_run = sum(v.kind == "not_run" for v in verdicts)
    if not_run:
        lines.append(f"{not_run} test(s) not run: the program was stopped early.")
    return "\n".join(lines)


def _first_difference(t: TestCase, got: str) -> str:
    """For multi-line stdin answers: where the first difference is (the clipped texts may hide it)."""
    if t.testtype != "stdin" or got.endswith("..."):
        return ""
    exp_lines, got_lines = normalise_lines(t.output), normalise_lines(got)
    if len(exp_lines) <= 1 and len(got_lines) <= 1:
        return ""
    for k, (e, g) in enumerate(zip(exp_lines, got_lines), start=1):
        if not stdout_matches(e, g):
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


def _show_output(t: TestCase) -> str:
    return t.output


# ------------------------------------------------------------------------------------------
# Worlds


def _judge_many(world, problems: Sequence[Problem], responses: Sequence[str], workers: int) -> list[Judgement]:
    problems, responses = list(problems), list(responses)
    if len(problems) != len(responses):
        raise ValueError(f"judge_many: {len(problems)} problems but {len(responses)} responses")
    if not problems:
        return []
    if workers <= 1 or len(problems) == 1:
        return [world.judge(p, r) for p, r in zip(problems, responses)]
    with ThreadPoolExecutor(max_workers=min(workers, len(problems))) as pool:
        return list(pool.map(world.judge, problems, responses))


def _tests_of(problem: Problem) -> list[TestCase]:
    try:
        return [TestCase.from_dict(d) for d in problem.data["tests"]]
    except (KeyError, TypeError) as e:
        raise WorldError(f"problem {problem.id!r} has no usable tests in data: {e}") from None


class PyFuncWorld:
    """Python function synthesis from a bank of parameterised templates (see pyfunc_bank).

    `difficulty` selects the templates of exactly that grade (1 = one-liner, 2 = short loop,
    3 = loop with a corner case). Problems are deterministic for (seed, difficulty) and the
    first n_train/n_val of each split do not depend on the other split's size; train and val
    never share a (template, parameters) task: the split is a hash of that key.
    """

    name = "pyfunc"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32,
                 limits: SandboxLimits | None = None, workers: int = 2) -> None:
        from .pyfunc_bank import DIFFICULTIES, generate_problems

        if difficulty not in DIFFICULTIES:
            raise WorldError(f"pyfunc difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        for label, v in (("n_train", n_train), ("n_val", n_val)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WorldError(f"pyfunc {label} must be an int >= 0, got {v!r}")
        self.seed, self.difficulty, self.n_train, self.n_val = seed, difficulty, n_train, n_val
        self.limits = limits or SandboxLimits(wall_s=10.0, cpu_s=10)
        self.workers = workers
        self._problems = generate_problems(seed, difficulty, n_train, n_val)

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._problems[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        return judge_code(response, _tests_of(problem), func_name=problem.data.get("func_name"),
                          limits=self.limits, reveal_hidden=True)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        return _judge_many(self, problems, responses, self.workers)


# ---- LiveCodeBench -----------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Only plain data: no class, function or global may be loaded."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in test data")


_MAX_DECOMPRESSED = 512 * 1024 * 1024


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > 50:
        raise ValueError("test data nested too deeply")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return
    if isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("non-string key in test data")
            _check_plain(v, depth + 1)
        return
    raise ValueError(f"unexpected {type(value).__name__} in test data")


def decode_lcb_tests(raw: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a list, a JSON string of a list, or (private tests of the
    release) base64(zlib(pickle(JSON string))). Raises ValueError with a reason."""
    if isinstance(raw, list):
        value: Any = raw
    elif raw is None or (isinstance(raw, str) and not raw.strip()):
        return []
    elif isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            try:
                packed = base64.b64decode(raw.strip(), validate=True)
            except (ValueError, TypeError):
                raise ValueError("neither JSON nor base64") from None
            d = zlib.decompressobj()
            try:
                data = d.decompress(packed, _MAX_DECOMPRESSED)
            except zlib.error as e:
                raise ValueError(f"base64 but not zlib data ({e})") from None
            if d.unconsumed_tail:
                raise ValueError("compressed test data larger than 512 MB")
            try:
                value = _PlainUnpickler(io.BytesIO(data)).load()
            except Exception as e:
                raise ValueError(f"bad pickled test data ({e})") from None
            _check_plain(value)
            if isinstance(value, (bytes, bytearray)):
                value = value.decode("utf-8")
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"decompressed test data is not JSON ({e.msg})") from None
    else:
        raise ValueError(f"expected a JSON string or a list, got {type(raw).__name__}")
    if not isinstance(value, list):
        raise ValueError(f"expected a list of test cases, got {type(value).__name__}")
    out = []
    for k, tc in enumerate(value):
        if not isinstance(tc, dict) or not isinstance(tc.get("input"), str) or not isinstance(tc.get("output"), str):
            raise ValueError(f"test case {k} is not an object with string 'input' and 'output'")
        tt = tc.get("testtype", "stdin")
        if tt not in TESTTYPES:
            raise ValueError(f"test case {k} has unknown testtype {tt!r}")
        out.append({"input": tc["input"], "output": tc["output"], "testtype": tt})
    return out


_DIFF_MAP = {"easy": 1, "medium": 2, "hard": 3}


class CodeJsonlWorld:
    """LiveCodeBench code-generation records read as they are released.

    Fields used: question_id, question_title, question_content, starter_code,
    public_test_cases / private_test_cases (JSON strings; private ones may be
    base64+zlib+pickle compressed, decoded with a restricted unpickler), metadata (JSON string or
    dict; ``func_name`` for functional tests), difficulty (easy/medium/hard). Public tests are
    shown in the statement; private ones are hidden unless `reveal_hidden`.

    LiveCodeBench has no reference solutions, so ``Problem.reference`` is the public test cases
    with their expected outputs (what a privileged teacher can legitimately be shown).
    The train/val split is a hash of (seed, question_id): stable when records are added.
    """

    name = "code"

    def __init__(self, path: str, seed: int = 0, val_fraction: float = 0.2,
                 limits: SandboxLimits | None = None, reveal_hidden: bool = False,
                 max_problems: int | None = None, workers: int = 2) -> None:
        if not 0.0 <= float(val_fraction) <= 1.0:
            raise WorldError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
        if max_problems is not None and max_problems < 1:
            raise WorldError(f"max_problems must be >= 1, got {max_problems!r}")
        self.path, self.seed, self.val_fraction = str(path), seed, float(val_fraction)
        self.limits = limits or SandboxLimits(wall_s=30.0, cpu_s=30, memory_mb=1024)
        self.reveal_hidden = reveal_hidden
        self.workers = workers
        rows = read_jsonl(self.path)
        if not rows:
            raise WorldError(f"{self.path}: empty dataset")
        if max_problems is not None:
            rows = rows[:max_problems]
        splits: dict[str, list[Problem]] = {"train": [], "val": []}
        seen: dict[str, int] = {}
        for lineno, rec in rows:
            p = self._problem(rec, lineno)
            if p.id in seen:
                raise WorldError(f"{self.path}:{lineno}: duplicate question_id {p.id!r} (first on line {seen[p.id]})")
            seen[p.id] = lineno
            splits[self._split_of(p.id)].append(p)
        self._problems = splits

    def _split_of(self, qid: str) -> str:
        h = hashlib.sha256(f"{self.seed}:{qid}".encode()).digest()
        return "val" if int.from_bytes(h[:8], "big") / 2**64 < self.val_fraction else "train"

    def _problem(self, rec: dict[str, Any], lineno: int) -> Problem:
        where = f"{self.path}:{lineno}"
        for key in ("question_id", "question_content", "public_test_cases"):
            if key not in rec:
                raise WorldError(f"{where}: missing field {key!r}")
        qid = rec["question_id"]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
            raise WorldError(f"{where}: field 'question_id' must be a non-empty string")
        qid = str(qid)
        content = rec["question_content"]
        if not isinstance(content, str):
            raise WorldError(f"{where}: field 'question_content' must be a string")
        title = rec.get("question_title") or qid
        starter = rec.get("starter_code") or ""
        if not isinstance(starter, str) or not isinstance(title, str):
            raise WorldError(f"{where}: 'question_title' and 'starter_code' must be strings")
        tests: list[TestCase] = []
        for key, hidden in (("public_test_cases", False), ("private_test_cases", True)):
            try:
                decoded = decode_lcb_tests(rec.get(key))
            except ValueError as e:
                raise WorldError(f"{where}: bad {key}: {e}") from None
            tests += [TestCase(d["input"], d["output"], d["testtype"], hidden) for d in decoded]
        if not tests:
            raise WorldError(f"{where}: no test cases")
        meta = rec.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except json.JSONDecodeError as e:
                raise WorldError(f"{where}: field 'metadata' is not JSON: {e.msg}") from None
        if not isinstance(meta, dict):
            raise WorldError(f"{where}: field 'metadata' must be an object")
        func_name = meta.get("func_name")
        kinds = {t.testtype for t in tests}
        if "functional" in kinds:
            if not isinstance(func_name, str) or not func_name.isidentifier():
                raise WorldError(f"{where}: functional tests need metadata.func_name (a Python identifier)")
            for k, t in enumerate(tests):
                if t.testtype != "functional":
                    continue
                try:
                    parse_args(t.input)
                    json.loads(t.output)
                except (WorldError, json.JSONDecodeError) as e:
                    raise WorldError(f"{where}: functional test {k + 1}: {e}") from None
        diff = rec.get("difficulty", 1)
        difficulty = _DIFF_MAP.get(str(diff).lower(), diff if isinstance(diff, int) and not isinstance(diff, bool) else 1)
        public = [t for t in tests if not t.hidden]
        prompt = self._prompt(title, content, starter, "functional" in kinds, func_name)
        reference = "No reference solution is available (LiveCodeBench); the public test cases:\n" + (
            "\n".join(f"Input:\n{t.input.rstrip()}\nExpected output:\n{t.output.rstrip()}" for t in public)
            if public else "(none)")
        data = {
            "tests": [t.to_dict() for t in tests],
            "func_name": func_name,
            "starter_code": starter,
            "platform": rec.get("platform"),
            "contest_date": rec.get("contest_date"),
            "line": lineno,
        }
        return Problem(id=qid, prompt=prompt, reference=reference, difficulty=int(difficulty), data=data)

    @staticmethod
    def _prompt(title: str, content: str, starter: str, functional: bool, func_name: str | None) -> str:
        parts = [f"### {title}", "", content.strip(), ""]
        if functional or starter.strip():
            parts += [
                "### Format",
                "Complete the following starter code. Return the complete class/function"
                + (f" (with the method `{func_name}`)" if func_name else "")
                + " in a single ```python code block; do not read from stdin.",
                "```python",
                starter.rstrip(),
                "```",
            ]
        else:
            parts += [
                "### Format",
                "Write a complete Python program that reads the input from standard input and "
                "writes the answer to standard output. Return the program in a single ```python "
                "code block.",
            ]
        return "\n".join(parts)

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._problems[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        return judge_code(response, _tests_of(problem), func_name=problem.data.get("func_name"),
                          limits=self.limits, reveal_hidden=self.reveal_hidden)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        return _judge_many(self, problems, responses, self.workers)
