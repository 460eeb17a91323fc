import pandas as pd
import pytest

from snipnb import tuning


def test_best_takes_the_highest_mean_and_the_smaller_rate_on_a_tie():
    assert tuning.best(pd.Series({0.1: 60.0, 0.01: 70.0, 0.05: 65.0})) == 0.01
    # Listed largest first, the tie still goes to the smaller rate: a flat curve never pushes outwards.
    assert tuning.best(pd.Series({0.2: 70.0, 0.05: 70.0, 0.1: 50.0})) == 0.05
    with pytest.raises(ValueError, match="every candidate"):
        tuning.best(pd.Series({0.1: float("nan"), 0.2: 50.0}))
    with pytest.raises(ValueError, match="every candidate"):
        tuning.best(pd.Series(dtype=float))


def test_past_edge_steps_one_grid_step_beyond_the_edge_the_choice_sits_at():
    assert tuning.past_edge([0.05, 0.1, 0.2], 0.2) == 0.4
    assert tuning.past_edge([0.2, 0.05, 0.1], 0.05) == 0.025
    assert tuning.past_edge([0.1, 0.3, 1.0], 1.0) == 3.3  # the step of the outermost pair, two digits
    assert tuning.past_edge([0.01, 0.05, 0.1], 0.01) == 0.002
    assert tuning.past_edge([0.05, 0.1, 0.2], 0.1) is None  # inside: bracketed
    assert tuning.past_edge([0.1], 0.1) is None  # one candidate: no step to take
    assert tuning.at_edge([0.05, 0.1, 0.2], 0.05) and not tuning.at_edge([0.05, 0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="not among"):
        tuning.past_edge([0.05, 0.1], 0.3)
