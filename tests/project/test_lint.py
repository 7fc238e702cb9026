"""The lint gate: `ruff check` (rules and width in pyproject.toml: pyflakes F, import order I, lines of at
most 120 characters E501) over the code the project ships and tests.

F and I hold everywhere. E501 holds in every file but those in LONG_LINES, which hold lines written
before the gate: each may keep at most its count here, so the count can only shrink (lower it when
you shorten lines: `python -m tests.project.test_lint` prints the current counts).

And every test file or fixture the repository names (docs, comments, configs) is where it says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.helpers import ROOT

CHECKED = ["opsd_platform", "benchmarks", "tests", "pipelines"]

# Lines over 120 characters per file when the gate was introduced (Dec 6 2026): a cap, not an allowance.
LONG_LINES: dict[str, int] = {
    "benchmarks/live_search.py": 20,
    "benchmarks/pruning.py": 21,
    "benchmarks/ranked.py": 4,
    "benchmarks/ranked_live.py": 7,
    "benchmarks/ranked_report.py": 3,
    "benchmarks/replay.py": 13,
    "benchmarks/replay_table.py": 17,
    "benchmarks/rollout_floor.py": 17,
    "opsd_platform/cli.py": 13,
    "opsd_platform/compare_grpo.py": 7,
    "opsd_platform/config/schema.py": 29,
    "opsd_platform/demo/__init__.py": 2,
    "opsd_platform/demo/decide.py": 13,
    "opsd_platform/demo/run.py": 10,
    "opsd_platform/jobs.py": 2,
    "opsd_platform/law/calibrate.py": 1,
    "opsd_platform/law/export.py": 9,
    "opsd_platform/law/pipeline.py": 7,
    "opsd_platform/law/registry.py": 2,
    "opsd_platform/search/__init__.py": 1,
    "opsd_platform/search/compare.py": 10,
    "opsd_platform/search/grid.py": 7,
    "opsd_platform/search/objective.py": 8,
    "opsd_platform/search/pruner.py": 7,
    "opsd_platform/search/ranked.py": 8,
    "opsd_platform/search/report.py": 26,
    "opsd_platform/search/run.py": 7,
    "opsd_platform/search/settings.py": 16,
    "opsd_platform/search/space.py": 1,
    "opsd_platform/search/study.py": 4,
    "opsd_platform/servers.py": 1,
    "opsd_platform/training/checkpoint.py": 1,
    "opsd_platform/gap/measurements.py": 3,
    "opsd_platform/training/module.py": 5,
    "opsd_platform/training/packing.py": 5,
    "opsd_platform/training/precision.py": 1,
    "opsd_platform/training/resume.py": 1,
    "opsd_platform/training/rollout.py": 3,
    "opsd_platform/runs/train.py": 3,
    "opsd_platform/worlds/arithmetic/__init__.py": 1,
    "opsd_platform/worlds/code/harness_program.py": 4,
    "opsd_platform/worlds/code/judge.py": 2,
    "opsd_platform/worlds/code/world.py": 1,
    "opsd_platform/worlds/pyfunc/bank.py": 21,
    "tests/benchmarks/test_grpo_report.py": 2,
    "tests/benchmarks/test_live_search.py": 7,
    "tests/config/test_config_cli.py": 8,
    "tests/data/replay_fixture/make_fixture.py": 3,
    "tests/demo/test_demo.py": 2,
    "tests/gap/test_sequential_live.py": 4,
    "tests/law/test_calibrate.py": 2,
    "tests/law/test_law.py": 4,
    "tests/law/test_law_serving.py": 4,
    "tests/law/test_registry.py": 3,
    "tests/project/test_bad_input.py": 29,
    "tests/project/test_browser.py": 4,
    "tests/project/test_compare_grpo.py": 9,
    "tests/project/test_first_hour.py": 4,
    "tests/project/test_layers.py": 3,
    "tests/sandbox/test_hostile_programs.py": 4,
    "tests/search/test_grid.py": 7,
    "tests/search/test_pruning_replay.py": 7,
    "tests/search/test_ranked.py": 7,
    "tests/search/test_search.py": 8,
    "tests/search/test_search_workers.py": 3,
    "tests/training/test_grpo.py": 2,
    "tests/training/test_precision.py": 2,
    "tests/training/test_rollout.py": 7,
    "tests/training/test_scoring.py": 2,
    "tests/worlds/test_code_world.py": 6,
    "tests/worlds/test_lcb_parity.py": 5,
}


def ruff_findings() -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "json", "--no-cache", *CHECKED],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1) and proc.stdout.strip(), (
        f"ruff did not run (install the dev extra: pip install -e '.[dev]'):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def where(finding: dict) -> str:
    return f"{Path(finding['filename']).resolve().relative_to(ROOT)}:{finding['location']['row']}"


def long_lines(findings: list[dict]) -> Counter:
    return Counter(where(f).split(":")[0] for f in findings if f["code"] == "E501")


def test_pyflakes_and_import_order_hold_everywhere():
    bad = [f"{where(f)} {f['code']} {f['message']}" for f in ruff_findings() if f["code"] != "E501"]
    assert not bad, "ruff check (`ruff check --fix` sorts imports):\n" + "\n".join(sorted(bad))


def test_no_file_gains_a_line_over_120_characters():
    findings = ruff_findings()
    counts = long_lines(findings)
    over = {path: n for path, n in counts.items() if n > LONG_LINES.get(path, 0)}
    lines = [where(f) for f in findings if f["code"] == "E501" and where(f).split(":")[0] in over]
    assert not over, (f"lines over 120 characters (file: found, allowed {over}; wrap them):\n"
                      + "\n".join(sorted(lines, key=lambda s: (s.split(':')[0], int(s.split(':')[1])))))


def test_the_long_line_caps_name_files_that_exist():
    stale = [path for path in LONG_LINES if not (ROOT / path).is_file()]
    assert not stale, f"LONG_LINES names files that are gone: {stale}"


TEST_PATH = re.compile(r"(?<![\w/.-])tests/[\w/.-]*\w\.(?:py|yaml|jsonl|csv|md)")


def test_every_test_path_named_in_the_repository_exists():
    """A moved or deleted test leaves no pointer behind (docs, module comments, configs)."""
    texts = [p for p in ROOT.iterdir() if p.suffix in (".md", ".toml", ".yaml") or p.name in ("Makefile", "MLproject")]
    texts += [p for folder in [*CHECKED, "docs", "conf", ".ci"] for p in (ROOT / folder).rglob("*")
              if p.suffix in (".py", ".md", ".yaml", "") and p.is_file() and "__pycache__" not in p.parts]
    named = {(f"{path.relative_to(ROOT)}:{i}", name) for path in texts
             for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             for name in TEST_PATH.findall(line)}
    found = {(where.split(":")[0], name) for where, name in named}
    assert ("README.md", "tests/project/test_journeys.py") in found  # the search sees what it should
    stale = sorted(f"{where}: {name}" for where, name in named if not (ROOT / name).exists())
    assert not stale, "paths under tests/ that do not exist (moved or deleted):\n" + "\n".join(stale)


if __name__ == "__main__":  # the current counts, to paste into LONG_LINES after shortening lines
    for path, n in sorted(long_lines(ruff_findings()).items()):
        print(f'    "{path}": {n},')
