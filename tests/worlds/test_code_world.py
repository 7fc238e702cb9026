"""Code worlds: extraction, the one-sandbox test harness, feedback, PyFuncWorld, LiveCodeBench."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib

import pytest

from opsd_platform.errors import WorldError
from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.base import Judgement, World
from opsd_platform.worlds.code import (
    CodeJsonlWorld,
    TestCase,
    decode_lcb_tests,
    extract_code,
    judge_code,
)
from opsd_platform.worlds.jsonl import judge_responses, read_jsonl
from opsd_platform.worlds.pyfunc import PyFuncWorld
from opsd_platform.worlds.pyfunc.bank import templates
from tests.helpers import FIXTURES

FIXTURE = FIXTURES / "lcb_sample.jsonl"
FAST = SandboxLimits(wall_s=10.0, cpu_s=10)


# ---- the LiveCodeBench fixture and the script that wrote it ---------------------------------

def lcb_compress(tests: list[dict]) -> str:
    """What the LiveCodeBench release does to private_test_cases: base64(zlib(pickle(json)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests), protocol=4))).decode()


def make_lcb_records() -> list[dict]:
    st = "stdin"
    fn = "functional"
    return [
        {
            "question_title": "A+B", "question_id": "abc001_a", "platform": "atcoder", "difficulty": "easy",
            "contest_date": "2024-01-01T00:00:00",
            "question_content": "Given two integers A and B on one line, print A+B.",
            "starter_code": "",
            "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": st}]),
            "private_test_cases": json.dumps([{"input": "10 20\n", "output": "30\n", "testtype": st},
                                              {"input": "-5 5\n", "output": "0\n", "testtype": st}]),
            "metadata": "{}",
        },
        {
            "question_title": "Two Sum", "question_id": "lc_two_sum", "platform": "leetcode", "difficulty": "medium",
            "question_content": "Return the indices of the two numbers of nums that add up to target.",
            "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
            "public_test_cases": json.dumps([{"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": fn}]),
            "private_test_cases": lcb_compress([{"input": "[3,2,4]\n6", "output": "[1, 2]", "testtype": fn},
                                                {"input": "[3,3]\n6", "output": "[0, 1]", "testtype": fn}]),
            "metadata": json.dumps({"func_name": "twoSum"}),
        },
        {
            "question_title": "Reverse lines", "question_id": "cf_rev", "platform": "codeforces", "difficulty": "hard",
            "question_content": "The first line has n; then n words follow, one per line. Print them in reverse order, one per line.",
            "starter_code": "",
            "public_test_cases": json.dumps([{"input": "3\na\nb\nc\n", "output": "c\nb\na\n", "testtype": st}]),
            "private_test_cases": lcb_compress([{"input": "1\nx\n", "output": "x\n", "testtype": st},
                                                {"input": "2\nhello\nworld\n", "output": "world\nhello", "testtype": st}]),
            "metadata": "{}",
        },
        {
            "question_title": "Count evens", "question_id": "lc_count_even", "platform": "leetcode", "difficulty": "easy",
            "question_content": "Return how many elements of nums are even.",
            "starter_code": "class Solution:\n    def countEven(self, nums: List[int]) -> int:\n        ",
            "public_test_cases": json.dumps([{"input": "[1,2,4]", "output": "2", "testtype": fn}]),
            "private_test_cases": json.dumps([{"input": "[]", "output": "0", "testtype": fn},
                                              {"input": "[7,9]", "output": "0", "testtype": fn}]),
            "metadata": {"func_name": "countEven"},
        },
    ]


SOLUTIONS = {
    "abc001_a": "a, b = map(int, input().split())\nprint(a + b)\n",
    "lc_two_sum": (
        "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return [seen[target - x], i]\n            seen[x] = i\n"
    ),
    "cf_rev": "import sys\nn, *w = sys.stdin.read().split()\nprint('\\n'.join(reversed(w)))\n",
    "lc_count_even": "def countEven(nums):\n    return sum(1 for x in nums if x % 2 == 0)\n",
}


