"""The gap law in the MLflow model registry: log (pyfunc from code), register, alias, promote, load.

Alias policy (aliases, never stages): the first version of a name becomes ``@champion``; every
later version becomes ``@challenger``. A challenger replaces the champion only when its hold-out
RMSE (leave-one-configuration-out, stored as the version tag ``holdout_rmse``) is lower, or when
forced; the decision and its reason are written as version tags.

Plain-Python use, once registered::

    mlflow.set_tracking_uri("sqlite:////abs/path/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/opsd-gap-law@champion")
    model.predict(pd.DataFrame({"gap": [0.1, 0.3]}))                       # -> predicted_improvement, lower, upper
    model.predict(pd.DataFrame({"gap": [0.1]}), params={"level": 0.95})   # wider interval
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from opsd_platform import tracking
from opsd_platform.errors import RegistryError
from opsd_platform.law import LawFit
from opsd_platform.law.holdout import LawCheck, check_law, constant_loo_rmse
from opsd_platform.law.names import CHALLENGER, CHAMPION, DEFAULT_NAME
from opsd_platform.law.promotion import Standing, promotion

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CARRIED_CODE = "opsd_law_code"  # the model's code/ folder holding its copy of opsd_platform (_law_code)
ARTIFACT_NAME = "law"
# Version tag values are capped by the store (5000 chars in MLflow's SQL schema).
_TAG_LIMIT = 4000
# Tags shown by `describe` (and `opsd law show`), in this order.
METRIC_TAGS = (
    "method",
    "n_configs",
    "n_points",
    "slope",
    "intercept",
    "r2",
    "holdout_rmse",
    "holdout_mae",
    "holdout_coverage",
)


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _using_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (Model.log, register_model, load_model) at `uri`, then restore.

    Model.log takes no tracking URI, so the process-wide one is set for the duration.
    mlflow.set_tracking_uri / set_registry_uri also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
    into os.environ; on exit both URIs go back to "not set" and the environment to what it was,
    so MLflow resolves them as before: from the environment, where a caller's own
    set_tracking_uri / set_registry_uri also left its URI.
    """
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tag_float(value: Any, exact: bool = False) -> str:
    """A float as a version tag ("nan" for missing): 4 significant digits, as `opsd law show` prints
    it, for a person reading the registry page; exact (parses back to the same float) for a tag a
    decision parses (holdout_rmse: promote compares it with the champion's)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "nan"
    return repr(value) if exact else f"{value:.4g}"


def _parse_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _join_ids(ids: Sequence[str], limit: int = _TAG_LIMIT) -> str:
    """Comma-joined ids, cut at a whole id with a "(+N more)" note to fit a tag value."""
    ids = [str(i) for i in ids]
    out = ",".join(ids)
    if len(out) <= limit:
        return out
    kept: list[str] = []
    for i, run_id in enumerate(ids):
        suffix = f",...(+{len(ids) - i - 1} more)"
        if len(",".join([*kept, run_id])) + len(suffix) > limit:
            break
        kept.append(run_id)
    return ",".join(kept) + f",...(+{len(ids) - len(kept)} more)"


def law_signature(fit: LawFit) -> ModelSignature:
    """Input: gap (+ covariates) as doubles; output: predicted_improvement, lower, upper; param level."""
    return ModelSignature(
        inputs=Schema([ColSpec("double", col) for col in ["gap", *fit.covariates]]),
        outputs=Schema([*(ColSpec("double", c) for c in ("predicted_improvement", "lower", "upper")),
                        ColSpec("boolean", "clipped")]),
        params=ParamSchema([ParamSpec("level", "double", float(fit.level))]),
    )


def _pip_requirements() -> list[str]:
    # Explicit, so MLflow does not load the model in a subprocess to infer them (seconds per log):
    # what the carried code (_law_code) imports, besides itself.
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas", "scipy")]


def _law_code(into: Path) -> Path:
    """The model's ``code_paths``: a copy of the code it needs (the package root, errors.py, law/)
    as ``into/<CARRIED_CODE>/opsd_platform``. Not on sys.path by itself (that would shadow an
    installed opsd_platform in a process that imports it later): pyfunc_model.py falls back to it
    only when no opsd_platform can be imported, as in a fresh environment."""
    package = Path(__file__).resolve().parents[1]
    target = into / CARRIED_CODE / "opsd_platform"
    (target / "law").mkdir(parents=True)
    for name in ("__init__.py", "errors.py"):
        shutil.copy2(package / name, target / name)
    for source in (package / "law").glob("*.py"):
        shutil.copy2(source, target / "law" / source.name)
    return into / CARRIED_CODE


def describe_fit(fit: LawFit, holdout: Mapping[str, Any]) -> str:
    """The version's description: what it was fitted on and how well it holds out (Markdown)."""
    text = (f"Gap law: improvement = {fit.intercept:+.3f} + {fit.slope:.3f} x gap ({fit.method}, R^2 {fit.r2:.3f}), "
            f"fitted on {fit.n_configs} configurations ({fit.n_points} runs)")
    text += f" with covariates {', '.join(fit.covariates)}." if fit.covariates else "."
    if holdout.get("rmse") is not None:
        text += (f" Held out ({holdout.get('kind', 'leave_one_out')}): RMSE {float(holdout['rmse']):.3f}, "
                 f"coverage of {fit.level:.0%} intervals {float(holdout.get('coverage') or float('nan')):.0%}.")
    return text


