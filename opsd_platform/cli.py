"""The ``opsd`` command: thin shells over the library, configured with Hydra overrides.

    opsd train [key=value ...]        one OPSD training run, recorded in MLflow
    opsd gap [key=value ...]          the initial student vs self-teacher gap of one configuration
    opsd calibrate [calibrate.contexts=[..]] [calibrate.seeds=[..]] [key=value ...]
                                      gap + training per grid point (resumable), for the law
    opsd fit-law [law.method=ols|wls|hc3] [law.calibration=NAME | law.calibrations=[A,B]] [law.promote=true] [tracking.uri=...]
                                      fit the law on the store's points, validate, plot, register
    opsd law show|promote [name=opsd-gap-law] [version=N] [force=true]
    opsd search [search.n_trials=12] [search.pruner=law|median|none] [search.storage=URL] [key=value ...]
                                      Optuna study pruned by the registered law (workers share it)
    opsd grid [grid.spec=benchmark] [grid.workers=2] [grid.only=[slice,..]] [key=value ...]
                                      a recorded benchmark's (configuration x seed) grid, run by
                                      worker processes sharing one Optuna queue (resumable)
    opsd export [export.grid=NAME] [export.out=benchmarks/data] [tracking.uri=...]
                                      the grid's runs as runs.csv, steps.csv, gap_problems.csv
    opsd compare-grpo [compare.contexts=[..]] [compare.table=benchmarks/data | compare.train_grpo=true] [compare.out=F.json] [key=value ...]
                                      per context: measured gap, OPSD's law-predicted improvement vs GRPO's
    opsd judge world=code problems=FILE.jsonl responses=FILE.jsonl
    opsd ui [tracking.uri=...] [port=5000] [create=true]
    opsd setup                        fetch and convert the embedded default model once
    opsd dashboard [storage=URL] [tracking.uri=...] [port=8080]
                                      optuna-dashboard on the search's study (the `dashboard` extra)

Configs are composed from ``conf/`` by ``opsd_platform.config.compose`` and validated by the dataclasses
of ``opsd_platform.config``; a bad value exits with code 2 and one line naming it.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from opsd_platform.config.compose import CommandLine, compose, parse_command, section_config, train_config
from opsd_platform.errors import CLIError, RunInterrupted, UserError
from opsd_platform.process import configure_process

USAGE = __doc__


# --------------------------------------------------------------------------- commands


# The config sections each command composes: (prefix, "module:Class"), "" for the train config. One
# table, read by the commands (`command_sections` composes each section with Hydra) and by
# `opsd <command> --help` (which describes each section's keys). Every module named here is light
# (no torch, MLflow, Optuna or pandas; tests/project/test_first_hour.py checks it): a command checks its
# whole command line first and imports what runs it after, so a config error comes in a second.
TRAIN_CONFIG = "opsd_platform.config:TrainConfig"
SECTIONS = {
    "train": [("", TRAIN_CONFIG)],
    "gap": [("", TRAIN_CONFIG)],
    "calibrate": [("calibrate.", "opsd_platform.law.settings:CalibrateConfig"), ("", TRAIN_CONFIG)],
    "search": [("search.", "opsd_platform.search.settings:SearchConfig"), ("", TRAIN_CONFIG)],
    "grid": [("grid.", "opsd_platform.search.settings:GridConfig"), ("", TRAIN_CONFIG)],
    "export": [("export.", "opsd_platform.law.settings:ExportConfig"), ("tracking.", "opsd_platform.config:TrackingConfig")],
    "fit-law": [("law.", "opsd_platform.law.settings:FitLawConfig"), ("tracking.", "opsd_platform.config:TrackingConfig")],
    "law": [("", "opsd_platform.law.settings:LawCommandConfig")],
    "compare-grpo": [("compare.", "opsd_platform.compare_grpo:CompareConfig"), ("", TRAIN_CONFIG)],
    "ui": [("", "opsd_platform.servers:UIConfig")],
    "dashboard": [("", "opsd_platform.servers:DashboardConfig")],
}


def section_class(target: str) -> type:
    """The config dataclass named by a ``"module:Class"`` entry of SECTIONS."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def command_sections(command: str, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """(the command's configs by section name, the overrides left for its train config): the command
    line composed once, all checked. The train config, composed from the overrides left, is under
    "train" (a trial or point is that config with its own keys set: compose.with_overrides); a
    command without one refuses any override outside its sections, naming them."""
    parsed = parse_command_line(command, overrides)
    return parsed.configs, parsed.rest


def parse_command_line(command: str, overrides: Sequence[str]) -> CommandLine:
    """`command_sections` with each section's overrides as given (`words`: a grid's workers get them)."""
    sections = [(prefix.rstrip("."), section_class(target)) for prefix, target in SECTIONS[command] if prefix]
    whole = [section_class(target) for prefix, target in SECTIONS[command] if not prefix and target != TRAIN_CONFIG]
    takes_train = ("", TRAIN_CONFIG) in SECTIONS[command]
    if whole:  # a command whose own config takes the whole command line
        return CommandLine({"": section_config(whole[0], "", overrides)}, {}, [])
    parsed = parse_command(sections, overrides, train=takes_train)
    if parsed.rest and not takes_train:
        takes = " and ".join(f"{prefix}*" for prefix, _ in SECTIONS[command])
        raise CLIError(f"unknown override(s) {', '.join(parsed.rest)}; {command} takes {takes} keys")
    return parsed


def cmd_train(overrides: Sequence[str]) -> int:
    cfg = train_config(overrides)  # before the heavy imports: a config error comes in a second
    from opsd_platform import tracking

    tracking.init_store(cfg.tracking.resolved_uri())  # so does a store that cannot be used
    from opsd_platform.runs.train import train

    try:
        result = train(cfg)
    except KeyboardInterrupt:  # before the run was opened (loading the model, ...)
        print("opsd train: interrupted before a run was opened; nothing was recorded", file=sys.stderr)
        return 130
    except RunInterrupted as exc:
        print(f"opsd train: {interrupted_message(exc, 'train', overrides)}", file=sys.stderr)
        return exc.exit_code
    uri = result.tracking_uri
    print()
    print(f"MLflow run {result.run_id} (experiment {cfg.tracking.experiment}) in {uri}")
    if result.initial_pass_rate is not None:
        print(
            f"validation pass rate {result.initial_pass_rate:.3f} -> {result.final_pass_rate:.3f} "
            f"(improvement {result.improvement:+.3f})"
        )
    print(f"{result.steps} steps, {result.seconds_per_step:.2f} s/step, peak RSS {result.peak_rss_mb:.0f} MB")
    print(f"look at it: opsd ui tracking.uri={uri}   (or: {tracking.ui_command(uri)})")
    return 0


def interrupted_message(exc: RunInterrupted, command: str, overrides: Sequence[str]) -> str:
    """What Ctrl-C / SIGTERM left (a FAILED run) and the exact command that continues it."""
    if exc.run_id is None:
        return f"{exc}; nothing to resume"
    if exc.checkpoint_step is None:
        return (f"{exc}: run {exc.run_id} is FAILED and has no checkpoint yet (trainer.checkpoint_every); "
                f"run the same command to start over")
    again = [o for o in overrides if not o.lstrip("+").startswith("resume=")] + [f"resume={exc.run_id}"]
    return (f"{exc}: run {exc.run_id} is FAILED with a checkpoint at step {exc.checkpoint_step}; continue it: "
            f"{shlex.join(['opsd', command, *again])}")


def cmd_gap(overrides: Sequence[str]) -> int:
    cfg = train_config(overrides)
    from opsd_platform.runs.train import gap_token_ratio, run_gap

    run_id, gap = run_gap(cfg)
    pct = lambda ci: f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"  # noqa: E731
    ratio = gap_token_ratio(cfg, gap)
    print()
    print(f"context={gap.context}  {gap.n_problems} problems x {gap.samples_per_problem} samples "
          f"(teacher context for {gap.teacher_coverage:.0%} of samples)")
    print(f"student pass rate {gap.student_pass_rate:.3f} {pct(gap.student_ci)}")
    print(f"teacher pass rate {gap.teacher_pass_rate:.3f} {pct(gap.teacher_ci)}")
    print(f"gap               {gap.gap:+.3f} {pct(gap.gap_ci)}  ({gap.level:.0%} bootstrap over problems)")
    print(f"cost: {gap.tokens_generated} tokens, {gap.seconds:.1f} s; {ratio:.1%} of the rollout tokens of a "
          f"{cfg.trainer.max_steps}-step training (which also runs 2 forwards + 1 backward per token)")
    print(f"MLflow run {run_id} in {cfg.tracking.resolved_uri()}")
    return 0


def cmd_calibrate(overrides: Sequence[str]) -> int:
    sections, base = command_sections("calibrate", overrides)
    cal = sections["calibrate"]
    from opsd_platform.law.calibrate import bases, calibrate

    result = calibrate(bases(base, cal, sections["train"]), cal)
    print(
        f"\ncalibration {cal.name!r}: {len(result.done)} trained, {len(result.skipped)} already in the store, "
        f"{len(result.failed)} failed ({result.seconds:.0f} s); parent MLflow run {result.parent_run_id}"
    )
    print("next: opsd fit-law" + "".join(f" {o}" for o in base if o.startswith("tracking.")))
    return 1 if result.failed else 0


def cmd_search(overrides: Sequence[str]) -> int:
    sections, rest = command_sections("search", overrides)
    cfg = sections["search"]
    from opsd_platform.search import search, search_base

    try:
        result = search(search_base(rest, cfg, sections["train"]), cfg)
    except KeyboardInterrupt:
        print("opsd search: interrupted; the trial in progress is re-queued: run the same command to resume", file=sys.stderr)
        return 130
    if cfg.compare:
        return 0
    if cfg.prepare_only:
        print(f"study {result.study!r} ready in {result.storage}; start workers with the same overrides (without prepare_only)")
        return 0
    if not result.done:
        print(f"worker done ({result.ran} trials); other workers are still running trials of study {result.study!r}")
        return 0
    s = result.report.summary
    from opsd_platform.search.report import best_text

    print(f"\nstudy {result.study!r}: {s['n_complete']} trained, {s['n_pruned']} pruned, {s['n_failed']} failed; {best_text(s)}")
    print(f"compute: {s['tokens_total']:.0f} tokens, {s['seconds_total']:.0f} s; estimated saving vs training every trial "
          f"fully: {s['saving_seconds_est']:.0%} of seconds, {s['saving_tokens_est']:.0%} of tokens")
    print(f"report: {result.report.html}; parent MLflow run {result.parent_run_id} in {result.tracking_uri}")
    return 0


def cmd_grid(overrides: Sequence[str]) -> int:
    parsed = parse_command_line("grid", overrides)
    cfg, base = parsed.configs["grid"], parsed.rest
    from opsd_platform.search.grid import run_grid

    try:  # a grid composes its points from its spec file and these words (config-group presets per slice)
        st = run_grid(base, cfg, grid_overrides=parsed.words["grid"])
    except KeyboardInterrupt:
        print("opsd grid: interrupted; running points are re-queued: run the same command to resume", file=sys.stderr)
        return 130
    print(f"\ngrid: {st.done}/{st.total} points done" + (f", {len(st.failed)} failed: {', '.join(st.failed)}" if st.failed else ""))
    print("next: opsd export" + "".join(f" {o}" for o in base if o.startswith("tracking.")))
    return 1 if st.failed else 0


def cmd_export(overrides: Sequence[str]) -> int:
    sections, _ = command_sections("export", overrides)
    cfg, tracking_cfg = sections["export"], sections["tracking"]
    from opsd_platform.law.export import export

    out = export(tracking_cfg.resolved_uri(), tracking_cfg.experiment, cfg)
    for name, n in out.items():
        print(f"{name}: {n} rows")
    return 0


def cmd_fit_law(overrides: Sequence[str]) -> int:
    sections, _ = command_sections("fit-law", overrides)
    cfg, tracking_cfg = sections["law"], sections["tracking"]
    from opsd_platform.errors import LawError
    from opsd_platform.law.pipeline import fit_and_register

    if cfg.experiment == "opsd" and tracking_cfg.experiment != "opsd":
        cfg.experiment = tracking_cfg.experiment
    uri = tracking_cfg.resolved_uri()
    try:
        report = fit_and_register(uri, cfg)
    except LawError as exc:
        raise CLIError(f"{exc} (nothing was registered)") from None
    fit, loo = report.fit, report.loo
    print(fit.summary())
    print(f"\nleave-one-configuration-out: MAE {loo['mae']:.4f}, RMSE {loo['rmse']:.4f}, "
          f"coverage of {fit.level:.0%} intervals {loo['coverage']:.0%} ({loo['n']} configurations)")
    for group, res in report.grouped.items():
        if res.get("rmse") is not None:
            print(f"leave-one-{group}-out: MAE {res['mae']:.4f}, RMSE {res['rmse']:.4f}, coverage {res['coverage']:.0%}")
        for skip in res.get("skipped", []):
            print(f"leave-one-{group}-out skipped {skip['group']}: {skip['reason']}")
    if len(report.families.get("families", {})) > 1:  # several families: each one's own law
        for name, fam in report.families["families"].items():
            if fam.get("fit") is None:
                print(f"family {name} ({fam['n_configs']} configurations): no own law ({fam.get('note')})")
            else:
                lo, hi = fam["slope_ci"]
                print(f"family {name} ({fam['n_configs']} configurations): slope {fam['slope']:.4g} "
                      f"[{lo:.4g}, {hi:.4g}], intercept {fam['intercept']:.4g}, R^2 {fam['r2']:.3f}")
    eq = report.families.get("equal_slopes", {})
    print("equal slopes across families: " + (f"F={eq['F']:.3f}, p={eq['p']:.3g}" if "p" in eq else eq.get("note", "n/a")))
    print(f"plot: {report.plot}")
    print(f"law run {report.law_run_id}")
    print(report.check.reason)
    if report.registration:
        r = report.registration
        print(f"registered {r['name']} version {r['version']} aliases {r['aliases']}: {r['decision']} ({r['reason']})")
    return 0


def cmd_law(overrides: Sequence[str]) -> int:
    if not overrides or overrides[0] not in ("show", "promote"):
        raise CLIError("usage: opsd law show|promote [name=...] [version=N] [force=true] [tracking.uri=...]")
    action = overrides[0]
    sections, _ = command_sections("law", overrides[1:])
    cfg = sections[""]
    from opsd_platform.law.registry import describe, format_table, promote

    uri = cfg.tracking.resolved_uri()
    if action == "show":  # a missing name, alias or version is a RegistryError: one line, exit 2
        print(format_table(describe(uri, cfg.name)))
    else:
        out = promote(cfg.name, cfg.version, tracking_uri=uri, force=cfg.force)
        champion = "none" if out["champion"] is None else f"version {out['champion']}"
        print(f"{out['decision']}: {out['reason']} (champion: {champion})")
    return 0


def cmd_compare_grpo(overrides: Sequence[str]) -> int:
    sections, rest = command_sections("compare-grpo", overrides)
    cfg = sections["compare"]
    from opsd_platform.compare_grpo import check_overrides, compare_grpo, format_table

    check_overrides(rest)
    result = compare_grpo(sections["train"], cfg)
    g = result.grpo
    print(f"\n{result.world} / {result.model} (family {result.family}), seed {result.seed}; law {result.law['name']} "
          f"v{result.law['version']} (@{result.law['alias']}); {result.level:.0%} intervals")
    print(f"GRPO: {g.estimate.value:+.3f} over {g.n_seeds} seed(s) {g.seeds}, {g.source}")
    print(format_table(result.contexts, g))
    print()
    for row in result.contexts:
        print(row.sentence)
    if cfg.out:
        print(f"\nwritten: {cfg.out}")
    return 0


def cmd_judge(overrides: Sequence[str]) -> int:
    from omegaconf import OmegaConf

    from opsd_platform.config import WorldConfig
    from opsd_platform.errors import WorldError
    from opsd_platform.worlds import make_world
    from opsd_platform.worlds.jsonl import judge_responses

    cfg = compose("judge", overrides)
    if OmegaConf.is_missing(cfg, "responses"):
        raise CLIError("responses: required: responses=FILE.jsonl (one {\"question_id\": ..., \"response\": ...} per line)")
    world_fields = OmegaConf.to_container(cfg.world, resolve=True)
    if cfg.problems is not None:
        world_fields["path"] = str(cfg.problems)
    try:
        world_cfg = WorldConfig(**world_fields)
        world = make_world(world_cfg, seed=int(cfg.seed))
        problems = {p.id: p for split in ("train", "val") for p in world.problems(split)}
        results = judge_responses(world, problems, str(cfg.responses))
    except (WorldError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    passed = 0
    for row in results:
        passed += bool(row["passed"])
        print(f"== {row['question_id']}  reward={row['reward']:.3f}  passed={row['passed']}")
        print(row["feedback"].rstrip())
    print(f"\n{passed}/{len(results)} responses passed (grading={world_cfg.grading})")
    return 0


def cmd_ui(overrides: Sequence[str]) -> int:
    from opsd_platform.servers import run_ui

    return run_ui(command_sections("ui", overrides)[0][""])


def cmd_dashboard(overrides: Sequence[str]) -> int:
    from opsd_platform.servers import run_dashboard

    return run_dashboard(command_sections("dashboard", overrides)[0][""])


def cmd_setup(overrides: Sequence[str]) -> int:
    cfg = train_config(overrides)
    from opsd_platform.models import load_policy

    model, tokenizer = load_policy(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    print(f"model ready: {cfg.model.name} ({n / 1e6:.1f}M parameters, vocabulary {len(tokenizer)})")
    return 0


COMMANDS = {"train": cmd_train, "gap": cmd_gap, "calibrate": cmd_calibrate, "fit-law": cmd_fit_law, "search": cmd_search, "grid": cmd_grid, "export": cmd_export, "law": cmd_law, "compare-grpo": cmd_compare_grpo, "judge": cmd_judge, "ui": cmd_ui, "setup": cmd_setup, "dashboard": cmd_dashboard}


def command_help(command: str) -> str:
    """The command's usage line and every key it takes, with its default and help text."""
    from opsd_platform.config.compose import describe_fields

    usage = [line for line in USAGE.splitlines() if line.strip().startswith(f"opsd {command}")]
    out = usage or [f"opsd {command}"]
    for prefix, target in SECTIONS.get(command, []):
        schema = section_class(target)
        out += [f"\n{prefix.rstrip('.') or 'training'} keys ({schema.__name__}):", *describe_fields(schema, prefix)]
    if command in SECTIONS:
        out.append("\n[how]: changes how a result is computed, not what (config_hash leaves it out)")
    return "\n".join(out)


def print_or_pipe_closed(text: str) -> int:
    """Print `text`; a reader that stops early (``opsd train --help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the pipe again when flushing stdout at exit: point stdout at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    configure_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_or_pipe_closed(USAGE)
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"opsd: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if any(o in ("-h", "--help") for o in overrides):
        return print_or_pipe_closed(command_help(command))
    try:
        return COMMANDS[command](overrides)
    except UserError as exc:  # the message is the whole story (opsd_platform/errors.py): no traceback
        print(f"opsd {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a command without its own account of what Ctrl-C left (train, search, grid have one)
        print(f"opsd {command}: interrupted (SIGINT)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
