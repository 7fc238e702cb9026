"""The live ranked search (``opsd search search.strategy=ranked``): ``ranked.RankedPolicy`` driven by
``ranked.drive`` over real trials of one Optuna study, as the replay drives it over the table, then
the inner phase in the same study.

**The space.** A categorical ``context`` key (the candidates the law ranks) and, optionally, other
keys (learning rate, loss, teacher...), which the law cannot see: it was fitted across contexts at
fixed other settings. The ranked phase trains every context at the base configuration's values of
those keys; the inner phase searches them.

**The ranked phase.** Each step of the policy is one Optuna trial, enqueued
(``Study.enqueue_trial``) with its context and recorded with the policy's decision (user attributes
``ranked.*``, tags on its MLflow run):

- ``measure``: a trial that measures the context's gap and stops before training (state PRUNED,
  ``ranked.phase=gap``); the student side of the gap is shared as in any trial;
- ``train``: a trial that trains the context (``gap.enabled=false``: its gap is already known);
  under the curve-based pruner when the policy says no law may decide (yet);
- ``stop``: no trial; the decision (which contexts were left, why) is on the parent run.

**The inner phase.** What is left of ``search.n_trials`` after the ranked phase samples the other
keys (the study's sampler) inside the chosen contexts: the ``search.inner_contexts`` best by
measured improvement (``ranked.chosen_contexts``; several are taken in turn), each trial enqueued
with its context fixed (``ranked.phase=inner``) and trained under the curve-based pruner.

**The curve-based pruner** is the study's own (``search.curve_pruner``: Optuna's
``SuccessiveHalvingPruner`` or ``HyperbandPruner``, study.curve_pruner), fed the per-step running
rollout pass rate (gate.SearchGate.on_step, as ``search.pruner=median``). Every training of the
study reports to it, the ranked phase's included, so an inner trial must keep up at each rung with
the contexts' full trainings, not only with the other inner trials.

The prior (``search.prior_law=models:/<name>@<alias>``) is loaded and checked before the study
exists: a model or alias that is not there, or a law fitted on another world than the search's
(without ``search.prior_law_force=true``), is a ConfigError (one line, exit 2, no trial started).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from opsd_platform.search.ranked import RankedPolicy, RankedSettings, Step, chosen_contexts, drive

GAP, TRAIN_PHASE, INNER = "gap", "train", "inner"


def parse_prior(text: str) -> tuple[str, str]:
    from opsd_platform.config import ConfigError

    name, _, alias = text[len("models:/"):].partition("@")
    if not name or not alias:
        raise ConfigError(f"search.prior_law: must be models:/<name>@<alias>, got {text!r}")
    return name, alias


def worlds_of(fit: Any) -> set[str]:
    """The worlds a law was fitted on, from its configuration labels (<family>/<world>/<context>)."""
    return {c.split("/")[1] for c in fit.configs if c.count("/") >= 2}


def load_prior(settings: Any, uri: str, world: str):
    """(LawFit, LawCheck, label) of ``search.prior_law``, or None; ConfigError when it cannot be used."""
    from opsd_platform import tracking
    from opsd_platform.config import ConfigError
    from opsd_platform.errors import RegistryError
    from opsd_platform.law.holdout import check_from_tags
    from opsd_platform.law.registry import alias_version, load_law

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
        raise ConfigError(f"search.prior_law={settings.prior_law} (v{version}) was fitted on world "
                          f"{', '.join(sorted(fitted_on))}; "
                          f"this search is on {world} (search.prior_law_force=true to use it anyway)")
    check = check_from_tags(fit, client.get_model_version(name, version).tags or {})
    return fit, check, f"prior {name} v{version} (@{alias})"


def ranked_space(settings: Any) -> tuple[list[str], list[str]]:
    """(the contexts the law ranks, the other keys the inner phase samples) of ``search.space``."""
    from opsd_platform.config import ConfigError
    from opsd_platform.search.space import load_space

    space = load_space(settings.space)
    context = [p for p in space if p.key == "context"]
    if not context or context[0].type != "categorical" or context[0].when:
        raise ConfigError(f"search.strategy=ranked: the space {settings.space!r} has no unconditional categorical key "
                          f"'context' (keys: {', '.join(p.key for p in space)}); the law ranks its choices "
                          "(e.g. search.space=contexts)")
    return [str(c) for c in context[0].choices], [p.key for p in space if p.key != "context"]


class LiveSteps:
    """measure / train / stop as real trials of the study, and the inner phase's trials (module docstring)."""

    def __init__(self, handle: Any, progress: Callable[[str], None]) -> None:
        from opsd_platform.search.objective import MlflowTrialCallback

        self.h, self.progress = handle, progress
        self.record = MlflowTrialCallback(handle)
        self.contexts, self.others = ranked_space(handle.settings)

    def _trial(self, key: str, step: Step, phase: str):
        attrs = {"ranked.phase": phase, "ranked.rule": step.rule, "ranked.reason": step.reason, "ranked.law": step.law,
                 "ranked.curve": step.curve}
        self.h.study.enqueue_trial({"context": key}, user_attrs=attrs)
        self.h.study.optimize(lambda t: self.objective(t, phase, step), n_trials=1, catch=(), callbacks=[self.record])
        frozen = self.h.study.get_trials(deepcopy=False)[-1]
        inner = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in frozen.params.items() if k != "context")
        self.progress(f"trial #{frozen.number} {phase} {key}{f' [{inner}]' if inner else ''}: "
                      f"{frozen.state.name.lower()}"
                      + (f", improvement {frozen.value:+.3f}" if frozen.value is not None else "")
                      + (f", gap {frozen.user_attrs['gap']:+.3f}" if frozen.user_attrs.get("gap") is not None else "")
                      + f" ({step.reason})")
        return frozen

    def objective(self, trial: Any, phase: str, step: Step) -> float:
        import optuna

        from opsd_platform.config.compose import with_overrides
        from opsd_platform.runs.train import train
        from opsd_platform.search.gate import GapOnlyGate, SearchGate
        from opsd_platform.search.space import sample, to_overrides

        h = self.h
        if phase == INNER:  # the context is enqueued; the sampler draws the other keys
            params = sample(trial, h.space, h.base_values)
            context = trial.params["context"]
        else:  # the ranked phase: the context alone, the other keys at the base configuration's values
            context = trial.suggest_categorical("context", self.contexts)
            params = {"context": context}
        trial.set_user_attr("overrides", to_overrides(params))  # as strings: what the dashboard and the report show
        cfg = with_overrides(h.base.config, {**params, "gap.enabled": phase == GAP, "trainer.progress_bar": False,
                                             "tracking.run_name": f"trial-{trial.number}-{phase}-{context}"})
        tags = {"search.study": h.name, "search.trial": str(trial.number), "search.strategy": "ranked",
                "ranked.phase": phase, "ranked.rule": step.rule, "ranked.law": str(step.law),
                "ranked.reason": step.reason[:4000]}
        gate = GapOnlyGate(trial) if phase == GAP else SearchGate(
            trial, cfg, law=False, curve=step.curve, window=h.settings.median_window, tracking_uri=h.tracking_uri)
        result = train(cfg, parent_run_id=h.parent_run_id, extra_tags=tags, gate=gate)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("cost.seconds", float(result.seconds))
        trial.set_user_attr("cost.tokens", int(result.tokens_generated))
        if result.stopped is not None:
            raise optuna.TrialPruned(result.stopped)
        return float(result.improvement)

    def measure(self, key: str, step: Step) -> float:
        frozen = self._trial(key, step, GAP)
        if frozen.user_attrs.get("gap") is None:
            raise RuntimeError(f"ranked search: the gap trial #{frozen.number} of {key} measured no gap "
                               f"({frozen.state.name})")
        return float(frozen.user_attrs["gap"])

    def train(self, key: str, step: Step) -> tuple[float | None, bool]:
        frozen = self._trial(key, step, TRAIN_PHASE)
        complete = frozen.state.name == "COMPLETE"
        return (float(frozen.value) if complete else None), complete

    def stop(self, step: Step) -> None:
        self.progress(f"{step.reason}; not trained: {', '.join(step.keys)}")

    def inner(self, policy: RankedPolicy) -> list[dict[str, Any]]:
        """The inner phase (module docstring): one row per trial (or one row saying why none ran)."""
        s = self.h.settings
        left = s.n_trials - len(self.h.study.trials)
        chosen = chosen_contexts(policy, s.inner_contexts)
        why = ("the space samples no other key" if not self.others else
               f"no trial left of search.n_trials={s.n_trials} after the ranked phase's {len(self.h.study.trials)}"
               if left <= 0 else "no context was trained to the end" if not chosen else None)
        if why is not None:
            self.progress(f"inner phase: none ({why})")
            return [{"skipped": why}]
        self.progress(f"inner phase: {left} trials sample {', '.join(self.others)} inside {', '.join(chosen)} "
                      f"(the best {len(chosen)} by measured improvement), under {s.curve_pruner}")
        rows = []
        for i in range(left):
            context = chosen[i % len(chosen)]
            step = Step(TRAIN_PHASE, (context,), INNER, f"inner: {', '.join(self.others)} sampled inside {context} "
                        f"(rank {chosen.index(context) + 1} by measured improvement); {s.curve_pruner}", curve=True)
            frozen = self._trial(context, step, INNER)
            rows.append({"trial": frozen.number, "context": context, "params": dict(frozen.params),
                         "state": frozen.state.name.lower(), "value": frozen.value})
        return rows


