"""Tests for the two synthetic worlds: arithmetic and hidden_rule."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from decimal import Decimal

import pytest

from opsd_platform.errors import WorldError
from opsd_platform.worlds.arithmetic import (
    ArithmeticWorld,
    evaluate,
    extract_answer,
    reference_text,
    tree_from_json,
)
from opsd_platform.worlds.base import Problem, World
from opsd_platform.worlds.hidden_rule import HiddenRuleWorld, extract_output

WORLDS = (ArithmeticWorld, HiddenRuleWorld)


def _snapshot(world: ArithmeticWorld | HiddenRuleWorld) -> list[tuple]:
    return [(p.id, p.prompt, p.reference, p.difficulty, json.dumps(p.data, sort_keys=True))
            for split in ("train", "val") for p in world.problems(split)]


# --------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("cls", WORLDS)
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_deterministic_by_seed(cls, difficulty):
    a = cls(seed=7, difficulty=difficulty, n_train=20, n_val=10)
    b = cls(seed=7, difficulty=difficulty, n_train=20, n_val=10)
    c = cls(seed=8, difficulty=difficulty, n_train=20, n_val=10)
    assert _snapshot(a) == _snapshot(b)
    assert _snapshot(a) != _snapshot(c)
    assert len(a.problems("train")) == 20 and len(a.problems("val")) == 10


@pytest.mark.parametrize("cls", WORLDS)
def test_val_set_does_not_depend_on_n_train(cls):
    small = cls(seed=3, difficulty=2, n_train=5, n_val=12)
    large = cls(seed=3, difficulty=2, n_train=50, n_val=12)
    assert _snapshot_split(small, "val") == _snapshot_split(large, "val")


def _snapshot_split(world, split: str) -> list[tuple[str, str]]:
    return [(p.id, p.prompt) for p in world.problems(split)]


@pytest.mark.parametrize("cls", WORLDS)
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_train_val_disjoint_and_ids_unique(cls, difficulty):
    world = cls(seed=0, difficulty=difficulty)
    train, val = world.problems("train"), world.problems("val")
    assert len(train) == 64 and len(val) == 32
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    if cls is ArithmeticWorld:
        keys = [p.data["expression"] for p in train + val]
    else:
        keys = [(p.data["rule"], p.data["kind"], p.data["input"]) for p in train + val]
    assert len(set(keys)) == len(keys)
    ids = [p.id for p in train + val]
    assert len(set(ids)) == len(ids)
    assert all(p.id.split("-")[1] == "train" for p in train) and all(p.id.split("-")[1] == "val" for p in val)
    assert all(p.difficulty == difficulty for p in train + val)


@pytest.mark.parametrize("cls", WORLDS)
def test_protocol_splits_and_judge_many(cls):
    world = cls(seed=1, n_train=4, n_val=2)
    assert isinstance(world, World)
    with pytest.raises(WorldError, match="unknown split"):
        world.problems("test")
    problems = world.problems("train")
    judgements = world.judge_many(problems, [p.reference for p in problems[:2]] + ["", "nonsense"])
    assert [j.passed for j in judgements] == [True, True, False, False]
    assert [j.reward for j in judgements] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(WorldError, match="2 problems and 1 responses"):
        world.judge_many(problems[:2], ["x"])
    # problems() hands out a copy; the world's own list is not exposed
    problems.clear()
    assert len(world.problems("train")) == 4


@pytest.mark.parametrize("cls, bad", [(ArithmeticWorld, 0), (ArithmeticWorld, 6), (HiddenRuleWorld, 0),
                                      (HiddenRuleWorld, 4), (ArithmeticWorld, "2"), (HiddenRuleWorld, 1.5)])
def test_invalid_difficulty(cls, bad):
    with pytest.raises(ValueError, match=r"from 1 to \d"):
        cls(difficulty=bad)


@pytest.mark.parametrize("cls", WORLDS)
def test_invalid_sizes(cls):
    with pytest.raises(ValueError, match="n_train"):
        cls(n_train=-1)


@pytest.mark.parametrize("cls", WORLDS)
def test_data_is_json_friendly(cls):
    for difficulty in (1, 2, 3):
        for p in cls(seed=2, difficulty=difficulty, n_train=8, n_val=4).problems("val"):
            assert json.loads(json.dumps(p.data)) == p.data


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_difficulty_grading():
    mean_size, ops = [], []
    for difficulty in (1, 2, 3, 4, 5):
        problems = ArithmeticWorld(seed=0, difficulty=difficulty, n_train=60, n_val=30).problems("train")
        answers = [abs(p.data["answer"]) for p in problems]
        mean_size.append(statistics.mean(answers))
        ops.append(statistics.mean(p.data["expression"].count(" ") / 2 for p in problems))
        for p in problems:
            assert evaluate(tree_from_json(p.data["tree"])) == p.data["answer"]
        if difficulty == 1:
            assert all(p.data["tree"][0] == "+" and max(p.data["tree"][1:]) <= 9 for p in problems)
        if difficulty == 2:
            assert all(10 <= x <= 99 for p in problems for x in p.data["tree"][1:])
        if difficulty == 4:
            assert all("(" in p.data["expression"] for p in problems)
        if difficulty == 5:
            assert any(p.data["answer"] < 0 for p in problems)
    assert mean_size == sorted(mean_size) and len(set(mean_size)) == 5
    assert ops == sorted(ops) and ops[0] == 1 and ops[-1] >= 2


def test_arithmetic_level1_has_limited_space():
    ArithmeticWorld(difficulty=1, n_train=70, n_val=30)  # all 100 single-digit sums
    with pytest.raises(WorldError, match="only 100 distinct"):
        ArithmeticWorld(difficulty=1, n_train=90, n_val=20)


def test_arithmetic_prompt_and_reference_format():
    world = ArithmeticWorld(seed=0, difficulty=2)
    for p in world.problems("train") + world.problems("val"):
        assert p.prompt == f"What is {p.data['expression']}? Give the final answer as a number at the end."
        assert p.reference.endswith(f"The answer is {p.data['answer']}.")
        assert p.reference.startswith(f"{p.data['expression']} = {p.data['answer']}")
    # worked explanations, column by column
    assert reference_text(tree_from_json(["+", 37, 48])) == (
        "37 + 48 = 85 (7+8=15, write 5 carry 1; 3+4+1=8). The answer is 85."
    )
    assert reference_text(tree_from_json(["-", 73, 48])) == (
        "73 - 48 = 25 (13-8=5, borrow 1; 7-1-4=2). The answer is 25."
    )
    assert reference_text(tree_from_json(["*", ["+", 12, 5], 3])) == (
        "Step 1: 12 + 5 = 17 (2+5=7; bring down 1). Step 2: 17 * 3 = 51 (10*3=30, 7*3=21; 30+21=51). "
        "So (12 + 5) * 3 = 51. The answer is 51."
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7 + 5 = 12. The answer is 12.", 12),
        ("7 + 5 = 12", 12),
        ("The answer is 12", 12),
        ("The answer is: **12**", 12),
        ("Answer: 85", 85),
        ("**Final Answer:** 1,234.", 1234),
        ("So the final answer is \\boxed{85}.", 85),
        ("\\boxed{-25}", -25),
        ("48 - 73 = -25", -25),
        ("The answer is −25.", -25),  # unicode minus sign
        ("The result is 3,200", 3200),
        ("The answer is 7 + 5 = 12.", 12),  # expression after the marker: take its value
        ("The answer is 12 because 7 + 4 = 11 plus one.", 12),
        ("The answer is 12. Wait, I made a mistake. 7 + 6 = 13. The answer is 13.", 13),
        ("The answer is:\n\n42", 42),
        ("37 + 48 = 85\nI hope this helps with step 2!", 85),  # line ending "= X" beats a later number
        ("To find the answer, we add 7 and 5 and get 12.", 12),  # "answer," is not a marker
        ("First, 7 + 8 = 15, write 5 carry 1. Then 3 + 4 + 1 = 8. So we get 85.", 85),
        ("The answer is 12.0", 12),
        ("Sure! Let me help you with that.", None),
        ("", None),
    ],
)
def test_arithmetic_extraction(text, expected):
    got = extract_answer(text)
    assert got == (None if expected is None else Decimal(expected))


def test_arithmetic_judge_realistic_outputs():
    world = ArithmeticWorld(seed=0, difficulty=2)
    p = world.problems("train")[0]
    a = p.data["answer"]
    expr = p.data["expression"]
    for response in (f"{expr} = {a}. The answer is {a}.", f"Answer: {a}", f"\\boxed{{{a}}}", f"{a}.",
                     f"Sure! {expr} equals {a:,}."):
        j = world.judge(p, response)
        assert (j.reward, j.passed, j.feedback) == (1.0, True, "Correct."), response
    j = world.judge(p, "I don't know.")
    assert (j.reward, j.passed) == (0.0, False) and j.feedback.startswith("No number found")
    j = world.judge(p, f"The answer is {a + 1}.")
    assert j.reward == 0.0 and "too high" in j.feedback
    j = world.judge(p, "The answer is 12.5")
    assert j.reward == 0.0 and "whole number" in j.feedback


def test_arithmetic_hints():
    world = ArithmeticWorld(seed=0, difficulty=2)

    def make(expression: str) -> Problem:
        base = world.problems("train")[0]
        tree = ["+" if "+" in expression else "-", *map(int, expression.replace("+", "-").split(" - "))]
        return replace(base, data={"answer": evaluate(tree_from_json(tree)), "expression": expression, "tree": tree})

    add = make("37 + 48")  # 85; the ones column carries into the tens
    assert "carry into the tens place" in world.judge(add, "75").feedback
    assert "too low" in world.judge(add, "75").feedback
    assert "ones digit is wrong" in world.judge(add, "86").feedback
    assert "subtraction" not in world.judge(add, "86").feedback
    assert "an addition, not a subtraction" in world.judge(add, "-11").feedback
    sub = make("73 - 48")  # 25; the tens lend to the ones
    assert "borrow from the tens place" in world.judge(sub, "35").feedback
    assert "sign of your answer is wrong" in world.judge(sub, "-25").feedback
    assert "too many digits" in world.judge(sub, "250").feedback

    nested = ArithmeticWorld(seed=0, difficulty=4).problems("train")[0]
    tree = tree_from_json(nested.data["tree"])
    inner = tree.left if not isinstance(tree.left, int) else tree.right
    fb = ArithmeticWorld(difficulty=4).judge(nested, f"The answer is {evaluate(inner)}.").feedback
    assert "intermediate step" in fb
    flat = eval(nested.data["expression"].replace("(", "").replace(")", ""))  # noqa: S307 - our own digits
    if flat != nested.data["answer"]:
        assert "parentheses first" in ArithmeticWorld(difficulty=4).judge(nested, str(flat)).feedback
    # without a tree (e.g. a problem rebuilt from a bare answer) the judge still works
    bare = replace(nested, data={"answer": nested.data["answer"]})
    assert world.judge(bare, str(nested.data["answer"])).passed
    assert "too" in world.judge(bare, str(nested.data["answer"] + 3)).feedback


def _wrong_numbers(problem: Problem) -> list[int]:
    a = problem.data["answer"]
    tree = tree_from_json(problem.data["tree"])
    inner = [evaluate(n) for n in (tree.left, tree.right) if not isinstance(n, int)]
    candidates = [a + 1, a - 1, a + 10, a - 10, a + 100, a - 100, -a, 0, 1, a * 10, a // 10, a + 9, 10 * a + 1,
                  int(str(abs(a)) + "5"), int("1" + str(abs(a))), *inner]
    return [c for c in candidates if c != a]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arithmetic_feedback_never_contains_the_answer(difficulty):
    world = ArithmeticWorld(seed=11, difficulty=difficulty)
    for p in world.problems("train") + world.problems("val"):
        answer = str(abs(p.data["answer"]))
        for wrong in _wrong_numbers(p):
            for response in (f"The answer is {wrong}.", f"{p.data['expression']} = {wrong}", f"{wrong:,}"):
                j = world.judge(p, response)
                assert not j.passed and j.reward == 0.0
                assert answer not in j.feedback, (p.data["expression"], response, j.feedback)
        assert answer not in world.judge(p, "no idea").feedback


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arithmetic_reference_contains_answer_and_judges_correct(difficulty):
    world = ArithmeticWorld(seed=5, difficulty=difficulty)
    for p in world.problems("train") + world.problems("val"):
        assert str(p.data["answer"]) in p.reference
        assert world.judge(p, p.reference).passed
        assert world.judge(p, f"The answer is {p.data['answer']}.").reward == 1.0


# --------------------------------------------------------------------------- hidden rule

LEVEL1 = {"reverse", "uppercase", "drop_vowels", "sort_letters", "double_chars", "sort_ascending", "double_numbers"}
LEVEL2_PREFIXES = ("rotate_left_", "swap_pairs", "every_second", "sort_descending", "add_", "shift_letters_")


def test_hidden_rule_difficulty_grading():
    by_level = {d: HiddenRuleWorld(seed=0, difficulty=d).problems("train") for d in (1, 2, 3)}
    assert {p.data["rule"] for p in by_level[1]} <= LEVEL1
    assert all(p.data["rule"].startswith(LEVEL2_PREFIXES) for p in by_level[2])
    for p in by_level[3]:
        first, second = p.data["rule"].split("+")
        assert first != second
        assert len(p.data["partial_outputs"]) == 2 and p.data["output"] not in p.data["partial_outputs"]
        assert p.data["description"].startswith("first ")
    for level, problems in by_level.items():
        assert {p.data["kind"] for p in problems} == {"string", "list"}, level
        assert len({p.data["rule"] for p in problems}) >= 5, level
        assert all(p.data["output"] != p.data["input"] for p in problems)


def test_hidden_rule_prompt_and_reference():
    for difficulty in (1, 2, 3):
        world = HiddenRuleWorld(seed=4, difficulty=difficulty)
        for p in world.problems("train") + world.problems("val"):
            assert p.prompt.count("Input:") == 4 and p.prompt.count("\nOutput:") == 3
            assert f"Input: {p.data['input']}\n" in p.prompt
            assert p.data["output"] in p.reference and p.data["description"][1:] in p.reference
            assert p.reference.endswith(f"Output: {p.data['output']}")
            assert world.judge(p, p.reference).passed
            assert world.judge(p, f"Output: {p.data['output']}").reward == 1.0


def _first(kind: str, rule: str | None = None) -> tuple[HiddenRuleWorld, Problem]:
    for difficulty in (1, 2):
        world = HiddenRuleWorld(seed=0, difficulty=difficulty)
        for p in world.problems("train"):
            if p.data["kind"] == kind and (rule is None or p.data["rule"] == rule):
                return world, p
    raise AssertionError(f"no {kind} problem with rule {rule}")


def test_hidden_rule_string_extraction():
    world, p = _first("string")
    out = p.data["output"]
    for response in (
        f"Output: {out}",
        f"The rule reverses the string.\nOutput: {out}",
        f"Output: **{out}**",
        f'Output: "{out}".',
        f"Answer: `{out}`",
        f"The output is {out}.",
        f"Output:\n{out}",
        f"{out}",
        f"Input: abc\nOutput: cba\n\nSo for the last input:\nOutput: {out}",
        f"Output: {out}\n\nExplanation: the output is formed by applying the rule.",
        f"Output: {' '.join(out)}",
        f"Output: {out} (by the same rule)",
    ):
        assert extract_output(response, "string") == out, response
        assert world.judge(p, response).passed, response
    assert not world.judge(p, f"Output: {out.upper() if out != out.upper() else out.lower()}").passed
    assert world.judge(p, "").feedback.startswith("No output found")


def test_hidden_rule_list_extraction():
    world, p = _first("list")
    out = p.data["output"]
    numbers = out.strip("[]").split(", ")
    for response in (
        f"Output: {out}",
        f"Output: [{','.join(numbers)}]",
        f"Output: {', '.join(numbers)}",
        f"Output: {' '.join(numbers)}",
        f"The answer is {out}.",
        f"Sorting gives:\n{out}",
        f"Output: `{out}` because each number moves.",
    ):
        assert extract_output(response, "list") == out, response
        assert world.judge(p, response).passed, response
    assert world.judge(p, "Output: none").feedback.startswith("No list of numbers found")


def test_hidden_rule_feedback_content():
    world, p = _first("string", "reverse")
    out = p.data["output"]
    fb = world.judge(p, f"Output: {p.data['input']}").feedback
    assert "input unchanged" in fb and "right characters, but in the wrong order" in fb
    fb = world.judge(p, f"Output: {out[:-1]}").feedback
    assert f"has {len(out) - 1} characters; the expected output has {len(out)}" in fb
    assert "stops too early" in fb
    fb = world.judge(p, f"Output: {out.upper()}").feedback
    assert "letter case" in fb
    world, p = _first("list", "double_numbers")
    items = [int(x) for x in p.data["output"].strip("[]").split(", ")]
    wrong = "[" + ", ".join(str(v) for v in [items[0] + 1, *items[1:]]) + "]"
    fb = world.judge(p, f"Output: {wrong}").feedback
    assert "position 1" in fb and "too high" in fb and "1 of" in fb
    composite = HiddenRuleWorld(seed=0, difficulty=3).problems("train")[0]
    fb = HiddenRuleWorld(difficulty=3).judge(composite, f"Output: {composite.data['partial_outputs'][0]}").feedback
    assert "only one of the rule's two steps" in fb


def _wrong_outputs(p: Problem) -> list[str]:
    out, kind = p.data["output"], p.data["kind"]
    items: list = list(out) if kind == "string" else [int(x) for x in out.strip("[]").split(", ")]
    fill = "z" if kind == "string" else 7
    variants = [items[::-1], items[1:], items[:-1], items + [fill], [fill] + items, items[1:] + items[:1],
                [items[1], items[0], *items[2:]], [fill, *items[1:]], items[:-1] + [fill], items * 2]
    if kind == "string":
        texts = ["".join(v) for v in variants] + [out.upper(), out.lower(), out.swapcase()]
    else:
        texts = ["[" + ", ".join(map(str, v)) + "]" for v in variants] + [
            "[" + ", ".join(str(v + 1) for v in items) + "]"]
    texts += [p.data["input"], *p.data["partial_outputs"], "?"]
    return [t for t in texts if t != out]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_hidden_rule_feedback_never_contains_the_answer(difficulty):
    world = HiddenRuleWorld(seed=9, difficulty=difficulty)
    for p in world.problems("train") + world.problems("val"):
        out = p.data["output"]
        needles = [out, out.strip("[]")] if p.data["kind"] == "list" else [out, out.lower()]
        for wrong in _wrong_outputs(p):
            for response in (f"Output: {wrong}", wrong, f"The answer is: {wrong}"):
                j = world.judge(p, response)
                assert not j.passed and j.reward == 0.0, response
                for needle in needles:
                    assert needle not in j.feedback, (p.data["rule"], response, j.feedback)
