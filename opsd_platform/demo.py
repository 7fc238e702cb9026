"""The demo (README command one, `make demo`): predict before training, on configurations the
recorded benchmark does not hold.

    1. the law      fit-law on the recorded table (benchmarks/data/runs.csv, slice
                    law-arithmetic: real runs, each row naming the MLflow run that produced it),
                    registered in a fresh local store ($OPSD_HOME/demo/mlflow.db)
    2. live gaps    a new seed (one the table lacks) of a few of the slice's configurations,
                    at the benchmark's gap settings; the student side is measured once and shared
    3. decide       each candidate's prediction and interval, printed before anything trains, and
                    the search's own decision (pruner.decide_policy) against the best recorded
                    configuration; the survivors train at the benchmark's settings, as a grid of
                    2 worker processes x 1 torch thread (grid.run_grid), capped to the time budget
    4. report       predicted vs measured per trained configuration, and the compute the
                    pruning saved; a law whose slope interval holds 0 is said to be noise

Re-running resumes: the gaps come from the measurement store, finished trainings from the grid's
runs. ``demo.*`` overrides change the demo (``DemoConfig``); any other override is a training
setting applied after the benchmark's (``model=tiny ...``: the smoke run of pipelines/demo.py).

The pure functions (``recorded_configs``, ``choose_candidates``, ``new_seed``, ``best_recorded``,
``law_verdict``, ``training_cap``, ``plan``, ``savings``, ``outcome_rows``, ``summary_text``)
hold every choice and every number of the report; ``run_demo`` only gathers their inputs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from opsd_platform.config import ConfigError, default_home
from opsd_platform.training.contexts import context_label

log = logging.getLogger(__name__)

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
    frac = rows["graded_fraction"] if "graded_fraction" in rows else pd.Series([None] * len(rows), index=rows.index)
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


# ============================================================================== gathering the inputs


def demo_store(overrides: Sequence[str], folder: str = "demo") -> list[str]:
    """The overrides with the demo's own store ($OPSD_HOME/<folder>/mlflow.db) unless one is
    given: the demo's law and runs never mix with what a user keeps in the default store."""
    if any(o.lstrip("+").startswith("tracking.uri=") for o in overrides):
        return list(overrides)
    path = default_home() / folder / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return [*overrides, f"tracking.uri=sqlite:///{path}"]


def slice_of(spec: dict, name: str) -> dict:
    for s in spec["slices"]:
        if s["name"] == name:
            if "configs" not in s:
                raise ConfigError(f"demo.slice: {name} draws its configurations; the demo needs a slice that lists them")
            return s
    raise ConfigError(f"demo.slice: no slice {name!r} in {spec['path']}; slices: {', '.join(s['name'] for s in spec['slices'])}")


def table_rows(table: str, slice_name: str) -> tuple[pd.DataFrame, Path]:
    from opsd_platform.law.export import read_table

    path = Path(table)
    path = path / "runs.csv" if path.is_dir() else path
    runs = read_table(path)
    rows = runs[runs["slice"] == slice_name] if "slice" in runs else runs.iloc[0:0]
    if "algorithm" in rows:
        rows = rows[rows["algorithm"].fillna("opsd") == "opsd"]
    if rows.empty:
        raise ConfigError(f"demo.table: {path}: no OPSD rows of slice {slice_name!r}")
    return rows, path


def provenance(path: Path, rows: pd.DataFrame, spec: dict) -> list[str]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    grids = ", ".join(sorted(str(g) for g in rows["grid"].dropna().unique())) if "grid" in rows else "?"
    return [f"Fitted on {len(rows)} recorded runs ({rows['config'].nunique()} configurations x seeds "
            f"{sorted(int(s) for s in rows['seed'].unique())}) of `{path}` (sha256 {digest}), slice "
            f"`{rows['slice'].iloc[0]}` of grid {grids} ({spec['path']}): {', '.join(sorted(rows['model'].astype(str).unique()))}, "
            f"{', '.join(str(int(s)) for s in sorted(rows['steps'].unique()))} steps. Each row's `run_id` is the MLflow run "
            "that produced it (benchmarks/data/README.md)."]


