"""The sandbox for model-generated code: its limits, its isolation report, running and collecting
files, concurrency. Hostile programs, one per threat: test_hostile_programs.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from opsd_platform.sandbox import SandboxLimits, isolation, run_python
from tests.helpers import ROOT


def test_limits_are_validated():
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1)
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_output_bytes"):
        SandboxLimits(max_output_bytes=0)
    with pytest.raises(ValueError, match="disk_mb"):
        SandboxLimits(disk_mb=0)
    with pytest.raises(ValueError):
        run_python("pass", collect=("../x",))


def test_isolation_report_is_boolean():
    iso = isolation()
    for key in ("unprivileged_uid", "net_namespace", "pid_namespace", "nproc_limit_effective",
                "readonly_filesystem", "ipc_namespace", "private_root", "disk_limit",
                "total_memory_limit", "syscall_filter"):
        assert isinstance(iso[key], bool)
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        ns = subprocess.run([unshare, "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc", "true"],
                            capture_output=True, timeout=30)
        if ns.returncode == 0:
            # root and namespaces work (this machine, CI): the sandbox must not settle for less
            assert iso["unprivileged_uid"] and iso["net_namespace"] and iso["pid_namespace"], iso
            assert iso["nproc_limit_effective"] and iso["readonly_filesystem"], iso
            assert iso["ipc_namespace"] and iso["private_root"] and iso["disk_limit"], iso
            assert iso["total_memory_limit"], iso
            if os.uname().machine == "x86_64":
                assert iso["syscall_filter"], iso


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


def test_collect_does_not_follow_a_symlinked_directory():
    r = run_python("import os\nos.symlink('/etc', 'out')\nos.mkdir('d')\nopen('d/r.txt', 'w').write('nested')\n",
                   collect=("out/passwd", "d/r.txt"))
    assert r.status == "ok"
    assert r.files == {"d/r.txt": b"nested"}


def test_files_written_before_a_timeout_are_collected():
    code = "open('results.jsonl', 'w').write('{\"i\": 0}\\n')\nwhile True:\n    pass\n"
    r = run_python(code, limits=SandboxLimits(wall_s=1.0), collect=("results.jsonl",))
    assert r.status == "timeout" and r.files == {"results.jsonl": b'{"i": 0}\n'}
    code = "open('results.jsonl', 'w').write('x')\nwhile True:\n    print('y' * 1000)\n"
    r = run_python(code, limits=SandboxLimits(max_output_bytes=5000), collect=("results.jsonl",))
    assert r.status == "output_limit" and r.files == {"results.jsonl": b"x"}


def test_runs_from_a_venv_under_tmp(tmp_path):
    """The caller's interpreter may be a venv under /tmp (a checkout there), which the work dir
    hides: the sandbox runs the resolved interpreter."""
    venv = Path(tempfile.mkdtemp(prefix="opsd-venv-", dir="/tmp")) / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        script = (
            "import sys\nsys.path.insert(0, %r)\nfrom opsd_platform.sandbox import run_python, isolation\n"
            "r = run_python('import sys\\nprint(6 * 7, input())\\nopen(\"o.txt\", \"w\").write(\"out\")', stdin='x',\n"
            "               files={'in/a.txt': 'a'}, collect=('o.txt',))\n"
            "print(r.status, repr(r.stdout), r.files, r.stderr, isolation()['private_root'])\n" % str(ROOT)
        )
        res = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("ok '42 x\\n' {'o.txt': b'out'}"), res.stdout
    finally:
        shutil.rmtree(venv.parent)
