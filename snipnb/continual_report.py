"""The tables and figure chapters 03 and 04 share, from a sweep's results of `sequence.run_sequence`.

`results` has one row per run: `benchmark` (the chapter's name for it), `strategy`, `seed` and the
metrics in percent. `titles` maps a benchmark's name to the title a reader sees, in display order.

A chapter declares its primary contrasts (`declared_contrasts`) before any run and checks them
against its grid (`named_grid`); everything else here (`paired_comparisons`, `comparison_table`) is
exploratory: per-comparison 95% intervals, not corrected for multiplicity. `budget_check` asks whether
the chapter's epochs per task suffice: the same strategies trained longer, read on validation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from . import plots, stats
from .contrasts import Contrast
from .continual import PACKNET_STRATEGIES
from .sequence import ContinualRun, mean_matrix

METRICS = {"avg_acc": "average accuracy", "forgetting": "forgetting", "bwt": "BWT", "fwt": "FWT"}


def summary(results: pd.DataFrame, titles: dict[str, str], **first_columns) -> pd.DataFrame:
    """Mean ± std over seeds of every metric in `METRICS`, one row per (benchmark title, strategy).

    A metric a strategy does not have (joint training forgets nothing) is missing, not "nan".
    `first_columns`: column name -> function (benchmark, strategy) -> value, put first, for what
    differs between rows (the λ or the fraction kept each strategy ran with).
    """
    table = pd.concat([stats.summarize(results, ["benchmark", "strategy"], metric).set_index(["benchmark", "strategy"])
                       ["mean ± std"].rename(label) for metric, label in METRICS.items()], axis=1)
    table = table.mask(table.isin(["nan", "nan ± nan"]))
    for position, (column, value) in enumerate(first_columns.items()):
        table.insert(position, column, [value(b, s) for b, s in table.index])
    return _titled(table, titles)


def named(frame: pd.DataFrame, names: dict[tuple[str, str], str]) -> pd.DataFrame:
    """`frame` (results, or configs of runs) with its `benchmark` column set to the chapter's name of each
    row's (benchmark, scenario), e.g. ("split", "class") -> "split_class"."""
    unknown = sorted(set(zip(frame["benchmark"], frame["scenario"])) - set(names), key=str)
    if unknown:
        raise ValueError(f"no name for (benchmark, scenario) {unknown}: names has {sorted(names)}")
    return frame.assign(benchmark=[names[key] for key in zip(frame["benchmark"], frame["scenario"])])


def named_grid(runs, names: dict[tuple[str, str], str]) -> pd.DataFrame:
    """The configs `runs` (ContinualRun) as a table, one row each, benchmarks `named` as results will be:
    what `contrasts.check_contrasts` checks declared contrasts against before any run."""
    return named(pd.DataFrame([dataclasses.asdict(run) for run in runs]), names)


def declared_contrasts(pairs: list[tuple[str, str]], titles: dict[str, str], strategy_names: dict[str, str],
                       metric: str = "avg_acc") -> list[Contrast]:
    """a − b on `metric` for every benchmark in `titles` and (a, b) in `pairs` (strategies), paired on
    the seed: one `Contrast` each, named "title: A − B" with the strategies' names for a reader."""
    return [Contrast(f"{title}: {strategy_names[a]} − {strategy_names[b]}", metric, variant={"strategy": a},
                     baseline={"strategy": b}, within={"benchmark": benchmark})
            for benchmark, title in titles.items() for a, b in pairs]


def decisions(tested: pd.DataFrame, contrasts: list[Contrast]) -> dict[tuple[str, str, str], str]:
    """(benchmark, a, b) -> the decision of the tested contrast a − b on that benchmark
    (`contrasts.evaluate_contrasts` of `contrasts`, in their order)."""
    if list(tested["contrast"]) != [c.name for c in contrasts]:
        raise ValueError("tested must be evaluate_contrasts of these contrasts, in their order")
    return {(c.within["benchmark"], c.variant["strategy"], c.baseline["strategy"]): d
            for c, d in zip(contrasts, tested["decision"])}


def shown_on(decided: dict, titles: dict[str, str], a: str, against: list[str]) -> list[str]:
    """The titles of the benchmarks on which a − b was tested "higher" for every b in `against` (`decisions`)."""
    return [title for name, title in titles.items() if all(decided[name, a, b] == "higher" for b in against)]