def _client(uri: str):
    return tracking.init_store(uri)


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(rm.name for rm in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r}; registered models: {', '.join(names) if names else 'none'}"
        ) from None


def _versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def alias_version(client, name: str, alias: str) -> str:
    """The version `alias` points to; RegistryError lists the aliases and versions there are."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        pass
    # No such alias (or no such model: _registered raises for that): say what there is.
    aliases = dict(_registered(client, name).aliases or {})
    found = _versions(client, name)
    versions = [str(v.version) for v in found]
    have = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
    refused = [v for v in found if (v.tags or {}).get("usable") == "false"]
    why = f"; v{refused[-1].version} was refused ({refused[-1].tags.get('usable_reason', '')})" if refused else ""
    raise RegistryError(
        f"registered model {name!r} has no alias {alias!r}; aliases: {have}; "
        f"versions: {', '.join(versions) or 'none'}{why}"
    )


# ----------------------------------------------------------------------------------------------
# register / promote / load


def register_law(
    fit: LawFit,
    *,
    tracking_uri: str,
    name: str = DEFAULT_NAME,
    run_id: str | None = None,
    source_run_ids: Sequence[str] = (),
    holdout: Mapping[str, Any] | None = None,
    experiment: str = "opsd-law",
    promote_if_better: bool = False,
    check: LawCheck | None = None,
) -> dict[str, Any]:
    """Log `fit` as a pyfunc model (from code) in a run, register a new version of `name`, alias it.

    run_id: log into this existing run (left in its current state); None -> a new run tagged
    kind=law in `experiment` (ended FINISHED). holdout: a ``law.leave_one_out`` (or
    ``grouped_holdout``) result; its MAE/RMSE/coverage become version tags and run metrics.
    The first version of `name` becomes @champion, later ones @challenger; with
    promote_if_better the challenger is then promoted when its hold-out RMSE beats the champion's.
    check: the law's ``holdout.check_law`` verdict (default: computed from `fit` and `holdout`); a
    law that may not decide is registered (its evidence kept) with no alias, decision ``refused``.

    Returns {name, version, run_id, model_uri, aliases, decision, reason, check}.
    """
    check = check if check is not None else _check(fit, holdout)
    client = _client(tracking_uri)
    own_run = run_id is None
    if own_run:
        run_id = tracking.start_run(tracking_uri, experiment, run_name=f"{name}-{fit.method}", tags={"kind": "law"})

    holdout = dict(holdout or {})
    h_metrics = {k: holdout.get(k) for k in ("rmse", "mae", "coverage")}
    tags = {
        "method": fit.method,
        "level": _tag_float(fit.level),
        "covariates": ",".join(fit.covariates),
        "n_configs": str(fit.n_configs),
        "n_points": str(fit.n_points),
        "slope": _tag_float(fit.slope),
        "intercept": _tag_float(fit.intercept),
        "r2": _tag_float(fit.r2),
        "n_source_runs": str(len(source_run_ids)),
        "source_run_ids": _join_ids(source_run_ids),
    }
    if holdout:
        tags.update({f"holdout_{k}": _tag_float(v, exact=k == "rmse") for k, v in h_metrics.items()})
        tags["holdout_kind"] = str(holdout.get("kind", "leave_one_out"))
    tags.update(check.tags())

    try:
        metrics = {"law/slope": fit.slope, "law/intercept": fit.intercept, "law/r2": fit.r2,
                   "law/n_configs": fit.n_configs}
        metrics.update({f"law/holdout_{k}": v for k, v in h_metrics.items() if _parse_float(_tag_float(v)) is not None})
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        # tags, not params: a run may hold several laws, and MLflow refuses to change a param
        law_tags = {"law.method": fit.method, "law.level": fit.level, "law.covariates": ",".join(fit.covariates)}
        for key, value in law_tags.items():
            client.set_tag(run_id, key, str(value))
        client.log_dict(run_id, fit.to_dict(), "law/fit.json")
        client.log_text(run_id, fit.summary(), "law/summary.txt")
        if len(source_run_ids):
            client.log_text(run_id, "\n".join(map(str, source_run_ids)), "law/source_run_ids.txt")
        if isinstance(holdout.get("table"), pd.DataFrame):
            client.log_text(run_id, holdout["table"].to_csv(index=False), "law/holdout.csv")

        # The LoggedModel is created here, in the run's experiment: left to itself, Model.log puts
        # it in the fluent "active" experiment (Default, artifacts under ./mlruns of the cwd).
        logged = client.create_logged_model(
            client.get_run(run_id).info.experiment_id, name=ARTIFACT_NAME, source_run_id=run_id, tags={"kind": "law"}
        )
        with tempfile.TemporaryDirectory() as tmp, _using_uri(tracking_uri):
            code = _law_code(Path(tmp) / "code")
            law_json = Path(tmp) / "law.json"
            law_json.write_text(json.dumps(fit.to_dict(), allow_nan=False, indent=1), encoding="utf-8")
            # Model.log is what mlflow.pyfunc.log_model calls; it takes run_id and model_id, so a
            # caller's run is logged into without being made active (and ended) in the fluent API.
            # The law goes in as an artifact, not model_config: Model.log would copy a model_config
            # into the run's params (and fail to on a second law in the same run).
            info = Model.log(
                artifact_path=None,
                name=ARTIFACT_NAME,
                flavor=mlflow.pyfunc,
                python_model=str(MODEL_CODE),
                artifacts={"law": str(law_json)},
                signature=law_signature(fit),
                input_example=pd.DataFrame({col: [0.0, 0.2] for col in ["gap", *fit.covariates]}),
                pip_requirements=_pip_requirements(),
                code_paths=[str(code)],
                run_id=run_id,
                model_id=logged.model_id,
            )
            mv = mlflow.register_model(info.model_uri, name, tags=tags)
        client.update_model_version(name, mv.version, description=describe_fit(fit, holdout))
    except BaseException as exc:
        if own_run:
            tracking.fail_run(tracking_uri, run_id, f"register_law: {exc!r}")
        raise
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    version = str(mv.version)

    rm = client.get_registered_model(name)
    if not check.usable:  # kept in the registry as evidence, never chosen by an alias
        decision, reason = "refused", check.reason
        client.set_model_version_tag(name, version, "promotion", f"refused: {reason}"[:_TAG_LIMIT])
    elif CHAMPION not in (rm.aliases or {}):
        client.set_registered_model_alias(name, CHAMPION, version)
        reason = f"first version of {name!r}" if version == "1" else f"{name!r} had no @{CHAMPION}"
        client.set_model_version_tag(name, version, "promotion", f"{CHAMPION}: {reason}")
        decision = CHAMPION
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promote_if_better:
            result = promote(name, version, tracking_uri=tracking_uri)
            decision, reason = result["decision"], result["reason"]
        else:
            decision, reason = CHALLENGER, f"registered as @{CHALLENGER}; promotion not requested"
    aliases = sorted(a for a, v in (client.get_registered_model(name).aliases or {}).items() if str(v) == version)
    return {
        "name": name,
        "version": int(version),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version}",
        "aliases": aliases,
        "decision": decision,
        "reason": reason,
        "check": check,
    }


def _check(fit: LawFit, holdout: Mapping[str, Any] | None) -> LawCheck:
    """check_law on `fit` with the hold-out's RMSE and the constant predictor's (from the hold-out
    table's observed configuration means)."""
    holdout = holdout or {}
    table = holdout.get("table")
    observed = table["observed"] if isinstance(table, pd.DataFrame) and "observed" in table else []
    return check_law(fit, loo_rmse=holdout.get("rmse"), constant_rmse=constant_loo_rmse(observed))


def promote(
    name: str = DEFAULT_NAME,
    version: int | str | None = None,
    *,
    tracking_uri: str,
    force: bool = False,
) -> dict[str, Any]:
    """Move @champion to `version` (default: the @challenger) if its hold-out RMSE is lower than
    the champion's, or unconditionally with force. Records the decision in the version's
    ``promotion`` tag. Returns {name, version, decision ("promoted"|"kept"|"unchanged"), reason,
    champion (version after)}.
    """
    client = _client(tracking_uri)
    rm = _registered(client, name)
    aliases = dict(rm.aliases or {})
    if version is None:
        version = alias_version(client, name, CHALLENGER)
    version = str(version)
    existing = [str(v.version) for v in _versions(client, name)]
    if version not in existing:
        raise RegistryError(f"registered model {name!r} has no version {version}; versions: {', '.join(existing)}")
    champion = aliases.get(CHAMPION)
    champion = None if champion is None else str(champion)

    def standing(v: str) -> Standing:
        tags = client.get_model_version(name, v).tags
        return Standing(v, _parse_float(tags.get("holdout_rmse")), tags.get("holdout_kind"), tags.get("usable") != "false",
                        tags.get("usable_reason", "may not decide"))

    decision, reason = promotion(standing(version), None if champion is None else standing(champion), name=name,
                                 alias=CHAMPION, force=force)
    if decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, version)
        if aliases.get(CHALLENGER) is not None and str(aliases[CHALLENGER]) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        champion = version
    if decision != "unchanged":
        client.set_model_version_tag(name, version, "promotion", f"{decision}: {reason}"[:_TAG_LIMIT])
    return {"name": name, "version": int(version), "decision": decision, "reason": reason,
            "champion": None if champion is None else int(champion)}


