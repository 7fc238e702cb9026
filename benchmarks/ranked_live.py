"""A live ranked search beside the replay of its order: does the recorded table predict what a real
ranked search decides and spends? (issue 30, deliverable 6)

    python -m benchmarks.ranked_live run --search-slice law-arithmetic --law-slice law-gemma3-arithmetic [--seed 0]

registers the law fitted on the table's ``--law-slice`` as the prior (``opsd fit-law`` on the CSV,
name ``ranked-<study>``), writes a space of the ``--search-slice``'s plain contexts (its
``context=X`` configurations; graded shares are left out: the live space has one key), and runs a
real ``opsd search search.strategy=ranked`` at that slice's settings in the grid file, on one torch
thread, with ``seed=--seed``. It resumes nothing: a second run needs another ``--study``.

    python -m benchmarks.ranked_live compare [--out benchmarks/results/ranked-live.json]

reads the live study (its gap trials and trainings, their decisions and seconds), maps every
context to the recorded run of (slice, context, seed), drives the same ``RankedPolicy`` over the
recorded gaps and improvements in the live order, with the prior fitted on the same law slice,
and prints both decision sequences, where they differ and why (a gap or an improvement measured
differently), and both costs (live seconds; the replay's recorded CPU-s as the ledger charges it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.live_search import slice_settings, store_uri
from benchmarks.ranked import prior_of
from benchmarks.replay import Ledger, replay_settings
from benchmarks.replay_table import TableError, load_table
from opsd_platform.process import configure_process
from opsd_platform.search.ranked import RankedPolicy, RankedSettings, Step, drive


def contexts_of(configs: list[list[str]]) -> list[str]:
    return [c[0].split("=", 1)[1] for c in configs if len(c) == 1 and c[0].startswith("context=")]


def home_of(uri: str) -> Path:
    from opsd_platform.config.schema import default_home
    from opsd_platform.tracking import sqlite_path

    home = (sqlite_path(uri).parent if sqlite_path(uri) else default_home()) / "ranked-live"
    home.mkdir(parents=True, exist_ok=True)
    return home


def recorded_cost(steps: list[Step], runs: dict) -> Ledger:
    """What a sequence of the policy's decisions costs at the recorded runs' costs: a gap per
    measured candidate, the validation and the training per trained one (trained fully)."""
    ledger = Ledger()
    for step in steps:
        for key in step.keys if step.kind == "measure" else ():
            ledger.gap(runs[key])
        if step.kind == "train":
            run = runs[step.keys[0]]
            ledger.validation(run)
            ledger.train(run, run.steps)
    return ledger


def cmd_run(args: argparse.Namespace) -> int:
    from opsd_platform.cli import main as opsd
    from opsd_platform.law.pipeline import fit_and_register
    from opsd_platform.law.settings import FitLawConfig

    base, configs, _ = slice_settings(args.spec, args.search_slice)
    uri, experiment = store_uri([*base, *args.overrides])
    space = home_of(uri) / f"{args.study}-space.yaml"
    space.write_text(f"# written by benchmarks/ranked_live.py: the plain contexts of slice {args.search_slice}\n"
                     + yaml.safe_dump({"space": {"context": {"type": "categorical", "choices": contexts_of(configs)}}}))
    name = f"ranked-{args.study}"
    report = fit_and_register(uri, FitLawConfig(experiment=experiment, table=args.data, slices=[args.law_slice],
                                                level=args.level, name=name))
    print(f"prior {name} v{report.registration['version']}: {report.registration['decision']} ({report.registration['reason']})")
    argv = ["search", *base, *args.overrides, "trainer.num_threads=1", f"seed={args.seed}", f"search.study={args.study}",
            f"search.space={space}", "search.strategy=ranked", f"search.prior_law=models:/{name}@champion",
            f"search.level={args.level}", *([f"search.storage={args.storage}"] if args.storage else [])]
    print("opsd " + " ".join(argv))
    return opsd(argv)


def live_steps(storage: str, study: str) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float], float]:
    """(the live trials in order, gap per context, improvement per trained context, seconds in all)."""
    import optuna

    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    rows, gaps, improvements, seconds = [], {}, {}, 0.0
    for t in sorted(trials, key=lambda t: t.number):
        a, context = t.user_attrs, t.params["context"]
        if a.get("ranked.phase") == "gap":
            gaps[context] = float(a["gap"])
        elif t.state.name == "COMPLETE":
            improvements[context] = float(t.value)
        seconds += float(a.get("cost.seconds", 0.0))
        rows.append({"trial": t.number, "phase": a.get("ranked.phase"), "context": context, "state": t.state.name.lower(),
                     "rule": a.get("ranked.rule"), "reason": a.get("ranked.reason")})
    return rows, gaps, improvements, seconds


def cmd_compare(args: argparse.Namespace) -> int:
    from opsd_platform.config import config_hash
    from opsd_platform.config.compose import train_config
    from opsd_platform.search.study import default_storage

    base, configs, _ = slice_settings(args.spec, args.search_slice)
    uri, _ = store_uri([*base, *args.overrides])
    storage = args.storage or default_storage(uri)
    rows, gaps, improvements, seconds = live_steps(storage, args.study)
    contexts = [c for c in contexts_of(configs) if c in gaps]
    table = load_table(args.data, search_slices=(args.search_slice,), law_slices=(args.law_slice,))
    runs = {}
    for c in contexts:
        config = config_hash(train_config([*base, f"context={c}", f"seed={args.seed}", "gap.enabled=true"]))
        ids = [k for k in table.runs_of.get(config, []) if int(table.runs[k].seed) == args.seed]
        if not ids:
            raise TableError(f"{args.data}: context {c} (config {config}, seed {args.seed}) is not a recorded run of {args.search_slice}")
        runs[c] = table.runs[ids[0]]
    settings = replay_settings(level=args.level)
    prior = prior_of(table, settings)
    replay = RankedPolicy([(c, c) for c in contexts], *prior, "prior (recorded law slice)", RankedSettings(level=args.level))
    drive(replay, lambda key, step: runs[key].gap, lambda key, step: (runs[key].improvement, True))
    live_again = RankedPolicy([(c, c) for c in contexts], *prior, "prior (recorded law slice)", RankedSettings(level=args.level))
    drive(live_again, lambda key, step: gaps[key], lambda key, step: (improvements.get(key), key in improvements))
    ledger = recorded_cost(replay.steps, runs)
    same = recorded_cost(live_again.steps, runs)  # the live decisions at the recorded costs
    none = recorded_cost([Step("train", (c,)) for c in contexts], runs)  # every context trained, as `none` would
    trained_live = [r["context"] for r in rows if r["phase"] == "train"]
    measured_live = [r["context"] for r in rows if r["phase"] == "gap"]
    reproduces = (trained_live == [s.keys[0] for s in live_again.steps if s.kind == "train"]
                  and measured_live == [k for s in live_again.steps if s.kind == "measure" for k in s.keys])
    decisions = [(s.kind, list(s.keys)) for s in replay.steps]
    live = [(s.kind, list(s.keys)) for s in live_again.steps]
    doc = {"study": args.study, "search_slice": args.search_slice, "law_slice": args.law_slice, "seed": args.seed,
           "live_trials": rows, "gaps": {c: {"live": gaps[c], "recorded": runs[c].gap} for c in contexts},
           "improvements": {c: {"live": improvements.get(c), "recorded": runs[c].improvement} for c in contexts},
           # live: the policy driven again over the live study's own measurements; it must take the
           # study's decisions (one policy, two callers). replay: over the recorded table's.
           "decisions": {"live": live, "replay": decisions, "agree": live == decisions,
                         "policy_reproduces_the_live_study": reproduces},
           "cost": {"live_seconds": seconds, "replay_recorded_cpu_s": ledger.cpu,
                    "live_decisions_at_recorded_cpu_s": same.cpu, "none_recorded_cpu_s": none.cpu}}
    for c in contexts:
        print(f"{c:<18} gap live {gaps[c]:+.3f} recorded {runs[c].gap:+.3f}; improvement live "
              f"{improvements.get(c, float('nan')):+.3f} recorded {runs[c].improvement:+.3f}")
    verb = "takes" if reproduces else "does NOT take"
    print(f"the policy over the live measurements {verb} the live study's decisions")
    print(f"decisions {'agree' if doc['decisions']['agree'] else 'DIFFER'}: live {live}\n  replay {decisions}")
    print(f"the live decisions at the recorded costs: {same.cpu:.0f} CPU-s ({same.cpu / none.cpu:.0%} of `none`'s)")
    print(f"cost: live {seconds:.0f} s; replay {ledger.cpu:.0f} recorded CPU-s ({ledger.cpu / none.cpu:.0%} of `none`'s "
          f"{none.cpu:.0f})")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING, optuna_level=logging.ERROR)
    p = argparse.ArgumentParser(prog="python -m benchmarks.ranked_live", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("run", "compare"))
    p.add_argument("--data", default="benchmarks/data")
    p.add_argument("--spec", default="benchmark", help="the grid file whose slice settings the search uses")
    p.add_argument("--search-slice", default="law-arithmetic")
    p.add_argument("--law-slice", default="law-gemma3-arithmetic")
    p.add_argument("--study", default="ranked-live")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="training overrides (e.g. tracking.uri=...)")
    args = p.parse_args(argv)
    try:
        return cmd_run(args) if args.command == "run" else cmd_compare(args)
    except (ValueError, TableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
