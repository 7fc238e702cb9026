"""The study report of `opsd search`: trial table, compute accounting, plots, HTML; and the
three-way comparison of ``search.compare=true``.

Compute is counted two ways per trial: generated tokens (gap + rollouts + validation responses;
the forward/backward passes are not tokens generated, so seconds are the honest total) and wall
seconds of the trial (gap, training, validation, logging).

"Saving vs training every trial fully" needs what a pruned trial *would* have cost:

- completed trials: what they cost;
- law-pruned trials: their gap cost + the rollout tokens a full training of their configuration
  generates (``train.estimated_training_tokens``, from the gap's mean response length), in
  seconds at the median seconds-per-token of the study's completed trials (training part);
- MedianPruner-pruned trials: their cost so far scaled to all steps (their own rate);
- failed trials: counted in what was spent, not in the full-training reference.

These are estimates; ``search.compare=true`` measures the reference instead (the unpruned arm
trains every configuration).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from opsd_platform.pruner import Decision

COLUMNS = ["trial", "state", "decision", "rule", "gap", "gap_lo", "gap_hi", "predicted", "lower", "upper", "bar",
           "law_version", "improvement", "false_prune", "tokens", "seconds", "full_tokens_est", "full_seconds_est",
           "retry_of", "worker", "params", "reason", "mlflow_run_id"]


def _version(v: Any) -> str:
    """A law version for the table: "v3"; "-" where no law decided (startup trials, no pruner).
    A column mixing versions and None comes back from pandas with NaN, or as floats ("3.0")."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "-"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"v{v}"


def _num(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def trial_frame(trials) -> pd.DataFrame:
    """One row per Optuna trial (FrozenTrials): outcome, pruning decision, costs (pure)."""
    rows = []
    for t in trials:
        a = t.user_attrs
        d = Decision.from_attrs(a)
        gap_ci = a.get("gap_ci") or [None, None]
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "decision": d.action if d else ("prune" if t.state == TrialState.PRUNED else ("train" if t.state == TrialState.COMPLETE else "")),
            "rule": d.rule if d else "",
            "gap": _num(a.get("gap")), "gap_lo": _num(gap_ci[0]), "gap_hi": _num(gap_ci[1]),
            "predicted": _num(d.predicted if d else None), "lower": _num(d.lower if d else None),
            "upper": _num(d.upper if d else None), "bar": _num(d.bar if d else None),
            "law_version": d.law_version if d and d.law_version is not None else None,
            "improvement": _num(t.value) if t.state == TrialState.COMPLETE else math.nan,
            "false_prune": a.get("pruner.false_prune"),
            "tokens": _num(a.get("cost.tokens")), "seconds": _num(a.get("cost.seconds")),
            "gap_tokens": _num(a.get("cost.gap_tokens")), "gap_seconds": _num(a.get("cost.gap_seconds")),
            "train_tokens_est": _num(a.get("cost.train_tokens_est")),
            "full_tokens_est": _num(a.get("cost.full_tokens_est")), "full_seconds_est": _num(a.get("cost.full_seconds_est")),
            "retry_of": a.get("retry_of"), "worker": a.get("worker", ""),
            "params": json.dumps(t.params, sort_keys=True), "reason": d.reason if d else str(t.system_attrs.get("fail_reason", ""))[:300],
            "mlflow_run_id": a.get("mlflow_run_id", ""),
        })
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "gap_tokens", "gap_seconds", "train_tokens_est"])
    return estimate_full_costs(frame.sort_values("trial").reset_index(drop=True))


