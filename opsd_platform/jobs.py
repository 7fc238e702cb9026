"""End-to-end jobs that chain the library's steps: the functions behind ``pipelines/*.py`` and the
``MLproject`` entry points.

    calibrate_law(overrides)   a calibration grid, then fit + validate + register the law on it

(The demo, `make demo`, is opsd_platform/demo/.)

Overrides are the ``opsd`` command line's: Hydra ``key=value`` words for the training config,
plus ``calibrate.*`` and ``law.*`` sections. ``project_overrides`` turns what ``mlflow run`` passes
(each MLproject parameter as one quoted word) into such a list.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Callable, Sequence


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
    calibration: object  # opsd_platform.law.calibrate.CalibrationResult
    law: object  # opsd_platform.law.pipeline.LawReport
    tracking_uri: str
    experiment: str
    calibration_name: str


def calibrate_law(overrides: Sequence[str], progress: Callable[[str], None] = print) -> CalibrateLawResult:
    """Run (or resume) a calibration grid, then fit, validate and register the law on its points.

    ``calibrate.*`` overrides shape the grid, ``law.*`` the fit (``law.calibration`` defaults to
    this grid's name, so points of other calibrations in the store are left out), the rest is the
    training config of every point. Raises ``LawError`` when the points cannot give a law (fewer
    than 3 configurations, all gaps equal): nothing is registered then."""
    from opsd_platform.config.compose import parse_command
    from opsd_platform.law.settings import CalibrateConfig, FitLawConfig

    parsed = parse_command([("calibrate", CalibrateConfig), ("law", FitLawConfig)], overrides, train=True)
    cal, law, base = parsed.configs["calibrate"], parsed.configs["law"], parsed.configs["train"]
    from opsd_platform.law.calibrate import bases, calibrate  # the command line checked: now what runs it (seconds)
    from opsd_platform.law.pipeline import fit_and_register
    uri, experiment = base.tracking.resolved_uri(), base.tracking.experiment
    law.calibration = law.calibration or cal.name
    law.experiment = experiment

    calibration = calibrate(bases(parsed.rest, cal, base), cal, progress=progress)
    if calibration.failed:
        progress(f"{len(calibration.failed)} calibration point(s) failed; fitting the law on the others")
    report = fit_and_register(uri, law)
    return CalibrateLawResult(calibration, report, uri, experiment, cal.name)


def run_job(name: str, job: Callable[[list[str]], int], words: Sequence[str]) -> int:
    """Run a pipeline from its command-line words the way `opsd` runs a command: logging set up,
    a bad config or a law that cannot be fitted is one line on stderr and exit code 2."""
    import sys

    from opsd_platform.errors import LawError, UserError
    from opsd_platform.process import configure_process

    configure_process()
    try:
        return job(project_overrides(words))
    except LawError as exc:
        print(f"{name}: the law could not be fitted: {exc} (nothing was registered)", file=sys.stderr)
    except UserError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
    return 2


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
