"""The pruning replay (benchmarks/pruning.py, benchmarks/replay.py) on the small fixture table in
tests/data/replay_fixture/ (synthetic, written by make_fixture.py there): cost accounting, the law
arm's decisions against the live GapLawPruner, the in-memory refit against fit_law, the command's
output and its bad-input errors."""

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.pruning import main, parse_arms, per_order, run_order, summarize
from benchmarks.replay import ARMS, Ledger, Replay, law_memory, replay_settings, run_topk
from benchmarks.replay_table import TableError, load_table
from opsd_platform.law import fit_law, leave_one_out
from opsd_platform.law.holdout import fit_ols_arrays as fast_ols
from opsd_platform.search.memory import array_view
from opsd_platform.search.pruner import GapLawPruner, LawView
from tests.helpers import FIXTURES

FIXTURE = FIXTURES / "replay_fixture"


def fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table():
    return load_table(FIXTURE, problems=True)


@pytest.fixture(scope="module")
def csv():
    return {name: pd.read_csv(FIXTURE / f"{name}.csv") for name in ("runs", "steps", "gap_problems")}


def table_cost(runs: pd.DataFrame, trained: list[str], gapped: list[str], column="cpu_s") -> float:
    """What these runs cost, straight from the CSVs: full training + one initial validation per
    val_key for `trained`; the gap once per gap_key (its student half once per student key) for `gapped`."""
    unit = "cpu_s" if column == "cpu_s" else "tokens"
    rows = runs.set_index("run_id")
    t = rows.loc[trained]
    cost = t[f"train_{unit}"].sum() + t.drop_duplicates("val_key")[f"val_initial_{unit}"].sum()
    if gapped:
        g = rows.loc[gapped]
        per_key = g.drop_duplicates("gap_key")
        cost += (per_key[f"gap_{unit}"] - per_key[f"gap_student_{unit}"]).sum()
        cost += g.drop_duplicates("gap_student_key")[f"gap_student_{unit}"].sum()
    return float(cost)


def test_fixture_is_what_its_script_writes(tmp_path):
    fixture_module().write_fixture(tmp_path)
    for name in ("runs.csv", "steps.csv", "gap_problems.csv"):
        assert (tmp_path / name).read_text() == (FIXTURE / name).read_text(), name


def test_table_reads_the_fixture(table):
    assert len(table.configs) == 10 and all(len(ids) == 2 for ids in table.runs_of.values())
    assert table.best_configs() == {"search/reference/lr3e-05"} and not table.warnings
    run = table.runs["r010"]
    assert run.val_steps.tolist() == [2, 4, 6, 8, 10] and run.val_values[-1] == pytest.approx(run.improvement)
    assert run.diffs.size == 24 and run.diffs.mean() == pytest.approx(run.gap)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_none_spends_exactly_the_recorded_cost_of_its_trials(table, csv, order):
    res = Replay(table, "none", order, replay_settings()).run()
    ids = [t.run_id for t in res.records]
    assert [t.state for t in res.records] == ["complete"] * 10 and sorted({t.config for t in res.records}) == table.configs
    assert res.cpu == pytest.approx(table_cost(csv["runs"], ids, []), rel=1e-12)
    assert res.tokens == pytest.approx(table_cost(csv["runs"], ids, [], "tokens"), rel=1e-12)
    assert res.gap_cpu == 0  # an arm without the law measures no gap


def test_none_over_every_recorded_run_spends_the_whole_table(table, csv):
    res = Replay(table, "none", 5, replay_settings(n_trials=20)).run()  # each configuration twice: both seeds drawn
    search = csv["runs"][csv["runs"]["slice"] == "search"]
    assert sorted(t.run_id for t in res.records) == sorted(search["run_id"])
    assert res.cpu == pytest.approx(search["train_cpu_s"].sum() + search.drop_duplicates("val_key")["val_initial_cpu_s"].sum())


