"""The HF rollout against its floor on this core: how far sampling is from what its matmuls and
weight reads need, and where the distance goes.

    python -m benchmarks.rollout_floor [--batch 16] [--context 96] [--repeats 5] [--out bench_out]

One torch thread, SmolLM2-135M (the embedded default), fp32 and bf16 (autocast, as
``trainer.precision=bf16-mixed`` samples). For one decode step of a batch of ``--batch`` rows
with ``--context`` tokens in the KV cache it measures:

1. **the matmul floor**: every Linear of the model ([batch, in] x [in, out], 30 layers x 7 and the
   tied 49152-wide head) run in order on its real weights, and nothing else: the step if nothing
   but its matmuls ran (the weights stream from memory as in the real step);
2. **the memory floor**: the bytes of weights (and KV cache) one step must read, over this core's
   measured read bandwidth (a sum over a 1 GiB tensor);
3. **the floor**: the larger of the two (they overlap at best);
4. **a decode step as the model runs it**: one forward of one new token per row with the
   transformers DynamicCache (what ``generate`` uses; ``torch.cat`` grows it every step), and with
   a preallocated StaticCache (no growth);
5. **the engine**: ``HFGenerateEngine.generate`` on the throughput benchmark's step (4 prompts x 4
   samples, 48 new tokens, temperature 0.6), as CPU-s per 16 generated row-tokens, beside the
   decode step's, and its model forwards by kind and batch size (the engine also runs the prefill
   and drops finished rows, so the rows left pay a whole forward for fewer tokens);
6. **one decode forward by batch size** (1, 4, 8, ``--batch``): what the rows left after the
   others ended pay per step;
7. **a validation's sampling** (``--val-problems`` x 4 samples) in fixed batches of ``--val-batch``
   rows against ``rollout.refill`` (a pool of as many slots), alternated twice;
8. with ``--compile``: **the decode step compiled** by ``torch.compile`` (inductor; plain and with
   its freezing, the CPU inference recipe) against eager, with a StaticCache so that the shapes
   are fixed, and what the compile costs.

Times are process CPU seconds, the fastest of ``--repeats`` (a shared machine inflates wall
time, less so CPU time; the JSON records the load average at the start). Writes
``<out>/rollout-floor.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from opsd_platform.process import configure_process


def best_cpu_s(fn, repeats: int, inner: int = 1) -> float:
    """Fastest process CPU seconds of `fn` over `repeats` timings of `inner` calls (per call)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(inner):
            fn()
        times.append((time.process_time() - t0) / inner)
    return min(times)


def matmul_floor(model, batch: int, dtype: torch.dtype, repeats: int) -> dict:
    """The step's matmuls alone: every Linear of the model in order, with its real weights (so they
    stream from memory as in a real step, not warm in cache), on a [batch, in] input."""
    weights = [m.weight.detach().to(dtype) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in weights}

    def matmuls():
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    cpu_s = best_cpu_s(matmuls, repeats)
    flops = sum(2 * batch * w.shape[0] * w.shape[1] for w in weights)
    return {"cpu_s": cpu_s, "gflop": flops / 1e9, "gflops_per_s": flops / cpu_s / 1e9}


def read_bandwidth(repeats: int) -> float:
    """Bytes per CPU-second this core reads streaming a 1 GiB tensor (far beyond the caches)."""
    big = torch.ones(1 << 28, dtype=torch.float32)  # 1 GiB
    s = best_cpu_s(lambda: big.sum(), repeats)
    return big.numel() * 4 / s


