"""The demo's choices and its report, as pure functions of their inputs: which configurations to
measure (a seed the table lacks), whether the law is more than noise, what to train within the
time budget, predicted vs measured, the compute the pruning saved, and the summary text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from opsd_platform.config import ConfigError
from opsd_platform.training.contexts import context_label

if TYPE_CHECKING:  # the tables are pandas'; not imported here, so DemoConfig is checked before pandas loads
    import pandas as pd

# `--smoke` (pipelines/demo.py): the same flow on the tiny in-memory model in seconds per step, to
# check the wiring; its numbers mean nothing (the law is still the recorded SmolLM2 one).
SMOKE_OVERRIDES = ["model=tiny", "rollout.max_new_tokens=12", "world.n_val=8", "rollout.val_samples=2",
                   "gap.n_problems=4", "gap.bootstrap=100", "trainer.max_steps=2", "trainer.val_every=1",
                   "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "demo.n_candidates=3"]
DEMO_ALIAS = "demo"  # the version this demo run registered (later runs of the demo re-point it)
GRID_NAME = "demo"  # tags of the demo's trainings (grid.name), so a re-run finds them


@dataclass
class DemoConfig:
    table: str = field(default="benchmarks/data", metadata={"help": "the recorded benchmark (a runs.csv or a directory holding one)"})
    slice: str = field(default="law-arithmetic", metadata={"help": "the table's and the grid file's slice the law is fitted on"})
    spec: str = field(default="benchmark", metadata={"help": "grid file whose settings the table was recorded at (conf/grid/<spec>.yaml or a path)"})
    n_candidates: int = field(default=4, metadata={"help": "configurations whose live gap is measured"})
    contexts: list[str] = field(default_factory=list, metadata={
        "help": "candidates by label (context, or graded@<fraction>); empty = spread over the recorded gaps"})
    seed: int | None = field(default=None, metadata={"help": "the candidates' seed (null = the first seed none of them has in the table)"})
    level: float = field(default=0.9, metadata={"help": "prediction-interval level"})
    workers: int = field(default=2, metadata={"help": "training processes (1 torch thread each; 0 = train in this process)"})
    budget_s: float = field(default=1080.0, metadata={
        "help": "seconds the demo may take after set-up (20 min - 2 min); the trainings are capped to what is left"})
    max_train: int | None = field(default=None, metadata={"help": "train at most this many (null = as many as the budget allows)"})

    def __post_init__(self) -> None:
        if self.n_candidates < 1:
            raise ConfigError(f"demo.n_candidates: must be >= 1, got {self.n_candidates}")
        if not 0 < self.level < 1:
            raise ConfigError(f"demo.level: must be in (0, 1), got {self.level}")
        if self.workers < 0:
            raise ConfigError(f"demo.workers: must be >= 0, got {self.workers}")
        if self.max_train is not None and self.max_train < 0:
            raise ConfigError(f"demo.max_train: must be >= 0 or null, got {self.max_train}")


@dataclass(frozen=True)
class Candidate:
    """A configuration of the slice, at a seed the table does not hold."""

    label: str  # context, or graded@<fraction>
    config: str  # config_hash at the benchmark's settings (the table's `config`)
    overrides: tuple[str, ...]  # the configuration's own overrides in the grid file
    recorded_gap: float  # means over the table's seeds
    recorded_improvement: float
    recorded_train_cpu_s: float  # steps + validations after step 0
    recorded_val_cpu_s: float  # the initial validation (shared by every configuration of a seed)


# ============================================================================== choosing (pure)


def recorded_configs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per recorded configuration: label, means over its seeds (gap, improvement, costs),
    the seeds it has; sorted by mean gap."""
    if rows.empty:
        raise ConfigError("demo.table: no rows in the chosen slice")
    frac = rows["graded_fraction"] if "graded_fraction" in rows else [None] * len(rows)
    rows = rows.assign(label=[context_label(c, f) for c, f in zip(rows["context"], frac)])
    agg = rows.groupby("config").agg(
        label=("label", "first"), gap=("gap", "mean"), improvement=("improvement", "mean"),
        train_cpu_s=("train_cpu_s", "mean"), val_cpu_s=("val_initial_cpu_s", "mean"),
        seeds=("seed", lambda s: sorted(int(v) for v in s)), n=("seed", "size"))
    return agg.reset_index().sort_values(["gap", "label"]).reset_index(drop=True)


