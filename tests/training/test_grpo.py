"""GRPO (algorithm=grpo): its loss against a direct reference on hand-computed batches, groups
without signal, one step on the tiny model, learning a task the tiny model can learn, resume."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from opsd_platform.config.compose import train_config
from opsd_platform.runs.train import train
from opsd_platform.training import checkpoint
from opsd_platform.training.losses import aggregation_weights, group_advantages, grpo_loss, grpo_token_loss, k3_kl
from opsd_platform.training.module import OPSDModule
from opsd_platform.worlds.base import Judgement, Problem
from tests.helpers import FailBeforeStep, fit_in_process, tiny_fp64_with_perturbed_copy

EPS = 1e-4  # losses.ADVANTAGE_EPS


# ----------------------------------------------------------------------------- a direct reference


def reference_advantages(rewards, n, scale=True):
    """DeepSeekMath's A_i = (r_i - mean) / (std + eps) per group, written out; 0 for equal rewards."""
    out = []
    for g in range(0, len(rewards), n):
        group = rewards[g : g + n]
        mean = sum(group) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (n - 1))
        for r in group:
            if max(group) == min(group):
                out.append(0.0)
            else:
                out.append((r - mean) / (std + EPS) if scale else r - mean)
    return out


def reference_grpo_loss(logp, old, adv, mask, *, eps_low=0.2, eps_high=None, beta=0.0, ref=None,
                        aggregation="sequence", max_len=None):
    """The GRPO objective one token at a time (DeepSeekMath eq. 3; DAPO's token mean; Dr. GRPO's
    constant), on 0-d tensors so autograd gives its gradient too."""
    eps_high = eps_low if eps_high is None else eps_high
    n_rows, width = logp.shape
    row_sums, row_lens, total = [], [], 0
    for i in range(n_rows):
        terms = []
        for t in range(width):
            if not mask[i][t]:
                continue
            rho = torch.exp(logp[i, t] - (old[i, t] if old is not None else logp[i, t].detach()))
            clipped_rho = torch.clamp(rho, 1 - eps_low, 1 + eps_high)
            term = -torch.minimum(rho * adv[i], clipped_rho * adv[i])
            if beta:
                d = ref[i, t] - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
            terms.append(term)
        row_sums.append(sum(terms))
        row_lens.append(len(terms))
        total += len(terms)
    if aggregation == "sequence":
        return sum(s / length for s, length in zip(row_sums, row_lens)) / n_rows
    if aggregation == "token":
        return sum(row_sums) / total
    return sum(row_sums) / (n_rows * max_len)


# ----------------------------------------------------------------------------- the pure loss


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0])
    adv, zero = group_advantages(rewards, 3)
    # group 0: mean 0.5, sample std 0.5; group 1: no signal; group 2: mean 1/3, std sqrt(1/3)
    s2 = math.sqrt(1 / 3)
    expected = [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), 0.0, 0.0, 0.0, 0.0,
                (2 / 3) / (s2 + EPS), (-1 / 3) / (s2 + EPS), (-1 / 3) / (s2 + EPS)]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert zero.tolist() == [False, True, False]
    assert adv[3:6].tolist() == [0.0, 0.0, 0.0]  # exactly 0, although 0.1 - mean(0.1, 0.1, 0.1) is not
    unscaled, _ = group_advantages(rewards, 3, scale=False)  # Dr. GRPO
    torch.testing.assert_close(unscaled, torch.tensor(reference_advantages(rewards.tolist(), 3, scale=False)))
    torch.testing.assert_close(adv, torch.tensor(reference_advantages(rewards.tolist(), 3)))
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        group_advantages(rewards, 1)
    with pytest.raises(ValueError, match=r"\[B \* n\] with n=4"):
        group_advantages(rewards, 4)


