"""The ranked search (search/ranked.py): its policy on the replay's fixture table and on synthetic
laws, the replay's ranked arms, and the live command's bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.ranked import RankedReplay, prior_of
from benchmarks.replay import Replay, replay_settings
from benchmarks.replay_table import load_table
from opsd_platform import law
from opsd_platform.law import registry
from opsd_platform.law.holdout import fit_and_check
from opsd_platform.search.ranked import CURVE, RANKED, STOP, TRAIN, RankedPolicy, RankedSettings, chosen_contexts, drive
from tests.helpers import FIXTURES

FIXTURE = FIXTURES / "replay_fixture"


@pytest.fixture(scope="module")
def contexts():
    """The fixture's law slice searched: 5 contexts, one configuration each (what the law ranks)."""
    return load_table(FIXTURE, search_slices=("law",), law_slices=("search",))


def prior_from(gaps, improvements):
    """(LawFit, LawCheck) of an OLS law on one point per configuration (the numpy refit path)."""
    gaps = np.asarray(gaps, float)
    fit, _, check = fit_and_check(np.arange(gaps.size), gaps, np.asarray(improvements, float), 0.9)
    return fit, check


def test_a_law_with_a_slope_interval_containing_zero_spends_exactly_the_curve_arm(contexts):
    rng = np.random.default_rng(5)
    gaps = rng.uniform(0, 0.4, 12)
    flat = prior_from(gaps, rng.normal(0, 0.05, 12))
    assert not flat[1].usable and "contains 0" in flat[1].reason
    s = replay_settings()
    for order in range(4):
        ranked = RankedReplay(contexts, "ranked_prior", order, s, prior=flat)
        result = ranked.run()
        halving = Replay(contexts, "successive_halving", order, s).run()
        assert result.cpu == halving.cpu and result.tokens == halving.tokens and result.gap_cpu == 0
        assert [t.run_id for t in result.records] == [t.run_id for t in halving.records]
        assert ranked.policy.notes[0].startswith("prior (the table's law slices): the law may not decide: the slope's")
        assert all(step.rule == CURVE for step in ranked.policy.steps[:-1])


def test_without_a_prior_startup_trains_under_the_curve_pruner_and_costs_the_curve_arm_plus_gaps(contexts):
    """No law may decide yet: each startup candidate pays its gap, then trains as the curve-based
    arm would (never fully when the curve pruner would stop it)."""
    s, compared = replay_settings(), 0
    for order in range(3):
        ranked = RankedReplay(contexts, "ranked", order, s)
        result = ranked.run()
        assert ranked.policy.notes[0].startswith("no prior law: the first candidates train under the curve-based")
        startup = [st for st in ranked.policy.steps if st.kind == TRAIN and st.rule == "startup"]
        assert startup and all(st.curve for st in startup)
        if all(st.rule in ("startup", "curve") for st in ranked.policy.steps if st.kind == TRAIN):
            halving = Replay(contexts, "successive_halving", order, s).run()  # no law ever decided
            assert result.cpu - result.gap_cpu == pytest.approx(halving.cpu)
            compared += 1
    assert compared  # the fixture's 5 contexts are too few for an own fit: every order compares


def test_a_usable_prior_ranks_measures_every_gap_once_and_stops(contexts):
    s = replay_settings()
    prior = prior_of(load_table(FIXTURE), s)  # the fixture's own law slice: a law that fits these contexts
    assert prior[1].usable
    ranked = RankedReplay(contexts, "ranked_prior", 0, s, prior=prior)
    result = ranked.run()
    steps = ranked.policy.steps
    assert steps[0].kind == "measure" and len(steps[0].keys) == len(contexts.configs)
    trained = [st for st in steps if st.kind == TRAIN]
    assert trained and all(st.rule == RANKED for st in trained)
    predicted = [st.predicted for st in trained]
    assert predicted == sorted(predicted, reverse=True)  # the most promising first
    assert steps[-1].kind in (STOP, "done")
    none = Replay(contexts, "none", 0, s).run()
    assert result.cpu < none.cpu + result.gap_cpu and result.incumbent in contexts.best_configs()


def test_the_replay_arm_decides_as_a_fresh_policy_driven_over_the_same_trials(contexts):
    """One policy, two callers: a policy driven by plain callbacks over the recorded runs (as the
    live search drives it over trials) takes the replay arm's decisions, step for step."""
    s = replay_settings()
    prior = prior_of(load_table(FIXTURE), s)
    for order in range(3):
        replay = RankedReplay(contexts, "ranked_prior", order, s, prior=prior)
        replay.run()
        runs = replay.runs
        policy = RankedPolicy([(c, c) for c in runs], *prior, "prior (the table's law slices)",
                              RankedSettings(level=s.search.level))
        drive(policy, lambda key, step: runs[key].gap, lambda key, step: (runs[key].improvement, True))
        assert ([(st.kind, st.keys, st.reason) for st in policy.steps]
                == [(st.kind, st.keys, st.reason) for st in replay.policy.steps])


