"""The self-teacher's weights: an EMA copy of the student, the frozen initial weights, or the live
student itself (the student's optimizer is in optimizer.py)."""

from __future__ import annotations

import contextlib
import copy

import torch


class Teacher:
    """The self-teacher's weights: an EMA copy, the frozen initial weights, or the live student."""

    def __init__(self, kind: str, policy: torch.nn.Module, ema_rate: float):
        self.kind = kind
        self.ema_rate = ema_rate
        self.policy = policy
        from peft import PeftModel

        self._uses_adapter_off = kind == "fixed" and isinstance(policy, PeftModel)
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

    def state_dict(self, keys: set[str] | None = None) -> dict[str, torch.Tensor] | None:
        """The EMA copy's weights (only `keys`, e.g. a LoRA adapter's); None for fixed and live
        teachers, which are rebuilt from the initial weights or are the policy itself."""
        if self.kind != "ema" or self.model is None:
            return None
        return {k: v for k, v in self.model.state_dict().items() if keys is None or k in keys}

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is None or self.model is None:
            return
        _, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"teacher checkpoint has keys this model lacks: {unexpected[:5]}")

    @torch.no_grad()
    def update(self) -> None:
        if self.kind != "ema":
            return
        for t, s in zip(self.model.parameters(), self.policy.parameters()):
            t.lerp_(s.detach(), self.ema_rate)
