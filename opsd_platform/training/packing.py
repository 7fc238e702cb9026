"""The logits that predict given response tokens, rows sharing a prompt scored in one pass.

Student and teacher score *the same* sampled response tokens under their own prompts. The n
samples of a problem share the student's prompt (and the teacher's, when its context is the same
for each sample), so with ``share_prefix`` each distinct prompt is run once. Three ways, in the
order they are tried; values and gradients equal one pass per row to float tolerance
(``tests/training/test_scoring.py``):

- *segments* (sdpa attention, not under gradient checkpointing): everything in ONE row with no
  padding at all: ``[prompt_a | r_1 | r_2 ... | prompt_b | r_5 ...]``. The linear layers see
  exactly the tokens that exist; attention runs per segment (a prompt and its responses) through
  an attention function registered with transformers (``_segment_attention``), so its cost stays
  that of the separate segments. Only the columns that predict a response token go through the LM
  head (``logits_to_keep`` given as columns), and the prompt's last column, which predicts every
  sample's first token, is kept once.
- *packed* (sdpa or eager attention; works under gradient checkpointing, which replays the
  forward with a transformers-built mask): one row per distinct prompt, padded to the widest,
  with a block attention mask.
- *cache* (other attention kernels, or a segment longer than a sliding window): each distinct
  prompt once with the KV cache on, the cache gathered out to its rows, the (padded) responses
  per row; gradients flow back through the gather.

Every prompt distinct and no sharing asked: one plain pass over ``[left-padded prompt |
right-padded response]`` rows.

The result is a `ResponseLogits`: ``flat`` [M, V] (one row per distinct scored position) and
``where`` [n, T] (which row of ``flat`` predicts token k of row i). The loss reads through
``where`` (``losses.support_logprobs_at``), so no ``[n, T, V]`` copy is made; ``dense()`` makes one
for callers that want it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from opsd_platform.training.losses import as_flat
from opsd_platform.training.precision import attention_switched
from opsd_platform.training.sequences import left_pad, model_device, prompt_cache

SEGMENT_ATTENTION = "opsd_segments"  # the name `_segment_attention` is registered under in transformers


@dataclass
class ResponseLogits:
    """Logits at the positions that predict response tokens, each distinct position once."""

    flat: torch.Tensor  # [M, V] one row per scored position
    where: torch.Tensor  # [n, T] long: the row of `flat` predicting token k of row i (past a row's end: any row)

    @classmethod
    def of_dense(cls, logits: torch.Tensor) -> "ResponseLogits":  # logits [n, T, V]
        return cls(*as_flat(logits))

    def dense(self) -> torch.Tensor:  # [n, T, V]
        return self.flat[self.where]


def response_logits(
    model,
    prompt_ids: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    share_prefix: bool = True,
) -> torch.Tensor:  # [n, T, V] logits predicting each response token
    """Logits of the model at the response positions, given each row's own prompt, as one
    ``[n, T, V]`` tensor (see `position_logits` for the lean form the trainer uses)."""
    return position_logits(model, prompt_ids, response_ids, response_mask, pad_id, share_prefix).dense()


def position_logits(
    model,
    prompt_ids: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    share_prefix: bool = True,
) -> ResponseLogits:
    """Logits predicting each response token, given each row's own prompt (module docstring)."""
    rows = [tuple(p) for p in prompt_ids]
    distinct = list(dict.fromkeys(rows))
    if share_prefix:
        lengths = response_mask.long().sum(dim=1).clamp(min=1)  # [n] tokens each row is scored on
        layout = _PackLayout.of(distinct, rows, lengths)
        checkpointing = model.training and bool(getattr(model, _checkpointing_flag(model), False))
        if not checkpointing and _attention(model) == "sdpa" and _fits_window(model, max(layout.segment_widths)):
            return _segment_logits(model, layout, response_ids)
        if len(distinct) < len(rows):
            if _attention(model) in ("sdpa", "eager") and _fits_window(model, layout.width):
                return _packed_logits(model, layout, response_ids, pad_id)
            if not checkpointing:  # the cache path needs the KV cache, which checkpointing turns off
                return ResponseLogits.of_dense(_shared_prefix_logits(model, distinct, rows, response_ids, response_mask, pad_id))
    return ResponseLogits.of_dense(_one_pass_logits(model, prompt_ids, response_ids, response_mask, pad_id))


def _one_pass_logits(model, prompt_ids, response_ids, response_mask, pad_id) -> torch.Tensor:  # [n, T, V]
    device = model_device(model)
    prompt, prompt_mask = left_pad(prompt_ids, pad_id)
    ids = torch.cat([prompt, response_ids.cpu()], dim=1).to(device)
    attention = torch.cat([prompt_mask, response_mask.cpu().long()], dim=1).to(device)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    t = response_ids.shape[1]
    # Only the last T + 1 columns' logits are materialised (the prompt's are never needed);
    # the first T of them predict response tokens 0..T-1.
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False, logits_to_keep=t + 1)
    return out.logits[:, :t]


