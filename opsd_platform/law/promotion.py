"""Which law decides: the registry's promotion rule as a pure function of the two versions' standing,
for the registry (registry.promote, on version tags) and for a search that keeps its laws in
memory (search/memory.py, the replay of the recorded table).
"""

from __future__ import annotations

from dataclasses import dataclass

PROMOTED, KEPT, UNCHANGED = "promoted", "kept", "unchanged"


@dataclass(frozen=True)
class Standing:
    """What the rule reads of one law version."""

    version: str
    rmse: float | None  # hold-out RMSE (None: none recorded)
    kind: str | None = "leave_one_out"  # hold-out kind: RMSEs of different kinds are not compared
    usable: bool = True  # law.holdout.check_law's verdict (False: it may not decide)
    usable_reason: str = "may not decide"


def promotion(candidate: Standing, champion: Standing | None, *, name: str = "the law", alias: str = "champion",
              force: bool = False) -> tuple[str, str]:
    """(decision, reason): does `candidate` replace `champion`? Never when it may not decide (even
    forced); always when there is no champion; else forced, or when its hold-out RMSE is lower
    (a candidate without one loses, a champion without one loses to a candidate with one)."""
    c, at = candidate, f"@{alias}"
    if champion is not None and champion.version == c.version:
        return UNCHANGED, f"v{c.version} is already {at}"
    if not c.usable:
        return KEPT, f"v{c.version} {c.usable_reason}" + (
            "" if champion is None else f"; v{champion.version} stays {at}")
    if champion is None:
        return PROMOTED, f"{name!r} had no {at}"
    ch = champion
    if force:
        return PROMOTED, f"forced over v{ch.version} (hold-out RMSE {c.rmse} vs {ch.rmse})"
    if c.rmse is None:
        return KEPT, f"v{c.version} has no hold-out RMSE; v{ch.version} stays {at} (use force)"
    if ch.rmse is None:  # e.g. a first law fitted on too few configurations for a hold-out
        return PROMOTED, f"v{c.version} has a hold-out RMSE ({c.rmse:.4g}) and {at} v{ch.version} has none"
    if c.kind != ch.kind:
        return KEPT, (f"hold-out kinds differ (v{c.version}: {c.kind}, v{ch.version}: {ch.kind}); "
                      "RMSEs not comparable (use force)")
    if c.rmse < ch.rmse:
        return PROMOTED, f"hold-out RMSE {c.rmse:.4g} < {ch.rmse:.4g} of v{ch.version}"
    return KEPT, f"hold-out RMSE {c.rmse:.4g} >= {ch.rmse:.4g} of {at} v{ch.version}"
