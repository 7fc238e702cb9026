"""GRPO's part of a training step: group-relative advantages and the loss of one micro-batch.

The step itself (rollout, judging, micro-batching, the optimizer step, validation, checkpoints,
metrics, DDP) is ``OPSDModule``'s and shared with OPSD; ``module.py`` says in one place where the
two algorithms differ. What GRPO adds, in the step's order:

    3. signal  -> rewards of the n samples of each prompt -> advantages [N] (``losses.group_advantages``);
                  a group whose rewards are all equal has no signal: advantage 0, counted in
                  ``grpo/zero_signal_frac``; only rows with a non-zero advantage are scored (all
                  rows when ``loss.kl_beta`` > 0: the KL term has a gradient everywhere)
    4-5. loss  -> policy log-probs of the sampled tokens (grad); with ``loss.kl_beta`` > 0 the
                  frozen initial weights' log-probs (no grad, once per batch: they never change);
                  ``losses.grpo_token_loss`` x the aggregation's row weights, summed; the trainer
                  divides by the step's normaliser (``losses.aggregation_weights``), so the sum
                  over micro-batches is the full-batch loss (``losses.grpo_loss``)

The importance ratio is taken against the log-probs of the batch's first update, as OPSD's is
(module.py): the first update is on-policy (ratio 1), later ones (``trainer.updates_per_batch``
> 1) are clipped to ``[1 - clip_eps, 1 + clip_eps_high]``. The sampling temperature is not part
of the ratio (the rollout engine samples at ``rollout.temperature``; the log-probs are those of
the raw policy), as in OPSD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch

from opsd_platform.training.losses import aggregation_weights, group_advantages, grpo_token_loss, support_logprobs_at
from opsd_platform.training.packing import position_logits
from opsd_platform.training.scoring import MicroBatchLoss


@dataclass
class GroupSignal:
    """What step 3 gives GRPO's update, and what the update reports back."""

    advantages: torch.Tensor  # [N] float32, one per row (0 for rows of a group without signal)
    zero_signal: torch.Tensor  # [B] bool: the group's rewards were all equal
    row_weights: torch.Tensor  # [N] weight of each row's token sum (losses.aggregation_weights)
    normaliser: float  # this rank's denominator of the loss
    rows: list[int]  # rows the loss scores
    ref_logp: dict[int, torch.Tensor] = field(default_factory=dict)  # row -> [T] reference log-probs (kl_beta > 0)
    clipped_tokens: float = 0.0  # response tokens whose ratio was clipped, over the reused updates
    ratio_tokens: float = 0.0  # response tokens of the reused updates

    def metrics(self) -> dict[str, float]:
        return {
            "grpo/advantage_std": float(self.advantages.std(unbiased=False)),
            "grpo/zero_signal_frac": float(self.zero_signal.float().mean()),
            "grpo/clip_frac": self.clipped_tokens / self.ratio_tokens if self.ratio_tokens else 0.0,
        }


def group_signal(rewards: Sequence[float], group_size: int, response_mask: torch.Tensor, loss,
                 max_new_tokens: int) -> GroupSignal:
    """Advantages, aggregation weights and the rows to score, from the rewards of one step's
    prompt-major rows (`loss`: the `loss` config section)."""
    advantages, zero_signal = group_advantages(torch.tensor(rewards, dtype=torch.float32), group_size,
                                               scale=loss.scale_advantages)
    weights, normaliser = aggregation_weights(response_mask, loss.aggregation, max_new_tokens)
    rows = list(range(len(rewards))) if loss.kl_beta > 0 else [i for i, a in enumerate(advantages.tolist()) if a != 0.0]
    return GroupSignal(advantages, zero_signal, weights, normaliser, rows)


def _sampled_logp(flat: torch.Tensor, where: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # [n, T]
    return support_logprobs_at(flat, where, tokens.unsqueeze(-1), "sampled").squeeze(-1)


def micro_batch_loss(
    policy: torch.nn.Module,
    reference_scoring: Callable[[], ContextManager[torch.nn.Module]] | None,  # the initial weights (kl_beta > 0)
    rows: Sequence[int],  # [n] the step's row of each micro-batch row
    prompt_ids: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    signal: GroupSignal,
    old_logp: torch.Tensor | None,  # [n, T] log-probs of the batch's first update; None on it
    loss,  # the `loss` config section
    share_prefix: bool = True,
) -> MicroBatchLoss:
    """GRPO's per-token loss of one micro-batch, already weighted by the aggregation (the caller
    masks, sums and divides by the step's normaliser). ``teacher_seconds`` is the reference's time."""
    student = position_logits(policy, prompt_ids, response_ids, response_mask, pad_id, share_prefix)
    device = student.flat.device
    tokens, mask = response_ids.to(device), response_mask.to(device)
    logp = _sampled_logp(student.flat, student.where, tokens).masked_fill(~mask, 0.0)  # [n, T]
    ref, seconds = None, 0.0
    if loss.kl_beta > 0:
        if rows[0] not in signal.ref_logp:  # the batch's first update: score the reference once
            started = time.perf_counter()
            with torch.inference_mode(), reference_scoring() as reference:
                scored = position_logits(reference, prompt_ids, response_ids, response_mask, pad_id, share_prefix)
                ref = _sampled_logp(scored.flat.to(device), scored.where.to(device), tokens).masked_fill(~mask, 0.0)
                del scored
            ref = ref.clone()  # an ordinary tensor: inference tensors cannot be saved for backward
            signal.ref_logp.update({i: ref[j] for j, i in enumerate(rows)})
            seconds = time.perf_counter() - started
        ref = torch.stack([signal.ref_logp[i] for i in rows])
    per_token, clipped = grpo_token_loss(
        logp, old_logp, signal.advantages[list(rows)], clip_eps=loss.clip_eps, clip_eps_high=loss.clip_eps_high,
        ref_logp=ref, kl_beta=loss.kl_beta,
    )
    if old_logp is not None:  # a reused batch: how much of it the clip cut off
        signal.clipped_tokens += float((clipped & mask).sum())
        signal.ratio_tokens += float(mask.sum())
    weights = signal.row_weights[list(rows)].to(device, per_token.dtype).unsqueeze(-1)  # [n, 1]
    return MicroBatchLoss(per_token=per_token * weights, token_logp=logp, teacher_seconds=seconds)
