"""The tables and figure chapters 03 and 04 build from a continual sweep's results."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from snipnb import continual_report as cr

matplotlib.use("Agg")

TITLES = {"split_task": "Split, task-IL", "permuted": "Permuted"}


def results(seeds=3):
    """Two benchmarks; 'ewc' = 'finetune' + 10 points on every seed, 'noisy' = 'finetune' ± 1 point."""
    rows = []
    for bench, base in (("split_task", 50.0), ("permuted", 70.0)):
        for seed in range(seeds):
            acc = base + seed
            R = [[acc, 0.0], [acc - 5, acc]]
            rows.append(dict(benchmark=bench, strategy="finetune", seed=seed, avg_acc=acc, forgetting=8.0, bwt=-8.0,
                             fwt=1.0, R=R))
            rows.append(dict(benchmark=bench, strategy="ewc", seed=seed, avg_acc=acc + 10, forgetting=2.0, bwt=-2.0,
                             fwt=1.0, R=R))
            rows.append(dict(benchmark=bench, strategy="noisy", seed=seed, avg_acc=acc + (1 if seed % 2 else -1),
                             forgetting=8.0, bwt=-8.0, fwt=1.0, R=R))
            rows.append(dict(benchmark=bench, strategy="joint", seed=seed, avg_acc=acc + 20, forgetting=math.nan,
                             bwt=math.nan, fwt=math.nan, R=R))
    return pd.DataFrame(rows)


def test_the_summary_puts_given_columns_first_titles_benchmarks_and_leaves_what_a_strategy_lacks_missing():
    table = cr.summary(results(), TITLES, λ=lambda b, s: 1.0 if s == "ewc" else math.nan, epochs=lambda b, s: 3)
    assert list(table.columns) == ["λ", "epochs", *cr.METRICS.values()]
    assert set(table.index.get_level_values(0)) == set(TITLES.values())
    assert table.loc[("Split, task-IL", "ewc"), "average accuracy"] == "61.00 ± 1.00"
    assert table.loc[("Split, task-IL", "ewc"), "λ"] == 1.0
    assert pd.isna(table.loc[("Permuted", "joint"), "forgetting"])  # missing, not the string "nan"


def test_a_benchmark_without_a_title_is_named_in_the_error():
    with pytest.raises(ValueError, match="permuted"):
        cr.summary(results(), {"split_task": "Split"})


def test_paired_comparisons_pair_seeds_within_each_benchmark():
    comparisons = cr.paired_comparisons(results(), [("ewc", "finetune"), ("noisy", "finetune")])
    row = cr.comparison(comparisons, "permuted", "ewc", "finetune")
    assert row["diff"] == pytest.approx(10.0) and row.n == 3 and row.ci_low == pytest.approx(10.0)
    forgetting = cr.comparison(comparisons, "split_task", "ewc", "finetune", "forgetting")
    assert forgetting["diff"] == pytest.approx(-6.0)
    assert cr.beats(comparisons, "split_task", "ewc", "finetune")
    assert not cr.beats(comparisons, "split_task", "noisy", "finetune")  # its CI spans 0
    assert not cr.beats(comparisons, "split_task", "finetune", "ewc")  # not run: no row
    assert cr.comparison(comparisons, "split_task", "finetune", "ewc") is None


def test_the_comparison_table_follows_the_order_of_titles_and_pairs():
    pairs = [("noisy", "finetune"), ("ewc", "finetune")]
    titles = {"permuted": "Permuted", "split_task": "Split, task-IL"}
    wide = cr.comparison_table(cr.paired_comparisons(results(), pairs), pairs, titles)
    assert list(wide.index) == [("Permuted", "noisy − finetune"), ("Permuted", "ewc − finetune"),
                                ("Split, task-IL", "noisy − finetune"), ("Split, task-IL", "ewc − finetune")]
    assert wide.loc[("Permuted", "ewc − finetune"), "average accuracy"] == "+10.00 [+10.00, +10.00]"
    assert wide.loc[("Permuted", "ewc − finetune"), "forgetting"] == "-6.00 [-6.00, -6.00]"
    one_seed = cr.comparison_table(cr.paired_comparisons(results(seeds=1), pairs), pairs, titles)
    assert one_seed.loc[("Permuted", "ewc − finetune"), "average accuracy"] == "+10.00 (n=1)"


def test_the_figure_has_a_panel_per_benchmark_with_every_strategy_and_joint_dotted():
    fig = cr.seen_accuracy_figure(results(), TITLES, ["finetune", "ewc", "joint"])
    assert len(fig.axes) == 2
    ax = fig.axes[1]
    assert ax.get_title() == "Permuted: tasks seen so far"
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["finetune", "ewc", "joint"]
    # Seeds' accuracies 70, 71, 72: after task 1 the mean R[0, 0] is 71; after task 2, R[1] averages acc − 2.5.
    assert np.allclose(ax.lines[0].get_ydata(), [71.0, 68.5])
    assert ax.lines[2].get_ydata()[0] == pytest.approx(91.0)  # joint: its mean average accuracy
