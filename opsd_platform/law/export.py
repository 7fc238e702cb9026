"""`opsd export`: a grid's runs in an MLflow store -> three tidy CSV files other tools read.

    runs.csv          one row per run: configuration, seed, gap (interval, cost, shared-measurement
                      keys), initial and final validation, improvement, training cost, then one
                      column per hyper-parameter that varies across the exported runs
    steps.csv         run_id, step, rollout_pass_rate, val_pass_rate, cpu_s, tokens, val_cpu_s, then the
                      curves of STEP_CURVES (response length, loss, reward, GRPO's diagnostics)
    gap_problems.csv  run_id, problem, student_passes, teacher_passes, samples

Column meanings are in ``benchmarks/data/README.md``. Exporting merges into the files already
there: rows of runs that are not in this store (another session's, whose store is gone) are
kept, rows of runs that are are rewritten, so nothing recorded is lost. Costs: ``cpu_s`` is CPU
seconds of the process and its children (``evaluation.cpu_seconds``); a step's ``cpu_s`` and
``tokens`` are cumulative from the start of training, intermediate validations included, and the
last step's include the final validation. The gap's and the initial validation's costs are their
own columns (paid once per shared key, see measurements.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from opsd_platform import tracking
from opsd_platform.errors import ExportError
from opsd_platform.law.settings import ExportConfig

RUN_COLUMNS = ["run_id", "model", "family", "world", "context", "config", "seed", "steps", "gap", "gap_lower",
               "gap_upper", "gap_tokens", "gap_cpu_s", "val_initial", "val_final", "improvement", "train_tokens",
               "train_cpu_s"]
META_COLUMNS = ["grid", "slice", "point", "gap_key", "gap_student_key", "gap_student_cpu_s", "gap_student_tokens",
                "val_key", "val_initial_cpu_s", "val_initial_tokens", "context_tokens", "teacher_coverage"]
# META_COLUMNS a table may lack (written by later exports than some tables, the replay's fixtures):
# a replay of the table (benchmarks/replay_table.py) requires RUN_COLUMNS and the other META_COLUMNS.
OPTIONAL_META = ("grid", "point", "teacher_coverage")
REPLAY_RUN_COLUMNS = RUN_COLUMNS + [c for c in META_COLUMNS if c not in OPTIONAL_META]
STEP_COLUMNS = ["run_id", "step", "rollout_pass_rate", "val_pass_rate", "cpu_s", "tokens", "val_cpu_s"]
# Per-step curves the failure modes of the literature are read from (length drift, collapse, GRPO's
# groups without signal), column <- MLflow metric. Written after STEP_COLUMNS but not required by
# check_table: tables exported before they existed stay readable, and a run that does not log one
# (OPSD logs no grpo/*) has it empty. rollout/response_len is logged exactly (response tokens of the
# step's samples, EOS included, over the samples); `tokens` / samples would not be: it is
# cumulative and includes the validations' tokens.
STEP_CURVES = {"rollout_response_len": "rollout/response_len", "train_loss": "train/loss",
               "train_grad_norm": "train/grad_norm",  # before clipping: how Adam's noise steps grow (optim.eps)
               "rollout_reward_mean": "rollout/reward_mean", "grpo_advantage_std": "grpo/advantage_std",
               "grpo_zero_signal_frac": "grpo/zero_signal_frac", "grpo_clip_frac": "grpo/clip_frac"}
GAP_COLUMNS = ["run_id", "problem", "student_passes", "teacher_passes", "samples"]
FILES = {"runs.csv": RUN_COLUMNS, "steps.csv": STEP_COLUMNS, "gap_problems.csv": GAP_COLUMNS}

# Parameters that never count as hyper-parameters of a configuration (how it ran, where it logged).
NOT_HYPER = ("seed", "tracking.", "resume", "trainer.progress_bar", "trainer.num_threads", "trainer.checkpoint",
             "trainer.keep_checkpoints", "trainer.accelerator", "trainer.devices", "trainer.strategy",
             "gap.enabled", "gap.batch_size", "rollout.batch_size", "rollout.val_batch_size", "rollout.refill", "model.cache_dir",
             "trainer.reuse_measurements", "trainer.share_prompt_prefix", "optim.fused", "model.name", "model.family")
# What the initial validation depends on (measurements.val_key_fields), for the val_key column.
VAL_KEY_PARAMS = ("model.", "world.", "rollout.val_samples", "rollout.val_temperature", "rollout.val_top_p",
                  "rollout.max_new_tokens", "rollout.engine", "trainer.num_threads", "seed")


def _value(text: str | None) -> Any:
    """An MLflow parameter (a string) as the YAML value it was (numbers, booleans, null)."""
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def param_key(params: dict[str, str], prefixes: tuple[str, ...]) -> str:
    chosen = {k: v for k, v in params.items() if k.startswith(prefixes) and k not in ("model.name", "model.family", "model.cache_dir")}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def metric_history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def gap_json(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, "gap.json", tmp)).read_text())


def collect(uri: str, experiment: str, grid: str | None,
            every_hyper: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables of the store's FINISHED training runs of `grid` that have an improvement."""
    client = tracking.init_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ExportError(f"{uri}: no finished training runs to export (no experiment {experiment!r})")
    query = "tags.kind = 'train' AND attributes.status = 'FINISHED'" + (f" AND tags.`grid.name` = '{grid}'" if grid else "")
    runs = [r for r in client.search_runs([exp.experiment_id], query, max_results=50000)
            if "improvement" in r.data.metrics and "gap/value" in r.data.metrics]
    if not runs:
        raise ExportError(f"{uri}: no finished training runs with a gap and an improvement"
                          f"{f' of grid {grid!r}' if grid else ''} in experiment {experiment!r}")
    rows, steps, problems = [], [], []
    for r in runs:
        m, t, p, rid = r.data.metrics, r.data.tags, r.data.params, r.info.run_id
        gap = gap_json(client, rid)
        n_steps = int(p["trainer.max_steps"])
        val = metric_history(client, rid, "val/pass_rate")
        val_cost = metric_history(client, rid, "val/cpu_s")
        val_tokens = metric_history(client, rid, "val/tokens")
        rows.append({
            "run_id": rid, "model": t.get("model"), "family": t.get("model_family"), "world": t.get("world"),
            "context": t.get("context"), "config": t.get("config_hash"), "seed": int(t.get("seed", p.get("seed", 0))),
            "steps": n_steps, "gap": m["gap/value"], "gap_lower": m["gap/ci_low"], "gap_upper": m["gap/ci_high"],
            "gap_tokens": m["gap/tokens"], "gap_cpu_s": m.get("gap/cpu_s"), "val_initial": val.get(0),
            "val_final": val.get(n_steps), "improvement": m["improvement"], "train_tokens": m.get("cost/train_tokens"),
            "train_cpu_s": m.get("cost/train_cpu_s"),
            "grid": t.get("grid.name"), "slice": t.get("grid.slice"), "point": t.get("grid.key"),
            "gap_key": gap.get("teacher_key"), "gap_student_key": gap.get("student_key"),
            "gap_student_cpu_s": m.get("gap/student_cpu_s"), "gap_student_tokens": m.get("gap/student_tokens"),
            "val_key": param_key(p, VAL_KEY_PARAMS), "val_initial_cpu_s": val_cost.get(0), "val_initial_tokens": val_tokens.get(0),
            "context_tokens": m.get("gap/teacher_prompt_tokens"), "teacher_coverage": m.get("gap/teacher_coverage"),
            **{f"param:{k}": _value(v) for k, v in p.items()},
        })
        rollout = metric_history(client, rid, "rollout/pass_rate")
        curves = {col: metric_history(client, rid, key) for col, key in STEP_CURVES.items()}
        cpu, tokens = metric_history(client, rid, "cost/cpu_s"), metric_history(client, rid, "cost/tokens")
        cpu[n_steps] = m.get("cost/train_cpu_s", cpu.get(n_steps))  # the last step's cost includes the final validation
        tokens[n_steps] = m.get("cost/train_tokens", tokens.get(n_steps))
        for s in range(0, n_steps + 1):
            steps.append({"run_id": rid, "step": s, "rollout_pass_rate": rollout.get(s), "val_pass_rate": val.get(s),
                          "cpu_s": 0.0 if s == 0 else cpu.get(s), "tokens": 0.0 if s == 0 else tokens.get(s),
                          "val_cpu_s": None if s == 0 else val_cost.get(s),
                          **{col: curve.get(s) for col, curve in curves.items()}})
        n = int(gap["samples_per_problem"])
        for pp in gap["per_problem"]:
            problems.append({"run_id": rid, "problem": pp["id"], "student_passes": round(pp["student"] * n),
                             "teacher_passes": round(pp["teacher"] * n), "samples": n})
    runs_df = pd.DataFrame(rows)
    param_cols = [c for c in runs_df if c.startswith("param:")]
    # the hyper-parameters that vary among these runs (with `every_hyper`, all of them: `export`
    # decides over the merged table, where a store holding a single new run varies in nothing)
    varying = [c for c in param_cols if not c[6:].startswith(NOT_HYPER) and c[6:] != "context"
               and (every_hyper or runs_df[c].astype(str).nunique(dropna=False) > 1)]
    runs_df = runs_df.drop(columns=[c for c in param_cols if c not in varying]).rename(columns={c: c[6:] for c in varying})
    return runs_df, pd.DataFrame(steps, columns=STEP_COLUMNS + list(STEP_CURVES)), pd.DataFrame(problems, columns=GAP_COLUMNS)


