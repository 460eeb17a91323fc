"""The tables and figure chapters 03 and 04 build from a continual sweep's results."""

import dataclasses
import math
import pathlib

import matplotlib
import numpy as np
import pandas as pd
import pytest

from snipnb import continual_report as cr
from snipnb.contrasts import check_contrasts, evaluate_contrasts
from snipnb.notebook import assigned
from snipnb.sequence import ContinualRun

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
    accuracy, forgetting = "average accuracy: difference [95% CI]", "forgetting: difference [95% CI]"
    assert list(wide.columns) == [accuracy, forgetting, "average accuracy: detectable difference"]
    assert wide.loc[("Permuted", "ewc − finetune"), accuracy] == "+10.00 [+10.00, +10.00]"
    assert wide.loc[("Permuted", "ewc − finetune"), forgetting] == "-6.00 [-6.00, -6.00]"
    one_seed = cr.comparison_table(cr.paired_comparisons(results(seeds=1), pairs), pairs, titles)
    assert one_seed.loc[("Permuted", "ewc − finetune"), accuracy] == "+10.00 (n=1)"


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


NAMES = {("split", "task"): "split_task", ("permuted", "domain"): "permuted"}
STRATEGY_NAMES = {"ewc": "EWC", "ewc_random": "random EWC", "finetune": "fine-tuning"}


def grid(strategies=("finetune", "ewc", "ewc_random"), seeds=3, lam=0.0):
    return [ContinualRun(strategy=s, seed=seed, ewc_lambda=lam, benchmark=b, scenario=scenario)
            for (b, scenario) in NAMES for s in strategies for seed in range(seeds)]


def test_declared_contrasts_are_checked_on_the_named_grid_and_tested_on_the_results():
    declared = cr.declared_contrasts([("ewc", "finetune"), ("ewc_random", "finetune")], TITLES, STRATEGY_NAMES)
    assert [c.name for c in declared] == ["Split, task-IL: EWC − fine-tuning", "Split, task-IL: random EWC − fine-tuning",
                                          "Permuted: EWC − fine-tuning", "Permuted: random EWC − fine-tuning"]
    named = cr.named_grid(grid(), NAMES)
    assert set(named.benchmark) == {"split_task", "permuted"}
    check_contrasts(declared, named)  # every strategy and benchmark is in the grid
    with pytest.raises(ValueError, match="strategy='ewc_random'"):  # the grid lacks a declared strategy: refused, named
        check_contrasts(declared, cr.named_grid(grid(strategies=("finetune", "ewc")), NAMES))
    tested = evaluate_contrasts(results().replace({"strategy": {"noisy": "ewc_random"}}), declared)
    decided = cr.decisions(tested, declared)
    assert decided[("permuted", "ewc", "finetune")] == "higher"
    assert decided[("split_task", "ewc_random", "finetune")] == "not detected at this power"
    with pytest.raises(ValueError, match="order"):
        cr.decisions(tested.iloc[::-1], declared)


def test_chapter_03_declares_snip_ewc_against_ewc_and_against_both_controls():
    # SNIP's importance carries information only if SNIP-EWC beats both the random and the uniform
    # importance; the uniform one was exploratory until 2026-12-06, and must stay in the tested family.
    source = (pathlib.Path(__file__).parent.parent / "notebooks" / "03_snip_ewc.py").read_text()
    declared = assigned(source)["DECLARED"]
    assert sorted(declared) == [("snip_ewc", "ewc"), ("snip_ewc", "ewc_random"), ("snip_ewc", "ewc_uniform")]


def test_the_grid_with_a_placeholder_lambda_checks_the_same_rows_as_the_chosen_one():
    # The reported runs' λ comes from the validation search; the contrasts never select on it.
    declared = cr.declared_contrasts([("ewc", "finetune")], TITLES, STRATEGY_NAMES)
    for lam in (0.0, 123.0):
        check_contrasts(declared, cr.named_grid(grid(lam=lam), NAMES))


def test_naming_a_benchmark_the_chapter_does_not_know_fails_with_its_key():
    frame = pd.DataFrame(dict(benchmark=["split", "split"], scenario=["task", "class"]))
    with pytest.raises(ValueError, match="'class'"):
        cr.named(frame, NAMES)


