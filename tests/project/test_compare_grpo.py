"""`opsd compare-grpo`: the interval arithmetic against a direct computation, the GRPO rows a
table contributes, the law's prediction through the registry, reuse of the gaps on a second call
(no model is loaded), GRPO trained and reused, and the errors (no law, bad settings)."""

import json
import math
import re

import pandas as pd
import pytest
from scipy import stats

from opsd_platform import compare_grpo as cg
from opsd_platform.cli import main
from opsd_platform.search.pruner import LawView
from tests.helpers import store_with_law

# improvement = -0.1 + 1.5 * gap (+ seed noise): a law with a real residual scatter
POINTS = [(c, s, g + 0.01 * s, -0.1 + 1.5 * g + (0.03 if s else -0.03) + 0.02 * i)
          for i, (c, g) in enumerate({"none": 0.0, "static": 0.1, "feedback": 0.2, "peer_solution": 0.3,
                                      "reference": 0.5}.items()) for s in (0, 1)]

FAST = ["model=tiny", "trainer.progress_bar=false", "rollout.max_new_tokens=8", "gap.n_problems=4",
        "gap.bootstrap=200", "world.n_val=4", "rollout.val_samples=1", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2", "trainer.max_steps=1"]


@pytest.fixture(scope="module")
def law_store(tmp_path_factory):
    """(tmp dir, tracking URI, the fitted LawFit) with the law registered as opsd-gap-law@champion."""
    tmp = tmp_path_factory.mktemp("cmp")
    uri, report = store_with_law(tmp, POINTS)
    assert report.registration["version"] == 1
    return tmp, uri, report.fit


def grpo_table(path, rows):
    cols = ["run_id", "model", "family", "world", "context", "config", "seed", "steps", "gap", "improvement", "algorithm"]
    pd.DataFrame([dict(zip(cols, r)) for r in rows]).to_csv(path, index=False)
    return str(path)


# ------------------------------------------------------------------------------------ the arithmetic


def test_seed_interval_and_difference_against_a_direct_computation():
    imps = [0.02, -0.04, 0.05, 0.01]
    grpo, std = cg.seed_estimate(imps, 0.9)
    n, mean = 4, sum(imps) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in imps) / 3)
    h_g = stats.t.ppf(0.95, 3) * sd / math.sqrt(n)
    assert (grpo.value, std) == (pytest.approx(mean), pytest.approx(sd))
    assert (grpo.lower, grpo.upper) == (pytest.approx(mean - h_g), pytest.approx(mean + h_g))

    opsd = cg.Estimate(0.10, 0.02, 0.20, 0.9)  # asymmetric on purpose: each side combines on its own
    d = cg.difference(opsd, grpo)
    assert d.value == pytest.approx(0.10 - mean)
    assert d.lower == pytest.approx(0.10 - mean - math.sqrt(0.08 ** 2 + h_g ** 2))
    assert d.upper == pytest.approx(0.10 - mean + math.sqrt(0.10 ** 2 + h_g ** 2))
    # wider than either interval alone: neither uncertainty is dropped
    assert d.upper - d.lower > max(opsd.upper - opsd.lower, grpo.upper - grpo.lower)


def test_one_grpo_seed_gives_no_interval_and_the_sentence_says_why():
    grpo, std = cg.seed_estimate([0.03], 0.9)
    assert std is None and grpo.lower is None
    d = cg.difference(cg.Estimate(0.1, 0.0, 0.2, 0.9), grpo)
    assert d.value == pytest.approx(0.07) and d.lower is None
    base = cg.GrpoBaseline(grpo, 1, None, "trained", [0], ["r"], [1])
    assert "no interval: GRPO has 1 seed" in cg.sentence("reference", d, base)


@pytest.mark.parametrize("opsd, verdict", [((0.3, 0.25, 0.35), "OPSD is better"),
                                           ((-0.3, -0.35, -0.25), "GRPO is better"),
                                           ((0.02, -0.1, 0.14), "undecided: the interval contains 0")])
def test_sentence_names_the_winner_only_when_the_interval_excludes_zero(opsd, verdict):
    grpo, _ = cg.seed_estimate([0.0, 0.01, -0.01], 0.9)
    d = cg.difference(cg.Estimate(*opsd, 0.9), grpo)
    s = cg.sentence("feedback", d, cg.GrpoBaseline(grpo, 3, None, "t", [0, 1, 2], [], [1]))
    assert s.startswith("OPSD with context feedback is predicted to " + ("beat GRPO by +" if d.value >= 0 else "trail GRPO by "))
    assert s.endswith(verdict) and f"[{d.lower:+.3f}, {d.upper:+.3f}]" in s


