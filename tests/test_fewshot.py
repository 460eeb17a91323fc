import math

import pandas as pd
import pytest
import torch

from snipnb import fewshot, tuning
from snipnb.fewshot import FewShotRun, masks_for, run_few_shot, run_few_shot_stack, stack_key


def tiny(**kw):
    base = dict(model="simple_convnet", dataset="synthetic", k=2, epochs=2, batch_size=8, source="synthetic",
                synthetic_shape=(1, 16))
    return FewShotRun(**{**base, **kw})


def same(a: dict, b: dict) -> bool:
    """Equal results, a NaN (no validation set) equal to a NaN."""
    return pd.Series(a, dtype=object).equals(pd.Series(b, dtype=object))


def test_a_run_reports_accuracy_and_the_density_it_trained():
    result = run_few_shot(tiny(method="snip", sparsity=0.8))
    assert set(result) == {"final_acc", "best_acc", "val_acc", "test_at_best_val", "epochs_trained", "test_epochs",
                           "test_curve", "val_curve", "density", "collapsed"}
    assert result["density"] == pytest.approx(0.2, abs=1e-4)
    assert 0 <= result["final_acc"] <= result["best_acc"] <= 100


def test_a_run_repeats_exactly_on_the_cpu():
    assert same(run_few_shot(tiny(method="shuffled_snip", sparsity=0.5)),
                run_few_shot(tiny(method="shuffled_snip", sparsity=0.5)))


def test_cross_domain_snip_scores_other_images_than_labeled_snip():
    labeled, cross = masks_for(tiny(method="snip", sparsity=0.9)), masks_for(tiny(method="snip_cross_domain",
                                                                                   sparsity=0.9))
    assert set(labeled) == set(cross)
    assert not all(torch.equal(labeled[n], cross[n]) for n in labeled)
    assert sum(int(m.sum()) for m in cross.values()) == sum(int(m.sum()) for m in labeled.values())


def test_the_seed_picks_the_subset_and_the_masks():
    a, b = masks_for(tiny(method="snip", sparsity=0.9, seed=0)), masks_for(tiny(method="snip", sparsity=0.9, seed=1))
    assert not torch.equal(a["body.0.weight"], b["body.0.weight"])
    assert masks_for(tiny()) is None  # dense


