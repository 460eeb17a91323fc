import dataclasses
import math

import pandas as pd
import pytest

from snipnb import tuning
from snipnb.sweep import config_id


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


def test_widen_shared_widens_one_grid_for_every_key_when_any_choice_sits_at_its_edge():
    # Chapter 03's case: EWC peaks inside the starting grid, the random control beyond its top and the
    # uniform control below its bottom. Every key must meet every value any key needed.
    peak = {"ewc": 0.1, "ewc_random": 500.0, "ewc_uniform": 0.0003}
    asked = []

    def choose(grid):
        asked.append(list(grid))
        chosen = {key: min(grid, key=lambda lam: (abs(math.log(lam / p)), lam)) for key, p in peak.items()}
        return chosen, len(asked)

    chosen, calls, grid, edges = tuning.widen_shared([0.001, 0.01, 0.1, 1.0, 10.0], choose, 2)
    # Both edges step out at once, for all keys; the random control's peak is met by every key.
    assert asked[1] == [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    assert grid == [0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] and calls == 3
    assert chosen == {"ewc": 0.1, "ewc_random": 1000.0, "ewc_uniform": 0.0001}
    assert edges == ["ewc_random"]  # still at the top after two extensions: a bound, said so
    # Bracketed from the start: one choice, nothing widened.
    chosen, calls, grid, edges = tuning.widen_shared([0.01, 0.1, 1.0], lambda g: ({"ewc": 0.1}, "once"), 2)
    assert (chosen, calls, grid, edges) == ({"ewc": 0.1}, "once", [0.01, 0.1, 1.0], [])
    with pytest.raises(ValueError, match="extensions"):
        tuning.widen_shared([0.1, 1.0], choose, -1)


def test_select_lr_compares_rates_over_the_same_cells_not_only_as_many():
    # Each rate has two runs, but 0.1 ran seed 2 where 0.01 ran seed 1: its mean is over another run.
    results = pd.DataFrame(dict(lr=[0.01, 0.01, 0.1, 0.1], k=1, seed=[0, 1, 0, 2], val_acc=[60.0, 80.0, 70.0, 75.0]))
    alone = r"same runs.*rate 0.01 alone has \[\(1, 1\)\] and rate 0.1 alone has \[\(1, 2\)\]"
    with pytest.raises(ValueError, match=alone):
        tuning.select_lr(results, ["k"], str)
    # A cell run twice at one rate and missing at another is refused too, though the counts match.
    doubled = results.assign(seed=[0, 1, 0, 0])
    with pytest.raises(ValueError, match="same runs"):
        tuning.select_lr(doubled, ["k"], str)
    # The same cells in another order: chosen on the mean validation accuracy.
    same = results.assign(seed=[1, 0, 0, 1])
    lr, table = tuning.select_lr(same, ["k"], str)
    assert lr == 0.1 and table.loc[0.1, "all"] == 72.5 and list(table.columns) == ["1", "all"]


def test_a_search_runs_on_seeds_of_its_own_that_no_grid_reaches():
    assert tuning.search_seeds(2) == range(tuning.SEARCH_SEED_BASE, tuning.SEARCH_SEED_BASE + 2)
    assert tuning.SEARCH_SEED_BASE == 10_000  # chapters 01, 02 and 05's searches: changing it re-runs every search
    with pytest.raises(ValueError, match="lr_seeds must be >= 1"):
        tuning.search_seeds(0)
    # A grid may take every seed below the base, none at it.
    tuning.check_grid_seeds(tuning.SEARCH_SEED_BASE)
    tuning.check_grid_seeds(2, first_seed=tuning.SEARCH_SEED_BASE - 2)
    with pytest.raises(ValueError, match="reach 10000"):
        tuning.check_grid_seeds(tuning.SEARCH_SEED_BASE + 1)
    with pytest.raises(ValueError, match="reach 10000"):
        tuning.check_grid_seeds(2, first_seed=tuning.SEARCH_SEED_BASE - 1)
    with pytest.raises(ValueError, match="first_seed must be >= 0"):
        tuning.check_grid_seeds(2, first_seed=-1)
    # A search takes no seed below it, however few.
    assert tuning.check_search_seeds(tuning.search_seeds(2)) == [10_000, 10_001]
    with pytest.raises(ValueError, match="below 10000"):
        tuning.check_search_seeds([tuning.SEARCH_SEED_BASE - 1, tuning.SEARCH_SEED_BASE])
    with pytest.raises(ValueError, match="at least one seed"):
        tuning.check_search_seeds([])


@dataclasses.dataclass(frozen=True)
class _Run:
    model: str
    lr: float
    seed: int


def _searches():
    """Two models' searches; resnet's validation accuracy peaks at 0.1, vgg's at 0.01."""
    return {model: [_Run(model, lr, seed) for lr in (0.01, 0.1) for seed in tuning.search_seeds(2)]
            for model in ("resnet", "vgg")}


def _records(runs):
    peak = {"resnet": 0.1, "vgg": 0.01}
    return pd.DataFrame([dict(id=config_id(r), model=r.model, lr=r.lr, seed=r.seed,
                              val_acc=80.0 - 10 * (r.lr != peak[r.model]) + r.seed % 2) for r in runs])


def test_search_on_validation_chooses_each_key_on_its_own_runs_and_returns_its_table():
    searches, swept, seen = _searches(), [], {}

    def sweep(runs):
        swept.append(list(runs))
        return _records(runs)

    def select(results):
        seen[results.model.iloc[0]] = set(results.id)
        return tuning.select_lr(results, ["model"], str)

    chosen, tables = tuning.search_on_validation(searches, sweep, select, shard="0/2")
    assert swept == [searches["resnet"] + searches["vgg"]]  # one sweep of every search
    assert seen == {model: {config_id(r) for r in runs} for model, runs in searches.items()}
    assert chosen == {"resnet": 0.1, "vgg": 0.01}
    assert list(tables) == ["resnet", "vgg"]
    assert list(tables["vgg"].columns) == ["vgg", "all"] and tables["vgg"].loc[0.01, "all"] == 80.5
    assert tables["resnet"].loc[0.01, "all"] == 70.5


def test_search_on_validation_stops_when_a_sharded_sweep_returned_fewer_runs_than_asked():
    searches, selected = _searches(), []
    select = lambda results: selected.append(results) or (0.1, None)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"has 7 of its 8 runs \(shard 1/2 ran its slice\): run every shard"):
        tuning.search_on_validation(searches, lambda runs: _records(runs[1:]), select, shard="1/2")
    assert not selected  # nothing chosen on part of a search
    # As many rows as asked, but one run twice and another missing: that key's search is short.
    with pytest.raises(ValueError, match="'resnet' search has 3 of its 4 runs"):
        tuning.search_on_validation(searches, lambda runs: _records(runs[4:5] + runs[1:]), select)
