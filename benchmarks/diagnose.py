"""Diagnostics before a grid: truncation, format, gap at both temperatures, where the divergence sits.

    python -m benchmarks.diagnose --grid bench-v2 --slice law-pyfunc [--problems 32] [--out NAME]

For each slice named, on the *initial* model and the slice's own settings (the grid file's base,
the slice's overrides, seed 0), and for every OPSD context the slice lists (graded at its shares):

- the student's samples on the gap problems at the rollout temperature and at the validation
  temperature: pass rate, share cut by the token cap, share ended by the model (EOS or stop
  string), share the world's grader can extract an answer from;
- the self-teacher's answers under each context, the same numbers, and the gap with a bootstrap
  interval over problems, at both temperatures;
- on the student's rollout-temperature samples, the per-token reverse KL(student || teacher) on
  the top-K + tail support, split by position class (first tokens, fence tokens, EOS, the rest)
  and the tail bucket's share (opsd_platform/training/diagnostics.py).

Contexts a world cannot build (no reference for a `reference`-based context) are skipped and the
table says why. Writes benchmarks/results/diagnose-<name>.json and .md and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import git_commit
from opsd_platform.config.compose import train_config
from opsd_platform.gap.measure import bootstrap_means, teacher_messages
from opsd_platform.process import configure_process
from opsd_platform.search.grid import load_spec, points
from opsd_platform.training.contexts import context_label
from opsd_platform.training.diagnostics import (
    length_stats,
    monotone,
    position_classes,
    split_divergence,
    token_divergence_terms,
)
from opsd_platform.training.evaluation import Evaluation, cpu_seconds, seeded_stream
from opsd_platform.training.sequences import chat_ids, eos_ids, is_eos

RESULTS = Path(__file__).resolve().parent / "results"
DIVERGENCE_ROWS = 64  # student samples scored per context for the divergence split (16 problems x 4)


def extractable(cfg, text: str) -> bool:
    """Whether the world's grader finds an answer in `text` at all (right or wrong)."""
    if cfg.world.name == "arithmetic":
        from opsd_platform.worlds.arithmetic.answers import extract_answer

        return extract_answer(text) is not None
    if cfg.world.name in ("pyfunc", "code"):
        from opsd_platform.worlds.code.extract import extract_code

        return extract_code(text, cfg.world.grading or "lenient") is not None
    return True


REFERENCE_BASED = ("reference", "graded", "shuffled_reference")


def skip_reason(context: str, problems, has_context: list[bool]) -> str | None:
    """Why a context cannot be diagnosed on these problems (None: it can)."""
    if any(has_context):
        return None
    if context in REFERENCE_BASED and not any(p.reference.strip() for p in problems):
        return f"skipped: {context} shows a reference, and this world's problems have none"
    return f"skipped: no sample had a {context} context (e.g. feedback when every sample passed, or no peer passed)"


def sample(engine, world, cfg, problems, messages, k: int, temperature: float, top_p: float, label: str):
    """k answers per message from a seeded stream: (Evaluation, per-row (length, ended) lists)."""
    with seeded_stream(cfg.seed, label):
        ro = engine.generate(messages, n=k, max_new_tokens=cfg.rollout.max_new_tokens, temperature=temperature,
                             top_p=top_p)
    row_problems = [problems[g] for g in ro.group]
    judgements = world.judge_many(row_problems, ro.texts)
    eos = eos_ids(engine.tokenizer, engine.model)
    lengths = ro.response_mask.sum(dim=1).tolist()
    ended = (is_eos(ro.response_ids, eos) & ro.response_mask).any(dim=1).tolist()
    ended = [e or bool(getattr(ro, "stopped", None) and ro.stopped[i]) for i, e in enumerate(ended)]
    per_problem = [sum(j.passed for j in judgements[b * k:(b + 1) * k]) / k for b in range(len(messages))]
    ev = Evaluation(pass_rate=float(np.mean(per_problem)), reward_mean=float(np.mean([j.reward for j in judgements])),
                    per_problem=per_problem, tokens=ro.num_tokens,
                    prompt_tokens=sum(map(len, ro.prompt_ids)) / len(ro.prompt_ids), texts=ro.texts,
                    judgements=judgements)
    return ev, ro, lengths, ended


def side_row(cfg, ev: Evaluation, lengths, ended) -> dict:
    stats = length_stats(lengths, ended, cfg.rollout.max_new_tokens)
    fmt = float(np.mean([extractable(cfg, t) for t in ev.texts]))
    return {"pass": ev.pass_rate, "mean_tokens": stats.mean_tokens, "capped": stats.capped, "ended": stats.eos,
            "format": fmt, "examples": list(ev.texts[:3])}