@pytest.mark.parametrize("arm", ["law", "law_sequential", "law_then_halving"])
def test_pruning_everything_after_startup_spends_startup_trials_plus_gaps(table, csv, arm):
    settings = replay_settings(threshold=1e9, calibration_rate=0.0, n_startup_trials=3)
    res = Replay(table, arm, 0, settings).run()
    startup = [t for t in res.records if t.rule == "startup"]
    assert all(t.state == "pruned" and t.rule == "law" and t.step == 0 for t in res.records[len(startup):])
    assert sum(t.state == "complete" for t in startup) == 3 and res.records[:len(startup)] == startup
    ids = [t.run_id for t in res.records]
    if arm == "law_then_halving":  # successive halving may stop a startup trial: it pays the steps it reached
        steps = csv["steps"].set_index(["run_id", "step"])
        rows = csv["runs"].set_index("run_id")
        partial = sum(steps.loc[(t.run_id, t.step), "cpu_s"] - rows.loc[t.run_id, "train_cpu_s"] for t in startup)
        assert len(startup) > 3 and res.cpu == pytest.approx(table_cost(csv["runs"], [t.run_id for t in startup], ids) + partial)
    elif arm == "law":
        assert len(startup) == 3
        assert res.cpu == pytest.approx(table_cost(csv["runs"], ids[:3], ids), rel=1e-12)
        assert res.tokens == pytest.approx(table_cost(csv["runs"], ids[:3], ids, "tokens"), rel=1e-12)
    else:  # the sequential gap measures a share of the problems of the pruned trials' gaps: never more
        assert table_cost(csv["runs"], ids[:3], ids[:3]) <= res.cpu <= table_cost(csv["runs"], ids[:3], ids) + 1e-9
        assert any(t.gap_share < 1 for t in res.records[3:])


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_pays_what_its_trials_reached(table, arm):
    results = run_order(table, [arm], 3, replay_settings())
    res = results[arm]
    expected = Ledger()
    for t in res.records:
        run = table.runs[t.run_id]
        if arm in ("topk", "law", "law_then_halving"):
            expected.gap(run)
        if arm == "law_sequential":
            expected.gap(run, t.gap_share)
        if t.step > 0:
            expected.validation(run)
            expected.train(run, t.step)
            assert t.step in run.val_steps.tolist()  # a curve pruner stops at a reported step
    assert res.cpu == pytest.approx(expected.cpu, rel=1e-12) and res.tokens == pytest.approx(expected.tokens, rel=1e-12)
    assert res.curve[-1][0] == pytest.approx(res.cpu)


def test_law_arm_decides_as_the_live_gap_law_pruner(table, tmp_path):
    """The same trials through GapLawPruner with the law registered in a real MLflow registry."""
    from opsd_platform.law.registry import register_law

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fit = fit_law(table.law_points, level=0.9)
    from opsd_platform.law import leave_one_out

    assert register_law(fit, tracking_uri=uri, holdout=leave_one_out(table.law_points))["aliases"] == ["champion"]
    settings = replay_settings(refit_every=0, calibration_rate=0.3, n_startup_trials=2)
    for order in (0, 1, 2, 3):
        memory = Replay(table, "law", order, settings).run()
        live = GapLawPruner(uri, n_startup_trials=2, calibration_rate=0.3, level=0.9, seed=order)
        registry = Replay(table, "law", order, settings, law_pruner=live).run()
        assert [t.run_id for t in memory.records] == [t.run_id for t in registry.records]
        assert [t.decision for t in memory.records] == [t.decision for t in registry.records]
        assert memory.cpu == registry.cpu
        rules = {t.rule for t in memory.records}
    assert {"startup", "law", "interval"} <= rules


def test_in_memory_refit_equals_fit_law_and_leave_one_out():
    rng = np.random.default_rng(3)
    for n_configs, covariates in ((4, ()), (9, ()), (9, ("tokens",))):
        cfg = np.repeat(np.arange(n_configs), 2)
        gap = rng.uniform(-0.1, 0.5, cfg.size)
        tokens = np.repeat(rng.uniform(40, 150, n_configs), 2)
        imp = -0.05 + 1.3 * gap + 0.001 * tokens + rng.normal(0, 0.03, cfg.size)
        points = pd.DataFrame({"config": cfg.astype(str), "seed": np.arange(cfg.size), "gap": gap, "improvement": imp, "tokens": tokens})
        ref = fit_law(points, covariates=list(covariates))
        ours, rmse = fast_ols(cfg, gap, imp, tokens[:, None] if covariates else np.empty((cfg.size, 0)), covariates, 0.9)
        np.testing.assert_allclose(ours.params, ref.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.cov_params, ref.cov_params, rtol=1e-8, atol=1e-14)
        assert (ours.sigma2, ours.df_resid) == (pytest.approx(ref.sigma2, rel=1e-9), ref.df_resid)
        loo = leave_one_out(points, covariates=list(covariates))["rmse"]
        assert (rmse is None and math.isnan(loo)) or rmse == pytest.approx(loo, rel=1e-8)
        frame = pd.DataFrame({"gap": [-0.2, 0.1, 0.4], **({"tokens": [50.0, 90.0, 140.0]} if covariates else {})})
        want = ref.predict(frame, level=0.8)
        inputs = {c: frame[c].to_numpy() for c in frame}
        for view in (array_view(1, ref), LawView.of_fit(1, ref)):
            for column, values in zip(("predicted_improvement", "lower", "upper"), view.predict(inputs, 0.8)):
                np.testing.assert_array_equal(values, want[column].to_numpy())


