import math

import pandas as pd
import pytest

from snipnb.stats import paired_difference, summarize, t_interval


def test_t_interval_matches_a_hand_computed_case():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * std 1 / sqrt(n)
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert math.isnan(t_interval([5.0])[1])


def test_summarize_reports_mean_std_and_count_per_group():
    df = pd.DataFrame(dict(method=["a", "a", "b"], acc=[1.0, 3.0, 5.0]))
    out = summarize(df, ["method"], "acc").set_index("method")
    assert out.loc["a", "mean"] == 2.0 and out.loc["a", "std"] == pytest.approx(math.sqrt(2))
    assert out.loc["a", "mean ± std"] == "2.00 ± 1.41" and out.loc["b", "mean ± std"] == "5.00"


def test_paired_difference_pairs_on_seed_within_each_group():
    rows = []
    for model, shift in (("m1", 0.0), ("m2", 10.0)):
        for seed, base in enumerate([50.0, 60.0, 70.0]):
            rows.append(dict(model=model, method="dense", sparsity=0.0, seed=seed, acc=base + shift))
            rows.append(dict(model=model, method="snip", sparsity=0.9, seed=seed, acc=base + shift + seed + 1))
    # A seed with no dense partner must be ignored, not compared with another seed's baseline.
    rows.append(dict(model="m1", method="snip", sparsity=0.9, seed=9, acc=0.0))
    out = paired_difference(pd.DataFrame(rows), "acc", baseline={"method": "dense"},
                            variant=["method", "sparsity"], pair_on=["seed"], group=["model"])
    assert len(out) == 2
    for _, row in out.iterrows():
        # Differences are 1, 2, 3 whatever the per-seed level: pairing removes it.
        assert row["diff"] == pytest.approx(2.0) and row.n == 3 and row.wins == 3
        assert row.ci_low == pytest.approx(2 - 4.302652729911275 / math.sqrt(3))


def test_detectable_effect_is_the_power_calculation_and_shrinks_with_more_pairs():
    from snipnb.stats import detectable_effect

    # n = 5: t_{0.975, 4} = 2.7764, t_{0.8, 4} = 0.9410; sd 2 -> (2.7764 + 0.9410) * 2 / sqrt(5)
    assert detectable_effect(2.0, 5) == pytest.approx((2.7764451 + 0.9409646) * 2 / math.sqrt(5), rel=1e-5)
    assert detectable_effect(2.0, 20) < detectable_effect(2.0, 5) < detectable_effect(2.0, 3)
    assert math.isnan(detectable_effect(2.0, 1))


def test_verdict_never_says_no_difference_when_the_interval_spans_zero():
    from snipnb.stats import verdict

    spans = dict(diff=0.3, ci_low=-0.5, ci_high=1.1, n=5, detectable=1.2)
    text = verdict(spans)
    assert "not detected at this power" in text and "±1.20" in text and "no difference" not in text
    sure = dict(diff=-2.0, ci_low=-3.0, ci_high=-1.0, n=5, detectable=1.0)
    assert "lower, and the seeds agree" in verdict(sure)


def test_report_tables_round_hide_the_bare_index_and_spell_missing_one_way():
    from snipnb.report import table

    html = table(pd.DataFrame(dict(method=["a", "b"], acc=[91.23456, float("nan")]))).to_html()
    assert "91.23" in html and "91.2346" not in html and "—" in html
    assert ">0<" not in html and ">1<" not in html  # no 0..N row labels
    labelled = table(pd.DataFrame(dict(acc=[1.0])).set_index(pd.Index(["dense"], name="method"))).to_html()
    assert "dense" in labelled


def test_an_interval_spanning_zero_reads_as_not_detected_never_as_no_difference():
    from snipnb.stats import ci_reading, format_difference

    assert ci_reading(0.1, 2.0) == "higher" and ci_reading(-2.0, -0.1) == "lower"
    assert ci_reading(-1.0, 1.0) == "not detected at this power"
    assert ci_reading(math.nan, math.nan) == "too few pairs for an interval"
    assert format_difference(1.23, -0.3, 2.71, 3) == "+1.2 [-0.3, +2.7]"
    assert format_difference(-1.0, math.nan, math.nan, 1) == "-1.0 (n=1)"