def _block(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}```\n"


def test_fixture_matches_generator():
    rows = [obj for _, obj in read_jsonl(FIXTURE)]
    expected = make_lcb_records()
    assert len(rows) == len(expected) == 4
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key in ("public_test_cases", "private_test_cases"):
            assert decode_lcb_tests(got[key]) == decode_lcb_tests(want[key])
    assert not rows[1]["private_test_cases"].lstrip().startswith("[")  # really compressed


def test_compressed_private_tests_decode_and_evil_pickle_refused():
    tests = [{"input": "1", "output": "2", "testtype": "stdin"}]
    assert decode_lcb_tests(lcb_compress(tests)) == tests

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ValueError, match="forbidden global"):
        decode_lcb_tests(evil)
    with pytest.raises(ValueError):
        decode_lcb_tests("not json and not base64 !!!")


# ---- extraction ---------------------------------------------------------------------------

def test_extract_code_cases():
    assert extract_code("no code here") is None
    assert extract_code("```python\nprint(1)\n```") == "print(1)\n"
    two = "```python\nprint('first')\n```\ntext\n```python\nprint('last')\n```\n"
    assert extract_code(two) == "print('last')\n"
    # a python block wins over a later block in another language
    mixed = "```python\nx = 1\n```\n```text\noutput\n```"
    assert extract_code(mixed) == "x = 1\n"
    # no python block: the last fenced block of any kind
    assert extract_code("```\na = 2\n```\n```js\nlet b;\n```") == "let b;\n"
    # truncated generation: the open fence runs to the end
    assert extract_code("Sure:\n```python\ndef f():\n    return 1") == "def f():\n    return 1\n"
    # closing fence glued to the last line, and "py" language tag
    assert extract_code("```py\nprint(2)```") == "print(2)\n"
    assert extract_code("```python\n```") == ""


# ---- judging -------------------------------------------------------------------------------

STDIN_TESTS = [TestCase("1 2\n", "3\n"), TestCase("4 5\n", "9"), TestCase("10 -3\n", "7\n", hidden=True)]


def _judge(code: str, tests=STDIN_TESTS, func_name=None, reveal=True, **kw) -> Judgement:
    return judge_code(_block(code), tests, func_name=func_name, limits=kw.pop("limits", FAST), reveal_hidden=reveal, **kw)


def test_stdin_correct_and_whitespace_normalised():
    j = _judge("a, b = map(int, input().split())\nprint('  ', a + b, '  ')\nprint()\n")
    assert j.passed and j.reward == 1.0
    assert "3/3" in j.feedback or "All 3" in j.feedback


def test_stdin_wrong_answer_shows_expected_and_got():
    j = _judge("a, b = map(int, input().split())\nprint(a * b)\n")
    assert not j.passed
    assert j.reward == 0.0
    assert "Passed 0/3 tests" in j.feedback
    assert "Wrong answer on test 1" in j.feedback
    assert "Expected:\n3" in j.feedback and "Got:\n2" in j.feedback


def test_partial_reward_and_hidden_test_not_revealed():
    code = "a, b = map(int, input().split())\nprint(a + b if b > 0 else 0)\n"
    j = _judge(code, reveal=False)
    assert j.reward == pytest.approx(2 / 3) and not j.passed
    assert j.feedback == ("Passed 2/3 tests.\nHidden tests: 0/1 passed; a hidden test failed: wrong answer "
                          "(their inputs, outputs and errors are not shown).")
    j2 = _judge(code, reveal=True)
    assert "10 -3" in j2.feedback and "Expected:\n7" in j2.feedback


def test_runtime_error_has_traceback_without_sandbox_paths():
    j = _judge("def f(a):\n    return a // 0\nprint(f(int(input().split()[0])))\n")
    assert not j.passed
    assert "Runtime error on test 1" in j.feedback
    assert "ZeroDivisionError" in j.feedback
    assert 'File "solution.py", line 2' in j.feedback
    assert "opsd-sbx" not in j.feedback and "/tmp/" not in j.feedback


def test_timeout_per_test_and_rest_still_graded():
    code = "a, b = map(int, input().split())\nif a == 4:\n    while True: pass\nprint(a + b)\n"
    j = _judge(code, per_test_s=0.5)
    assert j.reward == pytest.approx(2 / 3)
    assert "Time limit exceeded on test 2" in j.feedback


