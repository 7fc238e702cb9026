"""GapLawPruner: stop an OPSD trial before it trains when the registered gap law says it cannot win.

A trial of another algorithm than OPSD (GRPO: user attribute ``algorithm``) is never pruned by
the law, which predicts OPSD only; it is recorded as trained by rule ``not_opsd``.

A trial measures its initial gap first; its gate (search/gate.py) hands the typed ``GapResult``
to ``judge`` as ``TrialFacts`` (the gap, the law's covariates under their names, e.g.
``context_tokens``, the algorithm), and the decision is recorded on the trial afterwards, for
the reports: nothing is read back from user attributes to decide. (Optuna's own interface,
``prune(study, trial)``, sees only a FrozenTrial: it reads the same facts from what the trial
recorded.) The pruner loads the law by alias from the MLflow registry (``models:/<name>@<alias>``), predicts the
improvement with its prediction interval and prunes when the interval's *upper* bound is below
the bar: the best improvement a finished trial of the study reached, or a fixed ``threshold``.

Policy, in order (the first rule that applies decides; ``decide_policy`` is that chain, a
side-effect-free function of plain inputs that the live pruner and the replay benchmark
(benchmarks/pruning.py) both call; ``GapLawPruner.decide`` only gathers its inputs):

1. already decided          -> the recorded decision (a trial is decided once, before training)
1b. not OPSD                -> train: the trial's ``algorithm`` user attribute is not ``opsd`` (a GRPO
                               trial): the law predicts OPSD's improvement only, so it never prunes one
2. startup                  -> train: fewer than ``n_startup_trials`` trials have completed
3. no gap / NaN gap         -> train: nothing to predict from
4. no law / missing input   -> train: no ``@alias`` registered, or a covariate the law needs is missing
4b. law may not decide      -> train (its prediction recorded): the law fails ``law.holdout.check_law``
                               (too few configurations or residual degrees of freedom, a zero-width interval, a slope interval
                               containing 0, or a leave-one-out error no better than a constant's)
5. no bar                   -> train: no threshold and no completed trial to beat yet
6. upper >= bar             -> train: the law says it may win
7. calibration              -> train anyway: a ``calibration_rate`` share of would-be-pruned trials,
                               drawn reproducibly per (seed, trial number), so the false-prune
                               rate is measured (did it beat the bar after all?) rather than assumed
8. otherwise                -> prune

Every decision is recorded with its reason, the gap, the prediction and interval, the bar, and the
law version: on the trial (user attributes ``pruner.*``) and on the trial's MLflow run (tags
``pruner.*``, metrics ``search/predicted_improvement``, ``search/lower``, ``search/upper``,
``search/bar``) when the trial names its run in the ``mlflow_run_id`` user attribute.

Departure from Optuna's pruners: the decision uses no intermediate values; optuna gives a pruned
trial its last intermediate value as a "value", so a law-pruned trial reports none (it has none).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from opsd_platform import tracking
from opsd_platform.errors import RegistryError
from opsd_platform.law.holdout import finite_or_none
from opsd_platform.law.names import CHAMPION, DEFAULT_NAME

TRAIN, PRUNE, CALIBRATE = "train", "prune", "calibrate"
ATTR_PREFIX = "pruner."


@dataclass(frozen=True)
class Decision:
    """One pruning decision: what (``action``), which rule, why, and the numbers behind it."""

    action: str  # train | prune | calibrate (would prune, trains anyway)
    rule: str  # decided | not_opsd | startup | no_gap | nan_gap | no_law | law_unusable | missing_input | no_bar | interval | calibration | law
    reason: str
    gap: float | None = None
    predicted: float | None = None
    lower: float | None = None
    upper: float | None = None
    level: float | None = None
    bar: float | None = None
    bar_source: str | None = None  # "threshold" or "best trial #N"
    law_version: int | None = None

    @property
    def prune(self) -> bool:
        return self.action == PRUNE

    def attrs(self) -> dict[str, Any]:
        """``pruner.<field>`` user attributes (JSON values; None kept so a reader sees every field)."""
        return {f"{ATTR_PREFIX}{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "Decision | None":
        if f"{ATTR_PREFIX}action" not in attrs:
            return None
        return cls(**{k: attrs.get(f"{ATTR_PREFIX}{k}") for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TrialFacts:
    """What the policy reads of a trial: its algorithm, its gap, the law's covariates by column
    name (``context_tokens``...), and a decision already made (a re-queued trial carries its
    predecessor's, rule ``decided``). A live trial's come from its config and its GapResult
    (``of_gap``); a recorded trial's from its user attributes (``from_attrs``)."""

    algorithm: str = "opsd"
    gap: float | None = None
    covariates: Mapping[str, Any] = field(default_factory=dict)
    decided: Decision | None = None

    @classmethod
    def of_gap(cls, gap: Any, algorithm: str = "opsd", decided: Decision | None = None) -> "TrialFacts":
        """From a measured gap.measure.GapResult (None: no gap measured)."""
        if gap is None:
            return cls(algorithm, None, {}, decided)
        return cls(algorithm, float(gap.gap), {"context_tokens": float(gap.teacher_prompt_tokens)}, decided)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "TrialFacts":
        """From a trial's recorded user attributes (Optuna's prune interface, a replayed table)."""
        return cls(attrs.get("algorithm", "opsd"), attrs.get("gap"), attrs, Decision.from_attrs(dict(attrs)))

    def at(self, gap: float, covariates: Mapping[str, Any] = {}) -> "TrialFacts":
        """The same trial at another gap (a sequential measurement's bound), with the covariates
        measured so far."""
        return TrialFacts(self.algorithm, gap, {**self.covariates, **covariates}, self.decided)


def best_completed(study: "optuna.Study") -> tuple[float, int] | None:
    """(value, number) of the best COMPLETE trial (maximising), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if finite_or_none(t.value) is not None]
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    return float(best.value), best.number


def calibration_draw(seed: int, rate: float, number: int) -> bool:
    """Does trial `number` train anyway although the law would prune it? Reproducible per (seed, number)."""
    return rate > 0 and random.Random(f"{seed}:{number}").random() < rate


@dataclass(frozen=True)
class LawView:
    """What a decision needs of a law: its version, its input columns ("gap" and covariates) and
    ``predict(inputs, level) -> (predicted, lower, upper)`` (arrays; inputs: column -> values)."""

    version: int
    inputs: tuple[str, ...]
    predict: Callable[[Mapping[str, Any], float], tuple[Any, Any, Any]]
    check: Any = None  # law.holdout.LawCheck: may it decide? (None: not checked)

    @classmethod
    def of_pyfunc(cls, version: int, law: Any, check: Any = None) -> "LawView":
        """A registered law (MLflow pyfunc of law.pyfunc_model.GapLawModel)."""
        schema = law.metadata.get_input_schema()
        inputs = tuple(schema.input_names()) if schema is not None else ("gap",)

        def predict(values: Mapping[str, Any], level: float):
            frame = pd.DataFrame({k: [float(x) for x in _atleast_1d(v)] for k, v in values.items()})
            pred = law.predict(frame, params={"level": level})
            return (pred["predicted_improvement"].to_numpy(), pred["lower"].to_numpy(), pred["upper"].to_numpy())

        return cls(int(version), inputs, predict, check)

    @classmethod
    def of_fit(cls, version: int, fit: Any, check: Any = None) -> "LawView":
        """A ``law.LawFit`` held in memory: the same prediction as the registered pyfunc, which
        calls ``LawFit.predict`` on the same frame."""

        def predict(values: Mapping[str, Any], level: float):
            frame = pd.DataFrame({k: [float(x) for x in _atleast_1d(v)] for k, v in values.items()})
            pred = fit.predict(frame, level=level)
            return (pred["predicted_improvement"].to_numpy(), pred["lower"].to_numpy(), pred["upper"].to_numpy())

        return cls(int(version), ("gap", *fit.covariates), predict, check)


def _atleast_1d(value: Any) -> Sequence[Any]:
    return list(value) if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) >= 1 else [value]


def decide_policy(
    facts: "TrialFacts | Mapping[str, Any]",
    *,
    trial_number: int,
    n_complete: int,
    best: "Callable[[], tuple[float, int] | None]",
    law: "Callable[[], LawView]",
    n_startup_trials: int,
    calibration_rate: float,
    threshold: float | None,
    level: float,
    seed: int,
) -> Decision:
    """The policy of the module docstring, as a function of plain inputs and nothing else.

    facts: the trial's TrialFacts (a mapping: a recorded trial's user attributes, read with
    ``TrialFacts.from_attrs``); n_complete: completed trials of the study; best: () -> (value,
    number) of the best completed trial or None; law: () -> LawView, raising RegistryError when
    there is no law (called only once a prediction is needed, so startup trials never touch the
    registry).
    """
    if not isinstance(facts, TrialFacts):
        facts = TrialFacts.from_attrs(facts)
    if facts.decided is not None:
        return Decision(**{**asdict(facts.decided), "rule": "decided"})

    algorithm = facts.algorithm
    if algorithm != "opsd":
        return Decision(TRAIN, "not_opsd", f"algorithm={algorithm}: the gap law predicts OPSD's improvement only, "
                        "so it never prunes this trial; trains fully")

    if n_complete < n_startup_trials:
        return Decision(TRAIN, "startup", f"startup: {n_complete} of {n_startup_trials} startup trials completed; trains fully")

    raw_gap = facts.gap
    if raw_gap is None:
        return Decision(TRAIN, "no_gap", "no gap measured for this trial (user attribute 'gap'); trains fully")
    gap = finite_or_none(raw_gap)
    if gap is None:
        return Decision(TRAIN, "nan_gap", f"gap is {raw_gap!r} (not a finite number): nothing to predict from; trains fully")

    try:
        view = law()
    except RegistryError as exc:
        return Decision(TRAIN, "no_law", f"no law to predict with ({exc}); trains fully", gap=gap)
    version = view.version

    inputs = {"gap": gap}
    for col in view.inputs:
        if col == "gap":
            continue
        value = finite_or_none(facts.covariates.get(col))
        if value is None:
            return Decision(TRAIN, "missing_input", f"law v{version} needs {col!r}, which this trial has not recorded "
                            f"(got {facts.covariates.get(col)!r}); trains fully", gap=gap, law_version=version)
        inputs[col] = value
    predicted, lower, upper = view.predict(inputs, level)
    numbers = dict(gap=gap, predicted=float(predicted[0]), lower=float(lower[0]), upper=float(upper[0]),
                   level=level, law_version=version)
    shown = (f"gap {gap:+.3f} -> predicted improvement {numbers['predicted']:+.3f}, "
             f"{level:.0%} interval [{numbers['lower']:+.3f}, {numbers['upper']:+.3f}] (law v{version})")
    if view.check is not None and not view.check.usable:  # predicted (shown), never decided by it
        return Decision(TRAIN, "law_unusable", f"{shown}; {view.check.reason}; trains fully", **numbers)

    if threshold is not None:
        bar, source = threshold, "threshold"
    else:
        found = best()
        if found is None:
            return Decision(TRAIN, "no_bar", f"{shown}; no completed trial to beat and no threshold; trains fully", **numbers)
        bar, source = found[0], f"best trial #{found[1]}"
    numbers.update(bar=bar, bar_source=source)

    if numbers["upper"] >= bar:
        return Decision(TRAIN, "interval", f"{shown}; upper bound >= {bar:+.3f} ({source}): may win, trains", **numbers)
    if calibration_draw(seed, calibration_rate, trial_number):
        return Decision(CALIBRATE, "calibration", f"{shown}; upper bound < {bar:+.3f} ({source}) would prune, but "
                        f"trains anyway (calibration share {calibration_rate:.0%}) to measure false prunes", **numbers)
    return Decision(PRUNE, "law", f"{shown}; upper bound < {bar:+.3f} ({source}): pruned", **numbers)


# The rules whose outcome depends on the gap's value (the others decide before looking at it).
GAP_RULES = ("interval", "calibration", "law")


class GapLawPruner(optuna.pruners.BasePruner):
    """Prune a trial whose predicted improvement interval lies entirely below the bar.

    tracking_uri: the MLflow store holding the registry; name/alias: ``models:/<name>@<alias>``;
    n_startup_trials: trials that train fully before any pruning (counted as completed trials);
    calibration_rate: share in [0, 1] of would-be-pruned trials that train anyway; threshold: a
    fixed bar instead of the best completed improvement; level: prediction-interval level; seed:
    for the calibration draws; record: write decisions to the trial and MLflow (off: decide only).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        name: str = DEFAULT_NAME,
        alias: str = CHAMPION,
        n_startup_trials: int = 3,
        calibration_rate: float = 0.0,
        threshold: float | None = None,
        level: float = 0.9,
        seed: int = 0,
        record: bool = True,
    ) -> None:
        if not isinstance(tracking_uri, str) or not tracking_uri:
            raise ValueError(f"GapLawPruner: tracking_uri must be a non-empty string, got {tracking_uri!r}")
        if not name or not alias:
            raise ValueError(f"GapLawPruner: name and alias must be non-empty, got {name!r}@{alias!r}")
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
            raise ValueError(f"GapLawPruner: n_startup_trials must be an int >= 0, got {n_startup_trials!r}")
        if not (isinstance(calibration_rate, (int, float)) and 0.0 <= calibration_rate <= 1.0):
            raise ValueError(f"GapLawPruner: calibration_rate must be in [0, 1], got {calibration_rate!r}")
        if threshold is not None and finite_or_none(threshold) is None:
            raise ValueError(f"GapLawPruner: threshold must be a finite number or None, got {threshold!r}")
        if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
            raise ValueError(f"GapLawPruner: level must be in (0, 1), got {level!r}")
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.n_startup_trials = n_startup_trials
        self.calibration_rate = float(calibration_rate)
        self.threshold = None if threshold is None else float(threshold)
        self.level = float(level)
        self.seed = seed
        self.record = record
        self._cache: tuple[int, Any, Any] | None = None  # (version, pyfunc model, its LawCheck)

    # ------------------------------------------------------------------ Optuna entry point

    def prune(self, study: "optuna.Study", trial: FrozenTrial) -> bool:
        """Optuna's interface (``trial.should_prune()``): the decision, without side effects, from
        what the trial recorded. The search asks ``judge`` instead."""
        return self.decide(study, trial).prune

    def judge(self, trial: "optuna.Trial", facts: TrialFacts | None = None) -> Decision:
        """The decision for the live `trial` from its `facts` (None: what it recorded), then
        recorded on it and its MLflow run (``record``) when newly made (not rule ``decided``)."""
        decision = self.decide(trial.study, trial, facts)
        if self.record and decision.rule != "decided":
            record_decision(trial, decision, self.tracking_uri)
        return decision

    # ------------------------------------------------------------------ the policy

    def decide(self, study: "optuna.Study", trial: FrozenTrial, facts: TrialFacts | None = None) -> Decision:
        """The decision for `trial` (no side effects besides loading the law): ``decide_policy``
        on its `facts` (None: read from what the trial recorded) and what the study holds now."""
        facts = facts if facts is not None else TrialFacts.from_attrs(trial.user_attrs)
        return decide_policy(facts, **self.policy_inputs(study, trial))

    def policy_inputs(self, study: "optuna.Study", trial: FrozenTrial) -> dict[str, Any]:
        """Everything ``decide_policy`` needs besides the trial's attributes."""
        return dict(
            trial_number=trial.number,
            n_complete=len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            best=lambda: best_completed(study),
            law=self.law_view,
            n_startup_trials=self.n_startup_trials,
            calibration_rate=self.calibration_rate,
            threshold=self.threshold,
            level=self.level,
            seed=self.seed,
        )

    # ------------------------------------------------------------------ helpers

    def _calibration_draw(self, number: int) -> bool:
        return calibration_draw(self.seed, self.calibration_rate, number)

    def law_view(self) -> "LawView":
        """The registered law as a ``LawView`` (RegistryError when there is none); a subclass may
        hold its law elsewhere (the replay benchmark keeps it in memory)."""
        version, law, check = self._law()
        return LawView.of_pyfunc(version, law, check)

    def _law(self) -> tuple[int, Any, Any]:
        """(version, pyfunc, LawCheck) of ``<name>@<alias>``, reloaded only when the alias moves."""
        from opsd_platform.law.holdout import check_from_tags
        from opsd_platform.law.registry import alias_version, load_law

        client = tracking.init_store(self.tracking_uri)
        version = int(alias_version(client, self.name, self.alias))
        if self._cache is None or self._cache[0] != version:
            law = load_law(self.tracking_uri, self.name, self.alias)
            tags = client.get_model_version(self.name, str(version)).tags or {}
            self._cache = (version, law, check_from_tags(law.unwrap_python_model().fit, tags))
        return self._cache


def record_decision(trial: "optuna.Trial", decision: Decision, tracking_uri: str | None) -> None:
    """Write `decision` onto the live trial (``pruner.*`` user attributes, ``Trial.set_user_attr``)
    and onto its MLflow run."""
    for key, value in decision.attrs().items():
        trial.set_user_attr(key, value)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not (tracking_uri and run_id):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    tags = {f"pruner.{k}": str(v)[:5000] for k, v in asdict(decision).items() if v is not None and k not in ("gap", "level")}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for key in ("predicted", "lower", "upper", "bar"):
        value = getattr(decision, key)
        if value is not None:
            name = "search/predicted_improvement" if key == "predicted" else f"search/{key}"
            client.log_metric(run_id, name, float(value))