def test_learning_loop_promotes_only_a_lower_holdout_error(table):
    memory = law_memory(table, replay_settings())
    assert memory.version == 1 and memory.view().version == 1
    first = memory.champion_rmse
    for rid in table.runs_of["search/reference/lr3e-05"] + table.runs_of["search/none/lr1e-05"]:
        run = table.runs[rid]
        memory.add(run.config, rid, run.gap, run.improvement, {})
    assert memory.version == 5  # one challenger per completed trial
    assert memory.champion_rmse is None or first is None or memory.champion_rmse <= first
    frozen = law_memory(table, replay_settings(refit_every=0))
    frozen.add("x", "k", 0.1, 0.1, {})
    assert frozen.version == 1


def test_sequential_arm_saves_gap_cost_and_reports_the_decisions_it_changes(table):
    settings = replay_settings(seq_batch=4)
    results = [run_order(table, ["law", "law_sequential"], o, settings) for o in range(6)]
    for res in results:
        assert res["law_sequential"].gap_cpu <= res["law"].gap_cpu + 1e-9
    summary = summarize(per_order(table, results, ["none", "law", "law_sequential"]), n_boot=200)
    seq = summary["law_sequential"]["sequential"]
    assert 0 < seq["gap_cpu_saving"] < 1 and seq["decisions"] > 0
    assert seq["differ_from_full"] <= seq["decisions"]


def test_topk_trains_the_largest_gaps_within_the_law_budget(table):
    res = run_order(table, ["topk"], 4, replay_settings())
    topk, law = res["topk"], res["law"]
    assert topk.cpu <= law.cpu + 1e-9 or sum(t.state == "complete" for t in topk.records) == 1
    trained = [table.runs[t.run_id].gap for t in topk.records if t.state == "complete"]
    others = [table.runs[t.run_id].gap for t in topk.records if t.state == "pruned"]
    assert trained and (not others or min(trained) >= max(others))
    fixed = run_topk(table, 4, replay_settings(topk_k=3), res["none"].records, None)
    assert sum(t.state == "complete" for t in fixed.records) == 3