def test_clipped_ratio_on_a_hand_computed_batch():
    """Two rows, ratios exp(+-0.3) (outside [0.8, 1.2]) and exp(+-0.1) (inside), advantages +-1."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.3, 0.1, -0.3], [0.3, -0.1, -0.3]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = grpo_token_loss(logp, old, adv, clip_eps=0.2)
    e = math.exp
    # A > 0: -min(rho, clip(rho)) -> -1.2 at rho = e^.3 (clipped), -e^.1, -e^-.3 (the min is rho itself)
    # A < 0: -min(-rho, -clip(rho)) = max(rho, clip(rho)) -> e^.3, 0.9048, 0.8 at rho = e^-.3 (clipped)
    expected = torch.tensor([[-1.2, -e(0.1), -e(-0.3)], [e(0.3), e(-0.1), 0.8]])
    torch.testing.assert_close(loss, expected)
    assert clipped.tolist() == [[True, False, False], [False, False, True]]
    loss.sum().backward()
    # clipped tokens get no gradient; the others -A * rho (d rho / d logp = rho)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -e(0.1), -e(-0.3)], [e(0.3), e(-0.1), 0.0]]))
    high, clipped_high = grpo_token_loss(logp.detach(), old, adv, clip_eps=0.2, clip_eps_high=0.4)  # DAPO clip-higher
    assert high[0, 0].item() == pytest.approx(-e(0.3)) and not clipped_high[0, 0]


def test_on_policy_loss_is_reinforce_with_the_group_baseline():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    adv = torch.tensor([0.7, -0.7])
    loss, clipped = grpo_token_loss(logp, None, adv)
    torch.testing.assert_close(loss, torch.tensor([[-0.7, -0.7], [0.7, 0.7]]))  # ratio 1
    assert not clipped.any()
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.7, -0.7], [0.7, 0.7]]))  # -A d logp


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_loss_matches_the_direct_reference_with_masking(aggregation, beta):
    g = torch.Generator().manual_seed(0)
    n_rows, width = 6, 5
    rewards = [1.0, 0.0, 0.0, 0.3, 0.3, 0.3]  # two groups of 3, the second without signal
    adv = torch.tensor(reference_advantages(rewards, 3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    old = -torch.rand(n_rows, width, generator=g) * 2
    logp0 = old + 0.4 * torch.randn(n_rows, width, generator=g)  # some ratios leave [0.8, 1.28]
    logp0 = torch.where(mask, logp0, torch.full_like(logp0, 30.0))  # garbage past each response's end
    ref = old + 0.2 * torch.randn(n_rows, width, generator=g)
    kw = dict(clip_eps=0.2, clip_eps_high=0.28, ref_logp=ref, kl_beta=beta, aggregation=aggregation, max_len=width)
    a, b = logp0.clone().requires_grad_(True), logp0.clone().requires_grad_(True)
    ours = grpo_loss(a, old, adv, mask, **kw)
    theirs = reference_grpo_loss(b, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=beta, ref=ref,
                                 aggregation=aggregation, max_len=width)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[~mask] == 0).all()
    _, clipped = grpo_token_loss(logp0, old, adv, clip_eps=0.2, clip_eps_high=0.28)
    assert clipped[mask].any() and not clipped[mask].all()  # the batch does exercise the clip
    if beta == 0:
        assert (a.grad[3:] == 0).all()  # the group without signal


def test_aggregation_weights_and_k3():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    w, norm = aggregation_weights(mask, "sequence")
    assert w.tolist() == [0.5, 0.25] and norm == 2.0
    w, norm = aggregation_weights(mask, "token")
    assert w.tolist() == [1.0, 1.0] and norm == 6.0
    w, norm = aggregation_weights(mask, "constant", max_len=8)
    assert w.tolist() == [1.0, 1.0] and norm == 16.0
    with pytest.raises(ValueError, match="unknown aggregation 'mean'; valid: sequence, token, constant"):
        aggregation_weights(mask, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregation_weights(mask, "constant")
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    torch.testing.assert_close(k3_kl(lp, ref), torch.tensor([0.0, math.exp(0.5) - 0.5 - 1]))
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_token_loss(lp.unsqueeze(0), None, torch.tensor([1.0]), kl_beta=0.1)


def test_groups_without_signal_give_zero_gradient():
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.7, 0.7])  # every group's rewards are equal
    adv, zero = group_advantages(rewards, 2)
    assert zero.all() and (adv == 0).all()
    logp = torch.randn(8, 4, requires_grad=True)
    old = logp.detach() + 0.5 * torch.randn(8, 4)
    loss = grpo_loss(logp, old, adv, torch.ones(8, 4, dtype=torch.bool), aggregation="token")
    loss.backward()
    assert loss.item() == 0.0 and (logp.grad == 0).all()


# ----------------------------------------------------------------------------- micro-batches


@pytest.mark.parametrize("aggregation,kl_beta,reused", [("sequence", 0.0, False), ("token", 0.1, True),
                                                        ("constant", 0.0, True)])
def test_micro_batches_give_the_full_batch_loss_and_gradient(aggregation, kl_beta, reused):
    """grpo.micro_batch_loss over micro-batches of the rows with signal (prompts shared, the
    reference scored once), divided by the step's normaliser, equals losses.grpo_loss on one
    plain forward of the whole batch, in value and gradient (tiny fp64 model, a real rollout)."""
    from types import SimpleNamespace

    from opsd_platform.training import grpo
    from opsd_platform.training.packing import response_logits
    from opsd_platform.training.rollout import HFGenerateEngine
    from opsd_platform.training.scoring import scoring_with
    from opsd_platform.training.sequences import chunks

    policy, reference, tok = tiny_fp64_with_perturbed_copy()
    ro = HFGenerateEngine(policy, tok, batch_size=4).generate(["What is 2 + 3?", "Reverse 'abc'.", "Name a colour."],
                                                              n=3, max_new_tokens=12, temperature=1.0)
    loss = SimpleNamespace(scale_advantages=True, aggregation=aggregation, clip_eps=0.2, clip_eps_high=0.28,
                           kl_beta=kl_beta)
    signal = grpo.group_signal([1.0, 0.0, 0.5, 0.2, 0.2, 0.2, 0.0, 0.0, 1.0], 3, ro.response_mask, loss, 12)
    assert signal.zero_signal.tolist() == [False, True, False]
    assert signal.rows == (list(range(9)) if kl_beta else [0, 1, 6, 7, 8])  # row 2 (reward = its group's mean) and
    # the group without signal are skipped: their advantage is 0
    pad = tok.pad_token_id

    def full_logp(model):
        logits = response_logits(model, ro.prompt_ids, ro.response_ids, ro.response_mask, pad, share_prefix=False)
        return torch.log_softmax(logits, dim=-1).gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)  # fp64

    with torch.no_grad():
        ref = full_logp(reference)
        old = full_logp(policy) + (0.3 * torch.randn(ro.response_ids.shape, dtype=torch.float64) if reused else 0.0)
    policy.zero_grad()
    expected = grpo_loss(full_logp(policy), old if reused else None, signal.advantages.double(), ro.response_mask,
                         aggregation=aggregation, max_len=12, clip_eps=0.2, clip_eps_high=0.28, ref_logp=ref,
                         kl_beta=kl_beta)
    expected.backward()
    expected_grad = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    total = 0.0
    for sl in chunks(len(signal.rows), 4):
        rows = signal.rows[sl]
        out = grpo.micro_batch_loss(policy, lambda: scoring_with(reference), rows, [ro.prompt_ids[i] for i in rows],
                                    ro.response_ids[rows], ro.response_mask[rows], pad, signal,
                                    old[rows] if reused else None, loss)
        part = (out.per_token * ro.response_mask[rows]).sum() / signal.normaliser
        part.backward()
        total += part.item()
    assert total == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    for name, p in policy.named_parameters():
        g = expected_grad[name]  # tolerances as tests/training/test_scoring.py's (packed vs one-pass attention)
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-6 * float(g.abs().max()), msg=name)
    if reused:
        assert 0 < signal.clipped_tokens < signal.ratio_tokens  # the clip is exercised and counted


# ----------------------------------------------------------------------------- on the tiny model


class DigitWorld:
    """Reward = the share of the response's characters that are digits: dense, and a tiny random
    model can raise it within a few dozen GRPO steps (it starts near 10 of ~100 characters)."""

    name = "digits"

    def problems(self, split):
        return [Problem(f"digits-{split}-{i}", f"Write digits, item {i}", "0123", 1) for i in range(8 if split == "train" else 4)]

    def judge(self, problem, response):
        share = sum(c.isdigit() for c in response) / max(1, len(response))
        return Judgement(share, f"{share:.2f} of the characters are digits", share >= 0.5)

    def judge_many(self, problems, responses):
        return [self.judge(p, r) for p, r in zip(problems, responses)]


def fit(cfg, world=None, prepare=None) -> OPSDModule:
    """Train `cfg` in process on `world` (default: the config's), on one thread: the tiny model's
    ops are too small to gain from more, and lose much on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit_in_process(cfg, world, prepare)
    finally:
        torch.set_num_threads(threads)


def steps(module):
    return [h for h in module.history if "train/loss" in h]


@pytest.mark.parametrize("kl_beta", [0.0, 0.05])
def test_one_grpo_step_changes_every_trainable_parameter_and_holds_no_teacher(tiny_overrides, kl_beta):
    cfg = train_config(tiny_overrides + ["algorithm=grpo", "trainer.max_steps=1", "optim.lr=1e-3",
                                         "trainer.validate=false", f"loss.kl_beta={kl_beta}"])
    before = {}
    module = fit(cfg, DigitWorld(), prepare=lambda m: before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}))
    (step,) = steps(module)
    assert step["grpo/zero_signal_frac"] < 1 and step["grpo/advantage_std"] > 0 and step["grpo/clip_frac"] == 0.0
    assert "teacher/mask_frac" not in step
    for name, p in module.policy.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    assert module.teacher is None  # GRPO has no teacher
    if kl_beta == 0:
        assert module.reference is None  # ... and keeps no copy of the weights
    else:  # the KL reference: the frozen initial weights
        for name, t in module.reference.model.named_parameters():
            assert torch.equal(t, before[name]) and not t.requires_grad, name


