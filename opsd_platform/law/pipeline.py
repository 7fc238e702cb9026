"""From finished runs in the store to a registered law: collect points, fit, validate out of
sample, plot, log, register.

Points are FINISHED OPSD training runs that measured their initial gap (``gap/value``) and
reached an ``improvement`` (GRPO runs, tag ``algorithm=grpo``, are never points: the law predicts
OPSD only). A *configuration* is ``<model family>/<world>/<context>``; when runs with the
same label differ in other settings (learning rate, loss, ...), the label gets the config hash
(``#<hash>``) so different settings are never averaged together.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from opsd_platform import tracking
from opsd_platform.config import ConfigError, default_home
from opsd_platform.law import LawError, family_slopes, fit_law, grouped_holdout, leave_one_out
from opsd_platform.law.holdout import check_points
from opsd_platform.law.plot import plot_law
from opsd_platform.law.registry import register_law
from opsd_platform.law.settings import FitLawConfig
from opsd_platform.training.contexts import context_label

log = logging.getLogger(__name__)


def collect_points(uri: str, experiment: str, calibration: str | list[str] | None = None) -> pd.DataFrame:
    """One row per FINISHED training run with a measured gap and an improvement (of the given
    calibration name or names, when any)."""
    client = tracking.init_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LawError(f"no experiment {experiment!r} in {uri}; experiments: {', '.join(names) or 'none'}")
    names = [calibration] if isinstance(calibration, str) else list(calibration or [])
    base = "tags.kind = 'train' AND attributes.status = 'FINISHED'"
    queries = [f"{base} AND tags.`calibrate.name` = '{n}'" for n in names] or [base]
    runs = [r for q in queries for r in client.search_runs([exp.experiment_id], filter_string=q, max_results=50000)]
    rows = []
    for run in runs:
        m, t, p = run.data.metrics, run.data.tags, run.data.params
        if "gap/value" not in m or "improvement" not in m:
            continue
        if t.get("algorithm", "opsd") != "opsd":  # the law predicts OPSD's improvement only
            continue
        rows.append({
            "label": f"{t.get('model_family', '?')}/{t.get('world', '?')}/"
                     f"{context_label(t.get('context', '?'), p.get('graded_fraction'))}",
            "config_hash": t.get("config_hash", ""),
            "seed": int(t.get("seed", p.get("seed", 0))),
            "gap": m["gap/value"],
            "improvement": m["improvement"],
            "context": t.get("context"),
            "world": t.get("world"),
            "family": t.get("model_family"),
            "model": t.get("model"),
            "context_tokens": m.get("gap/teacher_prompt_tokens"),
            "steps": float(p.get("trainer.max_steps", "nan")),
            "run_id": run.info.run_id,
        })
    if not rows:
        where = f" of calibration {' or '.join(map(repr, names))}" if names else ""
        raise LawError(f"no finished training runs with a measured gap{where} in experiment {experiment!r} ({uri})")
    points = pd.DataFrame(rows)
    ambiguous = points.groupby("label")["config_hash"].transform("nunique") > 1
    points["config"] = points["label"].where(~ambiguous, points["label"] + "#" + points["config_hash"])
    return points.sort_values(["config", "seed"]).reset_index(drop=True)


def points_from_table(table: str, slices: list[str] | None = None) -> pd.DataFrame:
    """The same points as `collect_points`, from an exported runs.csv (export.py)."""
    from opsd_platform.law.export import read_table

    path = Path(table)
    path = path / "runs.csv" if path.is_dir() else path
    runs = read_table(path)
    if slices:
        unknown = set(slices) - set(runs["slice"].dropna())
        if unknown:
            raise LawError(f"{path}: no rows of slice(s) {', '.join(sorted(unknown))}; "
                           f"slices there: {', '.join(sorted(set(runs['slice'].dropna())))}")
        runs = runs[runs["slice"].isin(slices)]
    return points_from_runs(runs)


def points_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The law's points from rows of an exported table (already read and filtered): OPSD rows only,
    one point per run, sorted by configuration and seed."""
    if "algorithm" in runs:  # the law predicts OPSD's improvement only (rows without the column are OPSD's)
        runs = runs[runs["algorithm"].fillna("opsd") == "opsd"]
    points = pd.DataFrame({
        "label": runs["family"].astype(str) + "/" + runs["world"].astype(str) + "/"
                 + [context_label(c, f) for c, f in zip(runs["context"], runs.get("graded_fraction", [None] * len(runs)))],
        "config_hash": runs["config"].astype(str), "seed": runs["seed"].astype(int), "gap": runs["gap"].astype(float),
        "improvement": runs["improvement"].astype(float), "context": runs["context"], "world": runs["world"],
        "family": runs["family"], "model": runs["model"], "context_tokens": runs["context_tokens"],
        "steps": runs["steps"].astype(float), "run_id": runs["run_id"],
        "slice": runs["slice"] if "slice" in runs else "",
    })
    ambiguous = points.groupby("label")["config_hash"].transform("nunique") > 1
    points["config"] = points["label"].where(~ambiguous, points["label"] + "#" + points["config_hash"])
    return points.sort_values(["config", "seed"]).reset_index(drop=True)


