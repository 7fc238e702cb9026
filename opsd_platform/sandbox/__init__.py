"""Run untrusted, model-generated Python in a throw-away sandbox.

Modules: limits (what a run is given and returns), launch (one run in one mode), modes (which
mode this machine supports; ``run_python``), and the two programs the sandbox runs as real files:
init_program.py (INIT) and kill_uid_program.py.

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

from opsd_platform.sandbox.limits import (
    OPEN_FILES_LIMIT,
    STATUSES,
    UID_BASE,
    UID_SPAN,
    SandboxError,
    SandboxLimits,
    SandboxResult,
)
from opsd_platform.sandbox.modes import isolation, run_python

__all__ = ["SandboxLimits", "SandboxResult", "SandboxError", "run_python", "isolation", "STATUSES", "OPEN_FILES_LIMIT",
           "UID_BASE", "UID_SPAN"]
