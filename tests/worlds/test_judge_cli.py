"""`opsd judge`: how users check a dataset and its tests, exercising the sandbox from outside."""

import json

from opsd_platform.cli import main
from tests.helpers import FIXTURES

DATA = FIXTURES / "lcb_sample.jsonl"

GOOD_AB = "Here you go:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
BAD_AB = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
GOOD_TWO_SUM = (
    "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
    "        for i, x in enumerate(nums):\n"
    "            if target - x in seen:\n                return [seen[target - x], i]\n"
    "            seen[x] = i\n```"
)
HANG = "```python\nwhile True:\n    pass\n```"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_prints_reward_and_feedback_per_line(tmp_path, capsys):
    responses = write_jsonl(tmp_path / "r.jsonl", [
        {"question_id": "abc001_a", "response": GOOD_AB},
        {"question_id": "abc001_a", "response": BAD_AB},
        {"question_id": "lc_two_sum", "response": GOOD_TWO_SUM},
        {"question_id": "abc001_a", "response": HANG},
        {"question_id": "cf_rev", "response": "I don't know."},
    ])
    code = main(["judge", "world=code", f"problems={DATA}", f"responses={responses}", "world.timeout_s=2"])
    out = capsys.readouterr().out
    assert code == 0
    blocks = out.split("== ")[1:]
    assert len(blocks) == 5
    assert "reward=1.000  passed=True" in blocks[0]
    assert "passed=False" in blocks[1] and "Wrong answer" in blocks[1]
    assert "passed=True" in blocks[2]
    assert "passed=False" in blocks[3] and "time limit" in blocks[3].lower()
    assert "passed=False" in blocks[4] and "code block found" in blocks[4]
    assert "2/5 responses passed" in out


def test_judge_names_file_and_line_of_bad_input(tmp_path, capsys):
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"question_id": "abc001_a", "response": GOOD_AB}) + "\n{not json\n")
    assert main(["judge", "world=code", f"problems={DATA}", f"responses={responses}"]) == 2
    assert f"{responses}:2" in capsys.readouterr().err
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"question_id": "nope", "response": "x"}])
    assert main(["judge", "world=code", f"problems={DATA}", f"responses={unknown}"]) == 2
    assert "unknown question_id 'nope'" in capsys.readouterr().err
    bad_problems = tmp_path / "p.jsonl"
    bad_problems.write_text(DATA.read_text().splitlines()[0] + "\n[1, 2\n")
    assert main(["judge", "world=code", f"problems={bad_problems}", f"responses={unknown}"]) == 2
    assert f"{bad_problems}:2" in capsys.readouterr().err
    assert main(["judge", "world=code", f"problems={tmp_path}/missing.jsonl", f"responses={unknown}"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_judge_grading_lcb_by_default_and_lenient_on_request(tmp_path, capsys):
    tilde = "~~~python\na, b = map(int, input().split())\nprint(a + b)\n~~~"  # LCB reads only ``` fences
    responses = write_jsonl(tmp_path / "r.jsonl", [{"question_id": "abc001_a", "response": tilde}])
    assert main(["judge", "world=code", f"problems={DATA}", f"responses={responses}"]) == 0
    out = capsys.readouterr().out
    assert "passed=False" in out and "0/1 responses passed (grading=lcb)" in out
    assert main(["judge", "world=code", f"problems={DATA}", f"responses={responses}", "world.grading=lenient"]) == 0
    assert "1/1 responses passed (grading=lenient)" in capsys.readouterr().out
    assert main(["judge", "world=code", f"problems={DATA}", f"responses={responses}", "world.grading=strict"]) == 2
    assert "world.grading: unknown value 'strict'; valid: lcb, lenient" in capsys.readouterr().err
