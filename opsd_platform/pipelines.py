"""End-to-end jobs that chain the library's steps: the functions behind ``pipelines/*.py`` and the
``MLproject`` entry points.

    calibrate_law(overrides)   a calibration grid, then fit + validate + register the law on it
    demo(overrides)            calibrate (small grid) -> law -> law-pruned search -> report

Overrides are the ``opsd`` command line's: Hydra ``key=value`` words for the training config,
plus ``calibrate.*`` and ``law.*`` sections. ``project_overrides`` turns what ``mlflow run`` passes
(each MLproject parameter as one quoted word) into such a list.

The demo is sized for a 2-core CPU (about 20 minutes on the embedded default): 3 context types x
1 seed x a few steps is enough to exercise every step and to register a law, not to measure one;
the README's "Measured" section has the calibrated numbers.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from opsd_platform.config import default_home

# The demo's grid and per-point sizes (2 cores, SmolLM2-135M: ~2.5 minutes per point: a gap on 8
# problems x 4 samples, validation on 16 x 2 before and after, 3 steps of ~23 s).
DEMO_CALIBRATION = [
    "calibrate.name=demo",
    "calibrate.contexts=[none,feedback,reference]",  # the law needs >= 3 configurations with different gaps
    "calibrate.seeds=[0]",
]
DEMO_TRAINING = [
    "world=arithmetic",
    "trainer.max_steps=3",
    "trainer.progress_bar=false",
    "world.n_val=16",
    "rollout.val_samples=2",
    "gap.n_problems=8",
]
# The search step (`opsd search`): its own study, 2 trials trained fully before the law may prune,
# over a space without the costlier keys (samples per prompt), so its time stays predictable.
DEMO_SEARCH = ["search.study=demo", "search.space=demo", "search.n_trials=4", "search.n_startup_trials=2",
               "search.refit_every=2"]  # two refits (each fits, validates, plots and registers), not four


def project_overrides(words: Sequence[str], environ: dict[str, str] | None = None) -> list[str]:
    """Command-line words -> Hydra overrides.

    ``mlflow run`` passes each MLproject parameter as one shell-quoted word, so a word holding
    several overrides (``"model=tiny trainer.max_steps=2"``) is split and empty words are dropped.
    Under ``mlflow run`` (``MLFLOW_TRACKING_URI`` set) the job writes to that store unless the
    words set ``tracking.uri``."""
    env = os.environ if environ is None else environ
    out = [o for word in words for o in shlex.split(word)]
    given = {o.split("=", 1)[0].lstrip("+") for o in out}
    uri = env.get("MLFLOW_TRACKING_URI")
    if uri and env.get("MLFLOW_RUN_ID") and "tracking.uri" not in given:
        out.append(f"tracking.uri={uri}")
    return out


def opsd_command(command: str, words: Sequence[str]) -> int:
    """`opsd <command>` on the overrides in `words` (see ``project_overrides``)."""
    from opsd_platform.cli import main

    return main([command, *project_overrides(words)])


@dataclass
class CalibrateLawResult:
    calibration: object  # opsd_platform.calibrate.CalibrationResult
    law: object  # opsd_platform.law_pipeline.LawReport
    tracking_uri: str
    experiment: str
    calibration_name: str


def calibrate_law(overrides: Sequence[str], progress: Callable[[str], None] = print) -> CalibrateLawResult:
    """Run (or resume) a calibration grid, then fit, validate and register the law on its points.

    ``calibrate.*`` overrides shape the grid, ``law.*`` the fit (``law.calibration`` defaults to
    this grid's name, so points of other calibrations in the store are left out), the rest is the
    training config of every point. Raises ``LawError`` when the points cannot give a law (fewer
    than 3 configurations, all gaps equal): nothing is registered then."""
    from opsd_platform.calibrate import CalibrateConfig, calibrate
    from opsd_platform.cli import section_config, split_section
    from opsd_platform.compose import train_config
    from opsd_platform.law_pipeline import FitLawConfig, fit_and_register

    cal_overrides, rest = split_section(overrides, "calibrate")
    law_overrides, base = split_section(rest, "law")
    cal = section_config(CalibrateConfig, "calibrate", cal_overrides)
    law = section_config(FitLawConfig, "law", law_overrides)
    tracking_cfg = train_config(base).tracking
    uri, experiment = tracking_cfg.resolved_uri(), tracking_cfg.experiment
    law.calibration = law.calibration or cal.name
    law.experiment = experiment

    calibration = calibrate(base, cal, progress=progress)
    if calibration.failed:
        progress(f"{len(calibration.failed)} calibration point(s) failed; fitting the law on the others")
    report = fit_and_register(uri, law)
    return CalibrateLawResult(calibration, report, uri, experiment, cal.name)


def run_job(name: str, job: Callable[[list[str]], int], words: Sequence[str]) -> int:
    """Run a pipeline from its command-line words the way `opsd` runs a command: logging set up,
    a bad config or a law that cannot be fitted is one line on stderr and exit code 2."""
    import logging
    import sys

    from opsd_platform.cli import CLIError
    from opsd_platform.config import ConfigError
    from opsd_platform.law import LawError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return job(project_overrides(words))
    except (CLIError, ConfigError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
    except LawError as exc:
        print(f"{name}: the law could not be fitted: {exc} (nothing was registered)", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------- demo


@dataclass
class DemoResult:
    calibrate_law: CalibrateLawResult
    search: str  # what the search step did, one line
    study_report: Path | None
    summary_path: Path
    seconds: dict[str, float]


def law_pruned_search(overrides: Sequence[str], progress: Callable[[str], None] = print) -> tuple[str, Path | None]:
    """The demo's search step: a short Optuna search pruned by the law just registered (issue 4).
    Returns one line saying what happened and the study report's path (None when no report)."""
    try:
        from opsd_platform.search import SearchConfig, search
    except ImportError:  # a version without `opsd search`: the demo still calibrates and reports
        return "skipped: `opsd search` is not part of this version", None
    from opsd_platform.cli import section_config, split_section

    mine, base = split_section([*DEMO_SEARCH, *overrides], "search")
    # ---- SEARCH CALL SITE (the demo's only one) ----------------------------------------------
    result = search(base, section_config(SearchConfig, "search", mine), progress=progress)
    # -------------------------------------------------------------------------------------------
    if result.report is None:
        return f"study {result.study!r}: {result.ran} trials run, not finished (other workers?)", None
    s = result.report.summary
    line = (f"study `{result.study}`: {s['n_complete']} trained, {s['n_pruned']} pruned by the law, {s['n_failed']} failed; "
            f"best improvement {s['best_improvement']:+.3f} (trial #{s['best_trial']}); "
            f"estimated compute saved vs training every trial: {s['saving_seconds_est']:.0%} of seconds. "
            f"Study report: `{result.report.html}`; parent MLflow run `{result.parent_run_id}`.")
    return line, Path(result.report.html)


def _point_table(points) -> list[str]:
    rows = ["| configuration | seed | gap | improvement | run |", "|---|---|---|---|---|"]
    for r in points.itertuples():
        rows.append(f"| {r.config} | {r.seed} | {r.gap:+.3f} | {r.improvement:+.3f} | {r.run_id} |")
    return rows


def law_lines(res: CalibrateLawResult) -> list[str]:
    """The calibration's points and the law fitted on them (Markdown lines)."""
    fit, loo, reg = res.law.fit, res.law.loo, res.law.registration
    registered = (f"`{reg['name']}` version {reg['version']}, aliases {', '.join('@' + a for a in reg['aliases']) or 'none'}"
                  f" ({reg['decision']})" if reg else "not registered")
    return [
        f"Tracking store: `{res.tracking_uri}`, experiment `{res.experiment}`.",
        "",
        f"## Calibration `{res.calibration_name}`",
        "",
        *_point_table(res.law.points),
        "",
        "## Law",
        "",
        f"improvement = {fit.intercept:+.3f} + {fit.slope:.3f} x gap  (R^2 {fit.r2:.3f}, {fit.n_configs} configurations, "
        f"{fit.n_points} runs); leave-one-configuration-out RMSE {loo['rmse']:.3f}, MAE {loo['mae']:.3f}.",
        "",
        f"Registered: {registered}. Plot: `{res.law.plot}`; law run `{res.law.law_run_id}`.",
    ]


def look_lines(res: CalibrateLawResult) -> list[str]:
    """How to look at what a job left in the store (Markdown lines)."""
    from opsd_platform import tracking

    name = (res.law.registration or {}).get("name", "opsd-gap-law")
    return [
        "## Look at it",
        "",
        f"- `opsd ui tracking.uri={res.tracking_uri}` (or `{tracking.ui_command(res.tracking_uri)}`), "
        f"http://127.0.0.1:5000: experiment `{res.experiment}` (*Model training* -> Runs; tick runs, *Compare*), "
        f"and under *Model registry* the law `{name}` with its aliases.",
        f"- `opsd law show tracking.uri={res.tracking_uri}`",
        f"- In Python: `mlflow.set_tracking_uri(\"{res.tracking_uri}\")`, then "
        f"`mlflow.pyfunc.load_model(\"models:/{name}@champion\").predict(pd.DataFrame({{\"gap\": [0.1]}}))`",
    ]


def summary_text(res: CalibrateLawResult, search: str, seconds: dict[str, float]) -> str:
    """The demo's report: what was found and how to look at it (Markdown)."""
    lines = [
        "# OPSD demo",
        "",
        *law_lines(res),
        "",
        "A demo-sized grid (one seed, a few steps) exercises every step; its law is dominated by noise "
        "(the README's Measured section has calibrated numbers).",
        "",
        "## Law-pruned search",
        "",
        search,
        "",
        "## Time",
        "",
        *[f"- {step}: {s:.0f} s" for step, s in seconds.items()],
        "",
        *look_lines(res),
    ]
    return "\n".join(lines) + "\n"


def demo(overrides: Sequence[str] = (), progress: Callable[[str], None] = print) -> DemoResult:
    """Calibrate a small grid on the embedded default -> fit -> register -> law-pruned search ->
    report. ``overrides`` come after the demo's own sizes, so any of them can be changed."""
    from mlflow.tracking import MlflowClient

    from opsd_platform import tracking

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    progress("== 1/3 calibration grid, then fit, validate and register the law")
    section = lambda o: o.lstrip("+").split(".", 1)[0]  # noqa: E731
    res = calibrate_law([*DEMO_CALIBRATION, *DEMO_TRAINING, *(o for o in overrides if section(o) != "search")],
                        progress=progress)
    seconds["calibrate + fit + register"] = time.perf_counter() - start

    progress("== 2/3 law-pruned search")
    t = time.perf_counter()
    base = [o for o in [*DEMO_TRAINING, *overrides] if section(o) not in ("calibrate", "law")]
    search, study_report = law_pruned_search(base, progress=progress)
    seconds["search"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start

    progress("== 3/3 report")
    text = summary_text(res, search, seconds)
    db = tracking.sqlite_path(res.tracking_uri)
    out_dir = (db.parent if db else default_home()) / "demo"  # beside the store it describes
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.md"
    path.write_text(text, encoding="utf-8")
    MlflowClient(tracking_uri=res.tracking_uri).log_text(res.law.law_run_id, text, "demo_summary.md")
    return DemoResult(res, search, study_report, path, seconds)
