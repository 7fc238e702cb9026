"""Which isolation mode this machine supports (each candidate probed once with a trivial program,
the strongest that works kept), ``isolation()`` to report it, and ``run_python``, the entry point.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Sequence

from opsd_platform.sandbox.launch import NAMESPACES, run_in_mode, safe_relpath
from opsd_platform.sandbox.limits import SANDBOX_PATH, UID_BASE, Mode, SandboxError, SandboxLimits, SandboxResult


def _seccomp_supported() -> bool:
    """The filter is written for the x86_64 syscall ABI (a 64-bit interpreter on x86_64)."""
    return os.uname().machine == "x86_64" and sys.maxsize > 2**32


def _candidate_modes() -> list[Mode]:
    if os.geteuid() == 0:
        base = [
            Mode("root-ns-ro", NAMESPACES, True, True),
            Mode("root-ns", NAMESPACES, False, True),
            Mode("root-uid", (), False, True),
            Mode("root-rlimits", (), False, False),
        ]
    else:
        user = ("--user", "--map-root-user")
        base = [
            Mode("userns-ro", user + NAMESPACES, True, False),
            Mode("userns", user + NAMESPACES, False, False),
            Mode("rlimits", (), False, False),
        ]
    out = []
    for mode in base:
        if _seccomp_supported():
            out.append(Mode(mode.name + "+seccomp", mode.unshare, mode.mount, mode.drop_uid, True))
        out.append(mode)
    return out


_mode_lock = threading.Lock()
_mode: Mode | None = None
_mode_notes: list[str] = []


def _get_mode() -> Mode:
    global _mode
    with _mode_lock:
        if _mode is None:
            unshare = shutil.which("unshare", path=SANDBOX_PATH)
            for mode in _candidate_modes():
                if mode.unshare and unshare is None:
                    _mode_notes.append(f"{mode.name}: no unshare binary")
                    continue
                try:
                    res = run_in_mode(mode, "import os\nprint(os.getuid())", "", SandboxLimits(wall_s=20.0), None, ())
                except SandboxError as e:
                    _mode_notes.append(f"{mode.name}: {e}")
                    continue
                if res.status == "ok" and res.stdout.strip().isdigit():
                    uid = int(res.stdout.strip())
                    if not mode.drop_uid or uid >= UID_BASE:
                        _mode = mode
                        break
                _mode_notes.append(f"{mode.name}: probe gave {res.status}: {res.stderr.strip()[-300:]}")
            else:  # pragma: no cover - even plain rlimits failed
                hint = ""
                if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
                    hint = ("; in a container, run it with --security-opt seccomp=unconfined --security-opt "
                            "systempaths=unconfined (the default profile blocks user namespaces and a fresh /proc)")
                raise SandboxError("no sandbox mode works on this machine: " + "; ".join(_mode_notes) + hint)
        return _mode


def isolation() -> dict[str, bool]:
    """What is in force on this machine (probes once, then cached)."""
    mode = _get_mode()
    return {
        "unprivileged_uid": mode.drop_uid,
        "net_namespace": "--net" in mode.unshare,
        "pid_namespace": mode.pid_ns,
        "ipc_namespace": "--ipc" in mode.unshare,  # SysV IPC / POSIX queues die with the sandbox
        # A private uid makes RLIMIT_NPROC count only the sandbox's own processes. Without root
        # the limit is set relative to the caller's own task count (shared uid: approximate).
        "nproc_limit_effective": mode.drop_uid or os.geteuid() != 0,
        "readonly_filesystem": mode.mount,  # everything but the work dir is read-only
        # Private root: only system dirs + the interpreter are visible (no home, repo, data).
        "private_root": mode.mount,
        "disk_limit": mode.mount,  # the work dir is a tmpfs of disk_mb (+ the staged files)
        # memory_mb also caps the resident memory of all the program's processes together
        "total_memory_limit": mode.pid_ns,
        "syscall_filter": mode.seccomp,  # seccomp: unix sockets, namespaces, SysV IPC, memfd, ...
    }


def run_python(
    code: str,
    *,
    stdin: str = "",
    limits: SandboxLimits = SandboxLimits(),
    files: dict[str, str] | None = None,
    collect: Sequence[str] = (),
) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandbox; never raises for anything the program
    does (only SandboxError for a broken sandbox, ValueError for bad arguments).

    `files`: extra text files (relative paths) written into the work dir before the run.
    `collect`: names of regular files in the work dir to read back after the run (into
    ``SandboxResult.files``; symlinks, hard links and special files are ignored, and so is any
    name reached through a symlinked directory).
    """
    if not isinstance(limits, SandboxLimits):
        raise TypeError("limits must be a SandboxLimits")
    collect = tuple(collect)
    for name in collect:
        safe_relpath(name)
    return run_in_mode(_get_mode(), code, stdin, limits, files, collect)


