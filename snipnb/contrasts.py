"""Declared primary contrasts: the few comparisons a chapter commits to before its results, tested
together as one family whose chance of any false claim is held at α.

A chapter prints hundreds of paired intervals; at 95% each, some exclude 0 by chance alone, and an
interval spanning 0 on 5 seeds is no evidence of equality. So a chapter declares its `Contrast`s first,
checks them against its grid before any run (`check_contrasts`), and after the sweep tests them all at
once (`evaluate_contrasts`: Holm across the family, TOST for equivalence) and words each result
(`describe_contrast`). Anything it did not declare is exploratory (`stats.verdict(..., exploratory=True)`).

    from snipnb.contrasts import Contrast, check_contrasts, evaluate_contrasts, describe_contrast
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import checks
from .stats import detectable_effect, holm, seed_means, t_interval


KINDS = ("difference", "equivalence")


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A comparison a chapter declares before its results: `variant` − `baseline` on `metric`,
    paired on `pair_on`.

    name: the chapter's label for it, e.g. "SNIP − dense at 0.9" (unique in a family).
    metric: the results column compared, e.g. "final_acc".
    variant, baseline: column -> value selecting each side's runs, e.g. {"method": "snip",
        "sparsity": 0.9} and {"method": "dense"}. `within` (e.g. {"model": "simple_convnet"}) selects
        on both sides.
    pair_on: the columns that match a variant run to its baseline run: the unit of replication.
    average_over: columns averaged within one pair before testing (`seed_means`), e.g. ("k",).
    kind: "difference" (two-sided paired t-test of `around`) or "equivalence" (TOST against
        `around` ± margin).
    margin: for "equivalence" only: the largest departure from `around` that counts as negligible, in
        the metric's units, fixed before the results are seen.
    around: the value the difference is tested against: 0 (the default: does the variant differ from
        the baseline?), or e.g. a published difference (does ours differ from it / is it equivalent to it?).
    published, source: the same difference as someone else published it, and where, to show beside ours.
    """

    name: str
    metric: str
    variant: dict
    baseline: dict
    within: dict = dataclasses.field(default_factory=dict)
    pair_on: tuple = ("seed",)
    average_over: tuple = ()
    kind: str = "difference"
    margin: float | None = None
    around: float = 0.0
    published: float | None = None
    source: str | None = None

    def __post_init__(self):
        for argument in ("pair_on", "average_over"):
            columns = getattr(self, argument)
            object.__setattr__(self, argument, (columns,) if isinstance(columns, str) else tuple(columns))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a Contrast needs a name, got {self.name!r}")
        where = f"contrast {self.name!r}"
        checks.one_of(f"{where}: kind", self.kind, KINDS)
        for argument in ("variant", "baseline", "within"):
            if not isinstance(getattr(self, argument), dict):
                raise ValueError(f"{where}: {argument} must be a dict column -> value, got {getattr(self, argument)!r}")
        if not self.variant or not self.baseline or self.variant == self.baseline:
            raise ValueError(f"{where}: variant and baseline must each select runs and differ, "
                             f"got {self.variant} and {self.baseline}")
        if not self.pair_on:
            raise ValueError(f"{where}: pair_on must name at least one column (usually 'seed')")
        selecting = {*self.variant, *self.baseline}
        for column in {*self.within} & selecting:
            raise ValueError(f"{where}: {column!r} is in within and in variant or baseline; within applies "
                             f"to both sides, so name it once")
        for column in {*self.pair_on, *self.average_over} & (selecting | {*self.within}):
            raise ValueError(f"{where}: {column!r} cannot both select runs and pair or average them")
        if self.kind == "equivalence":
            checks.number(f"{where}: margin", self.margin, above=0)
        elif self.margin is not None:
            raise ValueError(f"{where}: margin is for kind='equivalence'; a difference is tested against 0, "
                             f"got margin={self.margin!r}")
        checks.number(f"{where}: around", self.around)
        if self.published is not None:
            checks.number(f"{where}: published", self.published)
            if not self.source:
                raise ValueError(f"{where}: a published value needs its source")

    def sides(self) -> dict:
        """{"variant": selection, "baseline": selection}, each with `within` applied."""
        return {"variant": {**self.within, **self.variant}, "baseline": {**self.within, **self.baseline}}


