"""How chapters word what they show."""

import pytest

from snipnb.report import seed_span


@pytest.mark.parametrize("seeds, said", [([2], "seed 2"), (range(3), "seeds 0 to 2"),
                                         ([5, 0, 2, 2], "seeds 0, 2 and 5"), (range(5, 7), "seeds 5 to 6")])
def test_seeds_are_said_as_a_span_where_consecutive(seeds, said):
    assert seed_span(seeds) == said


def test_no_seeds_is_refused():
    with pytest.raises(ValueError, match="no seeds"):
        seed_span([])


def test_the_late_gain_table_names_its_columns_and_steps_in_words():
    import pandas as pd

    from snipnb.report import late_gain_table

    late = pd.DataFrame([dict(method="snip", start=700, end=1000, gain=1.5, ci_low=0.5, ci_high=2.5, n=5,
                              reading="still rising")])
    shown = late_gain_table(late, "method", "it.")
    assert list(shown.columns) == ["from it.", "to it.", "gain (points)", "95% CI low", "95% CI high", "seeds",
                                   "reading"]
    assert shown.loc["snip", "from it."] == 700
