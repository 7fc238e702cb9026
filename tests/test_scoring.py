"""Lean scoring (micro-batches, teacher under inference_mode reduced to the support at once) gives
the same loss and gradients as a full-batch reference written with F.kl_div, and keeps at most
one [n, T, V] tensor for backward when the support is top-K."""

import copy

import pytest
import torch
import torch.nn.functional as F

from opsd_platform.config import ModelConfig, TinyModelConfig
from opsd_platform.models import load_policy
from opsd_platform.rollout import HFGenerateEngine, chat_ids, chunks, response_logits
from opsd_platform.scoring import LossSettings, micro_batch_loss, scoring_with


@pytest.fixture(scope="module")
def batch():
    """A real rollout batch of a tiny fp64 model, a perturbed teacher and longer teacher prompts."""
    torch.manual_seed(0)
    policy, tok = load_policy(ModelConfig(source="tiny", tiny=TinyModelConfig(init_std=0.2)), seed=0)
    policy = policy.double()
    teacher = copy.deepcopy(policy).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    messages = ["What is 2 + 3?", "Reverse 'abc'.", "Name a colour."]
    ro = HFGenerateEngine(policy, tok, batch_size=4).generate(messages, n=3, max_new_tokens=12, temperature=1.0)
    teacher_prompts = [chat_ids(tok, f"{messages[g]}\nHint: think of sample {i}.") for i, g in enumerate(ro.group)]
    return policy, teacher, tok, ro, teacher_prompts


def reference_loss(policy, teacher, ro, teacher_prompts, pad, loss: LossSettings) -> torch.Tensor:
    """Full batch, full-vocabulary log-softmax for both, F.kl_div for the divergence."""
    s = F.log_softmax(response_logits(policy, ro.prompt_ids, ro.response_ids, ro.response_mask, pad), dim=-1)
    with torch.no_grad():
        t = F.log_softmax(response_logits(teacher, teacher_prompts, ro.response_ids, ro.response_mask, pad), dim=-1)
    if loss.support == "sampled":
        idx = ro.response_ids.unsqueeze(-1)
        lp_s, lp_t = s.gather(-1, idx).squeeze(-1), t.gather(-1, idx).squeeze(-1)
        per_token = (lp_s - lp_t).detach() * lp_s
    else:
        if loss.support == "topk":
            idx = s.detach().topk(loss.top_k, dim=-1).indices

            def restrict(lp):
                top = lp.gather(-1, idx)
                return torch.cat([top, torch.log1p(-top.exp().sum(-1, keepdim=True))], dim=-1)

            s, t = restrict(s), restrict(t)
        if loss.divergence == "reverse":  # KL(s || t): kl_div(input=log q, target=log p)
            per_token = F.kl_div(t, s, log_target=True, reduction="none").sum(-1)
        else:
            per_token = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    mask = ro.response_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum()


def lean_loss(policy, teacher, ro, teacher_prompts, pad, loss: LossSettings, micro: int) -> float:
    """What the trainer does: per micro-batch, backward of its share of the step's mean."""
    total = ro.response_mask.sum()
    value = 0.0
    for sl in chunks(len(ro), micro):
        rows = list(range(len(ro)))[sl]
        out = micro_batch_loss(
            policy, lambda: scoring_with(teacher), [ro.prompt_ids[i] for i in rows],
            [teacher_prompts[i] for i in rows], ro.response_ids[sl], ro.response_mask[sl], pad, loss,
        )
        part = (out.per_token * ro.response_mask[sl]).sum() / total
        part.backward()
        value += part.item()
    return value


@pytest.mark.parametrize(
    "loss",
    [
        LossSettings(support="topk", divergence="reverse", top_k=5),
        LossSettings(support="topk", divergence="forward", top_k=5),
        LossSettings(support="full", divergence="reverse"),
        LossSettings(support="sampled", divergence="reverse"),
    ],
    ids=lambda l: f"{l.support}-{l.divergence}",
)
def test_lean_path_equals_full_batch_reference(batch, loss):
    policy, teacher, tok, ro, teacher_prompts = batch
    pad = tok.pad_token_id

    policy.zero_grad(set_to_none=True)
    ref = reference_loss(policy, teacher, ro, teacher_prompts, pad, loss)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}

    policy.zero_grad(set_to_none=True)
    lean = lean_loss(policy, teacher, ro, teacher_prompts, pad, loss, micro=2)

    assert ref.item() != 0.0
    assert lean == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-7, atol=1e-12, msg=name)


def test_topk_path_saves_one_vocabulary_sized_tensor_for_backward(batch):
    """The reference keeps the student's log-softmax *and* more; the lean top-K path keeps only the
    student's logits (for the log-sum-exp's backward), and nothing of the teacher."""
    policy, teacher, tok, ro, teacher_prompts = batch
    vocab = policy.config.vocab_size
    saved: list[torch.Tensor] = []

    def pack(t):
        if t.dim() >= 2 and t.shape[-1] == vocab and t.shape[0] == len(ro):
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = micro_batch_loss(
            policy, lambda: scoring_with(teacher), ro.prompt_ids, teacher_prompts, ro.response_ids,
            ro.response_mask, tok.pad_token_id, LossSettings(support="topk", top_k=5),
        )
    storages = {t.untyped_storage().data_ptr() for t in saved}
    assert out.per_token.shape == ro.response_ids.shape
    assert len(storages) == 1, f"{len(storages)} distinct [n, T, V] tensors saved for backward"

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        micro_batch_loss(
            policy, lambda: scoring_with(teacher), ro.prompt_ids, teacher_prompts, ro.response_ids,
            ro.response_mask, tok.pad_token_id, LossSettings(support="full"),
        )
    assert len({t.untyped_storage().data_ptr() for t in saved}) >= 2  # the check can fail: full keeps more