@dataclass
class LawReport:
    fit: Any  # LawFit
    points: pd.DataFrame
    loo: dict
    grouped: dict[str, dict]
    families: dict
    plot: Path
    law_run_id: str
    registration: dict | None
    check: Any = None  # holdout.LawCheck: may this law decide?


def _jsonable(d: Any) -> Any:
    """Hold-out results hold DataFrames and numpy scalars: make them plain JSON."""

    def default(o: Any) -> Any:
        if isinstance(o, pd.DataFrame):
            return o.to_dict(orient="records")
        if hasattr(o, "item"):  # numpy scalar
            return o.item()
        return str(o)

    return json.loads(json.dumps(d, default=default))


def fit_and_register(uri: str, cfg: FitLawConfig, parent_run_id: str | None = None, run_name: str = "fit-law") -> LawReport:
    """Collect points, fit, validate out of sample, plot, log a `kind=law` run (nested under
    `parent_run_id`: a search's refits under the search), register."""
    if cfg.table:
        points = points_from_table(cfg.table, cfg.slices)
    else:
        points = collect_points(uri, cfg.experiment, [*([cfg.calibration] if cfg.calibration else []), *cfg.calibrations])
    kwargs = dict(method=cfg.method, covariates=list(cfg.covariates), level=cfg.level)
    with warnings.catch_warnings():  # statsmodels warns on degenerate folds; the results say so
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = fit_law(points, **kwargs)  # raises LawError (< 3 configs, equal gaps, ...) before anything is logged
        loo = leave_one_out(points, **kwargs)
        grouped = {g: grouped_holdout(points, g, **kwargs) for g in cfg.holdout_groups if points[g].nunique() >= 2}
        families = family_slopes(points, "family", level=cfg.level)
    check = check_points(points, fit, loo_rmse=loo["rmse"], **kwargs)  # may this law decide? (holdout.check_law)
    db = tracking.sqlite_path(uri)
    default_dir = (db.parent if db else default_home()) / "law"  # next to the store it describes
    out_dir = Path(cfg.out_dir).expanduser().resolve() if cfg.out_dir else default_dir
    try:  # before the run opens: a read-only place is a one-line error, not a traceback
        out_dir.mkdir(parents=True, exist_ok=True)
        plot = plot_law(points, fit, holdout=loo, path=out_dir / "law_plot.png")
    except OSError as exc:
        raise ConfigError(f"law.out_dir: cannot write the plot to {out_dir}: {exc.strerror or exc}") from None

    client = MlflowClient(tracking_uri=uri)
    law_run = tracking.start_run(uri, cfg.experiment, run_name, {"kind": "law", "law.method": cfg.method}, parent_run_id)
    with tracking.closing_run(uri, law_run):
        metrics = {
            "law/slope": fit.slope, "law/intercept": fit.intercept, "law/r2": fit.r2,
            "law/pearson_r": fit.pearson_r, "law/pearson_p": fit.pearson_p, "law/residual_std": fit.residual_std,
            "law/n_configs": fit.n_configs, "law/n_points": fit.n_points,
            "law/loo_mae": loo["mae"], "law/loo_rmse": loo["rmse"], "law/loo_coverage": loo["coverage"],
        }
        for g, res in grouped.items():
            for k in ("mae", "rmse", "coverage"):
                if res.get(k) is not None:
                    metrics[f"law/holdout_{g}_{k}"] = res[k]
        if "p" in families.get("equal_slopes", {}):
            metrics["law/equal_slopes_p"] = families["equal_slopes"]["p"]
        for k, v in metrics.items():
            if v is not None and v == v:  # skip NaN
                client.log_metric(law_run, k, float(v))
        with tempfile.TemporaryDirectory() as tmp:
            points.to_csv(Path(tmp) / "points.csv", index=False)
            (Path(tmp) / "law_summary.txt").write_text(fit.summary())
            (Path(tmp) / "holdout.json").write_text(json.dumps(
                _jsonable({"leave_one_out": loo, "grouped": grouped, "families": families}), indent=2))
            for f in ("points.csv", "law_summary.txt", "holdout.json"):
                client.log_artifact(law_run, str(Path(tmp) / f))
        client.log_artifact(law_run, str(plot))
        registration = None
        if cfg.register:
            registration = register_law(
                fit, tracking_uri=uri, name=cfg.name, run_id=law_run,
                source_run_ids=list(points["run_id"]), holdout=loo, promote_if_better=cfg.promote, check=check,
            )
    points.to_csv(out_dir / "points.csv", index=False)
    return LawReport(fit, points, loo, grouped, families, plot, law_run, registration, check)