def write_spec(path: Path, spec: dict, sl: dict, configs: Sequence[Sequence[str]], seed: int) -> Path:
    """The demo's grid file: the benchmark's base and slice settings, the survivors, the new seed."""
    import yaml

    doc = {"name": GRID_NAME, "seeds": [int(seed)], "base": list(spec.get("base", [])),
           "slices": [{"name": sl["name"], "overrides": list(sl.get("overrides", [])), "configs": [list(c) for c in configs]}]}
    path.write_text("# written by the demo (opsd_platform/demo.py): the survivors of the law, at the benchmark's settings\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class DemoResult:
    report: DemoReport
    summary_path: Path
    failed: list[str]


def run_demo(overrides: Sequence[str], progress: Callable[[str], None] = print) -> DemoResult:
    from mlflow.tracking import MlflowClient

    from opsd_platform import tracking
    from opsd_platform.config.compose import section_config, split_section
    from opsd_platform.compare_grpo import measure_gaps
    from opsd_platform.config.compose import train_config
    from opsd_platform.config import config_hash
    from opsd_platform.search.grid import GridConfig, load_spec, run_grid
    from opsd_platform.law.pipeline import FitLawConfig, fit_and_register
    from opsd_platform.search.pruner import GapLawPruner

    start = time.perf_counter()
    seconds: dict[str, float] = {}
    mine, user = split_section(overrides, "demo")
    cfg = section_config(DemoConfig, "demo", mine)
    user = demo_store(user)
    tracking_cfg = train_config(list(user)).tracking
    uri, experiment = tracking_cfg.resolved_uri(), tracking_cfg.experiment

    # -- what to measure: the slice's configurations as recorded, at a seed the table lacks
    spec = load_spec(cfg.spec)
    sl = slice_of(spec, cfg.slice)
    base = [*spec.get("base", []), *sl.get("overrides", [])]
    rows, path = table_rows(cfg.table, cfg.slice)
    own = {config_hash(train_config([*base, *conf])): tuple(conf) for conf in sl["configs"]}  # the table's `config`
    recorded = recorded_configs(rows[rows["config"].isin(list(own))])
    chosen = choose_candidates(recorded, cfg.n_candidates, cfg.contexts)
    seed = new_seed(rows, chosen) if cfg.seed is None else cfg.seed
    by_config = recorded.set_index("config")
    cands = {by_config.at[c, "label"]: Candidate(by_config.at[c, "label"], c, own[c], float(by_config.at[c, "gap"]),
                                                 float(by_config.at[c, "improvement"]), float(by_config.at[c, "train_cpu_s"]),
                                                 float(by_config.at[c, "val_cpu_s"])) for c in chosen}
    bar = best_recorded(recorded)

    # -- 1. the law
    progress(f"== 1/4 the law: fit on the recorded benchmark ({path}, slice {cfg.slice}) and register it in {uri}")
    law_cfg = FitLawConfig(experiment=experiment, table=str(path), slices=[cfg.slice], level=cfg.level)
    report = fit_and_register(uri, law_cfg)
    reg = report.registration
    MlflowClient(tracking_uri=uri).set_registered_model_alias(reg["name"], DEMO_ALIAS, reg["version"])
    verdict = law_verdict(report.fit)
    prov = provenance(path, rows, spec)
    progress(prov[0])
    progress(report.fit.summary())
    progress(verdict.sentence)
    seconds["law"] = time.perf_counter() - start

    # -- 2. the live gaps (one thread: the measurement keys then match the one-thread trainings,
    #    which reuse these gaps instead of measuring them again)
    t = time.perf_counter()
    progress(f"== 2/4 live gaps: {', '.join(cands)} at seed {seed} (not in the table), student side shared")
    point = lambda c: [*base, *c.overrides, *user, f"seed={seed}", "gap.enabled=true"]  # noqa: E731  (grid.points' order)
    gap_cfgs = {k: train_config([*point(c), "trainer.num_threads=1"]) for k, c in cands.items()}
    gaps, _ = measure_gaps(gap_cfgs, progress=progress)
    student_cpu = max((g.student_cpu_s for g in gaps.values()), default=0.0)  # one side, shared by every context
    gap_cpu = student_cpu + sum(g.cpu_s - g.student_cpu_s for g in gaps.values())
    seconds["gaps"] = time.perf_counter() - t

    # -- 3. predict, decide (the search's own policy), train the survivors
    progress(f"== 3/4 predictions BEFORE training ({cfg.level:.0%} intervals; bar: best recorded configuration "
             f"{bar[1]} {bar[0]:+.3f}; law v{reg['version']})")
    view = GapLawPruner(uri, name=reg["name"], alias=DEMO_ALIAS, level=cfg.level, record=False).law_view
    decisions = decide_all({k: {"gap": g.gap, "context_tokens": g.teacher_prompt_tokens} for k, g in gaps.items()},
                           view, bar[0], cfg.level)
    for k, d in decisions.items():
        progress("  " + decision_line(k, d, gaps[k].gap_ci))
    if not verdict.significant:
        progress("  (a law that cannot tell configurations apart made these decisions: see above)")
    survivors = plan(decisions, cap=len(decisions)).train  # every survivor, most promising first
    remaining = cfg.budget_s - (time.perf_counter() - start) - 30  # 30 s: the report at the end
    cap = training_cap([cands[k].recorded_train_cpu_s + cands[k].recorded_val_cpu_s for k in survivors],
                       cfg.workers, remaining)
    cap_reason = (f"{cap} fit in the {max(remaining, 0):.0f} s left of the {cfg.budget_s:.0f} s budget on "
                  f"{max(cfg.workers, 1)} worker(s), at the recorded cost per training")
    if cfg.max_train is not None and cfg.max_train < cap:
        cap, cap_reason = cfg.max_train, f"demo.max_train={cfg.max_train}"
    p = plan(decisions, cap)
    progress(f"train: {', '.join(p.train) or 'none'}; pruned: {', '.join(p.pruned) or 'none'}; capped: "
             f"{', '.join(p.capped) or 'none'} ({cap_reason})")

    t = time.perf_counter()
    failed: list[str] = []
    if p.train:
        out_dir = (tracking.sqlite_path(uri) or default_home() / "demo" / "x").parent
        spec_file = write_spec(out_dir / "grid-demo.yaml", spec, sl, [cands[k].overrides for k in p.train], seed)
        workers = min(cfg.workers, len(p.train))
        grid_words = [f"grid.spec={spec_file}", "grid.threads=1", "grid.exported=null", "grid.poll_s=60"]
        progress(f"training {len(p.train)} at the benchmark's settings on {workers or 1} process(es) x 1 thread "
                 f"(~{max(cands[k].recorded_train_cpu_s + cands[k].recorded_val_cpu_s for k in p.train):.0f} s each, recorded)")
        st = run_grid(user, GridConfig(spec=str(spec_file), workers=workers, threads=1, exported=None, poll_s=60.0),
                      progress=progress, grid_overrides=grid_words)
        failed = st.failed
    seconds["training"] = time.perf_counter() - t

    # -- 4. predicted vs measured, compute
    progress("== 4/4 predicted vs measured")
    measured, trained_cpu, val_cpu = measured_runs(uri, experiment, {k: config_hash(gap_cfgs[k]) for k in p.train}, seed)
    outcomes = outcome_rows(decisions, measured, p.train)
    sv = savings(gap_cpu, trained_cpu, val_cpu, cands, p)
    seconds["total"] = time.perf_counter() - start
    law = {"name": reg["name"], "version": reg["version"], "alias": DEMO_ALIAS, "run_id": report.law_run_id}
    result = DemoReport(prov, report.fit.summary(), verdict, bar, seed, decisions, p, cap_reason, outcomes, sv,
                        cfg.level, law, uri, seconds)
    text = summary_text(result)
    db = tracking.sqlite_path(uri)
    summary_path = (db.parent if db else default_home() / "demo") / "summary.md"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(text, encoding="utf-8")
    MlflowClient(tracking_uri=uri).log_text(report.law_run_id, text, "demo_summary.md")
    return DemoResult(result, summary_path, failed)


def measured_runs(uri: str, experiment: str, hashes: dict[str, str], seed: int) -> tuple[dict[str, tuple[float, str]], float, float]:
    """({label: (improvement, run id)}, training CPU-s, initial-validation CPU-s) of the demo's
    finished trainings (export.collect reads them the way the benchmark table was made); the
    initial validation is counted once per key (runs of a seed share it)."""
    from opsd_platform.law.export import ExportError, collect

    try:
        runs, _, _ = collect(uri, experiment, GRID_NAME)
    except ExportError:
        return {}, 0.0, 0.0
    runs = runs[runs["seed"] == seed]
    out, train_cpu = {}, 0.0
    for label, h in hashes.items():
        mine = runs[runs["config"] == h]
        if not mine.empty:
            r = mine.iloc[0]
            out[label] = (float(r["improvement"]), str(r["run_id"]))
            train_cpu += float(r["train_cpu_s"] or 0.0)
    used = runs[runs["config"].isin(list(hashes.values()))]
    val_cpu = float(used.drop_duplicates("val_key")["val_initial_cpu_s"].fillna(0).sum()) if not used.empty else 0.0
    return out, train_cpu, val_cpu
