"""bench-v2's goal, checked on the exported table (pure functions; `law_report` prints them).

The benchmark issue states what must hold before a law slice's result is about OPSD rather than
about how it was measured. Three of those checks read the recorded trainings (the fourth, at most
5 % of initial responses cut by the token cap, is measured on the initial model by
`benchmarks/diagnose.py` and is not in the table):

- **`none` does not drift**: the fixed context's improvement (its loss is ~0, so any change is the
  optimizer's) lies within 2 seed standard deviations of 0, the bar the recipe pilot used. The
  slice's seed std pools every configuration, so a slice whose contexts sometimes collapse widens
  the bar for `none` too (bench-v2 arithmetic: ~0.3 once seed 1 landed). A second, stricter bar
  does not depend on the other contexts: 2 standard errors of `none`'s mean improvement from the
  validation's sampling alone (each pass rate a mean of n_val x val_samples draws, taken as
  independent: answers to one problem are correlated, so this bar is, if anything, too tight);
- **the graded dial is monotone**: on the initial model, the gap grows with the revealed share (and,
  beside that strict check, whether its largest fall is within the gap's sampling noise);
- **the controls sit where their gap puts them**: `shuffled_reference` and `retry` have the form
  of a context without its content. Each is predicted by the law fitted on the slice's other
  contexts; a control far above its interval means the improvement came from the form, which the
  gap (a pass-rate difference) does not see.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from opsd_platform.law import LawError, fit_law
from opsd_platform.law.pipeline import points_from_runs

CONTROLS = ("shuffled_reference", "retry")  # the contexts' form without their content (bench-v2)
DRIFT_BAR_STDS = 2.0  # `none` within this many seed std of 0 (the pilot's rule, benchmarks/pilot_report.py)
DIAL_FALL_SES = 2.0  # a fall of the graded dial's gap within this many standard errors is noise
GAP_LEVEL = 0.95  # the gap's interval level when the table has no `gap.level` (the config's default)


def pooled_seed_std(groups) -> float:
    """The within-group std over seeds, pooled: sqrt of the mean sample variance (ddof 1) of the
    groups (each a configuration's improvements) that have >= 2 seeds; NaN when none has."""
    var = [np.var(np.asarray(v, dtype=float), ddof=1) for v in groups if len(v) >= 2]
    return math.sqrt(float(np.mean(var))) if var else float("nan")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def recipe_label(row: pd.Series) -> str:
    """"no clip", "entry 0.05" or "position 0.05", with ", eps 1e-05" where AdamW's epsilon is not
    torch's default: rows exported before `loss.clip_mode` (`optim.eps`) existed clipped per entry
    (used 1e-8), the options' defaults."""
    clip, mode, eps = row.get("loss.token_clip"), row.get("loss.clip_mode"), row.get("optim.eps")
    label = "no clip" if _missing(clip) else f"{'entry' if _missing(mode) else mode} {float(clip):g}"
    return label if _missing(eps) or float(eps) == 1e-8 else f"{label}, eps {float(eps):g}"


def sampling_se(none: pd.DataFrame) -> float:
    """The standard error of the mean improvement of these runs from the validation's sampling alone:
    improvement = val_final - val_initial, each a pass rate over n_val x val_samples draws. NaN when
    the table lacks the validation's size."""
    if not {"val_initial", "val_final", "world.n_val", "rollout.val_samples"} <= set(none.columns):
        return float("nan")
    n = none["world.n_val"].astype(float) * none["rollout.val_samples"].astype(float)
    p0, p1 = none["val_initial"].astype(float), none["val_final"].astype(float)
    per_run_var = p0 * (1 - p0) / n + p1 * (1 - p1) / n
    return float(math.sqrt(per_run_var.sum()) / len(none))


def none_drift(law: pd.DataFrame, seed_std: dict[str, float]) -> list[dict]:
    """Per law slice: `none`'s improvement per seed and its mean against two bars: 2 x the slice's
    within-configuration seed std (`bar`; NaN until the slice has two seeds of something) and 2 x
    the standard error of the mean from the validation's sampling (`sampling_bar`)."""
    rows = []
    for name, part in law.groupby("slice"):
        none = part[part["context"] == "none"].sort_values("seed")
        if none.empty:
            continue
        bar = DRIFT_BAR_STDS * seed_std.get(name, float("nan"))
        sampling_bar = DRIFT_BAR_STDS * sampling_se(none)
        mean = float(none["improvement"].mean())
        per_seed = " / ".join(none["improvement"].map("{:+.3f}".format))
        rows.append({"slice": name, "seeds": len(none), "per_seed": per_seed, "mean": mean,
                     "bar": bar, "within": bool(abs(mean) <= bar) if not math.isnan(bar) else None,
                     "sampling_bar": sampling_bar,
                     "within_sampling": bool(abs(mean) <= sampling_bar) if not math.isnan(sampling_bar) else None})
    return rows


def gap_se(part: pd.DataFrame) -> pd.Series:
    """Each run's gap standard error, read off its bootstrap interval over problems (`gap_lower`,
    `gap_upper`, at `gap.level`, 0.95 unless the table says otherwise) as a normal interval's."""
    level = part["gap.level"].astype(float) if "gap.level" in part else GAP_LEVEL
    z = stats.norm.ppf((1 + level) / 2)
    return (part["gap_upper"].astype(float) - part["gap_lower"].astype(float)) / (2 * z)


def graded_dial(law: pd.DataFrame) -> list[dict]:
    """Per law slice with >= 2 graded shares: the mean gap (and improvement) at each share, whether
    the gap never falls as the share grows, and Spearman's rho of gap against share.

    A measured gap is noisy (32 problems x 4 samples a side: about +-0.06 a seed), so beside the
    strict check: the largest fall between neighbouring shares, its standard error (each share's
    mean gap over seeds from the runs' bootstrap intervals, the two shares taken as independent:
    an approximation, they share the student's measurement) and `monotone_within_noise`: no fall
    larger than 2 of its standard errors."""
    rows = []
    graded = law[law["context"] == "graded"]
    graded = graded.assign(gap_se=gap_se(graded)) if {"gap_lower", "gap_upper"} <= set(graded.columns) \
        else graded.assign(gap_se=float("nan"))
    for name, part in graded.groupby("slice"):
        by_share = part.groupby(part["graded_fraction"].astype(float)).agg(
            gap=("gap", "mean"), improvement=("improvement", "mean"),
            se=("gap_se", lambda v: float(np.sqrt(np.sum(np.square(v.to_numpy())))) / len(v)))
        if len(by_share) < 2:
            continue
        gaps, se = by_share["gap"].to_numpy(), by_share["se"].to_numpy()
        falls, fall_se = gaps[:-1] - gaps[1:], np.sqrt(se[:-1] ** 2 + se[1:] ** 2)
        worst = int(np.argmax(falls))
        rho = stats.spearmanr(by_share.index.to_numpy(), gaps).statistic if len(by_share) >= 3 else float("nan")
        rows.append({"slice": name, "shares": " / ".join(f"{s:g}" for s in by_share.index),
                     "gap": " / ".join(f"{g:+.3f}" for g in gaps),
                     "improvement": " / ".join(f"{v:+.3f}" for v in by_share["improvement"]),
                     "monotone": bool(np.all(np.diff(gaps) >= 0)), "spearman_rho": float(rho),
                     "largest_fall": float(max(falls[worst], 0.0)), "fall_se": float(fall_se[worst]),
                     "monotone_within_noise": bool(np.all(falls <= DIAL_FALL_SES * fall_se))
                     if not np.isnan(fall_se).any() else None})
    return rows


def controls_against_law(law: pd.DataFrame, level: float) -> list[dict]:
    """Each control's mean gap and improvement beside the law fitted on the slice's other contexts
    (the controls left out): the prediction at the control's gap, its interval, and whether the
    measured improvement lies inside it."""
    rows = []
    for name, part in law.groupby("slice"):
        controls = part[part["context"].isin(CONTROLS)]
        if controls.empty:
            continue
        others = points_from_runs(part[~part["context"].isin(CONTROLS)])
        try:
            fit = fit_law(others, level=level)
        except LawError as exc:
            rows += [{"slice": name, "control": c, "error": str(exc)} for c in sorted(controls["context"].unique())]
            continue
        none = part.loc[part["context"] == "none", "improvement"]
        for control, g in controls.groupby("context"):
            gap, imp = float(g["gap"].mean()), float(g["improvement"].mean())
            mean, lo, hi = (float(a[0]) for a in fit.predict_gaps([gap], level=level))
            rows.append({"slice": name, "control": control, "seeds": len(g), "gap": gap, "improvement": imp,
                         "none_improvement": float(none.mean()) if len(none) else float("nan"),
                         "predicted": mean, "predicted_lo": lo, "predicted_hi": hi,
                         "inside": bool(lo <= imp <= hi), "residual": imp - mean})
    return rows
