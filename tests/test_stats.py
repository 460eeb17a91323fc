import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from snipnb import stats
from snipnb.contrasts import Contrast, check_contrasts, describe_contrast, evaluate_contrasts
from snipnb.stats import holm, paired_difference, seed_means, summarize, t_interval


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


# Declared contrasts: Holm across the family, TOST, seeds as the unit, checks before any run.

def _runs(differences, methods=("snip", "dense"), k=(1,), model="m"):
    """Results where methods[0] − methods[1] on (seed, k) is `differences[seed][k index]`; each seed has
    its own level, which pairing must remove."""
    rows = []
    for seed, per_k in enumerate(differences):
        for kk, difference in zip(k, per_k):
            level = 50.0 + 7.0 * seed + kk
            rows.append(dict(model=model, method=methods[1], seed=seed, k=kk, acc=level))
            rows.append(dict(model=model, method=methods[0], seed=seed, k=kk, acc=level + difference))
    return pd.DataFrame(rows)


def _snip_vs_dense(**fields):
    return Contrast(fields.pop("name", "snip − dense"), "acc", {"method": "snip"}, {"method": "dense"}, **fields)


def test_holm_matches_a_hand_computed_step_down_example():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1, still monotone
    # A declared contrast that could not be tested stays NaN but counts in the family.
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1])


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_seed_means_makes_one_row_per_seed_and_refuses_unnamed_repeats():
    df = pd.DataFrame(dict(seed=[0, 0, 0, 1, 1, 1], k=[1, 5, 10] * 2, acc=[1.0, 2.0, 6.0, 4.0, 4.0, 4.0]))
    out = seed_means(df, "acc", ["seed"], ["k"])
    assert out["acc"].tolist() == [3.0, 4.0] and out["cells"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="repeat a cell"):
        seed_means(df, "acc", ["seed"])  # the k's were not named: they would be averaged silently


def test_nested_ks_of_one_seed_count_once():
    # Each seed's effect is shared by its k's (same data draw, same initialisation), with a little noise.
    seed_effect = [2.0, -1.0, 1.5, 0.5, 0.8]
    noise = [[0.1, -0.1, 0.05, 0.0], [-0.05, 0.1, 0.0, -0.1], [0.0, 0.05, -0.05, 0.1],
             [0.1, 0.0, -0.1, 0.05], [-0.1, 0.05, 0.0, 0.1]]
    differences = [[e + z for z in zs] for e, zs in zip(seed_effect, noise)]
    results = _runs(differences, k=(1, 5, 10, 20))
    pooled = scipy_stats.ttest_1samp(np.ravel(differences), 0).pvalue
    assert pooled < 0.05  # 20 (seed, k) pairs taken as independent: a false "significant"
    row = evaluate_contrasts(results, [_snip_vs_dense(average_over=["k"])]).iloc[0]
    per_seed = np.mean(differences, axis=1)
    assert row.n == 5 and row["diff"] == pytest.approx(per_seed.mean())
    assert row.p == pytest.approx(scipy_stats.ttest_1samp(per_seed, 0).pvalue) and row.p > 0.05
    assert row.decision == "not detected at this power"


def test_a_seed_is_compared_on_the_ks_both_sides_have():
    results = _runs([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]], k=(1, 5))
    # Seed 0's variant at k=5 is missing: its difference is the k=1 one, not a mean over unequal sets.
    results = results[~((results.seed == 0) & (results.k == 5) & (results.method == "snip"))]
    row = evaluate_contrasts(results, [_snip_vs_dense(average_over="k")]).iloc[0]
    assert row.n == 3 and row["diff"] == pytest.approx((1.0 + 2.0 + 2.0) / 3)


