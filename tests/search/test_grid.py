"""The recorded benchmark's machinery on the tiny model: the grid's queue shared by worker
processes (every point once, a SIGKILLed worker's point re-run, a rerun resumes), reused
measurements identical to recomputing, the export and the law fitted from it, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from opsd_platform.config import config_hash
from opsd_platform.config.compose import train_config
from opsd_platform.errors import ConfigError
from opsd_platform.law.export import STEP_COLUMNS, STEP_CURVES
from tests.helpers import FIXTURES, ROOT

TINY_GRID = FIXTURES / "grid_tiny.yaml"


def opsd(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsd_platform.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600, **kw)


def train_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    return client.search_runs([exp.experiment_id], "tags.kind = 'train'", max_results=1000)


def test_config_hashes_of_existing_configurations_are_unchanged():
    """A running grid is keyed on config_hash: new settings (graded_fraction, val_every,
    reuse_measurements, val_batch_size, rollout.stop, gap.sampling) must not change the hash of
    configurations without them. bench-v1's configurations are context_form=1: the default wording
    changed (form 2), so a default configuration is another one and hashes apart."""
    v1 = ["context_form=1"]
    assert config_hash(train_config(v1)) == "eedb3bb1b7"
    assert config_hash(train_config([*v1, "model=tiny"])) == "b4894c81a3"
    assert config_hash(train_config([*v1, "world=pyfunc", "context=reference"])) == "9128d9720b"
    assert config_hash(train_config([*v1, "trainer.val_every=5", "rollout.val_batch_size=8"])) == "eedb3bb1b7"
    assert config_hash(train_config([*v1, "rollout.stop=[]", "gap.sampling=rollout"])) == "eedb3bb1b7"
    assert config_hash(train_config([])) != "eedb3bb1b7"  # form 2's contexts: another configuration
    for other in ("rollout.stop=[END]", "gap.sampling=validation"):
        assert config_hash(train_config([*v1, other])) != "eedb3bb1b7", other
    graded = {config_hash(train_config(["context=graded", f"graded_fraction={f}"])) for f in (0.25, 0.5)}
    assert len(graded) == 2  # the fraction is part of what a graded configuration is
    # algorithm=opsd spelled out, or GRPO's options at their defaults: the same (older) hashes
    assert config_hash(train_config([*v1, "algorithm=opsd"])) == "eedb3bb1b7"
    assert config_hash(train_config([*v1, "model=tiny", "algorithm=opsd", "loss.kl_beta=0.0", "loss.aggregation=sequence",
                                     "loss.clip_eps=0.2", "loss.scale_advantages=true"])) == "b4894c81a3"


def test_a_grid_slice_with_an_unknown_context_or_a_share_outside_0_1_is_one_line_exit_2(tmp_path):
    for conf, says in (("[context=oracle]", "unknown value 'oracle'"), ("[context=graded, graded_fraction=1.5]",
                                                                       "graded_fraction: must be in [0, 1], got 1.5")):
        spec = tmp_path / "bad.yaml"
        spec.write_text(f"name: bad\nseeds: [0]\nslices:\n  - name: s\n    configs:\n      - {conf}\n")
        out = opsd("grid", f"grid.spec={spec}", "grid.dry_run=true", f"tracking.uri=sqlite:///{tmp_path}/m.db")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and says in lines[0] and "slice s" in lines[0], out.stderr


def test_one_measurement_per_student_key_when_two_processes_want_it_at_once(tmp_path, tiny_overrides):
    """bench-v1 recorded pyfunc rows sharing a student key with two different measurements: two
    workers measured it at once. The key's lock makes the second wait and reuse the first's."""
    from concurrent.futures import ThreadPoolExecutor

    from opsd_platform.gap.measure import Side
    from opsd_platform.gap.measurements import MeasurementStore, _cached, student_key_fields
    from opsd_platform.training.evaluation import Evaluation

    store = MeasurementStore(f"sqlite:///{tmp_path}/m.db", "opsd")
    store.experiment_id()
    calls = []

    def measure():
        calls.append(1)
        time.sleep(1.0)
        return Side(Evaluation(0.5, 0.5, [0.5], 2, 3.0, ["a", "b"], []), 1.0, 1.0)

    fields = student_key_fields(train_config(tiny_overrides))
    with ThreadPoolExecutor(2) as pool:
        sides = list(pool.map(lambda _: _cached(store, "gap_student", fields, measure), range(2)))
    assert len(calls) == 1 and sorted(s.reused for s in sides) == [False, True]
    assert len(store.client.search_runs([store.experiment_id()], "tags.`measurement.kind` = 'gap_student'")) == 1


def test_grpo_configuration_hashes():
    """GRPO configurations hash apart from OPSD's and by their own options, not by the teacher's
    settings, which GRPO never reads."""
    grpo = config_hash(train_config(["algorithm=grpo"]))
    assert grpo == "f29b6a0693"  # pinned: a grid keyed on it must find its points again
    assert grpo != config_hash(train_config([]))
    assert config_hash(train_config(["algorithm=grpo", "context=reference", "teacher.kind=fixed", "loss.top_k=5",
                                     "loss.divergence=jsd", "graded_fraction=0.3"])) == grpo
    assert config_hash(train_config(["algorithm=grpo", "loss.kl_beta=0.0"])) == grpo  # a default, spelled out
    options = ["loss.kl_beta=0.04", "loss.aggregation=token", "loss.scale_advantages=false", "loss.clip_eps=0.1",
               "loss.clip_eps_high=0.28", "optim.lr=3e-5", "rollout.samples_per_prompt=8"]
    hashes = {config_hash(train_config(["algorithm=grpo", o])) for o in options}
    assert len(hashes) == len(options) and grpo not in hashes


def test_two_workers_run_every_point_exactly_once_and_a_rerun_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = opsd("grid", f"grid.spec={TINY_GRID}", "grid.workers=2", "grid.poll_s=1", "grid.exported=null",
               f"tracking.uri={uri}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "grid: 6/6 points done" in out.stdout
    runs = train_runs(uri)
    keys = [r.data.tags["grid.key"] for r in runs]
    assert len(keys) == 6 and len(set(keys)) == 6 and all(r.info.status == "FINISHED" for r in runs)
    workers = {r.data.tags["opsd.process"] for r in runs}
    assert len(workers) == 2, "both worker processes should have trained points"
    study = optuna.load_study(study_name="grid-tiny", storage=f"sqlite:///{tmp_path}/grid.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 6
    # measured once per key: one initial validation per seed, one student side per seed
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd-measurements")
    kinds = [r.data.tags["measurement.kind"] for r in client.search_runs([exp.experiment_id], max_results=100)]
    assert kinds.count("val_initial") == 2 and kinds.count("gap_student") == 2
    assert kinds.count("gap_teacher") == len({r.data.params["context"] + r.data.tags["seed"] for r in runs})

    again = opsd("grid", f"grid.spec={TINY_GRID}", "grid.workers=0", "grid.exported=null", f"tracking.uri={uri}")
    assert again.returncode == 0 and "6/6 points done" in again.stdout
    assert len(train_runs(uri)) == 6  # nothing trained again


@pytest.mark.slow
def test_a_sigkilled_workers_point_is_failed_by_heartbeat_and_rerun_once(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(TINY_GRID.read_text().replace("trainer.max_steps=2", "trainer.max_steps=120"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [f"grid.spec={spec}", "grid.only=[law]", "grid.exported=null", "grid.heartbeat_interval=1",
              "grid.grace_period=4", f"tracking.uri={uri}"]
    victim = subprocess.Popen([sys.executable, "-m", "opsd_platform.cli", "grid", *common, "grid.workers=0"],
                              cwd=ROOT, stdout=open(tmp_path / "victim.log", "w"), stderr=subprocess.STDOUT)
    storage = f"sqlite:///{tmp_path}/grid.db"
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and killed is None:
        try:
            running = optuna.load_study(study_name="grid-tiny", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study does not exist yet
            running = []
        for t in running:
            if "run_id" in t.user_attrs:  # training started (the gap is measured)
                os.kill(victim.pid, signal.SIGKILL)
                killed = (t.number, t.user_attrs["point"], t.user_attrs["run_id"])
                break
        assert victim.poll() is None or killed, (tmp_path / "victim.log").read_text()[-3000:]
        time.sleep(0.2)
    assert killed, "the victim never started training a point"
    victim.wait(timeout=30)
    survivor = opsd("grid", *common, "grid.workers=0")
    assert survivor.returncode == 0, survivor.stdout[-2000:] + survivor.stderr[-3000:]
    number, point, dead_run = killed
    trials = optuna.load_study(study_name="grid-tiny", storage=storage).trials
    assert trials[number].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].user_attrs["point"] == point
    runs = {r.info.run_id: r for r in train_runs(uri)}
    assert runs[dead_run].info.status == "FAILED" and "no heartbeat" in runs[dead_run].data.tags["failure_reason"]
    finished = [r.data.tags["grid.key"] for r in runs.values() if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 4  # 2 contexts x 2 seeds, each once


def test_reused_measurements_give_bitwise_the_same_gap_and_improvement(tmp_path, tiny_overrides):
    """A run whose initial validation and gap come from the measurement store equals a run that
    measures them itself, to the last bit of its gap, pass rates and final weights."""
    from opsd_platform.runs.train import train

    base = [o for o in tiny_overrides if not o.startswith("tracking.uri")]
    base += ["trainer.max_steps=2", "gap.enabled=true", "gap.n_problems=4", "gap.bootstrap=100",
             "trainer.val_every=1", "trainer.num_threads=1", "model.tiny.init_std=0.5"]
    shared = f"sqlite:///{tmp_path}/shared.db"
    first = train(train_config([*base, "context=reference", "optim.lr=1e-3", f"tracking.uri={shared}"]))
    # another configuration of the same seed: its initial validation and student side are reused
    reused = train(train_config([*base, "context=reference", "optim.lr=3e-3", f"tracking.uri={shared}"]))
    fresh = train(train_config([*base, "context=reference", "optim.lr=3e-3", "trainer.reuse_measurements=false",
                                f"tracking.uri=sqlite:///{tmp_path}/fresh.db"]))
    assert sorted(reused.gap.reused) == ["student", "teacher"] and fresh.gap.reused == [] and first.gap.reused == []
    for field in ("gap", "student_pass_rate", "teacher_pass_rate", "gap_ci", "per_problem", "tokens_generated"):
        assert getattr(reused.gap, field) == getattr(fresh.gap, field), field
    assert reused.initial_pass_rate == fresh.initial_pass_rate
    assert reused.final_pass_rate == fresh.final_pass_rate and reused.improvement == fresh.improvement
    tags = lambda r: MlflowClient(tracking_uri=r.tracking_uri).get_run(r.run_id).data.tags  # noqa: E731
    assert tags(reused)["opsd.policy_sha256"] == tags(fresh)["opsd.policy_sha256"]
    assert tags(first)["opsd.policy_sha256"] != tags(fresh)["opsd.policy_sha256"]  # the lr matters after step 0
    # the student side does not depend on the context: a new context reuses it, measures its own teacher
    other = train(train_config([*base, "context=none", f"tracking.uri={shared}"]))
    assert other.gap.reused == ["student"] and other.gap.student_pass_rate == fresh.gap.student_pass_rate


def test_measurement_keys_ignore_settings_that_change_nothing_measured(tiny_overrides):
    """A world setting that has no effect (the code judge of a world that runs no code, or the
    judge every older key had) leaves the keys as they were, as config_hash does; one that has an
    effect (another judge of code) changes them."""
    from opsd_platform.gap.measurements import key_of, student_key_fields, teacher_key_fields, val_key_fields

    def keys(*extra):
        cfg = train_config([*tiny_overrides, *extra])
        return [key_of(f(cfg)) for f in (val_key_fields, student_key_fields, teacher_key_fields)]

    assert keys("world=arithmetic") == keys("world=arithmetic", "world.grading=lcb")
    assert keys("world=pyfunc") == keys("world=pyfunc", "world.grading=lenient")
    assert all(a != b for a, b in zip(keys("world=pyfunc"), keys("world=pyfunc", "world.grading=lcb")))
    assert keys("world=arithmetic", "optim.lr=3e-3")[:2] == keys("world=arithmetic")[:2]  # not a measured setting


def test_export_round_trips_and_the_law_from_the_table_equals_the_law_from_the_store(tmp_path):
    from opsd_platform.law.export import export, read_table
    from opsd_platform.law.pipeline import collect_points, points_from_table
    from opsd_platform.law.settings import ExportConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert opsd("grid", f"grid.spec={TINY_GRID}", "grid.workers=0", "grid.exported=null", f"tracking.uri={uri}").returncode == 0
    out = tmp_path / "data"
    counts = export(uri, "opsd", ExportConfig(grid="tiny", out=str(out)))
    assert counts == {"runs.csv": 6, "steps.csv": 6 * 3, "gap_problems.csv": 6 * 4}
    runs, steps = read_table(out / "runs.csv"), read_table(out / "steps.csv")
    assert list(runs.columns[:18]) == ["run_id", "model", "family", "world", "context", "config", "seed", "steps", "gap",
                                       "gap_lower", "gap_upper", "gap_tokens", "gap_cpu_s", "val_initial", "val_final",
                                       "improvement", "train_tokens", "train_cpu_s"]
    assert {"optim.lr", "loss.top_k", "teacher.kind"} <= set(runs.columns)  # the drawn hyper-parameters vary
    assert np.allclose(runs["improvement"], runs["val_final"] - runs["val_initial"])
    last = steps[steps["step"] == 2].set_index("run_id")
    assert np.allclose(last.loc[runs["run_id"], "cpu_s"].values, runs["train_cpu_s"].values)
    assert (steps.groupby("run_id")["cpu_s"].apply(lambda s: s.is_monotonic_increasing)).all()
    # the same points from the table as from the store
    cols = ["config", "seed", "gap", "improvement", "context", "run_id"]
    store = collect_points(uri, "opsd", ["tiny/law", "tiny/search"]).sort_values("run_id")[cols].reset_index(drop=True)
    table = points_from_table(str(out)).sort_values("run_id")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(store, table, check_dtype=False)
    # the curves: columns after the fixed ones, equal to what each run logged, empty where not logged
    assert list(steps.columns) == STEP_COLUMNS + list(STEP_CURVES)
    assert_curves_are_the_logged_ones(uri, steps)
    assert steps[[c for c in STEP_CURVES if c.startswith("grpo_")]].isna().all().all()  # OPSD logs no grpo/*
    # re-exporting merges: a row of a run that is not in the store (another session's) is kept,
    # and a table written before the curves existed gets them for every run the store has
    kept = runs.iloc[0].copy()
    kept["run_id"] = "from-an-earlier-session"
    pd.concat([runs, kept.to_frame().T]).to_csv(out / "runs.csv", index=False)
    old_steps = steps[STEP_COLUMNS].copy()
    old_steps = pd.concat([old_steps, old_steps.head(3).assign(run_id="from-an-earlier-session")])
    old_steps.to_csv(out / "steps.csv", index=False)
    # and a GRPO point in the same grid: its grpo/* curves are exported too
    grpo_spec = tmp_path / "grid_grpo.yaml"
    tiny = yaml.safe_load(TINY_GRID.read_text())
    grpo_spec.write_text(yaml.safe_dump({"name": "tiny", "seeds": [0], "base": tiny["base"],
                                         "slices": [{"name": "grpo", "configs": [["algorithm=grpo"]]}]}))
    done = opsd("grid", f"grid.spec={grpo_spec}", "grid.workers=0", "grid.exported=null", f"tracking.uri={uri}")
    assert done.returncode == 0, done.stderr[-2000:]
    export(uri, "opsd", ExportConfig(grid="tiny", out=str(out)))
    assert "from-an-earlier-session" in set(read_table(out / "runs.csv")["run_id"])
    again = read_table(out / "steps.csv")
    assert list(again.columns) == STEP_COLUMNS + list(STEP_CURVES)
    earlier = again["run_id"] == "from-an-earlier-session"
    assert earlier.sum() == 3 and again.loc[earlier, list(STEP_CURVES)].isna().all().all()
    assert_curves_are_the_logged_ones(uri, again[~earlier])
    grpo_run = set(read_table(out / "runs.csv").query("algorithm == 'grpo'")["run_id"])
    assert len(grpo_run) == 1
    grpo_steps = again[again["run_id"].isin(grpo_run) & (again["step"] > 0)]
    assert grpo_steps[[c for c in STEP_CURVES if c.startswith("grpo_")]].notna().all().all()


def assert_curves_are_the_logged_ones(uri: str, steps: pd.DataFrame) -> None:
    """Every curve cell is the run's MLflow history at that step (empty at step 0 and where not logged)."""
    client = MlflowClient(tracking_uri=uri)
    for run_id, part in steps.groupby("run_id"):
        for col, key in STEP_CURVES.items():
            logged = {m.step: m.value for m in client.get_metric_history(run_id, key)}
            expected = part["step"].map(lambda s: logged.get(s, np.nan)).to_numpy(dtype=float)
            assert np.allclose(part[col].to_numpy(dtype=float), expected, equal_nan=True), (run_id, col)
        # every training step logs its response length (and step 0, the initial validation, none)
        assert part.loc[part["step"] > 0, "rollout_response_len"].notna().all(), run_id
        assert part.loc[part["step"] == 0, "rollout_response_len"].isna().all(), run_id


