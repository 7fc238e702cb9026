"""Lean teacher scoring and the per-token distillation loss of one micro-batch.

The reference computation (``losses.token_divergence`` on the full batch) holds the student's and
the teacher's ``[N, T, V]`` logits *and* their two ``[N, T, V]`` log-softmax tensors at once.
Here, per micro-batch of rows:

    student  forward with grad                -> logits [M, V]      (kept for backward)
    support  student top-K ids (or the sampled token), from the detached logits -> [n, T, K]
    teacher  forward under inference_mode     -> logits [M', V], reduced at once to the
             support (gather + one log-sum-exp) -> [n, T, K+1]; the full logits are dropped
    loss     divergence on the support, both sides [n, T, K+1]

so with a top-K or sampled support no full log-softmax tensor is ever made, and the teacher's full
logits live only while it is scored. The logits come as ``packing.ResponseLogits``: M rows, one
per scored position, with an [n, T] map to them; rows with the same prompt (the n samples of a
problem) share one forward pass over it and its last position (``trainer.share_prompt_prefix``),
and no position past a response's end is scored when the rows are packed. With
``support=full`` the divergence needs both full log-softmax tensors by definition. The caller
backpropagates each micro-batch's loss divided by the token count of the whole step, which gives
the full-batch loss and gradient (checked against an ``F.kl_div`` reference in
``tests/training/test_scoring.py``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from opsd_platform.training.losses import divergence_on_support, support_index_at, support_logprobs_at
from opsd_platform.training.packing import position_logits


@dataclass(frozen=True)
class LossSettings:
    """The `loss` config fields the per-token loss needs (duck-typed `LossConfig` works too)."""

    divergence: str = "reverse"
    alpha: float = 0.5
    support: str = "topk"
    top_k: int = 20
    token_clip: float | None = None
    clip_mode: str = "entry"


@dataclass
class MicroBatchLoss:
    per_token: torch.Tensor  # [n, T] loss of each response position (with grad)
    token_logp: torch.Tensor | None  # [n, T] student log-prob of each sampled token (with grad), if asked
    teacher_seconds: float  # wall time of the teacher's forward and reduction


def micro_batch_loss(
    policy: torch.nn.Module,
    teacher_scoring: Callable[[], ContextManager[torch.nn.Module]],  # yields the module to score with
    student_prompts: Sequence[Sequence[int]],  # [n][P_i]
    teacher_prompts: Sequence[Sequence[int]],  # [n][P'_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    loss,  # LossSettings or LossConfig
    need_token_logp: bool = False,
    share_prefix: bool = True,  # one pass per distinct prompt (packing.position_logits)
) -> MicroBatchLoss:
    """Per-token loss of one micro-batch, the teacher scored lean (see the module docstring)."""
    student = position_logits(policy, student_prompts, response_ids, response_mask, pad_id, share_prefix)
    tokens = response_ids.to(student.flat.device)
    index = support_index_at(student.flat, student.where, tokens, loss.support, loss.top_k)  # [n, T, S]
    started = time.perf_counter()
    with torch.inference_mode(), teacher_scoring() as teacher:
        scored = position_logits(teacher, teacher_prompts, response_ids, response_mask, pad_id, share_prefix)
        device = student.flat.device
        log_t = support_logprobs_at(scored.flat.to(device), scored.where.to(device), index, loss.support)
        del scored
    log_t = log_t.clone()  # an ordinary tensor: inference tensors cannot be saved for backward
    teacher_seconds = time.perf_counter() - started
    log_s = support_logprobs_at(student.flat, student.where, index, loss.support)
    per_token = divergence_on_support(
        log_s, log_t, support=loss.support, divergence=loss.divergence, alpha=loss.alpha, token_clip=loss.token_clip,
        clip_mode=loss.clip_mode,
    )
    token_logp = None
    if need_token_logp:
        sampled = log_s if loss.support == "sampled" else support_logprobs_at(
            student.flat, student.where, tokens.unsqueeze(-1), "sampled")
        token_logp = sampled.squeeze(-1)  # [n, T]
    return MicroBatchLoss(per_token=per_token, token_logp=token_logp, teacher_seconds=teacher_seconds)


@contextlib.contextmanager
def scoring_with(module: torch.nn.Module):
    """The simplest teacher_scoring: always score with `module`."""
    yield module


def sampled_token_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    share_prefix: bool = True,
) -> torch.Tensor:  # [n, T], 0 past a row's end
    """Each given response token's log-prob under `model`, each row under its own prompt: the
    teacher half of `micro_batch_loss` on the ``sampled`` support (the same position_logits and
    gather), for a caller that only scores (the cheap gap, gap_estimators.py). No grad is made
    when called under ``torch.inference_mode``."""
    scored = position_logits(model, prompts, response_ids, response_mask, pad_id, share_prefix)
    tokens = response_ids.to(scored.flat.device).unsqueeze(-1)  # [n, T, 1]
    logp = support_logprobs_at(scored.flat, scored.where, tokens, "sampled").squeeze(-1)
    return logp.masked_fill(~response_mask.to(logp.device).bool(), 0.0)