def test_whole_run_timeout_is_reported():
    j = _judge("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass\n",
               limits=SandboxLimits(wall_s=1.5, cpu_s=5), per_test_s=0.5)
    assert j.reward == 0.0
    assert "Time limit exceeded on test 1" in j.feedback


def test_memory_limit_is_reported():
    j = _judge("x = bytearray(10**10)\n")
    assert j.reward == 0.0 and "Memory limit exceeded on test 1" in j.feedback


def test_no_code_block_and_syntax_error():
    j = judge_code("I think the answer is 3.", STDIN_TESTS, func_name=None, limits=FAST, reveal_hidden=True)
    assert j.reward == 0.0 and "No ```python code block" in j.feedback and "0/3" in j.feedback
    j = _judge("x = 1\nfor i in range(3)\n    print(i)\n")
    assert j.reward == 0.0 and "Syntax error on line 2" in j.feedback


def test_functional_solution_class_and_plain_function():
    tests = [TestCase("[1,2,3]\n2", "[2, 4, 6]", "functional"), TestCase("[]\n5", "[]", "functional", hidden=True)]
    cls = "class Solution:\n    def scale(self, nums: List[int], k: int) -> List[int]:\n        return [x * k for x in nums]\n"
    assert _judge(cls, tests, func_name="scale").passed
    assert _judge("def scale(nums, k):\n    return tuple(x * k for x in nums)\n", tests, func_name="scale").passed
    j = _judge("def scale(nums, k):\n    return [x + k for x in nums]\n", tests, func_name="scale")
    assert not j.passed and j.reward == 0.5
    assert "Expected:\n[2, 4, 6]" in j.feedback and "Got:\n[3, 4, 5]" in j.feedback
    j = _judge("def other(nums, k):\n    return nums\n", tests, func_name="scale")
    assert j.reward == 0.0 and "scale" in j.feedback


def test_cannot_read_expected_outputs():
    # the expected outputs never enter the sandbox: a program grepping for them finds nothing
    code = ("import os\nfound = []\nfor root, _, names in os.walk('.'):\n    for n in names:\n"
            "        try:\n            found.append(open(os.path.join(root, n), errors='ignore').read())\n"
            "        except OSError:\n            pass\nprint(3 if any('SECRET_EXPECTED' in t for t in found) else 0)\n")
    j = _judge(code, [TestCase("1\n", "SECRET_EXPECTED")])
    assert not j.passed


# ---- LiveCodeBench world ------------------------------------------------------------------

def test_lcb_world_loads_splits_and_reference_solutions_pass():
    w = CodeJsonlWorld(str(FIXTURE), seed=0, val_fraction=0.5)
    assert isinstance(w, World) and w.name == "code"
    train, val = w.problems("train"), w.problems("val")
    ids = [p.id for p in train + val]
    assert sorted(ids) == sorted(SOLUTIONS)
    assert not {p.id for p in train} & {p.id for p in val}
    w2 = CodeJsonlWorld(str(FIXTURE), seed=0, val_fraction=0.5)
    assert [p.id for p in w2.problems("train")] == [p.id for p in train]
    assert [p.prompt for p in w2.problems("val")] == [p.prompt for p in val]
    by_id = {p.id: p for p in train + val}
    two_sum = by_id["lc_two_sum"]
    assert "Two Sum" in two_sum.prompt and "def twoSum" in two_sum.prompt and "```python" in two_sum.prompt
    assert "standard input" in by_id["abc001_a"].prompt
    assert "[0, 1]" in two_sum.reference and "no reference solution" in two_sum.reference.lower()
    assert two_sum.difficulty == 2
    assert sum(t["hidden"] for t in two_sum.data["tests"]) == 2
    problems = list(by_id.values())
    judgements = w.judge_many(problems, [_block(SOLUTIONS[p.id]) for p in problems])
    for p, j in zip(problems, judgements):
        assert j.passed, (p.id, j.feedback)
    j = w.judge(two_sum, _block("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"))
    assert j.reward == pytest.approx(1 / 3)  # lcb grading stops at the first failure, as LCB does
    assert "Hidden tests: 0/2 passed; a hidden test failed: wrong answer" in j.feedback
    assert "[3,2,4]" not in j.feedback and "[1, 2]" not in j.feedback


