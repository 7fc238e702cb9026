"""CodeJsonlWorld: LiveCodeBench-format records read as they are released, judged by LCB's verdicts by
default (``world.grading=lcb``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from opsd_platform.errors import WorldError
from opsd_platform.sandbox import SandboxLimits
from opsd_platform.worlds.base import Judgement, Problem, check_split
from opsd_platform.worlds.code.compare import parse_args
from opsd_platform.worlds.code.extract import TestCase, check_grading
from opsd_platform.worlds.code.judge import judge_all, judge_code, tests_of
from opsd_platform.worlds.code.lcb import decode_lcb_tests
from opsd_platform.worlds.jsonl import read_jsonl

_DIFF_MAP = {"easy": 1, "medium": 2, "hard": 3}


class CodeJsonlWorld:
    """LiveCodeBench code-generation records read as they are released.

    Fields used: question_id, question_title, question_content, starter_code,
    public_test_cases / private_test_cases (JSON strings; private ones may be
    base64+zlib+pickle compressed, decoded with a restricted unpickler), metadata (JSON string or
    dict; ``func_name`` for functional tests), difficulty (easy/medium/hard). Public tests are
    shown in the statement; private ones are hidden unless `reveal_hidden`.

    LiveCodeBench has no reference solutions, so ``Problem.reference`` is the public test cases
    with their expected outputs (what a privileged teacher can legitimately be shown).
    The train/val split is a hash of (seed, question_id): stable when records are added.

    `grading="lcb"` (default): LiveCodeBench's verdicts, 6 s per test (`per_test_s`), `limits`
    for memory and output only. `grading="lenient"`: the friendlier judge; `limits.wall_s` bounds
    all tests of a response together.
    """

    name = "code"

    def __init__(self, path: str, seed: int = 0, val_fraction: float = 0.2,
                 limits: SandboxLimits | None = None, reveal_hidden: bool = False,
                 max_problems: int | None = None, workers: int = 2, grading: str = "lcb",
                 per_test_s: float | None = None) -> None:
        check_grading(grading)
        if not 0.0 <= float(val_fraction) <= 1.0:
            raise WorldError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
        if max_problems is not None and max_problems < 1:
            raise WorldError(f"max_problems must be >= 1, got {max_problems!r}")
        self.path, self.seed, self.val_fraction = str(path), seed, float(val_fraction)
        self.limits = limits or SandboxLimits(wall_s=30.0, cpu_s=30, memory_mb=1024)
        self.reveal_hidden = reveal_hidden
        self.workers = workers
        self.grading, self.per_test_s = grading, per_test_s
        rows = read_jsonl(self.path)
        if not rows:
            raise WorldError(f"{self.path}: empty dataset")
        if max_problems is not None:
            rows = rows[:max_problems]
        splits: dict[str, list[Problem]] = {"train": [], "val": []}
        seen: dict[str, int] = {}
        for lineno, rec in rows:
            p = self._problem(rec, lineno)
            if p.id in seen:
                raise WorldError(f"{self.path}:{lineno}: duplicate question_id {p.id!r} (first on line {seen[p.id]})")
            seen[p.id] = lineno
            splits[self._split_of(p.id)].append(p)
        self._problems = splits

    def _split_of(self, qid: str) -> str:
        h = hashlib.sha256(f"{self.seed}:{qid}".encode()).digest()
        return "val" if int.from_bytes(h[:8], "big") / 2**64 < self.val_fraction else "train"

    def _problem(self, rec: dict[str, Any], lineno: int) -> Problem:
        where = f"{self.path}:{lineno}"
        for key in ("question_id", "question_content", "public_test_cases"):
            if key not in rec:
                raise WorldError(f"{where}: missing field {key!r}")
        qid = rec["question_id"]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
            raise WorldError(f"{where}: field 'question_id' must be a non-empty string")
        qid = str(qid)
        content = rec["question_content"]
        if not isinstance(content, str):
            raise WorldError(f"{where}: field 'question_content' must be a string")
        title = rec.get("question_title") or qid
        starter = rec.get("starter_code") or ""
        if not isinstance(starter, str) or not isinstance(title, str):
            raise WorldError(f"{where}: 'question_title' and 'starter_code' must be strings")
        tests: list[TestCase] = []
        for key, hidden in (("public_test_cases", False), ("private_test_cases", True)):
            try:
                decoded = decode_lcb_tests(rec.get(key))
            except ValueError as e:
                raise WorldError(f"{where}: bad {key}: {e}") from None
            tests += [TestCase(d["input"], d["output"], d["testtype"], hidden) for d in decoded]
        if not tests:
            raise WorldError(f"{where}: no test cases")
        meta = rec.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except json.JSONDecodeError as e:
                raise WorldError(f"{where}: field 'metadata' is not JSON: {e.msg}") from None
        if not isinstance(meta, dict):
            raise WorldError(f"{where}: field 'metadata' must be an object")
        func_name = meta.get("func_name")
        kinds = {t.testtype for t in tests}
        if "functional" in kinds:
            if not isinstance(func_name, str) or not func_name.isidentifier():
                raise WorldError(f"{where}: functional tests need metadata.func_name (a Python identifier)")
            for k, t in enumerate(tests):
                if t.testtype != "functional":
                    continue
                try:
                    parse_args(t.input)
                    json.loads(t.output)
                except (WorldError, json.JSONDecodeError) as e:
                    raise WorldError(f"{where}: functional test {k + 1}: {e}") from None
        diff = rec.get("difficulty", 1)
        difficulty = _DIFF_MAP.get(str(diff).lower(), diff if isinstance(diff, int) and not isinstance(diff, bool) else 1)
        public = [t for t in tests if not t.hidden]
        prompt = self._prompt(title, content, starter, "functional" in kinds, func_name)
        reference = "No reference solution is available (LiveCodeBench); the public test cases:\n" + (
            "\n".join(f"Input:\n{t.input.rstrip()}\nExpected output:\n{t.output.rstrip()}" for t in public)
            if public else "(none)")
        data = {
            "tests": [t.to_dict() for t in tests],
            "func_name": func_name,
            "starter_code": starter,
            "platform": rec.get("platform"),
            "contest_date": rec.get("contest_date"),
            "line": lineno,
        }
        return Problem(id=qid, prompt=prompt, reference=reference, difficulty=int(difficulty), data=data)

    @staticmethod
    def _prompt(title: str, content: str, starter: str, functional: bool, func_name: str | None) -> str:
        parts = [f"### {title}", "", content.strip(), ""]
        if functional or starter.strip():
            parts += [
                "### Format",
                "Complete the following starter code. Return the complete class/function"
                + (f" (with the method `{func_name}`)" if func_name else "")
                + " in a single ```python code block; do not read from stdin.",
                "```python",
                starter.rstrip(),
                "```",
            ]
        else:
            parts += [
                "### Format",
                "Write a complete Python program that reads the input from standard input and "
                "writes the answer to standard output. Return the program in a single ```python "
                "code block.",
            ]
        return "\n".join(parts)

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._problems[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        return judge_code(response, tests_of(problem), func_name=problem.data.get("func_name"),
                          limits=self.limits, reveal_hidden=self.reveal_hidden, grading=self.grading,
                          per_test_s=self.per_test_s)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        return judge_all(self, problems, responses, self.workers)