def answer_box(tested: pd.DataFrame, claim: str, setup: str, unit: str = "points") -> str:
    """A chapter's answer for the top of its results, as a Markdown block quote: `claim` (the verdict,
    worded by the chapter from the tested contrasts), one line per declared contrast (its difference,
    family-adjusted interval and decision, from `contrasts.evaluate_contrasts`), and `setup` (how far
    this run is from the published one). Every line is its own paragraph in the quote, so a benchmark's
    title never folds into the line above it."""
    def line(row):
        if row["n"] < 2:
            return f"{row['contrast']}: {row['diff']:+.2f} {unit} on {int(row['n'])} seed, too few for a test"
        return (f"{row['contrast']}: {row['diff']:+.2f} {unit} (family-adjusted "
                f"{100 * row['adjusted_level']:.4g}% CI {row['adjusted_low']:+.2f} to {row['adjusted_high']:+.2f}, "
                f"{int(row['n'])} seeds): {row['decision']}")

    family = f"{len(tested)} declared contrast{'s' * (len(tested) > 1)}, Holm-adjusted together"
    paragraphs = [f"**Answer.** {claim}", f"*Effect* ({family}):", *(f"- {line(row)}" for _, row in tested.iterrows()),
                  f"*Setup.* {setup}"]
    return "\n>\n".join(f"> {p}" for p in paragraphs)


def paired_comparisons(results: pd.DataFrame, pairs: list[tuple[str, str]],
                       metrics=("avg_acc", "forgetting"), within: tuple[str, ...] = ()) -> pd.DataFrame:
    """a − b on the same seeds, per benchmark, for every (a, b) in `pairs` and metric: one
    `stats.paired_difference` row each, with `comparison` ("a − b") and `metric` columns.

    `within`: further columns kept apart, each value with its own pairs (e.g. the fraction kept, to
    compare a and b at the same fraction)."""
    parts = []
    for a, b in pairs:
        rows = results[results.strategy.isin([a, b])]
        for metric in metrics:
            p = stats.paired_difference(rows, metric, baseline={"strategy": b}, variant=["strategy"],
                                        pair_on=["seed"], group=["benchmark", *within])
            parts.append(p.assign(comparison=f"{a} − {b}", metric=metric))
    return pd.concat(parts, ignore_index=True)


def comparison(comparisons: pd.DataFrame, benchmark: str, a: str, b: str, metric: str = "avg_acc"):
    """The `paired_comparisons` row of a − b on `benchmark` for `metric`, or None if it was not run."""
    p = comparisons[(comparisons.benchmark == benchmark) & (comparisons.comparison == f"{a} − {b}")
                    & (comparisons.metric == metric)]
    return p.iloc[0] if len(p) else None


def beats(comparisons: pd.DataFrame, benchmark: str, a: str, b: str) -> bool:
    """Whether a is more accurate than b on average accuracy, with the seeds agreeing (CI above 0)."""
    row = comparison(comparisons, benchmark, a, b)
    return row is not None and row.n > 1 and row.ci_low > 0


def comparison_table(comparisons: pd.DataFrame, pairs: list[tuple[str, str]], titles: dict[str, str]) -> pd.DataFrame:
    """One row per (benchmark title, "a − b"): each metric's difference with its 95% CI (uncorrected),
    in the order of `titles` and `pairs`, and the smallest difference in average accuracy the run could
    detect (80% power). Columns say what they hold, e.g. "average accuracy: difference [95% CI]"."""
    cells = comparisons.assign(cell=comparisons.apply(_cell, axis=1))
    wide = cells.pivot(index=["benchmark", "comparison"], columns="metric", values="cell")
    detectable = cells[cells.metric == "avg_acc"].set_index(["benchmark", "comparison"]).detectable
    wide = wide.rename(columns={m: f"{label}: difference [95% CI]" for m, label in METRICS.items()})
    wide["average accuracy: detectable difference"] = detectable  # at 80% power
    wide.columns.name = None
    wide = wide.reindex([(b, f"{x} − {y}") for b in titles for x, y in pairs])
    return _titled(wide, titles)


