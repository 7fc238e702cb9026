"""``run_demo``: gathers the inputs of decide.py's functions (the recorded table, the law registered in
the demo's own store, the live gaps, the trainings of the survivors) and prints what they say.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from opsd_platform.config import ConfigError, default_home
from opsd_platform.demo.decide import (
    DEMO_ALIAS,
    GRID_NAME,
    Candidate,
    DemoConfig,
    DemoReport,
    best_recorded,
    choose_candidates,
    decide_all,
    decision_line,
    decision_records,
    law_verdict,
    new_seed,
    outcome_rows,
    plan,
    recorded_configs,
    savings,
    summary_text,
    training_cap,
)

if TYPE_CHECKING:  # pandas is imported by run_demo once the command line is checked
    import pandas as pd

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
                raise ConfigError(f"demo.slice: {name} draws its configurations; "
                                  "the demo needs a slice that lists them")
            return s
    raise ConfigError(f"demo.slice: no slice {name!r} in {spec['path']}; "
                      f"slices: {', '.join(s['name'] for s in spec['slices'])}")


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
            f"`{rows['slice'].iloc[0]}` of grid {grids} ({spec['path']}): "
            f"{', '.join(sorted(rows['model'].astype(str).unique()))}, "
            f"{', '.join(str(int(s)) for s in sorted(rows['steps'].unique()))} steps. Each row's `run_id` is the MLflow run "
            "that produced it (benchmarks/data/README.md)."]


def write_spec(path: Path, spec: dict, sl: dict, configs: Sequence[Sequence[str]], seed: int) -> Path:
    """The demo's grid file: the benchmark's base and slice settings, the survivors, the new seed."""
    import yaml

    doc = {"name": GRID_NAME, "seeds": [int(seed)], "base": list(spec.get("base", [])),
           "slices": [{"name": sl["name"], "overrides": list(sl.get("overrides", [])),
                       "configs": [list(c) for c in configs]}]}
    path.write_text("# written by the demo (opsd_platform/demo/): the survivors of the law, at the benchmark's settings\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class DemoResult:
    report: DemoReport
    summary_path: Path
    failed: list[str]


def run_demo(overrides: Sequence[str], progress: Callable[[str], None] = print) -> DemoResult:
    from opsd_platform.config import config_hash
    from opsd_platform.config.compose import parse_command, train_config

    start = time.perf_counter()
    seconds: dict[str, float] = {}
    parsed = parse_command([("demo", DemoConfig)], overrides, train=False)  # its section first: nothing made yet
    # The training overrides stay words: the demo's points are grid points, composed from the spec's
    # overrides (config-group presets per slice) and these, as the grid's worker processes compose them.
    cfg, user = parsed.configs["demo"], demo_store(parsed.rest)
    tracking_cfg = train_config(user).tracking  # the command line checked: now what runs it (seconds)
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from opsd_platform import tracking
    from opsd_platform.compare_grpo import measure_gaps
    from opsd_platform.demo.ranked import ranked_lines, ranked_walk
    from opsd_platform.errors import NotTrained
    from opsd_platform.law.pipeline import fit_and_register
    from opsd_platform.law.settings import FitLawConfig
    from opsd_platform.search.grid import load_spec, point_overrides, run_grid
    from opsd_platform.search.pruner import GapLawPruner
    from opsd_platform.search.settings import GridConfig

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
    progress(f"== 1/5 the law: fit on the recorded benchmark ({path}, slice {cfg.slice}) and register it in {uri}")
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
    progress(f"== 2/5 live gaps: {', '.join(cands)} at seed {seed} (not in the table), student side shared")
    point = lambda c: list(point_overrides(spec, sl, c.overrides, seed, user))  # noqa: E731
    gap_cfgs = {k: train_config([*point(c), "trainer.num_threads=1"]) for k, c in cands.items()}
    gaps, _ = measure_gaps(gap_cfgs, progress=progress)
    student_cpu = max((g.student_cpu_s for g in gaps.values()), default=0.0)  # one side, shared by every context
    gap_cpu = student_cpu + sum(g.cpu_s - g.student_cpu_s for g in gaps.values())
    seconds["gaps"] = time.perf_counter() - t

    # -- 3. predict, decide (the search's own policy), train the survivors
    progress(f"== 3/5 predictions BEFORE training ({cfg.level:.0%} intervals; bar: best recorded configuration "
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
    out_dir = (tracking.sqlite_path(uri) or default_home() / "demo" / "x").parent
    if p.train:
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
    progress("== 4/5 predicted vs measured")
    measured, trained_cpu, val_cpu = measured_runs(uri, experiment, {k: config_hash(gap_cfgs[k]) for k in p.train}, seed)
    outcomes = outcome_rows(decisions, measured, p.train)
    sv = savings(gap_cpu, trained_cpu, val_cpu, cands, p)

    # -- 5. the ranked search's policy on the same candidates (demo/ranked.py)
    t = time.perf_counter()
    progress("== 5/5 the ranked search on the same candidates (search.strategy=ranked, the law as its prior)")
    more = {"n": len(p.train), "cpu": 0.0}  # trainings so far; CPU-s of the walk's own

    def improvement(label: str) -> float:
        if label in measured:
            return measured[label][0]
        c = cands[label]
        left, cost = cfg.budget_s - (time.perf_counter() - start) - 30, c.recorded_train_cpu_s + c.recorded_val_cpu_s
        if cfg.max_train is not None and more["n"] >= cfg.max_train:
            raise NotTrained(f"it asks for {label}, and demo.max_train={cfg.max_train} trainings have run")
        if cost > left:
            raise NotTrained(f"it asks for {label}, whose recorded ~{cost:.0f} s do not fit in the {max(left, 0):.0f} s "
                             f"left of the {cfg.budget_s:.0f} s budget")
        more["n"] += 1
        spec_file = write_spec(out_dir / "grid-demo.yaml", spec, sl, [c.overrides], seed)
        run_grid(user, GridConfig(spec=str(spec_file), workers=min(cfg.workers, 1), threads=1, exported=None, poll_s=60.0),
                 progress=progress, grid_overrides=[f"grid.spec={spec_file}", "grid.threads=1", "grid.exported=null"])
        got, cpu, _ = measured_runs(uri, experiment, {label: config_hash(gap_cfgs[label])}, seed)
        more["cpu"] += cpu
        if label not in got:
            raise NotTrained(f"its training of {label} did not finish")
        measured[label] = got[label]
        return got[label][0]

    walk = ranked_walk({k: g.gap for k, g in gaps.items()}, (report.fit, reg["check"]), f"the demo's law v{reg['version']}",
                       cfg.level, improvement)
    walk.cpu_s = more["cpu"]
    for line in ranked_lines(walk, p.train)[4:]:
        progress("  " + line)
    seconds["ranked"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    law = {"name": reg["name"], "version": reg["version"], "alias": DEMO_ALIAS, "run_id": report.law_run_id}
    result = DemoReport(prov, report.fit.summary(), verdict, bar, seed, decisions, p, cap_reason, outcomes, sv,
                        cfg.level, law, uri, seconds, ranked_lines(walk, p.train))
    text = summary_text(result)
    db = tracking.sqlite_path(uri)
    summary_path = (db.parent if db else default_home() / "demo") / "summary.md"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(text, encoding="utf-8")
    client = MlflowClient(tracking_uri=uri)
    client.log_text(report.law_run_id, text, "demo_summary.md")
    client.log_table(report.law_run_id, pd.DataFrame(decision_records(decisions, p, measured)), "demo_decisions.json")
    return DemoResult(result, summary_path, failed)


def measured_runs(uri: str, experiment: str, hashes: dict[str, str], seed: int) -> tuple[dict[str, tuple[float, str]], float, float]:
    """({label: (improvement, run id)}, training CPU-s, initial-validation CPU-s) of the demo's
    finished trainings (export.collect reads them the way the benchmark table was made); the
    initial validation is counted once per key (runs of a seed share it)."""
    from opsd_platform.errors import ExportError
    from opsd_platform.law.export import collect

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