def divergence(model, tokenizer, ro, messages_t: list[str], has_context: list[bool], top_k: int) -> dict:
    """The divergence split on the first DIVERGENCE_ROWS student samples that have a context."""
    import torch

    from opsd_platform.training.packing import response_logits

    rows = [i for i, h in enumerate(has_context) if h][:DIVERGENCE_ROWS]
    if not rows:
        return {}
    eos = eos_ids(tokenizer, model)
    terms, masks, classes = [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            idx = rows[start:start + 8]
            ids, mask = ro.response_ids[idx], ro.response_mask[idx]
            s = response_logits(model, [ro.prompt_ids[i] for i in idx], ids, mask, tokenizer.pad_token_id)
            t = response_logits(model, [chat_ids(tokenizer, messages_t[i]) for i in idx], ids, mask,
                                tokenizer.pad_token_id)
            terms.append(token_divergence_terms(s, t, ids, top_k))
            masks.append(mask)
            for r in range(len(idx)):
                n = int(mask[r].sum())
                toks = ids[r, :n].tolist()
                classes.append(position_classes([tokenizer.decode([x]) for x in toks], [x in eos for x in toks]))
    width = max(x.shape[1] for x in terms)
    pad = [torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1])) for x in terms]
    pad_m = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
    split = split_divergence(torch.cat(pad), torch.cat(pad_m), classes)
    return {"rows": len(rows), "total": split.total, "mean_per_token": split.mean_per_token, "share": split.share,
            "mean": split.mean, "count": split.count, "tail_share": split.tail_share}


def opsd_contexts(slice_points) -> list[tuple[str, float]]:
    """(context, graded_fraction) of the slice's OPSD configurations, in file order, once each."""
    seen: dict[str, tuple[str, float]] = {}
    for p in slice_points:
        cfg = train_config(list(p.overrides))
        if cfg.algorithm != "opsd":
            continue
        seen.setdefault(context_label(cfg.context, cfg.graded_fraction if cfg.context == "graded" else None),
                        (cfg.context, cfg.graded_fraction))
    return list(seen.values())