def law_table(path: Path, gaps, improvements, seeds=2) -> Path:
    """A runs.csv with given configuration means (test data for the fit, not a measurement)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (g, y) in enumerate(zip(gaps, improvements)):
        for s in range(seeds):
            noise = rng.normal(0, 0.01)
            rows.append({"run_id": f"r{i}s{s}", "model": "m", "family": "f", "world": "arithmetic", "context": f"c{i}",
                         "config": f"h{i}", "seed": s, "steps": 20, "gap": g, "gap_lower": g - 0.1, "gap_upper": g + 0.1,
                         "gap_tokens": 100, "gap_cpu_s": 1.0, "val_initial": 0.5, "val_final": 0.5 + y + noise,
                         "improvement": y + noise, "train_tokens": 1000, "train_cpu_s": 10.0, "slice": "law",
                         "context_tokens": 50 + i})
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "runs.csv", index=False)
    return path


def test_fit_law_from_a_table_matches_statsmodels(tmp_path):
    table = law_table(tmp_path / "data", [-0.2, -0.1, 0.0, 0.1, 0.3], [-0.15, -0.02, 0.01, 0.09, 0.2])
    out = opsd("fit-law", f"law.table={table}", "law.register=false", f"law.out_dir={tmp_path}/law",
               f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert out.returncode == 0, out.stderr[-2000:]
    means = pd.read_csv(table / "runs.csv").groupby("config")[["gap", "improvement"]].mean()
    ols = sm.OLS(means["improvement"], sm.add_constant(means["gap"])).fit()
    from opsd_platform.law import fit_law
    from opsd_platform.law.pipeline import points_from_table

    fit = fit_law(points_from_table(str(table)))
    assert fit.slope == pytest.approx(ols.params["gap"], rel=1e-9)
    assert fit.intercept == pytest.approx(ols.params["const"], rel=1e-9)
    assert fit.r2 == pytest.approx(ols.rsquared, rel=1e-9)
    assert f"{ols.params['gap']:.4f}"[:5] in out.stdout


@pytest.mark.parametrize("problem, expected", [
    ("missing", "missing column(s) improvement"),
    ("nan", "column gap has a missing or non-finite value in row 3"),
    ("few", "configurations"),
])
def test_bad_tables_give_one_line_naming_file_and_problem_and_write_nothing(tmp_path, problem, expected):
    table = law_table(tmp_path / "data", [-0.2, 0.0, 0.3] if problem == "few" else [-0.2, -0.1, 0.0, 0.1],
                      [0.0, 0.1, 0.2, 0.3][: 3 if problem == "few" else 4], seeds=1)
    runs = pd.read_csv(table / "runs.csv")
    if problem == "missing":
        runs = runs.drop(columns=["improvement"])
    elif problem == "nan":
        runs.loc[1, "gap"] = float("inf")
    elif problem == "few":
        runs = runs.iloc[:2]
    runs.to_csv(table / "runs.csv", index=False)
    out = opsd("fit-law", f"law.table={table}", f"law.out_dir={tmp_path}/law", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    if problem != "few":
        assert "runs.csv" in lines[0]
    assert not (tmp_path / "law").exists()  # nothing written


def test_export_of_a_store_without_finished_points_fails_with_one_line(tmp_path):
    out = opsd("export", "export.grid=nothing", f"export.out={tmp_path}/data", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert out.returncode == 2
    assert "no finished training runs" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_a_grid_file_with_a_bad_slice_names_it(tmp_path):
    spec = tmp_path / "g.yaml"
    spec.write_text("name: g\nslices:\n  - name: a\n    configs: [[context=oracle]]\n")
    out = opsd("grid", f"grid.spec={spec}", "grid.dry_run=true", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert out.returncode == 2 and "slice a" in out.stderr and "oracle" in out.stderr


def test_only_runs_the_slices_listed_in_the_order_listed():
    from opsd_platform.search.grid import load_spec, points

    spec = load_spec("benchmark")
    listed = [p.slice for p in points(spec, only=["grpo-pyfunc", "grpo-arithmetic"])]
    assert listed == ["grpo-pyfunc"] * 2 + ["grpo-arithmetic"] * 2
    in_file_order = [p.slice for p in points(spec, only=["grpo-arithmetic", "law-arithmetic"])]
    assert in_file_order[:2] == ["grpo-arithmetic"] * 2 and set(in_file_order[2:]) == {"law-arithmetic"}
    with pytest.raises(ConfigError, match="grid.only: unknown slice"):
        points(spec, only=["grpo"])


def test_a_slice_runs_every_configuration_once_before_any_second_seed():
    from opsd_platform.search.grid import load_spec, points

    law = [p for p in points(load_spec("bench-v2"), only=["law-arithmetic-v2"])]
    assert [p.seed for p in law] == [0] * 13 + [1] * 13 + [2] * 13
    assert [p.config for p in law[:13]] == [p.config for p in law[13:26]] and len({p.config for p in law[:13]}) == 13


def test_law_report_runs_on_an_exported_table(tmp_path):
    """benchmarks.law_report on a real (tiny-model) export plus a table with a law to find."""
    from benchmarks.law_report import reuse_saving

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert opsd("grid", f"grid.spec={TINY_GRID}", "grid.workers=0", "grid.exported=null", f"tracking.uri={uri}").returncode == 0
    assert opsd("export", "export.grid=tiny", f"export.out={tmp_path}/data", f"tracking.uri={uri}").returncode == 0
    runs = pd.read_csv(tmp_path / "data" / "runs.csv")
    saving = reuse_saving(runs)
    assert saving["distinct"] == {"val_key": 2, "gap_student_key": 2, "gap_key": 6}
    # 6 runs, 2 seeds: 4 initial validations and 4 student sides were not measured again
    expected = (runs["val_initial_cpu_s"].sum() - runs.groupby("val_key")["val_initial_cpu_s"].first().sum()
                + runs["gap_student_cpu_s"].sum() - runs.groupby("gap_student_key")["gap_student_cpu_s"].first().sum())
    assert saving["saving_per_point_cpu_s"] * 6 == pytest.approx(expected)
    table = law_table(tmp_path / "law", [-0.2, -0.1, 0.0, 0.1, 0.3], [-0.15, -0.02, 0.01, 0.09, 0.2])
    t = pd.read_csv(table / "runs.csv").assign(slice="law-arithmetic", gap_key=lambda d: d["run_id"],
                                               gap_student_key=lambda d: d["run_id"], val_key=lambda d: d["run_id"],
                                               gap_student_cpu_s=0.5, val_initial_cpu_s=2.0)
    t.to_csv(table / "runs.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "benchmarks.law_report", "--data", str(table), "--out",
                          str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    fit = [f for f in report["fits"] if f["fit"] == "law-arithmetic"][0]  # each slice alone
    assert 0.5 < fit["slope"] < 0.8 and fit["configs"] == 5
    assert fit["loo_rmse"] < fit["loo_rmse_const"]  # the law predicts better than a constant here
    assert set(report["robustness"]["law-arithmetic"]) == {"bootstrap", "flagged"}
    assert (tmp_path / "plots" / "law-law-arithmetic.png").is_file()


def test_export_from_a_store_of_one_new_run_fills_the_tables_hyper_parameter_columns():
    """A session that lost its store exports its next point from a fresh one, where nothing varies:
    the merged table must still carry that run's values in the columns the table has, and gain no
    column for a setting that is the same everywhere."""
    from opsd_platform.law.export import hyper_columns_kept, merge

    old = pd.DataFrame({"run_id": ["a", "b"], "context": ["none", "graded"], "graded_fraction": [0.5, 0.25],
                        "algorithm": ["opsd", "grpo"]})
    new = pd.DataFrame({"run_id": ["c"], "context": ["graded"], "graded_fraction": [0.75], "algorithm": ["opsd"],
                        "trainer.max_steps": [20]})
    table = hyper_columns_kept(merge(old, new), old, new)
    assert list(table.columns) == ["run_id", "context", "graded_fraction", "algorithm"]
    assert table.set_index("run_id").loc["c", ["graded_fraction", "algorithm"]].tolist() == [0.75, "opsd"]
    two = pd.concat([new, new.assign(run_id="d", **{"trainer.max_steps": 40})])  # new rows that differ: a new column
    assert "trainer.max_steps" in hyper_columns_kept(merge(old, two), old, two)
    # a new grid's rows (bench-v2 beside bench-v1) keep a setting that is not the default everywhere
    # they ran, since the older grid's rows ran at the default; at the default they gain no column
    g_old, g_new = old.assign(grid="v1"), new.assign(grid="v2", **{"loss.token_clip": 0.05, "optim.lr": 1e-5})
    kept = hyper_columns_kept(merge(g_old, g_new), g_old, g_new)
    assert {"trainer.max_steps", "loss.token_clip"} <= set(kept.columns) and "optim.lr" not in kept.columns
    same = hyper_columns_kept(merge(g_old, new.assign(grid="v1")), g_old, new.assign(grid="v1"))
    assert "trainer.max_steps" not in same.columns


def test_law_report_covariates_use_only_the_searched_family(tmp_path):
    """The covariate law is fitted on the family the search slice ran; a second family's law
    slice enters the per-family and pooled fits but not the covariates."""
    table = law_table(tmp_path / "law", [-0.2, -0.1, 0.0, 0.1, 0.3], [-0.15, -0.02, 0.01, 0.09, 0.2])
    t = pd.read_csv(table / "runs.csv")
    t["slice"] = ["search-arithmetic"] * 6 + ["law-arithmetic"] * 4
    t["optim.lr"] = 1e-5
    other = t.iloc[:6].assign(family="g", run_id=lambda d: d["run_id"] + "g", config=lambda d: d["config"] + "g",
                              slice="law-g-arithmetic")
    t = pd.concat([t, other]).assign(gap_key=lambda d: d["run_id"], gap_student_key=lambda d: d["run_id"],
                                     val_key=lambda d: d["run_id"], gap_student_cpu_s=0.5, val_initial_cpu_s=2.0)
    t.to_csv(table / "runs.csv", index=False)
    from benchmarks.law_report import report

    out = report(table, 0.9, None)
    gap_only = [r for r in out["covariates"] if r["fit"] == "gap only"][0]
    assert gap_only["configs"] == 5
    fits = {r["fit"]: r for r in out["fits"]}
    assert fits["law-g-arithmetic"]["configs"] == 3 and fits["pooled, slice intercepts (table)"]["configs"] == 5
    cfg = {r["context"]: r for r in out["configurations"]["law-g-arithmetic"]}
    assert list(cfg) == ["c2", "c1", "c0"]  # by mean gap, largest first
    assert cfg["c1"]["seeds"] == "0 / 1" and cfg["c1"]["gap"] == "-0.100 / -0.100"
    held = {(r["scope"], r["left out"]): r for r in out["family_holdout"]}
    # g's law (3 configurations) predicts f's 2; without g only 2 remain: that direction is skipped, said why
    assert held[("law slices", "f")]["n_configs"] == 2 and "at least 3" in held[("law slices", "g")]["skipped"]
    assert set(out["equal_slopes_by_scope"]) == {"law slices", "arithmetic"}
