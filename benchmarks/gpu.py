"""OPSD step throughput on one GPU (or the CPU, with --tiny): fp32 vs bf16, gradient checkpointing.

    python -m benchmarks.gpu            # on a GPU machine: SmolLM2-135M- and Qwen2.5-1.5B-shaped models
    python -m benchmarks.gpu --tiny     # the same harness on tiny models (any machine; a quick check)

Made for a lent GPU machine that has torch, transformers and lightning but none of mlflow, hydra,
optuna, gguf, trl or vllm, and cannot download anything: the models are *built from configs with
random weights* (the architectures of SmolLM2-135M and Qwen2.5-1.5B, with a word-level tokenizer
of the same vocabulary size built in memory), configs are dataclasses (no Hydra), nothing is
tracked. Random weights rarely emit EOS, so responses run to the length cap: every step does the
full work. vLLM is not measured here: its CUDA wheel (~400 MB) cannot travel to that machine
(64 MiB limit on what is carried) and nothing can be installed there.

Each case runs our real OPSD step (``OPSDModule`` under a Lightning Trainer: HF generate rollout,
arithmetic judge, reference context, teacher scored under inference_mode, top-20 reverse KL,
backward, AdamW, EMA teacher) for ``warmup + steps`` steps, and reports the median step time,
rollout / teacher-scoring tokens per second and peak device memory. The whole run keeps to a time
budget (default 270 s) and skips the cases that no longer fit. Writes ``$OUT/gpu.json`` and
``$OUT/gpu.md`` (``OUT`` defaults to ./bench_out).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from opsd_platform.process import configure_process

# Shapes of the real models (from their published configs); weights are random.
ARCHS = {
    "smollm2-135m": dict(family="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0),
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0),
    "tiny-a": dict(family="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, vocab_size=512, tie_word_embeddings=False),
    "tiny-b": dict(family="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, vocab_size=1024, tie_word_embeddings=True),
}


@dataclass(frozen=True)
class Case:
    arch: str
    dtype: str  # float32 | bfloat16
    checkpointing: bool = False

    @property
    def label(self) -> str:
        return f"{self.arch} {self.dtype}{' +ckpt' if self.checkpointing else ''}"


GPU_CASES = [
    Case("smollm2-135m", "float32"),
    Case("smollm2-135m", "bfloat16"),
    Case("qwen2.5-1.5b", "bfloat16"),
    Case("qwen2.5-1.5b", "bfloat16", checkpointing=True),
    Case("qwen2.5-1.5b", "float32"),
]
TINY_CASES = [Case("tiny-a", "float32"), Case("tiny-a", "bfloat16"), Case("tiny-b", "float32", checkpointing=True)]


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer with `vocab_size` entries: specials, printable characters, fillers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from opsd_platform.models import TINY_CHAT_TEMPLATE

    specials = ["<unk>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    base = specials + chars
    vocab = {tok: i for i, tok in enumerate(base + [f"<t{i}>" for i in range(vocab_size - len(base))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|pad|>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_model(arch: str, dtype, device, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(ARCHS[arch])
    family = spec.pop("family")
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**spec, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(config).to(dtype)
    return model.train()


def run_case(case: Case, args, device) -> dict:
    import lightning as L
    import torch

    from opsd_platform.config import (
        LossConfig,
        ModelConfig,
        OptimConfig,
        RolloutConfig,
        TeacherConfig,
        TrainConfig,
        TrainerConfig,
        WorldConfig,
    )
    from opsd_platform.training.module import OPSDModule
    from opsd_platform.worlds import make_world

    cfg = TrainConfig(
        seed=0, context="reference",
        model=ModelConfig(source="tiny", name=case.arch, family=case.arch, dtype=case.dtype),
        world=WorldConfig(name="arithmetic", difficulty=1, n_train=64, n_val=4),
        rollout=RolloutConfig(prompts_per_step=args.prompts, samples_per_prompt=args.samples,
                              max_new_tokens=args.max_new_tokens, temperature=1.0,
                              batch_size=args.prompts * args.samples),
        loss=LossConfig(divergence="reverse", support="topk", top_k=20),
        teacher=TeacherConfig(kind="ema", ema_rate=0.05),
        optim=OptimConfig(lr=1e-5),
        trainer=TrainerConfig(max_steps=args.warmup + args.steps, validate=False, progress_bar=False,
                              gradient_checkpointing=case.checkpointing),
    )
    dtype = getattr(torch, case.dtype)
    tokenizer = build_tokenizer(ARCHS[case.arch]["vocab_size"])
    built = time.perf_counter()
    model = build_model(case.arch, dtype, device, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    module = OPSDModule(cfg, model, tokenizer, make_world(cfg.world, seed=0))
    build_s = time.perf_counter() - built
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    walls: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *a):
            if cuda:
                torch.cuda.synchronize()
            self.w = time.perf_counter()

        def on_train_batch_end(self, *a):
            if cuda:
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - self.w)

    L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()],
    ).fit(module)
    hist = module.history[args.warmup :]
    rows = args.prompts * args.samples
    rollout_tokens = sum(h["rollout/response_len"] * rows for h in hist)
    teacher_tokens = sum(h["teacher/tokens"] for h in hist)
    step = statistics.median(walls[args.warmup :])
    result = {
        "case": case.label, "arch": case.arch, "dtype": case.dtype, "gradient_checkpointing": case.checkpointing,
        "params_m": params / 1e6, "build_s": build_s,
        "step_s": step, "steps_per_s": 1.0 / step,
        "tokens_per_s": rollout_tokens / sum(walls[args.warmup :]),
        "rollout_tokens_per_s": rollout_tokens / sum(h["time/rollout_s"] for h in hist),
        "teacher_tokens_per_s": teacher_tokens / max(1e-9, sum(h["time/teacher_s"] for h in hist)),
        "phases_s": {k: statistics.median(h[f"time/{k}_s"] for h in hist) for k in ("rollout", "teacher", "update")},
        "mean_response_tokens": rollout_tokens / (len(hist) * rows),
        "loss_last": hist[-1]["train/loss"],
        "peak_mem_gb": (torch.cuda.max_memory_allocated() / 2**30) if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "steps_measured": len(walls) - args.warmup,
    }
    del module, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}; "
        f"{meta['prompts']} prompts x {meta['samples']} samples x {meta['max_new_tokens']} new tokens, "
        f"median of {meta['steps']} steps after {meta['warmup']} warm-up",
        "",
        "| case | params (M) | step (s) | steps/s | rollout tok/s | teacher tok/s "
        "| rollout / teacher / update (s) | peak mem (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['case']} | - | skipped: {r['skipped']} | | | | | |")
            continue
        p = r["phases_s"]
        lines.append(
            f"| {r['case']} | {r['params_m']:.0f} | {r['step_s']:.2f} | {r['steps_per_s']:.3f} | "
            f"{r['rollout_tokens_per_s']:.0f} | {r['teacher_tokens_per_s']:.0f} | "
            f"{p['rollout']:.2f} / {p['teacher']:.2f} / {p['update']:.2f} | {r['peak_mem_gb']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (a quick check of the harness, any device)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per case (default 4; tiny 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 8; tiny 2)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128; tiny 16")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip cases that would start after this")
    parser.add_argument("--cases", default="", help="only cases whose label contains one of these (comma list)")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 4)
    args.prompts = args.prompts or (2 if args.tiny else 8)
    args.max_new_tokens = args.max_new_tokens or (16 if args.tiny else 128)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()

    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    meta = {"device": device_name,
            "torch": torch.__version__, "transformers": transformers.__version__, "steps": args.steps,
            "warmup": args.warmup, "prompts": args.prompts, "samples": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "vllm": "not measured: the vllm CUDA wheel (~400 MB) cannot be carried to the GPU machine (64 MiB limit) "
                    "and nothing can be installed there"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    wanted = [w for w in args.cases.split(",") if w]
    cases = TINY_CASES if args.tiny else GPU_CASES
    for case in [c for c in cases if not wanted or any(w in c.label for w in wanted)]:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            results.append({"case": case.label, "skipped": f"time budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"})
            continue
        print(f"[gpu-bench] {case.label} (t={elapsed:.0f} s)", flush=True)
        try:
            results.append(run_case(case, args, device))
        except Exception as exc:  # one failing case (e.g. out of memory) must not lose the others
            results.append({"case": case.label, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"})
            traceback.print_exc()  # the log must say where, not only what
            if device.type == "cuda":
                torch.cuda.empty_cache()
        (out / "gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    meta["total_s"] = time.perf_counter() - started
    (out / "gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(results, meta)
    (out / "gpu.md").write_text(table + "\n")
    print(table)
    print(f"\ntotal {meta['total_s']:.0f} s; written {out / 'gpu.json'}, {out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
