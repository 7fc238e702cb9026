"""The demo (opsd_platform/demo/, `make demo`): its pure parts on a tiny recorded table, and the
whole flow once on the tiny model in this process (a second run resumes: nothing trains again)."""

import json
import re
import runpy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from opsd_platform.config import ConfigError, config_hash
from opsd_platform.config.compose import train_config
from opsd_platform.demo import (
    Candidate,
    DemoReport,
    Outcome,
    Plan,
    best_recorded,
    choose_candidates,
    decide_all,
    law_verdict,
    new_seed,
    outcome_rows,
    outcome_table,
    plan,
    recorded_configs,
    savings,
    summary_text,
    training_cap,
)
from opsd_platform.jobs import run_job
from opsd_platform.law import fit_law
from opsd_platform.search.pruner import Decision, LawView
from tests.helpers import ROOT

TINY_BASE = ["model=tiny", "trainer.max_steps=2", "trainer.val_every=1", "world.n_val=4", "world.n_train=8",
             "rollout.val_samples=2", "gap.n_problems=4", "rollout.max_new_tokens=6", "rollout.prompts_per_step=2",
             "rollout.samples_per_prompt=2", "gap.bootstrap=100"]
CONTEXTS = ["none", "static", "feedback", "peer_solution", "reference"]


def tiny_table(tmp_path: Path, improvement, seeds=(0, 1), contexts=CONTEXTS) -> tuple[Path, Path, dict[str, str]]:
    """A grid file of `contexts` on the tiny model and a runs.csv recording them at `seeds`, gap
    spread over [-0.2, 0.2], improvement = improvement(gap, seed). Returns (spec, table dir, label -> hash)."""
    spec = {"name": "tinybench", "seeds": list(seeds), "base": TINY_BASE,
            "slices": [{"name": "law", "overrides": [], "configs": [[f"context={c}"] for c in contexts]}]}
    spec_path = tmp_path / "tinybench.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    hashes = {c: config_hash(train_config([*TINY_BASE, f"context={c}"])) for c in contexts}
    rows = []
    for i, c in enumerate(contexts):
        gap = -0.2 + 0.4 * i / (len(contexts) - 1)
        for s in seeds:
            g = gap + 0.01 * s
            rows.append({"run_id": f"r{i}{s}", "model": "tiny", "family": "tiny", "world": "arithmetic", "context": c,
                         "config": hashes[c], "seed": s, "steps": 2, "gap": g, "gap_lower": g - 0.1, "gap_upper": g + 0.1,
                         "gap_tokens": 100, "gap_cpu_s": 80.0, "val_initial": 0.5, "val_final": 0.5 + improvement(g, s),
                         "improvement": improvement(g, s), "train_tokens": 1000, "train_cpu_s": 500.0 + 10 * i,
                         "grid": "tinybench", "slice": "law", "point": f"law/{hashes[c]}/seed{s}",
                         "val_initial_cpu_s": 90.0, "context_tokens": 40.0})
    table = tmp_path / "table"
    table.mkdir()
    pd.DataFrame(rows).to_csv(table / "runs.csv", index=False)
    return spec_path, table, hashes


def linear(g, s):  # a clear law: slope 1, small seed noise
    return 0.05 + g + (0.004 if s else -0.004)


def noise(g, s):  # improvements unrelated to the gap, scattered widely (the laws' intervals are wide)
    return [0.15, -0.25, 0.3, -0.2, 0.05][int(round((g + 0.2) / 0.1)) % 5] * (1 if s else -0.5)


def points(table: Path) -> pd.DataFrame:
    from opsd_platform.law.pipeline import points_from_table

    return points_from_table(str(table), ["law"])


# ------------------------------------------------------------------------------ choosing candidates


