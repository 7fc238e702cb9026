"""``trainer.precision``: the dtype of the matmuls, not of the weights.

``bf16-mixed`` runs the model's forward passes under ``torch.autocast(dtype=bfloat16)``; weights,
gradients and AdamW's state stay fp32 (master weights). ``model.dtype=bfloat16`` instead stores
the weights in bf16, where an AdamW step of lr 1e-5 on a weight of ~0.05 (bf16 spacing there
~2.4e-4) rounds back to the same weight: the default learning rate would not train.

The autocast scopes are opened by us, not by Lightning's ``precision="bf16-mixed"`` plugin, which
wraps the whole ``training_step`` in one autocast context, with autocast's weight-cast cache off.
Off is the only safe choice there: our step calls ``optimizer.step()`` inside that context, and
with the cache on, a forward after it would use the bf16 copy of a weight cast before it (torch
keeps cached casts until the outermost autocast context exits). But without the cache every
decode step of the rollout casts every fp32 weight to bf16 again: a memory-bound decode would read
the fp32 weights and write and read their bf16 copies, more bytes than fp32 alone. Our scopes
each run with fixed weights, so they keep the cache, and it is dropped when they end:

    rollout.HFGenerateEngine.generate    rollout, validation and the gap's sampling
    module.OPSDModule._micro_batch_loss  student forward + teacher scoring of one micro-batch

Backward runs outside them (autocast's own advice: the backward of a cast op runs in the dtype
its forward ran in). The Lightning Trainer therefore keeps its default precision
(``OPSDModule.on_fit_start`` checks it).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from opsd_platform.config.choices import DEFAULT_PRECISION, PRECISIONS  # noqa: F401  (Lightning's names)


def autocast(precision: str, device) -> ContextManager:
    """The forward-pass context for `precision` on `device` (a torch.device or its type name)."""
    if precision == DEFAULT_PRECISION:
        return contextlib.nullcontext()
    if precision != "bf16-mixed":
        raise ValueError(f"trainer.precision: unknown value {precision!r}; valid: {', '.join(PRECISIONS)}")
    import torch  # here, not at the top: importing this module stays cheap for callers that only read its names

    device_type = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(device_type, dtype=torch.bfloat16)
