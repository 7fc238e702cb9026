"""Pass rate of a policy on a problem set: sample k answers per problem, judge them, average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from opsd_platform.worlds.base import Judgement, Problem, World


@dataclass(frozen=True)
class Evaluation:
    pass_rate: float  # mean over problems and k samples of `passed` (mean@k)
    reward_mean: float  # mean reward over all samples
    per_problem: list[float]  # [B] pass rate of each problem (for bootstrap intervals)
    tokens: int  # response tokens generated
    prompt_tokens: float  # mean prompt length in tokens (chat template included)
    texts: list[str]  # [B*k] responses, problem-major
    judgements: list[Judgement]  # [B*k]


def evaluate(
    engine,
    world: World,
    problems: Sequence[Problem],
    messages: Sequence[str],
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
) -> Evaluation:
    """Generate k answers to each message (one per problem, same order) and judge them."""
    if len(problems) != len(messages):
        raise ValueError(f"{len(problems)} problems but {len(messages)} messages")
    rollouts = engine.generate(messages, n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    judgements = world.judge_many([problems[g] for g in rollouts.group], rollouts.texts)
    per_problem = [
        sum(j.passed for j in judgements[b * k : (b + 1) * k]) / k for b in range(len(problems))
    ]
    return Evaluation(
        pass_rate=sum(per_problem) / max(1, len(per_problem)),
        reward_mean=sum(j.reward for j in judgements) / max(1, len(judgements)),
        per_problem=per_problem,
        tokens=rollouts.num_tokens,
        prompt_tokens=sum(len(p) for p in rollouts.prompt_ids) / max(1, len(rollouts.prompt_ids)),
        texts=rollouts.texts,
        judgements=judgements,
    )
