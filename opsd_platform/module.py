"""OPSDModule: one on-policy self-distillation step, in the order it happens.

    rollout  -> the student samples n answers per problem (no grad)
    judge    -> the world returns a reward and feedback text for each answer
    contexts -> each sample gets a teacher prompt (student prompt + privileged context) or none
    teacher  -> the self-teacher scores the student's own tokens under its prompt (no grad)
    update   -> per-token divergence, masked mean, backward, clip, AdamW step
    sync     -> teacher update (EMA of the student / fixed initial weights / the live student)

Validation (pass rate, mean over k samples, on the held-out split) runs before the first step and
after the last; the run's metric ``improvement`` is final minus initial pass rate.

Where this departs from the sources:
- Teacher and student log-probs are computed per micro-batch and the loss is backpropagated per
  micro-batch, normalised by the token count of the whole step, so two full ``[N, T, V]`` tensors
  are never alive at once and the result equals the full-batch loss.
- With ``trainer.updates_per_batch > 1`` the rollout batch is reused; later updates weight each
  token by the clipped importance ratio against the log-probs of the first update, and the
  teacher is re-scored after each EMA update (SDPO scores it once per batch).
- A step whose loss is not finite is skipped (no optimizer step, no teacher update) and counted
  in ``train/skipped_nonfinite``; the run goes on.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import lightning as L
import torch

from opsd_platform.config import TrainConfig
from opsd_platform.contexts import build_for_rollouts
from opsd_platform.evaluation import Evaluation, evaluate
from opsd_platform.losses import importance_weights, sequence_logprobs, token_divergence
from opsd_platform.rollout import HFGenerateEngine, Rollouts, chat_ids, chunks, response_logits
from opsd_platform.worlds.base import World


class Teacher:
    """The self-teacher's weights: an EMA copy, the frozen initial weights, or the live student."""

    def __init__(self, kind: str, policy: torch.nn.Module, ema_rate: float):
        self.kind = kind
        self.ema_rate = ema_rate
        self.policy = policy
        self._uses_adapter_off = kind == "fixed" and hasattr(policy, "disable_adapter")
        if kind == "live" or self._uses_adapter_off:
            self.model = None  # scores with the policy itself (adapter disabled for a fixed LoRA teacher)
        else:
            self.model = copy.deepcopy(policy).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def scoring(self):
        """Yield the module to score with, under no grad."""
        with torch.no_grad():
            if self.model is not None:
                yield self.model
            elif self._uses_adapter_off:
                with self.policy.disable_adapter():
                    yield self.policy
            else:
                yield self.policy

    @torch.no_grad()
    def update(self) -> None:
        if self.kind != "ema":
            return
        for t, s in zip(self.model.parameters(), self.policy.parameters()):
            t.lerp_(s.detach(), self.ema_rate)


class OPSDModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, tokenizer, world: World):
        super().__init__()
        self.automatic_optimization = False  # generation inside the step: we own the optimizer calls
        self.cfg = cfg
        self.policy = model
        self.tokenizer = tokenizer
        self.world = world
        self.teacher = Teacher(cfg.teacher.kind, model, cfg.teacher.ema_rate)
        self.engine = HFGenerateEngine(model, tokenizer, cfg.rollout.batch_size)
        self.train_problems = world.problems("train")
        self.val_problems = world.problems("val")
        if not self.train_problems or not self.val_problems:
            raise ValueError(
                f"world {world.name!r} gave {len(self.train_problems)} train and "
                f"{len(self.val_problems)} val problems; both must be non-empty"
            )
        self.skipped_nonfinite = 0
        self.tokens_generated = 0
        self.initial_val: Evaluation | None = None
        self.final_val: Evaluation | None = None
        self.history: list[dict[str, float]] = []  # every logged metric dict, for tests and reports

    # ------------------------------------------------------------------ Lightning plumbing

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay)

    def train_dataloader(self):
        """One item per OPSD step: the indices of that step's problems (epoch-wise shuffles)."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        n, k = len(self.train_problems), self.cfg.rollout.prompts_per_step
        order: list[int] = []
        while len(order) < self.cfg.trainer.max_steps * k:
            order += torch.randperm(n, generator=gen).tolist()
        steps = [order[s * k : (s + 1) * k] for s in range(self.cfg.trainer.max_steps)]
        return torch.utils.data.DataLoader(steps, batch_size=None, collate_fn=lambda x: x, shuffle=False)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.history.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ validation

    def validate_policy(self) -> Evaluation:
        r = self.cfg.rollout
        return evaluate(
            self.engine,
            self.world,
            self.val_problems,
            [p.prompt for p in self.val_problems],
            k=r.val_samples,
            max_new_tokens=r.max_new_tokens,
            temperature=r.val_temperature,
            top_p=r.val_top_p,
        )

    def log_samples(self, name: str, evaluation: Evaluation, limit: int = 24) -> None:
        """Validation answers with their verdicts as a run artifact: what the numbers are made of."""
        if self.logger is None or not hasattr(self.logger, "run_id"):
            return
        k = self.cfg.rollout.val_samples
        rows = [
            {"problem": self.val_problems[i // k].id, "prompt": self.val_problems[i // k].prompt, "response": text,
             "reward": j.reward, "passed": j.passed, "feedback": j.feedback}
            for i, (text, j) in enumerate(zip(evaluation.texts, evaluation.judgements))
        ][:limit]
        self.logger.experiment.log_dict(self.logger.run_id, rows, f"samples/{name}.json")

    def on_train_start(self) -> None:
        if self.cfg.trainer.validate:
            self.initial_val = self.validate_policy()
            self.log_metrics(
                {"val/pass_rate": self.initial_val.pass_rate, "val/reward_mean": self.initial_val.reward_mean}, step=0
            )
            self.log_samples("val_initial", self.initial_val)

    def on_train_end(self) -> None:
        if not self.cfg.trainer.validate:
            return
        self.final_val = self.validate_policy()
        self.log_samples("val_final", self.final_val)
        metrics = {"val/pass_rate": self.final_val.pass_rate, "val/reward_mean": self.final_val.reward_mean}
        if self.initial_val is not None:
            metrics["improvement"] = self.final_val.pass_rate - self.initial_val.pass_rate
        self.log_metrics(metrics, step=self.cfg.trainer.max_steps)

    # ------------------------------------------------------------------ the OPSD step

    def training_step(self, batch: list[int], batch_idx: int) -> None:
        cfg, r = self.cfg, self.cfg.rollout
        times: dict[str, float] = {}
        clock = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[f"time/{name}_s"] = now - clock
            clock = now

        # 1. rollout: n samples per problem from the current student
        problems = [self.train_problems[i] for i in batch]
        ro = self.engine.generate([p.prompt for p in problems], r.samples_per_prompt, r.max_new_tokens, r.temperature, r.top_p)
        self.tokens_generated += ro.num_tokens
        phase("rollout")

        # 2. judge
        judgements = self.world.judge_many([problems[g] for g in ro.group], ro.texts)
        phase("judge")

        # 3. contexts: rows are prompt-major, so groups of n consecutive rows share a problem
        teacher_messages = build_for_rollouts(cfg.context, problems, ro.texts, judgements, r.samples_per_prompt)
        rows = [i for i, m in enumerate(teacher_messages) if m is not None]
        teacher_prompts = {i: chat_ids(self.tokenizer, teacher_messages[i]) for i in rows}
        phase("contexts")

        # 4-5. teacher scoring + loss + update (per micro-batch, see the module docstring)
        loss_value, grad_norm = self._update(ro, rows, teacher_prompts, times)

        rewards = [j.reward for j in judgements]
        metrics = {
            "train/loss": loss_value,
            "train/grad_norm": grad_norm,
            "train/skipped_nonfinite": float(self.skipped_nonfinite),
            "rollout/reward_mean": sum(rewards) / len(rewards),
            "rollout/pass_rate": sum(j.passed for j in judgements) / len(judgements),
            "rollout/response_len": ro.num_tokens / len(ro),
            "rollout/tokens_total": float(self.tokens_generated),
            "teacher/mask_frac": len(rows) / len(ro),
            "teacher/tokens": float(ro.response_mask[rows].sum()) if rows else 0.0,
            **times,
        }
        metrics["time/step_s"] = sum(v for k, v in times.items() if k.startswith("time/"))
        self.log_metrics(metrics, step=batch_idx + 1)
        self.log_dict(
            {"loss": loss_value, "reward": metrics["rollout/reward_mean"], "mask": metrics["teacher/mask_frac"]},
            prog_bar=True,
            logger=False,
            on_step=True,
            batch_size=len(ro),
        )

    def _update(
        self, ro: Rollouts, rows: list[int], teacher_prompts: dict[int, list[int]], times: dict[str, float]
    ) -> tuple[float, float]:
        """Teacher scoring, loss and optimizer step(s). Returns (loss, grad norm); a skipped
        (non-finite) step is counted in `self.skipped_nonfinite`."""
        cfg, lc = self.cfg, self.cfg.loss
        opt = self.optimizers()
        pad = self.tokenizer.pad_token_id
        if not rows:  # no sample has a teacher: nothing to learn from this batch
            return 0.0, 0.0
        total_tokens = ro.response_mask[rows].sum().clamp(min=1)
        old_logp: dict[int, torch.Tensor] = {}
        teacher_s = update_s = 0.0
        loss_value, grad_norm = 0.0, 0.0
        reuse = cfg.trainer.updates_per_batch > 1
        for update in range(cfg.trainer.updates_per_batch):
            opt.zero_grad(set_to_none=True)
            loss_value, finite = 0.0, True
            for sl in chunks(len(rows), cfg.rollout.batch_size):
                chunk = rows[sl]
                resp, mask = ro.response_ids[chunk], ro.response_mask[chunk]
                t0 = time.perf_counter()
                with self.teacher.scoring() as teacher:
                    t_logits = response_logits(teacher, [teacher_prompts[i] for i in chunk], resp, mask, pad)
                t1 = time.perf_counter()
                s_logits = response_logits(self.policy, [ro.prompt_ids[i] for i in chunk], resp, mask, pad)
                per_token = token_divergence(
                    s_logits, t_logits, resp,
                    divergence=lc.divergence, alpha=lc.alpha, support=lc.support,
                    top_k=lc.top_k, token_clip=lc.token_clip,
                )  # [n, T]
                if reuse:  # later updates reweight by the clipped ratio to the sampling policy
                    logp = sequence_logprobs(s_logits, resp)  # [n, T]
                    if update == 0:
                        old_logp.update({i: logp[j].detach() for j, i in enumerate(chunk)})
                    else:
                        old = torch.stack([old_logp[i] for i in chunk])
                        per_token = per_token * importance_weights(logp, old, lc.is_clip)
                loss = (per_token * mask).sum() / total_tokens
                if not torch.isfinite(loss):
                    finite = False
                    break
                self.manual_backward(loss)
                loss_value += loss.item()
                teacher_s += t1 - t0
                update_s += time.perf_counter() - t1
            t2 = time.perf_counter()
            if finite:
                params = [p for p in self.policy.parameters() if p.requires_grad]
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                finite = math.isfinite(grad_norm)
            if not finite:  # a NaN/inf loss or gradient: skip the step, keep weights and teacher
                opt.zero_grad(set_to_none=True)
                self.skipped_nonfinite += 1
                break
            opt.step()
            self.teacher.update()
            update_s += time.perf_counter() - t2
        times["time/teacher_s"] = teacher_s
        times["time/update_s"] = update_s
        return loss_value, grad_norm