def test_a_batch_without_signal_makes_no_update(tiny_overrides):
    """The tiny model never solves arithmetic: every group's rewards are 0, so nothing moves."""
    cfg = train_config(tiny_overrides + ["algorithm=grpo", "trainer.max_steps=2", "trainer.validate=false"])
    before = {}
    module = fit(cfg, prepare=lambda m: before.update({k: v.detach().clone() for k, v in m.policy.named_parameters()}))
    for step in steps(module):
        assert step["grpo/zero_signal_frac"] == 1.0 and step["train/loss"] == 0.0 and step["train/grad_norm"] == 0.0
    for name, p in module.policy.named_parameters():
        assert torch.equal(before[name], p.detach()), name


def test_grpo_learns_what_a_tiny_model_can_learn(tiny_overrides):
    """30 GRPO steps on DigitWorld: the mean rollout reward rises from ~0.1 to well above 0.5."""
    cfg = train_config(tiny_overrides + ["algorithm=grpo", "trainer.max_steps=30", "optim.lr=3e-3",
                                         "trainer.validate=false"])
    rewards = [h["rollout/reward_mean"] for h in steps(fit(cfg, DigitWorld()))]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.35 and last > 0.7, f"reward did not rise: {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("extra", [["loss.aggregation=token", "loss.scale_advantages=false"],
                                   ["loss.aggregation=constant", "loss.clip_eps_high=0.28"]])
