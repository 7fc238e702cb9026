"""Run untrusted, model-generated Python in a throw-away sandbox.

Every run gets a fresh work directory (gone afterwards), a clean environment (only PATH, HOME,
LANG, TMPDIR, PYTHON* knobs: nothing of the parent, so no secrets), its own session and process
group, resource limits (wall clock, CPU, address space, file size, processes, open files, no core
dumps) and bounded output capture. How much more isolation is possible depends on the machine;
:func:`isolation` reports what is actually in force (docs/sandbox.md has the whole picture). The
strongest mode, used when we are root and util-linux ``unshare`` works (as here and in CI)::

    unshare --net --pid --ipc --mount --fork --kill-child --mount-proc -- python -I -S -c INIT
        INIT (root, PID 1 of the new PID namespace):
          - builds a private root on a tmpfs: /usr, /bin, /lib*, /etc, /dev, /proc, /sys and the
            interpreter's prefix bound from the host, nothing else (no /home, /root, checkout,
            data sets, /run sockets); /tmp = the work dir, a tmpfs of disk_mb + the staged files
            (copied in by INIT); /dev/shm an empty read-only tmpfs; everything read-only but /tmp;
          - forks the program: rlimits, no capabilities (empty bounding set, SECBIT_NOROOT), no
            supplementary groups, a fresh unprivileged uid/gid (random, >= 2_000_000, so
            concurrent sandboxes never share an RLIMIT_NPROC count), no_new_privs, a seccomp
            filter (x86_64: no unix/netlink/vsock sockets, namespaces, SysV IPC, memfd, mount
            API, keyrings, bpf, io_uring...), exec python;
          - watches: the program's exit (pidfd), the parent's "stop" (EOF on a control pipe: on
            timeout, output flood, or the parent's death) and the total memory (PSS) of all the
            program's processes, capped at memory_mb;
          - then kills every other process of the namespace, reaps them, copies the files to
            collect out of the private /tmp, and reports exit status + CPU time on a pipe the
            program never gets.

No network (empty net namespace: even 127.0.0.1 is unreachable; no host unix sockets either), a
fork bomb is capped by RLIMIT_NPROC of its private uid, SysV IPC objects die with the IPC
namespace, and when INIT exits (or is killed) the kernel kills every process left in the PID
namespace, double-forked or setsid'ed ones included.

Not root (e.g. a non-root Docker user): the same with ``unshare --user --map-root-user`` if the
kernel allows unprivileged user namespaces (no uid drop possible then, the program is uid 0 of the
user namespace but without any capability; RLIMIT_NPROC is set relative to the caller's own task
count), else rlimits only. Each candidate mode (with the seccomp filter, then without) is probed
once with a trivial program and the strongest one that works is used.

The interpreter is the resolved ``sys.executable`` (a venv's symlink may live under /tmp, which the
work dir hides) run as ``python -s -P -B``: that is ``-I`` (= ``-E -s -P``) minus ``-E``, because
the environment is entirely ours anyway and ``-E`` would make the requested ``PYTHONHASHSEED=0``
(deterministic set/dict-of-str order, hence reproducible rewards) ineffective.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["SandboxLimits", "SandboxResult", "SandboxError", "run_python", "isolation"]

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
OPEN_FILES_LIMIT = 256
UID_BASE = 2_000_000
UID_SPAN = 1_000_000_000  # uids in [2e6, 1.002e9): no real user, collisions between runs negligible
_MAX_COLLECT_BYTES = 64 * 1024 * 1024
_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(RuntimeError):
    """The sandbox itself failed (setup, launch): an infrastructure error, not the program's."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # wall-clock timeout for the whole run
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 8  # RLIMIT_FSIZE
    max_processes: int = 32  # RLIMIT_NPROC (meaningful only for a non-root uid!)
    max_output_bytes: int = 64_000  # stdout/stderr each truncated beyond this; flooding kills
    disk_mb: int = 64  # the work dir's size on top of the staged files (private-root mode only)

    def __post_init__(self) -> None:
        def check_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SandboxLimits.{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"SandboxLimits.{name} must be >= {minimum}, got {value}")

        w = self.wall_s
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"SandboxLimits.wall_s must be a finite number > 0, got {w!r}")
        check_int("cpu_s", 1)
        check_int("memory_mb", 64)
        check_int("file_size_mb", 1)
        check_int("max_processes", 1)
        check_int("max_output_bytes", 1)
        check_int("disk_mb", 1)


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    returncode: int | None  # exit code, -signal if killed by a signal, None if we killed it
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool  # stdout or stderr was cut at max_output_bytes
    files: dict[str, bytes] = field(default_factory=dict)  # files named in `collect`, if present

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------
# INIT: runs as `python -I -S -c _INIT_SRC CONFIG_JSON`, inside the namespaces when there are any.
# It is trusted code; it never runs anything of the user before the fork + privilege drop.
_INIT_SRC = r"""
import ctypes, json, os, resource, select, signal, stat, struct, sys
cfg = json.loads(sys.argv[1])
st = cfg["status_fd"]  # a pipe to the parent: the program never gets it (close-on-exec)
ctl = cfg["ctl_fd"]  # EOF on this pipe = stop now (the parent timed out, was flooded, or died)
os.set_inheritable(st, False)
os.set_inheritable(ctl, False)
def report(obj):
    os.write(st, (json.dumps(obj) + "\n").encode())
def fail(msg):
    report({"setup_error": msg})
    os._exit(125)
libc = ctypes.CDLL(None, use_errno=True)
UL = ctypes.c_ulong
libc.prctl(4, UL(0), UL(0), UL(0), UL(0))  # PR_SET_DUMPABLE 0: no /proc/1/{environ,fd,mem}
def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        fail(what + ": " + os.strerror(e))
class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
def setattr_ro(path, ro, recursive):
    a = MountAttr(1 if ro else 0, 0 if ro else 1, 0, 0)
    rc = libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0,
                      ctypes.byref(a), ctypes.c_size_t(ctypes.sizeof(a)))
    check(rc, "mount_setattr " + path)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 4096, 8192, 16384
def mount(src, dst, fstype, flags, data, what):
    enc = lambda x: None if x is None else x.encode()
    check(libc.mount(enc(src), enc(dst), enc(fstype), UL(flags), enc(data)), what)
def open_beneath(base, rel):  # no symlink anywhere on the way: the tree is the program's
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
uid = cfg["uid"]
pid1 = os.getpid() == 1  # PID 1 of our own PID namespace: kill(-1) then means "the sandbox"
cwd = cfg["work"]
if cfg["mount"]:
    if not pid1:
        fail("a private root needs a PID namespace")
    try:
        out_fd = os.open(cfg["out"], os.O_RDONLY | os.O_DIRECTORY)  # host dir: collected files
        work_fd = os.open(cfg["work"], os.O_RDONLY | os.O_DIRECTORY)  # host dir: staged files
        new = cfg["newroot"]
        # A fresh root: only the system dirs and the interpreter's prefix, bound from the host
        # (no /home, /root, /work, /var, /run, ...: no data sets, checkouts, sockets, secrets).
        mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m", "tmpfs root")
        for path in cfg["binds"]:
            target = new + path
            if os.path.islink(path):  # /bin -> usr/bin and the like
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                os.symlink(os.readlink(path), target)
            elif os.path.isdir(path):
                os.makedirs(target, 0o755, exist_ok=True)
                mount(path, target, None, MS_BIND | MS_REC, None, "bind " + path)
        tmp = new + "/tmp"
        os.makedirs(tmp, 0o755, exist_ok=True)
        opts = "mode=0700,size=%d,nr_inodes=%d" % (cfg["tmp_bytes"], cfg["tmp_inodes"])
        if uid is not None:
            opts += ",uid=%d,gid=%d" % (uid, uid)
        mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, opts, "tmpfs /tmp")  # the work dir: size-capped
        if os.path.isdir(new + "/dev/shm"):  # the host's /dev/shm: neither readable nor writable
            mount("tmpfs", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=0755,size=4k",
                  "tmpfs /dev/shm")
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=work_fd):
            dst = os.path.normpath(os.path.join(tmp, dirpath))
            if dirpath != ".":
                os.mkdir(dst, 0o755)
                if uid is not None:
                    os.chown(dst, uid, uid)
            for name in filenames:
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                dfile = os.open(os.path.join(dst, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                while True:
                    chunk = os.read(src, 1 << 20)
                    if not chunk:
                        break
                    write_all(dfile, chunk)
                if uid is not None:
                    os.fchown(dfile, uid, uid)
                os.close(src)
                os.close(dfile)
        os.close(work_fd)
        os.chdir(new)
        mount(new, "/", None, MS_MOVE, None, "move root")
        check(libc.chroot(b"."), "chroot")
        os.chdir("/")
    except OSError as e:
        fail("private root: " + repr(e))
    setattr_ro("/", True, True)
    setattr_ro("/tmp", False, False)
    cwd = "/tmp"
def seccomp():
    # x86_64 only. Denied: sockets other than AF_INET/AF_INET6 (host unix sockets, vsock,
    # netlink, ...), new namespaces (unprivileged user namespaces), SysV IPC (escapes RLIMIT_AS),
    # memfd (memory outside RLIMIT_AS), keyrings, bpf, perf, userfaultfd, io_uring, the mount
    # API and chroot; clone3 says ENOSYS (its flags cannot be inspected), glibc falls back.
    ins = []
    def op(code, jt, jf, k):
        ins.append(struct.pack("=HBBI", code, jt, jf, k))
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    EPERM, EACCES, ENOSYS = 1, 13, 38
    op(LD, 0, 0, 4)  # arch
    op(JEQ, 1, 0, 0xC000003E)
    op(RET, 0, 0, KILL)  # i386 entry points (int 0x80) and the like
    op(LD, 0, 0, 0)  # syscall number
    op(JGE, 0, 1, 0x40000000)
    op(RET, 0, 0, ERRNO | ENOSYS)  # the x32 ABI
    for nr in (272, 308, 29, 68, 64, 250, 248, 249, 321, 298, 323, 425, 319, 447,
               165, 166, 155, 161, 428, 429, 430, 431, 432, 433, 442):  # + mount API, chroot
        op(JEQ, 0, 1, nr)
        op(RET, 0, 0, ERRNO | EPERM)
    op(JEQ, 0, 1, 435)  # clone3
    op(RET, 0, 0, ERRNO | ENOSYS)
    op(JEQ, 0, 4, 56)  # clone: no CLONE_NEW* flags
    op(LD, 0, 0, 16)
    op(JSET, 0, 1, 0x7E020000)
    op(RET, 0, 0, ERRNO | EPERM)
    op(RET, 0, 0, ALLOW)
    op(JEQ, 0, 5, 41)  # socket: AF_INET, AF_INET6 only (useless anyway in the empty net namespace)
    op(LD, 0, 0, 16)
    op(JEQ, 2, 0, 2)
    op(JEQ, 1, 0, 10)
    op(RET, 0, 0, ERRNO | EACCES)
    op(RET, 0, 0, ALLOW)
    op(RET, 0, 0, ALLOW)
    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(b"".join(ins))
    prog = FProg(len(ins), ctypes.addressof(buf))
    if libc.prctl(22, UL(2), ctypes.byref(prog), UL(0), UL(0)) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
pid = os.fork()
if pid == 0:
    try:
        os.chdir(cwd)
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        # No capabilities after exec, even as uid 0 of a user namespace (the non-root modes):
        # SECBIT_NOROOT(+LOCKED), an empty bounding set, no ambient capabilities.
        if libc.prctl(28, UL(0x3), UL(0), UL(0), UL(0)) != 0:  # PR_SET_SECUREBITS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS)")
        cap = 0
        while libc.prctl(24, UL(cap), UL(0), UL(0), UL(0)) == 0:  # PR_CAPBSET_DROP until EINVAL
            cap += 1
        if cap == 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        libc.prctl(47, UL(4), UL(0), UL(0), UL(0))  # PR_CAP_AMBIENT_CLEAR_ALL
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if libc.prctl(38, UL(1), UL(0), UL(0), UL(0)) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay powerless
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if cfg["seccomp"]:
            seccomp()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        report({"exec_error": repr(e)})  # the status pipe is closed only by a successful exec
    os._exit(126)
def resident_total():  # proportional set size of every process of the sandbox but INIT
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open("/proc/" + entry + "/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total
try:
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    pidfd = None
watch = [ctl] if pidfd is None else [ctl, pidfd]
tick = 0.05 if pidfd is not None else 0.01
mem_cap = cfg["mem_cap"] if pid1 else 0
status = ru = None
why = None
while True:
    ready = select.select(watch, [], [], tick)[0]
    while True:
        try:
            p, s, r = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            p = 0
        if p == 0:
            break
        if p == pid:
            status, ru = s, r
    if status is not None:
        break
    if ctl in ready:
        why = "stopped"
        break
    if mem_cap:
        used = resident_total()
        if used > mem_cap:
            why = "memory"
            break
# Nothing of the program survives it: kill the rest (double-forked, setsid'ed, ...) and reap.
if pid1:
    try:
        os.kill(-1, signal.SIGKILL)  # from PID 1: every other process of this PID namespace
    except ProcessLookupError:
        pass
    while True:
        try:
            p, s, r = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if p == pid:
            status, ru = s, r
elif status is None:
    os.kill(pid, signal.SIGKILL)
    while status is None:
        p, s, r = os.wait4(pid, 0)
        status, ru = s, r
if cfg["mount"]:  # copy the files to collect out of the private /tmp, safely: the program is gone
    for i, rel in enumerate(cfg["collect"]):
        try:
            fd = open_beneath("/tmp", rel)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                continue
            data = os.read(fd, cfg["max_collect"])
            while len(data) < cfg["max_collect"]:
                chunk = os.read(fd, cfg["max_collect"] - len(data))
                if not chunk:
                    break
                data += chunk
            ofd = os.open(str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=out_fd)
            write_all(ofd, data)
            os.close(ofd)
        except OSError:
            pass
        finally:
            os.close(fd)
out = {"cpu_s": ru.ru_utime + ru.ru_stime}
if why == "stopped":
    out["stopped"] = True
elif why == "memory":
    out["memory_exceeded"] = used
if os.WIFSIGNALED(status):
    out["signal"] = os.WTERMSIG(status)
    code = 128 + out["signal"]
else:
    out["exit"] = code = os.WEXITSTATUS(status)
report(out)
os._exit(code)
"""

