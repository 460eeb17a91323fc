"""How a chapter shows a table: percent rounded, one line per cell, no bare row numbers, one
spelling of a missing value. Tables are pandas Stylers, which Jupyter Book renders as HTML."""

from __future__ import annotations

import pandas as pd

MISSING = "—"


def table(df: pd.DataFrame, digits: int = 2, index: bool | None = None, caption: str | None = None):
    """`df` for display: numbers to `digits` decimals, missing values as "—", the index hidden when it
    is the default 0..N-1 range (or when `index=False`), cells kept on one line."""
    frame = df.copy()
    default_index = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
    styler = frame.style.format(precision=digits, na_rep=MISSING, thousands=",")
    if index is False or (index is None and default_index):
        styler = styler.hide(axis="index")
    styler = styler.set_table_styles([{"selector": "td, th", "props": [("white-space", "nowrap")]}])
    return styler.set_caption(caption) if caption else styler


# The output type a chapter's declared contrasts travel in beside their sentences, for the book's
# summary table and forest plot (scripts/findings.py): the numbers, not text to parse.
FINDINGS_MIME = "application/vnd.snipnb.contrasts+json"
FINDINGS_FIELDS = ("contrast", "kind", "metric", "n", "diff", "ci_low", "ci_high", "adjusted_low", "adjusted_high",
                   "p", "p_holm", "decision", "family", "margin", "around", "detectable", "published", "source")


class Findings:
    """A chapter's tested contrasts (`contrasts.evaluate_contrasts`) as shown in its findings cell: one
    sentence each in Markdown, and the rows themselves under `FINDINGS_MIME`, which the book's summary
    reads. `setting` says in a few words what was compared (the chapter's data and model), `unit` the
    metric's unit. `title` (e.g. "Answer") shows it as a box headed by that word: a Markdown block quote,
    which renders the same in a chapter's output and in the book's summary page."""

    def __init__(self, tested: pd.DataFrame, setting: str, unit: str = "points", lead: str = "", title: str = ""):
        from .contrasts import describe_contrast

        self.rows = [{k: _plain(row.get(k)) for k in FINDINGS_FIELDS} for _, row in tested.iterrows()]
        self.setting, self.unit = setting, unit
        sentences = [f"- {describe_contrast(row, unit=unit)}." for _, row in tested.iterrows()]
        if title:
            lead = f"**{title}.** {lead}".strip()
        lines = ([lead, ""] if lead else []) + sentences
        self.markdown = "\n".join(f"> {line}" if line else ">" for line in lines) if title else "\n".join(lines)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/markdown": self.markdown,
                FINDINGS_MIME: {"setting": self.setting, "unit": self.unit, "contrasts": self.rows}}


def answer(results: pd.DataFrame, contrasts, *, setting: str, lead="", needed=None, unit: str = "points"):
    """A chapter's Answer cell: its declared `contrasts` tested together on `results` (Holm's
    correction, `contrasts.evaluate_contrasts`), shown as `Findings` titled "Answer". `lead` is the
    sentence above them, or a function of the tested rows that writes it. `needed`: the ids of the
    runs the contrasts read (`sweep.config_id`); while some have no results (one shard's run), the
    cell says how many are missing rather than testing part of the seeds, and only those runs are
    tested once all are there. With no declared contrast, it says nothing below is a tested finding."""
    from IPython.display import Markdown

    from .contrasts import evaluate_contrasts

    if not contrasts:
        return Markdown("**No declared contrast in this run** (see above): nothing below is a tested finding.")
    if needed is not None:
        needed = set(needed)
        missing = needed - set(results.id)
        if missing:
            return Markdown(f"**No findings yet**: {len(missing)} of the {len(needed)} runs the declared contrasts "
                            f"need have no results (a shard's run?); run again without `shard` once all have.")
        results = results[results.id.isin(needed)]
    tested = evaluate_contrasts(results, contrasts)
    return Findings(tested, setting, unit=unit, lead=lead(tested) if callable(lead) else lead, title="Answer")


def late_gain_table(late: pd.DataFrame, index, step: str) -> pd.DataFrame:
    """`stats.late_gain`'s rows for a reader: indexed by `index`, its columns named in words, the two
    steps called `step` ("epoch", "it.")."""
    return late.set_index(index).rename(columns={
        "start": f"from {step}", "end": f"to {step}", "gain": "gain (points)", "ci_low": "95% CI low",
        "ci_high": "95% CI high", "n": "seeds"})


def seed_span(seeds) -> str:
    """Seeds as a reader says them: "seed 2", "seeds 0 to 2" for consecutive ones, "seeds 0, 2 and 5"."""
    seeds = sorted(set(int(seed) for seed in seeds))
    if not seeds:
        raise ValueError("seed_span: no seeds")
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]} to {seeds[-1]}"
    return f"seeds {', '.join(map(str, seeds[:-1]))} and {seeds[-1]}"


def _plain(value):
    """A JSON-ready scalar: numpy numbers as Python ones, NaN as None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
