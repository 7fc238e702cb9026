"""Importing the CLI stays cheap: no torch until a command needs it (torch alone takes ~2 s)."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_importing_the_cli_imports_no_torch():
    # A fresh interpreter: in this one, other tests have long imported torch. PYTHONPATH puts this
    # checkout first, so the package under test is imported, not another install of it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, opsd_platform.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:1])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", (
        "importing opsd_platform.cli imported torch; "
        "`python -X importtime -c 'import opsd_platform.cli'` shows which module did"
    )
