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
from typing import Any, Mapping

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from opsd_platform import tracking
from opsd_platform.search.pruner import Decision

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
        # every trial at the best value: a tie is reported as one, not as the first of them
        "best_trials": [int(t) for t in done.loc[done["improvement"] == done["improvement"].max(), "trial"]],
    }


def best_text(s: Mapping[str, Any]) -> str:
    """``best improvement +0.120 (trial #3)``, or with a tie ``(a tie: trials #1, #2, #5)``."""
    if s.get("best_trial") is None:
        return "no trial completed"
    tied = s.get("best_trials") or [s["best_trial"]]
    which = f"trial #{tied[0]}" if len(tied) == 1 else "a tie: trials " + ", ".join(f"#{t}" for t in tied)
    return f"best improvement {s['best_improvement']:+.3f} ({which})"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search_law(frame: pd.DataFrame, law, level: float, law_label: str, path: Path) -> Path:
    """Gap (x) vs improvement (y): the law's prediction and interval band, completed trials at their
    measured improvement, pruned trials at their prediction with its interval, the final bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    gaps = frame["gap"].dropna()
    lo, hi = (float(gaps.min()), float(gaps.max())) if len(gaps) else (-0.2, 0.6)
    pad = max(0.05, 0.1 * (hi - lo))
    if law is not None:
        grid = np.linspace(max(lo - pad, -1.0), min(hi + pad, 1.0), 60)  # a gap lies in [-1, 1]: the law refuses others
        pred = law.predict(pd.DataFrame({"gap": grid}), params={"level": level})
        ax.plot(grid, pred["predicted_improvement"], color="C0", label=f"law {law_label}")
        ax.fill_between(grid, pred["lower"], pred["upper"], color="C0", alpha=0.15, label=f"{level:.0%} prediction interval")
    styles = {"train": ("C2", "o", "trained (law: may win)"), "calibrate": ("C1", "s", "trained anyway (calibration)"),
              "prune": ("C3", "x", "pruned (at its prediction)")}
    labels: dict[tuple[float, float], list[str]] = {}
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
        for r in rows.itertuples():  # trials at one point get one label, not labels drawn over each other
            y = r.predicted if action == "prune" else r.improvement
            labels.setdefault((round(float(r.gap), 3), round(float(y), 3)), []).append(f"#{r.trial}")
    for (x, y), names in labels.items():
        ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
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
    plt = pyplot()
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


def fmt_value(value: Any, spec: str = "+.3f") -> str:
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
        interval = f"[{fmt_value(r.lower)}, {fmt_value(r.upper)}]" if r.lower == r.lower else "-"
        trial_rows.append([
            f"#{r.trial}" + (f" (retry of #{r.retry_of})" if r.retry_of is not None else ""), r.state, r.decision or "-",
            fmt_value(r.gap), fmt_value(r.predicted), interval, fmt_value(r.bar), fmt_value(r.improvement),
            fmt_value(r.tokens, ".0f"), fmt_value(r.seconds, ".1f"), fmt_value(r.full_seconds_est, ".1f"),
            _version(r.law_version), _short_params(r.params), r.reason or "",
        ])
    s = summary
    keys = list(s.get("best_params") or {})  # the best trials' parameters, as a table
    compute = [
        ["tokens generated", fmt_value(s["tokens_total"], ".0f"), fmt_value(s["full_tokens_est"], ".0f"), fmt_pct(s["saving_tokens_est"])],
        ["seconds", fmt_value(s["seconds_total"], ".1f"), fmt_value(s["full_seconds_est"], ".1f"), fmt_pct(s["saving_seconds_est"])],
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
        f"beat the bar (false prunes avoided). {html.escape(best_text(s))}.</p>",
        *([_table([[f"#{t}", *(str(json.loads(frame.loc[frame['trial'] == t, 'params'].iloc[0]).get(k, '')) for k in keys)]
                   for t in s["best_trials"]], ["trial", *keys])] if s.get("best_trials") else []),
        "<h2>Compute</h2>",
        _table(compute, ["", "spent", "every trial trained fully (est.)", "saved"]),
        "<p>Full-training costs of pruned trials are estimates (see opsd_platform/search/report.py); "
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


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, float) and math.isfinite(x) else "-"


def _short_params(params_json: str) -> str:
    params = json.loads(params_json) if params_json else {}
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in params.items())


def write_report(handle) -> StudyReport:
    """The report of a study (search.StudyHandle) in ``handle.out_dir``: report.html (images
    embedded), trials.csv, compute.json, law_plot.png, compute.png."""
    from opsd_platform.errors import RegistryError
    from opsd_platform.law.registry import alias_version, load_law

    s = handle.settings
    out = Path(handle.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = trial_frame(handle.study.get_trials(deepcopy=False))
    summary = summarize(frame)
    law, label = None, "(none registered)"
    if s.pruner == "law":
        try:
            version = alias_version(tracking.init_store(handle.tracking_uri), s.law_name, s.law_alias)
            law, label = load_law(handle.tracking_uri, s.law_name, s.law_alias), f"{s.law_name} v{version} (@{s.law_alias})"
        except RegistryError:
            pass
    law_png = plot_search_law(frame, law, s.level, label, out / "law_plot.png")
    compute_png = plot_compute(frame, out / "compute.png")
    attrs = handle.study.user_attrs
    refits = sorted(({"trial": int(k.rsplit(".", 1)[1]), **v} for k, v in attrs.items() if k.startswith("law.refit.")),
                    key=lambda r: r["trial"])
    meta = {
        "study": handle.name, "storage": tracking.shown_url(handle.storage_url), "tracking": handle.tracking_uri,
        "parent MLflow run": handle.parent_run_id, "pruner": s.pruner, "sampler": f"{s.sampler} (seed {s.seed})",
        "n_trials": s.n_trials, "startup trials": s.n_startup_trials, "calibration rate": s.calibration_rate,
        "bar": "threshold %g" % s.threshold if s.threshold is not None else "best completed improvement",
        "law": label, "base overrides": " ".join(handle.base.overrides) or "(none)",
    }
    page = out / "report.html"
    page.write_text(render_html(f"opsd search: {handle.name}", meta, frame, summary, refits, [law_png, compute_png]), encoding="utf-8")
    frame.to_csv(out / "trials.csv", index=False)
    (out / "compute.json").write_text(json.dumps(jsonable(summary), indent=2), encoding="utf-8")
    metrics = {f"search/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return StudyReport(page, [page, out / "trials.csv", out / "compute.json", law_png, compute_png], metrics, frame, summary)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
