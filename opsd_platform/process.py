"""``configure_process()``: the process-wide settings of an ``opsd`` process, made in one place.

Importing a module of the package changes nothing outside it. The entry points call this once,
first: ``cli.main`` (every ``opsd`` command, the grid's worker processes and DDP's other ranks,
which run ``opsd`` again), ``jobs.run_job`` (the MLproject's pipelines), the benchmarks' ``main``s,
and the test suite (tests/conftest.py). Calling it again changes nothing more, but for the log
levels of Lightning and Optuna, which set their own loggers to INFO when first imported (a level
set before is lost): so ``runs.train.setup_run`` (the start of every run, Lightning loaded) and
``search.search`` and ``grid.run_grid`` (the search's and the grid's workers, Optuna loaded) call
its last part, ``quiet_libraries``, again.
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
# Loggers that say too much at INFO: Lightning's ("GPU available: False", tips); the store's
# chatter would precede a command's one-line error.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "alembic", "mlflow", "httpx", "urllib3")


def configure_process(log_level: int = logging.INFO, optuna_level: int = logging.WARNING) -> None:
    """Environment, logging and warning filters for this process (module docstring); the caller's
    own ``os.environ`` values win (``setdefault``). optuna_level: Optuna's log level (a replay of
    thousands of simulated trials wants ERROR)."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Optuna's heartbeats and retry callback are "experimental": a warning per storage says nothing.
    # Matched by its messages, so that a process that never searches does not import Optuna for it.
    warnings.filterwarnings("ignore", message=r".*(is experimental \(supported from v|is an experimental feature)")
    quiet_libraries(optuna_level)


def quiet_libraries(optuna_level: int = logging.WARNING) -> None:
    """The QUIET_LOGGERS at WARNING, and Optuna's own level when Optuna is loaded (module docstring:
    called again once Lightning or Optuna is loaded, since each resets its loggers on import)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "optuna" in sys.modules:
        sys.modules["optuna"].logging.set_verbosity(optuna_level)
