"""Does the per-entry token clip keep "student = teacher" the minimum of the OPSD loss? On tensors, and on
the recorded runs.

    python -m benchmarks.token_clip [--grid bench-v2] [--data benchmarks/data] [--steps 400]

Why. bench-v2's recipe (conf/grid/bench-v2.yaml) clips each support entry's divergence term to
[-0.05, 0.05] before summing (`loss.token_clip`, after OPSD's per-vocabulary clip). A divergence is
>= 0 with its minimum at student = teacher; a sum of *clipped* terms is neither: once some positive
terms are capped, the loss can fall below 0 by moving other terms negative, so the student is pulled
*away* from the teacher. This report measures that in two places:

1. **tensors** (seconds, no model): free student logits start near a teacher's (a small random
   perturbation: what a few optimizer steps leave behind) and descend the loss with Adam, for each
   divergence x support x clip form (none; `loss.clip_mode=entry`: both signs; OPSD's reference code:
   upper only; `loss.clip_mode=position`: each position's summed divergence capped, which stays >= 0).
   Without a clip the student returns to the teacher (KL -> 0); with one it moves away (KL grows,
   the loss goes negative), and under reverse KL its entropy falls: it sharpens.
2. **the recorded runs** of `--grid`: per slice, the share of runs whose training loss over the
   second half of training is negative (impossible for an unclipped divergence) and its mean; and
   where a slice re-runs another's points without the clip (``pilot-clip-arithmetic`` beside
   ``law-arithmetic-v2``), the pairs at equal (context, seed): improvement and late loss, with and
   without the clip.

Writes benchmarks/results/token-clip.{json,md} and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from benchmarks.provenance import git_commit
from opsd_platform.errors import ExportError
from opsd_platform.law.export import only_grid, read_table
from opsd_platform.process import configure_process
from opsd_platform.training.contexts import context_label
from opsd_platform.training.losses import divergence_on_support, divergence_terms, support_index, support_logprobs

RESULTS = Path("benchmarks/results")
CLIP = 0.05
# no clip; loss.clip_mode=entry (losses.divergence_on_support); OPSD's code (clamp(max=) per entry, not in
# the library); loss.clip_mode=position: each position's summed divergence capped, still >= 0, 0 only at the teacher
CLIP_FORMS = ("none", "both", "upper", "position")
# (slice with the clip, slice that re-runs its points without it)
PAIRED_SLICES = (("law-arithmetic-v2", "pilot-clip-arithmetic"),)


def clipped_loss(student: torch.Tensor, teacher: torch.Tensor, divergence: str, support: str,
                 form: str) -> torch.Tensor:
    """The per-position OPSD loss (mean over positions) with the clip in one of CLIP_FORMS. [N, 1, V] logits."""
    index = support_index(student, student.argmax(-1), support, top_k=20)
    log_s, log_t = support_logprobs(student, index, support), support_logprobs(teacher, index, support)
    if form == "upper":  # OPSD's code: not an option of ours, so written out here
        return divergence_terms(log_s, log_t, divergence).clamp(max=CLIP).sum(-1).mean()
    clip = {"none": {"token_clip": None}, "both": {"token_clip": CLIP, "clip_mode": "entry"},
            "position": {"token_clip": CLIP, "clip_mode": "position"}}[form]
    return divergence_on_support(log_s, log_t, support=support, divergence=divergence, **clip).mean()


def entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the distributions over the last axis."""
    log_p = logits.log_softmax(-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def descend(divergence: str, support: str, form: str, *, scale: float, noise: float, steps: int,
            positions: int = 64, vocab: int = 50, seed: int = 0) -> dict:
    """Adam on free student logits that start at the teacher's plus noise; where they end up."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(positions, 1, vocab, generator=g) * scale
    student = (teacher + noise * torch.randn(teacher.shape, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([student], lr=0.02)

    def kl_to_teacher() -> float:
        ls, lt = student.detach().log_softmax(-1), teacher.log_softmax(-1)
        return float((ls.exp() * (ls - lt)).sum(-1).mean())

    kl_start = kl_to_teacher()
    for _ in range(steps):
        loss = clipped_loss(student, teacher, divergence, support, form)
        opt.zero_grad()
        loss.backward()
        opt.step()
    kl_end = kl_to_teacher()
    with torch.no_grad():
        loss_end = float(clipped_loss(student, teacher, divergence, support, form))
    return {"divergence": divergence, "support": support, "clip": form, "teacher_scale": scale, "noise": noise,
            "loss_end": loss_end, "kl_start": kl_start,
            "kl_end": kl_end, "entropy_teacher": entropy(teacher), "entropy_student": entropy(student.detach())}


def tensor_rows(steps: int) -> list[dict]:
    return [descend(div, sup, form, scale=scale, noise=0.3, steps=steps) for scale in (2.0, 4.0)
            for div in ("reverse", "forward") for sup in ("topk", "full") for form in CLIP_FORMS]


def late_loss(steps: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean training loss over the second half of its steps, and whether it is below 0."""
    half = steps[steps["step"] >= steps.groupby("run_id")["step"].transform("max") / 2]
    out = half.groupby("run_id")["train_loss"].mean().rename("loss_late").to_frame()
    out["negative"] = out["loss_late"] < 0
    return out


def slice_rows(runs: pd.DataFrame, late: pd.DataFrame) -> list[dict]:
    opsd = runs[runs["algorithm"].fillna("opsd") == "opsd"].join(late, on="run_id", how="inner")
    rows = []
    for name, g in opsd.groupby("slice"):
        clip = g["loss.token_clip"].dropna().unique()
        rows.append({"slice": name, "runs": len(g), "token_clip": float(clip[0]) if len(clip) else None,
                     "negative_share": float(g["negative"].mean()), "loss_late_mean": float(g["loss_late"].mean())})
    return rows


def pair_rows(runs: pd.DataFrame, late: pd.DataFrame) -> list[dict]:
    runs = runs.join(late, on="run_id", how="inner").assign(
        label=lambda d: [context_label(c, f) for c, f in zip(d["context"], d["graded_fraction"])])
    rows = []
    for clipped, free in PAIRED_SLICES:
        a, b = runs[runs["slice"] == clipped], runs[runs["slice"] == free]
        both = a.merge(b, on=["label", "seed"], suffixes=("_clip", "_free"))
        for _, r in both.sort_values(["label", "seed"]).iterrows():
            rows.append({"context": r["label"], "seed": int(r["seed"]), "gap": float(r["gap_clip"]),
                         **{f"{m}_{side}": float(r[f"{m}_{side}"])
                            for m in ("improvement", "loss_late") for side in ("clip", "free")}})
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows])


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="bench-v2", help="the grid whose runs to read")
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    ap.add_argument("--steps", type=int, default=400, help="Adam steps of the tensor experiment")
    args = ap.parse_args(argv)
    try:
        runs = only_grid(read_table(args.data / "runs.csv"), args.grid, args.data / "runs.csv")
    except ExportError as exc:
        print(f"token_clip: {exc}", file=sys.stderr)
        return 2
    late = late_loss(pd.read_csv(args.data / "steps.csv"))
    doc = {"command": "python -m benchmarks.token_clip " + " ".join(sys.argv[1:] if argv is None else argv),
           "commit": git_commit(), "grid": args.grid, "clip": CLIP, "tensors": tensor_rows(args.steps),
           "slices": slice_rows(runs, late), "pairs": pair_rows(runs, late)}
    text = "\n\n".join([
        "Tensors: free student logits from teacher + N(0, 0.3) noise, Adam lr 0.02, "
        f"{args.steps} steps, 64 positions x 50 outcomes (teacher logits N(0, scale))",
        table(doc["tensors"], ["teacher_scale", "divergence", "support", "clip", "loss_end", "kl_start", "kl_end",
                               "entropy_teacher", "entropy_student"]),
        f"Recorded runs of {args.grid}: training loss over the second half of each run",
        table(doc["slices"], ["slice", "runs", "token_clip", "negative_share", "loss_late_mean"]),
        "The same points with and without the clip",
        table(doc["pairs"], ["context", "seed", "gap", "improvement_clip", "improvement_free", "loss_late_clip",
                             "loss_late_free"]) if doc["pairs"] else "(no re-run without the clip recorded yet)",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "token-clip.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "token-clip.md").write_text(f"`{doc['command']}` (commit {doc['commit']})\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