# Kills every process of one uid: kill(-1) as that uid signals exactly its own processes.
_KILL_UID_SRC = (
    "import os,signal,sys\nu=int(sys.argv[1])\nos.setgroups([])\nos.setresgid(u,u,u)\n"
    "os.setresuid(u,u,u)\ntry:\n os.kill(-1,signal.SIGKILL)\nexcept ProcessLookupError:\n pass\n"
)


@dataclass(frozen=True)
class _Mode:
    name: str
    unshare: tuple[str, ...]  # unshare flags, () = no namespaces
    mount: bool  # private root: system dirs read-only, the work dir a size-capped tmpfs
    drop_uid: bool  # switch to a fresh unprivileged uid (needs root)
    seccomp: bool = False  # syscall filter (x86_64 only)

    @property
    def pid_ns(self) -> bool:
        return "--pid" in self.unshare


_NS = ("--net", "--pid", "--ipc", "--mount", "--fork", "--kill-child", "--mount-proc")
# What the private root shows of the host (read-only), besides the interpreter's own prefix.
_ROOT_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev", "/proc", "/sys")
_GRACE_S = 2.0  # how long INIT may take to kill the program and copy files out when told to stop


def _seccomp_supported() -> bool:
    """The filter is written for the x86_64 syscall ABI (a 64-bit interpreter on x86_64)."""
    return os.uname().machine == "x86_64" and sys.maxsize > 2**32


