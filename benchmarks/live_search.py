"""A live ``opsd search`` beside its replay: does the recorded table predict what a real search does?

The replay (benchmarks/replay.py) says what a law-pruned search would decide and spend by reading
recorded runs instead of training. This checks it against a real search, in two steps:

    python -m benchmarks.live_search run --search-slice law-arithmetic --law-slice law-pyfunc --trials 8

registers the law fitted on the table's ``--law-slice`` (``opsd fit-law`` on the CSV), writes a
search space that lists the ``--search-slice``'s configurations and seeds (the space's
``configs:``, so every trial is a point the table holds), and runs a real ``opsd search`` of
``--trials`` trials at that slice's settings in the grid file, pruned by that law, on one torch
thread (the grid's). ``search.refit_every=0``: the law stays the one fitted on the table, as the
replay's below does, so that a difference is one of measurement, not of two learning loops.
It resumes: run it again to go on.

    python -m benchmarks.live_search compare --out benchmarks/results/live-search.json

maps every trial of the live study to the recorded run of its (configuration, seed), replays the
``law`` arm on exactly that order (``Replay(given=...)``: the same ``GapLawPruner`` decision code,
the first law fitted on the same slice, the same calibration draws) and the ``none`` arm, and
prints per trial the recorded and the live gap, the replay's and the live decision, and what
each paid; then the totals as fractions of ``none``'s recorded compute. A differing decision is
explained by what differed: the gap (the live measurement is a new sample: a seed reproduces a
recorded run only on the same CPU kernels) or the bar (an earlier trial's improvement differed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from benchmarks.replay import Ledger, Replay, ReplaySettings, replay_settings
from benchmarks.replay_table import Run, TableError, load_table
from opsd_platform.process import configure_process

LAW_ALIAS = "live"


@dataclass
class LiveTrial:
    """One trial of the live study, with what it measured and paid (MLflow), keyed like a table run."""

    number: int
    state: str  # complete | pruned
    label: str  # the configuration's overrides, as the space lists them
    seed: int
    config: str  # config_hash at the slice's settings (the table's `config`)
    mlflow_run_id: str
    gap: float
    action: str | None  # the law's decision (train | prune | calibrate)
    rule: str | None
    bar: float | None
    improvement: float | None
    run: Run  # its measurements and costs, shaped as a table run (for the same Ledger)


def slice_settings(spec_name: str, slice_name: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(base overrides, configurations, seeds) of a slice of a grid file that lists its configurations."""
    from opsd_platform.search.grid import load_spec

    spec = load_spec(spec_name)
    for s in spec["slices"]:
        if s["name"] == slice_name:
            if "configs" not in s:
                raise ValueError(f"{spec['path']}: slice {slice_name} draws its configurations; list them to search them live")
            return [*spec.get("base", []), *s.get("overrides", [])], s["configs"], list(s.get("seeds", spec.get("seeds", [0])))
    raise ValueError(f"{spec['path']}: no slice {slice_name!r}; slices: {', '.join(s['name'] for s in spec['slices'])}")


def space_document(configs: list[list[str]], seeds: list[int]) -> dict:
    """A search space whose trials are the slice's points: one of its configurations, one of its seeds."""
    return {"configs": [list(c) for c in configs], "space": {"seed": {"type": "categorical", "choices": list(seeds)}}}


def search_arguments(args: argparse.Namespace, base: list[str], space: Path, law_name: str) -> list[str]:
    return ["search", *base, *args.overrides, "trainer.num_threads=1", f"search.study={args.study}", f"search.space={space}",
            f"search.n_trials={args.trials}", "search.pruner=law", "search.refit_every=0", f"search.law_name={law_name}",
            f"search.law_alias={LAW_ALIAS}", f"search.seed={args.seed}", f"search.n_startup_trials={args.startup}",
            f"search.calibration_rate={args.calibration_rate}", f"search.level={args.level}",
            *([f"search.storage={args.storage}"] if args.storage else [])]


def store_uri(overrides: Sequence[str]) -> tuple[str, str]:
    from opsd_platform.config.compose import train_config

    cfg = train_config(list(overrides)).tracking
    return cfg.resolved_uri(), cfg.experiment


def cmd_run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from opsd_platform.cli import main as opsd
    from opsd_platform.config.schema import default_home
    from opsd_platform.law.pipeline import fit_and_register
    from opsd_platform.law.settings import FitLawConfig
    from opsd_platform.tracking import sqlite_path

    base, configs, seeds = slice_settings(args.spec, args.search_slice)
    uri, experiment = store_uri([*base, *args.overrides])
    home = (sqlite_path(uri).parent if sqlite_path(uri) else default_home()) / "live-search"
    home.mkdir(parents=True, exist_ok=True)
    space = home / f"{args.study}-space.yaml"
    space.write_text("# written by benchmarks/live_search.py: the points of slice "
                     f"{args.search_slice} ({args.spec})\n" + yaml.safe_dump(space_document(configs, seeds), sort_keys=False))
    law_name = f"live-{args.study}"
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_model_version_by_alias(law_name, LAW_ALIAS)
        print(f"law {law_name}@{LAW_ALIAS}: registered before (a resumed search keeps its law)")
    except MlflowException:
        report = fit_and_register(uri, FitLawConfig(experiment=experiment, table=args.data, slices=[args.law_slice],
                                                    level=args.level, name=law_name))
        client.set_registered_model_alias(law_name, LAW_ALIAS, report.registration["version"])
        print(f"law {law_name} v{report.registration['version']}@{LAW_ALIAS}, fitted on {args.data} slice {args.law_slice}:")
        print(report.fit.summary())
    argv = search_arguments(args, base, space, law_name)
    print("opsd " + " ".join(argv))
    return opsd(argv)


