"""JSONL input for worlds and for `opsd judge`: every error names the file and the line."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from .base import Problem, World, WorldError


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of `path`; a blank file gives []."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise WorldError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise WorldError(f"{name}: is a directory, expected a .jsonl file") from None
    except UnicodeDecodeError as e:
        raise WorldError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise WorldError(f"{name}: cannot read: {e.strerror}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorldError(f"{name}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise WorldError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        out.append((lineno, obj))
    return out


def judge_responses(
    world: World, problems_by_id: Mapping[str, Problem], responses_path: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """Judge a JSONL file of ``{"question_id": ..., "response": "..."}`` lines (for `opsd judge`).

    Returns one dict per line, in file order: question_id, reward, passed, feedback.
    """
    name = os.fspath(responses_path)
    rows = read_jsonl(name)
    if not rows:
        raise WorldError(f"{name}: no responses (empty file)")
    problems: list[Problem] = []
    responses: list[str] = []
    qids: list[str] = []
    for lineno, obj in rows:
        for key in ("question_id", "response"):
            if key not in obj:
                raise WorldError(f"{name}:{lineno}: missing field {key!r}")
        qid, response = obj["question_id"], obj["response"]
        if not isinstance(response, str):
            raise WorldError(f"{name}:{lineno}: field 'response' must be a string")
        key = qid if isinstance(qid, str) else str(qid)
        if key not in problems_by_id:
            raise WorldError(f"{name}:{lineno}: unknown question_id {qid!r}")
        problems.append(problems_by_id[key])
        responses.append(response)
        qids.append(key)
    judgements = world.judge_many(problems, responses)
    return [
        {"question_id": q, "reward": j.reward, "passed": j.passed, "feedback": j.feedback}
        for q, j in zip(qids, judgements)
    ]