def test_the_answer_box_quotes_every_tested_contrast_with_its_decision_and_keeps_titles_apart():
    declared = cr.declared_contrasts([("ewc", "finetune"), ("ewc_random", "finetune")], TITLES, STRATEGY_NAMES)
    tested = evaluate_contrasts(results().replace({"strategy": {"noisy": "ewc_random"}}), declared)
    decided = cr.decisions(tested, declared)
    assert cr.shown_on(decided, TITLES, "ewc", ["finetune"]) == ["Split, task-IL", "Permuted"]
    assert cr.shown_on(decided, TITLES, "ewc_random", ["finetune"]) == []
    box = cr.answer_box(tested, "**Split, class-IL.** a claim", "a setup")
    lines = box.split("\n")
    assert all(line.startswith(">") for line in lines)  # one block quote
    assert lines[0] == "> **Answer.** **Split, class-IL.** a claim" and lines[-1] == "> *Setup.* a setup"
    assert all(lines[i] == ">" for i in range(1, len(lines), 2))  # a blank quoted line between paragraphs
    permuted = next(line for line in lines if line.startswith("> - Permuted: EWC − fine-tuning"))
    assert permuted.endswith(": higher") and "+10.00 points" in permuted and "3 seeds" in permuted
    assert "family-adjusted 98.75% CI" in permuted  # 4 contrasts: Bonferroni's 1 − 0.05/4
    assert sum(line.startswith("> - ") for line in lines) == len(declared)


def test_pairs_at_each_fraction_are_paired_within_the_fraction_and_shown_one_column_each():
    # At fraction 0.25 'ewc' is 10 points above 'finetune' on every seed; at 0.5 it is 2 below. Pairing across
    # fractions (or pooling them) would mix the two.
    frame = pd.concat([results().assign(kept="0.25"),
                       results().assign(kept="0.5", avg_acc=lambda f: f.avg_acc - 12 * (f.strategy == "ewc"))])
    pairs = [("ewc", "finetune")]
    comparisons = cr.paired_comparisons(frame, pairs, metrics=("avg_acc",), within=("kept",))
    wide = cr.by_setting_table(comparisons, pairs, TITLES, "kept", ["equal", "0.25", "0.5"])
    assert list(wide.columns) == ["equal", "0.25", "0.5"]
    assert list(wide.index) == [("Split, task-IL", "ewc − finetune"), ("Permuted", "ewc − finetune")]
    row = wide.loc[("Permuted", "ewc − finetune")]
    assert row["0.25"] == "+10.00 [+10.00, +10.00]" and row["0.5"] == "-2.00 [-2.00, -2.00]"
    assert pd.isna(row["equal"])  # not run at that fraction: missing, not invented


def test_the_first_tasks_share_puts_equal_shares_on_the_fractions_scale():
    assert cr.first_task_share(None, 5) == pytest.approx(0.2)
    assert cr.first_task_share(math.nan, 10) == pytest.approx(0.1)  # how records store None
    assert cr.first_task_share(0.25, 5) == 0.25


@pytest.mark.parametrize("keeps, n_tasks, chosen, where", [
    ([None, 0.25, 0.5], 5, 0.25, "yes"),
    ([None, 0.25, 0.5], 5, None, "no: its lowest"),  # equal: 1/5 of the network, below 0.25
    ([None, 0.25, 0.5], 5, 0.5, "no: its highest"),
    ([None, 0.1, 0.5], 5, None, "yes"),  # equal's 0.2 lies between 0.1 and 0.5: not an end of the grid
    ([None, 0.5], 2, None, "no: its only share"),  # two candidates at one share: nothing lies inside
    ([None, 0.25, 0.5], 2, None, "no: its highest"),  # equal is 0.5 here, tied with the highest fixed fraction
])
def test_a_choice_is_inside_the_grid_by_the_first_tasks_share(keeps, n_tasks, chosen, where):
    grid = [cr.first_task_share(k, n_tasks) for k in keeps]
    assert cr.inside_the_grid(cr.first_task_share(chosen, n_tasks), grid) == where