def test_grpo_rows_are_picked_by_world_family_and_config(tmp_path):
    rows = [("a0", "tiny-llama", "tiny", "arithmetic", "feedback", "g1", 0, 1, None, 0.10, "grpo"),
            ("a1", "tiny-llama", "tiny", "arithmetic", "feedback", "g1", 1, 1, None, 0.00, "grpo"),
            ("a1b", "tiny-llama", "tiny", "arithmetic", "feedback", "g1", 1, 1, None, 0.04, "grpo"),  # seed 1 again
            ("b0", "SmolLM2", "smollm2", "arithmetic", "feedback", "g9", 0, 1, None, 0.90, "grpo"),  # other family
            ("c0", "tiny-llama", "tiny", "hidden_rule", "feedback", "g8", 0, 1, None, 0.80, "grpo"),  # other world
            ("d0", "tiny-llama", "tiny", "arithmetic", "feedback", "o1", 0, 1, 0.1, 0.70, "opsd"),  # OPSD
            ("e0", "tiny-llama", "tiny", "arithmetic", "feedback", "o2", 0, 1, 0.1, 0.60, None)]  # OPSD, older row
    runs = pd.read_csv(grpo_table(tmp_path / "runs.csv", rows))
    picked = cg.grpo_rows(runs, "arithmetic", "tiny", None, "runs.csv")
    assert sorted(picked["run_id"]) == ["a0", "a1", "a1b"]
    base = cg.baseline_from_rows(picked, 0.9, "t")
    # a seed recorded twice counts once, as the mean of its rows: seeds 0 -> 0.10, 1 -> 0.02
    assert base.n_seeds == 2 and base.seeds == [0, 1] and base.estimate.value == pytest.approx(0.06)

    with pytest.raises(cg.CompareError, match=r"no GRPO rows for world 'code' and model family 'tiny'; GRPO rows "
                                              r"there \(world/family\): arithmetic/smollm2, arithmetic/tiny, hidden_rule/tiny"):
        cg.grpo_rows(runs, "code", "tiny", None, "runs.csv")
    two = pd.concat([runs, runs.iloc[[0]].assign(config="g2", run_id="z")])
    with pytest.raises(cg.CompareError, match=r"2 GRPO configurations for arithmetic/tiny: g1 \(3 rows\), g2 \(1 rows\); "
                                              "pick one with compare.grpo_config"):
        cg.grpo_rows(two, "arithmetic", "tiny", None, "runs.csv")
    assert list(cg.grpo_rows(two, "arithmetic", "tiny", "g2", "runs.csv")["run_id"]) == ["z"]
    with pytest.raises(cg.CompareError, match="compare.grpo_config: no GRPO rows of config 'g7'.*configs there: g1, g2"):
        cg.grpo_rows(two, "arithmetic", "tiny", "g7", "runs.csv")
    with pytest.raises(cg.CompareError, match="no rows with algorithm=grpo; use compare.train_grpo=true"):
        cg.grpo_rows(runs[runs["algorithm"] != "grpo"], "arithmetic", "tiny", None, "runs.csv")
    with pytest.raises(cg.CompareError, match="missing column.*algorithm; no GRPO rows recorded here"):
        cg.grpo_rows(runs.drop(columns="algorithm"), "arithmetic", "tiny", None, "runs.csv")


def test_law_inputs_supply_known_covariates_and_name_unknown_ones():
    gap = type("G", (), {"gap": 0.2, "teacher_prompt_tokens": 55.0})()
    cfg = type("C", (), {"trainer": type("T", (), {"max_steps": 20})()})()
    view = LawView(3, ("gap", "context_tokens"), lambda v, level: None)
    assert cg.law_inputs(view, gap, cfg) == {"gap": 0.2, "context_tokens": 55.0}
    with pytest.raises(cg.CompareError, match="law v3 needs input.s. model_params"):
        cg.law_inputs(LawView(3, ("gap", "model_params"), lambda v, level: None), gap, cfg)


