"""`opsd compare-grpo`: should I distill from feedback here, or just run GRPO?

For one world and model (the usual train overrides), for each candidate context:

1. the initial gap, through the measurement store (measurements.py): a repeated call loads the
   stored sides and builds no model at all;
2. OPSD's predicted improvement with its prediction interval, from the registered gap law,
   loaded and evaluated by the search's own code (``GapLawPruner.law_view``);
3. GRPO's improvement: the mean over seeds of recorded runs (rows of a runs.csv table with
   ``algorithm=grpo`` for the same world and model family) or of GRPO trainings run now
   (``compare.train_grpo=true``, through ``train.train``; a finished run with the same
   config_hash and seed is reused);
4. the difference OPSD - GRPO with an interval that carries both uncertainties (``difference``).

The pure functions (``grpo_rows``, ``seed_estimate``, ``difference``, ``sentence``,
``format_table``) hold the arithmetic; ``compare_grpo`` only gathers their inputs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from opsd_platform.config import TrainConfig
from opsd_platform.errors import CompareError
from opsd_platform.law.names import CHAMPION, DEFAULT_NAME
from opsd_platform.training.contexts import CONTEXTS

if TYPE_CHECKING:  # pandas only where a table is read: CompareConfig is checked before it is imported
    import pandas as pd

log = logging.getLogger(__name__)

# Keys the command sets itself: a candidate's context and each side's algorithm.
OWNED_KEYS = ("context", "algorithm")


@dataclass
class CompareConfig:
    contexts: list[str] = field(default_factory=lambda: list(CONTEXTS), metadata={
        "help": "candidate OPSD context types whose gaps are measured and improvements predicted (default: all)"})
    table: str | None = field(default="benchmarks/data", metadata={
        "help": "recorded GRPO runs: a runs.csv file or a directory holding one (rows with algorithm=grpo); "
                "unused with train_grpo=true"})
    grpo_config: str | None = field(default=None, metadata={
        "help": "with table: the `config` (config hash) of the GRPO rows to use when several match the world and family"})
    train_grpo: bool = field(default=False, metadata={
        "help": "measure GRPO now: train algorithm=grpo with the same overrides, once per grpo_seeds seed"})
    grpo_seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={
        "help": "with train_grpo: the seeds of the GRPO trainings (at least 2 give GRPO a seed interval)"})
    level: float = field(default=0.9, metadata={"help": "level of every interval (law prediction, GRPO seeds, difference)"})
    law_name: str = field(default=DEFAULT_NAME, metadata={"help": "registered law name"})
    law_alias: str = field(default=CHAMPION, metadata={"help": "alias of the law to predict with"})
    out: str | None = field(default=None, metadata={"help": "write the result as JSON to this file"})

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise CompareError(f"compare.{key}: {message}")

        check(bool(self.contexts), "contexts", "must list at least one context type")
        unknown = [c for c in self.contexts if c not in CONTEXTS]
        check(not unknown, "contexts", f"unknown context(s) {', '.join(map(str, unknown))}; valid: {', '.join(CONTEXTS)}")
        check(len(set(self.contexts)) == len(self.contexts), "contexts", f"duplicate context types in {self.contexts}")
        check(0.0 < self.level < 1.0, "level", f"must be in (0, 1), got {self.level}")
        check(bool(self.law_name) and bool(self.law_alias), "law_name", "law_name and law_alias must be non-empty")
        check(self.train_grpo or bool(self.table), "table",
              "no GRPO to compare with: give a recorded table (compare.table=benchmarks/data) or compare.train_grpo=true")
        check(bool(self.grpo_seeds), "grpo_seeds", "must list at least one seed")
        check(len(set(self.grpo_seeds)) == len(self.grpo_seeds), "grpo_seeds", f"duplicate seeds in {self.grpo_seeds}")
        check(self.out is None or bool(self.out), "out", "must be a file path or null")


# ============================================================================== results


@dataclass(frozen=True)
class Estimate:
    """An improvement with its interval at `level` (lower/upper None when it has none)."""

    value: float
    lower: float | None
    upper: float | None
    level: float


@dataclass(frozen=True)
class GrpoBaseline:
    """GRPO's improvement: the mean over seeds, where it comes from, and the runs behind it."""

    estimate: Estimate
    n_seeds: int
    seed_std: float | None  # sample std of the per-seed improvements (None with one seed)
    source: str  # "table <path> (config <hash>)" or "trained"
    seeds: list[int]
    run_ids: list[str]
    steps: list[int]


