"""Code worlds: extract the program from a model response, run its tests in the sandbox, and turn
the outcome into judge-like feedback.

Two test types, as in LiveCodeBench (LCB):

* ``stdin``: the program reads ``input`` from stdin; its stdout is compared with ``output``;
* ``functional``: ``input`` is newline-separated JSON values, one per argument; the function
  ``func_name`` (a method of ``Solution`` when the code defines that class) is called and its
  result compared with the JSON-decoded ``output``.

Two gradings (``GRADINGS``; the table of what differs is docs/code-judge.md):

* ``lcb`` (the default of world=code): LiveCodeBench's own verdicts, reimplemented from its
  grader (``lcb_runner/evaluation/testing_util.py``, ``lcb_runner/utils/extraction_utils.py``;
  none of its code is used). The code is the text between the last two lines that contain
  ```````; stdout is compared line by line after ``strip()``, a line that differs must be equal as
  a list of exact decimals (``15.0`` == ``15``, ``0.3333`` != ``0.33333``); a returned value is
  compared with ``==`` after a top-level tuple becomes a list; LCB's prelude of pre-imported
  modules, its recursion limit (50 000) and int-to-str digit limit (50 000); 6 s per test; an
  exit status is ignored; grading stops at the first failing test, as LCB's does.
* ``lenient`` (the default of world=pyfunc, the judge this platform always had): the last
  ```python`` block (``~~~`` fences, unterminated or glued closing fences accepted); whitespace
  runs collapsed; numbers within 1e-6; tuples anywhere as lists; a smaller prelude; the time limit
  (``SandboxLimits.wall_s``) covers all tests of a response together. Friendlier to a small model,
  and not comparable with published LCB numbers.

Nothing of a hidden test reaches the model: the expected outputs never enter the sandbox (the
harness only runs the program and reports what it produced; the comparison happens here, in the
trusted process). When a problem has hidden tests whose content the feedback must not show, every
test runs in its own sandbox holding only that test's input; the feedback names, for those tests,
only how many passed and one fixed category (wrong answer, runtime error, time limit, memory
limit, output limit), never a text, a time or a test number the program could steer. Problems
whose tests are all public (pyfunc; ``reveal_hidden``) run all tests in one sandbox.
"""

from __future__ import annotations

import base64
import dataclasses
import decimal
import fractions
import hashlib
import io
import json
import math
import pickle
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from ..sandbox import SandboxLimits, run_python
from .base import GRADINGS, Judgement, Problem, WorldError, check_split
from .jsonl import read_jsonl

