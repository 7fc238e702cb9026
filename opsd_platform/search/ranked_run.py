"""The live ranked search (``opsd search search.strategy=ranked``): ``ranked.RankedPolicy`` driven
by ``ranked.drive`` over real trials of an Optuna study, as the replay drives it over the table.

The candidates are the choices of the space's ``context`` key (a space that samples other keys as
well is refused: the law ranks contexts; search those keys with ``search.strategy=pruned``). Each
step is one Optuna trial, enqueued (``Study.enqueue_trial``) with its context and recorded with
the policy's decision (user attributes ``ranked.*``, tags on its MLflow run):

- ``measure``: a trial that measures the context's gap and stops before training (state PRUNED,
  ``ranked.phase=gap``); the student side of the gap is shared as in any trial;
- ``train``: a trial that trains the context (``gap.enabled=false``: its gap is already known);
  under the curve-based pruner (the study's ``SuccessiveHalvingPruner``, per-step rollout pass
  rate as in ``search.pruner=median``) when the policy says the law may not decide;
- ``stop``: no trial; the decision (which contexts were left, why) is on the parent run.

The prior (``search.prior_law=models:/<name>@<alias>``) is loaded and checked before the study
exists: a model or alias that is not there, or a law fitted on another world than the search's
(without ``search.prior_law_force=true``), is a ConfigError (one line, exit 2, no trial started).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import optuna

from opsd_platform import tracking
from opsd_platform.config import ConfigError
from opsd_platform.config.compose import train_config
from opsd_platform.search.objective import MlflowTrialCallback, StepReporter
from opsd_platform.search.ranked import RankedPolicy, RankedSettings, Step, drive
from opsd_platform.search.settings import SearchConfig
from opsd_platform.search.space import load_space
from opsd_platform.search.study import StudyHandle, prepare


def parse_prior(text: str) -> tuple[str, str]:
    name, _, alias = text[len("models:/"):].partition("@")
    if not name or not alias:
        raise ConfigError(f"search.prior_law: must be models:/<name>@<alias>, got {text!r}")
    return name, alias


def worlds_of(fit: Any) -> set[str]:
    """The worlds a law was fitted on, from its configuration labels (<family>/<world>/<context>)."""
    return {c.split("/")[1] for c in fit.configs if c.count("/") >= 2}


def load_prior(settings: SearchConfig, uri: str, world: str):
    """(LawFit, LawCheck, label) of ``search.prior_law``, or None; ConfigError when it cannot be used."""
    from opsd_platform.law.registry import RegistryError, alias_version, load_law
    from opsd_platform.law.usable import check_from_tags

    if settings.prior_law is None:
        return None
    name, alias = parse_prior(settings.prior_law)
    try:
        client = tracking.init_store(uri)
        version = alias_version(client, name, alias)
        fit = load_law(uri, name, alias).unwrap_python_model().fit
    except RegistryError as exc:
        raise ConfigError(f"search.prior_law={settings.prior_law}: {exc}") from None
    fitted_on = worlds_of(fit)
    if fitted_on and world not in fitted_on and not settings.prior_law_force:
        raise ConfigError(f"search.prior_law={settings.prior_law} (v{version}) was fitted on world {', '.join(sorted(fitted_on))}; "
                          f"this search is on {world} (search.prior_law_force=true to use it anyway)")
    check = check_from_tags(fit, client.get_model_version(name, version).tags or {})
    return fit, check, f"prior {name} v{version} (@{alias})"


def context_choices(settings: SearchConfig) -> list[str]:
    space = load_space(settings.space)
    keys = [p.key for p in space]
    if keys != ["context"] or space[0].type != "categorical":
        raise ConfigError(f"search.strategy=ranked: the space {settings.space!r} samples {', '.join(keys)}; the ranked search "
                          "ranks the choices of one categorical key, context (e.g. search.space=contexts)")
    return [str(c) for c in space[0].choices]


class LiveSteps:
    """measure / train / stop as real trials of the study (module docstring)."""

    def __init__(self, handle: StudyHandle, progress: Callable[[str], None]) -> None:
        self.h, self.progress = handle, progress
        self.record = MlflowTrialCallback(handle)

    def _trial(self, key: str, step: Step, phase: str) -> optuna.trial.FrozenTrial:
        attrs = {"ranked.phase": phase, "ranked.rule": step.rule, "ranked.reason": step.reason, "ranked.law": step.law,
                 "ranked.curve": step.curve}
        self.h.study.enqueue_trial({"context": key}, user_attrs=attrs)
        self.h.study.optimize(lambda t: self.objective(t, phase, step), n_trials=1, catch=(), callbacks=[self.record])
        frozen = self.h.study.get_trials(deepcopy=False)[-1]
        self.progress(f"trial #{frozen.number} {phase} {key}: {frozen.state.name.lower()}"
                      + (f", improvement {frozen.value:+.3f}" if frozen.value is not None else "")
                      + (f", gap {frozen.user_attrs['gap']:+.3f}" if frozen.user_attrs.get("gap") is not None else "")
                      + f" ({step.reason})")
        return frozen

    def objective(self, trial: optuna.Trial, phase: str, step: Step) -> float:
        from opsd_platform.training.train import StopTraining, train

        h = self.h
        context = trial.suggest_categorical("context", context_choices(h.settings))
        extra = [f"context={context}", f"gap.enabled={'true' if phase == 'gap' else 'false'}",
                 f"tracking.run_name=trial-{trial.number}-{phase}-{context}", "trainer.progress_bar=false"]
        cfg = train_config([*h.base_overrides, *extra])
        tags = {"search.study": h.name, "search.trial": str(trial.number), "search.strategy": "ranked",
                "ranked.phase": phase, "ranked.rule": step.rule, "ranked.law": str(step.law), "ranked.reason": step.reason[:4000]}

        def after_gap(run_id: str, gap) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.set_user_attr("gap", float(gap.gap))
            trial.set_user_attr("cost.gap_seconds", float(gap.seconds))
            raise StopTraining("ranked search, phase 1: the gap is measured; this context trains later if it ranks")

        reporter = StepReporter(trial, h.settings.median_window, step.curve, h.tracking_uri)
        result = train(cfg, parent_run_id=h.parent_run_id, extra_tags=tags, after_gap=after_gap if phase == "gap" else None,
                       callbacks=[reporter])
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("cost.seconds", float(result.seconds))
        trial.set_user_attr("cost.tokens", int(result.tokens_generated))
        if result.stopped is not None:
            raise optuna.TrialPruned(result.stopped)
        return float(result.improvement)

    def measure(self, key: str, step: Step) -> float:
        frozen = self._trial(key, step, "gap")
        if frozen.user_attrs.get("gap") is None:
            raise RuntimeError(f"ranked search: the gap trial #{frozen.number} of {key} measured no gap ({frozen.state.name})")
        return float(frozen.user_attrs["gap"])

    def train(self, key: str, step: Step) -> tuple[float | None, bool]:
        frozen = self._trial(key, step, "train")
        complete = frozen.state == optuna.trial.TrialState.COMPLETE
        return (float(frozen.value) if complete else None), complete

    def stop(self, step: Step) -> None:
        self.progress(f"{step.reason}; not trained: {', '.join(step.keys)}")


def decisions_table(policy: RankedPolicy) -> list[dict[str, Any]]:
    return [{"step": i, "kind": s.kind, "keys": list(s.keys), "rule": s.rule, "law": s.law, "curve": s.curve,
             "predicted": s.predicted, "lower": s.lower, "upper": s.upper, "bar": s.bar, "reason": s.reason}
            for i, s in enumerate(policy.steps)]


def run_ranked_search(base_overrides: Sequence[str], settings: SearchConfig, progress: Callable[[str], None] = print):
    """One live ranked search to the end, reported like any search (a run.SearchResult, with the
    policy as ``.policy``). Everything the prior needs is checked before the study and its parent
    run exist."""
    from mlflow.tracking import MlflowClient

    from opsd_platform.search.run import SearchResult, finalize

    contexts = context_choices(settings)
    base_cfg = train_config(list(base_overrides))
    prior = load_prior(settings, base_cfg.tracking.resolved_uri(), base_cfg.world.name)
    handle = prepare(base_overrides, settings)
    fit, check, label = prior if prior is not None else (None, None, "prior")
    policy = RankedPolicy([(c, c) for c in contexts], fit, check, label, RankedSettings(level=settings.level))
    progress(f"ranked search over {len(contexts)} contexts ({', '.join(contexts)}); {policy.notes[-1]}")
    steps = LiveSteps(handle, progress)
    drive(policy, steps.measure, steps.train, steps.stop)
    for note in policy.notes:
        progress(f"law: {note}")
    client = MlflowClient(tracking_uri=handle.tracking_uri)
    client.log_dict(handle.parent_run_id, {"notes": policy.notes, "decisions": decisions_table(policy)}, "ranked/decisions.json")
    client.set_tag(handle.parent_run_id, "ranked.law", json.dumps(policy.notes)[:4000])
    report = finalize(handle, progress)
    result = SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url,
                          len(handle.study.trials), True, report, handle)
    result.policy = policy  # every decision, in order (ranked.Step)
    return result