def test_command_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "replay.json"
    assert main(["--data", str(FIXTURE), "--orders", "4", "--jobs", "2", "--bootstrap", "200", "--seq-batch", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "successive_halving" in text and "p_best" in text and "law_sequential: gap CPU-s saved" in text
    doc = json.loads(out.read_text())
    assert doc["orders"] == 4 and list(doc["arms"]) == list(ARMS) + ["ranked", "ranked_prior"]
    for arm, entry in doc["arms"].items():
        assert {"compute_ratio", "p_best", "regret_mean", "false_prune_rate", "ci"} <= set(entry), arm
        assert set(entry["ci"]) >= {"compute_ratio", "p_best", "regret_mean", "false_prune_rate"}
    assert doc["arms"]["none"]["compute_ratio"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 10_000
    serial = tmp_path / "serial.json"
    assert main(["--data", str(FIXTURE), "--orders", "4", "--jobs", "1", "--bootstrap", "200", "--seq-batch", "4",
                 "--out", str(serial)]) == 0
    assert json.loads(serial.read_text())["arms"] == doc["arms"]  # the same with one process or two


# ------------------------------------------------------------------------------------------ bad input


def broken_copy(tmp_path, edit):
    for name in ("runs.csv", "steps.csv", "gap_problems.csv"):
        (tmp_path / name).write_text((FIXTURE / name).read_text())
    edit(tmp_path)
    return tmp_path


def rewrite(path, change):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    frame.to_csv(path, index=False)


def set_cell(row, column, value):
    def change(frame):
        frame.loc[row, column] = value
        return frame
    return change


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "runs.csv").unlink(), ["runs.csv", "no such file"]),
    (lambda d: rewrite(d / "runs.csv", lambda f: f.drop(columns=["gap_key"])), ["runs.csv", "'gap_key'"]),
    (lambda d: rewrite(d / "runs.csv", set_cell(3, "improvement", "nan")), ["runs.csv", "'improvement'", "r003"]),
    (lambda d: rewrite(d / "runs.csv", set_cell(0, "gap_cpu_s", "fast")), ["runs.csv", "'gap_cpu_s'"]),
    (lambda d: rewrite(d / "runs.csv", set_cell(1, "slice", "train")), ["runs.csv", "'slice'", "law-<world>"]),
    (lambda d: rewrite(d / "steps.csv", set_cell(5, "cpu_s", "inf")), ["steps.csv", "'cpu_s'"]),
    (lambda d: rewrite(d / "steps.csv", set_cell(7, "run_id", "r999")), ["steps.csv", "'run_id'", "r999"]),
    (lambda d: rewrite(d / "steps.csv", lambda f: f.drop(columns=["tokens"])), ["steps.csv", "'tokens'"]),
    (lambda d: (d / "steps.csv").write_text("run_id,step\n\"unclosed"), ["steps.csv"]),
    (lambda d: rewrite(d / "gap_problems.csv", set_cell(2, "teacher_passes", "9")), ["gap_problems.csv", "'teacher_passes'"]),
    (lambda d: (d / "gap_problems.csv").unlink(), ["gap_problems.csv", "no such file"]),
])
def test_bad_table_one_line_naming_file_and_column_exit_2(tmp_path, capsys, edit, words):
    data = broken_copy(tmp_path, edit)
    assert main(["--data", str(data), "--orders", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    with pytest.raises(TableError):
        load_table(data, problems=True)


def test_unknown_arm_lists_the_valid_ones(capsys):
    assert main(["--data", str(FIXTURE), "--arms", "none,lawful"]) == 2
    err = capsys.readouterr().err
    assert "'lawful'" in err and all(arm in err for arm in ARMS)
    with pytest.raises(ValueError, match="valid arms"):
        parse_arms("nope")


def test_grid_slice_names_are_read_and_grpo_and_pilot_rows_left_out(tmp_path):
    """The exported table names slices as the grid does (law-<world>, search-<world>, grpo-<world>,
    pilot-<world>): the same runs as the fixture's law/search, plus GRPO and recipe-pilot rows the
    replay leaves out."""
    def grid_names(frame):
        frame["slice"] = frame["slice"].map({"law": "law-arithmetic", "search": "search-arithmetic"})
        extra = frame.iloc[:2].copy()
        extra["slice"], extra["run_id"] = ["grpo-arithmetic", "pilot-arithmetic"], ["g000", "g001"]
        return pd.concat([frame, extra], ignore_index=True)

    data = broken_copy(tmp_path, lambda d: rewrite(d / "runs.csv", grid_names))
    steps = pd.read_csv(data / "steps.csv", dtype=str, keep_default_na=False)
    first = steps[steps["run_id"] == steps["run_id"].iloc[0]]
    pd.concat([steps, first.assign(run_id="g000"), first.assign(run_id="g001")]).to_csv(data / "steps.csv", index=False)
    ours, theirs = load_table(data, problems=True), load_table(FIXTURE, problems=True)
    assert ours.configs == theirs.configs and set(ours.runs) == set(theirs.runs)
    assert {r.slice for r in ours.runs.values()} == {"law", "search"}
    assert ours.true_mean == theirs.true_mean and len(ours.law_points) == len(theirs.law_points)


def test_a_law_slice_can_be_replayed_as_the_search(tmp_path):
    """--search-slices law-arithmetic: its configurations are searched, and the first law is fitted
    on no searched row (here none is left: the law is learned in the loop)."""
    data = broken_copy(tmp_path, lambda d: rewrite(d / "runs.csv", lambda f: f.assign(slice=f["slice"].map(
        {"law": "law-arithmetic", "search": "search-arithmetic"}))))
    t = load_table(data, search_slices=("law-arithmetic",))
    law_rows = pd.read_csv(data / "runs.csv").query("slice == 'law-arithmetic'")
    assert set(t.runs) == set(law_rows["run_id"]) and len(t.law_points) == 0
    assert t.configs == sorted(set(law_rows["config"]))
    with pytest.raises(TableError, match="both searched and fitted"):
        load_table(data, search_slices=("law-arithmetic",), law_slices=("law-arithmetic",))
    with pytest.raises(TableError, match="no row of slice 'law-pyfunc'; slices there: law-arithmetic, search-arithmetic"):
        load_table(data, search_slices=("law-pyfunc",))