def choose_candidates(recorded: pd.DataFrame, n: int, labels: Sequence[str] = ()) -> list[str]:
    """The configs (hashes) to measure: the given labels, else n spread evenly over the recorded
    mean gaps (lowest and highest included), so the law is asked both where it should prune and
    where it should train, not n neighbours that all get the same answer."""
    by_label = dict(zip(recorded["label"], recorded["config"]))
    if labels:
        unknown = [x for x in labels if x not in by_label]
        if unknown:
            raise ConfigError(f"demo.contexts: {', '.join(unknown)} not recorded in the slice; recorded: "
                              f"{', '.join(recorded['label'])}")
        return [by_label[x] for x in labels]
    configs = list(recorded.sort_values("gap")["config"])
    if n >= len(configs):
        return configs
    if n == 1:
        return [configs[-1]]
    picks = sorted({round(i * (len(configs) - 1) / (n - 1)) for i in range(n)})
    return [configs[i] for i in picks]


def new_seed(rows: pd.DataFrame, configs: Sequence[str]) -> int:
    """The smallest seed none of `configs` has in the table: one seed for all candidates, so the
    student side of the gap (which depends on the seed, not the context) is measured once."""
    used = set(int(s) for s in rows.loc[rows["config"].isin(list(configs)), "seed"])
    seed = 0
    while seed in used:
        seed += 1
    return seed


def best_recorded(recorded: pd.DataFrame) -> tuple[float, str]:
    """The bar a candidate must be able to beat: the best mean improvement over seeds of a
    recorded configuration (what a user of this table would already pick without the demo)."""
    best = recorded.loc[recorded["improvement"].idxmax()]
    return float(best["improvement"]), str(best["label"])


@dataclass(frozen=True)
class Verdict:
    significant: bool
    sentence: str  # what the law is, said plainly (printed and first in the summary)


def law_verdict(fit: Any) -> Verdict:
    """Is the law a result? Only when its slope's interval (at the fit's level) excludes 0 and is
    positive: a slope indistinguishable from 0 is a law fitted on noise, and its predictions
    cannot tell configurations apart, whatever the intervals look like."""
    c = fit.coefficient("gap")
    lo, hi, p = float(c["ci_lower"]), float(c["ci_upper"]), float(c["p"])
    slope = f"slope is {fit.slope:+.3f} per unit of gap, {fit.level:.0%} interval [{lo:+.3f}, {hi:+.3f}]"
    basis = f"(p = {p:.3g}; {fit.n_configs} configurations, {fit.n_points} runs)"
    if not math.isfinite(lo) or not math.isfinite(hi) or lo <= 0 <= hi:
        return Verdict(False, f"NOT A RESULT: the law's {slope}, which includes 0 {basis}. On this table the gap does "
                              "not predict the improvement better than noise, so the decisions below are those of a "
                              "law that cannot tell configurations apart.")
    if hi < 0:
        return Verdict(False, f"NOT THE PRODUCT'S PREMISE: the law's {slope}, all below 0 {basis}: a larger gap "
                              "predicts a smaller improvement here; the decisions below follow that law, not the premise.")
    return Verdict(True, f"The law's {slope}, above 0 {basis}: a larger initial gap predicts a larger improvement.")


def training_cap(costs: Sequence[float], workers: int, remaining_s: float) -> int:
    """How many of the trainings (in order, costs in CPU-s) fit in `remaining_s` of wall time on
    `workers` one-thread processes: list scheduling (each goes to the least-loaded worker). A
    one-thread worker's CPU-s are its wall seconds. At least one trains (a demo that trains
    nothing shows nothing) unless there is none."""
    loads = [0.0] * max(workers, 1)
    n = 0
    for cost in costs:
        i = loads.index(min(loads))
        if n and loads[i] + cost > remaining_s:
            break
        loads[i] += cost
        n += 1
    return n


def decide_all(inputs: dict[str, dict[str, float]], law: Callable[[], Any], bar: float, level: float) -> dict[str, Any]:
    """{label: Decision}: the search's own policy (pruner.decide_policy, as GapLawPruner and the
    replay call it) for each candidate's measured inputs (gap, covariates), with the bar as a fixed
    threshold, no startup trials and no calibration share: every candidate is judged by the law."""
    from opsd_platform.search.pruner import decide_policy

    return {k: decide_policy(attrs, trial_number=i, n_complete=0, best=lambda: None, law=law, n_startup_trials=0,
                             calibration_rate=0.0, threshold=bar, level=level, seed=0)
            for i, (k, attrs) in enumerate(inputs.items())}


