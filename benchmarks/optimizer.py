"""AdamW step cost on CPU: torch's default (a per-parameter loop on CPU), foreach, and fused.

    python -m benchmarks.optimizer [--threads 1] [--repeats 5] [--out bench_out]

Why: on CPU torch's AdamW defaults to updating one tensor and one elementwise op at a time; on
SmolLM2-135M that was ~0.5 CPU-s of every OPSD step. ``optim.fused`` (default true) uses torch's
fused kernel instead, as transformers' Trainer (and so TRL) already does with torch >= 2.8.

The parameters have SmolLM2-135M's shapes (30 layers of attention, MLP and norms, a tied
49152 x 576 embedding; 134.5M values), random, with random gradients; each implementation takes
one warm-up step, then ``--repeats`` timed steps, and the table gives the fastest (process CPU
seconds; the machine is shared). The last check is that all three made the same update.
Writes ``<out>/optimizer.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from opsd_platform.process import configure_process

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536), (576,), (576,)]
SMOLLM2_SHAPES = [(49152, 576)] + LAYER * 30 + [(576,)]
KINDS = {"loop (torch's CPU default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_kind(kwargs: dict, repeats: int) -> tuple[float, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=gen)) for s in SMOLLM2_SHAPES]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **kwargs)
    opt.step()  # warm-up (creates the state)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        opt.step()
        times.append(time.process_time() - t0)
    return min(times), [p.detach()[:4].clone() for p in params[:3]]


def main(argv: list[str] | None = None) -> int:
    configure_process(log_level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--out", default="bench_out", help="folder for optimizer.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = sum(torch.Size(s).numel() for s in SMOLLM2_SHAPES)
    rows, updates = [], {}
    for name, kwargs in KINDS.items():
        cpu_s, updates[name] = time_kind(kwargs, args.repeats)
        rows.append({"implementation": name, "cpu_s_per_step": cpu_s})
    base = rows[0]["cpu_s_per_step"]
    print(f"AdamW on {n / 1e6:.1f}M parameters (SmolLM2-135M shapes), {args.threads} thread(s), best of {args.repeats}")
    print("| implementation | CPU-s per step | vs default |\n|---|---|---|")
    for r in rows:
        r["speedup_vs_default"] = base / r["cpu_s_per_step"]
        print(f"| {r['implementation']} | {r['cpu_s_per_step']:.3f} | {r['speedup_vs_default']:.1f}x |")
    ref = updates[rows[0]["implementation"]]
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for u in updates.values() for a, b in zip(u, ref))
    print(f"same update as the default loop (rtol 1e-5): {same}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"parameters": n, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "rows": rows, "same_update": same}
    (out / "optimizer.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