@pytest.mark.parametrize("kwargs, argument", [(dict(method="snap"), "method"),
                                              (dict(method="dense", sparsity=0.5), "sparsity"),
                                              (dict(method="snip", sparsity=1.0), "sparsity"),
                                              (dict(k=0), "k"), (dict(k=101), "k"),
                                              (dict(dataset="cifar100", k=501), "k"),
                                              (dict(model="resnet1000"), "model"),
                                              (dict(dataset="imagenet"), "dataset"),
                                              (dict(source="svhn"), "source"),
                                              (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"),
                                              (dict(batch_size=0), "batch_size"),
                                              (dict(eval_every=0), "eval_every"),
                                              (dict(val_per_class=0), "val_per_class"),
                                              (dict(val_per_class=5, k=96), "k"),  # 100 per class, 5 held out
                                              (dict(min_steps=-1), "min_steps"),
                                              (dict(evaluations=0), "evaluations")])
def test_bad_runs_are_rejected_when_made(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        tiny(**kwargs)


def test_a_stack_of_runs_gives_what_the_runs_give_one_by_one():
    # A few-shot grid cell: dense, two sparsities of SNIP and shuffled SNIP, two seeds.
    cell = [tiny(seed=s, method=m, sparsity=sp, augment=False) for s in (0, 1)
            for m, sp in (("dense", 0.0), ("snip", 0.5), ("snip", 0.8), ("shuffled_snip", 0.8))]
    stacked = run_few_shot_stack(cell)
    alone = run_few_shot_stack(cell, stacked=False)
    for a, b in zip(stacked, alone):
        assert a["density"] == b["density"] and a["collapsed"] == b["collapsed"]
        assert a["final_acc"] == pytest.approx(b["final_acc"], abs=1.0)  # a borderline image or two
    assert same(run_few_shot(cell[1]), alone[1])


def test_saliency_is_scored_once_per_network_and_reused_across_sparsities(monkeypatch):
    from snipnb import experiment

    calls = []
    original = experiment.method_scores
    monkeypatch.setattr(experiment, "method_scores", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    cell = [tiny(seed=0, method=m, sparsity=sp, epochs=1)
            for m, sp in (("snip", 0.5), ("snip", 0.8), ("shuffled_snip", 0.8), ("random", 0.5), ("random", 0.9))]
    run_few_shot_stack(cell)
    assert sorted(calls) == ["random", "snip"]


def test_a_stack_refuses_runs_that_differ_in_what_it_shares():
    with pytest.raises(ValueError, match="'k'"):
        run_few_shot_stack([tiny(k=2), tiny(k=3)])
    with pytest.raises(ValueError, match="'epochs'"):
        run_few_shot_stack([tiny(), tiny(epochs=3, seed=1)])
    assert stack_key(tiny(seed=0, method="snip", sparsity=0.5)) == stack_key(tiny(seed=3))


def test_batchnorm_mode_while_scoring_is_a_setting_of_the_run():
    eval_masks = masks_for(tiny(method="snip", sparsity=0.9))
    train_masks = masks_for(tiny(method="snip", sparsity=0.9, bn_mode="train"))
    assert not all(torch.equal(eval_masks[n], train_masks[n]) for n in eval_masks)
    # In one stack the two modes are scored apart, not served from one cache entry.
    both = run_few_shot_stack([tiny(method="snip", sparsity=0.9, epochs=1),
                               tiny(method="snip", sparsity=0.9, epochs=1, bn_mode="train")])
    assert len(both) == 2
    with pytest.raises(ValueError, match="bn_mode"):
        tiny(bn_mode="frozen")


def test_a_stack_of_one_run_is_the_run_trained_alone(monkeypatch):
    # On the CPU the chapters run stacks of one (a vmapped stack is slower there): such a run trains
    # with `fit`, exactly the run `run_few_shot` makes.
    import snipnb.fewshot

    def no_stack(*args, **kwargs):
        raise AssertionError("a lone run went through fit_stack")

    monkeypatch.setattr(snipnb.fewshot, "fit_stack", no_stack)
    run = tiny(method="snip", sparsity=0.5, augment=False)
    assert same(run_few_shot_stack([run])[0], run_few_shot(run))


# --- validation, the steps floor and the curves ----------------------------------------------------

def rows(images):
    return {tuple(image.flatten().tolist()) for image in images.images}


def test_the_validation_set_is_the_same_for_every_run_and_disjoint_from_every_k_shot_subset():
    first = None
    for seed in range(3):
        subsets = {}
        for k in (1, 2, 5):
            for method, sparsity in (("dense", 0.0), ("snip_cross_domain", 0.9)):
                subset, val, _ = fewshot.splits(tiny(k=k, seed=seed, method=method, sparsity=sparsity,
                                                     val_per_class=10))
                assert torch.bincount(val.labels).tolist() == [10] * 10
                assert not rows(val) & rows(subset), (seed, k)
                assert torch.bincount(subset.labels).tolist() == [k] * 10
                first = val if first is None else first
                assert torch.equal(val.images, first.images)  # one validation set for every seed, k, method
                subsets[k] = rows(subset)
        assert subsets[1] < subsets[2] < subsets[5]  # nested across k, as without validation
    assert fewshot.splits(tiny())[1] is None


def test_epochs_for_puts_a_floor_in_optimiser_steps_under_a_run():
    # MNIST at batch 32: k = 1 is 10 images, one step an epoch, so 300 steps need 300 epochs; k = 20 is
    # 200 images, 7 steps an epoch, 43 epochs; without a floor, or where epochs already suffice, epochs.
    assert [fewshot.epochs_for(k, 10, 30, 300) for k in (1, 2, 5, 10, 20)] == [300, 300, 150, 75, 43]
    assert fewshot.epochs_for(1, 10, 30) == 30 and fewshot.epochs_for(20, 10, 60, 300) == 60
    assert fewshot.epochs_for(5, 100, 30, 300, batch_size=32) == 30  # 500 images, 16 steps an epoch
    with pytest.raises(ValueError, match="min_steps"):
        fewshot.epochs_for(1, 10, 30, -1)


def test_a_run_trains_to_its_steps_floor_and_spreads_its_tests_over_it():
    # 2 images of 10 classes at batch 8: 3 steps an epoch, so 20 steps take 7 epochs.
    run = tiny(epochs=2, min_steps=20, evaluations=3, val_per_class=10)
    result = run_few_shot(run)
    assert fewshot.trained_epochs(run) == result["epochs_trained"] == 7
    assert result["test_epochs"] == [3, 5, 7]  # the last test is after the last epoch trained
    stacked = run_few_shot_stack([run, tiny(epochs=2, min_steps=20, evaluations=3, val_per_class=10, seed=1)])
    assert [r["test_epochs"] for r in stacked] == [[3, 5, 7]] * 2


def test_a_run_records_both_curves_and_the_test_accuracy_at_the_checkpoint_validation_chose():
    result = run_few_shot(tiny(epochs=4, eval_every=1, val_per_class=10, method="snip", sparsity=0.5))
    assert len(result["test_curve"]) == len(result["val_curve"]) == len(result["test_epochs"]) == 4
    chosen = max(range(4), key=lambda i: (result["val_curve"][i], -i))  # the first best on ties
    assert result["test_at_best_val"] == result["test_curve"][chosen]
    assert result["val_acc"] == result["val_curve"][-1] and result["final_acc"] == result["test_curve"][-1]
    assert result["best_acc"] == max(result["test_curve"])
    without = run_few_shot(tiny(epochs=2))
    assert without["val_curve"] == [] and math.isnan(without["test_at_best_val"]) and math.isnan(without["val_acc"])


def test_the_learning_rate_search_runs_dense_on_its_own_seeds_and_reads_only_validation():
    runs = fewshot.lr_grid([0.1, 0.01], ["simple_convnet"], [1, 2], tuning.search_seeds(2), dataset="synthetic",
                           val_per_class=10)
    assert len(runs) == 2 * 2 * 2 and {r.method for r in runs} == {"dense"}
    assert {r.seed for r in runs} == {tuning.SEARCH_SEED_BASE, tuning.SEARCH_SEED_BASE + 1}
    assert {r.lr for r in runs} == {0.01, 0.1}
    # However many seeds a grid has, none is a search's: a search's winner is never a compared run.
    compared = fewshot.grid(["simple_convnet"], [1], [0.9], ["snip"], 50, dataset="synthetic", val_per_class=10)
    assert not {r.seed for r in compared} & {r.seed for r in runs}
    with pytest.raises(ValueError, match="reach 10000"):
        fewshot.grid(["simple_convnet"], [1], [0.9], ["snip"], tuning.SEARCH_SEED_BASE + 1, dataset="synthetic")
    with pytest.raises(ValueError, match="below 10000"):
        fewshot.lr_grid([0.1], ["simple_convnet"], [1], range(5, 7), dataset="synthetic", val_per_class=10)
    with pytest.raises(ValueError, match="val_per_class"):
        fewshot.lr_grid([0.1], ["simple_convnet"], [1], tuning.search_seeds(1), dataset="synthetic")
    results = pd.DataFrame([dict(lr=r.lr, model=r.model, k=r.k, seed=r.seed, val_acc=50.0 + 10 * (r.lr == 0.01),
                                 final_acc=90.0 * (r.lr == 0.1), test_at_best_val=90.0 * (r.lr == 0.1)) for r in runs])
    lr, table = fewshot.select_lr(results)
    assert lr == 0.01 and table.loc[0.01, "all"] == 60 and list(table.columns) == ["k = 1", "k = 2", "all"]
    with pytest.raises(ValueError, match="validation"):
        fewshot.select_lr(results.assign(val_acc=math.nan))
