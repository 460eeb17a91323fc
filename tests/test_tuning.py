import math

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


def test_widen_steps_outwards_until_the_choice_is_bracketed_and_reruns_nothing_it_has():
    peak = {"snow": 0.4, "fo": 0.01}  # validation accuracy falls away from each key's peak
    asked = []

    def choose(tried):
        asked.append({key: list(rates) for key, rates in tried.items()})
        chosen = {key: min(rates, key=lambda lr: (abs(math.log(lr / peak[key])), lr)) for key, rates in tried.items()}
        return chosen, len(asked)

    chosen, calls, tried, edges = tuning.widen({"snow": [0.05, 0.1, 0.2], "fo": [0.1, 0.3, 1.0]}, choose, 2)
    assert chosen == {"snow": 0.4, "fo": 0.011} and calls == 3
    assert tried == {"snow": [0.05, 0.1, 0.2, 0.4, 0.8], "fo": [0.011, 0.033, 0.1, 0.3, 1.0]}
    assert edges == ["fo"]  # 0.011 is still the smallest tried after two extensions: a bound, said so
    assert asked[1] == {"snow": [0.05, 0.1, 0.2, 0.4], "fo": [0.033, 0.1, 0.3, 1.0]}
    # No extensions: one choice, and the edge is reported, not hidden.
    chosen, _, tried, edges = tuning.widen({"snow": [0.05, 0.2]}, choose, 0)
    assert chosen == {"snow": 0.2} and tried == {"snow": [0.05, 0.2]} and edges == ["snow"]
    with pytest.raises(ValueError, match="extensions"):
        tuning.widen({"snow": [0.1, 0.2]}, choose, -1)
