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