def _cell(row) -> str:
    """A paired difference as "diff [95% CI]", or "diff (n=1)" where one pair allows no interval."""
    if row.n < 2:
        return f"{row['diff']:+.2f} (n=1)"
    return f"{row['diff']:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def by_setting_table(comparisons: pd.DataFrame, pairs: list[tuple[str, str]], titles: dict[str, str], column: str,
                     values: list, metric: str = "avg_acc") -> pd.DataFrame:
    """One row per (benchmark title, "a − b"), one column per value of `column` (in the order of `values`):
    the difference in `metric` with its 95% CI (uncorrected), from `paired_comparisons(..., within=(column,))`.
    A pair not run at a value is missing there."""
    cells = comparisons[comparisons.metric == metric]
    cells = cells.assign(cell=cells.apply(_cell, axis=1))
    wide = cells.pivot(index=["benchmark", "comparison"], columns=column, values="cell")
    wide = wide.reindex(index=[(b, f"{x} − {y}") for b in titles for x, y in pairs], columns=values)
    wide.columns.name = column
    return _titled(wide, titles)


def first_task_share(keep: float | None, n_tasks: int) -> float:
    """The share of the network PackNet's first task keeps: `keep`, or 1/`n_tasks` with equal shares (None,
    or NaN as records store it). The one scale on which a fixed fraction and "equal" can be ordered."""
    return 1 / n_tasks if keep is None or keep != keep else float(keep)


def inside_the_grid(chosen: float, grid: list[float]) -> str:
    """Whether a search's choice `chosen` lies strictly inside its `grid` of candidates (one scale): "yes", or
    "no: its lowest" / "no: its highest" where the search chose an end, and the best may lie beyond it ("no: its
    only share" where every candidate is at one point of the scale)."""
    if chosen not in grid:
        raise ValueError(f"the choice {chosen} is not among the grid's candidates {sorted(set(grid))}")
    if min(grid) == max(grid):
        return "no: its only share"
    if chosen == min(grid):
        return "no: its lowest"
    if chosen == max(grid):
        return "no: its highest"
    return "yes"


def seen_accuracy_figure(results: pd.DataFrame, titles: dict[str, str], strategies: list[str]):
    """One panel per benchmark: the average accuracy on the tasks seen so far of every strategy but
    joint training (seed means, `plots.seen_accuracy_curves`), joint training's final accuracy dotted."""
    fig, axes = plots.panels(len(titles), height=3.2)
    for ax, (name, title) in zip(axes, titles.items()):
        part = results[results.benchmark == name]
        plots.seen_accuracy_curves({s: mean_matrix(part, s) for s in strategies if s != "joint"}, ax=ax,
                                   title=f"{title}: tasks seen so far")
        joint = part[part.strategy == "joint"].avg_acc
        if len(joint):
            ax.axhline(joint.mean(), color="k", lw=1, ls=":", label="joint")
    plots.shared_legend(fig, axes)
    return fig


BUDGET_READINGS = {"avg_acc": "final average accuracy",
                   "learned_acc": "accuracy on each task right after learning it"}


def budget_runs(reported: list[ContinualRun], seeds, budgets) -> list[ContinualRun]:
    """The budget check's runs: each of `reported` whose seed is in `seeds`, read on validation (no
    probe), at each multiple in `budgets` of its epochs per task. PackNet's retraining epochs are scaled
    alike, so that a longer budget keeps its split between training and retraining."""
    seeds = set(seeds)
    return [dataclasses.replace(run, split="val", probe_examples=0, epochs=run.epochs * factor,
                                **({"retrain_epochs": run.retrain_epochs * factor}
                                   if run.strategy in PACKNET_STRATEGIES else {}))
            for run in reported if run.seed in seeds for factor in budgets]


def budget_records(sweep, reported: list[ContinualRun], seeds, budgets, names: dict[tuple[str, str], str]):
    """The budget check's records: `budget_runs` of `reported` through the chapter's `sweep` (runs ->
    results table), benchmarks `named` by `names`, each with its `budget`: its epochs per task over
    its reported run's, the multiple `budget_check` pairs on."""
    chapter_epochs = {(run.benchmark, run.scenario): run.epochs for run in reported}
    found = sweep(budget_runs(reported, seeds, budgets))
    found["budget"] = [e / chapter_epochs[key] for e, key in zip(found.epochs, zip(found.benchmark, found.scenario))]
    return named(found, names)


