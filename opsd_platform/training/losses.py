"""Per-token distillation losses for OPSD, and GRPO's loss (at the end): pure tensor functions,
no model, no state.

Shapes: N = sequences (samples), T = response positions, V = vocabulary, K = top-K support.
Every divergence is computed *per response token* over a support of next-token outcomes; the
trainer then averages over the tokens that have a teacher (``masked_mean``).

Names. We call ``KL(student || teacher)`` the *reverse* KL (mode seeking: SDPO's rich-feedback
setting and the one the paper's authors use) and ``KL(teacher || student)`` the *forward* KL.
Some write-ups swap the two names.

Supports (where the divergence's sum over outcomes runs):
- ``full``: the whole vocabulary.
- ``topk``: the student's top-K tokens at that position plus one "rest" bucket holding the
  remaining probability mass, for both distributions (SDPO; K=20 in its rich-feedback runs).
  The support indices come from the *detached* student, so no gradient flows through the choice.
- ``sampled``: only the token the student actually sampled, with the classic score-function
  estimator of the reverse KL, ``(logp_s - logp_t).detach() * logp_s``. Its *value* is a
  surrogate for gradients, not a divergence; only ``reverse`` is defined for it.

Departures from the sources, on purpose:
- ``jsd`` is the generalised Jensen-Shannon divergence of GKD (Agarwal et al.) with mixture
  ``M = alpha * P_teacher + (1 - alpha) * P_student`` and
  ``JSD = alpha * KL(P_teacher || M) + (1 - alpha) * KL(P_student || M)``. Its value tends to 0 at
  both ends of alpha, so (as in TRL's GKD) ``alpha == 0`` means forward KL and ``alpha == 1``
  reverse KL exactly.
- The per-entry token clip (``clip_mode="entry"``) bounds each outcome's contribution to the
  divergence to ``[-token_clip, token_clip]`` before summing, so a few "pivot" tokens cannot
  dominate (OPSD; its code clips the upper side only). Clipping both signs keeps the clipped sum
  symmetric around the unclipped one. Either way the clipped sum is no longer >= 0 nor minimal at
  student = teacher, and under reverse KL descending it sharpens the student
  (benchmarks/token_clip.py measured it, and bench-v2's runs). ``clip_mode="position"`` caps each
  position's summed divergence instead, ``min(D, token_clip)``: still >= 0 and 0 only at the
  teacher; a position above the cap gives no gradient (our option, not in the sources).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opsd_platform.config.choices import CLIP_MODES, DIVERGENCES, SUPPORTS


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-outcome terms of KL(p || q): ``p * (log p - log q)``, with 0 where p == 0. [..., S]"""
    return torch.where(log_p.isneginf(), torch.zeros_like(log_p), log_p.exp() * (log_p - log_q))


def divergence_terms(
    log_s: torch.Tensor,  # [..., S] student log-probs over the support (sums to 1 in prob)
    log_t: torch.Tensor,  # [..., S] teacher log-probs over the same support
    divergence: str = "reverse",
    alpha: float = 0.5,
) -> torch.Tensor:  # [..., S] per-outcome contributions; their sum is the divergence
    """Per-outcome contributions of the chosen divergence between two distributions."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if divergence == "reverse" or (divergence == "jsd" and alpha == 1.0):
        return _kl_terms(log_s, log_t)
    if divergence == "forward" or (divergence == "jsd" and alpha == 0.0):
        return _kl_terms(log_t, log_s)
    # log M = log(alpha * P_t + (1 - alpha) * P_s), computed in log space for stability.
    log_m = torch.logaddexp(log_t + math.log(alpha), log_s + math.log1p(-alpha))
    return alpha * _kl_terms(log_t, log_m) + (1.0 - alpha) * _kl_terms(log_s, log_m)


def _with_tail(top: torch.Tensor) -> torch.Tensor:
    """[..., K] log-probs of K outcomes -> [..., K+1] with a last bucket holding the rest of the mass."""
    # log(1 - sum p_top), clamped so a support holding ~all the mass gives a tiny, finite tail.
    mass = torch.logsumexp(top, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([top, torch.log(-torch.expm1(mass))], dim=-1)


def topk_with_tail(
    log_probs: torch.Tensor,  # [N, T, V] log-softmax over the vocabulary
    index: torch.Tensor,  # [N, T, K] token ids of the support
) -> torch.Tensor:  # [N, T, K+1] log-probs of the K tokens and of the "rest" bucket
    """Restrict a distribution to K tokens plus one bucket holding the rest of the mass."""
    return _with_tail(log_probs.gather(-1, index))


def support_index(
    student_logits: torch.Tensor,  # [N, T, V]
    tokens: torch.Tensor,  # [N, T] sampled token ids
    support: str,
    top_k: int = 20,
) -> torch.Tensor | None:  # [N, T, S] token ids the divergence sums over; None = full vocabulary
    """Where the per-token divergence is evaluated, chosen from the *detached* student."""
    flat, where = as_flat(student_logits)
    return support_index_at(flat, where, tokens, support, top_k)


def support_logprobs(
    logits: torch.Tensor,  # [N, T, V]
    index: torch.Tensor | None,  # [N, T, S] from `support_index`, None = full vocabulary
    support: str,
) -> torch.Tensor:  # [N, T, V] (full), [N, T, K+1] (topk, with the tail), [N, T, 1] (sampled)
    """Log-probs of `logits`' distribution on a support, computed in fp32."""
    flat, where = as_flat(logits)
    return support_logprobs_at(flat, where, index, support)


