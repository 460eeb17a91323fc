"""Summaries a reviewer expects: mean ± std over seeds, and paired differences with a 95% CI.

Runs of two methods on the same seed share the model initialisation and the data subset, so the
comparison is paired: the per-seed difference removes the seed-to-seed variance both share.
"""

from __future__ import annotations

import math

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


def verdict(row, unit: str = "points", pairs: str = "seeds") -> str:
    """One phrase for a `paired_difference` row: the difference with its 95% CI, and either that the
    seeds agree on its sign or that no difference was detected at this power, with the smallest
    effect the run could have detected."""
    if row["n"] < 2:
        return f"{row['diff']:+.2f} {unit} on one seed (no interval)"
    text = f"{row['diff']:+.2f} {unit} (95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}, {int(row['n'])} {pairs})"
    if row["ci_low"] > 0 or row["ci_high"] < 0:
        return f"{text}: {'higher' if row['diff'] > 0 else 'lower'}, and the {pairs} agree"
    return (f"{text}: not detected at this power (the run would detect about "
            f"±{row['detectable']:.2f} {unit})")


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