def decisions_table(policy: RankedPolicy) -> list[dict[str, Any]]:
    return [{"step": i, "kind": s.kind, "keys": list(s.keys), "rule": s.rule, "law": s.law, "curve": s.curve,
             "predicted": s.predicted, "lower": s.lower, "upper": s.upper, "bar": s.bar, "reason": s.reason}
            for i, s in enumerate(policy.steps)]


def run_ranked_search(base: Any, settings: Any, progress: Callable[[str], None] = print):
    """One live ranked search to the end, reported like any search (a run.SearchResult, with the
    policy as ``.policy`` and the inner phase's trials as ``.inner``). Everything the prior needs is
    checked before the study and its parent run exist."""
    from mlflow.tracking import MlflowClient

    from opsd_platform.search.run import SearchResult, finalize
    from opsd_platform.search.study import prepare

    contexts, _ = ranked_space(settings)
    prior = load_prior(settings, base.config.tracking.resolved_uri(), base.config.world.name)
    handle = prepare(base, settings)
    fit, check, label = prior if prior is not None else (None, None, "prior")
    policy = RankedPolicy([(c, c) for c in contexts], fit, check, label, RankedSettings(level=settings.level))
    progress(f"ranked search over {len(contexts)} contexts ({', '.join(contexts)}); {policy.notes[-1]}")
    steps = LiveSteps(handle, progress)
    drive(policy, steps.measure, steps.train, steps.stop)
    for note in policy.notes:
        progress(f"law: {note}")
    inner = steps.inner(policy)
    client = MlflowClient(tracking_uri=handle.tracking_uri)
    client.log_dict(handle.parent_run_id, {"notes": policy.notes, "decisions": decisions_table(policy), "inner": inner},
                    "ranked/decisions.json")
    client.set_tag(handle.parent_run_id, "ranked.law", json.dumps(policy.notes)[:4000])
    report = finalize(handle, progress)
    result = SearchResult(handle.name, handle.parent_run_id, handle.tracking_uri, handle.storage_url,
                          len(handle.study.trials), True, report, handle)
    result.policy = policy  # every decision, in order (ranked.Step)
    result.inner = inner
    return result