__all__ = [
    "GRADINGS",
    "LCB_TIMEOUT_S",
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
_FULL_CAP = 256 * 1024  # lenient: outputs larger than this are compared without the float tolerance

# LiveCodeBench's grading constants (lcb_runner: runner/parser.py --timeout, the import string
# and the limits of evaluation/testing_util.py and compute_code_generation_metrics.py).
LCB_TIMEOUT_S = 6.0  # per test (signal.alarm(6))
LCB_RECURSION_LIMIT = 50_000
LCB_INT_MAX_STR_DIGITS = 50_000
# `from X import *` for each, in this order, then `import X` for each but builtins and typing.
_LCB_STAR_IMPORTS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                     "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
_LCB_PRELUDE = (
    "".join(f"from {m} import *\n" for m in _LCB_STAR_IMPORTS)
    + "".join(f"import {m}\n" for m in _LCB_STAR_IMPORTS if m not in ("builtins", "typing"))
    + f"sys.setrecursionlimit({LCB_RECURSION_LIMIT})\n"
)
# The lenient judge's prelude (unchanged).
_LENIENT_PRELUDE = """import sys, os, math, re, string, heapq, bisect, itertools, functools, collections, random
from typing import *
from collections import defaultdict, deque, Counter, OrderedDict
from functools import lru_cache, reduce, cache, cmp_to_key
from itertools import accumulate, permutations, combinations, product, groupby
from heapq import heappush, heappop, heapify
from bisect import bisect_left, bisect_right, insort
from math import inf, gcd, sqrt, ceil, floor, comb, factorial, isqrt
"""


def _check_grading(grading: str) -> None:
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


# ------------------------------------------------------------------------------------------
# Code extraction

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n`]*$")
_PY_LANGS = {"python", "py", "python3", "py3"}


def extract_code(response: str, grading: str = "lenient") -> str | None:
    """The program in a model response, as `grading` finds it; None when there is none."""
    _check_grading(grading)
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


# ------------------------------------------------------------------------------------------
# The harness: runs inside the sandbox as main.py next to solution.py, tests.json and in/K.txt
# (the stdin of the tests this sandbox runs: all of them, or only one). Per test K it leaves
# out/K.txt (stdin tests: the program's stdout) or val/K.json (functional: the returned value) and
# one JSON line in results.jsonl. Everything there is the program's to overwrite: the judge reads
# it as the program's own output, and for a hidden test uses nothing of it but a fixed category.
_HARNESS_SRC = r'''
import builtins, io, json, os, signal, sys, threading, time, traceback
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

def _error(e):
    return {"status": "runtime_error", "error": _exc_line(e), "exc_type": type(e).__name__, "traceback": _tb_tail(e)}

def run_limited(fn, per_test, exit_ok):
    """exit_ok: which SystemExit counts as a normal end: "zero" (code None/0), "any", "none"."""
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
        if exit_ok == "none" or (exit_ok == "zero" and e.code not in (None, 0)):
            out = {"status": "runtime_error", "error": "SystemExit: %r" % (e.code,), "exc_type": "SystemExit", "traceback": ""}
    except OSError as e:
        if getattr(e, "errno", None) == 27:  # EFBIG: output file over RLIMIT_FSIZE
            out = {"status": "output_limit"}
        else:
            out = _error(e)
    except BaseException as e:
        out = _error(e)
    _armed[0] = False
    out["time"] = round(time.monotonic() - t0, 4)
    return out

def redirect(path, flags, target):
    # the program may have closed fd 0/1 (e.g. via open(0)), so the new fd can be the target
    fd = os.open(path, flags, 0o600)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)

def to_json_value(v):
    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError("not JSON serialisable: %s" % type(o).__name__)
    return json.dumps(v, allow_nan=True, default=default)

def to_typed(v):
    """Plain data, with the types == tells apart kept: tuple, dict (any keys), set, and the
    numbers int/float/bool/complex/Fraction/Decimal; anything else is only named ("other")."""
    import collections, decimal, fractions
    seen = set()
    def enc(v):
        t = type(v)
        if t is int and abs(v) >= 2 ** 63:  # hex: no int-to-str digit limit on either side
            return {"int": hex(v)}
        if v is None or t in (bool, int, float, str):
            return v
        if t.__module__ == "numpy" and getattr(v, "shape", None) == () and hasattr(v, "item"):
            return enc(v.item())
        for base in (int, float, str):
            if isinstance(v, base) and t.__eq__ is base.__eq__:
                return enc(base(v))
        if t is complex:
            return {"complex": [v.real, v.imag]}
        if t is fractions.Fraction:
            return {"fraction": [v.numerator, v.denominator]}
        if t is decimal.Decimal:
            return {"decimal": str(v)}
        if id(v) in seen:
            return {"other": "a value that contains itself"}
        if isinstance(v, (list, tuple)) and t.__eq__ in (list.__eq__, tuple.__eq__):
            seen.add(id(v))
            items = [enc(x) for x in v]
            seen.discard(id(v))
            return items if isinstance(v, list) else {"tuple": items}
        if isinstance(v, dict) and (t.__eq__ is dict.__eq__ or t in (collections.OrderedDict, collections.Counter)):
            seen.add(id(v))
            items = [[enc(k), enc(x)] for k, x in v.items()]
            seen.discard(id(v))
            return {"dict": items}
        if t in (set, frozenset):
            return {"set": [enc(x) for x in v], "frozen": t is frozenset}
        return {"other": t.__name__}
    return json.dumps(enc(v), allow_nan=True)

def main():
    with open("tests.json", encoding="utf-8") as f:
        cfg = json.load(f)
    per_test = float(cfg["per_test_s"])
    if cfg.get("int_max_str_digits"):
        sys.set_int_max_str_digits(int(cfg["int_max_str_digits"]))
    os.makedirs("out", exist_ok=True)
    os.makedirs("val", exist_ok=True)
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
        empty = cfg.get("require_statements") and not compile(src, "solution.py", "exec", 0x400).body  # PyCF_ONLY_AST
    except SyntaxError as e:
        kind = "" if type(e) is SyntaxError else type(e).__name__ + ": "
        emit({"compile_error": True, "error": kind + str(e.msg), "line": e.lineno,
              "offset": e.offset, "text": (e.text or "").rstrip("\n")[:300]})
        return
    except BaseException as e:
        emit({"compile_error": True, "error": _exc_line(e), "line": None, "offset": None, "text": ""})
        return
    if empty:
        emit({"compile_error": True, "error": "the code block holds no statement", "line": None, "offset": None, "text": ""})
        return
    prelude = cfg["prelude"]
    lcb = cfg["grading"] == "lcb"

    def fresh_namespace(name):
        ns = {"__name__": name, "__builtins__": builtins}
        exec(prelude, ns)
        return ns

    func_target = None
    load_error = None
    if any(t["type"] == "functional" for t in cfg["tests"]):
        name = cfg["func_name"]
        redirect(os.devnull, os.O_RDONLY, 0)
        redirect(os.devnull, os.O_WRONLY, 1)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        ns = fresh_namespace("solution")
        if lcb:  # LCB: Solution() once when the source says "class Solution", else a module attribute
            def load(deadline):
                exec(code, ns)
                if "class Solution" in src:
                    return getattr(ns["Solution"](), name)
                if name not in ns:
                    raise NameError("no function named %r is defined" % name)
                return ns[name]
            r = run_limited(load, per_test, "none")
            if r["status"] != "ok":
                load_error = r
            else:
                method = r["value"]
                func_target = lambda args: method(*args)
        else:
            def load(deadline):
                exec(code, ns)
            r = run_limited(load, per_test, "zero")
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

    for t in cfg["tests"]:
        i = t["i"]
        if t["type"] == "functional":
            if load_error is not None:
                r = dict(load_error, i=i, during_load=True)
                r.pop("value", None)
                emit(r)
                if cfg["stop_on_error"]:
                    break
                continue
            args = t["args"]
            redirect(os.devnull, os.O_RDONLY, 0)
            redirect(os.devnull, os.O_WRONLY, 1)
            def call(deadline):
                v = func_target(args)
                _join_threads(deadline)
                return v
            r = run_limited(call, per_test, "none")
            if r["status"] == "ok":
                value = r.pop("value", None)
                try:
                    text = to_typed(value) if lcb else to_json_value(value)
                except (TypeError, ValueError, RecursionError):
                    try:
                        r["repr"] = repr(value)[:1000]
                    except BaseException:
                        r["repr"] = "a value of type %s" % type(value).__name__
                else:
                    try:
                        with open("val/%d.json" % i, "w", encoding="utf-8") as f:
                            f.write(text)
                    except OSError:
                        r = {"status": "output_limit"}
            else:
                r.pop("value", None)
        else:
            redirect(os.path.join("in", "%d.txt" % i), os.O_RDONLY, 0)
            redirect("out/%d.txt" % i, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 1)
            stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="replace")
            stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="replace")
            sys.stdin, sys.stdout = stdin, stdout
            ns = fresh_namespace("__main__")
            def prog(deadline):
                exec(code, ns)
                _join_threads(deadline)
                stdout.flush()
            r = run_limited(prog, per_test, "any" if lcb else "zero")
            r.pop("value", None)
            try:
                stdout.flush()
            except BaseException:
                pass
            sys.stdout = sys.__stdout__
        r["i"] = i
        emit(r)
        if cfg["stop_on_error"] and r["status"] != "ok":
            break
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


def _lcb_line_matches(got: str, expected: str) -> bool:
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
    return len(exp_lines) == len(got_lines) and all(_lcb_line_matches(g, e) for g, e in zip(got_lines, exp_lines))


class _Opaque:
    """A returned value that is not plain data: equal to nothing (its own __eq__ never runs here)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _from_typed(v: Any) -> Any:
    """Inverse of the harness's to_typed, for plain data only; raises ValueError on a bad form."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_from_typed(x) for x in v]
    if isinstance(v, dict) and len(v) >= 1:
        if "int" in v:
            return int(str(v["int"]), 16)
        if "tuple" in v:
            return tuple(_from_typed(x) for x in v["tuple"])
        if "dict" in v:
            return {_from_typed(k): _from_typed(x) for k, x in v["dict"]}
        if "set" in v:
            items = [_from_typed(x) for x in v["set"]]
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
    _check_grading(grading)
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
            "prelude": _LCB_PRELUDE if self.lcb else _LENIENT_PRELUDE,
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
        elif len(got) > _FULL_CAP:  # as the lenient judge always did: no float tolerance for huge outputs
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
            value = _from_typed(value)
    except (ValueError, TypeError, KeyError, RecursionError):
        return _Verdict("wrong_answer", {"got": text[:1000]})
    if grading == "lcb":
        try:
            shown = repr(value)
        except RecursionError:
            shown = text[:1000]
        return _Verdict("passed" if lcb_values_match(expected, value) else "wrong_answer", {"got": shown})
    if len(text) > _FULL_CAP:  # as the lenient judge always did: exact canonical JSON for huge values
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
        exp_lines, got_lines, same = lcb_lines(t.output), lcb_lines(got), lambda e, g: _lcb_line_matches(g, e)
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

    Graded `lenient` by default (floats within 1e-6, tuples as lists: the expected values are
    what the reference returns, JSON-encoded); `grading="lcb"` applies LiveCodeBench's rules.
    All tests are public: one sandbox runs them all.
    """

    name = "pyfunc"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32,
                 limits: SandboxLimits | None = None, workers: int = 2, grading: str = "lenient") -> None:
        from .pyfunc_bank import DIFFICULTIES, generate_problems

        _check_grading(grading)

        if difficulty not in DIFFICULTIES:
            raise WorldError(f"pyfunc difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        for label, v in (("n_train", n_train), ("n_val", n_val)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WorldError(f"pyfunc {label} must be an int >= 0, got {v!r}")
        self.seed, self.difficulty, self.n_train, self.n_val = seed, difficulty, n_train, n_val
        self.limits = limits or SandboxLimits(wall_s=10.0, cpu_s=10)
        self.workers = workers
        self.grading = grading
        self._problems = generate_problems(seed, difficulty, n_train, n_val)

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._problems[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        return judge_code(response, _tests_of(problem), func_name=problem.data.get("func_name"),
                          limits=self.limits, reveal_hidden=True, grading=self.grading)

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

    `grading="lcb"` (default): LiveCodeBench's verdicts, 6 s per test (`per_test_s`), `limits`
    for memory and output only. `grading="lenient"`: the friendlier judge; `limits.wall_s` bounds
    all tests of a response together.
    """

    name = "code"

    def __init__(self, path: str, seed: int = 0, val_fraction: float = 0.2,
                 limits: SandboxLimits | None = None, reveal_hidden: bool = False,
                 max_problems: int | None = None, workers: int = 2, grading: str = "lcb",
                 per_test_s: float | None = None) -> None:
        _check_grading(grading)
        if not 0.0 <= float(val_fraction) <= 1.0:
            raise WorldError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
        if max_problems is not None and max_problems < 1:
            raise WorldError(f"max_problems must be >= 1, got {max_problems!r}")
        self.path, self.seed, self.val_fraction = str(path), seed, float(val_fraction)
        self.limits = limits or SandboxLimits(wall_s=30.0, cpu_s=30, memory_mb=1024)
        self.reveal_hidden = reveal_hidden
        self.workers = workers
        self.grading, self.per_test_s = grading, per_test_s
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
                          limits=self.limits, reveal_hidden=self.reveal_hidden, grading=self.grading,
                          per_test_s=self.per_test_s)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        return _judge_many(self, problems, responses, self.workers)
