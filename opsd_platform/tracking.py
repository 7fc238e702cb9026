"""MLflow plumbing: the store, experiments, runs, and ending a run FAILED with its reason.

Defaults: a local SQLite store at ``$OPSD_HOME/mlflow.db`` (absolute path: MLflow refuses the
plain ``./mlruns`` file store) with artifacts beside it in ``$OPSD_HOME/artifacts``. Any tracking
server URI works the same. A brand-new SQLite store is created (schema and all) once, by
``init_store``, before any worker starts: several processes creating it at once break it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
# No network here (and none wanted from a training job): MLflow's usage telemetry stays off.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

FAILURE_TAG = "failure_reason"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def init_store(uri: str) -> MlflowClient:
    """Create (or upgrade) the tracking store's schema once; return a client on it."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_absolute():
            raise ValueError(f"tracking.uri={uri}: use an absolute sqlite path (sqlite:////abs/path/mlflow.db)")
        db.parent.mkdir(parents=True, exist_ok=True)
    # Quiet alembic's schema-migration chatter on first creation.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)  # forces schema creation / check
    return client


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created with artifacts next to a local SQLite store."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    db = sqlite_path(uri)
    if db is not None:
        artifact_location = (db.parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_run(uri: str, experiment: str, run_name: str | None, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    """Create a RUNNING run (nested under `parent_run_id` if given); return its id."""
    client = init_store(uri)
    exp_id = ensure_experiment(client, uri, experiment)
    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id


def fail_run(uri: str, run_id: str, reason: str) -> None:
    """End a run FAILED and record why (nothing already logged is touched)."""
    client = MlflowClient(tracking_uri=uri)
    try:
        client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as exc:  # the store itself may be what failed; never mask the original error
        log.error("could not mark run %s FAILED: %s", run_id, exc)


@contextlib.contextmanager
def closing_run(uri: str, run_id: str) -> Iterator[list[str]]:
    """Close `run_id` FINISHED when the block succeeds, FAILED with the reason (and the traceback
    tail) when anything escapes it, Ctrl-C included. Yields a list: append what a caller learns
    about a failure that the exception itself hides (Lightning turns Ctrl-C into SystemExit)."""
    reasons: list[str] = []
    try:
        yield reasons
    except BaseException as exc:
        if reasons:
            reason = reasons[0]
        elif isinstance(exc, SystemExit):
            reason = f"interrupted (exit code {exc.code})"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        log.error("run %s failed: %s", run_id, reason)
        fail_run(uri, run_id, reason + "\n" + "".join(traceback.format_exception(exc))[-3000:])
        raise
    MlflowClient(tracking_uri=uri).set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log a flat dict of params (values stringified, MLflow's 6000-char limit respected)."""
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri=uri)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}" + (
        f" --default-artifact-root {(sqlite_path(uri).parent / 'artifacts').as_uri()}" if sqlite_path(uri) else ""
    )
