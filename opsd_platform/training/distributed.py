"""Several processes (``trainer.strategy=ddp``, ``trainer.devices`` > 1; Lightning's DDP):
- Each rank takes its own ``prompts_per_step`` problems per step (rank r takes slice r of the
  step's shuffled problems) and samples with its own RNG stream, so a step trains on
  ``devices x prompts_per_step`` problems. Validation runs on rank 0 only.
- Gradients are all-reduced by DDP's reducer in each ``manual_backward``. Ranks have different
  numbers of teacher-scored rows, so a rank with fewer micro-batches runs zero-loss backward
  passes (touching every trainable parameter, no forward) until all ranks ran the same number;
  the loss is normalised by the global token count / world size, so DDP's average equals the
  global token mean. A non-finite loss anywhere skips the step on every rank.
- Identical gradients make identical AdamW steps and identical EMA teachers; at the end the
  ranks' weight and teacher digests are compared (a mismatch fails the run) and logged.
- Step metrics are means over ranks (token counts are sums); only rank 0 logs to MLflow.
"""

from __future__ import annotations

import torch

SUMMED_METRICS = ("rollout/tokens_total", "teacher/tokens")


def zero_loss(policy: torch.nn.Module) -> torch.Tensor:
    """A loss whose backward adds zeros to every trainable parameter's gradient (no forward)."""
    return sum((p * 0.0).sum() for p in policy.parameters() if p.requires_grad)


def all_reduce(value: float, op: str, strategy) -> float:
    """`value` summed (or max / min) over the ranks, through the Lightning strategy's `reduce`."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=strategy.root_device)
    return float(strategy.reduce(t, reduce_op=op).item())


def reduce_over_ranks(metrics: dict[str, float], strategy) -> dict[str, float]:
    """Step metrics averaged over ranks (token counts summed): one all-reduce of all of them."""
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=strategy.root_device)
    summed = strategy.reduce(t, reduce_op="sum").tolist()
    world = strategy.world_size
    return {k: v if k in SUMMED_METRICS else v / world for k, v in zip(keys, summed)}


def digests(module) -> dict[str, str]:
    """sha256 of an OPSDModule's policy weights, its teacher's (GRPO: its KL reference, if any) and
    its optimizer's state tensors."""
    from opsd_platform.training.checkpoint import tensors_digest

    policy = tensors_digest(module.policy.state_dict())
    held = module.teacher if module.teacher is not None else module.reference
    teacher = tensors_digest(held.model.state_dict()) if held is not None and held.model is not None else policy
    opt = module.trainer.optimizers[0].state_dict()["state"]
    optimizer = tensors_digest({f"{i}.{k}": v for i, st in opt.items() for k, v in st.items() if torch.is_tensor(v)})
    return {"policy": policy, "teacher": teacher, "optimizer": optimizer}


def compare_ranks(module) -> list[dict]:
    """Gather every rank's digests and problems; raise if the ranks' weights differ."""
    import torch.distributed as dist

    mine = {"rank": module.global_rank, **digests(module), "problems": list(module.seen_problems)}
    report: list[dict] = [{} for _ in range(module.world_size())]
    dist.all_gather_object(report, mine)
    for key in ("policy", "teacher", "optimizer"):
        if len({r[key] for r in report}) != 1:
            raise RuntimeError(f"ranks out of sync: {key} weights differ: " + ", ".join(
                f"rank {r['rank']} {r[key][:12]}" for r in report))
    return report