def _checkpointing_flag(model) -> str:
    return "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"


def _attention(model) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def _fits_window(model, width: int) -> bool:
    """A custom mask replaces the model's own, so no sliding window may be shorter than a packed
    sequence of `width` columns."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return not window or width <= window


@dataclass
class _PackLayout:
    """Where each row's tokens go when rows sharing a prompt are packed (segments or packed rows).

    A *segment* is a distinct prompt followed by each of its rows' responses but the last token
    (the prompt's last column predicts token 0; the column holding token k-1 predicts token k)."""

    distinct: list[tuple[int, ...]]  # [u][P_j] the distinct prompts
    rows: list[tuple[int, ...]]  # [n][P_i] each row's prompt (one of `distinct`)
    lengths: list[int]  # [n] response tokens scored per row (>= 1)
    where: dict[tuple[int, ...], int]  # prompt -> its segment j
    offset: list[int]  # [n] where row i's responses start within its segment's tail
    tails: list[int]  # [u] response columns of segment j
    prompt_width: int  # P: the widest prompt (packed rows: every prompt ends at column P - 1)
    width: int  # W: columns of the widest packed row (prompt padded to P)

    @classmethod
    def of(cls, distinct, rows, lengths: torch.Tensor) -> "_PackLayout":
        where = {p: j for j, p in enumerate(distinct)}
        tails, offset, lengths = [0] * len(distinct), [0] * len(rows), [int(x) for x in lengths.tolist()]
        for i, r in enumerate(rows):
            j = where[r]
            offset[i], tails[j] = tails[j], tails[j] + lengths[i] - 1
        prompt_width = max(len(p) for p in distinct)
        return cls(distinct, rows, lengths, where, offset, tails, prompt_width, prompt_width + max(tails))

    @property
    def segment_widths(self) -> list[int]:  # [u]
        return [len(p) + tail for p, tail in zip(self.distinct, self.tails)]

    def segment(self, j: int, resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segment j's token ids, positions and segment ids (0 = prompt, 1 + i = row i's tokens),
        each [len(p_j) + tail_j]: the prompt, then each of its rows' responses but the last token
        (`resp` [n, T]), in row order (as `offset` counts them)."""
        p = self.distinct[j]
        ids, positions, segment = [torch.tensor(p, dtype=torch.long)], [torch.arange(len(p))], [torch.zeros(len(p), dtype=torch.long)]
        for i, r in enumerate(self.rows):
            if self.where[r] == j:
                k = self.lengths[i] - 1
                ids.append(resp[i, :k])
                positions.append(len(p) + torch.arange(k))
                segment.append(torch.full((k,), 1 + i, dtype=torch.long))
        return torch.cat(ids), torch.cat(positions), torch.cat(segment)

    def kept_column(self, t: int) -> torch.Tensor:  # [n, T]
        """For row i and token k, the column of its segment's kept logits that predicts it, counted
        from the prompt's last column (0 for k = 0, and past the row's end)."""
        k = torch.arange(t).unsqueeze(0)  # [1, T]
        inside = (k >= 1) & (k < torch.tensor(self.lengths).unsqueeze(1))
        return torch.where(inside, torch.tensor(self.offset).unsqueeze(1) + k, 0)

    def segment_of_rows(self) -> torch.Tensor:  # [n, 1]
        return torch.tensor([self.where[r] for r in self.rows]).unsqueeze(1)


def _block_mask(segment: torch.Tensor) -> torch.Tensor:  # segment [..., W] -> allowed [..., W, W]
    """A column attends causally within its own row's tokens and to the prompt (segment 0);
    padding (segment < 0) attends to nothing but itself (so no softmax row is empty)."""
    q, kv = segment.unsqueeze(-1), segment.unsqueeze(-2)
    width = segment.shape[-1]
    allowed = (((kv == 0) & (q >= 0)) | ((q == kv) & (q > 0))) & torch.ones(width, width, dtype=torch.bool).tril()
    return allowed | torch.eye(width, dtype=torch.bool)


# ----------------------------------------------------------------------------- segments


def _segment_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       opsd_segments=None, **kwargs):
    """sdpa over each segment of one packed row on its own. query [1, H, L, D], key/value
    [1, H_kv, L, D]; ``opsd_segments`` lists (start, stop, allowed [1, 1, w, w]). Returns
    ([1, L, H, D], None), what transformers' own sdpa function returns for the whole row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if opsd_segments is None:
        raise RuntimeError(f"attention {SEGMENT_ATTENTION!r} is only for packing._segment_logits, which passes the segments")
    out = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], allowed,
                               dropout=dropout, scaling=scaling, is_causal=False, **kwargs)[0]
        for a, b, allowed in opsd_segments
    ]
    return torch.cat(out, dim=1), None


