"""What a sandbox run is given (SandboxLimits) and returns (SandboxResult), the constants every part
shares, and the isolation modes a machine may offer (Mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
OPEN_FILES_LIMIT = 256
UID_BASE = 2_000_000
UID_SPAN = 1_000_000_000  # uids in [2e6, 1.002e9): no real user, collisions between runs negligible
MAX_COLLECT_BYTES = 64 * 1024 * 1024
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


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




@dataclass(frozen=True)
class Mode:
    name: str
    unshare: tuple[str, ...]  # unshare flags, () = no namespaces
    mount: bool  # private root: system dirs read-only, the work dir a size-capped tmpfs
    drop_uid: bool  # switch to a fresh unprivileged uid (needs root)
    seccomp: bool = False  # syscall filter (x86_64 only)

    @property
    def pid_ns(self) -> bool:
        return "--pid" in self.unshare


