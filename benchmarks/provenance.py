"""Where a recorded result came from: the commit the report ran at (every benchmark report uses it)."""

from __future__ import annotations

import subprocess


def git_commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout (a copy of the tree, a container)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