@pytest.mark.parametrize("args, message", [
    (["compare.contexts=[]"], "compare.contexts: must list at least one context type"),
    (["compare.contexts=[none,none]"], "compare.contexts: duplicate context types"),
    (["compare.level=1.5"], r"compare.level: must be in \(0, 1\), got 1.5"),
    (["compare.table=null"], "compare.table: no GRPO to compare with"),
    (["compare.tabel=x"], "unknown key compare.tabel; valid keys here: contexts, table"),
    (["context=reference"], "context=reference: compare-grpo sets these itself"),
    (["algorithm=grpo"], "algorithm=grpo: compare-grpo sets these itself"),
    (["compare.table=/nonexistent/dir"], "compare.table: /nonexistent/dir: no such file"),
])
def test_bad_settings_exit_2_naming_the_key(law_store, args, message, capsys):
    _, uri, _ = law_store
    assert main(["compare-grpo", *FAST, f"tracking.uri={uri}", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_no_registered_law_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the law was checked")

    monkeypatch.setattr("opsd_platform.runs.train.setup_run", no_model)
    assert main(["compare-grpo", *FAST, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert "no gap law to predict OPSD's improvement with (no registered model 'opsd-gap-law'" in err
    assert "opsd calibrate, then opsd fit-law" in err and "opsd fit-law law.table=DIR" in err


# ------------------------------------------------------------------------------------ end to end


def test_table_comparison_predicts_with_the_law_and_reuses_gaps(law_store, tmp_path, capsys, monkeypatch):
    tmp, uri, fit = law_store
    table = grpo_table(tmp_path / "runs.csv", [
        ("g0", "tiny-llama", "tiny", "arithmetic", "none", "g1", 0, 1, None, 0.02, "grpo"),
        ("g1", "tiny-llama", "tiny", "arithmetic", "none", "g1", 1, 1, None, -0.04, "grpo"),
        ("g2", "tiny-llama", "tiny", "arithmetic", "none", "g1", 2, 1, None, 0.05, "grpo"),
        ("x0", "SmolLM2", "smollm2", "arithmetic", "none", "g5", 0, 1, None, 0.50, "grpo")])
    out = tmp_path / "cmp.json"
    args = ["compare-grpo", *FAST, f"tracking.uri={uri}", "compare.contexts=[none,reference]",
            f"compare.table={table}", f"compare.out={out}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    first = json.loads(out.read_text())
    assert first["world"] == "arithmetic" and first["family"] == "tiny" and first["law"]["version"] == 1
    assert first["grpo"]["run_ids"] == ["g0", "g1", "g2"] and first["grpo"]["n_seeds"] == 3
    grpo = cg.Estimate(**first["grpo"]["estimate"])
    for row in first["contexts"]:
        # the registered law's prediction is the in-memory fit's on the measured gap
        want = fit.predict(pd.DataFrame({"gap": [row["gap"]]}), level=0.9).iloc[0]
        assert row["opsd"]["value"] == pytest.approx(want["predicted_improvement"], abs=1e-12)
        assert (row["opsd"]["lower"], row["opsd"]["upper"]) == (pytest.approx(want["lower"]), pytest.approx(want["upper"]))
        d = cg.difference(cg.Estimate(**row["opsd"]), grpo)
        assert row["difference"] == {"value": pytest.approx(d.value), "lower": pytest.approx(d.lower),
                                     "upper": pytest.approx(d.upper), "level": 0.9}
        assert row["sentence"] in printed and row["sentence"].startswith(f"OPSD with context {row['context']} is predicted to")
    assert "no model loaded" not in printed and "OPSD predicted" in printed

    # the second call: every gap side from the store, no model built, the same numbers
    def no_model(*a, **k):
        raise AssertionError("the second call loaded a model")

    monkeypatch.setattr("opsd_platform.runs.train.setup_run", no_model)
    assert main(args) == 0
    printed = capsys.readouterr().out
    second = json.loads(out.read_text())
    assert "4 of 4 sides from the measurement store; no model loaded" in printed
    assert all(sorted(r["reused"]) == ["student", "teacher"] for r in second["contexts"])
    strip = lambda d: [{k: v for k, v in r.items() if k != "reused"} for r in d["contexts"]]  # noqa: E731
    assert strip(second) == strip(first)


def test_train_grpo_trains_each_seed_once_then_reuses_the_runs(tmp_path, capsys, monkeypatch):
    store, _ = store_with_law(tmp_path, POINTS)  # its own store: the GRPO runs found there are this test's
    args = ["compare-grpo", *FAST, f"tracking.uri={store}", "compare.contexts=[feedback]", "compare.train_grpo=true",
            "compare.grpo_seeds=[0,1]", f"compare.out={tmp_path}/c.json"]
    assert main(args) == 0
    first = json.loads((tmp_path / "c.json").read_text())
    assert first["grpo"]["source"] == "trained" and first["grpo"]["seeds"] == [0, 1] and len(set(first["grpo"]["run_ids"])) == 2
    from mlflow.tracking import MlflowClient

    runs = {r.info.run_id: r for r in MlflowClient(tracking_uri=store).search_runs(
        [MlflowClient(tracking_uri=store).get_experiment_by_name("opsd").experiment_id], "tags.algorithm = 'grpo'")}
    assert set(runs) == set(first["grpo"]["run_ids"])
    imps = [runs[r].data.metrics["improvement"] for r in first["grpo"]["run_ids"]]
    assert cg.Estimate(**first["grpo"]["estimate"]) == cg.seed_estimate(imps, 0.9)[0]

    monkeypatch.setattr("opsd_platform.runs.train.train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("in the store, reused") == 2
    assert json.loads((tmp_path / "c.json").read_text())["grpo"] == first["grpo"]
