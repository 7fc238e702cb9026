"""Lean scoring (micro-batches, teacher under inference_mode reduced to the support at once) gives
the same loss and gradients as a full-batch reference written with F.kl_div, and keeps at most
one [n, T, V] tensor for backward when the support is top-K."""


import pytest
import torch
import torch.nn.functional as F

from opsd_platform.config import ModelConfig
from opsd_platform.models import load_policy
from opsd_platform.training.packing import position_logits, response_logits
from opsd_platform.training.precision import attention_switched
from opsd_platform.training.rollout import HFGenerateEngine
from opsd_platform.training.scoring import LossSettings, micro_batch_loss, scoring_with
from opsd_platform.training.sequences import chat_ids, chunks
from tests.helpers import tiny_fp64_with_perturbed_copy


@pytest.fixture(scope="module")
def batch():
    """A real rollout batch of a tiny fp64 model, a perturbed teacher and longer teacher prompts."""
    policy, teacher, tok = tiny_fp64_with_perturbed_copy()
    messages = ["What is 2 + 3?", "Reverse 'abc'.", "Name a colour."]
    ro = HFGenerateEngine(policy, tok, batch_size=4).generate(messages, n=3, max_new_tokens=12, temperature=1.0)
    teacher_prompts = [chat_ids(tok, f"{messages[g]}\nHint: think of sample {i}.") for i, g in enumerate(ro.group)]
    return policy, teacher, tok, ro, teacher_prompts


@pytest.mark.parametrize("way", ["segments", "packed", "cache"])
def test_shared_prompt_prefix_gives_the_one_pass_logits_and_gradients(batch, way, monkeypatch):
    """Rows with the same prompt share one pass over it (all segments in one unpadded row with
    per-segment attention; one padded row per prompt with a block mask; or its KV cache gathered
    out to them): the logits and the gradients equal one pass per row, also when the rows' prompt
    and response lengths differ."""
    import opsd_platform.training.packing as packing

    if way == "packed":  # what eager-attention models get (and any model under gradient checkpointing)
        monkeypatch.setattr(packing, "_attention", lambda model: "eager")
    if way == "cache":  # what models without a custom-mask attention kernel get
        monkeypatch.setattr(packing, "_attention", lambda model: "another-kernel")
    policy, _, tok, ro, _ = batch
    pad = tok.pad_token_id
    assert len(set(map(tuple, ro.prompt_ids))) < len(ro.prompt_ids)  # samples of a problem share it

    def run(share: bool):
        policy.zero_grad(set_to_none=True)
        logits = response_logits(policy, ro.prompt_ids, ro.response_ids, ro.response_mask, pad, share_prefix=share)
        (logits.sin() * ro.response_mask.unsqueeze(-1)).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}

    ref_logits, ref_grads = run(False)
    logits, grads = run(True)
    mask = ro.response_mask.bool()
    torch.testing.assert_close(logits[mask], ref_logits[mask], rtol=1e-9, atol=1e-9)
    for name, g in ref_grads.items():
        # float32 precision (Llama's RMSNorm computes in float32 whatever the model's dtype, and the
        # shared pass sums the rows' gradients before it, not after); values agree to float64's
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-6 * float(g.abs().max()), msg=name)
    # a mixed batch: two rows per prompt for one problem, one for the others (distinct lengths)
    rows = [0, 1, 3, 6]
    sub = [ro.prompt_ids[i] for i in rows]
    with torch.no_grad():
        a = response_logits(policy, sub, ro.response_ids[rows], ro.response_mask[rows], pad, share_prefix=True)
        b = response_logits(policy, sub, ro.response_ids[rows], ro.response_mask[rows], pad, share_prefix=False)
    m = ro.response_mask[rows].bool()
    torch.testing.assert_close(a[m], b[m], rtol=1e-9, atol=1e-9)
    # and the way asked for is the way taken: how many positions were scored (segments score
    # exactly the ones that exist, each prompt's last one once; packed rows pad to the longest)
    with torch.no_grad():
        scored = position_logits(policy, ro.prompt_ids, ro.response_ids, ro.response_mask, pad)
    tails: dict[tuple, int] = {}
    for prompt, length in zip(ro.prompt_ids, ro.response_mask.sum(1).clamp(min=1).tolist()):
        tails[tuple(prompt)] = tails.get(tuple(prompt), 0) + length - 1
    expected = {"segments": len(tails) + sum(tails.values()), "packed": len(tails) * (1 + max(tails.values())),
                "cache": ro.response_ids.numel()}
    assert scored.flat.shape[0] == expected[way]
    assert policy.config._attn_implementation == "sdpa"  # the segments' attention was switched off again