def test_a_prior_that_mispredicts_its_first_trials_is_dropped():
    gaps = np.linspace(0, 0.5, 10)
    low = prior_from(gaps, -1.0 + gaps + np.resize([0.02, -0.02, 0.01], 10))  # predicts a loss of ~1 everywhere
    assert low[1].usable
    cands = [(f"c{i}", f"c{i}") for i in range(8)]
    truth = {k: 0.1 + 0.5 * i / 8 for i, (k, _) in enumerate(cands)}  # improvements far above its intervals
    policy = RankedPolicy(cands, *low, "prior v1", RankedSettings())
    drive(policy, lambda key, step: 0.05 * int(key[1:]), lambda key, step: (truth[key], True))
    dropped = [n for n in policy.notes if "dropped" in n]
    assert dropped and dropped[0].startswith("prior v1 dropped: c7 improved +0.537, above its 99% interval")
    laws = [st.law for st in policy.steps if st.kind == TRAIN]
    assert laws[0] == "prior v1" and "prior v1" not in laws[1:]  # after the drop, never again


def test_the_stopping_rule_false_stop_rate_is_at_most_its_nominal_level():
    """Synthetic correct laws: a stopped candidate whose fresh improvement beats the incumbent is a
    false stop; over many searches their share of all candidates is <= (1 - level) / 2."""
    rng = np.random.default_rng(0)
    level, sigma, false_stops, candidates, stops = 0.9, 0.05, 0, 0, 0
    for _ in range(300):
        a, b = rng.uniform(-0.2, 0.1), rng.uniform(0.5, 2.0)
        gaps = rng.uniform(-0.1, 0.5, 12)
        prior = prior_from(gaps, a + b * gaps + rng.normal(0, sigma, 12))
        if not prior[1].usable:
            continue
        new = rng.uniform(-0.1, 0.5, 8)
        outcome = {f"c{i}": a + b * g + rng.normal(0, sigma) for i, g in enumerate(new)}
        cands = [(f"c{i}", f"c{i}") for i in range(8)]
        policy = RankedPolicy(cands, *prior, "prior", RankedSettings(level=level))
        drive(policy, lambda key, step: new[int(key[1:])], lambda key, step: (outcome[key], True))
        stopped = [st for st in policy.steps if st.kind == STOP]
        candidates += len(cands)
        if stopped:
            stops += len(stopped[0].keys)
            false_stops += sum(outcome[k] > stopped[0].bar for k in stopped[0].keys)
    assert stops > 200  # the rule does stop
    assert false_stops / candidates <= (1 - level) / 2


def test_candidates_that_share_a_context_go_to_the_curve_pruner():
    fit, check = prior_from(np.linspace(0, 0.5, 8), np.linspace(0, 0.5, 8) + np.resize([0.02, -0.02, 0.01], 8))
    policy = RankedPolicy([("a-lr1", "ref"), ("a-lr2", "ref"), ("b", "none")], fit, check)
    step = policy.next()
    assert step.kind == TRAIN and step.curve and "differ in settings it was not fitted across" in step.reason