def merge(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """`new` plus the rows of `old` whose run is not in `new` (columns: the union, fixed ones first)."""
    if old is None or old.empty:
        return new
    kept = old[~old["run_id"].isin(set(new["run_id"]))]
    return pd.concat([kept, new], ignore_index=True)


def order(runs: pd.DataFrame) -> pd.DataFrame:
    hyper = sorted(c for c in runs if c not in RUN_COLUMNS + META_COLUMNS)
    runs = runs.reindex(columns=RUN_COLUMNS + META_COLUMNS + hyper)
    return runs.sort_values(["grid", "slice", "config", "seed"], na_position="last").reset_index(drop=True)


def order_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Fixed columns, then the curves (empty for kept rows of a table exported before they existed),
    then anything else a newer export wrote; sorted by run and step."""
    fixed = STEP_COLUMNS + list(STEP_CURVES)
    steps = steps.reindex(columns=fixed + [c for c in steps if c not in fixed])
    return steps.sort_values(["run_id", "step"]).reset_index(drop=True)


def hyper_columns_kept(merged: pd.DataFrame, old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """`merged` without the hyper-parameter columns that do not vary: a column the old table has is
    kept (its new rows filled in); one only the new rows have is kept when it varies among them, or,
    when the new rows are of a grid the old table does not hold yet, when their one value is not the
    config's default (bench-v2's `loss.token_clip=0.05` on every run: bench-v1's rows, which lack
    the column, ran at the default, so the table varies in it; their cells stay empty, their value
    is in their grid file). A resumed grid's new rows gain no column for a setting its older rows
    shared."""
    from opsd_platform.config import TrainConfig, flatten

    have = set(old.columns) if old is not None else set()
    fixed = set(RUN_COLUMNS + META_COLUMNS)
    new_grid = (old is not None and "grid" in old and "grid" in new
                and not set(new["grid"].dropna()) <= set(old["grid"].dropna()))
    defaults = {k: str(_value(str(v))) for k, v in flatten(TrainConfig().to_dict()).items()} if new_grid else {}

    def constant(c: str) -> bool:
        if new[c].astype(str).nunique(dropna=False) > 1:
            return False
        return not new_grid or c not in defaults or str(new[c].iloc[0]) in (defaults[c], "nan", "None")

    return merged.drop(columns=[c for c in new if c not in fixed and c not in have and constant(c)])


def export(uri: str, experiment: str, cfg: ExportConfig) -> dict[str, int]:
    """Write (merge into) the three files under `cfg.out`; returns rows per file."""
    runs, steps, problems = collect(uri, experiment, cfg.grid, every_hyper=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    old = {name: read_table(out / name) if (out / name).exists() else None for name in FILES}
    tables = {"runs.csv": order(hyper_columns_kept(merge(old["runs.csv"], runs), old["runs.csv"], runs)),
              "steps.csv": order_steps(merge(old["steps.csv"], steps)),
              "gap_problems.csv": merge(old["gap_problems.csv"], problems).sort_values(["run_id", "problem"])}
    for name, table in tables.items():  # all validated before any is written
        check_table(table, name)
    for name, table in tables.items():
        tmp = out / f".{name}.tmp"
        table.to_csv(tmp, index=False)
        tmp.replace(out / name)
    return {name: len(t) for name, t in tables.items()}


# ----------------------------------------------------------------------------- reading the table


def check_table(table: pd.DataFrame, where: str) -> None:
    """Required columns present and finite numbers where a value is required; errors name the file."""
    name = Path(where).name
    required = FILES.get(name, [])
    missing = [c for c in required if c not in table]
    if missing:
        raise ExportError(f"{where}: missing column(s) {', '.join(missing)}")
    must_be_finite = {"runs.csv": ["gap", "improvement", "val_initial", "val_final", "seed", "steps"],
                      "steps.csv": ["step"], "gap_problems.csv": ["student_passes", "teacher_passes", "samples"]}.get(name, [])
    for col in must_be_finite:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = table.index[~values.map(lambda v: v is not None and math.isfinite(v))]
        if len(bad):
            raise ExportError(f"{where}: column {col} has a missing or non-finite value in row {int(bad[0]) + 2} "
                              f"({table[col].iloc[bad[0]]!r})")


def read_table(path: str | Path) -> pd.DataFrame:
    """One of the three files, checked (`check_table`)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        table = pd.read_csv(path)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    check_table(table, str(path))
    return table


def only_grid(runs: pd.DataFrame, grid: str | None, where: str | Path) -> pd.DataFrame:
    """The rows of one grid (the `grid` column: bench-v1, bench-v2); every row when `grid` is None."""
    if grid is None:
        return runs
    if "grid" not in runs or not (runs["grid"] == grid).any():
        raise ExportError(f"{where}: no rows of grid {grid!r}"
                          + (f" (grids there: {', '.join(sorted(runs['grid'].dropna().unique()))})" if "grid" in runs else ""))
    return runs[runs["grid"] == grid]
