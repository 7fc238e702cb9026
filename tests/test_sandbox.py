"""The sandbox for model-generated code: each guarantee is exercised for real."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from opsd_platform.sandbox import UID_BASE, SandboxLimits, isolation, run_python

REPO = Path(__file__).resolve().parents[1]


def _procs_matching(pred) -> list[int]:
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


def _eventually_none(pred, timeout: float = 3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = _procs_matching(pred)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1)
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_output_bytes"):
        SandboxLimits(max_output_bytes=0)


def test_isolation_report_is_boolean():
    iso = isolation()
    for key in ("unprivileged_uid", "net_namespace", "pid_namespace", "nproc_limit_effective"):
        assert isinstance(iso[key], bool)
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        ns = subprocess.run([unshare, "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc", "true"],
                            capture_output=True, timeout=30)
        if ns.returncode == 0:
            # root and namespaces work (this machine, CI): the sandbox must not settle for less
            assert iso["unprivileged_uid"] and iso["net_namespace"] and iso["pid_namespace"], iso
            assert iso["nproc_limit_effective"] and iso["readonly_filesystem"], iso


def test_program_with_stdin_runs_and_is_fast():
    code = "import sys\ndata = sys.stdin.read().split()\nprint(sum(map(int, data)))\n"
    r = run_python(code, stdin="1 2 3\n4\n")
    assert r.status == "ok" and r.returncode == 0
    assert r.stdout == "10\n" and r.stderr == "" and not r.truncated
    t0 = time.monotonic()
    for _ in range(3):
        assert run_python("pass").status == "ok"
    assert (time.monotonic() - t0) / 3 < 0.5  # measured ~0.06 s on 2 cores


def test_nonzero_exit_and_files():
    r = run_python("import sys\nprint(open('data/in.txt').read())\nsys.exit(3)\n", files={"data/in.txt": "hello"})
    assert r.status == "error" and r.returncode == 3 and r.stdout == "hello\n"
    with pytest.raises(ValueError):
        run_python("pass", files={"../escape.txt": "x"})


def test_infinite_loop_times_out_within_the_wall_limit():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", limits=SandboxLimits(wall_s=1.0))
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and r.returncode is None
    assert elapsed < 1.0 + 1.5


def test_cpu_limit():
    r = run_python("while True:\n    pass\n", limits=SandboxLimits(wall_s=8.0, cpu_s=1))
    assert r.status == "timeout" and r.wall_s < 4.0


def test_memory_bomb_fails_and_parent_is_fine():
    r = run_python("x = bytearray(10**10)\nprint('allocated')\n", limits=SandboxLimits(memory_mb=256))
    assert r.status in ("memory", "error", "killed")
    assert "allocated" not in r.stdout
    assert r.status != "memory" or "MemoryError" in r.stderr
    r = run_python("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", limits=SandboxLimits(memory_mb=256, wall_s=10))
    assert r.status in ("memory", "error", "killed")
    assert run_python("print('still fine')").stdout == "still fine\n"


def test_output_flood_is_cut_and_killed():
    limits = SandboxLimits(max_output_bytes=10_000, wall_s=10.0)
    t0 = time.monotonic()
    r = run_python("while True:\n    print('x' * 1000)\n", limits=limits)
    assert r.status == "output_limit" and r.truncated
    assert len(r.stdout) <= 10_000
    assert time.monotonic() - t0 < 5.0
    r = run_python("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", limits=limits)
    assert r.status == "output_limit" and r.truncated and len(r.stderr) <= 10_000


def test_parent_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("OPSD_FAKE_SECRET", "hunter2-do-not-leak")
    r = run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ', 'rb').read())\n")
    assert r.status == "ok"
    assert "hunter2" not in r.stdout and "OPSD_FAKE_SECRET" not in r.stdout
    assert "PYTHONHASHSEED" in r.stdout


def test_no_network():
    if not isolation()["net_namespace"]:
        pytest.skip("no network namespace on this machine")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = (
            "import socket\nfor addr in [('127.0.0.1', %d), ('1.1.1.1', 80), ('8.8.8.8', 53)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=2).close()\n        print('CONNECTED', addr)\n"
            "    except OSError as e:\n        print('blocked', addr, e.errno)\n" % port
        )
        r = run_python(code)
        assert r.status == "ok", r.stderr
        assert "CONNECTED" not in r.stdout and r.stdout.count("blocked") == 3
    finally:
        server.close()


def test_cannot_write_outside_the_work_dir():
    iso = isolation()
    if not (iso["unprivileged_uid"] or iso["readonly_filesystem"]):
        pytest.skip("neither an unprivileged uid nor a read-only file system on this machine")
    tag = uuid.uuid4().hex
    targets = [os.path.join(tempfile.gettempdir(), f"opsd-escape-{tag}")]  # may be the private work dir
    denied = [f"/root/opsd-escape-{tag}", str(REPO / f"opsd-escape-{tag}"), f"/etc/opsd-escape-{tag}"]
    if iso["readonly_filesystem"]:  # world-writable host dirs are only protected by the mount ns
        denied += [f"/var/tmp/opsd-escape-{tag}", f"/dev/shm/opsd-escape-{tag}"]
    targets += denied
    code = "import sys\nfor path in sys.argv[1:] or %r:\n" % (targets,) + (
        "    try:\n        with open(path, 'w') as f:\n            f.write('x')\n        print('wrote', path)\n"
        "    except OSError as e:\n        print('denied', path, e.errno)\n"
        "open('inside.txt', 'w').write('ok')\nprint('inside ok')\n"
    )
    try:
        r = run_python(code)
        assert r.status == "ok", r.stderr
        assert "inside ok" in r.stdout
        for t in targets:
            assert not os.path.exists(t), f"the sandbox created {t} on the host"
        # /tmp inside the sandbox may be the private work dir; everything else must be denied
        for t in denied:
            assert f"denied {t}" in r.stdout, r.stdout
    finally:
        for t in targets:
            if os.path.exists(t):
                os.remove(t)


def test_work_dir_is_removed():
    before = set(os.listdir(tempfile.gettempdir()))
    r = run_python("import os\nos.makedirs('a/b', exist_ok=True)\nopen('a/b/c', 'w').write('x')\nos.chmod('a', 0)\nprint(os.getcwd())\n")
    assert r.status == "ok"
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("opsd-sbx-")}
    assert not (after - before)


def test_double_forked_sleeper_is_killed():
    iso = isolation()
    if not (iso["pid_namespace"] or iso["unprivileged_uid"]):
        pytest.skip("no PID namespace nor private uid: stray processes cannot be tracked")
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}7"
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nprint('parent done')\n"
    )
    r = run_python(code)
    assert r.status == "ok" and "parent done" in r.stdout
    assert _eventually_none(lambda uid, cmd: marker in cmd) == []


def test_timeout_kills_setsid_children_too():
    iso = isolation()
    if not (iso["pid_namespace"] or iso["unprivileged_uid"]):
        pytest.skip("no PID namespace nor private uid")
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}3"
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\ntime.sleep(60)\n"
    )
    r = run_python(code, limits=SandboxLimits(wall_s=1.0))
    assert r.status == "timeout"
    assert _eventually_none(lambda uid, cmd: marker in cmd) == []


def test_fork_bomb_is_harmless():
    iso = isolation()
    if not (iso["unprivileged_uid"] and iso["nproc_limit_effective"]):
        pytest.skip("fork bomb test needs a private unprivileged uid (RLIMIT_NPROC)")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = run_python(code, limits=SandboxLimits(wall_s=1.5, cpu_s=2, max_processes=16))
    assert r.status in ("timeout", "killed", "error")
    assert time.monotonic() - t0 < 6.0
    assert _eventually_none(lambda uid, cmd: uid >= UID_BASE) == []
    assert run_python("print(1)").stdout == "1\n"


def test_concurrent_runs():
    results = [None] * 4

    def work(i):
        results[i] = run_python(f"print({i} * 2)")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(4)]


def test_collect_ignores_symlinks():
    r = run_python("import os\nos.symlink('/etc/passwd', 'out.txt')\nopen('res.txt', 'w').write('fine')\n",
                   collect=("out.txt", "res.txt", "missing.txt"))
    assert r.status == "ok"
    assert r.files == {"res.txt": b"fine"}