def estimate_full_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill `full_*_est` of law-pruned trials (see the module docstring); pure."""
    frame = frame.copy()
    done = frame[frame["state"] == "COMPLETE"]
    train_part = done.dropna(subset=["gap_tokens"])
    if len(train_part):
        rate = np.nanmedian((train_part["seconds"] - train_part["gap_seconds"]) / (train_part["tokens"] - train_part["gap_tokens"]).clip(lower=1))
    elif len(done):
        rate = np.nanmedian(done["seconds"] / done["tokens"].clip(lower=1))
    else:
        rate = math.nan
    law_pruned = (frame["state"] == "PRUNED") & frame["full_tokens_est"].isna() & frame["train_tokens_est"].notna()
    frame.loc[law_pruned, "full_tokens_est"] = frame.loc[law_pruned, "tokens"] + frame.loc[law_pruned, "train_tokens_est"]
    frame.loc[law_pruned, "full_seconds_est"] = frame.loc[law_pruned, "seconds"] + frame.loc[law_pruned, "train_tokens_est"] * rate
    return frame


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """Totals, estimated saving vs training every trial fully, best trial, false-prune counts (pure)."""
    final = frame[frame["state"].isin(["COMPLETE", "PRUNED"])]
    spent_tokens, spent_seconds = float(frame["tokens"].sum(skipna=True)), float(frame["seconds"].sum(skipna=True))
    full_tokens = float(final["full_tokens_est"].sum(min_count=1)) if final["full_tokens_est"].notna().all() and len(final) else math.nan
    full_seconds = float(final["full_seconds_est"].sum(min_count=1)) if final["full_seconds_est"].notna().all() and len(final) else math.nan
    done = frame[frame["state"] == "COMPLETE"].dropna(subset=["improvement"])
    best = done.loc[done["improvement"].idxmax()] if len(done) else None
    calib = frame[frame["decision"] == "calibrate"]
    calib_known = calib["false_prune"].dropna()
    return {
        "n_trials": int(len(frame)),
        "n_complete": int((frame["state"] == "COMPLETE").sum()),
        "n_pruned": int((frame["state"] == "PRUNED").sum()),
        "n_failed": int((frame["state"] == "FAIL").sum()),
        "n_calibration": int(len(calib)),
        "false_prunes_calibration": int(sum(bool(v) for v in calib_known)),
        "false_prune_rate_calibration": float(np.mean([bool(v) for v in calib_known])) if len(calib_known) else math.nan,
        "tokens_total": spent_tokens,
        "seconds_total": spent_seconds,
        "full_tokens_est": full_tokens,
        "full_seconds_est": full_seconds,
        "saving_tokens_est": 1 - spent_tokens / full_tokens if full_tokens and full_tokens == full_tokens else math.nan,
        "saving_seconds_est": 1 - spent_seconds / full_seconds if full_seconds and full_seconds == full_seconds else math.nan,
        "best_improvement": float(best["improvement"]) if best is not None else math.nan,
        "best_trial": int(best["trial"]) if best is not None else None,
        "best_params": json.loads(best["params"]) if best is not None else None,
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search_law(frame: pd.DataFrame, law, level: float, law_label: str, path: Path) -> Path:
    """Gap (x) vs improvement (y): the law's prediction and interval band, completed trials at their
    measured improvement, pruned trials at their prediction with its interval, the final bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    gaps = frame["gap"].dropna()
    lo, hi = (float(gaps.min()), float(gaps.max())) if len(gaps) else (-0.2, 0.6)
    pad = max(0.05, 0.1 * (hi - lo))
    if law is not None:
        grid = np.linspace(lo - pad, hi + pad, 60)
        pred = law.predict(pd.DataFrame({"gap": grid}), params={"level": level})
        ax.plot(grid, pred["predicted_improvement"], color="C0", label=f"law {law_label}")
        ax.fill_between(grid, pred["lower"], pred["upper"], color="C0", alpha=0.15, label=f"{level:.0%} prediction interval")
    styles = {"train": ("C2", "o", "trained (law: may win)"), "calibrate": ("C1", "s", "trained anyway (calibration)"),
              "prune": ("C3", "x", "pruned (at its prediction)")}
    for action, (color, marker, label) in styles.items():
        rows = frame[(frame["decision"] == action) & frame["gap"].notna()]
        if action == "prune":
            rows = rows[rows["predicted"].notna()]
            if len(rows):
                ax.errorbar(rows["gap"], rows["predicted"], yerr=[rows["predicted"] - rows["lower"], rows["upper"] - rows["predicted"]],
                            fmt=marker, color=color, capsize=3, label=label)
        else:
            rows = rows[rows["improvement"].notna()]
            if len(rows):
                ax.scatter(rows["gap"], rows["improvement"], color=color, marker=marker, label=label, zorder=3)
        for r in rows.itertuples():
            y = r.predicted if action == "prune" else r.improvement
            ax.annotate(f"#{r.trial}", (r.gap, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    done = frame["improvement"].dropna()
    if len(done):
        ax.axhline(done.max(), color="grey", ls="--", lw=1, label=f"best improvement {done.max():+.3f}")
    if not len(gaps):
        ax.text(0.5, 0.5, "no trial measured a gap (pruner is not the law)", transform=ax.transAxes, ha="center")
    ax.set_xlabel("initial gap (self-teacher - student pass rate)")
    ax.set_ylabel("improvement (final - initial pass rate)")
    ax.set_title("Trials against the gap law")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compute(frame: pd.DataFrame, path: Path) -> Path:
    """Per trial: seconds spent (coloured by decision) against the estimated full-training seconds,
    and the cumulative totals."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colors = frame["decision"].map({"train": "C2", "calibrate": "C1", "prune": "C3"}).fillna("C7")
    ax.bar(frame["trial"], frame["full_seconds_est"].fillna(0), color="none", edgecolor="grey", label="full training (est.)")
    ax.bar(frame["trial"], frame["seconds"].fillna(0), color=list(colors), label="spent")
    ax.set_xlabel("trial")
    ax.set_ylabel("seconds")
    ax.set_title("Seconds per trial (green trained, orange calibration, red pruned)", fontsize=9)
    ax.legend(fontsize=7)
    ax2.plot(frame["trial"], frame["seconds"].fillna(0).cumsum(), marker="o", label="spent")
    ax2.plot(frame["trial"], frame["full_seconds_est"].fillna(frame["seconds"]).fillna(0).cumsum(), marker=".", ls="--",
             label="every trial trained fully (est.)")
    ax2.set_xlabel("trial")
    ax2.set_ylabel("cumulative seconds")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class StudyReport:
    html: Path
    files: list[Path]
    metrics: dict[str, float]
    frame: pd.DataFrame
    summary: dict[str, Any]


def _fmt(value: Any, spec: str = "+.3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, meta: Mapping[str, str], frame: pd.DataFrame, summary: Mapping[str, Any],
                refits: list[dict], images: list[Path]) -> str:
    trial_rows = []
    for r in frame.itertuples():
        interval = f"[{_fmt(r.lower)}, {_fmt(r.upper)}]" if r.lower == r.lower else "-"
        trial_rows.append([
            f"#{r.trial}" + (f" (retry of #{r.retry_of})" if r.retry_of is not None else ""), r.state, r.decision or "-",
            _fmt(r.gap), _fmt(r.predicted), interval, _fmt(r.bar), _fmt(r.improvement),
            _fmt(r.tokens, ".0f"), _fmt(r.seconds, ".1f"), _fmt(r.full_seconds_est, ".1f"),
            _version(r.law_version), _short_params(r.params), r.reason or "",
        ])
    s = summary
    compute = [
        ["tokens generated", _fmt(s["tokens_total"], ".0f"), _fmt(s["full_tokens_est"], ".0f"), _pct(s["saving_tokens_est"])],
        ["seconds", _fmt(s["seconds_total"], ".1f"), _fmt(s["full_seconds_est"], ".1f"), _pct(s["saving_seconds_est"])],
    ]
    refit_rows = [[f"#{r['trial']}", r.get("refit", ""), f"v{r['version']}" if r.get("version") else "-", r.get("decision", "-") or "-",
                   f"v{r['champion']}" if r.get("champion") else "-", r.get("reason", "")] for r in refits]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#eee}")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()) + "</ul>",
        "<h2>Outcome</h2>",
        f"<p>{s['n_trials']} trials: {s['n_complete']} trained fully, {s['n_pruned']} pruned, {s['n_failed']} failed; "
        f"{s['n_calibration']} would-be-pruned trials trained anyway (calibration), of which {s['false_prunes_calibration']} "
        f"beat the bar (false prunes avoided). Best improvement {_fmt(s['best_improvement'])}"
        + (f" (trial #{s['best_trial']}: {html.escape(json.dumps(s['best_params']))})" if s["best_trial"] is not None else "") + ".</p>",
        "<h2>Compute</h2>",
        _table(compute, ["", "spent", "every trial trained fully (est.)", "saved"]),
        "<p>Full-training costs of pruned trials are estimates (see opsd_platform/study_report.py); "
        "<code>search.compare=true</code> measures them, with Optuna's MedianPruner alongside.</p>",
        *[_img(p) for p in images],
        "<h2>Trials</h2>",
        _table(trial_rows, ["trial", "state", "decision", "gap", "predicted", "interval", "bar", "improvement",
                            "tokens", "seconds", "full s (est.)", "law", "params", "reason"]),
    ]
    if refit_rows:
        parts += ["<h2>Law refits (learning loop)</h2>", _table(refit_rows, ["after trial", "refit", "version", "decision", "champion", "reason"])]
    parts.append("</body></html>")
    return "\n".join(parts)


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, float) and math.isfinite(x) else "-"


def _short_params(params_json: str) -> str:
    params = json.loads(params_json) if params_json else {}
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in params.items())


def write_report(handle) -> StudyReport:
    """The report of a study (search.StudyHandle) in ``handle.out_dir``: report.html (images
    embedded), trials.csv, compute.json, law_plot.png, compute.png."""
    from opsd_platform.registry import RegistryError, _alias_version, _client, load_law
    from opsd_platform.search import shown_url

    s = handle.settings
    out = Path(handle.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = trial_frame(handle.study.get_trials(deepcopy=False))
    summary = summarize(frame)
    law, label = None, "(none registered)"
    if s.pruner == "law":
        try:
            version = _alias_version(_client(handle.tracking_uri), s.law_name, s.law_alias)
            law, label = load_law(handle.tracking_uri, s.law_name, s.law_alias), f"{s.law_name} v{version} (@{s.law_alias})"
        except RegistryError:
            pass
    law_png = plot_search_law(frame, law, s.level, label, out / "law_plot.png")
    compute_png = plot_compute(frame, out / "compute.png")
    attrs = handle.study.user_attrs
    refits = sorted(({"trial": int(k.rsplit(".", 1)[1]), **v} for k, v in attrs.items() if k.startswith("law.refit.")),
                    key=lambda r: r["trial"])
    meta = {
        "study": handle.name, "storage": shown_url(handle.storage_url), "tracking": handle.tracking_uri,
        "parent MLflow run": handle.parent_run_id, "pruner": s.pruner, "sampler": f"{s.sampler} (seed {s.seed})",
        "n_trials": s.n_trials, "startup trials": s.n_startup_trials, "calibration rate": s.calibration_rate,
        "bar": "threshold %g" % s.threshold if s.threshold is not None else "best completed improvement",
        "law": label, "base overrides": " ".join(handle.base_overrides) or "(none)",
    }
    page = out / "report.html"
    page.write_text(render_html(f"opsd search: {handle.name}", meta, frame, summary, refits, [law_png, compute_png]), encoding="utf-8")
    frame.to_csv(out / "trials.csv", index=False)
    (out / "compute.json").write_text(json.dumps(_jsonable(summary), indent=2), encoding="utf-8")
    metrics = {f"search/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return StudyReport(page, [page, out / "trials.csv", out / "compute.json", law_png, compute_png], metrics, frame, summary)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


# ============================================================================== comparison


def comparison_rows(frames: Mapping[str, pd.DataFrame], reference: str = "none") -> list[dict[str, Any]]:
    """One row per arm: compute, saving vs the reference arm (measured), best configuration and
    whether it matches the reference's, and false prunes: pruned trials whose configuration (same
    trial number, same parameters) in the reference arm beat the bar in force when it was pruned."""
    ref = frames[reference].set_index("trial")
    ref_sum = summarize(frames[reference])
    rows = []
    for arm, frame in frames.items():
        s = summarize(frame)
        false, judged = 0, 0
        for r in frame[frame["state"] == "PRUNED"].itertuples():
            if r.trial not in ref.index or ref.loc[r.trial, "params"] != r.params:
                continue
            truth, bar = ref.loc[r.trial, "improvement"], r.bar
            if truth == truth and bar == bar:
                judged += 1
                false += bool(truth > bar)
        rows.append({
            "arm": arm, "trials": s["n_trials"], "complete": s["n_complete"], "pruned": s["n_pruned"], "failed": s["n_failed"],
            "tokens": s["tokens_total"], "seconds": s["seconds_total"],
            "saving_tokens_vs_none": 1 - s["tokens_total"] / ref_sum["tokens_total"] if ref_sum["tokens_total"] else math.nan,
            "saving_seconds_vs_none": 1 - s["seconds_total"] / ref_sum["seconds_total"] if ref_sum["seconds_total"] else math.nan,
            "best_improvement": s["best_improvement"], "best_trial": s["best_trial"], "best_params": s["best_params"],
            "same_best_as_none": s["best_params"] == ref_sum["best_params"] if s["best_params"] is not None else False,
            "false_prunes": false, "pruned_judged": judged, "false_prune_rate": false / judged if judged else math.nan,
            "false_prune_rate_calibration": s["false_prune_rate_calibration"],
        })
    return rows


def write_comparison(results: Mapping[str, Any], settings, progress: Callable[[str], None] = print):
    """comparison.json/.csv/.png for search.compare, logged on a ``kind=search-compare`` run."""
    from mlflow.tracking import MlflowClient

    from opsd_platform import tracking
    from opsd_platform.search import Comparison

    handles = {arm: r.handle for arm, r in results.items()}
    frames = {arm: trial_frame(h.study.get_trials(deepcopy=False)) for arm, h in handles.items()}
    rows = comparison_rows(frames)
    any_handle = next(iter(handles.values()))
    out = (Path(settings.out_dir).expanduser().resolve() if settings.out_dir else any_handle.out_dir.parent) / f"{settings.study}-compare"
    # (each arm's own report is in <out>/../<study>-<arm>/)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.json").write_text(json.dumps(_jsonable({"settings": vars(settings), "arms": rows}), indent=2), encoding="utf-8")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in zip(axes, ("seconds", "tokens", "best_improvement"), ("seconds", "tokens generated", "best improvement")):
        bars = ax.bar(table["arm"], table[key], color=["C7", "C0", "C3"][: len(table)])
        # Values on the bars: a zero-height bar (a best of exactly +0.000) is otherwise invisible.
        fmt = "{:+.3f}" if key == "best_improvement" else "{:,.0f}"
        ax.bar_label(bars, labels=[fmt.format(v) if v == v else "n/a" for v in table[key]], fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.margins(y=0.15)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{settings.study}: the same {settings.n_trials}-trial search, three pruners", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
    uri, experiment = any_handle.tracking_uri, any_handle.experiment
    run_id = tracking.start_run(uri, experiment, f"search-compare-{settings.study}",
                                {"kind": "search-compare", "search.study": settings.study})
    client = MlflowClient(tracking_uri=uri)
    for row in rows:
        for key in ("tokens", "seconds", "saving_seconds_vs_none", "saving_tokens_vs_none", "best_improvement", "false_prune_rate"):
            value = row[key]
            if isinstance(value, (int, float)) and math.isfinite(value):
                client.log_metric(run_id, f"compare/{row['arm']}/{key}", float(value))
        client.set_tag(run_id, f"compare.{row['arm']}.parent_run", handles[row["arm"]].parent_run_id)
    files = [out / "comparison.csv", out / "comparison.json", out / "comparison.png"]
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    for row in rows:
        progress(f"{row['arm']:>6}: {row['complete']} trained, {row['pruned']} pruned, {row['seconds']:.0f} s "
                 f"({_pct(row['saving_seconds_vs_none'])} saved), best {_fmt(row['best_improvement'])} "
                 f"(same as none: {row['same_best_as_none']}), false prunes {row['false_prunes']}/{row['pruned_judged']}")
    progress(f"comparison: {out / 'comparison.json'}")
    return Comparison(rows, files, run_id, dict(results))
