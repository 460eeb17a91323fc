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