def test_candidates_spread_over_the_recorded_gaps_and_get_a_seed_none_of_them_has(tmp_path):
    _, table, hashes = tiny_table(tmp_path, linear)
    rows = pd.read_csv(table / "runs.csv")
    rec = recorded_configs(rows)
    assert list(rec["label"]) == CONTEXTS  # sorted by gap, which grows with the context's position here
    chosen = choose_candidates(rec, 3)
    assert chosen == [hashes["none"], hashes["feedback"], hashes["reference"]]  # lowest, middle, highest gap
    assert choose_candidates(rec, 2) == [hashes["none"], hashes["reference"]]
    assert choose_candidates(rec, 9) == [hashes[c] for c in CONTEXTS]
    assert choose_candidates(rec, 2, ["static", "reference"]) == [hashes["static"], hashes["reference"]]
    with pytest.raises(ConfigError, match="not recorded in the slice; recorded: none, static"):
        choose_candidates(rec, 2, ["graded@0.5"])
    assert new_seed(rows, chosen) == 2
    extra = rows[rows["context"] == "feedback"].assign(seed=2)  # one candidate already has seed 2
    assert new_seed(pd.concat([rows, extra]), chosen) == 3
    assert new_seed(pd.concat([rows, extra]), [hashes["none"]]) == 2  # a seed of a non-candidate does not count
    assert best_recorded(rec) == (pytest.approx(0.255), "reference")  # mean over seeds of 0.05 + gap


def test_training_cap_is_list_scheduling_on_the_workers_and_always_trains_one():
    assert training_cap([700, 700, 700], workers=2, remaining_s=800) == 2
    assert training_cap([700, 700, 700], workers=2, remaining_s=1400) == 3  # the third goes after the first
    assert training_cap([700, 700, 700], workers=1, remaining_s=1500) == 2
    assert training_cap([700, 700], workers=2, remaining_s=100) == 1  # over budget: still one, never zero
    assert training_cap([], workers=2, remaining_s=1e9) == 0
    assert training_cap([700, 700], workers=0, remaining_s=800) == 1  # 0 = in this process: one worker


# ------------------------------------------------------------------------------ deciding


def test_decisions_are_the_search_policy_on_the_law_with_the_best_recorded_bar(tmp_path):
    _, table, _ = tiny_table(tmp_path, linear)
    fit = fit_law(points(table))
    view = lambda: LawView.of_fit(7, fit)  # noqa: E731
    bar = best_recorded(recorded_configs(pd.read_csv(table / "runs.csv")))[0]
    d = decide_all({"low": {"gap": -0.2}, "high": {"gap": 0.25}, "mid": {"gap": 0.1}}, view, bar, 0.9)
    assert d["low"].action == "prune" and d["low"].rule == "law" and d["low"].upper < bar
    assert d["high"].action == "train" and d["high"].rule == "interval" and d["high"].bar_source == "threshold"
    assert d["low"].law_version == 7
    assert d["mid"].action == "prune"  # a tight law: predicted ~+0.15, interval below the bar +0.255
    assert plan(d, cap=1) == Plan(train=["high"], capped=[], pruned=["low", "mid"])


def test_plan_orders_survivors_by_prediction_and_caps_them():
    dec = lambda a, pred: Decision(a, "x", "r", gap=0.0, predicted=pred, lower=pred - 1, upper=pred + 1)  # noqa: E731
    d = {"a": dec("train", 0.1), "b": dec("prune", 0.5), "c": dec("calibrate", 0.3), "e": dec("train", 0.2)}
    assert plan(d, cap=2) == Plan(train=["c", "e"], capped=["a"], pruned=["b"])
    assert plan(d, cap=0) == Plan(train=[], capped=["c", "e", "a"], pruned=["b"])


# ------------------------------------------------------------------------------ the summary


def test_a_law_fitted_on_noise_is_said_to_be_noise_and_a_real_one_is_not(tmp_path):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    _, noisy, _ = tiny_table(tmp_path / "a", noise)
    v = law_verdict(fit_law(points(noisy)))
    assert not v.significant
    assert v.sentence.startswith("NOT A RESULT") and "includes 0" in v.sentence
    _, clear, _ = tiny_table(tmp_path / "b", linear)
    good = law_verdict(fit_law(points(clear)))
    assert good.significant and "above 0" in good.sentence and "NOT" not in good.sentence
    _, backwards, _ = tiny_table(tmp_path / "c", lambda g, s: -linear(g, s))
    bad = law_verdict(fit_law(points(backwards)))
    assert not bad.significant and bad.sentence.startswith("NOT THE PRODUCT'S PREMISE")

    def report(verdict):
        d = {"x": Decision("train", "interval", "may win", gap=0.1, predicted=0.05, lower=-0.2, upper=0.3)}
        return summary_text(DemoReport(["provenance line"], "fit summary", verdict, (0.1, "x"), 2, d,
                                       Plan(["x"], [], []), "cap", outcome_rows(d, {"x": (0.4, "run1")}, ["x"]),
                                       savings(10.0, 100.0, 5.0, {}, Plan(["x"], [], [])), 0.9,
                                       {"name": "opsd-gap-law", "version": 1, "alias": "demo", "run_id": "lr"},
                                       "sqlite:///x.db", {"total": 1.0}))

    noisy_text, good_text = report(v), report(good)
    first = noisy_text.split("\n\n")[1]  # the line right under the title
    assert first == f"**{v.sentence}**"
    assert "cannot tell configurations apart (see the top)" in noisy_text
    assert "cannot tell" not in good_text and good_text.split("\n\n")[1] == f"**{good.sentence}**"


