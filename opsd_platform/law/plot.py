"""Plots (PNG, matplotlib Agg backend): the gap law with its prediction band; more to come."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from opsd_platform.law import LawFit, aggregate


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines that make these
    import matplotlib.pyplot as plt

    return plt


def short_labels(configs: Sequence[str], sep: str = "/") -> list[str]:
    """Drop the key segments every config shares ("m/arith/ref", "m/arith/fb" -> "ref", "fb")."""
    parts = [str(c).split(sep) for c in configs]
    if len(parts) < 2 or len({len(p) for p in parts}) != 1:
        return [str(c) for c in configs]
    keep = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    if not keep:
        return [str(c) for c in configs]
    return [sep.join(p[i] for i in keep) for p in parts]


def _config_labels(agg: pd.DataFrame) -> list[str]:
    """Short config labels; the family segment is dropped when colour already shows it."""
    configs = list(agg["config"].astype(str))
    if "family" in agg.columns:
        stripped = []
        for cfg, fam in zip(configs, agg["family"].astype(str)):
            parts = cfg.split("/")
            stripped.append("/".join(p for p in parts if p != fam) if fam in parts and len(parts) > 1 else cfg)
        configs = stripped
    return short_labels(configs)


def _label_points(ax, labels: Sequence[str], xs: np.ndarray, ys: np.ndarray) -> None:
    """Annotate points, trying a few offsets so that nearby labels overlap less (greedy)."""
    ax.figure.canvas.draw()  # fixes the axis limits, so data -> pixel transforms are final
    to_px = ax.transData.transform
    placed: list[tuple[float, float, float]] = []  # x0, x1, y (pixels) of labels already placed
    offsets = [(5, 4, "left"), (5, -11, "left"), (-5, 4, "right"), (-5, -11, "right"),
               (5, 14, "left"), (5, -21, "left")]
    scale = ax.figure.dpi / 72.0
    for i in np.argsort(-ys):
        px, py = to_px((xs[i], ys[i]))
        width = 5.0 * len(labels[i]) * scale  # ~7pt font
        best = offsets[0]
        for dx, dy, ha in offsets:
            x0 = px + dx * scale if ha == "left" else px + dx * scale - width
            y = py + dy * scale
            if all(abs(y - py2) > 9 * scale or x0 > b1 or x0 + width < b0 for b0, b1, py2 in placed):
                best = (dx, dy, ha)
                break
        dx, dy, ha = best
        x0 = px + dx * scale if ha == "left" else px + dx * scale - width
        placed.append((x0, x0 + width, py + dy * scale))
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", ha=ha,
                    fontsize=7, alpha=0.9)


def plot_law(
    points: pd.DataFrame,
    fit: LawFit,
    *,
    holdout: Mapping[str, Any] | None = None,
    path: str | Path,
    controls: Sequence[str] = (),
) -> Path:
    """Gap vs improvement: one point per configuration (mean over seeds, error bars = std over
    seeds on both axes), coloured by family, labelled by config; the fitted line and its
    prediction band at ``fit.level``; R^2 and hold-out RMSE/MAE/coverage in the legend.
    Covariates, if the law has any, are held at their mean over the configurations. Configurations
    whose ``context`` is one of `controls` (shuffled_reference, retry: the context's form without
    its content) are ringed, so a reader sees whether the law's x-axis measures content."""
    plt = _pyplot()
    agg = aggregate(points)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    lo, hi = float(agg["gap"].min()), float(agg["gap"].max())
    pad = 0.08 * (hi - lo or 1.0)
    grid = pd.DataFrame({"gap": np.linspace(lo - pad, hi + pad, 200)})
    for cov in fit.covariates:
        grid[cov] = float(agg[cov].mean())
    band = fit.predict(grid)
    pct = f"{100 * fit.level:g}%"
    ax.fill_between(grid["gap"], band["lower"], band["upper"], color="tab:gray", alpha=0.18, lw=0,
                    label=f"{pct} prediction interval (new config)")
    sign = "+" if fit.slope >= 0 else "-"
    ax.plot(grid["gap"], band["predicted_improvement"], color="black", lw=1.5,
            label=f"{fit.method.upper()}: {fit.intercept:.3f} {sign} {abs(fit.slope):.3f}·gap   R² = {fit.r2:.3f}")

    families = agg["family"].astype(str) if "family" in agg.columns else pd.Series(["all"] * len(agg))
    colours = plt.get_cmap("tab10")
    for k, fam in enumerate(dict.fromkeys(families)):
        sel = (families == fam).to_numpy()
        ax.errorbar(
            agg.loc[sel, "gap"], agg.loc[sel, "improvement"],
            xerr=agg.loc[sel, "gap_std"], yerr=agg.loc[sel, "improvement_std"],
            fmt="o", ms=6, color=colours(k % 10), ecolor=colours(k % 10), elinewidth=1, capsize=3,
            label=f"{fam} ({int(sel.sum())} configs)" if "family" in agg.columns else f"{int(sel.sum())} configs",
        )
    _label_points(ax, _config_labels(agg), agg["gap"].to_numpy(float), agg["improvement"].to_numpy(float))
    if controls and "context" in agg.columns:
        ring = agg["context"].astype(str).isin(list(controls)).to_numpy()
        if ring.any():
            ax.scatter(agg.loc[ring, "gap"], agg.loc[ring, "improvement"], s=180, facecolors="none", edgecolors="red",
                       linewidths=1.5, label=f"control ({', '.join(controls)}): form without content", zorder=5)

    if holdout and holdout.get("n"):
        kind = "leave-one-config-out" if holdout.get("kind", "leave_one_out") == "leave_one_out" else (
            f"hold-out by {holdout.get('group', 'group')}")
        ax.plot([], [], " ", label=(
            f"{kind}: RMSE {holdout['rmse']:.3f}, MAE {holdout['mae']:.3f}, "
            f"coverage {100 * holdout['coverage']:.0f}% (n={holdout['n']})"))
    ax.axhline(0, color="gray", lw=0.6, ls=":")
    ax.axvline(0, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("initial gap (self-teacher − student pass rate)")
    ax.set_ylabel("improvement (final − initial validation pass rate)")
    n_seeds = sorted(set(agg["n_seeds"].astype(int)))
    seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
    title = f"Gap law: {fit.n_configs} configurations, {fit.n_points} runs ({seeds} seeds each; bars = std)"
    if fit.covariates:
        title += f"\ncovariates at their means: {', '.join(fit.covariates)}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