def as_flat(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [N, T, V] -> [N*T, V], [N, T]
    """Dense logits in the `_at` forms' layout: each position its own row."""
    n, t, v = logits.shape
    return logits.reshape(n * t, v), torch.arange(n * t, device=logits.device).view(n, t)


# The `_at` forms take the logits as the scorer returns them (``packing.ResponseLogits``): `flat`
# [M, V] holds each scored position once (the prompt's last position, which predicts every
# sample's first token, is shared) and `where` [N, T] says which row predicts token t of sample n.
# The vocabulary-wide work (top-K, log-sum-exp, and their backward) then runs over M rows, not
# N * T padded ones, and no [N, T, V] copy is made.


def support_index_at(
    flat: torch.Tensor,  # [M, V] student logits
    where: torch.Tensor,  # [N, T] row of `flat` for each response position
    tokens: torch.Tensor,  # [N, T] sampled token ids
    support: str,
    top_k: int = 20,
) -> torch.Tensor | None:  # [N, T, S] token ids the divergence sums over; None = full vocabulary
    """`support_index` on the scorer's flat logits."""
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; valid: {', '.join(SUPPORTS)}")
    if support == "full":
        return None
    if support == "sampled":
        return tokens.unsqueeze(-1)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    # top-K of the logits = top-K of the log-softmax (a per-row shift), without materialising it
    return flat.detach().topk(min(top_k, flat.shape[-1]), dim=-1).indices[where]


def support_logprobs_at(
    flat: torch.Tensor,  # [M, V] logits
    where: torch.Tensor,  # [N, T] row of `flat` for each response position
    index: torch.Tensor | None,  # [N, T, S] from `support_index_at`, None = full vocabulary
    support: str,
) -> torch.Tensor:  # [N, T, V] (full), [N, T, K+1] (topk, with the tail), [N, T, 1] (sampled)
    """Log-probs of the distribution on a support, computed in fp32.

    For ``topk`` and ``sampled`` only a gather and one log-sum-exp over the vocabulary are
    needed: no second ``[M, V]`` log-softmax tensor is made (the lean scoring path)."""
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # fp32, or fp64 if given
    if index is None:
        return F.log_softmax(flat, dim=-1)[where]
    picked = flat[where.unsqueeze(-1), index] - torch.logsumexp(flat, dim=-1)[where].unsqueeze(-1)  # [N, T, S]
    return picked if support == "sampled" else _with_tail(picked)


def divergence_on_support(
    log_s: torch.Tensor,  # [N, T, S] student log-probs on the support (with grad)
    log_t: torch.Tensor,  # [N, T, S] teacher log-probs on the same support
    *,
    support: str,
    divergence: str = "reverse",
    alpha: float = 0.5,
    token_clip: float | None = None,
    clip_mode: str = "entry",
) -> torch.Tensor:  # [N, T] per-token loss
    """The per-token OPSD loss from both distributions restricted to a common support."""
    if support == "sampled":
        if divergence != "reverse":
            raise ValueError("support='sampled' is only defined for divergence='reverse'")
        lp_s, lp_t = log_s.squeeze(-1), log_t.squeeze(-1)
        return (lp_s - lp_t).detach() * lp_s
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"unknown clip_mode {clip_mode!r}; valid: {', '.join(CLIP_MODES)}")
    terms = divergence_terms(log_s, log_t, divergence, alpha)
    if token_clip is None:
        return terms.sum(-1)
    if token_clip <= 0:
        raise ValueError(f"token_clip must be > 0 or None, got {token_clip}")
    if clip_mode == "position":
        return terms.sum(-1).clamp(max=token_clip)
    return terms.clamp(-token_clip, token_clip).sum(-1)


