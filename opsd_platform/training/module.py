"""OPSDModule: one on-policy self-distillation step, in the order it happens.

    rollout  -> the student samples n answers per problem (no grad)
    judge    -> the world returns a reward and feedback text for each answer
    contexts -> each sample gets a teacher prompt (student prompt + privileged context) or none
    teacher  -> the self-teacher scores the student's own tokens under its prompt (no grad)
    update   -> per-token divergence, masked mean, backward, clip, AdamW step
    sync     -> teacher update (EMA of the student / fixed initial weights / the live student)

``algorithm=grpo`` runs the same step with GRPO's loss instead (grpo.py): no teacher, and step 3
computes group-relative advantages from the rewards. Everything else is shared; the section
"where OPSD and GRPO differ" of the class below is the one place the two part ways.

Validation (pass rate, mean over k samples, on the held-out split) runs before the first step and
after the last; the run's metric ``improvement`` is final minus initial pass rate.

Where this departs from the sources:
- Teacher and student log-probs are computed per micro-batch and the loss is backpropagated per
  micro-batch, normalised by the token count of the whole step, so the result equals the
  full-batch loss; the teacher is scored under inference_mode and reduced to the loss's support
  at once (``scoring.py``): with a top-K support no full log-softmax tensor is made.
- ``rollout.engine=vllm`` samples with vLLM, whose weights are synced after every optimizer step.
- With ``trainer.updates_per_batch > 1`` the rollout batch is reused; later updates weight each
  token by the clipped importance ratio against the log-probs of the first update, and the
  teacher is re-scored after each EMA update (SDPO scores it once per batch).
- A step whose loss is not finite is skipped (no optimizer step, no teacher update) and counted
  in ``train/skipped_nonfinite``; the run goes on.

Checkpoints, what they hold of this module, held-back metrics and resume: resume.py. Several
processes (``trainer.strategy=ddp``, Lightning's DDP): distributed.py.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

from opsd_platform.config import TrainConfig
from opsd_platform.training import distributed, grpo
from opsd_platform.training.contexts import build_for_rollouts
from opsd_platform.training.evaluation import Evaluation, cpu_seconds, evaluate, seeded_stream
from opsd_platform.training.losses import importance_weights
from opsd_platform.training.optimizer import adamw
from opsd_platform.training.precision import autocast
from opsd_platform.training.rollout import Rollouts, engine_for
from opsd_platform.training.scoring import MicroBatchLoss, micro_batch_loss
from opsd_platform.training.sequences import chat_ids, chunks
from opsd_platform.training.teacher import Teacher
from opsd_platform.worlds.base import World


@dataclass
class StepSignal:
    """What step 3 hands the update: the rows the loss scores and the loss's denominator."""

    rows: list[int]  # rows with a loss term; the others add nothing to the loss
    normaliser: float | None = None  # this rank's share of the denominator; None = the rows' response tokens (OPSD)
    teacher_prompts: dict[int, list[int]] = field(default_factory=dict)  # OPSD: row -> teacher prompt ids
    group: grpo.GroupSignal | None = None  # GRPO: advantages, and what its update reports


class OPSDModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, tokenizer, world: World):
        super().__init__()
        self.automatic_optimization = False  # generation inside the step: we own the optimizer calls
        self.cfg = cfg
        self.policy = model
        self.tokenizer = tokenizer
        self.world = world
        self.teacher, self.reference = self._frozen_models(cfg, model)
        if cfg.trainer.gradient_checkpointing:  # after the teacher copy: it never needs it
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.engine = engine_for(cfg, model, tokenizer)
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
        self.initial_val_cost: dict[str, float] | None = None  # cpu_s, tokens, reused of a precomputed one
        self.final_val: Evaluation | None = None
        # Cost of the training (steps and the validations after step 0), cumulative; see log_cost.
        self.cost_cpu_s = 0.0  # CPU seconds before this process (a resume)
        self.val_tokens = 0  # response tokens of the validations after step 0
        self._cpu_start: float | None = None
        self.history: list[dict[str, float]] = []  # every logged metric dict, for tests and reports
        # Checkpoints and resume (see the module docstring).
        self.hold_metrics = cfg.trainer.checkpointing  # until a checkpoint covers them
        self.pending_metrics: list[dict[str, float]] = []  # held back, each with its "step"
        self.start_step = 0  # steps done before this process (a resume)
        self.skip_logging_through = 0  # train steps already in the store (a resumed failed run)
        self.optimizer_state_to_load: dict | None = None  # a resume's (resume.restore_module); on_train_start loads it
        self.seen_problems: list[int] = []  # train problem indices this rank trained on
        self.rank_report: list[dict] | None = None  # per-rank digests (several processes)

    # ------------------------------------------------------------------ Lightning plumbing

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optim = self.cfg.optim
        return adamw(params, optim.lr, optim.weight_decay, optim.fused, eps=optim.eps)

    def world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def train_dataloader(self):
        """One item per OPSD step: the indices of that step's problems (epoch-wise shuffles).

        With several ranks, rank r takes slice r of each step's problems; a resume starts at
        `start_step` (the order does not depend on where it starts)."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        n, k = len(self.train_problems), self.cfg.rollout.prompts_per_step
        world, rank = self.world_size(), self.global_rank
        order: list[int] = []
        while len(order) < self.cfg.trainer.max_steps * k * world:
            order += torch.randperm(n, generator=gen).tolist()
        steps = [order[(s * world + rank) * k : (s * world + rank + 1) * k] for s in range(self.cfg.trainer.max_steps)]
        return torch.utils.data.DataLoader(steps[self.start_step :], batch_size=None, collate_fn=lambda x: x, shuffle=False)

    def log_metrics(self, metrics: dict[str, float], step: int, train_step: bool = False) -> None:
        """Record metrics; they reach MLflow at the next checkpoint (or at once without checkpoints).
        A train step already in the store (`skip_logging_through`) is recorded but not sent."""
        self.history.append({"step": step, **metrics})
        if train_step and step <= self.skip_logging_through:
            return
        self.pending_metrics.append({"step": step, **metrics})
        if not self.hold_metrics:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Send the held-back metrics to the logger (rank 0's MLflow run)."""
        pending, self.pending_metrics = self.pending_metrics, []
        if self.logger is not None:
            for entry in pending:
                step = int(entry["step"])
                self.logger.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)

    # ------------------------------------------------------------------ validation

    def set_initial_validation(self, side) -> None:
        """The initial validation, measured (or reused) before fit (train.py, measurements.py)."""
        self.initial_val = side.evaluation
        self.initial_val_cost = {"val/cpu_s": side.cpu_s, "val/tokens": float(side.evaluation.tokens),
                                 "val/reused": float(side.reused)}

    def validate_at(self, step: int) -> tuple[Evaluation, dict[str, float]]:
        """Validation after `step` steps, from the stream "val/<step>" (so it leaves the training's
        stream alone), with its cost."""
        c0 = cpu_seconds()
        with seeded_stream(self.cfg.seed, f"val/{step}"):
            evaluation = self.validate_policy()
        self.val_tokens += evaluation.tokens
        return evaluation, {"val/pass_rate": evaluation.pass_rate, "val/reward_mean": evaluation.reward_mean,
                            "val/cpu_s": cpu_seconds() - c0, "val/tokens": float(evaluation.tokens)}

    def training_cost(self) -> dict[str, float]:
        """Cumulative cost of the training so far: steps and the validations after step 0 (the gap
        and the initial validation are costed on their own)."""
        spent = self.cost_cpu_s + (cpu_seconds() - self._cpu_start if self._cpu_start is not None else 0.0)
        return {"cost/cpu_s": spent, "cost/tokens": float(self.tokens_generated + self.val_tokens)}

    def validate_policy(self) -> Evaluation:
        """Mean@k pass rate on the validation split, at the validation's sampling settings."""
        r = self.cfg.rollout
        batch_size = getattr(self.engine, "batch_size", None)  # the HF engine's rows per call
        if batch_size is not None:
            self.engine.batch_size = r.val_batch_size
        try:
            return evaluate(self.engine, self.world, self.val_problems, [p.prompt for p in self.val_problems],
                            k=r.val_samples, max_new_tokens=r.max_new_tokens, temperature=r.val_temperature,
                            top_p=r.val_top_p)
        finally:
            if batch_size is not None:
                self.engine.batch_size = batch_size

    def log_samples(self, name: str, evaluation: Evaluation) -> None:
        """Every validation answer with its verdict as a run artifact: what the pass rate is made of
        (their mean `passed` is the logged val/pass_rate; benchmarks/answer_forms.py reads them)."""
        if self.logger is None or not hasattr(self.logger, "run_id"):
            return
        k = self.cfg.rollout.val_samples
        rows = [
            {"problem": self.val_problems[i // k].id, "prompt": self.val_problems[i // k].prompt, "response": text,
             "reward": j.reward, "passed": j.passed, "feedback": j.feedback}
            for i, (text, j) in enumerate(zip(evaluation.texts, evaluation.judgements))
        ]
        self.logger.experiment.log_dict(self.logger.run_id, rows, f"samples/{name}.json")

    def on_fit_start(self) -> None:
        if self.trainer.precision not in ("32", "32-true"):
            # trainer.precision is applied by the module's own autocast scopes (precision.py);
            # Lightning's plugin around them would keep one autocast context over the whole step
            raise ValueError(f"OPSDModule applies trainer.precision={self.cfg.trainer.precision} itself; build the "
                             f"Lightning Trainer with its default precision, not {self.trainer.precision!r}")
        for held in (self.teacher, self.reference):
            if held is not None and held.model is not None:  # a plain attribute, so Lightning does not move it
                held.model.to(self.device)

    def on_train_start(self) -> None:
        if self.optimizer_state_to_load is not None:  # a resume: the optimizer exists only now
            self.trainer.optimizers[0].load_state_dict(self.optimizer_state_to_load)
            self.optimizer_state_to_load = None
        if self.world_size() > 1 and self.global_rank > 0:  # each rank samples its own rollouts
            rank_seed = self.cfg.seed + 1_000_003 * self.global_rank
            random.seed(rank_seed)
            np.random.seed(rank_seed % 2**32)
            torch.manual_seed(rank_seed)
        if self.cfg.trainer.validate and self.start_step == 0 and self.trainer.is_global_zero:
            if self.initial_val is None:  # not measured before fit (a module used on its own)
                c0 = cpu_seconds()
                with seeded_stream(self.cfg.seed, "val/0"):
                    self.initial_val = self.validate_policy()
                self.initial_val_cost = {"val/cpu_s": cpu_seconds() - c0, "val/tokens": float(self.initial_val.tokens),
                                         "val/reused": 0.0}
            self.log_metrics(
                {"val/pass_rate": self.initial_val.pass_rate, "val/reward_mean": self.initial_val.reward_mean,
                 **(self.initial_val_cost or {})}, step=0
            )
            self.log_samples("val_initial", self.initial_val)
        self._cpu_start = cpu_seconds()

    def on_train_end(self) -> None:
        if self.world_size() > 1:
            self.rank_report = distributed.compare_ranks(self)
        if not self.trainer.is_global_zero:
            return
        if not self.cfg.trainer.validate:  # the last step's cost/* already is the training's cost
            return
        self.final_val, metrics = self.validate_at(self.cfg.trainer.max_steps)
        self.log_samples("val_final", self.final_val)
        if self.initial_val is not None:
            metrics["improvement"] = self.final_val.pass_rate - self.initial_val.pass_rate
        cost = self.training_cost()  # the final validation included
        metrics.update({"cost/train_cpu_s": cost["cost/cpu_s"], "cost/train_tokens": cost["cost/tokens"]})
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
        step = self.start_step + batch_idx + 1
        self.seen_problems += batch
        problems = [self.train_problems[i] for i in batch]
        ro = self.engine.generate([p.prompt for p in problems], r.samples_per_prompt, r.max_new_tokens, r.temperature, r.top_p)
        self.tokens_generated += ro.num_tokens
        phase("rollout")

        # 2. judge
        judgements = self.world.judge_many([problems[g] for g in ro.group], ro.texts)
        phase("judge")

        # 3. what the loss learns from: OPSD's teacher prompts, or GRPO's advantages
        signal = self._learning_signal(problems, ro, judgements)
        phase("contexts" if signal.group is None else "advantages")

        # 4-5. (teacher) scoring + loss + update (per micro-batch, see the module docstring)
        loss_value, grad_norm = self._update(ro, signal, times)

        rewards = [j.reward for j in judgements]
        metrics = {
            "train/loss": loss_value,
            "train/grad_norm": grad_norm,
            "train/skipped_nonfinite": float(self.skipped_nonfinite),
            "rollout/reward_mean": sum(rewards) / len(rewards),
            "rollout/pass_rate": sum(j.passed for j in judgements) / len(judgements),
            "rollout/response_len": ro.num_tokens / len(ro),
            "rollout/tokens_total": float(self.tokens_generated),
            **self._signal_metrics(ro, signal),
            **times,
        }
        metrics["time/step_s"] = sum(v for k, v in times.items() if k.startswith("time/"))
        if self.world_size() > 1:
            metrics = distributed.reduce_over_ranks(metrics, self.trainer.strategy)
        every = cfg.trainer.val_every
        if cfg.trainer.validate and every and step % every == 0 and step < cfg.trainer.max_steps and self.trainer.is_global_zero:
            metrics.update(self.validate_at(step)[1])  # the last step's validation is the final one
        metrics.update(self.training_cost())
        self.log_metrics(metrics, step=step, train_step=True)
        self.log_dict(
            {"loss": loss_value, "reward": metrics["rollout/reward_mean"], "mask": len(signal.rows) / len(ro)},
            prog_bar=True,
            logger=False,
            on_step=True,
            batch_size=len(ro),
        )

    def _update(self, ro: Rollouts, signal: StepSignal, times: dict[str, float]) -> tuple[float, float]:
        """(Teacher) scoring, loss and optimizer step(s). Returns (loss, grad norm); a skipped
        (non-finite) step is counted in `self.skipped_nonfinite`."""
        cfg = self.cfg
        opt, world, strategy = self.optimizers(), self.world_size(), self.trainer.strategy
        rows = signal.rows
        tokens = float(ro.response_mask[rows].sum()) if rows else 0.0
        normaliser = tokens if signal.normaliser is None else signal.normaliser
        n_chunks = len(range(0, len(rows), cfg.rollout.batch_size))
        if world > 1:  # every rank must run the same backward passes (module docstring)
            tokens, n_chunks = distributed.all_reduce(tokens, "sum", strategy), int(distributed.all_reduce(n_chunks, "max", strategy))
            normaliser = tokens if signal.normaliser is None else distributed.all_reduce(signal.normaliser, "sum", strategy)
        if tokens == 0:  # no sample (on any rank) has a teacher (OPSD) or a signal (GRPO): nothing to learn from
            return 0.0, 0.0
        denominator = torch.tensor(normaliser / world)  # DDP averages over ranks: this makes it the global mean
        old_logp: dict[int, torch.Tensor] = {}
        teacher_s = update_s = sync_s = 0.0
        loss_value, grad_norm = 0.0, 0.0
        reuse = cfg.trainer.updates_per_batch > 1
        for update in range(cfg.trainer.updates_per_batch):
            opt.zero_grad(set_to_none=True)
            loss_value, finite, backwards = 0.0, True, 0
            for sl in chunks(len(rows), cfg.rollout.batch_size):
                chunk = rows[sl]
                t0 = time.perf_counter()
                # later updates of a reused batch weigh tokens by their ratio to the first update's log-probs
                old = torch.stack([old_logp[i] for i in chunk]) if reuse and update > 0 else None
                scored = self._micro_batch_loss(ro, chunk, signal, old, need_token_logp=reuse)
                per_token = scored.per_token  # [n, T]
                mask = ro.response_mask[chunk].to(per_token.device)
                if reuse and update == 0:
                    old_logp.update({i: scored.token_logp[j].detach() for j, i in enumerate(chunk)})
                loss = (per_token * mask).sum() / denominator
                if not torch.isfinite(loss):
                    finite = False
                    break
                self.manual_backward(loss)
                backwards += 1
                loss_value += loss.item()
                teacher_s += scored.teacher_seconds
                update_s += time.perf_counter() - t0 - scored.teacher_seconds
            if world > 1:
                for _ in range(n_chunks - backwards):  # keep DDP's all-reduces in step with other ranks
                    self.manual_backward(distributed.zero_loss(self.policy))
                finite = strategy.reduce_boolean_decision(finite, all=True)
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
            if self.teacher is not None:  # OPSD's teacher follows the student (EMA); GRPO has none
                self.teacher.update()
            t3 = time.perf_counter()
            self.engine.sync_weights(self.policy)  # vLLM holds its own copy; HF shares the module
            sync_s += time.perf_counter() - t3
            update_s += t3 - t2
        times["time/teacher_s"] = teacher_s
        times["time/update_s"] = update_s
        times["time/sync_s"] = sync_s
        return loss_value, grad_norm

    # ------------------------------------------------------------------ where OPSD and GRPO differ
    #
    # The one place the two algorithms part ways. Everything else (rollout, judging, the update
    # loop above, validation, checkpoints, metrics, DDP) is shared. They differ in what the loss
    # learns from, and so in what a run holds in memory besides the policy:
    #
    #          holds                                 step 3 gives each sample     the loss of a micro-batch
    #   opsd   a self-teacher: an EMA copy, the      a teacher prompt (student    divergence student -> teacher on
    #          fixed initial weights (a copy; with   prompt + privileged          the sampled tokens, teacher scored
    #          LoRA the adapter off), or the live    context), or none: no loss   under its prompt (scoring.py)
    #          student (no copy)
    #   grpo   no teacher. Only with loss.kl_beta    a group-relative advantage   -min(ratio A, clip(ratio) A)
    #          > 0 the frozen initial weights (a     from the rewards of its      (+ beta KL to the initial weights),
    #          copy; with LoRA the adapter off) as   prompt's n samples; 0 for a  aggregated per sequence / token
    #          the KL reference                      group without signal         (grpo.py, losses.py)
    #
    # Only these methods look at cfg.algorithm.

    @staticmethod
    def _frozen_models(cfg: TrainConfig, model: torch.nn.Module) -> tuple[Teacher | None, Teacher | None]:
        """(teacher, KL reference) this algorithm needs besides the policy; see the table above."""
        if cfg.algorithm == "opsd":
            return Teacher(cfg.teacher.kind, model, cfg.teacher.ema_rate), None
        return None, (Teacher("fixed", model, cfg.teacher.ema_rate) if cfg.loss.kl_beta > 0 else None)

    def _learning_signal(self, problems: list, ro: Rollouts, judgements: list) -> StepSignal:
        """Step 3: OPSD's teacher prompts, or GRPO's advantages."""
        cfg, r = self.cfg, self.cfg.rollout
        if cfg.algorithm == "grpo":
            group = grpo.group_signal([j.reward for j in judgements], r.samples_per_prompt, ro.response_mask,
                                      cfg.loss, r.max_new_tokens)
            return StepSignal(group.rows, group.normaliser, group=group)
        # OPSD's contexts: rows are prompt-major, so groups of n consecutive rows share a problem
        teacher_messages = build_for_rollouts(cfg.context, problems, ro.texts, judgements, r.samples_per_prompt,
                                              cfg.graded_fraction, cfg.context_form)
        rows = [i for i, m in enumerate(teacher_messages) if m is not None]
        teacher_prompts = {i: chat_ids(self.tokenizer, teacher_messages[i]) for i in rows}
        return StepSignal(rows, teacher_prompts=teacher_prompts)

    def _micro_batch_loss(
        self, ro: Rollouts, chunk: list[int], signal: StepSignal, old: torch.Tensor | None, need_token_logp: bool
    ) -> MicroBatchLoss:
        """The per-token loss [n, T] of one micro-batch (with grad); `old` [n, T]: the log-probs of
        the batch's first update, for a later update of a reused batch."""
        cfg, lc = self.cfg, self.cfg.loss
        resp, mask = ro.response_ids[chunk], ro.response_mask[chunk]
        prompts = [ro.prompt_ids[i] for i in chunk]
        pad = self.tokenizer.pad_token_id
        # The forward passes' autocast scope (precision.py): student and teacher (or GRPO's KL
        # reference) of this micro-batch, between two optimizer steps; backward runs after it.
        with autocast(cfg.trainer.precision, self.device):
            if signal.group is not None:  # GRPO: the clipped ratio objective (importance ratio inside)
                return grpo.micro_batch_loss(
                    self.policy, self.reference.scoring if self.reference is not None else None, chunk, prompts, resp,
                    mask, pad, signal.group, old, lc, share_prefix=cfg.trainer.share_prompt_prefix,
                )
            scored = micro_batch_loss(
                self.policy, self.teacher.scoring, prompts, [signal.teacher_prompts[i] for i in chunk], resp, mask,
                pad, lc, need_token_logp=need_token_logp, share_prefix=cfg.trainer.share_prompt_prefix,
            )
        if old is not None:  # OPSD: reweight by the clipped ratio to the sampling policy
            scored.per_token = scored.per_token * importance_weights(scored.token_logp, old, lc.is_clip)
        return scored

    def _signal_metrics(self, ro: Rollouts, signal: StepSignal) -> dict[str, float]:
        """OPSD: how many samples had a teacher; GRPO: advantage spread, groups without signal, clipping."""
        if signal.group is not None:
            return signal.group.metrics()
        rows = signal.rows
        return {"teacher/mask_frac": len(rows) / len(ro),
                "teacher/tokens": float(ro.response_mask[rows].sum()) if rows else 0.0}

    # ------------------------------------------------------------------ several processes

    def digests(self) -> dict[str, str]:
        """sha256 of the policy's weights, the teacher's, and the optimizer's state tensors."""
        return distributed.digests(self)
