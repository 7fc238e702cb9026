"""``opsd ui`` and ``opsd dashboard``: the MLflow UI and optuna-dashboard, checked before they start.

A server that cannot start is a user error like any other (one line, exit 2): the port is
checked to be a port, the host to resolve, the address to be free (by binding it once), and the
store or storage to exist, before the server is started; a mistyped store path would otherwise be
created empty and shown as "no runs" (``create=true`` asks for a new store). A server that stops
by itself (anything but Ctrl-C) is reported with exit 2 too: MLflow's exits 0 when its address is
taken.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass, field

from opsd_platform.config import ConfigError, TrackingConfig
from opsd_platform.errors import CLIError

# Optuna storage URL schemes optuna-dashboard can open (RDB storages; a journal file is a path).
DASHBOARD_SCHEMES = ("sqlite", "postgresql", "mysql")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"config error: port: must be in [1, 65535], got {port}")


@dataclass
class UIConfig:
    """`opsd ui`: the MLflow UI on a tracking store."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=5000, metadata={"help": "TCP port, 1-65535"})
    workers: int = field(default=1, metadata={"help": "server worker processes (MLflow's default, 4, costs ~1 GB each)"})
    create: bool = field(default=False, metadata={"help": "create the SQLite store if it does not exist"})

    def __post_init__(self) -> None:
        _check_port(self.port)
        if self.workers < 1:
            raise ConfigError(f"config error: workers: must be >= 1, got {self.workers}")


@dataclass
class DashboardConfig:
    """`opsd dashboard`: optuna-dashboard on an Optuna storage of this project."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage URL (default: optuna.db beside the SQLite MLflow store; the grid's queue: grid.db)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8080, metadata={"help": "TCP port, 1-65535"})

    def __post_init__(self) -> None:
        _check_port(self.port)


def check_address(host: str, port: int) -> None:
    """Refuse an address the server could not listen on: a host that does not resolve, a port taken."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"host={host}: not an address this machine can listen on ({exc})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
        except OSError as exc:
            raise ConfigError(
                f"port={port}: cannot listen on {host}:{port} ({exc.strerror}); pick another port=") from None


def ui_store(cfg: UIConfig) -> str:
    """The tracking URI the UI shows: it must exist unless ``create`` (see the module docstring)."""
    from opsd_platform import tracking

    uri = cfg.tracking.resolved_uri()
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file() and not cfg.create:
        raise ConfigError(f"tracking.uri={uri}: no MLflow store at {db}; check the path, or run a command that "
                          "records runs first (opsd train), or pass create=true for a new empty store")
    return uri


def serve(name: str, argv: list[str]) -> int:
    """Run a server in the foreground until Ctrl-C (exit 0); one that stops by itself is an error."""
    proc = subprocess.Popen(argv)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the server got the same Ctrl-C: let it shut down
        proc.wait()
        return 0
    raise CLIError(f"the {name} server stopped by itself (exit code {code}); see its messages above")


def run_ui(cfg: UIConfig) -> int:
    from opsd_platform import tracking

    uri = ui_store(cfg)
    check_address(cfg.host, cfg.port)
    tracking.init_store(uri)
    cmd = tracking.ui_command(uri).split()[1:] + ["--host", cfg.host, "--port", str(cfg.port),
                                                  "--workers", str(cfg.workers)]
    print(f"MLflow UI for {uri} at http://{cfg.host}:{cfg.port}  (Ctrl-C to stop)")
    return serve("MLflow UI", [sys.executable, "-m", "mlflow", *cmd])


def dashboard_storage(storage: str | None, tracking_uri: str | None) -> str:
    """The Optuna storage `opsd dashboard` shows: ``storage`` if given, else the search's default
    (beside the SQLite MLflow store). A SQLite file must exist: opening a missing one would create
    an empty database and show nothing, which reads like "no studies" instead of "wrong path"."""
    from opsd_platform import tracking

    if storage is None:
        from opsd_platform.search.study import default_storage

        storage = default_storage(TrackingConfig(uri=tracking_uri).resolved_uri())
    url = storage
    scheme = tracking.uri_scheme(url)
    if scheme not in DASHBOARD_SCHEMES:
        raise ConfigError(f"storage={tracking.shown_url(url)}: unsupported scheme {scheme or 'none'!r}; valid: "
                          f"{', '.join(DASHBOARD_SCHEMES)} (e.g. storage=sqlite:////abs/path/optuna.db)")
    if scheme == "sqlite":
        db = tracking.sqlite_path(url)
        if db is None or not db.is_file():
            raise ConfigError(f"storage: no Optuna database at {db or url}; run `opsd search` first, or give "
                              "storage=sqlite:////abs/path.db (the grid's queue: grid.db beside mlflow.db)")
    return url


def run_dashboard(cfg: DashboardConfig) -> int:
    from opsd_platform import tracking

    url = dashboard_storage(cfg.storage, cfg.tracking.uri)
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError(
            "opsd dashboard needs the `dashboard` extra: .venv/bin/pip install -e '.[dashboard]'") from None
    import optuna

    try:
        summaries = optuna.get_all_study_summaries(url, include_best_trial=False)
    except Exception as exc:  # not an Optuna database, a server that does not answer
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"storage={tracking.shown_url(url)}: cannot open: {first}") from None
    check_address(cfg.host, cfg.port)
    for s in summaries:
        print(f"  study {s.study_name}: {s.n_trials} trials")
    print(f"optuna-dashboard for {tracking.shown_url(url)} at http://{cfg.host}:{cfg.port}  (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(url, host=cfg.host, port=cfg.port)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # lost the address between the check and the start
        raise CLIError(f"optuna-dashboard cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    return 0