# ----------------------------------------------------------------------------- compare


def _live_run(client, trial, config: str, seed: int, steps: int) -> Run:
    """The trial's measurements and costs as a table `Run` (what it paid is decided by the Ledger's keys)."""
    import numpy as np

    from opsd_platform.law.export import VAL_KEY_PARAMS, gap_json, metric_history, param_key

    rid = trial.user_attrs["mlflow_run_id"]
    r = client.get_run(rid)
    m, p = r.data.metrics, r.data.params
    keys = gap_json(client, rid)
    val_cpu, val_tokens = metric_history(client, rid, "val/cpu_s"), metric_history(client, rid, "val/tokens")
    trained = trial.state.name == "COMPLETE"
    cum_cpu = {steps: m.get("cost/train_cpu_s", 0.0)} if trained else {0: 0.0}
    cum_tokens = {steps: m.get("cost/train_tokens", 0.0)} if trained else {0: 0.0}
    return Run(run_id=rid, config=config, seed=str(seed), slice="live", gap=m["gap/value"],
               improvement=m.get("improvement", float("nan")), gap_key=keys["teacher_key"], gap_student_key=keys["student_key"],
               val_key=param_key(p, VAL_KEY_PARAMS), gap_cpu_s=m["gap/cpu_s"], gap_tokens=m["gap/tokens"],
               gap_student_cpu_s=m["gap/student_cpu_s"], gap_student_tokens=m["gap/student_tokens"],
               val_initial_cpu_s=val_cpu.get(0, 0.0), val_initial_tokens=val_tokens.get(0, 0.0), steps=steps, covariates={},
               val_steps=np.array([steps]), val_values=np.array([m.get("improvement", float("nan"))]),
               cum_cpu=cum_cpu, cum_tokens=cum_tokens)


def live_trials(storage: str, study_name: str, uri: str, base: list[str]) -> list[LiveTrial]:
    import optuna
    from mlflow.tracking import MlflowClient

    from opsd_platform.config import config_hash
    from opsd_platform.config.compose import train_config

    study = optuna.load_study(study_name=study_name, storage=storage)
    client = MlflowClient(tracking_uri=uri)
    out = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.name not in ("COMPLETE", "PRUNED"):
            raise ValueError(f"study {study_name}: trial #{t.number} is {t.state.name}; finish the search first (run it again)")
        label, seed = t.params["config"], int(t.params["seed"])
        cfg = train_config([*base, *label.split(" "), f"seed={seed}", "gap.enabled=true"])
        config, a = config_hash(cfg), t.user_attrs
        out.append(LiveTrial(t.number, t.state.name.lower(), label, seed, config, a["mlflow_run_id"], float(a["gap"]),
                             a.get("pruner.action"), a.get("pruner.rule"), a.get("pruner.bar"),
                             float(t.value) if t.value is not None else None,
                             _live_run(client, t, config, seed, cfg.trainer.max_steps)))
    return out


def spend(runs: list[tuple[Run, bool]]) -> Ledger:
    """What a study paid for these (run, trained) in order: each gap, each trained run's validation and training."""
    ledger = Ledger()
    for run, trained in runs:
        ledger.gap(run)
        if trained:
            ledger.validation(run)
            ledger.train(run, run.steps)
    return ledger