@dataclass(frozen=True)
class Plan:
    train: list[str]  # labels, most promising first
    capped: list[str]  # would train, not trained: the time budget (not the law)
    pruned: list[str]


def plan(decisions: dict[str, Any], cap: int) -> Plan:
    """Survivors (not pruned) by predicted improvement, best first; the first `cap` train."""
    survivors = sorted((k for k, d in decisions.items() if not d.prune), key=lambda k: -decisions[k].predicted)
    return Plan(survivors[:cap], survivors[cap:], [k for k, d in decisions.items() if d.prune])


@dataclass(frozen=True)
class Outcome:
    label: str
    gap: float
    predicted: float
    lower: float
    upper: float
    measured: float | None  # None: not trained (or not finished)
    run_id: str | None

    @property
    def inside(self) -> bool | None:
        return None if self.measured is None else self.lower <= self.measured <= self.upper


def outcome_rows(decisions: dict[str, Any], measured: dict[str, tuple[float, str]], labels: Sequence[str]) -> list[Outcome]:
    """Predicted (the decision's numbers, made before training) vs measured, for `labels`."""
    return [Outcome(k, decisions[k].gap, decisions[k].predicted, decisions[k].lower, decisions[k].upper,
                    *(measured.get(k) or (None, None))) for k in labels]


def decision_records(decisions: dict[str, Any], p: Plan, measured: dict[str, tuple[float, str]]) -> list[dict[str, Any]]:
    """One row per candidate, for the demo's MLflow table: its prediction (made before training),
    what was decided and why, and what its training measured."""
    action = {**{k: "train" for k in p.train}, **{k: "capped" for k in p.capped}, **{k: "pruned" for k in p.pruned}}
    return [{"configuration": k, "gap": d.gap, "predicted": d.predicted, "lower": d.lower, "upper": d.upper,
             "decision": action.get(k, d.action), "reason": d.reason, "measured": (measured.get(k) or (None, None))[0],
             "run_id": (measured.get(k) or (None, None))[1]} for k, d in decisions.items()]


def outcome_table(rows: Sequence[Outcome], level: float) -> list[str]:
    out = [f"| configuration | gap | predicted [{level:.0%} interval] | measured | inside? | run |", "|---|---|---|---|---|---|"]
    for r in rows:
        got = "not finished" if r.measured is None else f"{r.measured:+.3f}"
        inside = "-" if r.inside is None else ("yes" if r.inside else "**no**")
        out.append(f"| {r.label} | {r.gap:+.3f} | {r.predicted:+.3f} [{r.lower:+.3f}, {r.upper:+.3f}] | {got} | {inside} "
                   f"| {r.run_id or '-'} |")
    return out


@dataclass(frozen=True)
class Savings:
    gap_cpu_s: float  # measured: the student side once + each teacher side
    train_cpu_s: float  # measured: trainings + each seed's initial validation once
    pruned_cpu_s: float  # recorded: what the pruned trainings would have cost
    capped_cpu_s: float  # recorded: what the capped ones would have cost (not a saving of the law)

    @property
    def spent(self) -> float:
        return self.gap_cpu_s + self.train_cpu_s

    @property
    def every_candidate(self) -> float:
        return self.spent + self.pruned_cpu_s + self.capped_cpu_s

    @property
    def saved_share(self) -> float:
        return self.pruned_cpu_s / self.every_candidate if self.every_candidate else 0.0


def savings(gap_cpu_s: float, trained_cpu_s: float, val_cpu_s: float, recorded: dict[str, Candidate], p: Plan) -> Savings:
    """Compute spent (measured) vs training every candidate. A candidate not trained is costed at
    its configuration's recorded mean training cost (the table's train_cpu_s); the seed's initial
    validation is added once if no trained run paid it (every run of a seed shares it)."""
    def recorded_cost(labels: Sequence[str], val_paid: bool) -> float:
        total = sum(recorded[k].recorded_train_cpu_s for k in labels)
        if labels and not val_paid:
            total += max(recorded[k].recorded_val_cpu_s for k in labels)
        return total

    pruned = recorded_cost(p.pruned, val_paid=bool(p.train))
    capped = recorded_cost(p.capped, val_paid=bool(p.train or p.pruned))
    return Savings(gap_cpu_s, trained_cpu_s + val_cpu_s, pruned, capped)