def _selected(frame: pd.DataFrame, selection: dict) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in selection.items():
        mask &= frame[column].isna() if value is None else frame[column] == value
    return mask


def _problems(contrast: Contrast, frame: pd.DataFrame, results: bool) -> list[str]:
    """What keeps `contrast` from being evaluated on `frame`, one line each. `results`: the frame holds
    results (the metric must be there) rather than the configs of a grid (at least 2 pairs must be)."""
    where = f"contrast {contrast.name!r}"
    needed = [*contrast.pair_on, *contrast.average_over, *contrast.within, *contrast.variant, *contrast.baseline]
    needed += [contrast.metric] if results else []
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        return [f"{where}: no column {c!r}; the table has {list(frame.columns)}" for c in missing]
    problems = []
    for side, selection in contrast.sides().items():
        for column, value in selection.items():
            if not _selected(frame, {column: value}).any():
                present = sorted(pd.unique(frame[column].dropna()).tolist(), key=str)
                problems.append(f"{where}: {side} asks for {column}={value!r}, which the table lacks; "
                                f"{column} has {present}")
    if problems:
        return problems
    masks = {side: _selected(frame, selection) for side, selection in contrast.sides().items()}
    keys = [*contrast.pair_on, *contrast.average_over]
    for side, mask in masks.items():
        rows = frame[mask]
        if rows.empty:
            problems.append(f"{where}: no {side} runs have all of {contrast.sides()[side]}")
            continue
        repeated = rows[rows.duplicated(keys, keep=False)]
        if len(repeated):
            cell = repeated.merge(repeated[keys].iloc[[0]], on=keys)  # the runs of the first such pair
            differ = [c for c in rows.columns if c not in keys and cell[c].astype(str).nunique() > 1]
            differ.sort(key=lambda c: frame[c].astype(str).nunique())  # config columns first
            shared = dict(zip(keys, cell[keys].iloc[0].tolist()))
            problems.append(f"{where}: {len(cell)} {side} runs share {shared}; fix the column that tells them "
                            f"apart in {side} or within, or name it in average_over "
                            f"(columns that differ: {differ[:5]})")
    if (masks["variant"] & masks["baseline"]).any():
        problems.append(f"{where}: some runs are both variant and baseline; make the selections exclusive")
    if not problems and not results:
        pairs = len(frame[masks["variant"]][list(contrast.pair_on)].drop_duplicates()
                    .merge(frame[masks["baseline"]][list(contrast.pair_on)].drop_duplicates()))
        if pairs < 2:
            problems.append(f"{where}: {pairs} {contrast.pair_on} shared by variant and baseline; a paired "
                            f"test needs at least 2")
    return problems


def _as_frame(table) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    return pd.DataFrame([dataclasses.asdict(config) for config in table])


def _refuse(contrasts, frame: pd.DataFrame, results: bool) -> None:
    contrasts = list(contrasts)
    for c in contrasts:
        if not isinstance(c, Contrast):
            raise ValueError(f"contrasts must be Contrast objects, got {c!r}")
    names = [c.name for c in contrasts]
    problems = [f"contrast name {n!r} is declared twice" for n in dict.fromkeys(names) if names.count(n) > 1]
    problems += [p for c in contrasts for p in _problems(c, frame, results)]
    if not contrasts:
        problems.append("no contrasts declared")
    if problems:
        raise ValueError(("declared contrasts do not fit the " + ("results" if results else "grid") + ":\n")
                         + "\n".join(problems))


def check_contrasts(contrasts, configs) -> None:
    """Raise ValueError, before any run, if a declared contrast could not be evaluated on the grid
    `configs` (a list of config dataclasses or a DataFrame of them): a column or value the grid lacks
    (naming the contrast, the column, the value and the values that exist), a side that selects no
    run or several runs per pair, overlapping sides, fewer than 2 shared pairs, a repeated name.
    Every problem is listed at once."""
    _refuse(contrasts, _as_frame(configs), results=False)


