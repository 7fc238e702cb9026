"""The trial gate: the one object through which a search decides about a training it runs.

``train(cfg, gate=...)`` calls its gate at each decision point, in this order:

    sequential_rule(cfg)       with ``gap.sequential``, as the gap measurement starts: the
                               stopping rule (gap.sequential.StoppingRule) the gap is measured
                               under, or None to measure it in full
    on_gap(run_id, gap)        the initial gap measured and logged (``gap.enabled``), before the
                               initial validation: the law's decision, from the typed GapResult
    on_train_start(run_id)     Lightning's fit starts (a trial that measured no gap decides here)
    on_step(step, row)         after each training step, with the step's metrics (``row``)

Any of them may raise ``errors.StopTraining`` to end the run early on purpose (the run ends
FINISHED with the tag ``stopped``). ``train(cfg)`` without a search takes no gate: none of these
is called and the run is the same as before the gate existed. ``Gate`` decides nothing: a base
for gates that need only some of the points (search/gate.py holds the search's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opsd_platform.config import TrainConfig
    from opsd_platform.gap.measure import GapResult
    from opsd_platform.gap.sequential import StoppingRule


class TrialGate(Protocol):
    def sequential_rule(self, cfg: "TrainConfig") -> "StoppingRule | None": ...

    def on_gap(self, run_id: str, gap: "GapResult") -> None: ...

    def on_train_start(self, run_id: str) -> None: ...

    def on_step(self, step: int, row: dict[str, float]) -> None: ...


class Gate:
    """A gate that lets everything through (a base: override the decision points you need)."""

    def sequential_rule(self, cfg: "TrainConfig") -> "StoppingRule | None":
        return None

    def on_gap(self, run_id: str, gap: "GapResult") -> None:
        pass

    def on_train_start(self, run_id: str) -> None:
        pass

    def on_step(self, step: int, row: dict[str, float]) -> None:
        pass

