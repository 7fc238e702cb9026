"""Every exception the platform raises on purpose, at the bottom of the layers (anyone may import it).

Two kinds:

- **User errors** (`UserError` and its subclasses): bad input or a missing prerequisite. The message
  is the whole story (the key, the file and line, the name and what exists), so `opsd` prints it as
  one line on stderr and exits 2, without a traceback. Each also derives from the builtin it used to
  be (`ValueError`, `LookupError`, `RuntimeError`), so code that catches those keeps working.
- **Control flow** inside a run or a search (`StopTraining`, `RunInterrupted`,
  `WorkerInterrupted`): not errors of the user; the training loop, the grid and the search catch them.

Every error is imported from here (``opsd_platform.law`` also names ``LawError``: the code of
already registered law models imports it from there). Internal failures (a sandbox
that cannot start, an import guard) stay where they are raised: they are bugs or broken machines,
not bad input, and they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite: printed as one line by the CLI, exit code 2."""


# ----------------------------------------------------------------------------- user errors


class ConfigError(UserError, ValueError):
    """A configuration value is wrong; the message names the field and the value."""


class CLIError(UserError):
    """A command line the commands cannot take (an override outside the command's sections, ...)."""


class WorldError(UserError, ValueError):
    """Bad world input (malformed dataset line, unknown split, ...). The message names the place."""


class ModelLoadError(UserError, RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


class TrackingError(UserError, RuntimeError):
    """The tracking store named by ``tracking.uri`` cannot be used; the message says why."""


class CheckpointError(ConfigError):
    """A checkpoint is missing or unusable; the message names it and lists what exists (a config
    error: `resume=` named it)."""


class LawError(UserError, ValueError):
    """Bad input for fitting or predicting with the gap law; the message says what and where."""


class RegistryError(UserError, LookupError):
    """A registered model name, alias or version that does not exist (the message lists what does)."""


class ExportError(ConfigError):
    """Nothing to export, or a table that cannot be merged: the message names the store or file."""


class CompareError(ConfigError):
    """Bad input or a missing prerequisite (law, GRPO rows): the message names it and the way out."""


# ----------------------------------------------------------------------------- control flow


class StopTraining(Exception):
    """Raised on purpose by the trial gate given to `train` (runs/gate.py: a search pruning the
    trial): training stops there, the run ends FINISHED with the reason in its
    ``stopped`` tag and without a final validation, so it has no ``improvement``."""


class RunInterrupted(RuntimeError):
    """Raised inside a run when the process receives SIGTERM, or when Lightning stops early; and out
    of `train` after Ctrl-C or SIGTERM closed a run FAILED, naming the run (``run_id``), the signal
    and the newest checkpoint's step (``checkpoint_step``, None: nothing to resume from)."""

    def __init__(self, message: str = "", *, run_id: str | None = None, signal: str = "SIGTERM",
                 checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.run_id, self.signal, self.checkpoint_step = run_id, signal, checkpoint_step

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal (128 + its number)."""
        return 130 if self.signal == "SIGINT" else 143


class WorkerInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a trial: the trial is re-queued and this worker stops."""


class NotTrained(Exception):
    """The demo's ranked walk (demo/ranked.py) asks for a training the demo does not run (its time
    budget, ``demo.max_train``): the walk ends there, and the message says why."""
