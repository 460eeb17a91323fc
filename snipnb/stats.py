"""Summaries a reviewer expects: mean ± std over seeds, and paired differences with a 95% CI.

Runs of two methods on the same seed share the model initialisation and the data subset, so the
comparison is paired: the per-seed difference removes the seed-to-seed variance both share.

Per-comparison 95% intervals are exploratory: among many, some exclude 0 by chance alone. A chapter's
declared primary comparisons are tested as one family in `contrasts`, with `holm` and `seed_means`
from here; the rest say so (`verdict(..., exploratory=True)`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t confidence interval; low/high are NaN for fewer than 2 values."""
    values = pd.Series(values, dtype=float).dropna()
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarize(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of `value` for each group of `by`, plus a 'mean ± std' column."""
    out = df.groupby(by, sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    out["mean ± std"] = [f"{m:.2f} ± {s:.2f}" if not math.isnan(s) else f"{m:.2f}"
                         for m, s in zip(out["mean"], out["std"])]
    return out


def paired_difference(df: pd.DataFrame, value: str, baseline: dict, variant: list[str], pair_on: list[str],
                      group: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per-pair difference `value - value(baseline)`, summarised with a t confidence interval.

    `baseline` selects the reference rows (e.g. `{"method": "dense"}`); `variant` names the columns
    that tell compared runs apart (e.g. `["method", "sparsity"]`); `pair_on` the columns a run is
    matched on (e.g. `["seed"]`); `group` the columns kept apart (e.g. `["model"]`), each with its own
    baseline. Only pairs present on both sides count (`n`). `wins` counts pairs where the variant is
    higher. A CI that excludes 0 is a difference the seeds agree on; `detectable` is the smallest
    effect the pairs could detect (`detectable_effect`), what a CI spanning 0 leaves open.
    """
    group = list(group or [])
    is_base = pd.Series(True, index=df.index)
    for col, val in baseline.items():
        is_base &= df[col] == val
    base = df[is_base][group + pair_on + [value]].rename(columns={value: "_base"})
    merged = df[~is_base].merge(base, on=group + pair_on)
    merged["_diff"] = merged[value] - merged["_base"]
    rows = []
    for key, part in merged.groupby(group + variant, sort=False):
        mean, low, high = t_interval(part["_diff"], level)
        rows.append(dict(zip(group + variant, key), diff=mean, ci_low=low, ci_high=high, n=len(part),
                         wins=int((part["_diff"] > 0).sum()),
                         detectable=detectable_effect(part["_diff"].std(ddof=1), len(part), level)))
    return pd.DataFrame(rows)


def detectable_effect(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test on `n` pairs with difference standard
    deviation `sd` detects with probability `power` at two-sided `level`: (t_{1-α/2} + t_{power}) · sd/√n
    with n - 1 degrees of freedom (the usual approximation to the noncentral t). NaN below 2 pairs.

    Where a confidence interval spans 0, this is what "not detected at this power" means in numbers:
    an effect this large would most likely have been seen; a smaller one may exist.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    quantiles = scipy_stats.t.ppf(0.5 + level / 2, df) + scipy_stats.t.ppf(power, df)
    return float(quantiles * sd / math.sqrt(n))


EXPLORATORY = "exploratory: not a declared contrast, not corrected for multiplicity"
DECLARED_ELSEWHERE = "(uncorrected: a declared contrast, tested with Holm's correction in the Answer)"


def verdict(row, unit: str = "points", pairs: str = "seeds", exploratory: bool = False,
            declared: bool = False) -> str:
    """One phrase for a `paired_difference` row: the difference with its 95% CI, and either that the
    seeds agree on its sign or that no difference was detected at this power, with the smallest
    effect the run could have detected. `exploratory=True` appends `EXPLORATORY`: for any
    comparison that is not among the chapter's declared contrasts. `declared=True` says that this
    uncorrected interval is of a declared contrast, whose test (Holm) is in the chapter's Answer."""
    if exploratory and declared:
        raise ValueError("verdict: a comparison is either exploratory or declared, not both")
    if row["n"] < 2:
        text = f"{row['diff']:+.2f} {unit} on one seed (no interval)"
    else:
        text = (f"{row['diff']:+.2f} {unit} (95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}, "
                f"{int(row['n'])} {pairs})")
        if row["ci_low"] > 0 or row["ci_high"] < 0:
            text += f": {'higher' if row['diff'] > 0 else 'lower'}, and the {pairs} agree"
        else:
            text += f": not detected at this power (the run would detect about ±{row['detectable']:.2f} {unit})"
    if declared:
        return f"{text} {DECLARED_ELSEWHERE}"
    return f"{text} ({EXPLORATORY})" if exploratory else text


def ci_reading(low: float, high: float) -> str:
    """How a 95% interval of a difference reads: 'higher' or 'lower' when it excludes 0, else 'not
    detected at this power' (an interval spanning 0 with few seeds is not evidence of no difference)."""
    if math.isnan(low) or math.isnan(high):
        return "too few pairs for an interval"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "not detected at this power"


def format_difference(diff: float, low: float, high: float, n: int) -> str:
    """'+1.2 [-0.3, +2.7]' for a paired difference with its interval; '+1.2 (n=1)' without one."""
    if n < 2 or math.isnan(low):
        return f"{diff:+.1f} (n={int(n)})"
    return f"{diff:+.1f} [{low:+.1f}, {high:+.1f}]"


# Declared contrasts: a family of comparisons whose error rate is controlled together.

def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given.

    With the m p-values sorted p(1) <= ... <= p(m), the adjusted p(i) is max over j <= i of
    min(1, (m - j + 1) · p(j)): monotone in the sorted order, and rejecting where it is below α keeps the
    chance of any false rejection in the family at most α, whatever the dependence between tests.
    A NaN (a declared contrast with too few pairs to test) stays NaN but still counts in m: the family
    is what was declared, not what happened to run.
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    adjusted = np.full(m, np.nan)
    running = 0.0
    for rank, i in enumerate(np.argsort(p)):  # NaN sorts last
        if math.isnan(p[i]):
            break
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def seed_means(df: pd.DataFrame, value: str, pair_on, average_over=(), by=()) -> pd.DataFrame:
    """The mean of `value` within each (`by`, `pair_on`) group, over the rows that differ in
    `average_over`: one number per unit of replication. Columns: by + pair_on + [value, "cells"]
    (how many rows each mean averages).

    Nested few-shot subsets of one seed (k = 1, 5, 10 drawn from that seed's data, trained from that
    seed's initialisation) are not independent replicates: counting every (seed, k) as a pair inflates
    n and lets one lucky seed look like a significant effect. The seed is the unit that was randomised,
    so its k's are averaged first. Rows that repeat a (by, pair_on, average_over) cell are refused:
    they differ in a column nobody named.
    """
    keys = [*by, *pair_on]
    missing = [c for c in [*keys, *average_over, value] if c not in df.columns]
    if missing:
        raise ValueError(f"seed_means: no column {missing}; the table has {list(df.columns)}")
    repeated = df.duplicated([*keys, *average_over], keep=False)
    if repeated.any():
        raise ValueError(f"seed_means: {int(repeated.sum())} rows repeat a cell of {[*keys, *average_over]}; "
                         f"name the column that tells them apart in by or average_over")
    out = df.groupby(keys, sort=True)[value].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": value, "count": "cells"})


# Budgets: has a learning curve flattened?

def shows_late_gain(steps, fraction: float = 0.3) -> bool:
    """Whether a curve tested at `steps` can show `late_gain` over its last `fraction`: it has more
    than one tested point and one at or before (1 − `fraction`) × its last step. A run tested only
    at its end, or only near it, cannot say whether it was still rising."""
    if not 0 < fraction < 1:
        raise ValueError(f"shows_late_gain: fraction must be in (0, 1), got {fraction!r}")
    steps = sorted(steps)
    return len(steps) > 1 and steps[0] <= (1 - fraction) * steps[-1]


def late_gain(curves: pd.DataFrame, by, *, step: str = "iteration", value: str = "value", pair_on: str = "seed",
              fraction: float = 0.3, level: float = 0.95) -> pd.DataFrame:
    """How much each group's curves still rose over the last `fraction` of their budget.

    `curves` is long: one row per (`by`, `pair_on`, `step`) with the curve's `value` there (e.g.
    `metarun.history_table`'s meta-validation accuracy at each checkpoint). Per curve, the gain is
    `value` at its last step minus `value` at the latest step at or before (1 − `fraction`) × that last
    step; per group of `by`, the mean gain over `pair_on` with its t interval. Columns: by, `start`
    and `end` (the two steps; the earliest start and latest end where curves differ), `gain`,
    `ci_low`, `ci_high`, `n`, and `reading`: "still rising" or "falling" where the interval excludes
    0, else "no change detected at this power" (with few seeds a curve that is still rising slowly
    can read so: the interval says how slowly).

    A budget is part of a result: a method compared while its curve still rises is compared early in
    training, and a ranking of methods at that point may not hold at convergence.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not 0 < fraction < 1:
        raise ValueError(f"late_gain: fraction must be in (0, 1), got {fraction!r}")
    missing = [c for c in [*by, pair_on, step, value] if c not in curves.columns]
    if missing:
        raise ValueError(f"late_gain: no column {missing}; the table has {list(curves.columns)}")
    rows = []
    for key, group in curves.groupby(by, sort=False):
        cell = dict(zip(by, key if isinstance(key, tuple) else (key,)))  # each column keeps its type
        gains, starts, ends = [], [], []
        for _, curve in group.groupby(pair_on):
            values = curve.set_index(step)[value].sort_index()
            if not values.index.is_unique:
                raise ValueError(f"late_gain: a curve of {cell} repeats a {step}; name the column that tells its "
                                 f"rows apart in by")
            end = values.index[-1]
            earlier = values.index[values.index <= (1 - fraction) * end]
            if len(values) < 2 or not len(earlier):
                raise ValueError(f"late_gain: a curve of {cell} has no {step} at or before {(1 - fraction) * end:g}; "
                                 f"it needs at least two points")
            gains.append(float(values[end] - values[earlier[-1]]))
            starts.append(earlier[-1])
            ends.append(end)
        mean, low, high = t_interval(gains, level)
        reading = ("still rising" if low > 0 else "falling" if high < 0 else
                   "no change detected at this power" if len(gains) > 1 else "one curve, no interval")
        rows.append(dict(cell, start=min(starts), end=max(ends), gain=mean, ci_low=low, ci_high=high, n=len(gains),
                         reading=reading))
    return pd.DataFrame(rows)


def budget_steps(runs: pd.DataFrame, value: str, budgets, *, budget: str = "epochs", group=("model", "variant"),
                 pair_on=("seed",), level: float = 0.95) -> pd.DataFrame:
    """What each doubling (or any step) of a training budget gained: per group of `group` and each
    pair of consecutive `budgets` (increasing values of the column `budget`), the paired difference
    of `value` at the longer budget minus at the shorter on the runs trained at both
    (`paired_difference`). Columns: group, `from`, `to`, diff, ci_low, ci_high, n, wins, detectable.
    A group not trained at a budget has no row for the steps that touch it."""
    budgets = list(budgets)
    if len(budgets) < 2 or any(shorter >= longer for shorter, longer in zip(budgets, budgets[1:])):
        raise ValueError(f"budget_steps: budgets must be at least two increasing values, got {budgets!r}")
    group, pair_on = list(group), list(pair_on)
    steps = []
    for shorter, longer in zip(budgets, budgets[1:]):
        both = runs[runs[budget].isin([shorter, longer])]
        gained = paired_difference(both, value, baseline={budget: shorter}, variant=[budget], pair_on=pair_on,
                                   group=group, level=level)
        if len(gained):
            steps.append(gained.drop(columns=[budget]).assign(**{"from": shorter, "to": longer}))
    columns = group + ["from", "to", "diff", "ci_low", "ci_high", "n", "wins", "detectable"]
    return pd.concat(steps, ignore_index=True)[columns] if steps else pd.DataFrame(columns=columns)


def step_gained(steps: pd.DataFrame) -> pd.Series:
    """Which rows of `budget_steps` gained: those whose interval of the gain lies above 0 (at the steps'
    level, uncorrected). The one rule by which a budget ladder climbs and a budget settles."""
    return steps["ci_low"] > 0


def settled_budgets(steps: pd.DataFrame, first, group=("model", "variant")) -> pd.DataFrame:
    """Per group of `budget_steps`' rows, the budget its value stopped gaining at: from `first` (the
    grid's budget), each step that gained (`step_gained`) moves on to the longer budget; the
    first step that shows no gain stops there (`settled` True: the next budget gained nothing detectable
    at this power, which is no proof that nothing was left), and a group that gained at every step it was
    trained ends at its longest budget with `settled` False (still gaining). A group with no step from
    `first` stays there, unsettled. Columns: group, `budget`, `settled`."""
    group = list(group)
    rows = []
    for key, part in steps.groupby(group, sort=False):
        at, settled = first, False
        by_start = {row["from"]: row for _, row in part.assign(gained=step_gained(part)).iterrows()}
        while at in by_start:
            step = by_start[at]
            if not step["gained"]:
                settled = True
                break
            at = step["to"]
        rows.append(dict(zip(group, key if isinstance(key, tuple) else (key,)), budget=at, settled=settled))
    return pd.DataFrame(rows, columns=group + ["budget", "settled"])
