"""Choosing a learning rate on validation accuracy, and widening the grid when the choice sits at its edge.

A rate chosen at the largest or smallest candidate says only that the best lies there *or beyond*;
a search that stops there reports a bound, not a choice. `past_edge` names the next candidate one
grid step further out, so a notebook can run it and choose again. `widen` widens each key's grid on
that key's own choice; `widen_shared` keeps one grid for keys compared with one another (chapter 03's
EWC variants and their controls) and widens it whenever any key's choice sits at its edge.
Only validation accuracy is ever read here; the callers hold the test split out of the table.

A search runs on seeds of its own (`search_seeds`, from `SEARCH_SEED_BASE` on), which no grid reaches
(`check_grid_seeds`) and no search goes below (`check_search_seeds`): chapters 01, 02 and 05 share them,
and the step `widen` repeats, running every key's search and choosing its rate (`search_on_validation`).
"""

from __future__ import annotations

import collections
import math

import pandas as pd

from . import checks
from .sweep import config_id

# A learning-rate search's seeds start here, far above any grid's (0 to seeds - 1). A search run at the
# chosen rate has the config id of the grid's run at that rate on the same seed, and the resumable sweep
# reuses it: on the reported seeds the search's winners would be compared at once, and on the seeds right
# after them as soon as a later execution raised `seeds`.
SEARCH_SEED_BASE = 10_000


def search_seeds(count: int) -> range:
    """The `count` seeds of a learning-rate search: `SEARCH_SEED_BASE` onwards, never a grid's."""
    checks.integer("lr_seeds", count, 1)
    return range(SEARCH_SEED_BASE, SEARCH_SEED_BASE + count)


def check_grid_seeds(seeds: int, first_seed: int = 0) -> None:
    """A ValueError unless a grid's `seeds` seeds from `first_seed` on (reported runs) stay below
    `SEARCH_SEED_BASE`, where the learning-rate searches' seeds are."""
    checks.integer("seeds", seeds, 1)
    checks.integer("first_seed", first_seed, 0)
    if first_seed + seeds > SEARCH_SEED_BASE:
        raise ValueError(f"seeds={seeds} from first_seed={first_seed} reach {SEARCH_SEED_BASE}, where the learning-"
                         f"rate searches' seeds begin: a grid's run would share a search run's config id")


def check_search_seeds(seeds, caller: str = "lr_grid") -> list[int]:
    """`seeds` as a list, or a ValueError if there are none or some lie below `SEARCH_SEED_BASE`, where a
    grid's are: a search run there would be a compared run, read at the rate it won on its own
    validation accuracy."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"{caller} needs at least one seed")
    if min(seeds) < SEARCH_SEED_BASE:
        raise ValueError(f"{caller}: seeds {seeds} reach below {SEARCH_SEED_BASE}, where a grid's seeds are; a search "
                         f"run would share a compared run's config id (use tuning.search_seeds)")
    return seeds


def best(val_acc: pd.Series) -> float:
    """The candidate (the index: learning rates) with the highest mean validation accuracy
    (the values); on a tie the smaller rate wins, so that a flat validation curve never pushes the
    choice outwards."""
    if val_acc.empty or val_acc.isna().any():
        raise ValueError(f"best needs a validation accuracy for every candidate, got {val_acc.to_dict()}")
    ordered = val_acc.sort_index()
    return float(ordered.index[ordered.to_numpy().argmax()])


def select_lr(results: pd.DataFrame, by: list[str], label) -> tuple[float, pd.DataFrame]:
    """(the learning rate with the highest mean validation accuracy after the last epoch, the table
    it was read from) over the runs of one search (`results`: one row per run, with `lr`, `seed`,
    `val_acc` and the `by` columns). The table holds the mean `val_acc` per rate and combination of
    `by` (a column each, named by `label`), and over every run (`all`). Every rate must have run the
    same (`by`, seed) cells, not merely as many. Only the validation accuracy is read; on a tie the
    smaller rate wins (`best`)."""
    view = results[["lr", *by, "seed", "val_acc"]]  # no test column is looked at
    if view.val_acc.isna().any():
        raise ValueError("select_lr needs runs with a validation set (val_per_class); some have no val_acc")
    _check_same_cells(view, [*by, "seed"])
    table = view.pivot_table(index="lr", columns=list(by), values="val_acc", aggfunc="mean")
    table.columns = [label(key) for key in table.columns]
    table["all"] = view.groupby("lr").val_acc.mean()
    return best(table["all"]), table


def _check_same_cells(view: pd.DataFrame, cell: list[str]) -> None:
    """A ValueError unless every rate in `view` ran the same `cell`s (each as often): a mean over other
    seeds or k's, as many of them or not, would compare the rates on different runs."""
    cells = {lr: collections.Counter(part[cell].itertuples(index=False, name=None)) for lr, part in view.groupby("lr")}
    first, *others = cells
    for lr in others:
        if cells[lr] != cells[first]:
            only_first, only_other = cells[first] - cells[lr], cells[lr] - cells[first]
            raise ValueError(f"select_lr compares learning rates over the same runs, but of the cells {cell} rate "
                             f"{first} alone has {sorted(only_first)} and rate {lr} alone has {sorted(only_other)}")