def learned_accuracy(R) -> float:
    """The mean of R's diagonal, each task's accuracy right after it was trained: what more epochs per
    task can raise even where forgetting takes it back. Joint training's R is one row, every task learned
    at once: its mean."""
    R = np.asarray(R, dtype=float)
    return float(R.mean() if len(R) == 1 else np.diagonal(R).mean())


def budget_check(runs: pd.DataFrame, baseline: float = 1) -> pd.DataFrame:
    """What a longer budget changes, per (benchmark, strategy): `runs` has a `budget` column (the epochs
    per task as a multiple of the chapter's; `baseline` is the chapter's own), `seed`, `avg_acc` and
    `R`, read on validation. For each reading in `BUDGET_READINGS` (the final average accuracy, and
    the diagonal of R) and each longer budget: the means at both budgets over the seeds both ran, and
    the paired difference longer − baseline (`stats.paired_difference`'s columns). A repeated
    (benchmark, strategy, budget, seed) is refused: it would be paired twice."""
    keys = ["benchmark", "strategy", "budget", "seed"]
    missing = [c for c in [*keys, "avg_acc", "R"] if c not in runs.columns]
    if missing:
        raise ValueError(f"budget_check: no column {missing}; the runs have {list(runs.columns)}")
    repeated = runs[runs.duplicated(keys, keep=False)]
    if len(repeated):
        raise ValueError(f"budget_check: {len(repeated)} runs repeat a (benchmark, strategy, budget, seed): "
                         f"{sorted(set(map(tuple, repeated[keys].values.tolist())))[:5]}")
    if not (runs.budget == baseline).any():
        raise ValueError(f"budget_check: no run at the baseline budget {baseline}; budgets run: "
                         f"{sorted(set(runs.budget))}")
    runs = runs.assign(learned_acc=runs.R.map(learned_accuracy))
    parts = []
    for metric in BUDGET_READINGS:
        diff = stats.paired_difference(runs, metric, baseline={"budget": baseline}, variant=["budget"],
                                       pair_on=["seed"], group=["benchmark", "strategy"])
        for i, row in diff.iterrows():  # the means over the seeds that both budgets ran, as the difference is
            same = runs[(runs.benchmark == row.benchmark) & (runs.strategy == row.strategy)]
            both = set(same[same.budget == baseline].seed) & set(same[same.budget == row.budget].seed)
            means = same[same.seed.isin(both)].groupby("budget")[metric].mean()
            diff.loc[i, ["at_baseline", "at_budget"]] = means[baseline], means[row.budget]
        parts.append(diff.assign(metric=metric))
    columns = ["benchmark", "strategy", "metric", "budget", "at_baseline", "at_budget", "diff", "ci_low", "ci_high",
               "n", "detectable"]
    return pd.concat(parts, ignore_index=True)[columns]


def budget_verdict(row, unit: str = "points") -> str:
    """One phrase for a `budget_check` row: "rose" or "fell" (by how much, with its 95% CI) where the
    seeds agree, else "no rise detected at this power" with the change the check would detect."""
    if row["n"] < 2:
        return f"{row['diff']:+.2f} {unit} on one seed (no interval)"
    interval = f"(95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}, {int(row['n'])} seeds)"
    if row["ci_low"] > 0:
        return f"rose {row['diff']:+.2f} {unit} {interval}"
    if row["ci_high"] < 0:
        return f"fell {row['diff']:+.2f} {unit} {interval}"
    return (f"no rise detected at this power: {row['diff']:+.2f} {unit} {interval}; the check would detect about "
            f"±{row['detectable']:.2f}")


def budget_table(checked: pd.DataFrame, titles: dict[str, str], strategy_names: dict[str, str]) -> pd.DataFrame:
    """`budget_check` for a reader: one row per (benchmark title, strategy, reading, longer budget), the
    means at both budgets and the `budget_verdict`, in the order of `titles` and `strategy_names`."""
    order = {(b, s): i for i, (b, s) in enumerate((b, s) for b in titles for s in strategy_names)}
    rows = checked.assign(_order=[order.get((b, s), len(order)) for b, s in zip(checked.benchmark, checked.strategy)])
    rows = rows.sort_values(["_order", "metric", "budget"], kind="stable")
    shown = pd.DataFrame({"benchmark": rows.benchmark,
                          "strategy": rows.strategy.map(lambda s: strategy_names.get(s, s)),
                          "reading": rows.metric.map(BUDGET_READINGS), "budget": rows.budget.map(lambda f: f"{f:g}×"),
                          "at the chapter's epochs (%)": rows.at_baseline.round(2),
                          "at the longer budget (%)": rows.at_budget.round(2),
                          "longer − chapter's": rows.apply(budget_verdict, axis=1)})
    return _titled(shown.set_index(["benchmark", "strategy", "reading", "budget"]), titles)


