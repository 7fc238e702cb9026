"""Where a recorded result came from: the commit the report ran at (every benchmark report uses it)."""

from __future__ import annotations

from opsd_platform.tracking import code_tags


def git_commit() -> str:
    """The short hash of the checkout's HEAD, the commit runs are tagged with (tracking.code_tags), or
    "unknown" outside a git checkout (a copy of the tree, a container)."""
    commit = code_tags().get("mlflow.source.git.commit")
    return commit[:7] if commit else "unknown"
