"""Code worlds: extraction, the one-sandbox test harness, feedback, LiveCodeBench, the gradings.
PyFuncWorld: test_pyfunc_world.py; nothing of a hidden test reaches the model: test_code_leaks.py."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib

import pytest

from opsd_platform.errors import WorldError
from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.base import World
from opsd_platform.worlds.code import (
    CodeJsonlWorld,
    TestCase,
    decode_lcb_tests,
    extract_code,
    judge_code,
)
from opsd_platform.worlds.jsonl import judge_responses, read_jsonl
from opsd_platform.worlds.pyfunc import PyFuncWorld
from tests.helpers import FIXTURES
from tests.worlds.code_helpers import FAST, STDIN_TESTS, fenced, judged

FIXTURE = FIXTURES / "lcb_sample.jsonl"


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

def test_stdin_correct_and_whitespace_normalised():
    j = judged("a, b = map(int, input().split())\nprint('  ', a + b, '  ')\nprint()\n")
    assert j.passed and j.reward == 1.0
    assert "3/3" in j.feedback or "All 3" in j.feedback


def test_stdin_wrong_answer_shows_expected_and_got():
    j = judged("a, b = map(int, input().split())\nprint(a * b)\n")
    assert not j.passed
    assert j.reward == 0.0
    assert "Passed 0/3 tests" in j.feedback
    assert "Wrong answer on test 1" in j.feedback
    assert "Expected:\n3" in j.feedback and "Got:\n2" in j.feedback


def test_partial_reward_and_hidden_test_not_revealed():
    code = "a, b = map(int, input().split())\nprint(a + b if b > 0 else 0)\n"
    j = judged(code, reveal=False)
    assert j.reward == pytest.approx(2 / 3) and not j.passed
    assert j.feedback == ("Passed 2/3 tests.\nHidden tests: 0/1 passed; a hidden test failed: wrong answer "
                          "(their inputs, outputs and errors are not shown).")
    j2 = judged(code, reveal=True)
    assert "10 -3" in j2.feedback and "Expected:\n7" in j2.feedback


def test_runtime_error_has_traceback_without_sandbox_paths():
    j = judged("def f(a):\n    return a // 0\nprint(f(int(input().split()[0])))\n")
    assert not j.passed
    assert "Runtime error on test 1" in j.feedback
    assert "ZeroDivisionError" in j.feedback
    assert 'File "solution.py", line 2' in j.feedback
    assert "opsd-sbx" not in j.feedback and "/tmp/" not in j.feedback


def test_timeout_per_test_and_rest_still_graded():
    code = "a, b = map(int, input().split())\nif a == 4:\n    while True: pass\nprint(a + b)\n"
    j = judged(code, per_test_s=0.5)
    assert j.reward == pytest.approx(2 / 3)
    assert "Time limit exceeded on test 2" in j.feedback


def test_whole_run_timeout_is_reported():
    j = judged("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass\n",
               limits=SandboxLimits(wall_s=1.5, cpu_s=5), per_test_s=0.5)
    assert j.reward == 0.0
    assert "Time limit exceeded on test 1" in j.feedback


def test_memory_limit_is_reported():
    j = judged("x = bytearray(10**10)\n")
    assert j.reward == 0.0 and "Memory limit exceeded on test 1" in j.feedback


def test_no_code_block_and_syntax_error():
    j = judge_code("I think the answer is 3.", STDIN_TESTS, func_name=None, limits=FAST, reveal_hidden=True)
    assert j.reward == 0.0 and "No ```python code block" in j.feedback and "0/3" in j.feedback
    j = judged("x = 1\nfor i in range(3)\n    print(i)\n")
    assert j.reward == 0.0 and "Syntax error on line 2" in j.feedback


def test_functional_solution_class_and_plain_function():
    tests = [TestCase("[1,2,3]\n2", "[2, 4, 6]", "functional"), TestCase("[]\n5", "[]", "functional", hidden=True)]
    cls = "class Solution:\n    def scale(self, nums: List[int], k: int) -> List[int]:\n        return [x * k for x in nums]\n"
    assert judged(cls, tests, func_name="scale").passed
    assert judged("def scale(nums, k):\n    return tuple(x * k for x in nums)\n", tests, func_name="scale").passed
    j = judged("def scale(nums, k):\n    return [x + k for x in nums]\n", tests, func_name="scale")
    assert not j.passed and j.reward == 0.5
    assert "Expected:\n[2, 4, 6]" in j.feedback and "Got:\n[3, 4, 5]" in j.feedback
    j = judged("def other(nums, k):\n    return nums\n", tests, func_name="scale")
    assert j.reward == 0.0 and "scale" in j.feedback


def test_cannot_read_expected_outputs():
    # the expected outputs never enter the sandbox: a program grepping for them finds nothing
    code = ("import os\nfound = []\nfor root, _, names in os.walk('.'):\n    for n in names:\n"
            "        try:\n            found.append(open(os.path.join(root, n), errors='ignore').read())\n"
            "        except OSError:\n            pass\nprint(3 if any('SECRET_EXPECTED' in t for t in found) else 0)\n")
    j = judged(code, [TestCase("1\n", "SECRET_EXPECTED")])
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
    judgements = w.judge_many(problems, [fenced(SOLUTIONS[p.id]) for p in problems])
    for p, j in zip(problems, judgements):
        assert j.passed, (p.id, j.feedback)
    j = w.judge(two_sum, fenced("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"))
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
        json.dumps({"question_id": "abc001_a", "response": fenced(SOLUTIONS["abc001_a"])}) + "\n"
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
        judge_code(fenced("print(3)"), STDIN_TESTS, func_name=None, limits=FAST, reveal_hidden=False, grading="strict")
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
    j = judged(slow, tests, reveal=False, grading="lcb", per_test_s=0.5)  # 0.9 s in all, 0.3 s per test
    assert j.passed, j.feedback
    hang = "a, b = map(int, input().split())\nif a == 4:\n    while True: pass\nprint(a + b)\n"
    j = judged(hang, tests, reveal=False, grading="lcb", per_test_s=0.5)
    assert j.reward == pytest.approx(1 / 3) and not j.passed
    assert "Time limit exceeded on test 2 (limit 0.5 s per test)" in j.feedback
    assert "1 test(s) not run: grading stops at the first failing test" in j.feedback
    j = judged(hang, tests, reveal=False, grading="lenient", per_test_s=0.5)
    assert j.reward == pytest.approx(2 / 3)  # lenient grades every test


def test_lcb_defaults_to_livecodebench_time_limit():
    from opsd_platform.worlds.code.extract import LCB_TIMEOUT_S
    from opsd_platform.worlds.code.judge import _Run

    assert LCB_TIMEOUT_S == 6.0
    run = _Run("", None, "lcb", LCB_TIMEOUT_S, FAST, [{}, {}, {}], {})
    assert run.whole_run_s == (6 + 1) * 3 + 5 + 6  # LCB's global bound, plus the module's load


def test_lcb_public_feedback_shows_input_expected_got_and_traceback():
    tests = [TestCase("1 2\n", "3\n"), TestCase("4 5\n", "9\n", hidden=True)]
    j = judged("a, b = map(int, input().split())\nprint(a * b)\n", tests, reveal=False, grading="lcb")
    assert "Wrong answer on test 1.\nInput:\n1 2\nExpected:\n3\nGot:\n2" in j.feedback
    j = judged("a, b = map(int, input().split())\nprint(a // (b - 2))\n", tests, reveal=False, grading="lcb")
    assert "Runtime error on test 1." in j.feedback and "ZeroDivisionError" in j.feedback
    assert 'File "solution.py", line 2' in j.feedback
