"""The tables and figure chapters 03 and 04 share, from a sweep's results of `sequence.run_sequence`.

`results` has one row per run: `benchmark` (the chapter's name for it), `strategy`, `seed` and the
metrics in percent. `titles` maps a benchmark's name to the title a reader sees, in display order.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from . import plots, stats
from .sequence import mean_matrix

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


def paired_comparisons(results: pd.DataFrame, pairs: list[tuple[str, str]],
                       metrics=("avg_acc", "forgetting")) -> pd.DataFrame:
    """a − b on the same seeds, per benchmark, for every (a, b) in `pairs` and metric: one
    `stats.paired_difference` row each, with `comparison` ("a − b") and `metric` columns."""
    parts = []
    for a, b in pairs:
        rows = results[results.strategy.isin([a, b])]
        for metric in metrics:
            p = stats.paired_difference(rows, metric, baseline={"strategy": b}, variant=["strategy"],
                                        pair_on=["seed"], group=["benchmark"])
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
    """One row per (benchmark title, "a − b"): each metric's difference with its 95% CI, in the order of
    `titles` and `pairs`, and the smallest difference in average accuracy the run could detect."""
    def cell(row):
        if row.n < 2:
            return f"{row['diff']:+.2f} (n=1)"
        return f"{row['diff']:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"

    cells = comparisons.assign(cell=comparisons.apply(cell, axis=1))
    wide = cells.pivot(index=["benchmark", "comparison"], columns="metric", values="cell")
    wide["detectable (avg acc)"] = cells[cells.metric == "avg_acc"].set_index(["benchmark", "comparison"]).detectable
    wide = wide.rename(columns=METRICS)
    wide = wide.reindex([(b, f"{x} − {y}") for b in titles for x, y in pairs])
    return _titled(wide, titles)


def seen_accuracy_figure(results: pd.DataFrame, titles: dict[str, str], strategies: list[str]):
    """One panel per benchmark: the average accuracy on the tasks seen so far of every strategy but
    joint training (seed means, `plots.seen_accuracy_curves`), joint training's final accuracy dotted."""
    fig, axes = plt.subplots(1, len(titles), figsize=(5.2 * len(titles), 3.8), squeeze=False)
    for ax, (name, title) in zip(axes[0], titles.items()):
        part = results[results.benchmark == name]
        plots.seen_accuracy_curves({s: mean_matrix(part, s) for s in strategies if s != "joint"}, ax=ax,
                                   title=f"{title}: tasks seen so far")
        joint = part[part.strategy == "joint"].avg_acc
        if len(joint):
            ax.axhline(joint.mean(), color="k", lw=1, ls=":", label="joint")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def _titled(table: pd.DataFrame, titles: dict[str, str]) -> pd.DataFrame:
    """`table` with its first index level, the benchmark's name, replaced by its title."""
    names = table.index.get_level_values(0)
    unknown = sorted(set(names) - set(titles))
    if unknown:
        raise ValueError(f"no title for benchmark(s) {unknown}: titles has {sorted(titles)}")
    table = table.copy()
    table.index = table.index.set_levels([titles.get(b, b) for b in table.index.levels[0]], level=0)
    return table
