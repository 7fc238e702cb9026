"""The gap law: improvement = a + b * gap, fitted across configurations, with honest intervals.

Modules, from the recorded runs to the registry: export (MLflow runs -> the benchmark table),
points (raw points -> one per configuration), fit (LawFit, fit_law), holdout (out-of-sample
checks), plot, registry (the law in the MLflow registry), pyfunc_model (its MLflow model),
pipeline (points collected, fitted, registered), calibrate (the calibration grid); settings (the
config dataclasses of these commands) and names (the registry's names, the methods) import no
pandas or MLflow, so the CLI checks a command line before paying for them.

A *configuration* (string key, e.g. ``"smollm2/arithmetic/reference"``) is trained with several
seeds; each training run is one raw point with columns ``config``, ``seed``, ``gap`` (initial
self-teacher minus student pass rate; may be negative) and ``improvement`` (final minus initial
validation pass rate), plus grouping columns (``context``, ``world``, ``family``) and optional
numeric covariates (``model_params``, ``context_tokens``, ``steps`` ...).

As in the paper, the law is fitted on one point per configuration (the mean over its seeds).
Unlike the paper, this module also gives what a referee asked for: prediction intervals for a new
configuration, leave-one-configuration-out and held-out-group error, a test that families share a
slope, and covariates as extra regressors (confounder check).

Fitting uses statsmodels; the resulting :class:`LawFit` keeps only plain numbers (coefficients,
their covariance, sigma^2, residual degrees of freedom), so predicting with intervals needs only
numpy/scipy, reproduces statsmodels' ``get_prediction(x).summary_frame(alpha)`` ``obs_ci_*``
exactly, and round-trips through JSON (the registered MLflow model is built from ``to_dict()``).
"""

import importlib

# Loaded on first use (PEP 562), as in opsd_platform.search: importing opsd_platform.law.settings
# (the CLI's config check) must not import pandas and statsmodels through this package.
_EXPORTS = {
    "fit": ["LawFit", "fit_law"],
    "holdout": ["family_slopes", "grouped_holdout", "leave_one_out"],
    "names": ["METHODS"],
    "points": ["FORMAT_VERSION", "GROUP_COLUMNS", "REQUIRED_COLUMNS", "WLS_VARIANCE_FLOOR_FRACTION", "LawError",
               "aggregate"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    try:  # a submodule reached as an attribute (``law.holdout.check_law``), as when this file imported them all
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":  # the submodule exists but something it imports does not
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