def test_segment_attention_is_only_switched_on_for_its_own_pass():
    """The segments' attention function is the model's only while `position_logits` runs it (also
    when that pass fails), and refuses to run without its segments."""
    import opsd_platform.training.packing as packing

    policy, tok = load_policy(ModelConfig(source="tiny"), seed=0)
    vocab = policy.config.vocab_size
    with pytest.raises(IndexError):
        position_logits(policy, [[5, 6, 7], [5, 6, 7]], torch.tensor([[vocab + 5, 3], [4, 3]]), torch.ones(2, 2), 0)
    assert policy.config._attn_implementation == "sdpa"
    with attention_switched(policy, packing.SEGMENT_ATTENTION, packing._segment_attention), pytest.raises(RuntimeError, match="segments"):
        policy(input_ids=torch.tensor([[5, 6, 7]]))
    assert policy.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_keeps_the_shared_pass_and_its_gradients():
    """Gradient checkpointing turns the KV cache off in training mode; the packed shared pass
    needs none, so it still applies, with the one-pass gradients."""
    policy, tok = load_policy(ModelConfig(source="tiny"), seed=0)
    policy = policy.double()
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    torch.manual_seed(0)
    prompts, response = [[5, 6, 7]] * 3 + [[8, 9]], torch.randint(3, 50, (4, 5))
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:] = False
    grads = []
    for share in (True, False):
        policy.zero_grad(set_to_none=True)
        logits = response_logits(policy, prompts, response, mask, tok.pad_token_id, share_prefix=share)
        (logits.sin() * mask.unsqueeze(-1)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6 * float(grads[1].abs().max()))


def test_shared_prompt_prefix_with_sliding_window_layers():
    """Gemma 3 (the second model family) mixes sliding-window and full attention layers. A packed
    sequence longer than the window takes the cache path (whose truncated cache still gives the
    same logits); a shorter one is packed into segments."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    prompts = [[5, 6, 7, 8, 9, 10, 11]] * 2 + [[12, 13, 14]] * 2  # longer and shorter than a window of 4
    torch.manual_seed(0)
    response = torch.randint(2, 50, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    for window in (4, 64):
        torch.manual_seed(0)
        cfg = Gemma3TextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=window,
                               max_position_embeddings=128,
                               layer_types=["sliding_attention"] * 3 + ["full_attention"])
        model = Gemma3ForCausalLM(cfg).double().eval()
        with torch.no_grad():
            shared = response_logits(model, prompts, response, mask, 0, share_prefix=True)
            one_pass = response_logits(model, prompts, response, mask, 0, share_prefix=False)
        torch.testing.assert_close(shared[mask], one_pass[mask], rtol=1e-9, atol=1e-9, msg=f"window {window}")


def reference_loss(policy, teacher, ro, teacher_prompts, pad, loss: LossSettings) -> torch.Tensor:
    """Full batch, full-vocabulary log-softmax for both, F.kl_div for the divergence."""
    s = F.log_softmax(response_logits(policy, ro.prompt_ids, ro.response_ids, ro.response_mask, pad, share_prefix=False), dim=-1)
    with torch.no_grad():
        t = F.log_softmax(response_logits(teacher, teacher_prompts, ro.response_ids, ro.response_mask, pad,
                                          share_prefix=False), dim=-1)
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
        # float32 precision, not float64: Llama's RMSNorm computes in float32 whatever the model's
        # dtype, and the shared prompt pass sums the rows' gradients before it, not after
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-6, atol=1e-6 * float(ref_grads[name].abs().max()),
                                   msg=name)


def test_topk_path_saves_one_vocabulary_sized_tensor_for_backward(batch):
    """The reference keeps the student's log-softmax *and* more; the lean top-K path keeps only the
    student's logits (for the log-sum-exp's backward), and nothing of the teacher."""
    policy, teacher, tok, ro, teacher_prompts = batch
    vocab = policy.config.vocab_size
    saved: list[torch.Tensor] = []
    weights = {p.untyped_storage().data_ptr() for p in policy.parameters()}

    def pack(t):  # a vocabulary-wide activation (logits, log-probs), not the LM head's weight
        if t.dim() >= 2 and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in weights:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = micro_batch_loss(
            policy, lambda: scoring_with(teacher), ro.prompt_ids, teacher_prompts, ro.response_ids,
            ro.response_mask, tok.pad_token_id, LossSettings(support="topk", top_k=5),
        )
    storages = {t.untyped_storage().data_ptr() for t in saved}
    assert out.per_token.shape == ro.response_ids.shape
    assert len(storages) == 1, f"{len(storages)} distinct vocabulary-wide tensors saved for backward"

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        micro_batch_loss(
            policy, lambda: scoring_with(teacher), ro.prompt_ids, teacher_prompts, ro.response_ids,
            ro.response_mask, tok.pad_token_id, LossSettings(support="full"),
        )
    assert len({t.untyped_storage().data_ptr() for t in saved}) >= 2  # the check can fail: full keeps more