def load_law(tracking_uri: str, name: str = DEFAULT_NAME, alias: str = CHAMPION):
    """The pyfunc model behind ``models:/<name>@<alias>`` (RegistryError lists what exists)."""
    client = _client(tracking_uri)
    alias_version(client, name, alias)
    with _using_uri(tracking_uri):
        return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def describe(tracking_uri: str, name: str = DEFAULT_NAME) -> list[dict[str, Any]]:
    """One dict per version of `name` (oldest first): version, aliases, run_id, created, the
    metric tags (METRIC_TAGS; numbers parsed) and the promotion note."""
    client = _client(tracking_uri)
    rm = _registered(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in _versions(client, name):
        tags = dict(mv.tags or {})
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": sorted(by_version.get(str(mv.version), [])),
            "run_id": mv.run_id,
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M"),
        }
        for key in METRIC_TAGS:
            text = tags.get(key)
            row[key] = text if key == "method" else _parse_float(text)
        row["promotion"] = tags.get("promotion", "")
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of `describe` rows (for ``opsd law show``)."""
    if not rows:
        return "(no versions)"
    columns = ["version", "aliases", *METRIC_TAGS, "created", "promotion"]

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "aliases":
            return ",".join(f"@{a}" for a in value) or "-"
        if isinstance(value, float):
            return f"{int(value)}" if key.startswith("n_") else f"{value:.4g}"
        return str(value)

    header = {
        "holdout_rmse": "ho_rmse",
        "holdout_mae": "ho_mae",
        "holdout_coverage": "ho_cover",
    }
    cells = [[cell(c, r.get(c)) for c in columns] for r in rows]
    names = [header.get(c, c) for c in columns]
    widths = [max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