def test_a_choice_outside_the_grids_candidates_is_refused():
    with pytest.raises(ValueError, match="0.3"):
        cr.inside_the_grid(0.3, [0.2, 0.25, 0.5])


def budget_runs():
    """'ewc' gains 2 points of final accuracy at 2× on every seed (noisily) and loses 1.5 on the diagonal;
    'finetune' is unchanged. Seed 3 ran only at 1×, far off, so it must not enter any mean or pair."""
    rows = []
    for seed, noise in enumerate((0.1, -0.2, 0.3)):
        for budget in (1, 2):
            longer = budget == 2
            rows.append(dict(benchmark="split_task", strategy="ewc", budget=budget, seed=seed,
                             avg_acc=80 + seed + 2 * longer + noise * longer,
                             R=[[90 - 1.5 * longer + noise * longer, 0.0], [85.0, 90 - 1.5 * longer]]))
            rows.append(dict(benchmark="split_task", strategy="finetune", budget=budget, seed=seed,
                             avg_acc=60 + seed + noise * longer, R=[[70.0, 0.0], [40.0, 70.0]]))
    rows.append(dict(benchmark="split_task", strategy="ewc", budget=1, seed=3, avg_acc=0.0, R=[[0.0, 0.0], [0.0, 0.0]]))
    return pd.DataFrame(rows)


def test_learned_accuracy_is_the_diagonal_and_joint_trainings_single_row():
    assert cr.learned_accuracy([[90, 10], [50, 80]]) == 85
    assert cr.learned_accuracy([[90, 70, 80]]) == 80


def test_the_budget_check_pairs_seeds_both_budgets_ran_and_reads_final_and_diagonal_accuracy():
    checked = cr.budget_check(budget_runs()).set_index(["strategy", "metric"])
    final = checked.loc["ewc", "avg_acc"]
    assert final.budget == 2 and final.n == 3
    assert final["diff"] == pytest.approx(2 + (0.1 - 0.2 + 0.3) / 3)
    assert final.at_baseline == pytest.approx(81)  # seeds 0-2 only: seed 3 ran at 1× alone
    assert final.ci_low > 0
    diagonal = checked.loc["ewc", "learned_acc"]
    assert diagonal["diff"] == pytest.approx(-1.5 + (0.1 - 0.2 + 0.3) / 6)
    assert diagonal.ci_high < 0
    assert checked.loc["finetune", "learned_acc"]["diff"] == 0


def test_the_budget_check_refuses_a_repeated_run_and_a_check_without_the_chapters_budget():
    runs = budget_runs()
    with pytest.raises(ValueError, match="repeat"):
        cr.budget_check(pd.concat([runs, runs.iloc[:1]]))
    with pytest.raises(ValueError, match="no run at the baseline budget 1"):
        cr.budget_check(runs[runs.budget == 2])


def test_budget_verdicts_say_rose_fell_or_what_the_check_would_detect():
    checked = cr.budget_check(budget_runs()).set_index(["strategy", "metric"])
    assert cr.budget_verdict(checked.loc["ewc", "avg_acc"]).startswith("rose +2.07 points")
    assert cr.budget_verdict(checked.loc["ewc", "learned_acc"]).startswith("fell -1.47 points")
    flat = cr.budget_verdict(checked.loc["finetune", "avg_acc"])
    assert flat.startswith("no rise detected at this power") and "would detect about ±" in flat
    names = {"ewc": "EWC", "finetune": "fine-tuning"}
    changes = cr.budget_changes(cr.budget_check(budget_runs()), {"split_task": "Split, task-IL"}, names)
    assert changes == {"rose": ["Split, task-IL: EWC's final average accuracy at 2×"],
                       "fell": ["Split, task-IL: EWC's accuracy on each task right after learning it at 2×"]}


