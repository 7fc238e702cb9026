"""What the code-world tests share: a response with its code fenced, and the judge on it with fast limits."""

from __future__ import annotations

from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.base import Judgement
from opsd_platform.worlds.code import TestCase, judge_code

FAST = SandboxLimits(wall_s=10.0, cpu_s=10)
STDIN_TESTS = [TestCase("1 2\n", "3\n"), TestCase("4 5\n", "9"), TestCase("10 -3\n", "7\n", hidden=True)]


def fenced(code: str, lang: str = "python") -> str:
    """A model's answer with `code` in a fenced block."""
    return f"Here is my solution.\n```{lang}\n{code}```\n"


def judged(code: str, tests=STDIN_TESTS, func_name=None, reveal=True, **kw) -> Judgement:
    """judge_code on `code` fenced, FAST limits unless given."""
    limits = kw.pop("limits", FAST)
    return judge_code(fenced(code), tests, func_name=func_name, limits=limits, reveal_hidden=reveal, **kw)
