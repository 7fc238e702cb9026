"""The search's law kept in memory, for callers that run many searches in one process (the replay of
the recorded table, benchmarks/pruning.py): the learning loop of objective.LearningLoop (a first
law; after every ``refit_every`` completed trials a challenger fitted on every point, promoted by
the registry's own rule, law.promotion) without a registry, and the law pruner that reads it.

``LawMemory`` holds the points (the first law's, then each completed trial's), the versions it
fitted and the champion; ``MemoryLawPruner`` is ``GapLawPruner`` (the same ``decide_policy``)
whose ``law_view`` is the champion in memory. Predictions go through ``LawFit.predict_arrays``
(the numpy form of ``LawFit.predict``, equal to it, tested), refits through
``law.holdout.fit_and_check`` (OLS in numpy) or, for the other methods, ``fit_law`` and
``leave_one_out`` as ``opsd fit-law`` computes them.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from opsd_platform.errors import RegistryError
from opsd_platform.law import LawError, LawFit, fit_law
from opsd_platform.law.holdout import LawCheck, check_points, fit_and_check
from opsd_platform.law.promotion import PROMOTED, Standing, promotion
from opsd_platform.search.pruner import GapLawPruner, LawView

Fitted = tuple[LawFit, "float | None", LawCheck]  # a law, its leave-one-out RMSE, may it decide


def array_view(version: int, fit: LawFit, check: LawCheck | None = None) -> LawView:
    """``LawView.of_fit`` without pandas: ``LawFit.predict_arrays``, for the many predictions of a replay."""
    return LawView(int(version), ("gap", *fit.covariates), fit.predict_arrays, check)


def first_law(points: pd.DataFrame, *, level: float, method: str = "ols",
              covariates: Sequence[str] = ()) -> Fitted | None:
    """The law `opsd fit-law` would fit on `points` (its RMSE and verdict), or None (no point, unfittable)."""
    from opsd_platform.law import leave_one_out

    if len(points) == 0:
        return None
    kwargs = dict(method=method, covariates=list(covariates), level=level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit, rmse = fit_law(points, **kwargs), leave_one_out(points, **kwargs)["rmse"]
    except LawError:
        return None
    rmse = float(rmse) if rmse == rmse else None
    return fit, rmse, check_points(points, fit, loo_rmse=rmse, **kwargs)


class LawMemory:
    """The law of one search in memory (module docstring). `points`: the first law's points
    (config, seed, gap, improvement, covariates); `first`: their ``first_law``, when the caller
    already has it (a replay fits it once for all its searches)."""

    def __init__(self, points: pd.DataFrame, *, level: float, refit_every: int, method: str = "ols",
                 covariates: Sequence[str] = (), first: Fitted | None | str = "fit") -> None:
        self.level, self.refit_every, self.method = level, refit_every, method
        self.covariates = tuple(covariates)
        self.config_ids: dict[str, int] = {}
        self.config = [self._id(c) for c in points.get("config", [])]
        self.keys = list(points.get("seed", []))
        self.gap = points["gap"].tolist() if len(points) else []
        self.improvement = points["improvement"].tolist() if len(points) else []
        self.covs = ([[float(row[c]) for c in self.covariates] for _, row in points.iterrows()] if self.covariates
                     else [[] for _ in self.gap])
        self.version, self.champion, self.champion_rmse, self._view = 0, None, None, None
        self.n_complete = 0
        if isinstance(first, str):
            first = first_law(points, level=level, method=method, covariates=self.covariates)
        if first is not None:
            self._register(*first)

    def _id(self, config: str) -> int:
        return self.config_ids.setdefault(config, len(self.config_ids))

    def _refit(self) -> Fitted | None:
        try:
            if self.method == "ols":
                return fit_and_check(np.asarray(self.config), self.gap, self.improvement, self.level, self.covs,
                                     self.covariates)
        except LawError:
            return None
        points = pd.DataFrame({"config": self.config, "seed": self.keys, "gap": self.gap,
                               "improvement": self.improvement,
                               **{c: [row[j] for row in self.covs] for j, c in enumerate(self.covariates)}})
        return first_law(points, level=self.level, method=self.method, covariates=self.covariates)

    def _register(self, fit: LawFit, rmse: float | None, check: LawCheck) -> None:
        """A new version; it becomes the champion by law.promotion's rule (a law that may not decide never does)."""
        self.version += 1
        champion = None if self.champion is None else Standing(str(self._view.version), self.champion_rmse)
        decision, _ = promotion(Standing(str(self.version), rmse, usable=check.usable), champion)
        if decision == PROMOTED:
            self.champion, self.champion_rmse = fit, rmse
            self._view = array_view(self.version, fit)

    def add(self, config: str, key: str, gap: float, improvement: float, covariates: dict[str, float]) -> None:
        """A completed trial: a new point; refit every `refit_every` completions."""
        self.config.append(self._id(config))
        self.keys.append(key)
        self.gap.append(gap)
        self.improvement.append(improvement)
        self.covs.append([covariates[c] for c in self.covariates])
        self.n_complete += 1
        if self.refit_every and self.n_complete % self.refit_every == 0:
            fitted = self._refit()
            if fitted is not None:
                self._register(*fitted)

    def view(self) -> LawView:
        if self._view is None:
            raise RegistryError("no law yet: the first law's points are missing, unfittable or may not decide, "
                                "and no refit may")
        return self._view


class MemoryLawPruner(GapLawPruner):
    """GapLawPruner with its law in memory: the same ``decide_policy``, another ``law_view``."""

    def __init__(self, memory: LawMemory, **kwargs: Any) -> None:
        super().__init__("memory://search", **kwargs)
        self.memory = memory

    def law_view(self) -> LawView:
        return self.memory.view()
