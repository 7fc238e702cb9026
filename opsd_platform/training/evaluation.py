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


class Stream:
    """A `seeded_stream` that can be entered several times and goes on where it left off: the
    draws of batches measured one after the other inside ``resume()`` are those one call over all
    of them would make (the sequential gap measures a side a batch of problems at a time, with the
    other side's stream in between). Outside ``resume()`` the caller's generator is untouched.
    CUDA generators are saved and restored too when CUDA is in use (the HF engine samples on the
    model's device)."""

    def __init__(self, seed: int, label: str) -> None:
        self.seed, self.label = seed, label
        self._state: tuple | None = None  # (CPU state, CUDA states) after the last resume()

    @contextlib.contextmanager
    def resume(self) -> Iterator[None]:
        import torch

        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            if self._state is None:
                torch.manual_seed(stream_seed(self.seed, self.label))  # as seeded_stream
            else:
                cpu, cuda = self._state
                torch.set_rng_state(cpu)
                if devices and cuda:
                    torch.cuda.set_rng_state_all(cuda)
            yield
            self._state = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if devices else [])


def concat(parts: Sequence[Evaluation]) -> Evaluation:
    """The Evaluation of consecutive batches of problems, equal (floats exact) to the one
    `evaluate` returns for all of them at once when the batches drew the same answers: means are
    recomputed over the joined rows in the same order, and the prompt-token total of each part is
    recovered exactly from its mean (an integer sum over its rows)."""
    if not parts:
        raise ValueError("concat needs at least one Evaluation")
    if len(parts) == 1:
        return parts[0]
    per_problem = [x for e in parts for x in e.per_problem]
    judgements = [j for e in parts for j in e.judgements]
    texts = [t for e in parts for t in e.texts]
    prompt_total = sum(round(e.prompt_tokens * len(e.texts)) for e in parts)
    return Evaluation(
        pass_rate=sum(per_problem) / max(1, len(per_problem)),
        reward_mean=sum(j.reward for j in judgements) / max(1, len(judgements)),
        per_problem=per_problem,
        tokens=sum(e.tokens for e in parts),
        prompt_tokens=prompt_total / max(1, len(texts)),
        texts=texts,
        judgements=judgements,
    )


def take(ev: Evaluation, start: int, stop: int, k: int) -> Evaluation:
    """Problems [start, stop) of `ev` (k answers each). Tokens are a per-answer mean share
    (an Evaluation keeps only the total); the whole range returns `ev` itself."""
    n = len(ev.per_problem)
    if (start, stop) == (0, n):
        return ev
    per_problem = ev.per_problem[start:stop]
    judgements = ev.judgements[start * k:stop * k]
    return Evaluation(
        pass_rate=sum(per_problem) / max(1, len(per_problem)),
        reward_mean=sum(j.reward for j in judgements) / max(1, len(judgements)),
        per_problem=per_problem,
        tokens=round(ev.tokens * (stop - start) / max(1, n)),
        prompt_tokens=ev.prompt_tokens,
        texts=ev.texts[start * k:stop * k],
        judgements=judgements,
    )


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
    return judged(world, problems, rollouts, k)


def judged(world: World, problems: Sequence[Problem], rollouts, k: int) -> Evaluation:
    """The Evaluation of `rollouts` (k answers to each of `problems`, problem-major): judge and average.
    Kept apart from the sampling so that a caller that needs the tokens too (gap.sample_student) gets
    the very Evaluation `evaluate` would."""
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
