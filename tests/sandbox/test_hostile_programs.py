"""The sandbox against hostile programs, one test each: a failed answer (or "ok" having achieved
nothing harmful), the caller and the machine unharmed, nothing of the run left behind
(tests/sandbox/hostile.py). docs/sandbox.md lists the threats."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from opsd_platform.sandbox import UID_BASE, SandboxLimits, isolation, run_python
from tests.helpers import FIXTURES, ROOT
from tests.sandbox.hostile import (
    eventually_none,
    hostile,
    needs_pid_ns_and_uid,
    procs_matching,
    require_process_tracking,
)


def test_infinite_loop_times_out_within_the_wall_limit():
    t0 = time.monotonic()
    r = hostile("while True:\n    pass\n", limits=SandboxLimits(wall_s=1.0))
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and r.returncode is None
    assert elapsed < 1.0 + 5.0  # killed at the limit (margin for sandbox start-up on a loaded machine)


def test_cpu_limit():
    r = hostile("while True:\n    pass\n", limits=SandboxLimits(wall_s=8.0, cpu_s=1))
    # Stopped well before the 8 s wall limit, so the 1 CPU-second limit did it (on a loaded
    # machine the loop gets a fraction of a core, so 1 CPU-second can take a few wall seconds).
    assert r.status == "timeout" and r.wall_s < 6.0


def test_memory_bomb_fails_and_parent_is_fine():
    r = hostile("x = bytearray(10**10)\nprint('allocated')\n", limits=SandboxLimits(memory_mb=256))
    assert r.status in ("memory", "error", "killed")
    assert "allocated" not in r.stdout
    assert r.status != "memory" or "MemoryError" in r.stderr
    r = hostile("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", limits=SandboxLimits(memory_mb=256, wall_s=10))
    assert r.status in ("memory", "error", "killed")
    assert run_python("print('still fine')").stdout == "still fine\n"


def test_memory_bomb_across_processes_is_capped_in_total():
    """RLIMIT_AS is per process: 4 children x 120 MB each fit it, not memory_mb in total."""
    if not isolation()["total_memory_limit"]:
        pytest.skip("no total memory limit without a PID namespace")
    code = (
        "import os, time\nfor i in range(4):\n    if os.fork() == 0:\n        b = bytearray(120 << 20)\n"
        "        time.sleep(8)\n        os._exit(0)\nfor i in range(4):\n    os.wait()\nprint('all allocated')\n"
    )
    t0 = time.monotonic()
    r = hostile(code, limits=SandboxLimits(memory_mb=256, wall_s=10))
    assert r.status == "memory" and "all allocated" not in r.stdout, r
    assert "together used more than 256 MB" in r.stderr
    assert time.monotonic() - t0 < 5.0
    # a program with a few modest children stays fine (shared pages are counted proportionally)
    code = (
        "import os\nkids = []\nfor i in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray(30 << 20)\n        os._exit(0)\n    kids.append(pid)\n"
        "print(sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids))\n"
    )
    r = hostile(code, limits=SandboxLimits(memory_mb=256))
    assert r.status == "ok" and r.stdout == "[0, 0, 0]\n", r


def test_memory_outside_the_address_space_limit_is_refused():
    """memfd pages and SysV shared memory are not counted by RLIMIT_AS, and SysV segments would
    outlive the program on the host."""
    iso = isolation()
    if not iso["syscall_filter"]:
        pytest.skip("no syscall filter on this machine")

    def host_segments() -> set[str]:
        with open("/proc/sysvipc/shm") as f:
            return {line.split()[1] for line in f.read().splitlines()[1:] if line.split()}

    before = host_segments()
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('shmget', libc.shmget(0, 1 << 20, 0o1600), ctypes.get_errno())\n"
        "fd = os.memfd_create('x')\nos.write(fd, b'x' * (8 << 20))\nprint('memfd written')\n"
    )
    r = hostile(code, limits=SandboxLimits(memory_mb=128))
    assert r.status == "error" and "PermissionError" in r.stderr, r
    assert "shmget -1 1\n" in r.stdout and "memfd written" not in r.stdout
    assert host_segments() <= before  # nothing new in the host's IPC namespace


def test_deep_recursion_fails_cleanly():
    r = hostile("def f(n):\n    return f(n + 1)\nf(0)\n")
    assert r.status == "error" and "RecursionError" in r.stderr
    # a huge recursion limit + recursion through C (lru_cache): the C stack overflows
    code = (
        "import sys, functools\nsys.setrecursionlimit(10**6)\n@functools.lru_cache(None)\n"
        "def f(n):\n    return 0 if n == 0 else f(n - 1) + 1\nprint(f(10**6))\n"
    )
    r = hostile(code)
    assert r.status in ("killed", "error"), r
    assert r.stdout == ""
    if r.status == "killed":
        assert r.returncode == -signal.SIGSEGV and "SIGSEGV" in r.stderr
    assert run_python("print(2 + 2)").stdout == "4\n"


def test_output_flood_is_cut_and_killed():
    limits = SandboxLimits(max_output_bytes=10_000, wall_s=10.0)
    t0 = time.monotonic()
    r = hostile("while True:\n    print('x' * 1000)\n", limits=limits)
    assert r.status == "output_limit" and r.truncated
    assert len(r.stdout) <= 10_000
    assert time.monotonic() - t0 < 5.0
    r = hostile("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", limits=limits)
    assert r.status == "output_limit" and r.truncated and len(r.stderr) <= 10_000


def test_cannot_write_outside_the_work_dir():
    iso = isolation()
    if not (iso["unprivileged_uid"] or iso["readonly_filesystem"]):
        pytest.skip("neither an unprivileged uid nor a read-only file system on this machine")
    tag = uuid.uuid4().hex
    home = os.path.expanduser("~")
    targets = [os.path.join(tempfile.gettempdir(), f"opsd-escape-{tag}")]  # may be the private work dir
    denied = [f"/root/opsd-escape-{tag}", str(ROOT / f"opsd-escape-{tag}"), f"/etc/opsd-escape-{tag}",
              os.path.join(home, f"opsd-escape-{tag}")]
    if iso["readonly_filesystem"]:  # world-writable host dirs are only protected by the mount ns
        denied += [f"/var/tmp/opsd-escape-{tag}", f"/dev/shm/opsd-escape-{tag}"]
    targets += denied
    # World-writable files the host already has: not to be changed, renamed, or deleted.
    victims = [str(ROOT / f".opsd-victim-{tag}"), os.path.join(home, f".opsd-victim-{tag}")]
    if iso["readonly_filesystem"]:
        victims.append(f"/dev/shm/opsd-victim-{tag}")
    for v in victims:
        with open(v, "w") as f:
            f.write("original")
        os.chmod(v, 0o666)
    code = "import os, sys\nfor path in %r:\n" % (targets,) + (
        "    try:\n        with open(path, 'w') as f:\n            f.write('x')\n        print('wrote', path)\n"
        "    except OSError as e:\n        print('denied', path, e.errno)\n"
        "for v in %r:\n" % (victims,)
    ) + (
        "    for what, act in [('append', lambda: open(v, 'a').write('x')), ('chmod', lambda: os.chmod(v, 0o600)),\n"
        "                      ('rename', lambda: os.rename(v, v + '.moved')), ('unlink', lambda: os.unlink(v)),\n"
        "                      ('mkdir', lambda: os.mkdir(v + '.d')), ('symlink', lambda: os.symlink('/', v + '.l'))]:\n"
        "        try:\n            act()\n            print('CHANGED', what, v)\n"
        "        except OSError as e:\n            print('denied', what, v, e.errno)\n"
        "open('inside.txt', 'w').write('ok')\nprint('inside ok')\n"
    )
    try:
        r = hostile(code)
        assert r.status == "ok", r.stderr
        assert "inside ok" in r.stdout and "CHANGED" not in r.stdout, r.stdout
        for t in targets:
            assert not os.path.exists(t), f"the sandbox created {t} on the host"
        # /tmp inside the sandbox may be the private work dir; everything else must be denied
        for t in denied:
            assert f"denied {t}" in r.stdout, r.stdout
        for v in victims:
            assert open(v).read() == "original" and os.stat(v).st_mode & 0o777 == 0o666
            for suffix in (".moved", ".d", ".l"):
                assert not os.path.lexists(v + suffix)
    finally:
        for t in targets + victims:
            if os.path.exists(t):
                os.remove(t)


def test_host_files_are_not_visible():
    """The private root shows system dirs and the interpreter only: not the checkout, its data
    sets (expected outputs!), the home directory."""
    if not isolation()["private_root"]:
        pytest.skip("no private root on this machine")
    tag = uuid.uuid4().hex
    secret = ROOT / f".opsd-secret-{tag}"
    secret.write_text("hunter2-in-a-file")
    os.chmod(secret, 0o644)
    paths = [str(secret), str(ROOT / "pyproject.toml"), str(FIXTURES), os.path.expanduser("~"),
             "/var", "/run", "/home"]
    code = "import os\nfor p in %r:\n" % (paths,) + (
        "    try:\n        print('READ', p, open(p).read(100) if os.path.isfile(p) else sorted(os.listdir(p)))\n"
        "    except OSError as e:\n        print('hidden', p, e.errno)\n"
    )
    interpreter = sys.base_prefix + "/"  # (the private root shows the path down to it)
    try:
        r = hostile(code)
        assert r.status == "ok", r.stderr
        assert "hunter2" not in r.stdout
        for p in paths:
            if p in ("/var", "/run", "/home") or p == os.path.expanduser("~"):
                m = re.search(rf"READ {re.escape(p)} (\[.*\])", r.stdout)
                listed = eval(m.group(1)) if m else []
                assert all(interpreter.startswith(f"{p}/{e}/") for e in listed), r.stdout
            else:
                assert f"hidden {p}" in r.stdout, r.stdout
    finally:
        secret.unlink()


def test_parent_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("OPSD_FAKE_SECRET", "hunter2-do-not-leak")
    r = hostile("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ', 'rb').read())\n")
    assert r.status == "ok"
    assert "hunter2" not in r.stdout and "OPSD_FAKE_SECRET" not in r.stdout
    assert "PYTHONHASHSEED" in r.stdout


def test_parent_environment_is_not_readable_through_proc(monkeypatch):
    monkeypatch.setenv("OPSD_FAKE_SECRET", "hunter2-do-not-leak")
    me = os.getpid()
    code = (
        "import os\nfor pid in sorted({os.getppid(), 1, %d, %d}):\n" % (me, os.getppid())
        + "    for what in ('environ', 'cmdline'):\n"
        "        try:\n            data = open(f'/proc/{pid}/{what}', 'rb').read()\n"
        "            print('read', pid, what, data)\n"
        "        except OSError as e:\n            print('denied', pid, what, e.errno)\n"
    )
    r = hostile(code)
    assert r.status == "ok", r.stderr
    assert "hunter2" not in r.stdout and "OPSD_FAKE_SECRET" not in r.stdout, r.stdout
    if isolation()["pid_namespace"]:
        assert f"denied {me} environ" in r.stdout  # the caller is not even visible


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
        r = hostile(code)
        assert r.status == "ok", r.stderr
        assert "CONNECTED" not in r.stdout and r.stdout.count("blocked") == 3
    finally:
        server.close()


def test_no_udp_and_no_host_unix_sockets():
    iso = isolation()
    if not iso["net_namespace"]:
        pytest.skip("no network namespace on this machine")
    tag = uuid.uuid4().hex[:12]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    # A world-connectable unix socket at a host path, as /run/... daemons have; and an abstract one.
    upath = f"/dev/shm/opsd-{tag}.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(upath)
    os.chmod(upath, 0o777)
    unix.listen(1)
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0opsd-{tag}")
    abstract.listen(1)
    abstract.setblocking(False)
    code = (
        "import socket\ndef attempt(name, f):\n    try:\n        f()\n        print('SENT', name)\n"
        "    except OSError as e:\n        print('blocked', name, e.errno)\n"
        "def udp(addr):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.sendto(b'hello', addr)\n"
        "def unix(addr):\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.settimeout(2)\n"
        "    s.connect(addr)\n    s.send(b'hello')\n"
        "attempt('udp-host', lambda: udp(('127.0.0.1', %d)))\n" % udp.getsockname()[1]
        + "attempt('udp-dns', lambda: udp(('8.8.8.8', 53)))\n"
        "attempt('unix-path', lambda: unix(%r))\nattempt('unix-abstract', lambda: unix(%r))\n"
        % (upath, f"\0opsd-{tag}")
    )
    try:
        r = hostile(code)
        assert r.status == "ok", r.stderr
        assert "SENT udp-dns" not in r.stdout and "SENT unix" not in r.stdout, r.stdout
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            udp.recvfrom(100)
        for server in (unix, abstract):
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        udp.close()
        unix.close()
        abstract.close()
        os.unlink(upath)


def test_signals_cannot_reach_the_caller():
    needs_pid_ns_and_uid()
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    bystander = subprocess.Popen(["sleep", "30"])  # a host process of the caller's uid
    try:
        code = (
            "import os, signal\ndef attempt(name, f):\n    try:\n        f()\n        print('sent', name, flush=True)\n"
            "    except OSError as e:\n        print('failed', name, type(e).__name__, flush=True)\n"
            "attempt('ppid-kill', lambda: os.kill(os.getppid(), signal.SIGKILL))\n"
            "attempt('caller-term', lambda: os.kill(%d, signal.SIGTERM))\n"
            "attempt('bystander-kill', lambda: os.kill(%d, signal.SIGKILL))\n"
            "attempt('init-kill', lambda: os.kill(1, signal.SIGKILL))\n"
            "attempt('all-kill', lambda: os.kill(-1, signal.SIGKILL))\n"
            "os.killpg(0, signal.SIGKILL)\nprint('survived killpg')\n" % (os.getpid(), bystander.pid)
        )
        r = hostile(code)
        assert "failed ppid-kill PermissionError" in r.stdout, r.stdout
        assert "failed init-kill PermissionError" in r.stdout
        assert r.status == "killed" and r.returncode == -signal.SIGKILL  # killpg(0) hit itself only
        assert "survived killpg" not in r.stdout
        time.sleep(0.1)
        assert got == [] and bystander.poll() is None
    finally:
        signal.signal(signal.SIGTERM, old)
        bystander.kill()
        bystander.wait()


def test_exit_before_printing_is_ok_with_empty_output():
    # run_python reports what happened; the judge sees no output, hence a wrong answer
    r = hostile("import os\nos._exit(0)\nprint('answer 42')\n")
    assert r.status == "ok" and r.returncode == 0 and r.stdout == ""
    r = hostile("import os\nprint('answer 42')\nos._exit(0)\n")  # buffered, never flushed
    assert r.status == "ok" and r.stdout == ""


def test_segfault_through_ctypes_is_reported():
    r = hostile("import ctypes\nprint('before', flush=True)\nctypes.string_at(0)\nprint('after')\n")
    assert r.status == "killed" and r.returncode == -signal.SIGSEGV
    assert r.stdout == "before\n"
    assert "SIGSEGV" in r.stderr and "Segmentation fault" in r.stderr
    assert "main.py" in r.stderr  # faulthandler: where it crashed
    assert run_python("print('fine')").stdout == "fine\n"


def test_work_dir_is_removed():
    before = set(os.listdir(tempfile.gettempdir()))
    r = run_python("import os\nos.makedirs('a/b', exist_ok=True)\nopen('a/b/c', 'w').write('x')\nos.chmod('a', 0)\nprint(os.getcwd())\n")
    assert r.status == "ok"
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("opsd-sbx-")}
    assert not (after - before)


def test_double_forked_sleeper_is_killed():
    require_process_tracking()
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}7"
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nprint('parent done')\n"
    )
    r = hostile(code)
    assert r.status == "ok" and "parent done" in r.stdout
    assert eventually_none(lambda uid, cmd: marker in cmd) == []


def test_child_ignoring_sigterm_and_sighup_is_killed():
    require_process_tracking()
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}1"
    code = (
        "import os, signal\nif os.fork() == 0:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\nprint('parent done')\n"
    )
    r = hostile(code)
    assert r.status == "ok" and "parent done" in r.stdout
    assert eventually_none(lambda uid, cmd: marker in cmd) == []


def test_timeout_kills_setsid_children_too():
    require_process_tracking()
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}3"
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\ntime.sleep(60)\n"
    )
    r = hostile(code, limits=SandboxLimits(wall_s=1.0))
    assert r.status == "timeout"
    assert eventually_none(lambda uid, cmd: marker in cmd) == []


def test_inherited_file_descriptors():
    code = (
        "import os\nprint('listed', sorted(int(x) for x in os.listdir('/proc/self/fd')))\nopen_fds = []\n"
        "for fd in range(3, 256):\n    try:\n        os.fstat(fd)\n        open_fds.append(fd)\n    except OSError:\n"
        "        pass\nprint('open', open_fds)\n"
        "try:\n    os.write(0, b'x')\n    print('WROTE stdin')\nexcept OSError as e:\n    print('stdin write', e.errno)\n"
        "try:\n    open('/proc/self/fd/0', 'w')\n    print('REOPENED stdin')\nexcept OSError as e:\n"
        "    print('stdin reopen', e.errno)\n"
        "for fd in range(3, 256):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
        "print(input())\n"
    )
    r = hostile(code, stdin="the input\n")
    assert r.status == "ok", r.stderr
    assert "listed [0, 1, 2, 3]\n" in r.stdout  # 3: the directory being listed
    assert "open []\n" in r.stdout and "WROTE" not in r.stdout and "REOPENED" not in r.stdout
    assert r.stdout.endswith("the input\n")


def test_privileges_cannot_be_regained():
    if not isolation()["unprivileged_uid"]:
        pytest.skip("no unprivileged uid on this machine")
    code = (
        "import ctypes, os\nres = {}\nfor name, f in [('setuid', lambda: os.setuid(0)), ('seteuid', lambda: os.seteuid(0)),\n"
        "                ('setgid', lambda: os.setgid(0)), ('setresuid', lambda: os.setresuid(0, 0, 0)),\n"
        "                ('setgroups', lambda: os.setgroups([0]))]:\n"
        "    try:\n        f()\n        res[name] = 'ok'\n    except OSError as e:\n        res[name] = e.errno\n"
        "print(sorted(res.items()))\n"
        "st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "print('caps', st['CapEff'].strip(), st['CapPrm'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip())\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('userns', libc.unshare(0x10000000), 'uid', os.getuid(), os.geteuid())\nos.setuid(0)\n"
    )
    r = hostile(code)
    assert r.status == "error" and "PermissionError" in r.stderr
    assert "'ok'" not in r.stdout, r.stdout
    assert "caps 0000000000000000 0000000000000000 0000000000000000 1\n" in r.stdout
    assert "userns -1 uid " in r.stdout  # no unprivileged user namespace (root in it) either
    uid = int(r.stdout.split(" uid ")[1].split()[0])
    assert uid >= UID_BASE


def test_disk_filling_is_bounded():
    r = hostile("open('big', 'wb').write(b'x' * (3 << 20))\n", limits=SandboxLimits(file_size_mb=2))
    assert r.status == "error" and "File too large" in r.stderr  # RLIMIT_FSIZE, per file
    if not isolation()["disk_limit"]:
        pytest.skip("no work dir size limit on this machine (many files of max size fill the disk)")
    code = (
        "n = 0\ntry:\n    while True:\n        with open(f'f{n}', 'wb') as f:\n            f.write(b'x' * (2 << 20))\n"
        "        n += 1\nexcept OSError as e:\n    print('stopped after', n, e.errno, flush=True)\n    raise\n"
    )
    t0 = time.monotonic()
    r = hostile(code, limits=SandboxLimits(file_size_mb=2, disk_mb=16), files={"data.txt": "y" * 100_000})
    assert r.status == "error" and "No space left on device" in r.stderr, r
    n = int(r.stdout.split()[2])
    assert 6 <= n <= 8  # 16 MB of room besides the staged files
    assert time.monotonic() - t0 < 5.0


def test_a_dead_caller_leaves_no_sandbox_behind(tmp_path):
    """The wall clock is the caller's: if the caller dies mid-run, INIT sees its control pipe
    close and tears the sandbox down."""
    iso = isolation()
    if not iso["pid_namespace"]:
        pytest.skip("no PID namespace on this machine")
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}9"
    script = (
        "import sys\nsys.path.insert(0, %r)\nfrom opsd_platform.sandbox import run_python, SandboxLimits\n"
        "run_python(%r, limits=SandboxLimits(wall_s=60, cpu_s=60))\n"
        % (str(ROOT), f"import os, time\nif os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
                      "time.sleep(60)\n")
    )
    # (its temporary root, never removed since it is killed, goes under tmp_path)
    caller = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 20
        while not procs_matching(lambda uid, cmd: marker in cmd):
            assert time.monotonic() < deadline and caller.poll() is None, "the sandbox did not start"
            time.sleep(0.05)
    finally:
        caller.kill()
        caller.wait()
    assert eventually_none(lambda uid, cmd: marker in cmd) == []


def test_fork_bomb_is_harmless():
    iso = isolation()
    if not (iso["unprivileged_uid"] and iso["nproc_limit_effective"]):
        pytest.skip("fork bomb test needs a private unprivileged uid (RLIMIT_NPROC)")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = hostile(code, limits=SandboxLimits(wall_s=1.5, cpu_s=2, max_processes=16))
    assert r.status in ("timeout", "killed", "error")
    assert time.monotonic() - t0 < 6.0
    assert run_python("print(1)").stdout == "1\n"