def decode_inputs(model, batch: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random prompt [batch, context] and the next token [batch, 1] (the same in every measurement)."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return torch.randint(0, vocab, (batch, context), generator=gen), torch.randint(0, vocab, (batch, 1), generator=gen)


def decode_step(model, batch: int, context: int, static: bool, repeats: int, precision: str) -> float:
    """CPU-s of one forward of one token per row with `context` (+ up to `repeats`) tokens cached."""
    from transformers import DynamicCache, StaticCache

    from opsd_platform.training.precision import autocast, sampling_attention

    prompt, token = decode_inputs(model, batch, context)
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast(precision, cpu), sampling_attention(model, precision, cpu):  # as the engine samples
        # each timed step appends its token, like decoding does: room for the warm-up and the repeats
        room = context + repeats + 1
        cache = StaticCache(config=model.config, max_cache_len=room) if static else DynamicCache(config=model.config)
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        return best_cpu_s(lambda: model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1), repeats)


def compiled_decode(model, batch: int, context: int, repeats: int, how: str) -> dict:
    """One fp32 decode forward with a StaticCache (the shapes fixed, as torch.compile wants them):
    eager, or compiled by inductor (`how` = "compile"), or compiled with inductor's freezing (weights
    folded in as constants and prepacked for oneDNN: its CPU inference recipe, `how` = "freezing").
    Returns the first two calls' wall seconds (the compile) and the step's CPU-s."""
    import torch._inductor.config as inductor
    from transformers import StaticCache

    prompt, token = decode_inputs(model, batch, context)
    torch._dynamo.reset()  # each variant compiles afresh
    inductor.freezing = how == "freezing"
    try:
        with torch.no_grad():
            cache = StaticCache(config=model.config, max_cache_len=context + 2 * repeats + 8)
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
            forward = model.forward if how == "eager" else torch.compile(model.forward, dynamic=False)
            position = [context]

            def step():
                out = forward(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1,
                              cache_position=torch.tensor([position[0]]))
                position[0] += 1
                return out

            t0 = time.perf_counter()
            step(), step()
            first = time.perf_counter() - t0
            return {"how": how, "first_two_calls_s": first, "decode_s": best_cpu_s(step, repeats)}
    finally:
        inductor.freezing = False


