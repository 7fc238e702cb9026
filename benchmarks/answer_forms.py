"""What the trained students answer: the form of each run's validation answers, beside its improvement.

    python -m benchmarks.answer_forms --grid bench-v2 --slices law-arithmetic-v2 [--data benchmarks/data]

bench-v2's arithmetic law slice showed improvements that swing by ~0.5 between seeds of one
configuration while its gaps reproduce. The pass rate alone cannot say what happened; the answers
can. Every run logs its validation answers with their verdicts (`samples/val_initial.json`,
`samples/val_final.json`, training/module.py: all of them from commit 87181f6 on, the first 24
before). This report reads them from the run's
MLflow store (the store the table's run ids live in: `--tracking-uri`, default $OPSD_HOME's) and, per
run, reduces them to their *form*: the text with every number replaced by `#` and whitespace
collapsed (the "skeleton"). A student that learned to compute keeps a form such as `# + # = #`; one
that learned the teacher's phrasing without its content settles on a form that carries no
computation (`The answer is #`) or none at all. Per run:

- `pass`: the share of the logged answers that pass (the run's pass rate when all are logged);
- `top_form` and `top_share`: the most common skeleton and the share of answers that take it;
- `forms`: distinct skeletons per answer (1.0: every answer different; 1/24: one form for all);
- the same for the initial student (`top_share_initial`), and an example answer of the top form.

Runs whose artifacts are not in the store (a table exported elsewhere) are listed as missing, not
guessed. Writes benchmarks/results/answer-forms-<grid>.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from benchmarks.provenance import git_commit
from opsd_platform.config.schema import TrackingConfig
from opsd_platform.errors import ExportError
from opsd_platform.law.export import only_grid, read_table
from opsd_platform.process import configure_process
from opsd_platform.training.contexts import context_label

RESULTS = Path("benchmarks/results")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def skeleton(text: str) -> str:
    """An answer's form: numbers as `#`, whitespace runs as one space, trimmed."""
    return " ".join(NUMBER.sub("#", text).split())


def forms(samples: list[dict]) -> dict:
    """The form of a list of logged answers (rows with `response` and `passed`)."""
    if not samples:
        return {"n": 0}
    each = [skeleton(s["response"]) for s in samples]
    shapes = Counter(each)
    top, count = shapes.most_common(1)[0]
    example = samples[each.index(top)]["response"]
    return {"n": len(samples), "pass": sum(bool(s["passed"]) for s in samples) / len(samples),
            "top_form": top, "top_share": count / len(samples), "forms": len(shapes) / len(samples),
            "example": example}


def load_samples(run_id: str, name: str) -> list[dict] | None:
    """A run's logged answers (`samples/<name>.json`) from the current tracking store, or None."""
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/samples/{name}.json")
    except Exception:  # noqa: BLE001 - a run of another store, or one that logged no samples: reported missing
        return None


def run_rows(runs: pd.DataFrame) -> list[dict]:
    """One row per run (sorted by improvement): its context, seed, improvement and answer forms."""
    rows = []
    for _, r in runs.sort_values("improvement").iterrows():
        final, initial = load_samples(r["run_id"], "val_final"), load_samples(r["run_id"], "val_initial")
        row = {"slice": r["slice"], "run_id": r["run_id"], "context": context_label(r["context"], r["graded_fraction"]),
               "seed": int(r["seed"]), "improvement": float(r["improvement"])}
        if final is None or initial is None:
            rows.append({**row, "missing": True})
            continue
        start, end = forms(initial), forms(final)
        rows.append({**row, "missing": False, "pass": end["pass"], "top_share": end["top_share"],
                     "forms": end["forms"], "top_form": end["top_form"], "example": end["example"],
                     "top_share_initial": start["top_share"], "top_form_initial": start["top_form"]})
    return rows


def markdown(rows: list[dict]) -> str:
    columns = ["slice", "context", "seed", "improvement", "pass (logged)", "top_share initial -> final", "forms",
               "top form", "example"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if r["missing"]:
            lines.append(f"| {r['slice']} | {r['context']} | {r['seed']} | {r['improvement']:+.3f} | samples not in "
                         "this store | | | | |")
            continue
        cell = lambda text: "`" + text.replace("|", "\\|").replace("`", "'")[:60] + "`"  # noqa: E731
        lines.append(f"| {r['slice']} | {r['context']} | {r['seed']} | {r['improvement']:+.3f} | {r['pass']:.2f} | "
                     f"{r['top_share_initial']:.2f} -> {r['top_share']:.2f} | {r['forms']:.2f} | "
                     f"{cell(r['top_form'])} | {cell(r['example'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="the grid whose rows to read (bench-v2)")
    ap.add_argument("--slices", nargs="+", required=True, help="slices of that grid")
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--tracking-uri", default=None, help="the store the runs live in (default: $OPSD_HOME's)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run read, else
    import mlflow

    uri = args.tracking_uri or TrackingConfig().resolved_uri()
    mlflow.set_tracking_uri(uri)
    try:
        table = only_grid(read_table(args.data / "runs.csv"), args.grid, args.data / "runs.csv")
    except ExportError as exc:
        print(f"answer_forms: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.slices) - set(table["slice"]))
    if unknown:
        print(f"answer_forms: no rows of slice(s) {', '.join(unknown)} in grid {args.grid} "
              f"({args.data / 'runs.csv'})", file=sys.stderr)
        return 2
    rows = run_rows(table[table["slice"].isin(args.slices)])
    text = markdown(rows)
    command = "python -m benchmarks.answer_forms " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"command": command, "commit": git_commit(), "tracking_uri": uri, "grid": args.grid, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"answer-forms-{args.grid}.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / f"answer-forms-{args.grid}.md").write_text(f"`{command}` (commit {doc['commit']})\n\n{text}\n")
    print(text)
    missing = sum(r["missing"] for r in rows)
    if missing:
        print(f"\n{missing} of {len(rows)} runs have no logged answers in {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
