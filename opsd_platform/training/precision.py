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

One departure from plain autocast, in sampling only: on CPU the rollout's attention runs in fp32
(`sampling_attention`). Autocast sends ``scaled_dot_product_attention`` to bf16, and torch's CPU
flash kernel in bf16 is slow for one-token queries: 3.8 ms per layer of a SmolLM2 decode step at
batch 16 against 0.7 ms in fp32, a third of the whole bf16 step, which then was no faster than
fp32's (``python -m benchmarks.rollout_floor``). Attention is a few percent of the FLOPs, so q, k
and v are cast up for it and its output cast back; the matmuls stay bf16. Scoring keeps bf16
attention (long queries, where the kernel is fast).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

from opsd_platform.config.choices import DEFAULT_PRECISION, PRECISIONS


def autocast(precision: str, device) -> ContextManager:
    """The forward-pass context for `precision` on `device` (a torch.device or its type name)."""
    if precision == DEFAULT_PRECISION:
        return contextlib.nullcontext()
    if precision != "bf16-mixed":
        raise ValueError(f"trainer.precision: unknown value {precision!r}; valid: {', '.join(PRECISIONS)}")
    import torch  # here, not at the top: importing this module stays cheap for callers that only read its names

    device_type = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(device_type, dtype=torch.bfloat16)


FP32_ATTENTION = "opsd_sdpa_fp32"


def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention with q, k, v in fp32, its output cast back to the query's dtype
    (shapes as transformers' own: query [B, H, L, D] -> ([B, L, H, D], None))."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


@contextlib.contextmanager
def attention_switched(model, name: str, function: Callable) -> Iterator[None]:
    """Run `model` with attention function `function`, registered as `name`, for the duration
    (the model's own implementation is restored on exit)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)  # a dict entry: registering again is a no-op
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def sampling_attention(model, precision: str, device) -> ContextManager:
    """The attention to sample with: fp32 attention under bf16 on CPU (module docstring), else the
    model's own."""
    device_type = getattr(device, "type", str(device))
    if precision == DEFAULT_PRECISION or device_type != "cpu" or not hasattr(model, "set_attn_implementation"):
        return contextlib.nullcontext()
    return attention_switched(model, FP32_ATTENTION, sdpa_in_fp32)