def test_the_budget_table_follows_the_chapters_order_of_strategies():
    names = {"finetune": "fine-tuning", "ewc": "EWC"}
    shown = cr.budget_table(cr.budget_check(budget_runs()), {"split_task": "Split, task-IL"}, names)
    assert list(shown.index.get_level_values("strategy")) == ["fine-tuning"] * 2 + ["EWC"] * 2
    assert set(shown.index.get_level_values("benchmark")) == {"Split, task-IL"}
    assert shown.index.get_level_values("budget")[0] == "2×"


def test_budget_runs_read_validation_on_the_given_seeds_and_scale_packnets_retraining_with_its_epochs():
    reported = [ContinualRun(strategy=s, seed=seed, epochs=4, retrain_epochs=1, model="lenet300_100",
                             dataset="synthetic", synthetic_shape=(1, 28))
                for s in ("ewc", "packnet") for seed in range(5)]
    runs = cr.budget_runs(reported, range(2), [1, 3])
    assert len(runs) == 2 * 2 * 2
    assert {r.seed for r in runs} == {0, 1}
    assert {r.split for r in runs} == {"val"} and {r.probe_examples for r in runs} == {0}
    longer = {r.strategy: r for r in runs if r.epochs == 12}
    assert longer["packnet"].retrain_epochs == 3  # its share of the budget kept
    assert longer["ewc"].retrain_epochs == 1  # not PackNet: the field is left as it was


def test_the_budget_note_names_what_rose_and_what_fell():
    said = cr.budget_note({"rose": ["A: x"], "fell": ["B: y"]}, 2, "seeds 0 to 2")
    assert said.startswith("At 2× the epochs per task (validation, seeds 0 to 2), these still rose: A: x;")
    assert "these fell: B: y" in said
    assert "no strategy's accuracy rose detectably" in cr.budget_note({"rose": [], "fell": []}, 2, "seed 0")


def test_contrasts_at_budgets_pair_within_each_budget():
    runs = budget_runs()
    shown = cr.contrasts_at_budgets(runs, [("ewc", "finetune")], {"split_task": "Split, task-IL"}, [1, 2])
    assert list(shown.columns) == ["1× epochs per task", "2× epochs per task"]
    assert shown.iloc[0, 0].startswith("+20.00 [+20.00, +20.00]")  # seeds 0-2 at 1×: seed 3 has no fine-tuning run
    assert shown.iloc[0, 1].startswith("+22.00 [+22.00, +22.00]")  # both gain the same noise at 2×


def test_the_budget_section_shows_the_check_what_moved_and_the_pairs_at_each_budget_in_order():
    runs = budget_runs()
    checked = cr.budget_check(runs)
    titles, names = {"split_task": "Split, task-IL"}, {"finetune": "fine-tuning", "ewc": "EWC"}
    check, moved, pairs = cr.budget_section(runs, checked, cr.budget_changes(checked, titles, names),
                                            [("ewc", "finetune")], titles, names, [1, 2], "seeds 0 to 2")
    assert "at 2× them, means over seeds 0 to 2" in check.caption
    assert moved.data.startswith("- Rose at the longer budget: Split, task-IL: EWC's final average accuracy")
    assert list(pairs.data.columns) == ["1× epochs per task", "2× epochs per task"]


def test_budget_records_sweep_the_check_name_benchmarks_and_give_each_run_its_multiple():
    reported = [ContinualRun(strategy="ewc", seed=seed, epochs=epochs, benchmark=benchmark, scenario="task",
                             model="lenet300_100", dataset="synthetic", synthetic_shape=(1, 28))
                for benchmark, epochs in (("split", 3), ("permuted", 1)) for seed in range(3)]
    swept = []

    def sweep(runs):
        swept.extend(runs)
        return pd.DataFrame([dataclasses.asdict(r) for r in runs])

    found = cr.budget_records(sweep, reported, range(2), [1, 2], {("split", "task"): "split_task",
                                                                 ("permuted", "task"): "permuted_task"})
    assert len(swept) == 2 * 2 * 2 and {r.split for r in swept} == {"val"}
    assert sorted(zip(found.benchmark, found.epochs, found.budget)) == sorted(
        [("split_task", 3, 1.0), ("split_task", 6, 2.0), ("permuted_task", 1, 1.0), ("permuted_task", 2, 2.0)] * 2)