def test_tost_claims_equivalence_only_inside_the_margin():
    small = [0.1, -0.1, 0.05, -0.05, 0.0, 0.08]
    results = _runs([[d] for d in small])
    wide, narrow = (evaluate_contrasts(results, [_snip_vs_dense(kind="equivalence", margin=m)]).iloc[0]
                    for m in (0.5, 0.05))
    assert wide.decision == "equivalent within ±margin" and narrow.decision == "equivalence not shown"
    # The TOST p is the larger of the two one-sided tests against ±margin.
    one_sided = (scipy_stats.ttest_1samp(small, -0.5, alternative="greater").pvalue,
                 scipy_stats.ttest_1samp(small, 0.5, alternative="less").pvalue)
    assert wide.p == pytest.approx(max(one_sided)) and wide.p_holm == wide.p
    # Alone, the decision is the (1 − 2α) interval lying inside ±margin.
    _, low, high = t_interval(small, 0.90)
    assert -0.5 < low and high < 0.5 and not (-0.05 < low and high < 0.05)
    assert wide.adjusted_low == pytest.approx(low) and wide.adjusted_high == pytest.approx(high)
    # A clear difference outside the margin is never equivalent, however tight.
    far = evaluate_contrasts(_runs([[2.0 + d] for d in small]),
                             [_snip_vs_dense(kind="equivalence", margin=0.5)]).iloc[0]
    assert far.decision == "equivalence not shown" and far.p > 0.5


def test_the_family_size_enters_the_adjustment():
    differences = [-1.0, -2.0, -0.5, -1.5, -0.3]
    p = scipy_stats.ttest_1samp(differences, 0).pvalue
    assert 0.05 / 3 < p < 0.05  # lower on its own, not once it is one of three
    results = _runs([[d] for d in differences], methods=("snip", "dense")).pipe(
        lambda r: pd.concat([r, r[r.method == "snip"].assign(method="random"),
                             r[r.method == "snip"].assign(method="magnitude")]))
    alone = evaluate_contrasts(results, [_snip_vs_dense()]).iloc[0]
    assert alone.family == 1 and alone.p_holm == pytest.approx(p) and alone.decision == "lower"
    assert alone.adjusted_level == pytest.approx(0.95) and alone.adjusted_low == pytest.approx(alone.ci_low)
    family = [_snip_vs_dense()] + [Contrast(f"{m} − dense", "acc", {"method": m}, {"method": "dense"})
                                   for m in ("random", "magnitude")]
    three = evaluate_contrasts(results, family)
    assert (three.family == 3).all() and three.p_holm.tolist() == pytest.approx([3 * p] * 3)
    assert (three.decision == "not detected at this power").all()
    assert three.adjusted_level.iloc[0] == pytest.approx(1 - 0.05 / 3)
    assert three.adjusted_low.iloc[0] < alone.ci_low and three.detectable.iloc[0] > alone.detectable


def _grid():
    @dataclasses.dataclass(frozen=True)
    class Run:
        model: str
        method: str
        sparsity: float
        seed: int
        k: int = 1

    return [Run(model, method, sparsity, seed, k) for model in ("a", "b") for seed in range(3) for k in (1, 5)
            for method, sparsity in (("dense", 0.0), ("snip", 0.5), ("snip", 0.9))]


def test_a_contrast_naming_what_the_grid_lacks_is_refused_before_any_run():
    good = Contrast("snip − dense at 0.9", "acc", {"method": "snip", "sparsity": 0.9}, {"method": "dense"},
                    within={"model": "a"}, average_over=["k"])
    check_contrasts([good], _grid())  # no error
    typo = Contrast("snip − dense at 0.95", "acc", {"method": "snip", "sparsity": 0.95}, {"method": "dense"},
                    average_over=["k"])
    with pytest.raises(ValueError) as error:
        check_contrasts([good, typo], _grid())
    message = str(error.value)
    assert "'snip − dense at 0.95'" in message and "sparsity=0.95" in message and "[0.0, 0.5, 0.9]" in message
    assert message.count("\ncontrast '") == 1  # the good contrast is not blamed
    no_column = Contrast("x", "acc", {"method": "snip"}, {"method": "dense"}, within={"dataset": "mnist"},
                         average_over=["k"])
    with pytest.raises(ValueError, match="contrast 'x': no column 'dataset'"):
        check_contrasts([no_column], _grid())
    # The results table is checked the same way when the contrasts are evaluated.
    results = pd.DataFrame([{**dataclasses.asdict(r), "acc": 1.0} for r in _grid()])
    with pytest.raises(ValueError, match=r"sparsity=0.95, which the table lacks; sparsity has \[0.0, 0.5, 0.9\]"):
        evaluate_contrasts(results, [typo])


