"""Every run carries the code it ran (tracking.code_tags): the checkout's commit, and whether it was dirty."""

import subprocess

from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from tests.helpers import ROOT


def test_a_run_is_tagged_with_the_commit_of_the_checkout_it_ran_from(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "tags", "r", {"kind": "train"})
    tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip() != ""
    assert tags["opsd.code_dirty"] == str(dirty).lower()
    assert tags["kind"] == "train"  # the caller's tags are kept


def test_without_git_a_run_has_no_code_tags(monkeypatch):
    tracking.code_tags.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")  # no git to ask: an installed copy, a container
    try:
        assert tracking.code_tags() == {}
    finally:
        tracking.code_tags.cache_clear()
