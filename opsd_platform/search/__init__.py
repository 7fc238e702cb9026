"""`opsd search`: an Optuna study over OPSD configurations, pruned by the registered gap law.

Pieces, in the order a trial meets them (modules: settings, space, study, objective, gate, run, pruner,
report, compare; and grid.py, the recorded benchmark's grid on the same storage):

- **Space** (``conf/search/<name>.yaml`` or a path; ``load_space``): training-config keys with
  their distributions, sampled in order, optionally only ``when`` earlier keys have given values.
- **Trial config**: the base config (the user's overrides composed once by Hydra's compose API,
  ``study.search_base``, exactly as ``opsd train`` would compose them) with the sampled values set
  (``compose.with_overrides``: typed and validated, not composed again). Optuna is driven
  directly (Hydra's Optuna sweeper cannot prune inside a trial and pins an old Optuna).
- **Trial**: one ``train()`` run nested under the study's parent MLflow run. With the law pruner
  it first measures the initial gap; ``GapLawPruner`` (pruner.py) then decides (a GRPO trial,
  ``algorithm`` being a key like any other, measures no gap and is never pruned by the law,
  which predicts OPSD only: its decision, rule ``not_opsd``, is recorded as training starts); a
  pruned trial stops there (its run ends FINISHED with tag ``stopped``, the predicted improvement and its
  interval as metrics, and no ``improvement``). With ``MedianPruner`` each step reports an
  intermediate value (``gate.SearchGate.on_step``) and a pruned trial stops mid-training.
- **Callbacks** (ours; the optuna-integration MLflow callback is deprecated and logs a pruned
  trial's last intermediate value as if final): the trial's run gets its Optuna state, decision,
  tokens and seconds; the parent run the running best; every trial has exactly one run (one is
  created, FAILED, for a trial that died before training started).
- **Learning loop**: after every ``refit_every`` completed trials the law is refitted on all
  finished points of the experiment (calibration runs + completed trials), registered as
  ``@challenger`` and promoted when its hold-out RMSE is lower (registry.promote). Each trial
  records which law version decided it (``pruner.law_version``).
- **Storage and workers**: an Optuna RDB storage (SQLite file by default, beside a SQLite MLflow
  store; a PostgreSQL URL for many workers on many machines). ``prepare`` creates the schema,
  the study and the parent run once; any number of ``opsd search`` processes with the same
  overrides then share the study. Heartbeats mark a trial whose worker died FAILED after
  ``grace_period`` seconds; it is re-queued (``RetryHeartbeatStaleTrialCallback``, Optuna 5's
  name for ``RetryFailedTrialCallback``) and run by any worker. A trial stopped by Ctrl-C or
  SIGTERM is re-queued the same way. A worker stops when ``n_trials`` trials are accounted for
  (completed, pruned, or failed without a retry) and none is running or waiting, so a crashed
  study resumes by running the same command again.
- **Compute accounting and report** (report.py): tokens and seconds per trial and in
  total, the saving against training every trial fully (estimated for pruned trials from their
  measured gap, see ``report``), an HTML report, a table and plots on the parent run.
  ``search.compare=true`` runs the same search three ways (law pruning, MedianPruner, none) on
  the same per-trial-seeded configurations and measures the saving, the best configuration each
  found and the false-prune rate against the unpruned arm (``compare``).

**Ranked search** (``search.strategy=ranked``; ranked.py the policy, ranked_run.py the live
driver): the law ranks the space's contexts by predicted improvement, from a prior law
(``search.prior_law=models:/<name>@<alias>``) or the study's own fit, trains the most promising
first and stops when every waiting context's upper bound is below the incumbent; a law that may
not decide (law.holdout.check_law) is not used and the curve-based pruner searches alone. The
trials left of ``n_trials`` then sample the space's other keys inside the best contexts, under
the curve-based pruner (successive halving or Hyperband), in the same study.

Known limits: two workers that ask for a new trial at the same instant may together start up to
(workers - 1) trials more than ``n_trials``; none is lost or run twice.
"""

import importlib

# Loaded on first use (PEP 562): `opsd search`'s config (settings.py) must be checked without
# importing the objective, which imports Lightning and torch (seconds before a typo is reported).
_EXPORTS = {
    "compare": ["Comparison", "compare"], "objective": ["Objective"], "run": ["SearchResult", "run_search", "run_worker"],
    "settings": ["PRUNERS", "SAMPLERS", "SearchConfig"],
    "space": ["TrialSeededSampler", "load_space", "parse_space", "sample", "to_overrides"],
    "study": ["SearchBase", "StudyHandle", "default_storage", "open_storage", "prepare", "search_base"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_MODULE_OF, "search"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def search(base, settings, progress=print):
    """`opsd search` from its base (a study.SearchBase: the command line composed once): one study run
    to the end (a SearchResult), or with ``search.compare=true`` the same study three ways (a Comparison)."""
    from opsd_platform.process import quiet_libraries
    from opsd_platform.search.compare import compare
    from opsd_platform.search.run import run_search

    quiet_libraries()  # again, now that Optuna is loaded: its log level (process.py)
    if settings.compare:
        return compare(base, settings, progress)
    if settings.strategy == "ranked":
        from opsd_platform.search.ranked_run import run_ranked_search

        return run_ranked_search(base, settings, progress)
    return run_search(base, settings, progress)