def _segment_logits(model, layout: _PackLayout, response_ids: torch.Tensor) -> ResponseLogits:  # response_ids [n, T]
    """All segments one after another in one row (module docstring):

        columns  [ prompt_a | r_1[:L_1-1] | r_2[:L_2-1] | prompt_b | r_3[:L_3-1] | ... ]

    Kept for the LM head, in column order: each prompt's last column, then its segment's response
    columns (each predicts its row's next token)."""
    device = model_device(model)
    n, t = response_ids.shape
    resp = response_ids.cpu()
    ids, positions, kept, segments, base = [], [], [], [], []  # base[j]: segment j's first kept column
    start = 0
    for j, p in enumerate(layout.distinct):
        seg_ids, seg_positions, seg = layout.segment(j, resp)  # each [w_j]
        width = len(seg)
        ids.append(seg_ids)
        positions.append(seg_positions)
        base.append(len(kept))
        kept += [start + len(p) - 1] + list(range(start + len(p), start + width))
        segments.append((start, start + width, _block_mask(seg).view(1, 1, width, width).to(device)))
        start += width
    with attention_switched(model, SEGMENT_ATTENTION, _segment_attention):
        out = model(input_ids=torch.cat(ids).unsqueeze(0).to(device), position_ids=torch.cat(positions).unsqueeze(0).to(device),
                    use_cache=False, logits_to_keep=torch.tensor(kept, device=device), opsd_segments=segments)
    where = torch.tensor(base).unsqueeze(1)[layout.segment_of_rows().squeeze(1)] + layout.kept_column(t)  # [n, T]
    return ResponseLogits(out.logits[0], where.to(device))


# ----------------------------------------------------------------------------- packed rows


def _packed_logits(model, layout: _PackLayout, response_ids: torch.Tensor, pad_id: int) -> ResponseLogits:
    """One packed row per distinct prompt j, the prompt right-aligned at column P - 1:

        columns  [ left pad | prompt_j (ends at column P-1) | r_a[:L_a-1] | r_b[:L_b-1] | ... | pad ]
        segment    -1         0                               1+a           1+b                 -2

    The block mask is passed as a 4D additive mask (transformers uses it as given, also when
    gradient checkpointing replays the forward)."""
    device = model_device(model)
    n, t = response_ids.shape
    u, width, total = len(layout.distinct), layout.prompt_width, layout.width
    resp = response_ids.cpu()
    ids = torch.full((u, total), pad_id, dtype=torch.long)
    segment = torch.full((u, total), -2, dtype=torch.long)
    positions = torch.zeros((u, total), dtype=torch.long)
    for j, p in enumerate(layout.distinct):
        seg_ids, seg_positions, seg = layout.segment(j, resp)  # placed so the prompt ends at column P - 1
        a, b = width - len(p), width - len(p) + len(seg)
        segment[j, :a] = -1
        segment[j, a:b], ids[j, a:b], positions[j, a:b] = seg, seg_ids, seg_positions
    allowed = _block_mask(segment)  # [u, W, W]
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    keep = total - width + 1  # logits of columns P-1 .. W-1
    out = model(input_ids=ids.to(device), attention_mask=mask.unsqueeze(1).to(device),
                position_ids=positions.to(device), use_cache=False, logits_to_keep=keep)
    where = layout.segment_of_rows() * keep + layout.kept_column(t)  # [n, T] into [u * keep]
    return ResponseLogits(out.logits.reshape(u * keep, -1), where.to(device))


# ----------------------------------------------------------------------------- KV cache


def _shared_prefix_logits(
    model,
    distinct: list[tuple[int, ...]],  # [u][P_j] the distinct prompts
    rows: list[tuple[int, ...]],  # [n][P_i] each row's prompt (one of `distinct`)
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
) -> torch.Tensor:  # [n, T, V]
    device = model_device(model)
    # 1. each distinct prompt once; its last logits predict response token 0; the cache goes out
    #    to the rows by an index, so gradients reach the shared pass
    last, cache, prompt_mask, index = prompt_cache(model, distinct, rows, pad_id)
    first = last[index]  # [n, 1, V]
    t = response_ids.shape[1]
    if t == 1:
        return first
    # 2. each row's response tokens 0..T-2 predict tokens 1..T-1, positions continuing its prompt's
    resp = response_ids[:, : t - 1].to(device)
    resp_mask = response_mask[:, : t - 1].to(device).long()
    attention = torch.cat([prompt_mask[index], resp_mask], dim=1)  # [n, P + T - 1]
    resp_positions = (prompt_mask.sum(dim=1)[index].unsqueeze(1) + resp_mask.cumsum(dim=1) - 1).clamp(min=0)
    rest = model(input_ids=resp, attention_mask=attention, position_ids=resp_positions, past_key_values=cache,
                 use_cache=True)
    return torch.cat([first, rest.logits], dim=1)
