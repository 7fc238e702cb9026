"""Rollouts and scoring: sample answers with HF ``generate``, and score given tokens under a prompt.

Both student and teacher score *the same* sampled response tokens; only the prompt prefix differs.
Sequences are laid out as ``[left-padded prompt | right-padded response]`` so every response
starts at the same column and the logits that predict response token ``j`` sit at column
``P - 1 + j`` for every row. Position ids are computed from the attention mask so left padding
does not shift positions.

The HF engine is the always-available path; faster engines (vLLM) plug in behind the same
``generate`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

# Alias used in shape comments: N = sequences, T = response positions, P = prompt columns, V = vocab.


@dataclass
class Rollouts:
    """n sampled responses for each of B prompts, flattened to N = B * n rows (prompt-major)."""

    prompt_ids: list[list[int]]  # [N][P_i] unpadded chat-formatted prompt ids of each row
    group: list[int]  # [N] index of the prompt each row answers (0..B-1)
    response_ids: torch.Tensor  # [N, T] long, right-padded with the pad id
    response_mask: torch.Tensor  # [N, T] bool, True up to and including the first EOS
    texts: list[str]  # [N] decoded responses, special tokens removed

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def __len__(self) -> int:
        return len(self.texts)


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
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    # count of EOS strictly before each position; positions with none before are kept
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return before == 0


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering range(n) in pieces of at most `size` (micro-batches)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


class HFGenerateEngine:
    """Batched sampling with ``model.generate`` (CPU or GPU); the reference rollout engine."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(
        self,
        messages: Sequence[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
    ) -> Rollouts:
        """n samples for each user message; temperature 0 means greedy (then n copies agree)."""
        tok = self.tokenizer
        prompts = [chat_ids(tok, m) for m in messages]
        rows = [p for p in prompts for _ in range(n)]
        group = [i for i in range(len(prompts)) for _ in range(n)]
        eos = _eos_ids(tok, self.model)
        was_training = self.model.training
        self.model.eval()
        pieces: list[torch.Tensor] = []
        try:
            for sl in chunks(len(rows), self.batch_size):
                ids, mask = left_pad(rows[sl], tok.pad_token_id)
                sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else dict(do_sample=False)
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=sorted(eos),
                    **sampling,
                )
                pieces.append(out[:, ids.shape[1] :])
        finally:
            self.model.train(was_training)
        width = max(p.shape[1] for p in pieces)
        response = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        start = 0
        for p in pieces:
            response[start : start + p.shape[0], : p.shape[1]] = p
            start += p.shape[0]
        mask = response_mask_from(response, eos)
        response = response.masked_fill(~mask, tok.pad_token_id)
        texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
        return Rollouts(prompt_ids=rows, group=group, response_ids=response, response_mask=mask, texts=texts)


def response_logits(
    model,
    prompt_ids: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
) -> torch.Tensor:  # [n, T, V] logits predicting each response token
    """Logits of the model at the response positions, given each row's own prompt."""
    prompt, prompt_mask = left_pad(prompt_ids, pad_id)
    ids = torch.cat([prompt, response_ids], dim=1)
    attention = torch.cat([prompt_mask, response_mask.long()], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    t = response_ids.shape[1]
    # Only the last T + 1 columns' logits are materialised (the prompt's are never needed);
    # the first T of them predict response tokens 0..T-1.
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False, logits_to_keep=t + 1)
    return out.logits[:, :t]
