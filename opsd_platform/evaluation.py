"""Pass rate of a policy on a problem set: sample k answers per problem, judge them, average."""

from __future__ import annotations

import contextlib
import hashlib
import resource
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

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

    def to_json(self) -> dict:
        """A JSON-ready dict that `from_json` turns back into an equal Evaluation (floats exact)."""
        return {"pass_rate": self.pass_rate, "reward_mean": self.reward_mean, "per_problem": list(self.per_problem),
                "tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "texts": list(self.texts),
                "judgements": [[j.reward, j.feedback, j.passed] for j in self.judgements]}

    @classmethod
    def from_json(cls, d: dict) -> "Evaluation":
        return cls(pass_rate=d["pass_rate"], reward_mean=d["reward_mean"], per_problem=list(d["per_problem"]),
                   tokens=int(d["tokens"]), prompt_tokens=d["prompt_tokens"], texts=list(d["texts"]),
                   judgements=[Judgement(reward=r, feedback=f, passed=bool(p)) for r, f, p in d["judgements"]])


def stream_seed(seed: int, label: str) -> int:
    """A torch seed for the sampling stream `label` of a run with `seed` (e.g. "val/0",
    "gap/student", "gap/teacher/reference")."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{label}".encode()).digest()[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded_stream(seed: int, label: str) -> Iterator[None]:
    """Sample from a stream of its own: torch's CPU generator seeded by (seed, label) inside, and
    restored on exit. A measurement made this way (a validation, either side of the gap) draws the
    same tokens whether it runs early, late, in another run or not at all (reused), and leaves the
    training's stream as it was: what makes reusing measurements identical to recomputing them."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, label))
        yield


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the sandboxed code runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


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