def test_batch_reuse_clips_and_other_variants_run(tiny_overrides, extra):
    cfg = train_config(tiny_overrides + ["algorithm=grpo", "trainer.max_steps=2", "optim.lr=3e-2",
                                         "trainer.validate=false", "trainer.updates_per_batch=3",
                                         "rollout.batch_size=5", *extra])
    history = steps(fit(cfg, DigitWorld()))
    assert len(history) == 2 and all(math.isfinite(h["train/loss"]) for h in history)
    assert any(h["grpo/clip_frac"] > 0 for h in history)  # a large lr moves ratios out of the clip range


# ----------------------------------------------------------------------------- tracking and resume


def _history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_failed_grpo_run_resumes_bitwise_and_is_tracked(tiny_overrides, tmp_path, monkeypatch):
    """As the OPSD resume tests (test_checkpoint.py): a run failing before step 4 (newest checkpoint:
    step 2) resumes to the weights, KL reference and optimizer state of an uninterrupted run, each
    step logged once; the run carries the algorithm tag and GRPO's metrics."""
    monkeypatch.setattr("opsd_platform.runs.train.make_world", lambda cfg, seed=0: DigitWorld())
    threads = torch.get_num_threads()
    try:
        _failed_grpo_run_resumes(tiny_overrides, tmp_path)
    finally:
        torch.set_num_threads(threads)  # trainer.num_threads=1 below sets it for the whole process


