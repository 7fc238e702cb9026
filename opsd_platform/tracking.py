"""MLflow plumbing: the store, experiments, runs, and ending a run FAILED with its reason.

Defaults: a local SQLite store at ``$OPSD_HOME/mlflow.db`` (absolute path: MLflow refuses the
plain ``./mlruns`` file store) with artifacts beside it in ``$OPSD_HOME/artifacts``. Any tracking
server URI works the same.

Several processes may write to one SQLite store at once (calibration points, search workers):
``init_store`` creates or checks the schema under an exclusive file lock (``<db>.lock``), since
MLflow's schema migration run by two processes at once breaks the store; every other write
relies on the ``PRAGMA busy_timeout`` (20 s) MLflow sets on each SQLite session, which
``tests/search/test_concurrent.py`` shows to be enough (no "database is locked", nothing lost).

Every run carries the code it ran (``code_tags``): the git commit of the package's checkout as
MLflow's own ``mlflow.source.git.commit`` tag (the UI shows it), and ``opsd.code_dirty`` when the
tracked files differ from that commit. An installed copy outside a checkout carries neither.

A URI that cannot work fails once, early, as ``TrackingError`` naming ``tracking.uri`` and the
cause: a relative or uncreatable SQLite path, a plain directory / ``file:`` URI (MLflow's file
store, refused here), an unknown scheme, a tracking server that does not answer (checked with one
request instead of MLflow's minutes of retries), a database without its driver or unreachable.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from opsd_platform.errors import TrackingError

log = logging.getLogger(__name__)
# No network here (and none wanted from a training job): MLflow's usage telemetry stays off.

FAILURE_TAG = "failure_reason"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
# URIs this process has already created or checked (init_store does the work once per process).
_ready: set[str] = set()


def uri_scheme(uri: str) -> str:
    """The scheme of a store URI without its driver (``postgresql+psycopg2://`` -> postgresql)."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def check_uri(uri: str) -> None:
    """Refuse, without touching anything, a tracking URI of a kind that cannot work here."""
    if uri in OTHER_SCHEMES:  # "databricks" alone names the default profile
        return
    scheme = uri_scheme(uri)
    db = sqlite_path(uri)
    if scheme == "sqlite" and (db is None or not db.is_absolute()):
        raise TrackingError(f"tracking.uri={uri}: use an absolute sqlite path (sqlite:////abs/path/mlflow.db)")
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking.uri={uri}: a directory (MLflow's file store) is not supported; "
            "use sqlite:////abs/path/mlflow.db or a tracking server http(s)://host:port"
        )
    if scheme not in ("sqlite", *SERVER_SCHEMES, *DATABASE_SCHEMES, *OTHER_SCHEMES):
        raise TrackingError(
            f"tracking.uri={uri}: unsupported scheme {scheme!r}; valid: sqlite, "
            f"{', '.join(SERVER_SCHEMES + DATABASE_SCHEMES + OTHER_SCHEMES)}"
        )


def shown_url(url: str) -> str:
    """The URL with any password hidden (for messages and tags)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_server(uri: str, timeout_s: float = 10.0) -> None:
    """One request to a tracking server: MLflow itself retries a dead one for minutes."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (perhaps asking for credentials): MLflow takes it from here
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return  # MLflow's own TLS settings (MLFLOW_TRACKING_SERVER_CERT_PATH, ...) may differ
        raise TrackingError(f"tracking.uri={uri}: cannot reach the tracking server: {exc.reason}") from None
    except OSError as exc:  # a timeout, a reset connection
        raise TrackingError(f"tracking.uri={uri}: cannot reach the tracking server: {exc}") from None


def _check_database(uri: str) -> None:
    """One connection to a tracking database: MLflow retries a dead one for ~100 s."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
        with engine.connect():
            pass
    except ImportError as exc:
        raise TrackingError(
            f"tracking.uri={shown_url(uri)}: no database driver installed ({exc}); install it, or name a "
            "driver you have in the URI (e.g. postgresql+psycopg2://)"
        ) from None
    except Exception as exc:
        raise TrackingError(f"tracking.uri={shown_url(uri)}: cannot connect: {_first_line(exc)}") from None


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(uri: str, db: Path) -> None:
    """Refuse a file that is not an SQLite database, and a store we cannot write to, before MLflow
    tries: it retries an unwritable store for ~100 s and then raises a page of traceback."""
    try:
        with db.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        head = b""
    except OSError as exc:
        raise TrackingError(f"tracking.uri={uri}: cannot read {db}: {exc.strerror}") from None
    if head and head != SQLITE_HEADER:
        raise TrackingError(f"tracking.uri={uri}: {db} is not an SQLite database; name an MLflow store "
                            "(.../mlflow.db) or a file that does not exist yet")
    try:  # SQLite writes a journal beside the database: the directory must take new files
        with tempfile.TemporaryFile(dir=db.parent):
            pass
        if head:
            db.open("r+b").close()
    except OSError as exc:
        raise TrackingError(f"tracking.uri={uri}: cannot write to {db if head else db.parent}: {exc.strerror}; "
                            "point OPSD_HOME or tracking.uri at a writable place") from None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (filelock's, created if missing), released on exit. In a
    directory we cannot write to, no lock (and no one can be creating a database there)."""
    from filelock import FileLock

    if not os.access(path.parent, os.W_OK):
        yield
        return
    with FileLock(path):
        yield


def init_store(uri: str) -> MlflowClient:
    """Create (or upgrade) the tracking store's schema once; return a client on it.

    Safe to call from several processes at once on one SQLite file (see the module docstring).
    Raises TrackingError when the store cannot be used."""
    if uri in _ready:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    check_uri(uri)
    scheme, db = uri_scheme(uri), sqlite_path(uri)
    lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking.uri={uri}: cannot create directory {db.parent}: {exc.strerror}") from None
        if db.is_dir():
            raise TrackingError(f"tracking.uri={uri}: {db} is a directory; name the database file (.../mlflow.db)")
        _check_sqlite_file(uri, db)
        lock = file_lock(db.with_name(db.name + ".lock"))
    elif scheme in SERVER_SCHEMES:
        _check_server(uri)
    elif scheme in DATABASE_SCHEMES:
        _check_database(uri)
    # Quiet the schema-creation chatter of a new store (alembic's, and MLflow's "Creating initial
    # MLflow database tables...", which would precede any error message of the command).
    for chatty in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with lock:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            client.search_experiments(max_results=1)  # forces schema creation / check
        except Exception as exc:
            raise TrackingError(
                f"tracking.uri={shown_url(uri)}: cannot open the tracking store: {_first_line(exc)}") from None
    _ready.add(uri)
    return client


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created with artifacts next to a local SQLite store."""
    if not name.strip():
        raise TrackingError("tracking.experiment: must not be empty (default: opsd)")
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    db = sqlite_path(uri)
    if db is not None:
        artifact_location = (db.parent / "artifacts").as_uri()
    try:
        # MLflow 3 opens an experiment on its GenAI pages unless told it holds model training runs.
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@functools.lru_cache(maxsize=1)
def code_tags() -> dict[str, str]:
    """The commit of the checkout this package runs from, and whether its tracked files differ
    from it; {} outside a git checkout (an installed wheel, a container without .git)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "opsd.code_dirty": str(dirty).lower()}


def start_run(uri: str, experiment: str, run_name: str | None, tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    """Create a RUNNING run (nested under `parent_run_id` if given), tagged with the code it runs
    (`code_tags`); return its id."""
    client = init_store(uri)
    exp_id = ensure_experiment(client, uri, experiment)
    tags = {**code_tags(), **tags}
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

    # log_batch splits the list into requests of at most 100 params itself
    MlflowClient(tracking_uri=uri).log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}" + (
        f" --default-artifact-root {(sqlite_path(uri).parent / 'artifacts').as_uri()}" if sqlite_path(uri) else ""
    )
