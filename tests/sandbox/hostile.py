"""Helpers of the hostile-program tests: run a program with its uid announced, then check that
nothing of the run is left (no process of its uid or naming its root, no root)."""

from __future__ import annotations

import os
import re
import tempfile
import time

import pytest

from opsd_platform import sandbox
from opsd_platform.sandbox import UID_BASE, isolation, run_python

# Every hostile program starts by telling us its uid (on stderr: stdout stays the program's).
_PRELUDE = "import os as _o\n_o.write(2, b'SANDBOX-UID=%d\\n' % _o.getuid())\ndel _o\n"


def procs_matching(pred) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        uid = int(status.split("Uid:")[1].split()[0])
        if pred(uid, cmd):
            out.append(int(entry))
    return out


def eventually_none(pred, timeout: float = 3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = procs_matching(pred)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def stray_check(uid: int | None, roots: list[str]) -> None:
    """Nothing of the run is left: no process of its private uid, no launcher/INIT of it (their
    command lines name its temporary root), and the root itself is gone."""
    own_uid = uid if uid is not None and uid >= UID_BASE else None

    def mine(puid: int, cmd: str) -> bool:
        return (own_uid is not None and puid == own_uid) or any(r in cmd for r in roots)

    assert eventually_none(mine) == []
    for r in roots:
        assert not os.path.exists(r), f"the sandbox left {r} behind"


def hostile(code: str, **kw) -> sandbox.SandboxResult:
    """run_python with the uid prelude, then the stray-process check; the caller must be fine."""
    roots: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*a, **k):
        path = real_mkdtemp(*a, **k)
        roots.append(path)
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkdtemp", recording_mkdtemp)
        r = run_python(_PRELUDE + code, **kw)
    m = re.search(r"SANDBOX-UID=(\d+)", r.stderr)
    stray_check(int(m.group(1)) if m else None, roots)
    return r


def needs_pid_ns_and_uid():
    iso = isolation()
    if not (iso["pid_namespace"] and iso["unprivileged_uid"]):
        pytest.skip("needs the PID namespace and the private unprivileged uid")



def require_process_tracking() -> None:
    iso = isolation()
    if not (iso["pid_namespace"] or iso["unprivileged_uid"]):
        pytest.skip("no PID namespace nor private uid: stray processes cannot be tracked")

