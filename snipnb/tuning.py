"""Choosing a learning rate on validation accuracy, and widening the grid when the choice sits at its edge.

A rate chosen at the largest or smallest candidate says only that the best lies there *or beyond*;
a search that stops there reports a bound, not a choice. `past_edge` names the next candidate one
grid step further out, so a notebook can run it and choose again (as chapter 03's λ search does).
Only validation accuracy is ever read here; the callers hold the test split out of the table.
"""

from __future__ import annotations

import math

import pandas as pd


def best(val_acc: pd.Series) -> float:
    """The candidate (the index: learning rates) with the highest mean validation accuracy
    (the values); on a tie the smaller rate wins, so that a flat validation curve never pushes the
    choice outwards."""
    if val_acc.empty or val_acc.isna().any():
        raise ValueError(f"best needs a validation accuracy for every candidate, got {val_acc.to_dict()}")
    ordered = val_acc.sort_index()
    return float(ordered.index[ordered.to_numpy().argmax()])


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
    if not isinstance(extensions, int) or extensions < 0:
        raise ValueError(f"extensions must be an integer >= 0, got {extensions!r}")
    tried = {key: sorted(set(float(lr) for lr in rates)) for key, rates in tried.items()}
    for extension in range(extensions + 1):
        chosen, extra = choose(tried)
        further = {key: past_edge(tried[key], lr) for key, lr in chosen.items()}
        further = {key: lr for key, lr in further.items() if lr is not None}
        if not further or extension == extensions:
            return chosen, extra, tried, sorted(further)
        tried = {key: sorted(rates + [further[key]]) if key in further else rates for key, rates in tried.items()}


def at_edge(tried, chosen: float) -> bool:
    """Whether `chosen` is the largest or smallest of several `tried` rates."""
    return past_edge(tried, chosen) is not None


def _two_digits(x: float) -> float:
    return float(f"{x:.2g}") if x > 0 and math.isfinite(x) else x