def test_check_contrasts_refuses_a_grid_the_test_could_not_use():
    grid = _grid()
    # k not named: two runs per seed on each side, and the test would have to guess between them.
    with pytest.raises(ValueError, match=r"2 variant runs share \{'seed': 0\}.*differ: \['k'\]"):
        check_contrasts([Contrast("c", "acc", {"method": "snip", "sparsity": 0.9}, {"method": "dense"},
                                  within={"model": "a"})], grid)
    one_seed = [r for r in grid if r.seed == 0]
    with pytest.raises(ValueError, match="at least 2"):
        check_contrasts([Contrast("c", "acc", {"method": "snip", "sparsity": 0.9}, {"method": "dense"},
                                  within={"model": "a"}, average_over="k")], one_seed)
    overlap = Contrast("o", "acc", {"model": "a"}, {"method": "dense"}, average_over="k")
    with pytest.raises(ValueError, match="both variant and baseline"):
        check_contrasts([overlap], grid)
    twice = Contrast("c", "acc", {"method": "snip", "sparsity": 0.9}, {"method": "dense"}, within={"model": "a"},
                     average_over="k")
    with pytest.raises(ValueError, match="declared twice"):
        check_contrasts([twice, twice], grid)


def test_a_contrast_is_refused_when_its_declaration_is_inconsistent():
    with pytest.raises(ValueError, match="margin must be a number"):
        Contrast("e", "acc", {"method": "snip"}, {"method": "dense"}, kind="equivalence")
    with pytest.raises(ValueError, match="margin is for kind='equivalence'"):
        Contrast("d", "acc", {"method": "snip"}, {"method": "dense"}, margin=0.5)
    with pytest.raises(ValueError, match="needs its source"):
        Contrast("d", "acc", {"method": "snip"}, {"method": "dense"}, published=-0.1)
    with pytest.raises(ValueError, match="'model' is in within and in variant"):
        Contrast("d", "acc", {"method": "snip", "model": "a"}, {"method": "dense"}, within={"model": "a"})
    with pytest.raises(ValueError, match="kind must be one of"):
        Contrast("d", "acc", {"method": "snip"}, {"method": "dense"}, kind="superiority")


def test_describe_contrast_words_each_decision_and_never_claims_equality_untested():
    results = pd.concat([_runs([[-2.0 + d] for d in (0.1, -0.1, 0.2, 0.0, -0.2)]),
                         _runs([[d] for d in (0.1, -0.1, 0.05, -0.05, 0.0)], methods=("shuffled", "dense")),
                         _runs([[d] for d in (3.0, -2.0, 1.0, -1.5, 0.5)], methods=("random", "dense"))])
    results = results.drop_duplicates(["method", "seed"])
    family = [_snip_vs_dense(published=-1.5, source="Lee et al. 2019"),
              Contrast("shuffled − dense", "acc", {"method": "shuffled"}, {"method": "dense"},
                       kind="equivalence", margin=0.5),
              Contrast("random − dense", "acc", {"method": "random"}, {"method": "dense"})]
    lower, equivalent, unknown = (describe_contrast(row) for _, row in evaluate_contrasts(results, family).iterrows())
    assert lower.startswith("snip − dense: -2.00 points (95% CI") and lower.endswith(
        "Holm-adjusted p < 0.001, 3 contrasts): lower; published: -1.50 points (Lee et al. 2019)")
    assert "family-adjusted 98.33% CI" in lower
    assert "TOST, Holm-adjusted p" in equivalent and equivalent.endswith(": equivalent within ±0.50 points")
    assert ": not detected at this power (would detect about ±" in unknown
    for text in (lower, equivalent, unknown):
        assert "no difference" not in text and "match" not in text


