"""The demo's last step: the ranked search (``search.strategy=ranked``, search/ranked.py) on the same
candidates, its policy driven by ``ranked.drive`` as the live search and the replay drive it: the
demo's law is the prior; phase 1's gaps are the live gaps already measured (nothing more to pay);
phase 2 asks for the candidates best-predicted first, and the demo hands it the improvements its
trainings measured, training one more where the policy asks for it while the time budget and
``demo.max_train`` allow. The walk ends where the policy stops (or is done), or where it asks for a
training the demo does not run, which it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from opsd_platform.errors import NotTrained
from opsd_platform.search.ranked import CURVE, DONE, STOP, TRAIN, RankedPolicy, RankedSettings, Step, drive


@dataclass
class RankedWalk:
    steps: list[Step]
    notes: list[str]  # the law's verdict (and any change of law)
    trained: list[str] = field(default_factory=list)  # labels, in the order the policy trained them
    ended: str = ""  # how the walk ended, one sentence
    cpu_s: float = 0.0  # measured CPU-s of the trainings the walk ran itself (the per-trial policy's not trained)


def ranked_walk(gaps: dict[str, float], prior: tuple[Any, Any], label: str, level: float,
                improvement: Callable[[str], float]) -> RankedWalk:
    """The policy over `gaps` (label -> live gap) with `prior` (LawFit, LawCheck); `improvement(label)`
    returns a candidate's measured improvement, training it if need be, or raises NotTrained."""
    policy = RankedPolicy([(k, k) for k in gaps], *prior, label, RankedSettings(level=level))
    walk = RankedWalk(policy.steps, policy.notes)

    def train(key: str, step: Step) -> tuple[float, bool]:
        if step.curve:
            raise NotTrained(f"the law may not decide: the ranked search runs the curve-based pruner alone, from {key} "
                             "(a search's business, not this demo's)")
        value = improvement(key)
        walk.trained.append(key)
        return value, True

    try:
        drive(policy, lambda key, step: gaps[key], train)
    except NotTrained as exc:
        walk.ended = f"the walk ends here: {exc}"
        return walk
    last = policy.steps[-1]
    walk.ended = (f"stopped: {', '.join(last.keys)} not trained" if last.kind == STOP else
                  "done: every candidate trained" if last.kind == DONE else "")
    return walk


def ranked_lines(walk: RankedWalk, per_trial: list[str]) -> list[str]:
    """The summary's section on the walk: each decision with its numbers, then how it compares."""
    lines = ["## The ranked search on the same candidates (`search.strategy=ranked`)", "",
             "The live ranked search's policy (search/ranked.py), with this law as its prior, over the gaps measured "
             "above (phase 1, already paid): it trains the highest predicted improvement first and stops when no "
             "waiting candidate's upper bound reaches the best improvement measured so far.", "",
             *[f"- law: {n}" for n in walk.notes], ""]
    for i, s in enumerate(walk.steps, 1):
        if s.kind == TRAIN and s.rule == CURVE:
            continue  # not run: said in `ended`
        what = {"measure": "gaps", TRAIN: "train", STOP: "stop", DONE: "done"}.get(s.kind, s.kind)
        lines.append(f"{i}. **{what}** {', '.join(s.keys)}: {s.reason}")
    named = lambda labels: ", ".join(f"`{k}`" for k in labels) or "nothing"  # noqa: E731  (`none` is a context)
    lines += ["", f"Ranked: trained {named(walk.trained)} (in that order); {walk.ended or 'no decision'}. "
                  f"The per-trial policy above trained {named(per_trial)}"
                  + (f"; the walk trained the others itself ({walk.cpu_s:.0f} CPU-s, not in the compute below)."
                     if set(walk.trained) - set(per_trial) else ".")]
    return lines
