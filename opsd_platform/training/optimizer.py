"""The optimizer the student is trained with (module.OPSDModule.configure_optimizers)."""

from __future__ import annotations

import torch


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float, fused: bool,
          eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel when asked and torch has one for these parameters. Without
    it torch updates CPU parameters one tensor and one elementwise op at a time: ~0.4 s per step
    for a 135M model on one thread, against ~0.08 s fused (``python -m benchmarks.optimizer``).
    Same update to float precision (tests/training/test_training.py)."""
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, fused=True)
        except RuntimeError:  # a device type or dtype without the kernel: the default loop below
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