def compare(live: list[LiveTrial], data: str, search_slice: str, law_slice: str, settings: ReplaySettings, order: int) -> dict[str, Any]:
    table = load_table(data, search_slices=(search_slice,), law_slices=(law_slice,))
    given = []
    for t in live:
        ids = [k for k in table.runs_of.get(t.config, []) if int(table.runs[k].seed) == t.seed]
        if not ids:
            raise TableError(f"{data}: trial #{t.number} ({t.label}, seed {t.seed}, config {t.config}) is not a recorded run of "
                             f"slice {search_slice}")
        given.append((t.config, ids[0]))
    law = Replay(table, "law", order, settings, given=given).run()
    none = Replay(table, "none", order, settings, given=given).run()
    rows = []
    for t, rec, (_, run_id) in zip(live, law.records, given):
        recorded = table.runs[run_id]
        why = None
        if rec.action != t.action:
            same_bar = rec.bar is None and t.bar is None or rec.bar is not None and t.bar is not None and abs(rec.bar - t.bar) < 1e-9
            why = "the gap" if same_bar else "the bar (an earlier trial's improvement)"
        rows.append({"trial": t.number, "configuration": t.label, "seed": t.seed, "run_id": t.mlflow_run_id,
                     "recorded_run_id": run_id, "gap_recorded": recorded.gap, "gap_live": t.gap,
                     "action_replay": rec.action, "action_live": t.action, "rule_replay": rec.rule, "rule_live": t.rule,
                     "bar_replay": rec.bar, "bar_live": t.bar, "state_replay": rec.state, "state_live": t.state,
                     "improvement_recorded": recorded.improvement, "improvement_live": t.improvement,
                     "differs_by": why})
    paid = spend([(t.run, t.state == "complete") for t in live])
    return {"trials": rows, "agree": sum(r["action_replay"] == r["action_live"] for r in rows), "n": len(rows),
            "cpu_s": {"none_recorded": none.cpu, "law_replay": law.cpu, "law_live": paid.cpu,
                      "law_replay_gap": law.gap_cpu, "law_live_gap": paid.gap_cpu},
            "compute_ratio": {"replay": law.cpu / none.cpu, "live": paid.cpu / none.cpu},
            "law_slice": law_slice, "search_slice": search_slice, "settings": asdict(settings), "order": order}


def print_comparison(doc: dict, out=sys.stdout) -> None:
    def num(v: Any, fmt: str = "+.3f") -> str:
        return "-" if v is None or v != v else format(v, fmt)

    print(f"{'#':>3} {'configuration':<40} {'seed':>4} {'gap rec':>8} {'gap live':>8} {'replay':>10} {'live':>10} "
          f"{'impr rec':>8} {'impr live':>9}  differs by", file=out)
    for r in doc["trials"]:
        print(f"{r['trial']:>3} {r['configuration'][:40]:<40} {r['seed']:>4} {num(r['gap_recorded']):>8} {num(r['gap_live']):>8} "
              f"{r['action_replay'] or '-':>10} {r['action_live'] or '-':>10} {num(r['improvement_recorded']):>8} "
              f"{num(r['improvement_live']):>9}  {r['differs_by'] or ''}", file=out)
    c = doc["cpu_s"]
    print(f"decisions equal: {doc['agree']} of {doc['n']}; CPU-s: none (recorded) {c['none_recorded']:.0f}, law replayed "
          f"{c['law_replay']:.0f} ({doc['compute_ratio']['replay']:.0%}), law live {c['law_live']:.0f} "
          f"({doc['compute_ratio']['live']:.0%}); gaps {c['law_replay_gap']:.0f} replayed vs {c['law_live_gap']:.0f} live", file=out)


def cmd_compare(args: argparse.Namespace) -> int:
    from opsd_platform.search.study import default_storage

    base, _, _ = slice_settings(args.spec, args.search_slice)
    uri, _ = store_uri([*base, *args.overrides])
    storage = args.storage or default_storage(uri)
    live = live_trials(storage, args.study, uri, base)
    settings = replay_settings(n_startup_trials=args.startup, calibration_rate=args.calibration_rate, level=args.level, refit_every=0)
    doc = compare(live, args.data, args.search_slice, args.law_slice, settings, args.seed)
    doc.update({"study": args.study, "storage": storage, "tracking_uri": uri})
    print_comparison(doc)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_search", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "register the law, run (or resume) the live search"),
                            ("compare", "the live study beside the replay of its trial order")):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--data", default="benchmarks/data", help="the recorded table (runs.csv, steps.csv)")
        c.add_argument("--spec", default="benchmark", help="grid file the table was recorded with (conf/grid/<spec>.yaml)")
        c.add_argument("--search-slice", default="law-arithmetic", help="slice whose configurations and seeds are searched")
        c.add_argument("--law-slice", default="law-pyfunc", help="slice the law is fitted on (never the searched one)")
        c.add_argument("--study", default="live-law-arithmetic", help="Optuna study name")
        c.add_argument("--storage", default=None, help="Optuna storage (default: optuna.db beside the MLflow store)")
        c.add_argument("--trials", type=int, default=8, help="trials of the live search")
        c.add_argument("--seed", type=int, default=0, help="search.seed: the sampler's and the calibration draws' seed")
        c.add_argument("--startup", type=int, default=3, help="completed trials before the law prunes")
        c.add_argument("--calibration-rate", type=float, default=0.2, help="share of would-be-pruned trials trained anyway")
        c.add_argument("--level", type=float, default=0.9, help="prediction-interval level")
        c.add_argument("--out", default=None, help="(compare) write the comparison JSON here")
        c.add_argument("overrides", nargs="*", help="training overrides after the slice's (e.g. tracking.uri=...)")
    return p


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING, optuna_level=logging.ERROR)
    args = build_parser().parse_args(argv)
    if args.search_slice == args.law_slice:
        print("error: --search-slice and --law-slice are the same: the law would have seen the search's answers", file=sys.stderr)
        return 2
    try:
        return cmd_run(args) if args.command == "run" else cmd_compare(args)
    except (ValueError, TableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
