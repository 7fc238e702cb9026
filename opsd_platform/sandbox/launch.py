"""Running one program in one mode: the work dir, the argv (``unshare`` + the INIT program of
init_program.py), rlimits, the control and status pipes, output capture with its caps, the files
collected back, and the kill of everything left.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from opsd_platform.sandbox.limits import (
    MAX_COLLECT_BYTES,
    OPEN_FILES_LIMIT,
    SANDBOX_PATH,
    UID_BASE,
    UID_SPAN,
    Mode,
    SandboxError,
    SandboxLimits,
    SandboxResult,
)

INIT_SRC = (Path(__file__).with_name("init_program.py")).read_text(encoding="utf-8")

KILL_UID_SRC = (Path(__file__).with_name("kill_uid_program.py")).read_text(encoding="utf-8")

NAMESPACES = ("--net", "--pid", "--ipc", "--mount", "--fork", "--kill-child", "--mount-proc")
# What the private root shows of the host (read-only), besides the interpreter's own prefix.
ROOT_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev", "/proc", "/sys")
GRACE_S = 2.0  # how long INIT may take to kill the program and copy files out when told to stop



def safe_relpath(name: str) -> str:
    norm = os.path.normpath(name)
    if not name or os.path.isabs(name) or norm.startswith("..") or norm in (".", ""):
        raise ValueError(f"sandbox file name must be a relative path inside the work dir: {name!r}")
    return norm


def _interpreter_dirs() -> set[str]:
    """What the resolved interpreter needs. Not a venv's own prefix: the program runs the
    resolved interpreter, which does not know about the venv (and a venv may sit in a checkout)."""
    return {
        os.path.dirname(os.path.realpath(sys.executable)),
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.base_exec_prefix),
    }


@functools.lru_cache(maxsize=1)
def _root_binds() -> tuple[str, ...]:
    """The host paths bound (read-only, in the end) into the private root: the system dirs that
    exist, plus the interpreter's dirs that are not already under one of them. Paths under /tmp
    are left out (the work dir takes /tmp; a venv there is not needed: we run the resolved
    interpreter, whose prefix is elsewhere)."""
    base = [p for p in ROOT_DIRS if os.path.lexists(p)]
    real = [p for p in base if not os.path.islink(p)]
    extra = set()
    for path in _interpreter_dirs():
        if path in ("/", "/tmp") or path.startswith("/tmp/"):
            continue
        if any(path == d or path.startswith(d + "/") for d in real):
            continue
        extra.add(path)
    keep = sorted(p for p in extra if not any(p != q and p.startswith(q + "/") for q in extra))
    return tuple(base + keep)


def _count_own_tasks(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
        except (KeyError, ValueError, IndexError):
            continue
    return n


def _rlimits(limits: SandboxLimits, mode: Mode) -> list[tuple[str, int, int]]:
    import resource

    mb = 1024 * 1024
    nproc = limits.max_processes
    if not mode.drop_uid and os.geteuid() != 0:
        # Shared uid: the count includes the caller's own tasks; allow that many more.
        nproc = _count_own_tasks(os.getuid()) + limits.max_processes
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        if hard != resource.RLIM_INFINITY:
            nproc = min(nproc, hard)
    nofile = OPEN_FILES_LIMIT
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile_hard != resource.RLIM_INFINITY:
        nofile = min(nofile, nofile_hard)
    return [
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
        ("RLIMIT_FSIZE", limits.file_size_mb * mb, limits.file_size_mb * mb),
        ("RLIMIT_NPROC", nproc, nproc),
        ("RLIMIT_NOFILE", nofile, nofile),
        ("RLIMIT_CORE", 0, 0),
    ]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _open_beneath(base: str, rel: str) -> int:
    """Open base/rel for reading without following a symlink anywhere below base."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _read_collected(base: str, names: Sequence[tuple[str, str]]) -> dict[str, bytes]:
    """names: (name to report, path relative to base)."""
    out: dict[str, bytes] = {}
    for name, rel in names:
        try:
            fd = _open_beneath(base, rel)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                continue
            chunks, size = [], 0
            while size < MAX_COLLECT_BYTES:
                chunk = os.read(fd, min(1 << 20, MAX_COLLECT_BYTES - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            out[name] = b"".join(chunks)
        except OSError:
            continue
        finally:
            os.close(fd)
    return out


def _rmtree(path: str) -> None:
    def onerror(func, p, exc):  # the program may have chmod'ed things (non-root modes)
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def run_in_mode(
    mode: Mode,
    code: str,
    stdin: str,
    limits: SandboxLimits,
    files: dict[str, str] | None,
    collect: tuple[str, ...],
) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="opsd-sbx-")
    try:
        os.chmod(root, 0o711)
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        uid = UID_BASE + secrets.randbelow(UID_SPAN) if mode.drop_uid else None
        to_write = {"main.py": code}
        for name, text in (files or {}).items():
            to_write[safe_relpath(name)] = text
        staged = 0
        for name, text in to_write.items():
            path = os.path.join(work, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            staged += os.path.getsize(path) + 4096
        if uid is not None and not mode.mount:  # private root: INIT copies them into the tmpfs
            for dirpath, dirnames, filenames in os.walk(work):
                os.chown(dirpath, uid, uid)
                for n in filenames:
                    os.chown(os.path.join(dirpath, n), uid, uid)
        stdin_path = os.path.join(root, "stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        out_dir = os.path.join(root, "out")
        newroot = os.path.join(root, "newroot")
        if mode.mount:
            os.mkdir(out_dir, 0o700)
            os.mkdir(newroot, 0o755)
        inner_work = "/tmp" if mode.mount else work
        env = {
            "PATH": SANDBOX_PATH,
            "HOME": inner_work,
            "TMPDIR": inner_work,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONFAULTHANDLER": "1",  # a segfault prints the Python traceback to stderr
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        mb = 1024 * 1024
        cfg = {
            "status_fd": -1,  # filled in by _execute
            "ctl_fd": -1,  # filled in by _execute
            "work": work,
            "out": out_dir,
            "newroot": newroot,
            "mount": mode.mount,
            "binds": list(_root_binds()) if mode.mount else [],
            "tmp_bytes": limits.disk_mb * mb + staged + 64 * 1024,
            "tmp_inodes": 10_000 + 2 * len(to_write),
            "collect": [safe_relpath(n) for n in collect] if mode.mount else [],
            "max_collect": MAX_COLLECT_BYTES,
            "mem_cap": limits.memory_mb * mb,
            "seccomp": mode.seccomp,
            "uid": uid,
            "rlimits": _rlimits(limits, mode),
            # The resolved interpreter, not a venv's symlink to it: the venv may live under /tmp,
            # which the work dir is mounted over (a checkout in /tmp, as CI's may be).
            "argv": [os.path.realpath(sys.executable), "-s", "-P", "-B", "main.py"],
            "env": env,
        }
        prefix = [shutil.which("unshare", path=SANDBOX_PATH) or "unshare", *mode.unshare, "--"] if mode.unshare else []
        result = _execute(prefix, cfg, mode, uid, root, stdin_path, limits)
        if collect:
            if mode.mount:  # INIT copied them out of the private tmpfs, as out/<index>
                names = [(name, str(i)) for i, name in enumerate(collect)]
                files_out = _read_collected(out_dir, names)
            else:
                files_out = _read_collected(work, [(name, safe_relpath(name)) for name in collect])
            result = dataclasses.replace(result, files=files_out)
        return result
    finally:
        _rmtree(root)


def _signal_note(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    desc = signal.strsignal(sig) or name
    return f"[sandbox] the program was killed by signal {sig} ({name}: {desc})"


def _execute(
    prefix: list[str],
    cfg: dict,
    mode: Mode,
    uid: int | None,
    root: str,
    stdin_path: str,
    limits: SandboxLimits,
) -> SandboxResult:
    status_r, status_w = os.pipe()
    ctl_r, ctl_w = os.pipe()  # we never write: closing ctl_w (or dying) tells INIT to stop
    cfg = dict(cfg, status_fd=status_w, ctl_fd=ctl_r)
    argv = [*prefix, sys.executable, "-I", "-S", "-c", INIT_SRC, json.dumps(cfg)]
    start = time.monotonic()
    deadline = start + limits.wall_s
    with open(stdin_path, "rb") as stdin_f:
        try:
            proc = subprocess.Popen(
                argv,
                pass_fds=(status_w, ctl_r),
                stdin=stdin_f,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
                cwd=root,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            os.close(status_r)
            os.close(ctl_w)
            raise SandboxError(f"cannot launch the sandbox: {e}") from e
        finally:
            os.close(status_w)
            os.close(ctl_r)
    cap = limits.max_output_bytes
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = flooded = timed_out = False
    sel = selectors.DefaultSelector()
    try:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        exited_at: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # the launcher is gone but something still holds the pipes (no PID ns)
            for key, _ in sel.select(min(deadline - now, 0.25)):
                fd = key.fd
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                room = cap - len(buf)
                if len(data) > room:
                    buf += data[:room]
                    truncated = flooded = True
                else:
                    buf += data
            if flooded:
                break
        if not (flooded or timed_out):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
        killed_by_us = flooded or timed_out or proc.poll() is None
        # With a PID namespace INIT kills everything and copies the collected files out when
        # told to stop; it gets GRACE_S for that before the hard kill.
        os.close(ctl_w)
        if killed_by_us:
            if mode.pid_ns:
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                _kill(proc)
        proc.wait()
        if not mode.pid_ns and not killed_by_us:
            try:  # best effort without a PID namespace: whatever stayed in the process group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if mode.drop_uid and not mode.pid_ns and uid is not None:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", KILL_UID_SRC, str(uid)],
                env={"PATH": SANDBOX_PATH}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, check=False, timeout=30,
            )
        proc.stdout.close()
        proc.stderr.close()
        st = _read_status(status_r)
    wall = time.monotonic() - start
    stdout = bufs[out_fd].decode("utf-8", errors="replace")
    stderr = bufs[err_fd].decode("utf-8", errors="replace")
    if st.get("setup_error"):
        raise SandboxError(f"sandbox setup failed ({mode.name}): {st['setup_error']}")
    if st.get("exec_error"):
        raise SandboxError(f"sandbox could not start python ({mode.name}): {st['exec_error']}")
    note = ""
    returncode: int | None
    if flooded:
        status, returncode = "output_limit", None
    elif timed_out:
        status, returncode = "timeout", None
    elif st.get("memory_exceeded"):
        status, returncode = "memory", None
        note = (f"[sandbox] killed: the program's processes together used more than "
                f"{limits.memory_mb} MB of memory")
    elif "signal" in st:
        sig = int(st["signal"])
        returncode = -sig
        cpu = float(st.get("cpu_s", 0.0))
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_s):
            status = "timeout"
        else:
            status = "killed"
        note = _signal_note(sig)
    elif "exit" in st:
        returncode = int(st["exit"])
        status = "ok" if returncode == 0 else "error"
    else:  # no status: the launcher died before INIT wrote it
        rc = proc.returncode
        returncode = rc
        status = "killed" if rc is None or rc < 0 else ("ok" if rc == 0 else "error")
    if note:
        stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + note + "\n"
    if status == "error" and _is_memory_error(stderr):
        status = "memory"
    return SandboxResult(status, returncode, stdout, stderr, wall, truncated)


def _read_status(fd: int) -> dict:
    """INIT's report; everything holding the write end is dead by now, so this never blocks."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 65536:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    out: dict = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.update(obj)
    return out


def _is_memory_error(stderr: str) -> bool:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return bool(lines) and lines[-1].strip().startswith("MemoryError")


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox: INIT first (its death tears down the whole PID namespace, and the
    launcher's wait() returns only after that), then the whole process group."""
    for child in _children(proc.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
