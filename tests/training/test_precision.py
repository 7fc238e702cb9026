"""trainer.precision=bf16-mixed: bf16 matmuls under autocast, fp32 master weights and optimizer
state, a per-token loss within a stated tolerance of fp32's, and measurements keyed apart.

The tolerance (docs/precision.md). bf16 keeps 8 significant bits: unit roundoff
u = 2^-8 (~0.004, "about 3 digits"). If every logit of a position is off by at most d, every
log-prob on the support (the tail bucket too) is off by at most 2d, and the reverse KL
sum_k p_s (l_s - l_t) by at most 4d (1 + D), D = sum_k p_s |l_s - l_t| (first order: 2d from the
log-prob differences, 2d D from the weights p_s). That bound, with d the largest logit error of
student and teacher at the position, is asserted per token: the loss itself adds nothing to
bf16's logit error (its log-softmax and divergence run in fp32). The stated tolerance on top of
it is max_t |loss_bf16 - loss_fp32| <= 8u (1 + max_t loss_fp32) = 2^-5 (1 + max loss): 8u is a
logit error d of 2u in units of the loss scale, a few roundings of bf16's ~3 digits.
"""

import copy

import lightning as L
import pytest
import torch

from opsd_platform.config import ConfigError, config_hash
from opsd_platform.config.compose import train_config
from opsd_platform.gap.measurements import student_key_fields, teacher_key_fields, val_key_fields
from opsd_platform.models import load_policy
from opsd_platform.runs.train import run_gap
from opsd_platform.training.losses import support_index_at, support_logprobs_at
from opsd_platform.training.module import OPSDModule
from opsd_platform.training.packing import position_logits
from opsd_platform.training.precision import autocast
from opsd_platform.training.rollout import HFGenerateEngine
from opsd_platform.training.scoring import micro_batch_loss, scoring_with
from opsd_platform.training.sequences import chat_ids
from opsd_platform.worlds import make_world
from tests.helpers import fit_in_process as fit  # one Lightning fit of the tiny model, as the training tests run it

U = 2.0**-8  # bf16's unit roundoff
TOLERANCE_FACTOR = 8 * U  # max per-token |diff| <= 8u (1 + max fp32 per-token loss)


@pytest.fixture(scope="module", params=[0.02, 0.2], ids=["init0.02", "init0.2"])
def batch(request):
    """A rollout of the tiny model (default init, and a larger one whose per-token losses are
    O(1) nats), a teacher whose weights are off by 5 % (as an EMA teacher is a little off the
    student), and teacher prompts longer than the student's."""
    cfg = train_config(["model=tiny", f"model.tiny.init_std={request.param}"])
    torch.manual_seed(0)
    policy, tok = load_policy(cfg.model, seed=0)
    teacher = copy.deepcopy(policy).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * request.param * torch.randn_like(p))
    messages = ["What is 2 + 3?", "Reverse 'abc'.", "Name a colour.", "What is 7 * 6?"]
    ro = HFGenerateEngine(policy, tok, batch_size=16).generate(messages, n=4, max_new_tokens=16, temperature=1.0)
    teacher_prompts = [chat_ids(tok, f"{messages[g]}\nThe answer is {i}.") for i, g in enumerate(ro.group)]
    return cfg, policy, teacher, tok, ro, teacher_prompts


def test_bf16_per_token_loss_is_within_the_stated_tolerance_of_fp32(batch):
    cfg, policy, teacher, tok, ro, teacher_prompts = batch
    pad, mask = tok.pad_token_id, ro.response_mask.bool()

    def run(precision):
        with autocast(precision, "cpu"):
            scored = micro_batch_loss(policy, lambda: scoring_with(teacher), ro.prompt_ids, teacher_prompts,
                                      ro.response_ids, ro.response_mask, pad, cfg.loss)
            with torch.no_grad():
                logits = [position_logits(m, p, ro.response_ids, ro.response_mask, pad)
                          for m, p in ((policy, ro.prompt_ids), (teacher, teacher_prompts))]
        assert scored.per_token.dtype == torch.float32  # the loss runs in fp32 either way
        return scored.per_token.detach(), logits

    loss32, (s32, t32) = run("32")
    loss16, (s16, t16) = run("bf16-mixed")
    assert s16.flat.dtype == torch.bfloat16 and s32.flat.dtype == torch.float32  # autocast did apply
    diff = (loss16 - loss32).abs()

    def logit_error(a, b):  # [N, T] largest logit error at each response position
        return (a.flat.float() - b.flat.float()).abs().max(-1).values[a.where]

    d = torch.maximum(logit_error(s16, s32), logit_error(t16, t32))
    index = support_index_at(s32.flat, s32.where, ro.response_ids, cfg.loss.support, cfg.loss.top_k)
    log_s, log_t = (support_logprobs_at(x.flat, x.where, index, cfg.loss.support) for x in (s32, t32))
    spread = (log_s.exp() * (log_s - log_t).abs()).sum(-1)  # D at each position
    bound = 4 * d * (1 + spread)
    assert (diff[mask] <= bound[mask] + 1e-6).all(), float((diff - bound)[mask].max())
    tolerance = TOLERANCE_FACTOR * (1 + float(loss32[mask].max()))
    measured = float(diff[mask].max())
    print(f"\nmax per-token |bf16 - fp32| = {measured:.3g} (tolerance {tolerance:.3g}; fp32 losses up to "
          f"{float(loss32[mask].max()):.3g}; largest logit error {float(d[mask].max()):.3g})")
    assert measured < tolerance
    assert measured > 0  # bf16 did change the numbers: the comparison is not fp32 against itself


