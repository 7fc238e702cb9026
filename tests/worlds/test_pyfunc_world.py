"""PyFuncWorld: its bank of templates, the splits, every reference passing in the real sandbox."""

from __future__ import annotations

import json

import pytest

from opsd_platform.errors import WorldError
from opsd_platform.worlds.base import World
from opsd_platform.worlds.pyfunc import PyFuncWorld
from opsd_platform.worlds.pyfunc.bank import templates
from tests.worlds.code_helpers import fenced


def test_pyfunc_bank_size_and_determinism():
    assert len(templates()) >= 20
    assert all(len(templates(d)) >= 5 for d in (1, 2, 3))
    a = PyFuncWorld(seed=3, difficulty=2, n_train=20, n_val=10)
    b = PyFuncWorld(seed=3, difficulty=2, n_train=20, n_val=10)
    assert a.name == "pyfunc" and isinstance(a, World)
    for split in ("train", "val"):
        assert [(p.id, p.prompt, p.reference, p.data) for p in a.problems(split)] == \
               [(p.id, p.prompt, p.reference, p.data) for p in b.problems(split)]
    assert len(a.problems("train")) == 20 and len(a.problems("val")) == 10
    c = PyFuncWorld(seed=4, difficulty=2, n_train=20, n_val=10)
    assert [p.prompt for p in c.problems("train")] != [p.prompt for p in a.problems("train")]
    # train does not depend on n_val
    d = PyFuncWorld(seed=3, difficulty=2, n_train=20, n_val=3)
    assert [p.prompt for p in d.problems("train")] == [p.prompt for p in a.problems("train")]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_pyfunc_train_val_disjoint_and_well_formed(difficulty):
    w = PyFuncWorld(seed=0, difficulty=difficulty)
    train, val = w.problems("train"), w.problems("val")
    assert len(train) == 64 and len(val) == 32
    key = lambda p: (p.data["template"], json.dumps(p.data["params"], sort_keys=True))  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in val}
    assert len({key(p) for p in train}) == 64
    for p in train + val:
        assert p.difficulty == difficulty
        assert 4 <= len(p.data["tests"]) <= 8
        assert f"`{p.data['func_name']}(" in p.prompt and "```python" in p.prompt and "Example" in p.prompt
        assert f"def {p.data['func_name']}(" in p.reference


def test_pyfunc_every_template_reference_passes_in_real_sandbox():
    chosen = {}
    for d in (1, 2, 3):
        w = PyFuncWorld(seed=1, difficulty=d, n_train=64, n_val=32)
        for p in w.problems("train") + w.problems("val"):
            chosen.setdefault(p.data["template"], (w, p))
    assert set(chosen) == set(templates())
    worlds = {id(w): w for w, _ in chosen.values()}
    for w in worlds.values():
        ps = [p for ww, p in chosen.values() if ww is w]
        for p, j in zip(ps, w.judge_many(ps, [fenced(p.reference) for p in ps])):
            assert j.passed, (p.data["template"], j.feedback)


def test_pyfunc_wrong_solution_gets_useful_feedback():
    w = PyFuncWorld(seed=0, difficulty=1, n_train=4, n_val=1)
    p = w.problems("train")[0]
    name = p.data["func_name"]
    j = w.judge(p, fenced(f"def {name}(*args):\n    return 'nope'\n"))
    assert not j.passed and j.reward < 1.0
    assert "Wrong answer on test 1" in j.feedback and "Expected:" in j.feedback and "Got:\n\"nope\"" in j.feedback
    j = w.judge(p, "the answer is obvious")
    assert j.reward == 0.0 and "code block" in j.feedback


def test_pyfunc_bad_config():
    with pytest.raises(WorldError):
        PyFuncWorld(difficulty=7)
    with pytest.raises(WorldError, match="distinct"):
        PyFuncWorld(difficulty=3, n_train=5000)