def budget_changes(checked: pd.DataFrame, titles: dict[str, str], strategy_names: dict[str, str]) -> dict[str, list]:
    """Where the longer budget moved a reading with the seeds agreeing: {"rose": [...], "fell": [...]},
    each entry "title: strategy's reading", in the order of `budget_table`."""
    changes = {"rose": [], "fell": []}
    for b, title in titles.items():
        for s, name in strategy_names.items():
            for _, row in checked[(checked.benchmark == b) & (checked.strategy == s)].iterrows():
                if row.n >= 2 and (row.ci_low > 0 or row.ci_high < 0):
                    changes["rose" if row.ci_low > 0 else "fell"].append(
                        f"{title}: {name}'s {BUDGET_READINGS[row.metric]} at {row.budget:g}×")
    return changes


def budget_note(changes: dict[str, list], factor: int, seeds_said: str) -> str:
    """One sentence on what `budget_changes` found at `factor`× the epochs per task, for a chapter's
    answer and limits: which readings still rose (compared before they flattened), which fell."""
    said = f"At {factor}× the epochs per task (validation, {seeds_said}), "
    if changes["rose"]:
        said += (f"these still rose: {'; '.join(changes['rose'])}; the chapter compares them before their accuracy "
                 f"flattened")
    else:
        said += "no strategy's accuracy rose detectably; a smaller rise may go unseen"
    if changes["fell"]:
        said += f"; these fell: {'; '.join(changes['fell'])}"
    return said + ". See 'Is the budget long enough?'."


def contrasts_at_budgets(runs: pd.DataFrame, pairs: list[tuple[str, str]], titles: dict[str, str],
                         budgets: list) -> pd.DataFrame:
    """Each pair (a, b) of strategies at every budget of the budget check's `runs` (column `budget`),
    a − b in average accuracy paired on seeds within the budget: one row per (benchmark title, pair),
    one column per budget ("2× epochs per task"), difference [95% CI], uncorrected."""
    compared = paired_comparisons(runs, pairs, metrics=("avg_acc",), within=("budget",))
    shown = by_setting_table(compared, pairs, titles, "budget", list(budgets))
    shown.columns = [f"{factor:g}× epochs per task" for factor in budgets]
    return shown


def budget_section(runs: pd.DataFrame, checked: pd.DataFrame, changes: dict[str, list], pairs: list[tuple[str, str]],
                   titles: dict[str, str], strategy_names: dict[str, str], budgets: list, seeds_said: str) -> list:
    """What a chapter shows under "Is the budget long enough?", in order, for `display`: the
    `budget_table` of `checked`, the readings that rose and fell (`changes`), and `pairs` at each
    budget of the check's `runs` (`contrasts_at_budgets`). `seeds_said` names the check's seeds."""
    from IPython.display import Markdown

    from .report import table
    return [table(budget_table(checked, titles, strategy_names),
                  caption=f"Validation accuracy (%) at the chapter's epochs per task and at {max(budgets):g}× them, "
                          f"means over {seeds_said} (exploratory, uncorrected)"),
            Markdown("\n".join(f"- {how.capitalize()} at the longer budget: {'; '.join(where) or 'none'}."
                               for how, where in changes.items())),
            table(contrasts_at_budgets(runs, pairs, titles, budgets),
                  caption=f"Exploratory: the declared pairs at each budget, validation average accuracy, difference "
                          f"[95% CI] over {seeds_said}")]


def _titled(table: pd.DataFrame, titles: dict[str, str]) -> pd.DataFrame:
    """`table` with its first index level, the benchmark's name, replaced by its title."""
    names = table.index.get_level_values(0)
    unknown = sorted(set(names) - set(titles))
    if unknown:
        raise ValueError(f"no title for benchmark(s) {unknown}: titles has {sorted(titles)}")
    table = table.copy()
    table.index = table.index.set_levels([titles.get(b, b) for b in table.index.levels[0]], level=0)
    return table