def _failed_grpo_run_resumes(tiny_overrides, tmp_path):
    base = tiny_overrides + ["algorithm=grpo", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                             "optim.lr=3e-3", "loss.kl_beta=0.05", "trainer.updates_per_batch=2",
                             "trainer.reuse_measurements=false", "rollout.val_samples=1", "trainer.num_threads=1"]
    reference = train(train_config(base + [f"tracking.uri=sqlite:///{tmp_path}/reference.db"]))
    with pytest.raises(Exception, match="injected failure"):
        train(train_config(base), gate=FailBeforeStep(4))
    (run_dir,) = (tmp_path / "checkpoints").iterdir()
    assert [c.step for c in checkpoint.list_checkpoints(run_dir)] == [2]
    assert checkpoint.list_checkpoints(run_dir)[0].state()["teacher"] is None  # nothing but the policy to keep
    result = train(train_config(base + [f"resume={run_dir.name}"]))
    client = MlflowClient(tracking_uri=result.tracking_uri)
    ref_client = MlflowClient(tracking_uri=reference.tracking_uri)
    run, ref_run = client.get_run(result.run_id), ref_client.get_run(reference.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == "grpo"
    assert run.data.tags["config"] == "tiny/arithmetic/grpo"
    for key in ("train/loss", "rollout/reward_mean", "val/pass_rate", "improvement", "grpo/advantage_std",
                "grpo/zero_signal_frac", "grpo/clip_frac"):
        assert key in run.data.metrics, key
        assert _history(client, result.run_id, key) == _history(ref_client, reference.run_id, key), key
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1, 2, 3, 4]
    for part in ("policy", "teacher", "optimizer"):
        assert run.data.tags[f"opsd.{part}_sha256"] == ref_run.data.tags[f"opsd.{part}_sha256"], part
    assert result.improvement == pytest.approx(reference.improvement)


# ----------------------------------------------------------------------------- the law is OPSD's


def test_grpo_runs_are_never_law_points_and_calibration_refuses_grpo(tmp_path, capsys):
    from opsd_platform.cli import main
    from opsd_platform.law.pipeline import collect_points
    from tests.helpers import log_points

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, [("none", 0, 0.0, 0.0), ("reference", 0, 0.3, 0.2)])
    log_points(uri, [("feedback", 0, 0.1, 0.5)], calibration="grpo-runs")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    (grpo_run,) = client.search_runs([exp.experiment_id], "tags.`calibrate.name` = 'grpo-runs'")
    client.set_tag(grpo_run.info.run_id, "algorithm", "grpo")  # a GRPO run that measured a gap anyway
    assert sorted(collect_points(uri, "opsd")["context"]) == ["none", "reference"]
    assert main(["calibrate", "model=tiny", "algorithm=grpo", f"tracking.uri={uri}"]) == 2
    assert "calibrate: algorithm=grpo: the law is fitted on OPSD runs" in capsys.readouterr().err
