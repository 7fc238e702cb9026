"""The clip pilot's rule (benchmarks/clip_pilot.py) on fixture tables."""

import math

import pandas as pd

from benchmarks.clip_pilot import choose, markdown
from benchmarks.goal_checks import recipe_label

# context -> improvement per seed (0, 1, 2), for each recipe's slice
NOISY = {"none": (0.20, -0.10, 0.25), "reference": (0.3, -0.3, 0.2), "feedback": (-0.2, 0.2, 0.0)}
DRIFTS = {"none": (0.12, 0.10, 0.14), "reference": (0.30, 0.32, 0.31), "feedback": (-0.20, -0.22, -0.21)}
STILL = {"none": (0.01, -0.01, 0.00), "reference": (0.15, 0.16, 0.17), "feedback": (-0.05, -0.04, -0.06)}
FLAT = {"none": (0.00, 0.01, -0.01), "reference": (0.01, 0.00, 0.02), "feedback": (0.00, -0.01, 0.01)}


def rows(slice_name, cells, clip, mode, world="arithmetic"):
    out = []
    for context, imps in cells.items():
        for seed, imp in enumerate(imps):
            out.append({"world": world, "slice": slice_name, "context": context, "seed": seed,
                        "graded_fraction": 0.5, "improvement": imp, "val_initial": 0.6, "val_final": 0.6 + imp,
                        "world.n_val": 64, "rollout.val_samples": 4, "loss.token_clip": clip, "loss.clip_mode": mode})
    return out


def table(entry, free, position, extra=()):
    return pd.DataFrame(rows("law-arithmetic-v2", entry, 0.05, float("nan")) + list(extra)
                        + rows("pilot-clip-arithmetic", free, float("nan"), "entry")
                        + rows("pilot-clipmode-arithmetic", position, 0.05, "position"))


def test_recipes_are_told_apart_by_clip_and_mode():
    assert recipe_label(pd.Series({"loss.token_clip": float("nan"), "loss.clip_mode": "entry"})) == "no clip"
    assert recipe_label(pd.Series({"loss.token_clip": 0.05, "loss.clip_mode": float("nan")})) == "entry 0.05"
    assert recipe_label(pd.Series({"loss.token_clip": 0.05, "loss.clip_mode": "position"})) == "position 0.05"
    assert recipe_label(pd.Series({"loss.token_clip": None, "optim.eps": 1e-5})) == "no clip, eps 1e-05"
    assert recipe_label(pd.Series({"loss.token_clip": None, "optim.eps": 1e-8})) == "no clip"


def test_the_stable_informative_recipe_with_the_widest_spread_is_chosen():
    res = choose(table(entry=NOISY, free=DRIFTS, position=STILL))["arithmetic"]
    verdict = {r["recipe"]: (r["stable"], r["informative"]) for r in res["recipes"]}
    # NOISY's none mean 0.117 would pass a bar made of its own seed std; the sampling bar (~0.049) stops it
    assert verdict == {"entry 0.05": (False, False), "no clip": (False, True), "position 0.05": (True, True)}
    assert res["chosen"] == "position 0.05"
    assert "Chosen: **position 0.05**" in markdown({"arithmetic": res})


def test_without_a_stable_recipe_the_informative_one_closest_to_no_drift_is_chosen_and_said():
    res = choose(table(entry=NOISY, free=DRIFTS, position=FLAT))["arithmetic"]
    assert {r["recipe"]: r["informative"] for r in res["recipes"]}["position 0.05"] is False
    assert res["chosen"] == "no clip" and "records this drift" in res["why"]


def test_only_the_cells_every_recipe_has_are_compared():
    graded = rows("law-arithmetic-v2", {"graded": (0.9, 0.9, 0.9)}, 0.05, float("nan"))
    extra_seed = [dict(r, seed=3) for r in rows("law-arithmetic-v2", {"none": (0.5,)}, 0.05, float("nan"))]
    res = choose(table(entry=NOISY, free=DRIFTS, position=STILL, extra=graded + extra_seed))["arithmetic"]
    assert res["cells"] == 9
    entry = next(r for r in res["recipes"] if r["recipe"] == "entry 0.05")
    assert "graded" not in entry["context_means"] and entry["none"] == "+0.200 / -0.100 / +0.250"


def test_a_world_with_one_seed_takes_the_clip_decided_elsewhere():
    one_seed = {c: v[:1] for c, v in STILL.items()}
    pyfunc = pd.DataFrame(rows("law-pyfunc-v2", one_seed, 0.05, float("nan"), world="pyfunc")
                          + rows("pilot-clip-pyfunc", one_seed, float("nan"), "entry", world="pyfunc"))
    res = choose(pd.concat([table(entry=NOISY, free=DRIFTS, position=STILL), pyfunc]))
    assert all(math.isnan(r["anova_p"]) for r in res["pyfunc"]["recipes"])
    assert res["pyfunc"]["chosen"] == "position 0.05" and "decided" in res["pyfunc"]["why"]


def test_nones_gradient_norms_are_the_median_over_seeds_per_recipe_and_step():
    from benchmarks.clip_pilot import none_gradients

    runs = table(entry=NOISY, free=DRIFTS, position=STILL)
    runs["run_id"] = [f"r{k}" for k in range(len(runs))]
    none = runs[runs["context"] == "none"]
    steps = pd.DataFrame([{"run_id": rid, "step": step, "train_grad_norm": (seed + 1) * 10.0 ** (step - 3)}
                          for rid, seed in zip(none["run_id"], none["seed"]) for step in (1, 2, 3, 4)])
    grads = none_gradients(runs, steps, choose(runs))["arithmetic"]
    assert set(grads) == {"entry 0.05", "no clip", "position 0.05"}
    assert grads["no clip"] == {1: 2e-2, 2: 2e-1, 3: 2.0}  # median of seeds 1x, 2x, 3x; step 4 is not shown
    assert none_gradients(runs, steps.drop(columns="train_grad_norm"), {}) == {}