def test_verdict_labels_what_was_not_declared_as_exploratory():
    from snipnb.stats import EXPLORATORY, verdict

    row = dict(diff=-2.0, ci_low=-3.0, ci_high=-1.0, n=5, detectable=1.0)
    assert verdict(row, exploratory=True) == f"{verdict(row)} ({EXPLORATORY})"
    assert "exploratory" not in verdict(row) and "not corrected for multiplicity" in EXPLORATORY


def test_a_declared_contrasts_uncorrected_interval_points_to_its_test_and_is_never_also_exploratory():
    from snipnb.stats import DECLARED_ELSEWHERE, verdict

    row = dict(diff=-2.0, ci_low=-3.0, ci_high=-1.0, n=5, detectable=1.0)
    assert verdict(row, declared=True) == f"{verdict(row)} {DECLARED_ELSEWHERE}"
    assert "Holm" in DECLARED_ELSEWHERE
    with pytest.raises(ValueError, match="either exploratory or declared"):
        verdict(row, exploratory=True, declared=True)


def test_a_difference_can_be_tested_against_a_published_value_and_for_equivalence_to_it():
    from snipnb.contrasts import Contrast, describe_contrast, evaluate_contrasts

    # Our gap is about +1.0 on every seed; the published one is +0.7 (and +1.0 for the second check).
    rows = []
    for seed, noise in enumerate([0.02, -0.03, 0.01, 0.04, -0.02]):
        rows += [dict(seed=seed, method="dense", error=2.0), dict(seed=seed, method="snip", error=3.0 + noise)]
    results = pd.DataFrame(rows)
    differs = Contrast("gap vs the paper's", "error", {"method": "snip"}, {"method": "dense"}, around=0.7,
                       published=0.7, source="Lee et al. 2019, Table 1")
    agrees = Contrast("gap equivalent to +1.0", "error", {"method": "snip"}, {"method": "dense"},
                      kind="equivalence", margin=0.2, around=1.0)
    far = Contrast("gap equivalent to +0.7", "error", {"method": "snip"}, {"method": "dense"},
                   kind="equivalence", margin=0.2, around=0.7)
    tested = evaluate_contrasts(results, [differs, agrees, far]).set_index("contrast")
    assert tested.loc["gap vs the paper's", "decision"] == "higher"
    assert tested.loc["gap equivalent to +1.0", "decision"] == "equivalent within ±margin"
    assert tested.loc["gap equivalent to +0.7", "decision"] == "equivalence not shown"
    text = describe_contrast(tested.reset_index().iloc[0])
    assert "higher than +0.70" in text and "published: +0.70 points (Lee et al. 2019, Table 1)" in text
    assert "equivalent within ±0.20 points to +1.00" in describe_contrast(tested.reset_index().iloc[1])


def test_a_chapters_findings_carry_the_tested_numbers_beside_their_sentences():
    import json

    from snipnb.contrasts import Contrast, evaluate_contrasts
    from snipnb.report import FINDINGS_MIME, Findings

    rows = [dict(seed=s, method=m, acc=a) for s, (d, v) in enumerate([(50, 52), (51, 52.5), (49, 51), (50, 53)])
            for m, a in (("dense", d), ("snip", v))]
    tested = evaluate_contrasts(pd.DataFrame(rows), [Contrast("SNIP − dense", "acc", {"method": "snip"},
                                                              {"method": "dense"})])
    bundle = Findings(tested, "MNIST, simple_convnet")._repr_mimebundle_()
    assert bundle["text/markdown"].startswith("- SNIP − dense: +2.12 points")
    data = json.loads(json.dumps(bundle[FINDINGS_MIME]))  # plain JSON: no numpy types, no NaN
    row = data["contrasts"][0]
    assert data["setting"] == "MNIST, simple_convnet" and row["n"] == 4 and row["decision"] == "higher"
    assert row["diff"] == pytest.approx(2.125) and row["published"] is None and row["family"] == 1


