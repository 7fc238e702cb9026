"""The code judge's harness, a program: judge.py reads this file as text and hands it to the sandbox.

It runs inside the sandbox as main.py next to solution.py, tests.json and in/K.txt
(the stdin of the tests this sandbox runs: all of them, or only one). Per test K it leaves
out/K.txt (stdin tests: the program's stdout) or val/K.json (functional: the returned value) and
one JSON line in results.jsonl. Everything there is the program's to overwrite: the judge reads
it as the program's own output, and for a hidden test uses nothing of it but a fixed category.
"""

if __name__ != "__main__":  # a program, read as text and run in the sandbox as main.py; never imported
    raise ImportError(__name__ + " is the code judge's harness: it runs in the sandbox, do not import it")
import builtins
import io
import json
import os
import signal
import sys
import threading
import time
import traceback

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
    import collections
    import decimal
    import fractions
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