def test_predicted_vs_measured_says_inside_or_not():
    d = {k: Decision("train", "interval", "r", gap=0.1, predicted=0.0, lower=-0.1, upper=0.1)
         for k in ("in", "out", "edge", "todo")}
    rows = outcome_rows(d, {"in": (0.05, "r1"), "out": (0.3, "r2"), "edge": (0.1, "r3")}, ["in", "out", "edge", "todo"])
    assert [r.inside for r in rows] == [True, False, True, None]
    table = outcome_table(rows, 0.9)
    assert table[0].startswith("| configuration | gap | predicted [90% interval] | measured | inside?")
    assert "| out | +0.100 | +0.000 [-0.100, +0.100] | +0.300 | **no** | r2 |" in table
    assert "| todo | +0.100 | +0.000 [-0.100, +0.100] | not finished | - | - |" in table
    assert Outcome("x", 0, 0, -1, 1, None, None).inside is None


def test_savings_count_pruned_at_the_recorded_cost_and_never_the_capped():
    rec = {k: Candidate(k, k, (), 0.0, 0.0, cost, 90.0) for k, cost in {"t": 500.0, "p": 600.0, "c": 700.0}.items()}
    s = savings(gap_cpu_s=200.0, trained_cpu_s=510.0, val_cpu_s=95.0, recorded=rec, p=Plan(["t"], ["c"], ["p"]))
    assert s.spent == 805.0 and s.pruned_cpu_s == 600.0 and s.capped_cpu_s == 700.0
    assert s.saved_share == pytest.approx(600.0 / (805.0 + 600.0 + 700.0))
    nothing_trained = savings(200.0, 0.0, 0.0, rec, Plan([], [], ["p"]))  # the seed's validation is then unpaid
    assert nothing_trained.pruned_cpu_s == 690.0 and nothing_trained.saved_share == pytest.approx(690 / 890)


def test_the_ranked_walk_trains_best_predicted_first_stops_and_says_where_the_demo_did_not_train():
    import numpy as np

    from opsd_platform.demo.ranked import ranked_lines, ranked_walk
    from opsd_platform.errors import NotTrained
    from opsd_platform.law.holdout import fit_and_check

    g = np.linspace(-0.2, 0.3, 8)
    fit, _, check = fit_and_check(np.arange(8), g, 0.02 + g + np.resize([0.01, -0.01, 0.005], 8), 0.9)
    gaps = {"none": -0.15, "static": -0.1, "feedback": 0.05, "reference": 0.25}
    measured = {"reference": 0.3, "feedback": 0.06}
    walk = ranked_walk(gaps, (fit, check), "law v1", 0.9, lambda k: measured[k])
    assert walk.trained == ["reference"] and walk.ended == "stopped: none, static, feedback not trained"
    assert [s.kind for s in walk.steps] == ["measure", "train", "stop"]
    text = "\n".join(ranked_lines(walk, ["reference", "feedback"]))
    assert "**stop** none, static, feedback: stop: the highest 90% upper bound" in text
    assert ("Ranked: trained `reference` (in that order)" in text
            and "per-trial policy above trained `reference`, `feedback`." in text)

    def only_trained(k):
        if k not in {"reference": 0.3}:
            raise NotTrained(f"it asks for {k}, and demo.max_train=1 trainings have run")
        return 0.3

    low = ranked_walk({**gaps, "reference": 0.25}, (fit, check), "law v1", 0.9,
                      lambda k: {"reference": -0.5}.get(k) if k == "reference" else only_trained(k))
    assert low.trained == ["reference"] and low.ended == (
        "the walk ends here: it asks for feedback, and demo.max_train=1 trainings have run")


# ------------------------------------------------------------------------------ the flow, on the tiny model


