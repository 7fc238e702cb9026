"""The recorded benchmark table the pruning replay reads (benchmarks/data/, schema in README.md).

``load_table(directory)`` reads runs.csv, steps.csv and (when asked) gap_problems.csv, checks
them, and returns a ``Table``: one ``Run`` per training run (its costs, its validation curve, its
per-problem gap differences) plus what the replay needs about configurations (their mean
improvement over seeds, the best ones). Bad input raises ``TableError`` whose message is one line
naming the file and the column; inconsistencies that do not stop a replay (a final validation
that does not match ``improvement``, a last step's cumulative cost that does not match
``train_cpu_s``) are returned as warnings.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from opsd_platform.law.export import GAP_COLUMNS, REPLAY_RUN_COLUMNS, STEP_COLUMNS as EXPORTED_STEP_COLUMNS

# The table's columns are declared once, by the export that writes them (law/export.py); the
# replay requires these of them, and reads the roles below.
RUN_COLUMNS = tuple(REPLAY_RUN_COLUMNS)
STEP_COLUMNS = tuple(EXPORTED_STEP_COLUMNS)
PROBLEM_COLUMNS = tuple(GAP_COLUMNS)
RUN_NUMERIC = tuple(c for c in RUN_COLUMNS if c not in (  # every required column but the labels and keys is a number
    "run_id", "model", "family", "world", "context", "config", "seed", "slice", "gap_key", "gap_student_key", "val_key"))
RUN_KEYS = ("run_id", "config", "seed", "slice", "gap_key", "gap_student_key", "val_key")
SLICES = ("law", "search")  # what a row is to the replay: a point of the first law, or a searchable run
# The grid names its slices `<kind>-<world>` (conf/grid/benchmark.yaml: law-arithmetic, search-arithmetic,
# grpo-pyfunc...); a bare `law` or `search` is the older fixtures' form. GRPO rows are not OPSD
# configurations a gap-law search chooses between: the replay leaves them out.
IGNORED_KINDS = ("grpo", "pilot")  # GRPO rows, and the recipe pilots (bench-v2): not law or search slices


def slice_kind(name: str) -> str | None:
    """`law`, `search`, or None (a slice the replay leaves out) for a grid slice name."""
    kind = name.split("-", 1)[0]
    if kind in SLICES:
        return kind
    return None if kind in IGNORED_KINDS else "unknown"


class TableError(ValueError):
    """Missing or malformed table: the message is one line naming the file and the column."""


@dataclass
class Run:
    run_id: str
    config: str
    seed: str
    slice: str
    gap: float
    improvement: float
    gap_key: str
    gap_student_key: str
    val_key: str
    gap_cpu_s: float
    gap_tokens: float
    gap_student_cpu_s: float
    gap_student_tokens: float
    val_initial_cpu_s: float
    val_initial_tokens: float
    steps: int
    covariates: dict[str, float]  # context_tokens and the numeric hyper-parameters
    val_steps: np.ndarray  # steps with a validation, ascending (the last one is `steps`)
    val_values: np.ndarray  # improvement so far at those steps (val_pass_rate - val_initial)
    cum_cpu: dict[int, float]  # step -> cumulative training CPU-s (validations included)
    cum_tokens: dict[int, float]
    diffs: np.ndarray | None = None  # per-problem (teacher - student) / samples, in measurement order
    context: str = ""  # the teacher's context: what the gap law sees (the ranked arms rank contexts)


@dataclass
class Table:
    directory: Path
    runs: dict[str, Run]
    configs: list[str]  # search-slice configurations, sorted
    runs_of: dict[str, list[str]]  # config -> its search-slice run ids (sorted by seed)
    law_points: pd.DataFrame  # law-slice rows: config, seed, gap, improvement, covariates
    true_mean: dict[str, float]  # config -> mean improvement over its seeds
    max_steps: int
    hyper_columns: list[str]
    warnings: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # per-table memo (the first law of a replay)

    @property
    def best(self) -> float:
        return max(self.true_mean.values())

    @property
    def worst(self) -> float:
        return min(self.true_mean.values())

    def best_configs(self) -> set[str]:
        return {c for c, v in self.true_mean.items() if v >= self.best - 1e-12}


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas ParserError, UnicodeDecodeError, EmptyDataError
        raise TableError(f"{path}: not a readable CSV table ({' '.join(str(exc).split())})") from None
    for col in columns:
        if col not in frame.columns:
            raise TableError(f"{path}: missing column {col!r} (have: {', '.join(frame.columns) or 'none'})")
    if len(frame) == 0:
        raise TableError(f"{path}: column {columns[0]!r}: no rows")
    return frame


def _numbers(frame: pd.DataFrame, col: str, path: Path, *, empty_ok: bool = False, key: str = "run_id") -> np.ndarray:
    raw = frame[col].str.strip()
    values = pd.to_numeric(raw.where(raw != "", "nan"), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) & ~((raw == "").to_numpy() & empty_ok)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f" ({key} {frame[key].iloc[i]})" if key in frame.columns else ""
        raise TableError(f"{path}: column {col!r}: non-finite or non-numeric value {raw.iloc[i]!r} in row {i + 2}{where}")
    return values


def _keys(frame: pd.DataFrame, col: str, path: Path) -> None:
    empty = (frame[col].str.strip() == "").to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise TableError(f"{path}: column {col!r}: empty value in row {i + 2}")


def problem_order(student_key: str, problem: str) -> int:
    """Measurement order of a problem: a fixed shuffle per student key, so runs that share the
    student half measure the same problems first (and the order is uniformly random, which the
    without-replacement confidence sequence assumes)."""
    return zlib.crc32(f"{student_key}\0{problem}".encode())


def load_table(directory: str | Path, *, problems: bool = False, search_slices: tuple[str, ...] = (),
               law_slices: tuple[str, ...] = ()) -> Table:
    """Read and check the table in `directory` (gap_problems.csv only when `problems`).

    Which rows are searched: the `search-*` slices, or the grid slices named in `search_slices`
    (e.g. ``law-arithmetic``: a search over its configurations, the contexts); the first law is
    fitted on the `law-*` slices, or on those in `law_slices`, never on a searched one."""
    directory = Path(directory)
    runs_path, steps_path = directory / "runs.csv", directory / "steps.csv"
    runs = _read(runs_path, RUN_COLUMNS)
    for col in RUN_KEYS:
        _keys(runs, col, runs_path)
    kinds = runs["slice"].map(slice_kind)
    bad_slice = (kinds == "unknown").to_numpy()
    if bad_slice.any():
        i = int(np.flatnonzero(bad_slice)[0])
        raise TableError(f"{runs_path}: column 'slice': value {runs['slice'].iloc[i]!r} in row {i + 2}; valid: law, search "
                         f"or law-<world>, search-<world> ({', '.join(k + '-<world>' for k in IGNORED_KINDS)} rows are left out)")
    names = set(runs["slice"])
    for given in (*search_slices, *law_slices):
        if given not in names:
            raise TableError(f"{runs_path}: column 'slice': no row of slice {given!r}; slices there: {', '.join(sorted(names))}")
    if set(search_slices) & set(law_slices):
        raise TableError(f"{runs_path}: column 'slice': {sorted(set(search_slices) & set(law_slices))} both searched and "
                         "fitted: the first law would have seen the search's answers")
    slice_of = runs["slice"]
    kinds = kinds.astype(object)
    if search_slices:  # these are searched, and no other search-* slice
        kinds[:] = np.where(slice_of.isin(search_slices), "search", np.where(kinds == "search", None, kinds))
    if law_slices:  # the first law is fitted on these only
        kinds[:] = np.where(slice_of.isin(law_slices), "law", np.where(kinds == "law", None, kinds))
    all_ids = set(runs["run_id"])  # steps and problems of left-out rows are there too
    keep = kinds.notna().to_numpy()
    runs = runs[keep].reset_index(drop=True).assign(slice=kinds[keep].to_numpy())
    num = {col: _numbers(runs, col, runs_path) for col in RUN_NUMERIC}
    dup = runs["run_id"].duplicated()
    if dup.any():
        raise TableError(f"{runs_path}: column 'run_id': duplicate {runs['run_id'][dup].iloc[0]!r}")
    if not (runs["slice"] == "search").any():
        raise TableError(f"{runs_path}: column 'slice': no row to search (no search-* slice; name one with --search-slices)")
    for col in ("gap_cpu_s", "gap_tokens", "gap_student_cpu_s", "gap_student_tokens", "val_initial_cpu_s", "val_initial_tokens",
                "train_cpu_s", "train_tokens"):
        if (num[col] < 0).any():
            raise TableError(f"{runs_path}: column {col!r}: negative cost in row {int(np.flatnonzero(num[col] < 0)[0]) + 2}")
    hyper = [c for c in runs.columns if c not in RUN_COLUMNS]
    hyper_num = {}
    for col in hyper:  # numeric hyper-parameters become covariates a law may use; empty where not applicable
        raw = runs[col].str.strip()
        values = pd.to_numeric(raw.where(raw != "", "nan"), errors="coerce")
        if (values.notna() | (raw == "")).all():
            hyper_num[col] = _numbers(runs, col, runs_path, empty_ok=True)

    steps = _read(steps_path, STEP_COLUMNS)
    _keys(steps, "run_id", steps_path)
    step_no = _numbers(steps, "step", steps_path)
    cpu, tokens = _numbers(steps, "cpu_s", steps_path), _numbers(steps, "tokens", steps_path)
    val = _numbers(steps, "val_pass_rate", steps_path, empty_ok=True)
    _numbers(steps, "val_cpu_s", steps_path, empty_ok=True)
    unknown = ~steps["run_id"].isin(all_ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise TableError(f"{steps_path}: column 'run_id': {steps['run_id'].iloc[i]!r} (row {i + 2}) is not in runs.csv")
    by_run = {rid: idx for rid, idx in steps.groupby("run_id", sort=False).indices.items()}

    diffs_of: dict[str, np.ndarray] = {}
    if problems:
        diffs_of = _load_problems(directory / "gap_problems.csv", runs, all_ids)

    warnings: list[str] = []
    table_runs: dict[str, Run] = {}
    for i, row in enumerate(runs.itertuples(index=False)):
        rid = row.run_id
        if rid not in by_run:
            raise TableError(f"{steps_path}: column 'run_id': no steps for run {rid!r} (runs.csv row {i + 2})")
        idx = by_run[rid][np.argsort(step_no[by_run[rid]], kind="stable")]
        n_steps = int(num["steps"][i])
        s = step_no[idx].astype(int)
        if s[-1] != n_steps:
            raise TableError(f"{steps_path}: column 'step': run {rid!r} ends at step {s[-1]}, runs.csv says steps={n_steps}")
        if (np.diff(cpu[idx]) < -1e-9).any() or (np.diff(tokens[idx]) < -1e-9).any():
            raise TableError(f"{steps_path}: column 'cpu_s': run {rid!r}: cumulative cost decreases")
        has_val = np.isfinite(val[idx])
        if not has_val[-1]:
            raise TableError(f"{steps_path}: column 'val_pass_rate': run {rid!r} has no validation at its last step {n_steps}")
        val_initial = num["val_initial"][i]
        if abs(val[idx][-1] - val_initial - num["improvement"][i]) > 1e-6:
            warnings.append(f"run {rid}: last val_pass_rate - val_initial = {val[idx][-1] - val_initial:+.4f}, "
                            f"improvement = {num['improvement'][i]:+.4f} (the replay uses improvement as the final value)")
        if abs(cpu[idx][-1] - num["train_cpu_s"][i]) > 1e-6 * max(1.0, num["train_cpu_s"][i]):
            warnings.append(f"run {rid}: last step's cumulative cpu_s {cpu[idx][-1]:.6g} != train_cpu_s {num['train_cpu_s'][i]:.6g}"
                            " (the replay uses steps.csv)")
        covs = {"context_tokens": float(num["context_tokens"][i])}
        covs.update({c: float(v[i]) for c, v in hyper_num.items() if np.isfinite(v[i])})
        table_runs[rid] = Run(
            run_id=rid, config=row.config, seed=row.seed, slice=row.slice, gap=float(num["gap"][i]),
            improvement=float(num["improvement"][i]), gap_key=row.gap_key, gap_student_key=row.gap_student_key,
            val_key=row.val_key, gap_cpu_s=float(num["gap_cpu_s"][i]), gap_tokens=float(num["gap_tokens"][i]),
            gap_student_cpu_s=float(num["gap_student_cpu_s"][i]), gap_student_tokens=float(num["gap_student_tokens"][i]),
            val_initial_cpu_s=float(num["val_initial_cpu_s"][i]), val_initial_tokens=float(num["val_initial_tokens"][i]),
            steps=n_steps, covariates=covs, val_steps=s[has_val], val_values=val[idx][has_val] - val_initial,
            cum_cpu=dict(zip(s.tolist(), cpu[idx].tolist())), cum_tokens=dict(zip(s.tolist(), tokens[idx].tolist())),
            diffs=diffs_of.get(row.gap_key), context=row.context,
        )
        r = table_runs[rid]
        if problems and r.slice == "search" and r.diffs is None:
            raise TableError(f"{directory / 'gap_problems.csv'}: column 'run_id': "
                             f"no problems for gap_key {r.gap_key!r} (run {rid})")
        if r.diffs is not None and abs(float(r.diffs.mean()) - r.gap) > 1e-6:
            warnings.append(f"run {rid}: mean per-problem difference {r.diffs.mean():+.4f} != gap {r.gap:+.4f}")

    search = [r for r in table_runs.values() if r.slice == "search"]
    configs = sorted({r.config for r in search})
    runs_of = {c: sorted((r.run_id for r in search if r.config == c), key=lambda k: table_runs[k].seed) for c in configs}
    true_mean = {c: float(np.mean([table_runs[k].improvement for k in ids])) for c, ids in runs_of.items()}
    law_rows = [r for r in table_runs.values() if r.slice == "law"]
    law_points = pd.DataFrame([{"config": r.config, "seed": r.run_id, "gap": r.gap, "improvement": r.improvement,
                                **r.covariates} for r in law_rows])
    return Table(directory, table_runs, configs, runs_of, law_points, true_mean,
                 max(r.steps for r in search), hyper, warnings)


def _load_problems(path: Path, runs: pd.DataFrame, known: set[str]) -> dict[str, np.ndarray]:
    """gap_key -> per-problem differences in measurement order (from the first run of the key listed)."""
    frame = _read(path, PROBLEM_COLUMNS)
    _keys(frame, "run_id", path)
    _keys(frame, "problem", path)
    s, t, n = (_numbers(frame, c, path) for c in ("student_passes", "teacher_passes", "samples"))
    for col, v in (("student_passes", s), ("teacher_passes", t)):
        bad = (v < 0) | (v > n) | (n <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TableError(f"{path}: column {col!r}: {v[i]:g} passes of {n[i]:g} samples in row {i + 2} "
                             f"(run_id {frame['run_id'].iloc[i]})")
    unknown = ~frame["run_id"].isin(known)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise TableError(f"{path}: column 'run_id': {frame['run_id'].iloc[i]!r} (row {i + 2}) is not in runs.csv")
    frame = frame.assign(diff=(t - s) / n)
    keys = runs.set_index("run_id")[["gap_key", "gap_student_key"]]
    out: dict[str, np.ndarray] = {}
    for rid, part in frame.groupby("run_id", sort=True):
        if rid not in keys.index:  # a row the replay leaves out (a GRPO slice)
            continue
        gap_key, student_key = keys.loc[rid, "gap_key"], keys.loc[rid, "gap_student_key"]
        if gap_key in out:
            continue
        order = np.argsort([problem_order(student_key, p) for p in part["problem"]], kind="stable")
        out[gap_key] = part["diff"].to_numpy(dtype=float)[order]
    return out