def search_on_validation(searches: dict, sweep, select, shard: str | None = None) -> tuple[dict, dict]:
    """Run every key's learning-rate search and choose its rate: the step `widen` repeats (its
    `choose`). `searches` maps each key (a model, a method, a baseline) to the runs of its search;
    `sweep(runs)` runs all of them at once (records already made are reused) and returns one row per
    run with its config `id` (`run_sweep`'s table); `select(results)` is given one key's runs only,
    matched by config id, and returns (that key's rate, the table it was read from). Returns
    ({key: rate}, {key: table}).

    A sweep on one `shard` returns only the runs some shard has finished: a choice made on part of a
    search would differ from shard to shard, so a search with fewer runs than asked stops here."""
    wanted = [run for runs in searches.values() for run in runs]
    searched = sweep(wanted)
    if len(searched) < len(wanted):
        raise RuntimeError(f"the learning-rate search has {len(searched)} of its {len(wanted)} runs (shard {shard} "
                           f"ran its slice): run every shard, then run again to choose the rates and go on")
    picks = {}
    for key, runs in searches.items():
        part = searched[searched.id.isin({config_id(run) for run in runs})]
        if len(part) != len(runs):  # a run missing, or one shared with another key's search
            raise ValueError(f"the {key!r} search has {len(part)} of its {len(runs)} runs in the sweep's results")
        picks[key] = select(part)
    return {key: rate for key, (rate, _) in picks.items()}, {key: table for key, (_, table) in picks.items()}


def past_edge(tried, chosen: float) -> float | None:
    """The next learning rate to try when `chosen` is the largest or smallest of `tried`: one grid
    step further out, the step being the ratio of the two outermost candidates on that side
    (0.05, 0.1, 0.2 chosen 0.2 gives 0.4), rounded to two significant digits. None when `chosen`
    lies strictly inside the grid, or when there is only one candidate (no step to take)."""
    rates = sorted(set(float(lr) for lr in tried))
    if chosen not in rates:
        raise ValueError(f"the chosen rate {chosen} is not among the tried ones {rates}")
    if len(rates) < 2 or rates[0] < chosen < rates[-1]:
        return None
    if chosen == rates[-1]:
        return _two_digits(chosen * rates[-1] / rates[-2])
    return _two_digits(chosen * rates[0] / rates[1])


def widen(tried: dict, choose, extensions: int):
    """Choose each key's rate among `tried` (key -> candidate rates), widening a grid while its
    choice sits at an edge: `choose(tried)` runs the candidates (records already made are reused by
    the caller's sweep) and returns ({key: chosen rate}, anything else the caller wants back). A key
    whose choice is the largest or smallest of its candidates gains `past_edge`'s rate and all are
    chosen again, at most `extensions` times. Returns (chosen, the other return value of the last
    `choose`, the candidates finally tried, the keys whose choice is still at an edge)."""
    _check_extensions(extensions)
    tried = {key: sorted(set(float(lr) for lr in rates)) for key, rates in tried.items()}
    for extension in range(extensions + 1):
        chosen, extra = choose(tried)
        further = {key: past_edge(tried[key], lr) for key, lr in chosen.items()}
        further = {key: lr for key, lr in further.items() if lr is not None}
        if not further or extension == extensions:
            return chosen, extra, tried, sorted(further)
        tried = {key: sorted(rates + [further[key]]) if key in further else rates for key, rates in tried.items()}


def widen_shared(grid, choose, extensions: int):
    """Choose every key's value on one grid shared by all keys, widening it while any key's choice
    sits at its edge: `choose(grid)` runs every key at every candidate of `grid` (sorted; records
    already made are reused by the caller's sweep) and returns ({key: chosen value}, anything else).
    When some key's choice is the grid's largest or smallest candidate, the grid gains `past_edge`'s
    value on that side (on both sides when choices sit at both) for every key, and all are chosen
    again, at most `extensions` times. Returns (chosen, the other return value of the last `choose`,
    the grid finally tried, the keys whose choice is still at its edge).

    Why not `widen`: keys that will be compared should be chosen from the same candidates. Widened
    each on its own choice, a key whose choice fell inside its grid by noise never meets the values
    where another key found its peak, and a comparison of the two is then of a tuned key against
    an untuned one."""
    _check_extensions(extensions)
    grid = sorted(set(float(value) for value in grid))
    for extension in range(extensions + 1):
        chosen, extra = choose(list(grid))
        edges = sorted(key for key, value in chosen.items() if at_edge(grid, value))
        if not edges or extension == extensions:
            return chosen, extra, grid, edges
        grid = sorted(set(grid) | {past_edge(grid, chosen[key]) for key in edges})


def _check_extensions(extensions) -> None:
    if not isinstance(extensions, int) or isinstance(extensions, bool) or extensions < 0:
        raise ValueError(f"extensions must be an integer >= 0, got {extensions!r}")


def at_edge(tried, chosen: float) -> bool:
    """Whether `chosen` is the largest or smallest of several `tried` rates."""
    return past_edge(tried, chosen) is not None


def _two_digits(x: float) -> float:
    return float(f"{x:.2g}") if x > 0 and math.isfinite(x) else x