def token_divergence(
    student_logits: torch.Tensor,  # [N, T, V] (with grad)
    teacher_logits: torch.Tensor,  # [N, T, V] (no grad needed)
    tokens: torch.Tensor,  # [N, T] sampled response token ids (used by the `sampled` support)
    *,
    divergence: str = "reverse",
    alpha: float = 0.5,
    support: str = "full",
    top_k: int = 20,
    token_clip: float | None = None,
    clip_mode: str = "entry",
) -> torch.Tensor:  # [N, T] per-token loss
    """The per-token OPSD loss between student and teacher next-token distributions."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if support == "sampled" and divergence != "reverse":
        raise ValueError("support='sampled' is only defined for divergence='reverse'")
    index = support_index(student_logits, tokens, support, top_k)
    return divergence_on_support(
        support_logprobs(student_logits, index, support),
        support_logprobs(teacher_logits, index, support),
        support=support, divergence=divergence, alpha=alpha, token_clip=token_clip, clip_mode=clip_mode,
    )


def importance_weights(
    logp_new: torch.Tensor,  # [N, T] log-prob of the sampled tokens under the current policy
    logp_old: torch.Tensor,  # [N, T] log-prob under the policy that sampled them
    clip: float = 2.0,
) -> torch.Tensor:  # [N, T] detached weights in (0, clip]
    """Clipped importance ratios for reusing a rollout batch over several optimizer steps."""
    if clip <= 0:
        raise ValueError(f"importance-ratio clip must be > 0, got {clip}")
    return (logp_new - logp_old).detach().exp().clamp(max=clip)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [N, T] over positions where `mask` [N, T] is true; 0 (with grad) if none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-prob of each sampled token: logits [N, T, V], tokens [N, T] -> [N, T]."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


# ============================================================================== GRPO
#
# Group Relative Policy Optimization, the scalar-reward RL baseline the paper measures OPSD
# against. No teacher: each sample's learning signal is its reward relative to the other samples
# of the same prompt. Shapes: B = prompts, n = samples per prompt (the group), N = B * n rows,
# prompt-major (rows g*n .. g*n+n-1 answer prompt g), T = response positions.
#
# Sources of each variant:
# - GRPO: Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
#   Language Models" (arXiv 2402.03300), eq. 3: advantages (r - mean) / std over the group, the
#   PPO-clipped ratio objective, a per-sequence mean then a mean over the group, and the k3
#   estimator of KL(policy || reference) (their eq. 4), weighted by beta.
# - PPO's clipped surrogate: Schulman et al. 2017 (arXiv 1707.06347).
# - DAPO: Yu et al. 2025 (arXiv 2503.14476): the token-level mean (every token of the batch
#   weighs the same, so long answers are not down-weighted) and "clip-higher" (eps_high > eps_low).
# - Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
#   (arXiv 2503.20783): no std normalisation of the advantages (its difficulty bias) and a constant
#   normaliser (the generation budget) instead of each sequence's length (its length bias).

from opsd_platform.config.choices import AGGREGATIONS  # noqa: E402,F401  (loss.aggregation)

ADVANTAGE_EPS = 1e-4  # added to the group std before dividing (as TRL's GRPOTrainer)


def group_advantages(
    rewards: torch.Tensor,  # [N] scalar reward of each row, prompt-major (groups of n consecutive rows)
    group_size: int,  # n samples per prompt
    scale: bool = True,  # divide by the group std (DeepSeekMath); False: Dr. GRPO
    eps: float = ADVANTAGE_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages [N] float32, zero_signal [B] bool
    """Group-relative advantages ``A_i = (r_i - mean_g) / (std_g + eps)`` (GRPO, DeepSeekMath),
    or ``r_i - mean_g`` with ``scale=False`` (Dr. GRPO). std is the sample (Bessel) std over the
    group. A group whose rewards are all equal carries no signal: its advantages are exactly 0
    (not the float noise ``r - mean`` can leave) and it is marked in ``zero_signal``."""
    if group_size < 2:
        raise ValueError(f"group-relative advantages need >= 2 samples per group, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [B * n] with n={group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float32).view(-1, group_size)  # [B, n]
    zero_signal = r.amax(dim=1) == r.amin(dim=1)  # [B]
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    adv = adv.masked_fill(zero_signal.unsqueeze(1), 0.0)
    return adv.reshape(-1), zero_signal


def k3_kl(
    logp: torch.Tensor,  # [N, T] log-prob of the sampled tokens under the policy (with grad)
    ref_logp: torch.Tensor,  # [N, T] under the reference policy (no grad)
) -> torch.Tensor:  # [N, T] >= 0
    """Per-token estimate of KL(policy || reference): ``exp(ref - logp) - (ref - logp) - 1``
    (Schulman's k3; DeepSeekMath eq. 4). Unbiased, always >= 0."""
    d = ref_logp - logp
    return d.exp() - d - 1.0


def grpo_token_loss(
    logp: torch.Tensor,  # [N, T] log-prob of the sampled tokens under the current policy (with grad)
    old_logp: torch.Tensor | None,  # [N, T] under the policy of the batch's first update; None = on-policy
    advantages: torch.Tensor,  # [N] one advantage per row (broadcast over its tokens)
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,  # DAPO's clip-higher; None = clip_eps
    ref_logp: torch.Tensor | None = None,  # [N, T] reference log-probs, needed when kl_beta > 0
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # loss [N, T] (to be minimised), clipped [N, T] bool
    """Per-token GRPO loss ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta KL`` with
    ``rho = exp(logp - old_logp)`` (PPO's clipped surrogate as GRPO uses it, DeepSeekMath eq. 3).

    On-policy (``old_logp`` None) the ratio is 1 with the gradient of ``logp``: the loss is
    ``-A logp``'s gradient, the REINFORCE-with-group-baseline step. ``clipped`` marks the tokens
    whose ratio left the clip range in the direction the advantage pushes, i.e. those the clip
    cut off from the gradient."""
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if high <= 0:
        raise ValueError(f"clip_eps_high must be > 0, got {high}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    old = logp.detach() if old_logp is None else old_logp.to(logp.device)
    ratio = (logp - old).exp()  # [N, T]
    adv = advantages.to(logp.device, logp.dtype).unsqueeze(-1)  # [N, 1]
    unclipped = ratio * adv
    clipped_obj = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv
    loss = -torch.minimum(unclipped, clipped_obj)
    clipped = ((adv > 0) & (ratio > 1.0 + high)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
    if kl_beta > 0:
        if ref_logp is None:
            raise ValueError("kl_beta > 0 needs ref_logp (the reference policy's log-probs)")
        loss = loss + kl_beta * k3_kl(logp, ref_logp.to(logp.device))
    return loss, clipped


def aggregation_weights(
    mask: torch.Tensor,  # [N, T] bool, the response tokens of every row of the step
    aggregation: str = "sequence",
    max_len: int | None = None,  # the generation budget (rollout.max_new_tokens), for "constant"
) -> tuple[torch.Tensor, float]:  # row weights [N], normaliser
    """How a GRPO step averages its per-token losses: ``sum_i w_i sum_t loss_it / normaliser``.

    - ``sequence`` (GRPO, DeepSeekMath): each row's mean over its tokens, then the mean over rows:
      ``w_i = 1 / |o_i|``, normaliser ``N``.
    - ``token`` (DAPO): the mean over all response tokens of the step: ``w_i = 1``, normaliser
      ``sum_i |o_i|``.
    - ``constant`` (Dr. GRPO): the sum over tokens divided by ``N * max_len``: ``w_i = 1``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    lengths = mask.to(torch.float32).sum(dim=1)  # [N]
    n = mask.shape[0]
    if aggregation == "sequence":
        return 1.0 / lengths.clamp(min=1.0), float(n)
    if aggregation == "token":
        return torch.ones(n), float(lengths.sum())
    if max_len is None or max_len < 1:
        raise ValueError(f"aggregation='constant' needs max_len >= 1, got {max_len}")
    return torch.ones(n), float(n * max_len)


def grpo_loss(
    logp: torch.Tensor,  # [N, T] (with grad)
    old_logp: torch.Tensor | None,  # [N, T] or None (on-policy)
    advantages: torch.Tensor,  # [N]
    mask: torch.Tensor,  # [N, T] bool response tokens
    *,
    aggregation: str = "sequence",
    max_len: int | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> torch.Tensor:  # scalar
    """The GRPO loss of a whole step on one batch (the trainer computes the same sum per
    micro-batch, see grpo.py): ``grpo_token_loss`` aggregated by ``aggregation_weights``."""
    per_token, _ = grpo_token_loss(logp, old_logp, advantages, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                                   ref_logp=ref_logp, kl_beta=kl_beta)
    weights, normaliser = aggregation_weights(mask, aggregation, max_len)
    weighted = per_token * weights.to(per_token.device, per_token.dtype).unsqueeze(-1)
    return torch.where(mask.to(per_token.device), weighted, torch.zeros_like(weighted)).sum() / normaliser