@dataclass(frozen=True)
class ContextComparison:
    context: str
    gap: float
    gap_ci: tuple[float, float]
    reused: list[str]  # gap sides loaded from the store
    opsd: Estimate  # the law's prediction for OPSD
    difference: Estimate  # OPSD - GRPO
    sentence: str


@dataclass(frozen=True)
class CompareResult:
    world: str
    model: str
    family: str
    seed: int
    level: float
    law: dict[str, Any]  # name, alias, version
    grpo: GrpoBaseline
    contexts: list[ContextComparison]
    tracking_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================== the arithmetic (pure)


def t_quantile(level: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(1 - (1 - level) / 2.0, df))


def seed_estimate(improvements: Sequence[float], level: float) -> tuple[Estimate, float | None]:
    """Mean over seeds with a Student-t interval for that mean (and the seeds' sample std).

    The interval is for GRPO's *mean* improvement, not for one more GRPO run: the law's prediction
    interval is fitted on per-configuration means over seeds (law.py: sigma2 is the residual
    variance of those means), so the two sides of the difference are the same kind of quantity.
    One seed gives no spread to estimate: no interval then."""
    x = [float(v) for v in improvements]
    if not x:
        raise ValueError("no improvements to summarise")
    mean = sum(x) / len(x)
    if len(x) < 2:
        return Estimate(mean, None, None, level), None
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))
    half = t_quantile(level, len(x) - 1) * std / math.sqrt(len(x))
    return Estimate(mean, mean - half, mean + half, level), std


def difference(opsd: Estimate, grpo: Estimate) -> Estimate:
    """OPSD - GRPO, with an interval at the common level.

    The two errors are independent (the law's residual scatter and its coefficients vs GRPO's seed
    noise), so their variances add: each interval's half-width (= quantile x standard error) is
    combined in quadrature, side by side (the law's interval is symmetric, but nothing here needs
    that). With normal errors at equal quantiles this is exact; with the two Student-t quantiles
    (the law's df_resid, GRPO's n-1) the combined half-width lies between q_min and q_max times the
    combined standard error, i.e. between the two Welch-style limits: neither side's uncertainty is
    dropped. Without a GRPO interval (one seed) the difference gets none: a difference whose
    GRPO side has unknown noise would look more certain than it is."""
    if opsd.level != grpo.level:
        raise ValueError(f"levels differ: OPSD {opsd.level}, GRPO {grpo.level}")
    value = opsd.value - grpo.value
    if None in (opsd.lower, opsd.upper, grpo.lower, grpo.upper):
        return Estimate(value, None, None, opsd.level)
    below = math.hypot(opsd.value - opsd.lower, grpo.upper - grpo.value)  # OPSD low and GRPO high
    above = math.hypot(opsd.upper - opsd.value, grpo.value - grpo.lower)
    return Estimate(value, value - below, value + above, opsd.level)


def sentence(context: str, diff: Estimate, grpo: GrpoBaseline) -> str:
    """One sentence of the verdict for a context."""
    by = f"beat GRPO by {diff.value:+.3f}" if diff.value >= 0 else f"trail GRPO by {-diff.value:.3f}"
    head = f"OPSD with context {context} is predicted to {by}"
    if diff.lower is None:
        return (f"{head} (no interval: GRPO has {grpo.n_seeds} seed here, so its seed spread is unknown; "
                "give it more seeds)")
    interval = f"{diff.level:.0%} interval of OPSD - GRPO [{diff.lower:+.3f}, {diff.upper:+.3f}]"
    if diff.lower > 0:
        verdict = "OPSD is better"
    elif diff.upper < 0:
        verdict = "GRPO is better"
    else:
        verdict = "undecided: the interval contains 0"
    return f"{head} ({interval}): {verdict}"


