"""Training: world -> rollout -> context -> loss -> module, one OPSD (or GRPO) step at a time.

Modules in data-flow order: sequences, rollout, contexts, losses, packing, scoring, precision,
teacher, optimizer, grpo, distributed, module (one step in the order it happens), evaluation,
diagnostics, checkpoint, resume. The gap measured at step 0 is in opsd_platform/gap/, the run that
puts them together (``train``) in opsd_platform/runs/."""