def diagnose_slice(spec: dict, slice_name: str, n_problems: int | None, extra: list[str],
                   student_only: bool = False, only: list[str] | None = None,
                   graded_shares: list[float] | None = None) -> dict:
    import torch

    from opsd_platform.models import load_policy
    from opsd_platform.training.rollout import engine_for
    from opsd_platform.worlds import make_world

    torch.set_num_threads(1)
    every = points(spec, only=[slice_name])  # composed once: each configuration is a Hydra compose
    pts = [p for p in every if p.seed == min(q.seed for q in every)]
    if not pts:
        raise SystemExit(f"diagnose: no slice {slice_name!r} in {spec['path']}")
    contexts = opsd_contexts(pts)
    if graded_shares is not None:  # the dial at these shares instead of the slice's own
        contexts = [c for c in contexts if c[0] != "graded"] + [("graded", f) for f in graded_shares]
    if only:
        contexts = [c for c in contexts if c[0] in only]
    base = train_config(list(pts[0].overrides) + extra)
    cfg = base
    n = cfg.gap.samples or cfg.rollout.samples_per_prompt
    model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
    world = make_world(cfg.world, seed=cfg.seed)
    engine = engine_for(cfg, model, tokenizer, cfg.gap.batch_size)
    problems = world.problems(cfg.gap.split)[: n_problems or cfg.gap.n_problems]
    temps = {"rollout": (cfg.rollout.temperature, cfg.rollout.top_p),
             "validation": (cfg.rollout.val_temperature, cfg.rollout.val_top_p)}
    out = {"slice": slice_name, "overrides": list(pts[0].overrides) + extra, "problems": len(problems), "samples": n,
           "max_new_tokens": cfg.rollout.max_new_tokens, "temperatures": temps, "student": {}, "contexts": []}
    if temps["rollout"] == temps["validation"]:  # one temperature (bench-v2): measured once
        temps = {"rollout": temps["rollout"]}
        out["temperatures"] = temps
    students = {}
    for name, (temp, top_p) in temps.items():
        t0 = cpu_seconds()
        ev, ro, lengths, ended = sample(engine, world, cfg, problems, [p.prompt for p in problems], n, temp, top_p,
                                        "gap/student")
        students[name] = (ev, ro)
        out["student"][name] = {**side_row(cfg, ev, lengths, ended), "cpu_s": cpu_seconds() - t0}
        print(f"[{slice_name}] student @{name} T={temp}: {out['student'][name]}", flush=True)
    for context, share in [] if student_only else contexts:
        label = context_label(context, share if context == "graded" else None)
        row = {"context": label}
        for name, (temp, top_p) in temps.items():
            s_ev, ro = students[name]
            try:
                messages, has = teacher_messages(context, problems, s_ev, n, share)
            except ValueError as exc:
                row["skipped"] = str(exc)
                break
            why = skip_reason(context, problems, has)
            if why is not None:
                row[name] = {"skipped": why}
                print(f"[{slice_name}] {label}: {why}", flush=True)
                continue
            t0 = cpu_seconds()
            row_problems = [problems[i // n] for i in range(len(messages))]
            t_ev, _, lengths, ended = sample(engine, world, cfg, row_problems, messages, 1, temp, top_p,
                                             f"gap/teacher/{label}")
            t_pass = np.array(t_ev.per_problem).reshape(len(problems), n).mean(axis=1)
            s_pass = np.array(s_ev.per_problem)
            _, _, g_ci = bootstrap_means(s_pass, t_pass, n_boot=2000, level=0.9, seed=cfg.seed)
            row[name] = {**side_row(cfg, t_ev, lengths, ended), "gap": float(t_pass.mean() - s_pass.mean()),
                         "gap_ci90": g_ci, "coverage": float(np.mean(has)), "cpu_s": cpu_seconds() - t0}
            if name == "rollout":
                row["divergence"] = divergence(model, tokenizer, ro, messages, has, cfg.loss.top_k)
        out["contexts"].append(row)
        print(f"[{slice_name}] {label}: " + json.dumps({k: v for k, v in row.items() if k != "context"},
                                                       default=float)[:600], flush=True)
    graded = [r for r in out["contexts"] if r["context"].startswith("graded@") and "rollout" in r]
    if graded:
        for name in temps:
            ordered = sorted(graded, key=lambda r: float(r["context"].split("@")[1]))
            gaps = [r[name]["gap"] for r in ordered if "gap" in r.get(name, {})]
            out.setdefault("graded_monotone", {})[name] = monotone(gaps)
    return out


def fmt(x, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"### {r['slice']} ({r['problems']} problems x {r['samples']}, "
                  f"cap {r['max_new_tokens']} tokens)", "",
                  "| who | T | pass | gap [90 %] | tokens | capped | ended | format |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in r["student"].items():
            t = r["temperatures"][name][0]
            lines.append(f"| student | {t} | {fmt(s['pass'])} | | {fmt(s['mean_tokens'], 0)} | {fmt(s['capped'])} | "
                         f"{fmt(s['ended'])} | {fmt(s['format'])} |")
        for c in r["contexts"]:
            for name in r["temperatures"]:
                s = c.get(name)
                if not s or "skipped" in s:
                    lines.append(f"| {c['context']} | | skipped: {(s or c).get('skipped', '')} | | | | | |")
                    continue
                t = r["temperatures"][name][0]
                lines.append(f"| {c['context']} | {t} | {fmt(s['pass'])} | {s['gap']:+.2f} [{s['gap_ci90'][0]:+.2f}, "
                             f"{s['gap_ci90'][1]:+.2f}] | {fmt(s['mean_tokens'], 0)} | {fmt(s['capped'])} | "
                             f"{fmt(s['ended'])} | {fmt(s['format'])} |")
        lines += ["", "Divergence KL(s||t) on the student's samples (rollout temperature): mean per token, and share "
                  "of the total by position class and in the tail bucket", "",
                  "| context | mean/token | first | fence | eos | other | tail |", "|---|---|---|---|---|---|---|"]
        for c in r["contexts"]:
            d = c.get("divergence")
            if d:
                sh = d["share"]
                lines.append(f"| {c['context']} | {d['mean_per_token']:.3f} | {fmt(sh['first'])} | "
                             f"{fmt(sh['fence'])} | "
                             f"{fmt(sh['eos'])} | {fmt(sh['other'])} | {fmt(d['tail_share'])} |")
        if "graded_monotone" in r:
            lines += ["", f"Graded gap monotone in the share: {r['graded_monotone']}"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    configure_process(log_level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="bench-v2", help="grid file (conf/grid/<name>.yaml)")
    ap.add_argument("--slice", action="append", required=True, help="slice to diagnose (repeatable)")
    ap.add_argument("--problems", type=int, default=None, help="gap problems (default: the slice's gap.n_problems)")
    ap.add_argument("--out", default=None, help="results name (default: <grid>-<slices>)")
    ap.add_argument("--student-only", action="store_true", help="only the student's samples (a token cap check)")
    ap.add_argument("--contexts", nargs="+", default=None, help="only these contexts of the slice")
    ap.add_argument("--graded-shares", nargs="+", type=float, default=None,
                    help="the graded context at these shares (e.g. 0 0.25 0.5 0.75 1) instead of the slice's")
    ap.add_argument("overrides", nargs="*", help="extra train overrides (e.g. rollout.max_new_tokens=256)")
    args = ap.parse_args(argv)
    spec = load_spec(args.grid)
    t0 = time.time()
    results = [diagnose_slice(spec, s, args.problems, args.overrides, args.student_only, args.contexts,
                              args.graded_shares) for s in args.slice]
    name = args.out or f"{spec['name']}-{'-'.join(args.slice)}"
    commit = git_commit()
    doc = {"command": "python -m benchmarks.diagnose " + " ".join(sys.argv[1:] if argv is None else argv),
           "commit": commit, "grid": spec["name"], "wall_s": time.time() - t0, "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"diagnose-{name}.json").write_text(json.dumps(doc, indent=1, default=float))
    text = markdown(results)
    (RESULTS / f"diagnose-{name}.md").write_text(f"`{doc['command']}` (commit {commit})\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