def _candidate_modes() -> list[_Mode]:
    if os.geteuid() == 0:
        base = [
            _Mode("root-ns-ro", _NS, True, True),
            _Mode("root-ns", _NS, False, True),
            _Mode("root-uid", (), False, True),
            _Mode("root-rlimits", (), False, False),
        ]
    else:
        user = ("--user", "--map-root-user")
        base = [
            _Mode("userns-ro", user + _NS, True, False),
            _Mode("userns", user + _NS, False, False),
            _Mode("rlimits", (), False, False),
        ]
    out = []
    for mode in base:
        if _seccomp_supported():
            out.append(_Mode(mode.name + "+seccomp", mode.unshare, mode.mount, mode.drop_uid, True))
        out.append(mode)
    return out


_mode_lock = threading.Lock()
_mode: _Mode | None = None
_mode_notes: list[str] = []


def _get_mode() -> _Mode:
    global _mode
    with _mode_lock:
        if _mode is None:
            unshare = shutil.which("unshare", path=_PATH)
            for mode in _candidate_modes():
                if mode.unshare and unshare is None:
                    _mode_notes.append(f"{mode.name}: no unshare binary")
                    continue
                try:
                    res = _run(mode, "import os\nprint(os.getuid())", "", SandboxLimits(wall_s=20.0), None, ())
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
        _safe_relpath(name)
    return _run(_get_mode(), code, stdin, limits, files, collect)


