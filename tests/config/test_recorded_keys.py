"""Recorded points keep their keys: config_hash and the gap's measurement keys of configurations the
benchmark recorded (benchmarks/data/runs.csv), recomputed from the grid files that made them. A grid
is recording with the current code: a refactor of the hash (config/keys.py) or of the measurement
keys must leave every recorded point's keys as they are, or its runs and measurements are orphaned."""

from unittest import mock

import pandas as pd
import pytest

from opsd_platform.config import config_hash
from opsd_platform.config.compose import train_config
from opsd_platform.gap import measurements
from tests.helpers import ROOT

REPO = ROOT
RUNS = REPO / "benchmarks" / "data" / "runs.csv"
# Both recorded grids ran 1 torch thread per worker (grid.threads=1): a measurement key holds it.
THREADS = 1
# bench-v1's first law-arithmetic points (none, peer_hints; both seeds) measured their gap before the
# measurement keys left world.grading out where it changes nothing (config.world_fields): their gap
# keys were orphaned then, on purpose, and no current code reproduces them. Their config_hash is checked.
OLDER_GAP_KEYS = {"law-arithmetic/ee712fab32/seed0", "law-arithmetic/12391dea0c/seed0",
                  "law-arithmetic/ee712fab32/seed1", "law-arithmetic/12391dea0c/seed1"}

# (grid file in conf/grid, slice, the configuration as the file lists it, seed): every slice of both
# recorded grids, OPSD and GRPO, arithmetic and pyfunc, both model families, the graded context, forms 1 and 2.
REPRESENTATIVE = [
    ("benchmark", "law-arithmetic", ["context=reference"], 0),
    ("benchmark", "law-arithmetic", ["context=graded", "graded_fraction=0.25"], 1),
    ("benchmark", "grpo-arithmetic", ["algorithm=grpo"], 0),
    ("benchmark", "law-pyfunc", ["context=feedback"], 0),
    ("benchmark", "law-pyfunc", ["context=graded", "graded_fraction=0.75"], 1),
    ("benchmark", "grpo-pyfunc", ["algorithm=grpo"], 1),
    ("benchmark", "law-gemma3-arithmetic", ["context=peer_solution"], 0),
    ("bench-v2", "pilot-arithmetic", ["context=reference", "optim.lr=1e-5"], 0),
    ("bench-v2", "pilot-grpo-arithmetic", ["optim.lr=3e-6"], 0),
    ("bench-v2", "pilot-pyfunc", ["context=none", "optim.lr=1e-5"], 0),
    ("bench-v2", "law-arithmetic-v2", ["context=graded", "graded_fraction=0.4"], 0),
    ("bench-v2", "law-arithmetic-v2", ["context=shuffled_reference"], 0),
]


@pytest.fixture(scope="module")
def recorded() -> pd.DataFrame:
    return pd.read_csv(RUNS).set_index("point")


def keys_of(cfg) -> dict[str, str]:
    """The keys runs.csv records for a point: its config_hash and the gap's two measurement keys."""
    with mock.patch.object(measurements, "_threads", return_value=THREADS):
        return {"config": config_hash(cfg), "gap_key": measurements.key_of(measurements.teacher_key_fields(cfg)),
                "gap_student_key": measurements.key_of(measurements.student_key_fields(cfg))}


def check_point(recorded: pd.DataFrame, grid_slice: str, seed: int, cfg) -> int:
    """Assert that the point `cfg` makes is recorded with the keys it has today; the keys checked."""
    keys = keys_of(cfg)
    point = f"{grid_slice}/{keys['config']}/seed{seed}"
    assert point in recorded.index, f"{point}: no such recorded point (its config_hash changed?)"
    row = recorded.loc[point]
    assert (row["context"], row["seed"]) == (cfg.context, seed), point
    checked = ["config"] if point in OLDER_GAP_KEYS else ["config", "gap_key", "gap_student_key"]
    assert {k: keys[k] for k in checked} == {k: row[k] for k in checked}, point
    return len(checked)


@pytest.mark.parametrize("grid,grid_slice,conf,seed", REPRESENTATIVE)
def test_a_recorded_point_keeps_its_config_hash_and_gap_keys(recorded, grid, grid_slice, conf, seed):
    from opsd_platform.search.grid import load_spec, point_overrides

    spec = load_spec(grid)
    s = next(s for s in spec["slices"] if s["name"] == grid_slice)
    check_point(recorded, grid_slice, seed, train_config(list(point_overrides(spec, s, conf, seed))))


def test_a_drawn_search_point_keeps_its_keys(recorded):
    """A slice drawn from a search space (Optuna's RandomSampler): the draw and the hash both pinned."""
    from opsd_platform.search.grid import draw_configs, load_spec, point_overrides

    spec = load_spec("benchmark")
    s = next(s for s in spec["slices"] if s["name"] == "search-arithmetic")
    base = [*spec["base"], *s["overrides"]]
    conf = draw_configs(s["draw"]["space"], int(s["draw"]["n"]), int(s["draw"]["seed"]), base)[0]
    check_point(recorded, "search-arithmetic", 0, train_config(list(point_overrides(spec, s, conf, 0))))


@pytest.mark.slow
def test_every_recorded_point_keeps_its_config_hash_and_gap_keys(recorded):
    """All of runs.csv (115 points of bench-v1 and bench-v2 when written): each is a point of today's
    grid files, with the keys it was recorded under."""
    from opsd_platform.search.grid import load_spec, points

    seen = set()
    for grid in ("benchmark", "bench-v2"):
        for p in points(load_spec(grid)):
            if p.key in recorded.index:
                check_point(recorded, p.slice, p.seed, train_config(list(p.overrides)))
                seen.add(p.key)
    assert seen == set(recorded.index), sorted(set(recorded.index) - seen)[:5]