def test_findings_with_a_title_are_one_block_quote_headed_by_it():
    from snipnb.contrasts import Contrast, evaluate_contrasts
    from snipnb.report import Findings

    rows = [dict(seed=s, method=m, acc=a) for s, (d, v) in enumerate([(50, 52), (51, 52.5), (49, 51)])
            for m, a in (("dense", d), ("snip", v))]
    tested = evaluate_contrasts(pd.DataFrame(rows), [Contrast("SNIP − dense", "acc", {"method": "snip"},
                                                              {"method": "dense"})])
    lines = Findings(tested, "MNIST", lead="One contrast:", title="Answer").markdown.split("\n")
    assert lines[0] == "> **Answer.** One contrast:" and lines[1] == ">"
    assert lines[2].startswith("> - SNIP − dense: +1.83 points") and len(lines) == 3
    assert Findings(tested, "MNIST").markdown.startswith("- SNIP − dense")  # no title: the plain list


def test_a_chapters_answer_tests_its_declared_contrasts_only_once_all_their_runs_are_in():
    from snipnb.report import Findings, answer

    rows = [dict(id=f"{m}{s}", seed=s, method=m, acc=a) for s, (d, v) in enumerate([(50, 52), (51, 52.5), (49, 51)])
            for m, a in (("dense", d), ("snip", v))]
    results = pd.DataFrame(rows)
    declared = [Contrast("SNIP − dense", "acc", {"method": "snip"}, {"method": "dense"})]
    # One shard's results: two of the six runs missing, so no test on a part of the seeds.
    partial = answer(results.iloc[:4], declared, setting="MNIST", needed=set(results.id))
    assert "No findings yet" in partial.data and "2 of the 6 runs" in partial.data
    # All runs in: tested on the needed runs only (a run outside them, here a wild seed, is not read).
    extra = pd.DataFrame([dict(id="snip9", seed=9, method="snip", acc=0.0), dict(id="dense9", seed=9, method="dense",
                                                                                 acc=99.0)])
    box = answer(pd.concat([results, extra]), declared, setting="MNIST", needed=set(results.id),
                 lead=lambda tested: f"{len(tested)} contrast on {int(tested.n.iloc[0])} seeds:")
    assert isinstance(box, Findings) and box.rows[0]["n"] == 3 and box.rows[0]["diff"] == pytest.approx(11 / 6)
    assert box.markdown.startswith("> **Answer.** 1 contrast on 3 seeds:")
    assert "nothing below is a tested finding" in answer(results, [], setting="MNIST").data


def _curves(slopes: dict, seeds=3, steps=(0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000), noise=0.0):
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(method=m, seed=s, iteration=i, value=50 + slope * i + noise * rng.standard_normal())
                         for m, slope in slopes.items() for s in range(seeds) for i in steps])


def test_late_gain_is_the_rise_over_the_last_part_of_each_curve():
    gains = stats.late_gain(_curves({"rising": 0.01, "flat": 0.0, "falling": -0.02}, noise=0.1), "method")
    by_method = gains.set_index("method")
    # from iteration 700 to 1000: 300 steps at the slope, up to the noise
    assert by_method.loc["rising", "gain"] == pytest.approx(3.0, abs=0.3)
    assert by_method.loc["falling", "gain"] == pytest.approx(-6.0, abs=0.3)
    assert list(by_method.reading) == ["still rising", "no change detected at this power", "falling"]
    assert (by_method.start == 700).all() and (by_method.end == 1000).all() and (by_method.n == 3).all()


def test_late_gain_takes_the_latest_step_before_the_cut():
    # checkpoints every 300: with fraction 0.3 of 900 the cut is 630, so the gain runs from 600
    gains = stats.late_gain(_curves({"a": 0.01}, steps=(0, 300, 600, 900)), "method")
    assert (gains.start[0], gains.end[0]) == (600, 900)
    assert gains.gain[0] == pytest.approx(3.0)


def test_late_gain_keeps_the_type_of_every_column_it_groups_by():
    curves = _curves({"a": 0.01, "b": 0.0}).assign(epochs=lambda d: d.method.map({"a": 8, "b": 50}))
    gains = stats.late_gain(curves, ["method", "epochs"])
    assert list(gains.epochs) == [8, 50] and gains.epochs.dtype.kind == "i"  # not the strings '8' and '50'


