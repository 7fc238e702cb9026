"""The names a config may choose between, in one place below everything that implements them.

The config layer validates a value against these tuples without importing the code behind them
(torch, the worlds, the statistics); each implementing module imports its tuple from here and
checks, at import, that what it implements is exactly what is offered (a name added on one side
only fails at once, not at the first run that uses it).
"""

from __future__ import annotations

# training/contexts.py: what the self-teacher is shown besides the problem
CONTEXTS = ("none", "static", "feedback", "peer_hints", "peer_solution", "peer_or_feedback", "reference", "graded",
            "shuffled_reference", "retry")
# models.py: prompt templates for a model without a chat template of its own (a base model)
TEMPLATES = ("qa",)
# training/precision.py: Lightning's names for the two regimes
PRECISIONS = ("32", "bf16-mixed")
DEFAULT_PRECISION = "32"
# worlds/base.py: how code answers are graded (LiveCodeBench's verdicts, or the older lenient judge)
GRADINGS = ("lcb", "lenient")
# training/losses.py
DIVERGENCES = ("reverse", "forward", "jsd")
SUPPORTS = ("full", "topk", "sampled")
# entry: each support entry's term clipped (OPSD); position: each position's summed divergence capped
CLIP_MODES = ("entry", "position")
AGGREGATIONS = ("sequence", "token", "constant")
# gap/sequential.py: when a sequential gap stops
RULES = ("decision", "confident")


def check_implemented(kind: str, offered: tuple[str, ...], implemented) -> None:
    """Raise at import when a module implements other names than the config offers."""
    if tuple(offered) != tuple(implemented):
        raise RuntimeError(f"{kind}: config offers {list(offered)} but the code implements {list(implemented)}")