def _paired(contrast: Contrast, results: pd.DataFrame) -> pd.Series:
    """One difference per pair: variant − baseline matched on pair_on and average_over, then averaged
    over average_over within each pair (`seed_means`). Cells present on one side only are left out."""
    keys = [*contrast.pair_on, *contrast.average_over]
    side = {s: results[_selected(results, sel)][keys + [contrast.metric]] for s, sel in contrast.sides().items()}
    both = side["variant"].merge(side["baseline"], on=keys, suffixes=("", "_baseline"))
    both["difference"] = both[contrast.metric] - both[contrast.metric + "_baseline"]
    both = both.dropna(subset=["difference"])
    return seed_means(both, "difference", contrast.pair_on, contrast.average_over)["difference"]


def _tested(contrast: Contrast, results: pd.DataFrame, alpha: float, family: int) -> dict:
    d = _paired(contrast, results).to_numpy(dtype=float)
    n = len(d)
    mean, ci_low, ci_high = t_interval(d, 1 - alpha)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    equivalence = contrast.kind == "equivalence"
    # Bonferroni's level for one contrast of the family: two-sided α/m; TOST's two one-sided α/m tests.
    adjusted_level = 1 - (2 if equivalence else 1) * alpha / family
    p = math.nan
    if n > 1:
        t = scipy_stats.t(n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            se = np.float64(sd) / math.sqrt(n)
            shift = mean - contrast.around
            if equivalence:
                p = max(t.sf((shift + contrast.margin) / se), t.cdf((shift - contrast.margin) / se))
            else:
                p = 2 * t.sf(abs(shift) / se if shift else 0.0)  # no departure at all: no evidence, p = 1
        p = float(p)
    _, adjusted_low, adjusted_high = t_interval(d, adjusted_level)
    # What "not detected" / "not shown" leaves open, at Holm's strictest step (Bonferroni's level):
    # the effect the test finds with 80% power, or the margin TOST shows with 80% power at a true 0.
    detectable = (detectable_effect(sd, n, adjusted_level, power=0.9) if equivalence
                  else detectable_effect(sd, n, adjusted_level))
    return dict(contrast=contrast.name, kind=contrast.kind, metric=contrast.metric, margin=contrast.margin,
                around=contrast.around,
                n=n, diff=mean, sd=sd, ci_low=ci_low, ci_high=ci_high, p=p, adjusted_level=adjusted_level,
                adjusted_low=adjusted_low, adjusted_high=adjusted_high, detectable=detectable,
                family=family, alpha=alpha, published=contrast.published, source=contrast.source)


def _decision(row, alpha: float) -> str:
    if math.isnan(row["p_holm"]):
        return "too few pairs for a test"
    if row["kind"] == "equivalence":
        return "equivalent within ±margin" if row["p_holm"] < alpha else "equivalence not shown"
    if row["p_holm"] < alpha:
        return "higher" if row["diff"] > row["around"] else "lower"
    return "not detected at this power"


def evaluate_contrasts(results: pd.DataFrame, contrasts, alpha: float = 0.05) -> pd.DataFrame:
    """Test the declared `contrasts` on `results` as one family, with its family-wise error rate held at `alpha`.

    One row per contrast, in the order given. For each, the paired differences (one per pair after
    averaging over `average_over`) give `n`, `diff` (their mean), `sd`, and the usual `ci_low`/`ci_high`
    t interval at 1 − α (not corrected). Then:

    - "difference": `p` is the two-sided paired t-test of mean `around` (0 unless declared). Decision:
      "higher"/"lower" (`diff` above or below `around`) when `p_holm` < α, else "not detected at this power".
    - "equivalence" (TOST): `p` is the larger of the one-sided t-test p's of H0: mean <= around − margin
      and H0: mean >= around + margin. Decision: "equivalent within ±margin" when `p_holm` < α, else "equivalence
      not shown". A difference outside the margin is not claimed either way.
    - `p_holm`: Holm's adjustment (`holm`) across every contrast passed: they are the family, m = `family`.
      "too few pairs for a test" where n < 2 (such a contrast still counts in m).
    - `adjusted_low`/`adjusted_high`: the Bonferroni interval at `adjusted_level` = 1 − α/m (difference)
      or 1 − 2α/m (equivalence: the interval of two one-sided α/m tests). In a family of differences
      only, they cover their true values all at once with probability >= 1 − α. They are conservative
      beside Holm: one that excludes 0 (or lies inside ±margin) always goes with a Holm rejection, but
      Holm may reject where it does not. (Intervals that match Holm exactly exist, but for a rejected
      contrast they only bound the effect away from 0, unless all are rejected, so they say less.)
    - `detectable`: at Bonferroni's level (Holm's first and strictest step), the smallest true difference the
      test finds with 80% power, or for equivalence the narrowest margin TOST shows with 80% power when the
      true difference is 0 (`detectable_effect` with power 0.9 per one-sided side).
    - `published`, `source`: carried from the contrast, for showing beside ours.

    Raises ValueError, as `check_contrasts` does, if a contrast names a column or value `results` lacks.
    """
    checks.number("alpha", alpha, above=0, below=0.5)
    contrasts = list(contrasts)
    _refuse(contrasts, results, results=True)
    table = pd.DataFrame([_tested(c, results, alpha, len(contrasts)) for c in contrasts])
    table.insert(table.columns.get_loc("p") + 1, "p_holm", holm(table["p"]))
    decisions = [_decision(row, alpha) for _, row in table.iterrows()]
    table.insert(table.columns.get_loc("p_holm") + 1, "decision", decisions)
    return table


def _percent(level: float) -> str:
    return f"{100 * level:.4g}%"


def describe_contrast(row, unit: str = "points", pairs: str = "seeds") -> str:
    """A sentence for one `evaluate_contrasts` row, e.g. "SNIP − dense at 0.9: -1.23 points (95% CI -2.01
    to -0.45, family-adjusted 98.75% CI -2.40 to -0.06, 5 seeds; Holm-adjusted p = 0.012, 4 contrasts):
    lower". A difference not detected says what the run could have detected; equivalence is claimed only
    as the decision says. It never reads "no difference" nor "matches"."""
    name, n = row["contrast"], int(row["n"])
    if n < 2:
        return f"{name}: {row['diff']:+.2f} {unit} on {n} {pairs}, too few pairs for a test"
    p = "< 0.001" if row["p_holm"] < 0.001 else f"= {row['p_holm']:.3f}"
    test = "TOST, " if row["kind"] == "equivalence" else ""
    text = (f"{name}: {row['diff']:+.2f} {unit} ({_percent(1 - row['alpha'])} CI {row['ci_low']:+.2f} to "
            f"{row['ci_high']:+.2f}, family-adjusted {_percent(row['adjusted_level'])} CI {row['adjusted_low']:+.2f} "
            f"to {row['adjusted_high']:+.2f}, {n} {pairs}; {test}Holm-adjusted p {p}, {int(row['family'])} "
            f"contrast{'s' if row['family'] > 1 else ''})")
    decision = row["decision"]
    around = row.get("around", 0.0) or 0.0
    of = f" of {around:+.2f}" if around else ""  # the departure is from this value, not from 0
    if decision == "not detected at this power":
        text += (f": a departure from {around:+.2f} not detected at this power" if around else
                 ": not detected at this power") + f" (would detect about ±{row['detectable']:.2f} {unit})"
    elif decision == "equivalent within ±margin":
        text += f": equivalent within ±{row['margin']:.2f} {unit}" + (f" to {around:+.2f}" if around else "")
    elif decision == "equivalence not shown":
        text += (f": equivalence within ±{row['margin']:.2f} {unit}{of} not shown (this run could show about "
                 f"±{row['detectable']:.2f} {unit})")
    else:
        text += f": {decision}" + (f" than {around:+.2f}" if around else "")
    if row.get("published") is not None and not pd.isna(row["published"]):
        text += f"; published: {row['published']:+.2f} {unit} ({row['source']})"
    return text