def _interval(e: Estimate) -> str:
    return f"{e.value:+.3f} [{e.lower:+.3f}, {e.upper:+.3f}]" if e.lower is not None else f"{e.value:+.3f} [n/a]"


def format_table(rows: Sequence[ContextComparison], grpo: GrpoBaseline) -> str:
    """A fixed-width table: one line per context, GRPO's baseline repeated for reading across."""
    header = ("context", "gap", "OPSD predicted", "GRPO", "OPSD - GRPO", "gap from")
    body = [(r.context, f"{r.gap:+.3f}", _interval(r.opsd), _interval(grpo.estimate), _interval(r.difference),
             "store" if len(r.reused) == 2 else ("measured" if not r.reused else f"{r.reused[0]} stored"))
            for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def grpo_rows(runs: pd.DataFrame, world: str, family: str, config: str | None, where: str) -> pd.DataFrame:
    """The GRPO rows of a runs.csv table for `world` and model `family` (one configuration).

    Several GRPO configurations of the same world and family (other learning rates, steps ...)
    are never averaged together: that would mix configuration spread into the seed interval;
    `config` picks one, and the error lists them."""
    missing = [c for c in ("algorithm", "world", "family", "config", "seed", "improvement") if c not in runs]
    if missing:
        raise CompareError(f"{where}: missing column(s) {', '.join(missing)}"
                           + ("; no GRPO rows recorded here: use compare.train_grpo=true" if "algorithm" in missing else ""))
    grpo = runs[runs["algorithm"].fillna("opsd") == "grpo"]
    if grpo.empty:
        raise CompareError(f"{where}: no rows with algorithm=grpo; use compare.train_grpo=true to train GRPO here")
    mine = grpo[(grpo["world"].astype(str) == world) & (grpo["family"].astype(str) == family)]
    if mine.empty:
        have = sorted({f"{w}/{f}" for w, f in zip(grpo["world"], grpo["family"])})
        raise CompareError(f"{where}: no GRPO rows for world {world!r} and model family {family!r}; GRPO rows there "
                           f"(world/family): {', '.join(have)}; or use compare.train_grpo=true")
    configs = sorted(mine["config"].astype(str).unique())
    if config is not None:
        if config not in configs:
            raise CompareError(f"compare.grpo_config: no GRPO rows of config {config!r} for {world}/{family} in {where}; "
                               f"configs there: {', '.join(configs)}")
        return mine[mine["config"].astype(str) == config]
    if len(configs) > 1:
        shown = ", ".join(f"{c} ({(mine['config'].astype(str) == c).sum()} rows)" for c in configs)
        raise CompareError(f"{where}: {len(configs)} GRPO configurations for {world}/{family}: {shown}; "
                           "pick one with compare.grpo_config=<config>")
    return mine


def baseline_from_rows(rows: pd.DataFrame, level: float, source: str) -> GrpoBaseline:
    """GRPO's baseline from its rows: one improvement per seed (a seed recorded twice, e.g. by two
    grids, is averaged first, so a repeat does not pass for an independent seed)."""
    per_seed = rows.groupby(rows["seed"].astype(int))["improvement"].mean().sort_index()
    estimate, std = seed_estimate(per_seed.tolist(), level)
    steps = sorted({int(s) for s in rows["steps"]}) if "steps" in rows else []
    run_ids = [str(r) for r in rows["run_id"]] if "run_id" in rows else []
    return GrpoBaseline(estimate, len(per_seed), std, source, [int(s) for s in per_seed.index], run_ids, steps)


# ============================================================================== gathering the inputs


def read_runs(table: str) -> tuple[pd.DataFrame, str]:
    """(the runs.csv of `table`, its path as shown). Read with pandas directly rather than
    export.read_table: that check requires a gap on every row, and a GRPO run measures none."""
    import pandas as pd

    path = Path(table)
    path = path / "runs.csv" if path.is_dir() else path
    if not path.is_file():
        raise CompareError(f"compare.table: {path.resolve()}: no such file (a runs.csv or a directory holding one)")
    try:
        return pd.read_csv(path), str(path)
    except Exception as exc:
        raise CompareError(f"compare.table: {path}: not a readable CSV ({type(exc).__name__}: {exc})") from None


def law_view(uri: str, cfg: CompareConfig):
    """The registered law, loaded and predicted with by the search's own pruner code."""
    from opsd_platform.errors import RegistryError
    from opsd_platform.search.pruner import GapLawPruner

    try:
        return GapLawPruner(uri, name=cfg.law_name, alias=cfg.law_alias, record=False).law_view()
    except RegistryError as exc:
        raise CompareError(
            f"no gap law to predict OPSD's improvement with ({exc}) in {uri}; register one: opsd calibrate, then "
            "opsd fit-law, on this store (or opsd fit-law law.table=DIR: from a recorded runs.csv table)") from None


def law_inputs(view, gap, cfg: TrainConfig) -> dict[str, float]:
    """The law's input columns for one measured gap: the gap and the covariates this command
    knows (the names calibration records them under); any other is an error naming it."""
    known = {"gap": float(gap.gap), "context_tokens": float(gap.teacher_prompt_tokens),
             "steps": float(cfg.trainer.max_steps)}
    unknown = [c for c in view.inputs if c not in known]
    if unknown:
        raise CompareError(f"law v{view.version} needs input(s) {', '.join(unknown)}, which compare-grpo cannot "
                           f"supply (it knows {', '.join(known)}); use a law without them (compare.law_name/law_alias)")
    return {c: known[c] for c in view.inputs}


class LazyEngine:
    """The rollout engine, built on first use: when every side of every gap is already in the
    measurement store, no model is loaded at all (a repeated call costs a few store reads)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build, self._engine = build, None

    @property
    def built(self) -> bool:
        return self._engine is not None

    def __getattr__(self, name: str) -> Any:
        if self._engine is None:
            self._engine = self._build()
        return getattr(self._engine, name)


def measure_gaps(cfgs: dict[str, TrainConfig],
                 progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], bool]:
    """{key: GapResult} through the measurement store, and whether a model had to be loaded.

    The configs differ only in `context` (and its settings); they share one world, one model and
    one engine. The engine is built the way `opsd gap` builds it (train.setup_run), at the gap's batch
    size. progress: told before each measurement (a side costs ~45 CPU-s on SmolLM2)."""
    from opsd_platform.gap import measurements
    from opsd_platform.runs.train import measurement_store, setup_run
    from opsd_platform.training.rollout import engine_for
    from opsd_platform.worlds import make_world

    first = next(iter(cfgs.values()))
    if first.trainer.num_threads:  # before any key is computed: the keys hold the thread count
        import torch

        torch.set_num_threads(first.trainer.num_threads)

    def build():
        _, model, tokenizer = setup_run(first)
        return engine_for(first, model, tokenizer, first.gap.batch_size)

    engine = LazyEngine(build)
    world = make_world(first.world, seed=first.seed)
    store = measurement_store(first)
    gaps = {}
    for i, (context, cfg) in enumerate(cfgs.items()):
        if progress is not None:
            progress(f"gap {i + 1}/{len(cfgs)}: {context}")
        gaps[context] = measurements.gap(cfg, engine, world, store)
    return gaps, engine.built


def _finished_grpo_run(cfg: TrainConfig) -> tuple[str, float] | None:
    """(run id, improvement) of a FINISHED GRPO training with this config_hash and seed."""
    from opsd_platform import tracking
    from opsd_platform.config import config_hash

    uri = cfg.tracking.resolved_uri()
    client = tracking.init_store(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.kind = 'train' AND tags.algorithm = 'grpo' AND tags.config_hash = '{config_hash(cfg)}' "
        f"AND tags.seed = '{cfg.seed}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"])
    for run in runs:
        if "improvement" in run.data.metrics:
            return run.info.run_id, float(run.data.metrics["improvement"])
    return None


def train_grpo(cfgs: Sequence[TrainConfig], level: float, progress: Callable[[str], None]) -> GrpoBaseline:
    """GRPO trained with the same settings, one run per seed (a finished one is reused)."""
    from opsd_platform.runs.train import train

    run_ids, improvements = [], []
    for cfg in cfgs:
        found = _finished_grpo_run(cfg)
        if found is not None:
            progress(f"GRPO seed {cfg.seed}: finished run {found[0]} in the store, reused")
        else:
            progress(f"GRPO seed {cfg.seed}: training {cfg.trainer.max_steps} steps")
            result = train(cfg, extra_tags={"compare.side": "grpo"})
            if result.improvement is None:
                raise CompareError("the GRPO training reported no improvement (trainer.validate=false?): nothing to compare")
            found = (result.run_id, float(result.improvement))
        run_ids.append(found[0])
        improvements.append(found[1])
    estimate, std = seed_estimate(improvements, level)
    return GrpoBaseline(estimate, len(cfgs), std, "trained", [c.seed for c in cfgs], run_ids,
                        [cfgs[0].trainer.max_steps])


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse training overrides of the keys compare-grpo sets itself (a check of the command line)."""
    from opsd_platform.config.compose import given_keys

    owned = given_keys(overrides, OWNED_KEYS)
    if owned:
        raise CompareError(f"{', '.join(owned)}: compare-grpo sets these itself (the candidates are "
                           "compare.contexts=[...]; OPSD and GRPO are both run); drop them")


def configs(base: TrainConfig, cfg: CompareConfig) -> tuple[dict[str, TrainConfig], list[TrainConfig]]:
    """({context: OPSD config}, [GRPO config per seed, when trained]): `base` with those keys set, all
    validated before anything runs."""
    from opsd_platform.config.compose import with_overrides

    opsd = {c: with_overrides(base, {"algorithm": "opsd", "context": c}) for c in cfg.contexts}
    grpo = [with_overrides(base, {"algorithm": "grpo", "seed": s, "gap.enabled": False})
            for s in cfg.grpo_seeds] if cfg.train_grpo else []
    return opsd, grpo


def compare_grpo(base: TrainConfig, cfg: CompareConfig,
                 progress: Callable[[str], None] = print) -> CompareResult:
    """The comparison (module doc). Cheap checks first: configs, the law, the GRPO rows; then
    the gaps; GRPO trainings (the expensive part) last."""
    opsd_cfgs, grpo_cfgs = configs(base, cfg)
    first = next(iter(opsd_cfgs.values()))
    uri = first.tracking.resolved_uri()
    view = law_view(uri, cfg)
    grpo = None
    if not cfg.train_grpo:
        runs, where = read_runs(cfg.table)
        rows = grpo_rows(runs, first.world.name, first.model.family, cfg.grpo_config, where)
        shown = rows["config"].astype(str).iloc[0]
        grpo = baseline_from_rows(rows, cfg.level, f"table {where} (config {shown})")

    gaps, loaded = measure_gaps(opsd_cfgs)
    n_reused = sum(len(g.reused) for g in gaps.values())
    progress(f"gaps of {len(gaps)} contexts: {n_reused} of {2 * len(gaps)} sides from the measurement store"
             + ("" if loaded else "; no model loaded"))
    if grpo is None:
        grpo = train_grpo(grpo_cfgs, cfg.level, progress)

    rows_out = []
    for context, gap in gaps.items():
        predicted, lower, upper = view.predict(law_inputs(view, gap, opsd_cfgs[context]), cfg.level)
        opsd = Estimate(float(predicted[0]), float(lower[0]), float(upper[0]), cfg.level)
        diff = difference(opsd, grpo.estimate)
        rows_out.append(ContextComparison(context, float(gap.gap), (float(gap.gap_ci[0]), float(gap.gap_ci[1])),
                                          list(gap.reused), opsd, diff, sentence(context, diff, grpo)))
    result = CompareResult(first.world.name, first.model.name, first.model.family, first.seed, cfg.level,
                           {"name": cfg.law_name, "alias": cfg.law_alias, "version": view.version}, grpo, rows_out, uri)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
