"""``search.compare=true``: the same search three ways (law pruning, MedianPruner, none) on the same
per-trial-seeded configurations, and the comparison's table, plot and MLflow run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from opsd_platform import tracking
from opsd_platform.config import ConfigError
from opsd_platform.search.report import (
    fmt_pct,
    fmt_value,
    jsonable,
    pyplot,
    summarize,
    trial_frame,
)
from opsd_platform.search.run import SearchResult, run_search
from opsd_platform.search.settings import SearchConfig
from opsd_platform.search.study import SearchBase

ARMS = ("none", "median", "law")


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    files: list[Path]
    run_id: str
    results: dict[str, SearchResult]


def compare(base: SearchBase, settings: SearchConfig, progress: Callable[[str], None] = print) -> Comparison:
    """The same search three ways on the same per-trial-seeded configurations: no pruning (every
    trial trained fully: the reference), Optuna's MedianPruner, and the gap law. Writes
    comparison.json/.csv/.png and logs them on a ``kind=search-compare`` run."""
    if settings.sampler != "random":
        raise ConfigError("search.compare: needs search.sampler=random (the arms must see the same configurations)")
    results: dict[str, SearchResult] = {}
    for arm in ARMS:
        study = f"{settings.study}-{arm}"
        out_dir = str(Path(settings.out_dir).expanduser() / study) if settings.out_dir else None
        arm_settings = SearchConfig(**{**asdict(settings), "compare": False, "pruner": arm, "study": study, "out_dir": out_dir})
        progress(f"== compare: {arm} ({arm_settings.study})")
        results[arm] = run_search(base, arm_settings, progress)
        if not results[arm].done:
            raise RuntimeError(f"compare: study {arm_settings.study!r} is not done (another worker still running?)")
    return write_comparison(results, settings, progress)


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


    handles = {arm: r.handle for arm, r in results.items()}
    frames = {arm: trial_frame(h.study.get_trials(deepcopy=False)) for arm, h in handles.items()}
    rows = comparison_rows(frames)
    any_handle = next(iter(handles.values()))
    out = (Path(settings.out_dir).expanduser().resolve() if settings.out_dir else any_handle.out_dir.parent) / f"{settings.study}-compare"
    # (each arm's own report is in <out>/../<study>-<arm>/)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.json").write_text(json.dumps(jsonable({"settings": vars(settings), "arms": rows}), indent=2), encoding="utf-8")
    plt = pyplot()
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
                 f"({fmt_pct(row['saving_seconds_vs_none'])} saved), best {fmt_value(row['best_improvement'])} "
                 f"(same as none: {row['same_best_as_none']}), false prunes {row['false_prunes']}/{row['pruned_judged']}")
    progress(f"comparison: {out / 'comparison.json'}")
    return Comparison(rows, files, run_id, dict(results))