def test_late_gain_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="fraction"):
        stats.late_gain(_curves({"a": 0.0}), "method", fraction=1.0)
    with pytest.raises(ValueError, match="at least two points"):
        stats.late_gain(_curves({"a": 0.0}, steps=(100,)), "method")
    with pytest.raises(ValueError, match="repeats"):
        stats.late_gain(pd.concat([_curves({"a": 0.0}), _curves({"a": 0.0})]), "method")
    with pytest.raises(ValueError, match="no column"):
        stats.late_gain(_curves({"a": 0.0}), "model")


def test_a_curve_shows_a_late_gain_only_with_a_tested_point_before_its_last_stretch():
    assert stats.shows_late_gain([10, 20, 30])  # 10 <= 0.7 * 30
    assert stats.shows_late_gain([50, 100, 150, 200, 250, 300])
    assert not stats.shows_late_gain([30])  # one test: no gain to read
    assert not stats.shows_late_gain([25, 30])  # both inside the last 30%
    assert stats.shows_late_gain([24, 30], fraction=0.2)  # 24 <= 0.8 * 30
    assert not stats.shows_late_gain([])
    # whatever shows_late_gain accepts, late_gain can read
    curves = _curves({"a": 0.01}, steps=(700, 1000))
    assert stats.shows_late_gain([700, 1000]) and len(stats.late_gain(curves, "method")) == 1


def _finals(accuracy: dict, seeds=4):
    """Final accuracies: (variant, epochs) -> mean; each seed adds its own offset, the same at every budget,
    plus a little noise, so pairing on seeds matters."""
    rng = np.random.default_rng(1)
    return pd.DataFrame([dict(model="resnet18", variant=v, epochs=e, seed=s, val_acc=acc + 3 * s + 0.1 * rng.standard_normal())
                         for (v, e), acc in accuracy.items() for s in range(seeds)])


def test_budget_steps_pair_each_budget_with_the_next_on_the_same_seeds():
    runs = _finals({("SNOW", 60): 50, ("SNOW", 120): 58, ("SNOW", 240): 58.2, ("FT", 60): 70, ("FT", 120): 70.1})
    steps = stats.budget_steps(runs, "val_acc", [60, 120, 240])
    snow = steps[steps.variant == "SNOW"].set_index("from")
    assert list(snow.to) == [120, 240] and snow.loc[60, "diff"] == pytest.approx(8, abs=0.2)
    assert snow.loc[60, "ci_low"] > 7  # the seeds' offsets cancel in the pairs: an unpaired interval would be wide
    ft = steps[steps.variant == "FT"]
    assert list(ft["from"]) == [60] and int(ft.n.iloc[0]) == 4  # FT never trained at 240: no step touches it
    with pytest.raises(ValueError, match="increasing"):
        stats.budget_steps(runs, "val_acc", [120, 60])


def test_a_budget_settles_at_the_first_step_that_gains_nothing_detectable():
    runs = _finals({("SNOW", 60): 50, ("SNOW", 120): 58, ("SNOW", 240): 58, ("FT", 60): 70, ("FT", 120): 70,
                    ("BOIL", 60): 40, ("BOIL", 120): 45, ("FO", 60): 60, ("FO", 120): 52})
    steps = stats.budget_steps(runs, "val_acc", [60, 120, 240])
    # the ladder's rule: a step gained only where its interval lies above 0; a detected loss is no gain
    gaining = steps[stats.step_gained(steps)]
    assert sorted(zip(gaining.variant, gaining["from"])) == [("BOIL", 60), ("SNOW", 60)]
    settled = stats.settled_budgets(steps, 60).set_index("variant")
    assert settled.loc["FO", "budget"] == 60 and settled.loc["FO", "settled"]  # longer was worse: stays at 60
    assert settled.loc["SNOW", "budget"] == 120 and settled.loc["SNOW", "settled"]  # 120 -> 240 gained nothing
    assert settled.loc["FT", "budget"] == 60 and settled.loc["FT", "settled"]
    # BOIL gained at its only step and was trained no longer: still gaining at its longest budget
    assert settled.loc["BOIL", "budget"] == 120 and not settled.loc["BOIL", "settled"]