def test_lcb_max_problems_and_invalid_split():
    w = CodeJsonlWorld(str(FIXTURE), val_fraction=0.0, max_problems=2)
    assert [p.id for p in w.problems("train")] == ["abc001_a", "lc_two_sum"]
    assert w.problems("val") == []
    with pytest.raises(WorldError, match="unknown split"):
        w.problems("test")


def test_lcb_malformed_inputs_name_file_and_line(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    bad = tmp_path / "data.jsonl"
    bad.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    with pytest.raises(WorldError, match=r"data\.jsonl:3: invalid JSON"):
        CodeJsonlWorld(str(bad))
    rec = json.loads(lines[0])
    del rec["question_id"]
    bad.write_text(lines[1] + "\n\n" + json.dumps(rec) + "\n")
    with pytest.raises(WorldError, match=r"data\.jsonl:3: missing field 'question_id'"):
        CodeJsonlWorld(str(bad))
    rec = json.loads(lines[1])
    rec["metadata"] = "{}"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(WorldError, match=r"data\.jsonl:1: .*func_name"):
        CodeJsonlWorld(str(bad))
    rec["private_test_cases"] = "%%%"
    with pytest.raises(WorldError):
        bad.write_text(json.dumps(rec) + "\n")
        CodeJsonlWorld(str(bad))
    bad.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(WorldError, match=r"data\.jsonl:2: duplicate question_id"):
        CodeJsonlWorld(str(bad))
    bad.write_text("\n")
    with pytest.raises(WorldError, match="empty dataset"):
        CodeJsonlWorld(str(bad))
    with pytest.raises(WorldError, match="missing.jsonl"):
        CodeJsonlWorld(str(tmp_path / "missing.jsonl"))


def test_judge_responses(tmp_path):
    w = CodeJsonlWorld(str(FIXTURE), val_fraction=0.0)
    by_id = {p.id: p for p in w.problems("train")}
    resp = tmp_path / "responses.jsonl"
    resp.write_text(
        json.dumps({"question_id": "abc001_a", "response": _block(SOLUTIONS["abc001_a"])}) + "\n"
        + json.dumps({"question_id": "cf_rev", "response": "no code"}) + "\n"
    )
    rows = judge_responses(w, by_id, str(resp))
    assert [r["question_id"] for r in rows] == ["abc001_a", "cf_rev"]
    assert rows[0]["passed"] and rows[0]["reward"] == 1.0
    assert not rows[1]["passed"] and "No code block found" in rows[1]["feedback"]
    resp.write_text(json.dumps({"question_id": "abc001_a", "response": "x"}) + "\n"
                    + json.dumps({"question_id": "nope", "response": "x"}) + "\n")
    with pytest.raises(WorldError, match=r"responses\.jsonl:2: unknown question_id 'nope'"):
        judge_responses(w, by_id, str(resp))


# ---- PyFuncWorld -------------------------------------------------------------------------------

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
        for p, j in zip(ps, w.judge_many(ps, [_block(p.reference) for p in ps])):
            assert j.passed, (p.data["template"], j.feedback)


def test_pyfunc_wrong_solution_gets_useful_feedback():
    w = PyFuncWorld(seed=0, difficulty=1, n_train=4, n_val=1)
    p = w.problems("train")[0]
    name = p.data["func_name"]
    j = w.judge(p, _block(f"def {name}(*args):\n    return 'nope'\n"))
    assert not j.passed and j.reward < 1.0
    assert "Wrong answer on test 1" in j.feedback and "Expected:" in j.feedback and "Got:\n\"nope\"" in j.feedback
    j = w.judge(p, "the answer is obvious")
    assert j.reward == 0.0 and "code block" in j.feedback


def test_pyfunc_bad_config():
    with pytest.raises(WorldError):
        PyFuncWorld(difficulty=7)
    with pytest.raises(WorldError, match="distinct"):
        PyFuncWorld(difficulty=3, n_train=5000)


# ---- grading: lcb (LiveCodeBench's verdicts, tests/worlds/test_lcb_parity.py) and lenient ----------

def test_default_grading_is_lcb_for_code_and_lenient_for_pyfunc():
    from opsd_platform.config import WorldConfig
    from opsd_platform.config.compose import train_config
    from opsd_platform.worlds import make_world

    assert WorldConfig(name="code", path=str(FIXTURE)).grading == "lcb"
    assert WorldConfig(name="pyfunc").grading == "lenient"
    assert WorldConfig(name="arithmetic").grading is None  # no code judged
    assert train_config(["world=code", f"world.path={FIXTURE}"]).world.grading == "lcb"
    assert train_config(["world=pyfunc"]).world.grading == "lenient"
    assert CodeJsonlWorld(str(FIXTURE)).grading == "lcb"
    assert PyFuncWorld(n_train=2, n_val=1).grading == "lenient"
    assert make_world(WorldConfig(name="code", path=str(FIXTURE))).grading == "lcb"
    assert make_world(WorldConfig(name="code", path=str(FIXTURE), grading="lenient")).grading == "lenient"
    assert make_world(WorldConfig(name="pyfunc", n_train=2, n_val=1, grading="lcb")).grading == "lcb"


def test_unknown_grading_is_refused_with_the_valid_ones():
    from opsd_platform.config import ConfigError, WorldConfig

    with pytest.raises(ConfigError, match=r"world\.grading: unknown value 'strict'; valid: lcb, lenient"):
        WorldConfig(name="code", path=str(FIXTURE), grading="strict")
    with pytest.raises(WorldError, match="unknown grading 'strict'; valid: lcb, lenient"):
        judge_code(_block("print(3)"), STDIN_TESTS, func_name=None, limits=FAST, reveal_hidden=False, grading="strict")
    with pytest.raises(WorldError, match="valid: lcb, lenient"):
        CodeJsonlWorld(str(FIXTURE), grading="exact")
    with pytest.raises(WorldError, match="valid: lcb, lenient"):
        PyFuncWorld(grading="exact")


def test_extract_code_lcb_takes_the_lines_between_the_last_two_fence_lines():
    def lcb(text):
        return extract_code(text, "lcb")

    assert lcb("no code here") is None
    assert lcb("```python\nprint(1)\n```") == "print(1)\n"
    assert lcb("```python\nprint('first')\n```\ntext\n```python\nprint('last')\n```\n") == "print('last')\n"
    assert lcb("```python\nx = 1\n```\n```text\noutput\n```") == "output\n"  # any language: the last block
    assert lcb("```python\nx = 1\n```\nThen run it:\n```") == "Then run it:\n"
    assert lcb("Sure:\n```python\ndef f():\n    return 1") is None  # unterminated
    assert lcb("```py\nprint(2)```") == "\n"  # the glued closing fence's line is not code
    assert lcb("~~~python\nprint(2)\n~~~") is None
    assert lcb("   ```python   \nprint(3)\n    ```  \n") == "print(3)\n"


def test_several_fenced_blocks_are_judged_on_the_block_lcb_takes():
    tests = [TestCase("1 2\n", "3\n")]
    response = ("First try:\n```python\na, b = map(int, input().split())\nprint(a - b)\n```\n"
                "Fixed:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n"
                "Example:\n```\n$ echo 1 2 | python sol.py\n3\n```\n")
    lcb = judge_code(response, tests, func_name=None, limits=FAST, reveal_hidden=True, grading="lcb")
    lenient = judge_code(response, tests, func_name=None, limits=FAST, reveal_hidden=True, grading="lenient")
    assert not lcb.passed and "Syntax error" in lcb.feedback  # LCB runs the last block, the shell example
    assert lenient.passed  # the last python block
    assert judge_code(response.split("Example:")[0], tests, func_name=None, limits=FAST, reveal_hidden=True,
                      grading="lcb").passed


@pytest.mark.parametrize("hidden", [False, True], ids=["all public", "with hidden tests"])
def test_lcb_time_limit_applies_per_test(hidden):
    tests = [TestCase("1 2\n", "3\n"), TestCase("4 5\n", "9\n"), TestCase("10 -3\n", "7\n", hidden=hidden)]
    slow = "import time\ntime.sleep(0.3)\na, b = map(int, input().split())\nprint(a + b)\n"
    j = _judge(slow, tests, reveal=False, grading="lcb", per_test_s=0.5)  # 0.9 s in all, 0.3 s per test
    assert j.passed, j.feedback
    hang = "a, b = map(int, input().split())\nif a == 4:\n    while True: pass\nprint(a + b)\n"
    j = _judge(hang, tests, reveal=False, grading="lcb", per_test_s=0.5)
    assert j.reward == pytest.approx(1 / 3) and not j.passed
    assert "Time limit exceeded on test 2 (limit 0.5 s per test)" in j.feedback
    assert "1 test(s) not run: grading stops at the first failing test" in j.feedback
    j = _judge(hang, tests, reveal=False, grading="lenient", per_test_s=0.5)
    assert j.reward == pytest.approx(2 / 3)  # lenient grades every test


def test_lcb_defaults_to_livecodebench_time_limit():
    from opsd_platform.worlds.code.extract import LCB_TIMEOUT_S
    from opsd_platform.worlds.code.judge import _Run

    assert LCB_TIMEOUT_S == 6.0
    run = _Run("", None, "lcb", LCB_TIMEOUT_S, FAST, [{}, {}, {}], {})
    assert run.whole_run_s == (6 + 1) * 3 + 5 + 6  # LCB's global bound, plus the module's load


def test_lcb_public_feedback_shows_input_expected_got_and_traceback():
    tests = [TestCase("1 2\n", "3\n"), TestCase("4 5\n", "9\n", hidden=True)]
    j = _judge("a, b = map(int, input().split())\nprint(a * b)\n", tests, reveal=False, grading="lcb")
    assert "Wrong answer on test 1.\nInput:\n1 2\nExpected:\n3\nGot:\n2" in j.feedback
    j = _judge("a, b = map(int, input().split())\nprint(a // (b - 2))\n", tests, reveal=False, grading="lcb")
    assert "Runtime error on test 1." in j.feedback and "ZeroDivisionError" in j.feedback
    assert 'File "solution.py", line 2' in j.feedback


# ---- leak-free feedback: nothing of a hidden test reaches the model ------------------------

PUBLIC = TestCase("pub-000000\n", "PUB-000000\n")
SECRETS_A = [TestCase("h1-qzwxec\n", "H1-QZWXEC\n", hidden=True), TestCase("h2-rvtbyn\n", "H2-RVTBYN\n", hidden=True)]
SECRETS_B = [TestCase("h1-ukimlo\n", "H1-UKIMLO\n", hidden=True), TestCase("h2-pjhgfd\n", "H2-PJHGFD\n", hidden=True)]

# What a program can find in its sandbox: every file under its work dir, its own stdin, the
# environment and the command lines it can read. It prints whatever looks like a test's data
# other than its own input.
SNOOP = r'''
import os, re, sys
mine = sys.stdin.read()
seen = []
for root in (".", "/tmp", os.environ.get("HOME", ".")):
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                with open(os.path.join(dirpath, name), errors="ignore") as f:
                    seen.append(f.read())
            except OSError:
                pass
for path in ("/proc/self/cmdline", "/proc/1/cmdline", "/proc/self/environ", "/proc/1/environ"):
    try:
        with open(path, errors="ignore") as f:
            seen.append(f.read())
    except OSError:
        pass
seen.append(repr(dict(os.environ)))
found = set(re.findall(r"(?i)(?:pub|h[12])-[a-z0-9]{6}", " ".join(seen))) - {mine.strip()}
print("LEAK " + " ".join(sorted(found)) if found else mine.strip().upper())
'''


@pytest.mark.parametrize("grading", ["lcb", "lenient"])
def test_a_sandbox_holds_only_the_input_of_the_test_it_runs(grading):
    j = _judge(SNOOP, [PUBLIC] + SECRETS_A, reveal=False, grading=grading)
    assert j.passed, j.feedback  # no test saw another test's input, nor any expected output
    # the public test's run shows what it found: its feedback holds its own output only
    j = _judge(SNOOP.replace("mine.strip().upper())", "'wrong')"), [PUBLIC] + SECRETS_A, reveal=False, grading=grading)
    assert "Got:\nwrong" in j.feedback


# Programs that try to carry their hidden input out through the feedback; each first solves the
# public test, so that (under lcb) the hidden tests run.
_EXFILTRATE = {
    "print it": "print(data)\nprint(data, file=sys.stderr)\nprint(open('tests.json').read(), file=sys.stderr)",
    "exception named after it": "raise type(data.replace('-', '_').upper(), (Exception,), {})(data * 3)",
    "exit status": "sys.exit(data)",
    "timing": "import time, zlib\ntime.sleep(0.05 + (zlib.crc32(data.encode()) % 8) * 0.05)\nprint('x')",
    "forged records": (
        "import json\nrec = {'i': 1, 'status': 'runtime_error', 'error': data, 'traceback': data, 'exc_type': data}\n"
        "with open('results.jsonl', 'w') as f:\n"
        "    f.write(json.dumps({'compile_error': True, 'error': data, 'line': 1, 'text': data}) + '\\n')\n"
        "    f.write(json.dumps(rec) + '\\n')\nos._exit(0)"),
    "crash": "print(data, file=sys.stderr)\nimport ctypes\nctypes.string_at(0)",
    "memory": "x = [data] * (10 ** 9)",
}


def _hostile(action: str) -> str:
    body = "\n".join("    " + line for line in action.split("\n"))
    return ("import os, sys\ndata = sys.stdin.read().strip()\nif data == 'pub-000000':\n    print('PUB-000000')\n"
            f"else:\n{body}\n")


@pytest.mark.parametrize("public", [True, False], ids=["public first", "hidden only"])
@pytest.mark.parametrize("grading", ["lcb", "lenient"])
@pytest.mark.parametrize("how", list(_EXFILTRATE))
def test_no_hidden_input_or_output_reaches_the_feedback(how, grading, public):
    code = _hostile(_EXFILTRATE[how])
    prefix = [PUBLIC] if public else []
    got = [_judge(code, prefix + secrets, reveal=False, grading=grading) for secrets in (SECRETS_A, SECRETS_B)]
    assert got[0].feedback == got[1].feedback  # a function of the categories only, not of the hidden data
    assert got[0].reward == got[1].reward
    for j, secrets in zip(got, (SECRETS_A, SECRETS_B)):
        for t in secrets:
            for secret in (t.input.strip(), t.output.strip(), t.input.strip().upper(), t.output.strip().lower(),
                           t.input.strip().replace("-", "_").upper()):
                assert secret not in j.feedback, (how, j.feedback)
        assert "Hidden tests: 0/2 passed; a hidden test failed: " in j.feedback
        assert "Traceback" not in j.feedback and "Error:" not in j.feedback


def test_hidden_failure_is_a_fixed_category_and_no_test_number():
    tests = [TestCase("1 2\n", "2\n"), TestCase("10 0\n", "10\n", hidden=True), TestCase("4 4\n", "8\n", hidden=True)]
    j = _judge("a, b = map(int, input().split())\nprint(a // b + b)\n", tests, reveal=False, grading="lenient")
    assert j.reward == pytest.approx(1 / 3)
    assert j.feedback == ("Passed 1/3 tests.\nHidden tests: 0/2 passed; a hidden test failed: runtime error "
                          "(their inputs, outputs and errors are not shown).")
    j = _judge("a, b = map(int, input().split())\nprint(a // b + b)\n", tests, reveal=True, grading="lenient")
    assert "Runtime error on hidden test 2." in j.feedback and "ZeroDivisionError" in j.feedback


def test_syntax_error_is_reported_when_every_test_is_hidden():
    j = _judge("x = (\n", SECRETS_A, reveal=False, grading="lcb")
    assert j.feedback.startswith("Syntax error on line 1:") and j.reward == 0.0


def test_lenient_time_budget_covers_the_programs_not_the_sandbox_start_ups():
    many = [TestCase(f"{k} 1\n", f"{k + 1}\n", hidden=k > 0) for k in range(12)]
    j = _judge("a, b = map(int, input().split())\nprint(a + b)\n", many, reveal=False, limits=SandboxLimits(wall_s=1.0, cpu_s=2))
    assert j.passed, j.feedback  # twelve sandboxes take longer than 1 s to start; the program does not
    slow = "import time\ntime.sleep(0.5)\na, b = map(int, input().split())\nprint(a + b)\n"
    j = _judge(slow, many[:3], reveal=False, limits=SandboxLimits(wall_s=1.2, cpu_s=2))
    assert j.reward == pytest.approx(2 / 3)
    assert "Hidden tests: 1/2 passed; a hidden test failed: time limit exceeded" in j.feedback
