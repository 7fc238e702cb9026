"""benchmarks/token_clip: an unclipped loss returns a perturbed student to its teacher; a clipped one does not."""

import pandas as pd
import pytest

from benchmarks.token_clip import descend, late_loss


@pytest.mark.parametrize("support", ["topk", "full"])
def test_without_a_clip_the_student_returns_to_the_teacher(support):
    row = descend("reverse", support, "none", scale=2.0, noise=0.3, steps=150)
    assert row["kl_end"] < row["kl_start"] / 4
    assert row["entropy_student"] == pytest.approx(row["entropy_teacher"], abs=0.02)


@pytest.mark.parametrize("form", ["both", "upper"])
def test_a_per_entry_clip_pulls_a_reverse_kl_student_away_and_sharpens_it(form):
    row = descend("reverse", "topk", form, scale=2.0, noise=0.3, steps=150)
    assert row["loss_end"] < 0  # impossible for the divergence itself
    assert row["kl_end"] > 2 * row["kl_start"]
    assert row["entropy_student"] < row["entropy_teacher"] - 0.1


def test_late_loss_is_the_mean_over_each_runs_second_half():
    steps = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 2, "step": [0, 1, 2, 3, 0, 1],
                          "train_loss": [9.0, 9.0, -1.0, -3.0, 1.0, 2.0]})
    late = late_loss(steps)
    assert late.loc["a", "loss_late"] == pytest.approx(-2.0) and bool(late.loc["a", "negative"])
    assert late.loc["b", "loss_late"] == pytest.approx(2.0) and not bool(late.loc["b", "negative"])


def test_capping_each_positions_sum_keeps_the_teacher_the_minimum():
    row = descend("reverse", "topk", "position", scale=2.0, noise=0.3, steps=150)
    assert row["loss_end"] >= 0
    assert row["kl_end"] < row["kl_start"]