def engine_rollout(model, tokenizer, repeats: int, precision: str) -> dict:
    """The throughput benchmark's rollout, fastest of `repeats`: its CPU-s, the row-tokens it
    generated, and its model forwards by kind and batch size (a forward hook times each)."""
    from collections import defaultdict

    from opsd_platform.config.compose import train_config
    from opsd_platform.training.rollout import HFGenerateEngine
    from opsd_platform.worlds import make_world

    cfg = train_config(["world=arithmetic", "world.difficulty=1"])
    messages = [p.prompt for p in make_world(cfg.world, seed=0).problems("train")[:4]]
    engine = HFGenerateEngine(model, tokenizer, batch_size=16, precision=precision)
    calls: list[tuple[tuple[int, int], float]] = []
    started: list[tuple[tuple[int, int], float]] = []

    def before(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        started.append((tuple(ids.shape), time.process_time()))

    def after(module, args, kwargs, output):
        shape, t0 = started.pop()
        calls.append((shape, time.process_time() - t0))

    hooks = [model.register_forward_pre_hook(before, with_kwargs=True), model.register_forward_hook(after, with_kwargs=True)]
    best: dict = {"cpu_s": float("inf")}
    try:
        for r in range(repeats + 1):
            calls.clear()
            torch.manual_seed(r)
            t0 = time.process_time()
            ro = engine.generate(messages, 4, 48, 0.6)
            took = time.process_time() - t0
            if r and took < best["cpu_s"]:  # the first call warms up
                forwards: dict = defaultdict(lambda: {"n": 0, "cpu_s": 0.0})
                for (rows, width), s in calls:
                    f = forwards[f"{'prefill' if width > 1 else 'decode'} x{rows}"]
                    f["n"] += 1
                    f["cpu_s"] += s
                best = {"cpu_s": took, "row_tokens": int(ro.num_tokens), "forwards": dict(forwards),
                        "lengths": sorted(ro.response_mask.sum(1).tolist())}
    finally:
        for h in hooks:
            h.remove()
    return best


def validation_rollouts(model, tokenizer, n_problems: int, batch: int) -> list[dict]:
    """A validation's sampling (rollout.val_*: `n_problems` x 4 samples, temperature 0.6, top-p 0.95,
    48 tokens) with fixed batches of `batch` rows and with refill (a pool of `batch` slots),
    alternated twice: CPU-s, row-tokens and decode forwards of each."""
    from opsd_platform.config.compose import train_config
    from opsd_platform.training.rollout import HFGenerateEngine
    from opsd_platform.worlds import make_world

    cfg = train_config(["world=arithmetic", "world.difficulty=1", "world.n_train=36", f"world.n_val={n_problems}"])  # as the grid
    messages = [p.prompt for p in make_world(cfg.world, seed=0).problems("val")[:n_problems]]
    out = []
    for repeat in range(2):
        for refill in (False, True):
            forwards = []
            hook = model.register_forward_pre_hook(lambda m, a, kw: forwards.append(kw["input_ids"].shape[1] == 1), with_kwargs=True)
            torch.manual_seed(repeat)
            t0 = time.process_time()
            ro = HFGenerateEngine(model, tokenizer, batch_size=batch, refill=refill).generate(messages, 4, 48, 0.6, 0.95)
            took = time.process_time() - t0
            hook.remove()
            out.append({"refill": refill, "repeat": repeat, "cpu_s": took, "row_tokens": int(ro.num_tokens),
                        "decode_forwards": sum(forwards), "forwards": len(forwards)})
    return out


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="rows decoded together (the engine's micro-batch)")
    parser.add_argument("--context", type=int, default=96, help="tokens in the KV cache (prompt + some answer)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement (the fastest counts)")
    parser.add_argument("--precisions", default="32,bf16-mixed", help="comma-separated trainer.precision values")
    parser.add_argument("--val-problems", type=int, default=64, help="validation problems for the refill comparison (0: skip)")
    parser.add_argument("--val-batch", type=int, default=64, help="rows per call / pool slots there (rollout.val_batch_size)")
    parser.add_argument("--compile", action="store_true",
                        help="also: the fp32 decode step compiled by torch.compile (inductor, with and without freezing) "
                             "against eager, alternated (minutes: each variant compiles)")
    parser.add_argument("--compile-only", action="store_true", help="only the --compile comparison")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"), help="folder for rollout-floor.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.throughput import cpu_info
    from opsd_platform.config.compose import train_config
    from opsd_platform.models import load_policy

    load = os.getloadavg()[0]
    model, tokenizer = load_policy(train_config([]).model)
    model.eval()
    bandwidth = read_bandwidth(args.repeats)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * args.context * args.batch * 4
    compiled = []
    if args.compile or args.compile_only:  # eager first and last: the machine's drift shows
        for how in ("eager", "compile", "freezing", "eager"):
            compiled.append(compiled_decode(model, args.batch, args.context, args.repeats, how))
            print(f"decode step, StaticCache, fp32, {how}: {compiled[-1]['decode_s'] * 1e3:.1f} ms "
                  f"(first two calls {compiled[-1]['first_two_calls_s']:.1f} s)", flush=True)
    rows = []
    for precision in ([] if args.compile_only else args.precisions.split(",")):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
        mm = matmul_floor(model, args.batch, dtype, args.repeats)
        # bf16 autocast reads the fp32 weights once per call and converts them (precision.py): the
        # memory floor per decode step is then the bf16 copies' bytes, fp32's read amortised away
        step_bytes = weight_bytes * (0.5 if dtype == torch.bfloat16 else 1.0) + kv_bytes
        memory_s = step_bytes / bandwidth
        dynamic = decode_step(model, args.batch, args.context, False, args.repeats, precision)
        # StaticCache preallocates in the weights' dtype (fp32); under bf16 autocast the keys are
        # bf16 and it refuses them, so the static row is measured in fp32 only
        static = decode_step(model, args.batch, args.context, True, args.repeats, precision) if dtype == torch.float32 else None
        engine = engine_rollout(model, tokenizer, max(1, args.repeats // 2), precision)
        engine_s, tokens = engine["cpu_s"], engine["row_tokens"]
        floor = max(mm["cpu_s"], memory_s)
        rows.append({
            "precision": precision, "matmul_floor_s": mm["cpu_s"], "memory_floor_s": memory_s, "floor_s": floor,
            "decode_dynamic_s": dynamic, "decode_static_s": static,
            "engine_cpu_s": engine_s, "engine_row_tokens": tokens, "engine_forwards": engine["forwards"],
            "engine_lengths": engine["lengths"],
            "engine_s_per_decode_step": engine_s / tokens * args.batch,
            "gflop_per_step": mm["gflop"], "matmul_gflops_per_s": mm["gflops_per_s"],
        })
    # The cost of one decode forward by batch size: what the rows left after others ended pay
    sweep = []
    for batch in ([] if args.compile_only else sorted({1, 4, 8, args.batch})):
        sweep.append({"batch": batch, "matmul_floor_s": matmul_floor(model, batch, torch.float32, args.repeats)["cpu_s"],
                      "decode_dynamic_s": decode_step(model, batch, args.context, False, args.repeats, "32")})
    validation = (validation_rollouts(model, tokenizer, args.val_problems, args.val_batch)
                  if args.val_problems and not args.compile_only else [])
    print(f"SmolLM2-135M decode step: batch {args.batch}, {args.context} cached tokens, 1 thread; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s; load average {load:.2f} at the start")
    print("| precision | matmul floor | memory floor | decode (DynamicCache) | decode (StaticCache) | engine per step of 16 rows | engine / floor |")
    print("|---|---|---|---|---|---|---|")
    ms = lambda v: "n/a" if v is None else f"{v * 1e3:.1f} ms"  # noqa: E731
    for r in rows:
        print(f"| {r['precision']} | {ms(r['matmul_floor_s'])} | {ms(r['memory_floor_s'])} | {ms(r['decode_dynamic_s'])} | "
              f"{ms(r['decode_static_s'])} | {ms(r['engine_s_per_decode_step'])} | {r['engine_s_per_decode_step'] / r['floor_s']:.2f}x |")
    if rows:
        print("\nwhere the engine's CPU-s go (model forwards by kind x rows; fp32):")
        for kind, f in rows[0]["engine_forwards"].items():
            print(f"  {kind}: {f['n']} forwards, {f['cpu_s']:.2f} CPU-s ({f['cpu_s'] / f['n'] * 1e3:.0f} ms each)")
        print(f"  of {rows[0]['engine_cpu_s']:.2f} CPU-s; response lengths {rows[0]['engine_lengths']}")
    print("\none decode forward by batch size (fp32): | batch | matmuls alone | decode step |")
    for r in sweep:
        print(f"  | {r['batch']} | {ms(r['matmul_floor_s'])} | {ms(r['decode_dynamic_s'])} |")
    if validation:
        print(f"\na validation's sampling ({args.val_problems} problems x 4, {args.val_batch} rows per call or pool slots; fp32):")
        print("| refill | repeat | CPU-s | row-tokens | decode forwards | CPU-s per 1000 row-tokens |\n|---|---|---|---|---|---|")
        for v in validation:
            print(f"| {v['refill']} | {v['repeat']} | {v['cpu_s']:.1f} | {v['row_tokens']} | {v['decode_forwards']} | "
                  f"{v['cpu_s'] / v['row_tokens'] * 1e3:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"cpu": cpu_info(), "batch": args.batch, "context": args.context, "repeats": args.repeats,
              "load_average_at_start": load, "read_bandwidth_gb_s": bandwidth / 1e9, "weight_bytes": weight_bytes,
              "kv_bytes_fp32": kv_bytes, "rows": rows, "batch_sweep": sweep, "validation_refill": validation,
              "compiled_decode": compiled,
              "command": "python -m benchmarks.rollout_floor " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    (out / "rollout-floor.json").write_text(json.dumps(result, indent=2))
    print(f"written: {out / 'rollout-floor.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