@pytest.mark.parametrize("extra", [[], ["trainer.updates_per_batch=2"]], ids=["one-update", "reused-batch"])
def test_one_bf16_step_trains_fp32_master_weights(tiny_overrides, monkeypatch, extra):
    cfg = train_config(tiny_overrides + ["trainer.max_steps=1", "context=reference", "optim.lr=1e-3",
                                         "trainer.validate=false", "trainer.precision=bf16-mixed", *extra])
    seen = []  # the logits' dtype of every forward of the step: rollout, student, teacher
    real_forward = torch.nn.Module.__call__

    def record(module, *args, **kwargs):
        out = real_forward(module, *args, **kwargs)
        if getattr(out, "logits", None) is not None:
            seen.append(out.logits.dtype)
        return out

    before = {}
    module = fit(cfg, prepare=lambda m: (before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}),
                                         monkeypatch.setattr(type(m.policy), "__call__", record)))
    assert seen and set(seen) == {torch.bfloat16}, seen
    loss = module.history[0]["train/loss"]
    assert loss > 0 and torch.isfinite(torch.tensor(loss)) and module.skipped_nonfinite == 0
    for name, p in module.policy.named_parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32), name
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    for state in module.optimizers().optimizer.state.values():  # AdamW's moments: fp32 too
        assert {v.dtype for k, v in state.items() if k != "step"} == {torch.float32}
    for t in module.teacher.model.parameters():
        assert t.dtype == torch.float32


def test_lightnings_own_precision_plugin_is_refused(tiny_overrides):
    """The module opens its own autocast scopes (precision.py); one from Lightning around the
    whole step would keep bf16 copies of the weights across the optimizer step."""
    cfg = train_config(tiny_overrides + ["trainer.max_steps=1", "trainer.validate=false", "trainer.precision=bf16-mixed"])
    model, tok = load_policy(cfg.model, seed=cfg.seed)
    module = OPSDModule(cfg, model, tok, make_world(cfg.world, seed=cfg.seed))
    with pytest.raises(ValueError, match="default precision"):
        L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, precision="bf16-mixed",
                  enable_progress_bar=False, enable_model_summary=False).fit(module)


def test_the_gap_is_measured_under_bf16_under_keys_of_its_own(tiny_overrides):
    base = tiny_overrides + ["context=reference", "gap.n_problems=4", "gap.samples=2"]
    fp32, bf16 = train_config(base), train_config(base + ["trainer.precision=bf16-mixed"])
    for key in (val_key_fields, student_key_fields, teacher_key_fields):
        assert key(fp32) != key(bf16)
        assert "precision" not in key(fp32)["model"]  # fp32 keeps the keys stored before the setting
    _, gap32 = run_gap(fp32)
    _, gap16 = run_gap(bf16)  # same store, same seed: nothing of fp32's may be reused
    assert gap16.reused == [] and gap16.n_problems == 4 and gap16.tokens_generated > 0
    assert gap16.gap == pytest.approx(gap16.teacher_pass_rate - gap16.student_pass_rate)
    assert gap32.reused == []


def test_precision_setting_is_validated_and_hashed_only_when_set():
    assert train_config(["trainer.precision=32"]).trainer.precision == "32"  # an int on the command line
    assert config_hash(train_config(["trainer.precision=32"])) == config_hash(train_config([]))
    assert config_hash(train_config(["trainer.precision=bf16-mixed"])) != config_hash(train_config([]))
    with pytest.raises(ConfigError, match=r"trainer.precision: unknown value 'bf16'; valid: 32, bf16-mixed"):
        train_config(["trainer.precision=bf16"])
    with pytest.raises(ConfigError, match="trainer.precision: bf16-mixed applies to the hf engine only"):
        train_config(["rollout.engine=vllm", "trainer.precision=bf16-mixed"])


def test_bf16_sampling_runs_attention_in_fp32_then_restores_the_model(monkeypatch):
    """Under bf16 on CPU the rollout's attention gets fp32 q, k, v (precision.sampling_attention:
    torch's bf16 CPU kernel is slow for one-token queries), its matmuls stay bf16, and the model's
    own attention implementation is back once sampling ends; fp32 sampling is untouched."""
    cfg = train_config(["model=tiny"])
    policy, tok = load_policy(cfg.model, seed=0)
    own = policy.config._attn_implementation
    seen: list[torch.dtype] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def record(query, *args, **kwargs):  # the dtype the kernel runs in: autocast casts inside the call
        seen.append(torch.bfloat16 if torch.is_autocast_enabled("cpu") else query.dtype)
        return real_sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    logits_dtypes = []
    hook = policy.register_forward_hook(lambda m, a, out: logits_dtypes.append(out.logits.dtype))
    for precision, attention in (("bf16-mixed", torch.float32), ("32", torch.float32)):
        seen.clear(), logits_dtypes.clear()
        ro = HFGenerateEngine(policy, tok, batch_size=8, precision=precision).generate(["What is 2 + 3?"], n=4, max_new_tokens=6, temperature=1.0)
        assert ro.num_tokens > 0 and seen and set(seen) == {attention}, (precision, set(seen))
        assert set(logits_dtypes) == {torch.bfloat16 if precision == "bf16-mixed" else torch.float32}
        assert policy.config._attn_implementation == own
    hook.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # outside sampling, autocast's bf16 attention is left as it is
        seen.clear()
        policy(input_ids=torch.tensor([chat_ids(tok, "hi")]))
    assert set(seen) == {torch.bfloat16}