# --------------------------------------------------------------------------------------------


def _safe_relpath(name: str) -> str:
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
    base = [p for p in _ROOT_DIRS if os.path.lexists(p)]
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


def _rlimits(limits: SandboxLimits, mode: _Mode) -> list[tuple[str, int, int]]:
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
            while size < _MAX_COLLECT_BYTES:
                chunk = os.read(fd, min(1 << 20, _MAX_COLLECT_BYTES - size))
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


def _run(
    mode: _Mode,
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
            to_write[_safe_relpath(name)] = text
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
            "PATH": _PATH,
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
            "collect": [_safe_relpath(n) for n in collect] if mode.mount else [],
            "max_collect": _MAX_COLLECT_BYTES,
            "mem_cap": limits.memory_mb * mb,
            "seccomp": mode.seccomp,
            "uid": uid,
            "rlimits": _rlimits(limits, mode),
            # The resolved interpreter, not a venv's symlink to it: the venv may live under /tmp,
            # which the work dir is mounted over (a checkout in /tmp, as CI's may be).
            "argv": [os.path.realpath(sys.executable), "-s", "-P", "-B", "main.py"],
            "env": env,
        }
        prefix = [shutil.which("unshare", path=_PATH) or "unshare", *mode.unshare, "--"] if mode.unshare else []
        result = _execute(prefix, cfg, mode, uid, root, stdin_path, limits)
        if collect:
            if mode.mount:  # INIT copied them out of the private tmpfs, as out/<index>
                names = [(name, str(i)) for i, name in enumerate(collect)]
                files_out = _read_collected(out_dir, names)
            else:
                files_out = _read_collected(work, [(name, _safe_relpath(name)) for name in collect])
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
    mode: _Mode,
    uid: int | None,
    root: str,
    stdin_path: str,
    limits: SandboxLimits,
) -> SandboxResult:
    status_r, status_w = os.pipe()
    ctl_r, ctl_w = os.pipe()  # we never write: closing ctl_w (or dying) tells INIT to stop
    cfg = dict(cfg, status_fd=status_w, ctl_fd=ctl_r)
    argv = [*prefix, sys.executable, "-I", "-S", "-c", _INIT_SRC, json.dumps(cfg)]
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
                env={"PATH": _PATH, "LANG": "C.UTF-8"},
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
        # told to stop; it gets _GRACE_S for that before the hard kill.
        os.close(ctl_w)
        if killed_by_us:
            if mode.pid_ns:
                try:
                    proc.wait(timeout=_GRACE_S)
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
                [sys.executable, "-I", "-S", "-c", _KILL_UID_SRC, str(uid)],
                env={"PATH": _PATH}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
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