def test_demo_predicts_before_it_trains_and_resumes(tmp_path, capsys):
    from opsd_platform.demo import run_demo

    spec, table, hashes = tiny_table(tmp_path, noise)  # wide intervals: the tiny model's ~0 gaps all survive
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    words = [f"demo.spec={spec}", f"demo.table={table}", "demo.slice=law", "demo.n_candidates=3", "demo.workers=0",
             "demo.max_train=1", f"tracking.uri={uri}", "world.n_val=2", "trainer.max_steps=1"]
    job = runpy.run_path(str(ROOT / "pipelines" / "demo.py"))["job"]  # what `make demo` runs
    assert run_job("demo", job, words) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'summary.md'}" in out
    result = run_demo(words)  # a re-run: resumes (below), and hands back what the script printed
    capsys.readouterr()
    rep = result.report
    assert rep.seed == 2 and list(rep.decisions) == ["none", "feedback", "reference"]
    assert re.search(r"Fitted on 10 recorded runs \(5 configurations x seeds \[0, 1\]\)", out)
    first_training = out.index("training 1 at the benchmark's settings")
    for label in rep.decisions:  # every prediction printed before anything trains
        assert out.index(f"  {label:<14} gap ") < first_training
    assert len(rep.plan.train) == 1 and len(rep.plan.train) + len(rep.plan.capped) + len(rep.plan.pruned) == 3
    assert rep.plan.capped or rep.plan.pruned
    trained = rep.outcomes[0]
    assert trained.label == rep.plan.train[0] and trained.measured is not None and trained.run_id
    # the predictions and decisions are an MLflow table on the law's run, beside demo_summary.md
    table = json.loads(Path(MlflowClient(tracking_uri=uri).download_artifacts(rep.law["run_id"], "demo_decisions.json",
                                                                            str(tmp_path))).read_text())
    rows = {r[0]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert list(rows) == list(rep.decisions) and rows[trained.label]["decision"] == "train"
    assert rows[trained.label]["measured"] == trained.measured and rows[trained.label]["run_id"] == trained.run_id
    client = MlflowClient(tracking_uri=uri)
    text = result.summary_path.read_text()
    assert result.summary_path == tmp_path / "summary.md"
    assert f"| {trained.label} | " in text and trained.run_id in text and "## Compute" in text
    # the ranked search's walk: the noise law may not decide, so it says so and trains nothing more
    assert "## The ranked search on the same candidates" in text and "the law may not decide" in text
    assert rep.savings.gap_cpu_s > 0 and rep.savings.train_cpu_s > 0

    exp = client.get_experiment_by_name("opsd")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'train'")
    assert len(runs) == 1  # the re-run trained nothing: the grid's finished run was found
    assert rep.outcomes[0].run_id == runs[0].info.run_id
    assert str(client.get_model_version_by_alias("opsd-gap-law", "demo").version) == "2"  # the re-run's own fit


def test_the_demo_ranked_walk_trains_what_the_per_trial_policy_pruned_within_max_train(tmp_path, capsys):
    """A clear law whose bar (the best recorded, +0.25) no tiny-model gap (~0) can reach: the
    per-trial policy prunes every candidate; the ranked search's policy, which compares with what
    it measured itself, trains the best predicted, then the next, until demo.max_train."""
    from opsd_platform.demo import run_demo

    off = {-0.2: 0.02, -0.1: -0.015, 0.0: 0.01, 0.1: -0.02, 0.2: 0.012}  # off an exact line: a law that may decide
    spec, table, _ = tiny_table(tmp_path, lambda g, s: linear(g, s) + off[round(g - 0.01 * s, 1)])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_demo([f"demo.spec={spec}", f"demo.table={table}", "demo.slice=law", "demo.n_candidates=3",
                       "demo.workers=0", "demo.max_train=2", f"tracking.uri={uri}", "world.n_val=2", "trainer.max_steps=1"])
    out = capsys.readouterr().out
    rep = result.report
    assert rep.plan.train == [] and len(rep.plan.pruned) == 3
    assert "== 5/5 the ranked search" in out and "the walk trained the others itself" in out
    text = result.summary_path.read_text()
    assert "demo.max_train=2 trainings have run" in text
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("opsd").experiment_id], "tags.kind = 'train'")
    assert len(runs) == 2  # the walk's two trainings, nothing else
