"""Sequence helpers shared by sampling and scoring: chat prompts, left padding, EOS masks,
micro-batches, and the KV cache of prompts shared by their rows (prefilled once per distinct
prompt, gathered out to the rows, and merged when rows join a running batch).

Layout (as everywhere): ``[left-padded prompt | right-padded response]``; position ids come from
the attention mask, so left padding does not shift positions.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def chat_ids(tokenizer, message: str) -> list[int]:
    """Token ids of a one-turn chat prompt ending where the assistant starts to answer.

    A base model without a chat template gets the plain message and a newline (after BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        return list(tokenizer(message + "\n", add_special_tokens=True)["input_ids"])
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists -> (ids [N, P], attention mask [N, P])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def response_mask_from(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """True up to and including the first EOS of each row (the EOS is a token the model chose)."""
    eos = is_eos(ids, eos_ids)
    # count of EOS strictly before each position; positions with none before are kept
    before = torch.cumsum(eos.long(), dim=1) - eos.long()
    return before == 0


def stop_length(tokenizer, tokens: Sequence[int], stops: Sequence[str]) -> int | None:
    """The number of leading `tokens` whose text first contains one of `stops` (the stop rule of a
    model that does not end on its own: the response ends with the token that completes the stop
    string, and what follows is dropped, as vLLM's ``stop``); None when no stop string occurs.

    Whether a prefix's text contains a stop string only grows with the prefix, so a binary search
    over prefix lengths needs O(log T) decodes."""
    if not stops or not tokens:
        return None

    def stopped(k: int) -> bool:
        text = tokenizer.decode(list(tokens[:k]), skip_special_tokens=True)
        return any(s in text for s in stops)

    if not stopped(len(tokens)):
        return None
    lo, hi = 1, len(tokens)  # the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if stopped(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def is_eos(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:  # ids [N, T] -> bool [N, T]
    found = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        found |= ids == e
    return found


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering range(n) in pieces of at most `size` (micro-batches)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def prompt_cache(
    model,
    distinct: list[tuple[int, ...]],  # [u][P_j] the distinct prompts
    rows: list[tuple[int, ...]],  # [n][P_i] each row's prompt (one of `distinct`)
    pad_id: int,
    drop_last: bool = False,
) -> tuple[torch.Tensor, object, torch.Tensor, torch.Tensor]:
    """Run each distinct prompt once, left-padded to one width P (without its last column when
    ``drop_last``), with the KV cache on, and gather the cache out to the rows. Returns the logits
    of each prompt's last column [u, 1, V], the rows' cache, the prompts' mask [u, P] and the
    index [n] of each row's prompt. Shared by scoring and the HF engine's prefill."""
    device = model_device(model)
    where = {p: j for j, p in enumerate(distinct)}
    index = torch.tensor([where[r] for r in rows], dtype=torch.long, device=device)  # [n] row -> prompt
    prompt, mask = left_pad(distinct, pad_id)  # [u, P]
    if drop_last:
        prompt, mask = prompt[:, :-1], mask[:, :-1]
    prompt, mask = prompt.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=prompt, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_select_indices(index)
    return out.logits, cache, mask, index


def pad_left(t: torch.Tensor, width: int, value: float, dim: int = 1) -> torch.Tensor:
    """`t` widened to `width` along `dim` by `value` columns on the left (ids, masks, cached keys)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.full(shape, value, dtype=t.dtype, device=t.device), t], dim=dim)


def join_caches(a, b):
    """The KV cache of batch `a`'s rows followed by batch `b`'s, each left-padded to the longer of
    the two (its padding columns are masked out by the rows' attention masks, so their values do
    not matter). `a` is changed in place and returned. Plain DynamicCache layers only: a sliding
    window layer keeps a rolling buffer that left padding would misalign."""
    from transformers.cache_utils import DynamicLayer

    for la, lb in zip(a.layers, b.layers):
        if type(la) is not DynamicLayer or type(lb) is not DynamicLayer:
            raise ValueError(f"rollout.refill: joining rows needs plain DynamicCache layers, got {type(la).__name__} "
                             "(a sliding-window model); use rollout.refill=false")
        width = max(la.keys.shape[-2], lb.keys.shape[-2])
        la.keys = torch.cat([pad_left(la.keys, width, 0.0, dim=-2), pad_left(lb.keys, width, 0.0, dim=-2)])
        la.values = torch.cat([pad_left(la.values, width, 0.0, dim=-2), pad_left(lb.values, width, 0.0, dim=-2)])
    return a