# ============================================================================== the report (pure)


@dataclass
class DemoReport:
    provenance: list[str]
    fit_summary: str
    verdict: Verdict
    bar: tuple[float, str]
    seed: int
    decisions: dict[str, Any]  # label -> pruner.Decision
    plan: Plan
    cap_reason: str
    outcomes: list[Outcome]
    savings: Savings
    level: float
    law: dict  # name, version, alias, run id
    uri: str
    seconds: dict[str, float]
    ranked: list[str] = field(default_factory=list)  # the ranked search's section (demo/ranked.py), if it ran


def decision_line(label: str, d: Any, gap_ci: tuple[float, float] | None = None) -> str:
    ci = f" [{gap_ci[0]:+.3f}, {gap_ci[1]:+.3f}]" if gap_ci else ""
    return (f"{label:<14} gap {d.gap:+.3f}{ci} -> predicted {d.predicted:+.3f} "
            f"[{d.lower:+.3f}, {d.upper:+.3f}]: {d.action.upper()}")


def summary_text(r: DemoReport) -> str:
    """The demo's report (Markdown): the verdict on the law comes first, so that a law fitted on
    noise is never read as a result."""
    s = r.savings
    lines = [
        "# OPSD demo: predict before training",
        "",
        f"**{r.verdict.sentence}**",
        "",
        "## The law",
        "",
        *r.provenance,
        "",
        "```",
        r.fit_summary,
        "```",
        "",
        f"Registered: `{r.law['name']}` version {r.law['version']} (alias @{r.law['alias']}), law run `{r.law['run_id']}`.",
        "",
        f"## Predictions before training (new seed {r.seed}; bar: best recorded configuration, "
        f"{r.bar[1]} at {r.bar[0]:+.3f})",
        "",
        "| configuration | gap | predicted | decision | why |",
        "|---|---|---|---|---|",
        *[f"| {k} | {d.gap:+.3f} | {d.predicted:+.3f} [{d.lower:+.3f}, {d.upper:+.3f}] | {d.action} | {d.reason} |"
          for k, d in r.decisions.items()],
        "",
        f"Trained: {', '.join(r.plan.train) or 'none'}. Pruned by the law: {', '.join(r.plan.pruned) or 'none'}. "
        f"Capped: {', '.join(r.plan.capped) or 'none'} ({r.cap_reason}).",
    ]
    if not r.verdict.significant:
        lines += ["", "These decisions come from a law that cannot tell configurations apart (see the top): "
                      "what was pruned or trained says nothing about which configuration is better."]
    lines += [
        "",
        "## Predicted vs measured",
        "",
        *outcome_table(r.outcomes, r.level),
        "",
        f"{sum(bool(o.inside) for o in r.outcomes)} of {sum(o.measured is not None for o in r.outcomes)} measured "
        f"improvements inside their {r.level:.0%} interval.",
        "",
        *([*r.ranked, ""] if r.ranked else []),
        "## Compute",
        "",
        f"- spent (measured CPU-s): gaps {s.gap_cpu_s:.0f} + trainings {s.train_cpu_s:.0f} = {s.spent:.0f}",
        f"- pruned by the law: {len(r.plan.pruned)}, ~{s.pruned_cpu_s:.0f} CPU-s not spent (recorded mean training "
        f"cost of the same configuration in the table, not measured here)",
        f"- capped by the time budget: {len(r.plan.capped)}, ~{s.capped_cpu_s:.0f} CPU-s (recorded); time, not a "
        "decision of the law: not counted as saved",
        f"- pruning saved {s.saved_share:.0%} of training every candidate (~{s.every_candidate:.0f} CPU-s)",
        "",
        "## Time",
        "",
        *[f"- {step}: {sec:.0f} s" for step, sec in r.seconds.items()],
        "",
        "## Look at it",
        "",
        f"- `opsd ui tracking.uri={r.uri}` (experiment `opsd`; *Model registry* -> `{r.law['name']}`)",
        f"- `opsd law show tracking.uri={r.uri}`",
    ]
    return "\n".join(lines) + "\n"


