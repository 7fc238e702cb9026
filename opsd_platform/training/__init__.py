"""Training: world -> rollout -> context -> loss -> module, and the gap measured at step 0.

Modules in data-flow order: rollout, contexts, losses, packing, scoring, precision, grpo,
module, checkpoint, evaluation, gap, sequential, measurements, train (the order of operations)."""
