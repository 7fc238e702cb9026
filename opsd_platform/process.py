"""``configure_process()``: the process-wide settings of an ``opsd`` process, made in one place.

Importing a module of the package changes nothing outside it. The entry points call this once,
first: ``cli.main`` (every ``opsd`` command, the grid's worker processes and DDP's other ranks,
which run ``opsd`` again), ``jobs.run_job`` (the MLproject's pipelines), the benchmarks' ``main``s,
and the test suite (tests/conftest.py). Calling it again changes nothing more, but for Optuna's
log level, which can only be set once Optuna is loaded: ``search.search`` and ``grid.run_grid``
(the search's and the grid's workers) call it again as they start.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Environment read by the libraries when they are first used: set before they are imported.
ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # never reach for the Hub: it is not reachable here
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one download per law load or exported run: no bars
}
# Loggers that say too much at INFO: Lightning sets its own to INFO on import ("GPU available:
# False", tips); the store's chatter would precede a command's one-line error.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "alembic", "mlflow", "httpx", "urllib3")


def configure_process(log_level: int = logging.INFO, optuna_level: int = logging.WARNING) -> None:
    """Environment, logging and warning filters for this process (module docstring); the caller's
    own ``os.environ`` values win (``setdefault``). optuna_level: Optuna's log level (a replay of
    thousands of simulated trials wants ERROR)."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Optuna's heartbeats and retry callback are "experimental": a warning per storage says nothing.
    # Matched by its message, so that a process that never searches does not import Optuna for it.
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from v")
    quiet_optuna(optuna_level)


def quiet_optuna(level: int = logging.WARNING) -> None:
    """Optuna's own log level (it resets its logger to INFO when first imported, so a setting made
    before that is lost): applied now when Optuna is loaded; the search and the grid, which import
    it, call configure_process() again as their workers start."""
    if "optuna" in sys.modules:
        sys.modules["optuna"].logging.set_verbosity(level)