# ============================================================================== the live command's bad input


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store whose registry holds a law that may decide, fitted on world pyfunc."""
    tmp = tmp_path_factory.mktemp("ranked")
    uri = f"sqlite:///{tmp}/mlflow.db"
    rng = np.random.default_rng(1)
    gaps = rng.uniform(0, 0.5, 8)
    pts = pd.DataFrame({"config": [f"tiny/pyfunc/c{i}" for i in range(8)], "seed": 0, "gap": gaps,
                        "improvement": gaps + rng.normal(0, 0.02, 8)})
    assert registry.register_law(law.fit_law(pts), tracking_uri=uri, holdout=law.leave_one_out(pts))["aliases"] == ["champion"]
    return tmp, uri


@pytest.mark.parametrize("prior, message", [
    ("models:/nope@champion", "search.prior_law=models:/nope@champion: no registered model 'nope'; registered models: opsd-gap-law"),
    ("models:/opsd-gap-law@gold", "search.prior_law=models:/opsd-gap-law@gold: registered model 'opsd-gap-law' has no alias 'gold'"),
    ("models:/opsd-gap-law@champion", "search.prior_law=models:/opsd-gap-law@champion (v1) was fitted on world pyfunc; "
                                      "this search is on arithmetic (search.prior_law_force=true to use it anyway)"),
])
def test_a_prior_that_cannot_be_used_is_one_line_and_no_trial(store, prior, message, capsys):
    from opsd_platform.cli import main

    tmp, uri = store
    code = main(["search", "model=tiny", "search.strategy=ranked", "search.space=contexts", f"search.prior_law={prior}",
                 f"tracking.uri={uri}", "search.study=bad"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"opsd search: {message}"), err
    assert not (tmp / "optuna.db").exists()  # no study, no trial


def test_prior_law_settings_are_checked():
    from opsd_platform.config import ConfigError
    from opsd_platform.search.settings import SearchConfig

    with pytest.raises(ConfigError, match="search.prior_law: needs search.strategy=ranked"):
        SearchConfig(prior_law="models:/opsd-gap-law@champion")
    with pytest.raises(ConfigError, match="search.prior_law: must be models:/<name>@<alias>"):
        SearchConfig(strategy="ranked", prior_law="opsd-gap-law")
    with pytest.raises(ConfigError, match="search.strategy: unknown value 'best'"):
        SearchConfig(strategy="best")


# ============================================================================== the live ranked search


def test_a_live_ranked_search_measures_ranks_trains_searches_inside_and_agrees_with_its_replay(store, tmp_path, capsys):
    """The tiny model, 3 contexts and a learning rate, a prior fitted on another world (forced):
    phase 1 measures every gap (trials stopped after their gap), phase 2 trains the contexts at the
    base learning rate in the law's order until the stopping rule; the same policy driven over the
    measured gaps and improvements takes the same decisions. Then the trials left of n_trials
    sample the learning rate inside the best context, each under the study's curve pruner."""
    import json

    import optuna
    from mlflow.tracking import MlflowClient

    from opsd_platform.cli import main
    from opsd_platform.search.ranked_run import load_prior
    from opsd_platform.search.settings import SearchConfig
    from tests.helpers import FAST

    _, uri = store
    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  context: {type: categorical, choices: [none, feedback, reference]}\n"
                     "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n")
    args = ["search", *FAST, f"tracking.uri={uri}", f"search.storage={storage}", f"search.space={space}",
            "search.strategy=ranked", "search.prior_law=models:/opsd-gap-law@champion", "search.prior_law_force=true",
            "search.study=ranked", "search.n_trials=8", f"search.out_dir={tmp_path}/report"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prior opsd-gap-law v1 (@champion) decides (may decide: 8 configurations" in out
    trials = optuna.load_study(study_name="ranked", storage=storage).trials
    phases = [t.user_attrs["ranked.phase"] for t in trials]
    n_train = phases.count("train")
    assert phases == ["gap"] * 3 + ["train"] * n_train + ["inner"] * (8 - 3 - n_train) and n_train >= 1 and len(trials) == 8
    gaps = {t.params["context"]: t.user_attrs["gap"] for t in trials[:3]}
    ranked = trials[3:3 + n_train]
    trained = {t.params["context"]: t.value for t in ranked}
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in trials[:3]) and all(v is not None for v in trained.values())
    assert all(t.params.keys() == {"context"} and t.user_attrs["overrides"] == [f"context={t.params['context']}"]
               for t in trials[:3 + n_train])  # the ranked phase: the learning rate at its base value
    parent = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("opsd").experiment_id], "tags.kind = 'search'")[0]
    recorded = MlflowClient(tracking_uri=uri).download_artifacts(parent.info.run_id, "ranked/decisions.json", str(tmp_path))
    doc = json.loads(Path(recorded).read_text())
    prior = load_prior(SearchConfig(strategy="ranked", prior_law="models:/opsd-gap-law@champion", prior_law_force=True),
                       uri, "arithmetic")
    replay = RankedPolicy([(c, c) for c in ["none", "feedback", "reference"]], *prior)
    drive(replay, lambda key, step: gaps[key], lambda key, step: (trained[key], True))
    assert [(d["kind"], d["keys"], d["reason"]) for d in doc["decisions"]] == [(s.kind, list(s.keys), s.reason) for s in replay.steps]
    # the inner phase: inside the incumbent, the learning rate sampled, every step reported to the curve pruner
    best = max(ranked, key=lambda t: t.value).params["context"]
    assert chosen_contexts(replay, 1) == [best]
    inner = trials[3 + n_train:]
    assert all(t.params["context"] == best and "optim.lr" in t.params and t.user_attrs["ranked.curve"] for t in inner)
    assert len({t.params["optim.lr"] for t in inner}) == len(inner)
    assert all(t.intermediate_values for t in inner)  # what the curve pruner judged, step by step
    assert [r["trial"] for r in doc["inner"]] == [t.number for t in inner]
    assert f"inner phase: {len(inner)} trials sample optim.lr inside {best}" in out


def test_the_ranked_space_needs_a_context_key_and_the_curve_pruner_is_checked(tmp_path):
    from opsd_platform.config import ConfigError
    from opsd_platform.search.ranked_run import ranked_space
    from opsd_platform.search.settings import SearchConfig
    from opsd_platform.search.study import curve_pruner

    space = tmp_path / "lr.yaml"
    space.write_text("space:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n")
    with pytest.raises(ConfigError, match="has no unconditional categorical key 'context' \\(keys: optim.lr\\)"):
        ranked_space(SearchConfig(strategy="ranked", space=str(space)))
    assert ranked_space(SearchConfig(strategy="ranked", space="demo")) == (
        ["none", "static", "feedback", "peer_hints", "peer_solution", "peer_or_feedback", "reference"],
        ["optim.lr", "loss.divergence", "loss.top_k", "teacher.kind"])
    with pytest.raises(ConfigError, match="search.curve_pruner: unknown value 'median'"):
        SearchConfig(strategy="ranked", curve_pruner="median")
    assert type(curve_pruner("hyperband", 20)).__name__ == "HyperbandPruner"
