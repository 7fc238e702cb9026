"""bench-v2's recipe rule (benchmarks/pilot_report.py) on a fixture table."""

import pandas as pd

from benchmarks.pilot_report import choose


def table():
    rows = []
    for k, (a, b) in enumerate([(0.0, 0.02), (0.1, 0.06), (-0.1, -0.12)]):  # v1 law slice: seed std 0.02
        for seed, imp in enumerate((a, b)):
            rows.append({"world": "arithmetic", "grid": "bench-v1", "family": "smollm2", "slice": "law-arithmetic",
                         "config": f"c{k}", "seed": seed, "context": "x", "improvement": imp, "val_initial": 0.6})
    pilot = [(1e-5, "none", -0.09), (1e-5, "reference", 0.30), (1e-5, "feedback", -0.20),  # drifts: not stable
             (3e-6, "none", 0.01), (3e-6, "reference", 0.20), (3e-6, "feedback", -0.05),    # stable, spread 0.25
             (1e-6, "none", 0.00), (1e-6, "reference", 0.05), (1e-6, "feedback", 0.00)]     # stable, spread 0.05
    for lr, context, imp in pilot:
        rows.append({"world": "arithmetic", "grid": "bench-v2", "family": "smollm2", "slice": "pilot-arithmetic",
                     "config": f"{lr}{context}", "seed": 0, "context": context, "improvement": imp, "val_initial": 0.6,
                     "optim.lr": lr, "teacher.ema_rate": 0.01, "loss.token_clip": 0.05})
    for lr, imp in ((1e-5, 0.1), (3e-6, 0.2)):
        rows.append({"world": "arithmetic", "grid": "bench-v2", "family": "smollm2", "slice": "pilot-grpo-arithmetic",
                     "config": f"g{lr}", "seed": 0, "context": "none", "improvement": imp, "val_initial": 0.6,
                     "optim.lr": lr})
    return pd.DataFrame(rows)


def test_the_stable_recipe_where_contexts_spread_most_is_chosen():
    res = choose(table())["arithmetic"]
    assert abs(res["seed_std"] - 0.02) < 1e-9
    verdict = {r["optim.lr"]: r["stable"] for r in res["recipes"]}
    assert verdict == {1e-5: False, 3e-6: True, 1e-6: True}  # |none| 0.09 > 2 x 0.02
    assert res["chosen"] == {"optim.lr": 3e-6, "teacher.ema_rate": 0.01, "loss.token_clip": 0.05}
    assert res["grpo_chosen"]["optim.lr"] == 3e-6


def test_the_chosen_recipes_are_written_into_the_v2_slices_of_their_world(tmp_path):
    from benchmarks.pilot_report import apply

    grid = tmp_path / "g.yaml"
    grid.write_text("""slices:
  - name: pilot-arithmetic
    overrides: [world=arithmetic, optim.lr=1e-5]
  - name: law-arithmetic-v2
    # a comment that stays
    overrides: [world=arithmetic, rollout.max_new_tokens=96,
                optim.lr=1e-5, teacher.ema_rate=0.05, loss.token_clip=0.05]
  - name: grpo-arithmetic-v2
    overrides: [world=arithmetic, algorithm=grpo, optim.lr=1e-5]
  - name: law-pyfunc-v2
    overrides: [world=pyfunc, optim.lr=1e-5]
""")
    said = apply(choose(table()), grid)
    text = grid.read_text()
    assert "optim.lr=1e-5]" in text.splitlines()[2]  # the pilot itself is untouched
    assert "optim.lr=3e-06, teacher.ema_rate=0.01, loss.token_clip=0.05]" in text and "a comment that stays" in text
    assert "algorithm=grpo, optim.lr=3e-06]" in text
    assert "world=pyfunc, optim.lr=1e-5]" in text  # no pilot for that world: left as it is
    assert len(said) == 2
