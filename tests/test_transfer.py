"""Tests for snipnb.transfer, on a ResNet-18 the tests pretrain on synthetic classes 0-4 and transfer to
the synthetic classes 5-9. Nothing is downloaded and no real dataset is read."""

import dataclasses
import functools
import math
from collections import OrderedDict

import pandas as pd
import pytest
import torch
from torch import nn

from snipnb import pretrained, transfer, tuning
from snipnb.sweep import config_id
from snipnb.train import History
from snipnb.transfer import TransferRun


@pytest.fixture(scope="module", autouse=True)
def source_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SNIPNB_CHECKPOINTS", str(folder))
        yield folder


def tiny(**kw):
    base = dict(source="synthetic:0-4", target="synthetic:5-9", image_size=32, source_epochs=1, k=2, epochs=1,
                batch_size=8, lr=0.05)
    return TransferRun(**{**base, **kw})


@pytest.mark.parametrize("train_blocks, stem", [("head", "imagenet"), ("last_block", "imagenet"),
                                               ("last_two_blocks", "imagenet"), ("last_block", "cifar")])
def test_a_transfer_run_leaves_the_frozen_blocks_bit_identical(train_blocks, stem):
    run = tiny(method="snip", sparsity=0.5, train_blocks=train_blocks, stem=stem)
    source = transfer.source_backbone(run).state_dict()
    _, model = transfer.fine_tune(run, device="cpu")
    trained = tuple(f"{block}." for block in pretrained.BLOCKS[-pretrained.TRAIN_BLOCKS[train_blocks]:])
    for key, value in model.state_dict().items():
        if not key.startswith(trained):  # weights and BatchNorm statistics of every frozen block
            assert torch.equal(value.contiguous(), source[key]), key
    changed = [k for k, v in model.state_dict().items() if k.startswith(trained) and k in source
               and k != "head.weight" and not torch.equal(v.contiguous(), source[k])]
    assert changed or train_blocks == "head"


@pytest.mark.parametrize("method", ["snip", "snip_pseudo_labels", "magnitude", "random", "shuffled_snip"])
def test_pruning_scores_only_the_trainable_weights_and_the_masks_hold_under_training(method):
    run = tiny(method=method, sparsity=0.8, train_blocks="last_block")
    subset, _ = transfer.target_data(run)
    model, masks, trained = transfer.prepare(run, subset)
    assert trained == ["body.layer4", "head"]
    assert list(masks) == pretrained.trainable_weights(model)
    assert all(name.startswith(("body.layer4.", "head.")) for name in masks)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.2, abs=1e-4)
    results, model = transfer.fine_tune(run, device="cpu")
    assert results["density"] == pytest.approx(0.2, abs=1e-4)
    for name, mask in masks.items():
        weight = model.get_submodule(name.rpartition(".")[0]).weight
        assert not weight[~mask].any(), name  # pruned weights are exactly zero after training
        assert weight[mask].abs().sum() > 0


def test_snip_scores_the_adaptation_set_it_is_given():
    run = tiny(method="snip", sparsity=0.9, train_blocks="last_block")
    subset, _ = transfer.target_data(run)
    other, _ = transfer.target_data(tiny(method="snip", sparsity=0.9, train_blocks="last_block", seed=1))
    a, b = transfer.prepare(run, subset)[1], transfer.prepare(run, other)[1]
    assert not all(torch.equal(a[n], b[n]) for n in a)


def test_adaptation_saliency_is_what_snip_ranks():
    run = tiny(method="snip", sparsity=0.5, train_blocks="last_block")
    subset, _ = transfer.target_data(run)
    saliency = transfer.adaptation_saliency(run, subset)
    model, masks, _ = transfer.prepare(run, subset)
    assert list(saliency) == list(masks)
    flat = torch.cat([s.flatten() for s in saliency.values()])
    threshold = flat.kthvalue(len(flat) // 2).values
    above = torch.cat([s.flatten() > threshold for s in saliency.values()])
    assert torch.cat([m.flatten() for m in masks.values()])[above].all()  # everything above the median is kept


def test_scratch_trains_the_same_architecture_from_a_random_start():
    run = tiny(method="scratch", train_blocks="all", bn_stats="batch")
    source = transfer.source_backbone(run)
    subset, _ = transfer.target_data(run)
    model, masks, trained = transfer.prepare(run, subset)
    assert masks is None and trained == list(pretrained.BLOCKS)
    assert model.body.stem.conv1.weight.shape == source.body.stem.conv1.weight.shape
    assert not torch.equal(model.body.stem.conv1.weight, source.body.stem.conv1.weight)
    assert torch.equal(model.body.input.mean, source.body.input.mean)


def test_a_run_reports_accuracy_density_and_what_it_trained():
    results = transfer.run_transfer(tiny(method="magnitude", sparsity=0.5, train_blocks="head"), device="cpu")
    assert set(results) == {"final_acc", "best_acc", "density", "trained_weights", "collapsed", "val_acc",
                            "best_val_acc", "test_at_best_val", "zero_score_fraction", "test_epochs", "test_curve",
                            "val_curve", "source_weights"}
    assert 0 <= results["final_acc"] <= results["best_acc"] <= 100
    # no validation set, no validation numbers; magnitude ranks by no SNIP saliency
    assert all(math.isnan(results[k]) for k in ("val_acc", "best_val_acc", "test_at_best_val",
                                                  "zero_score_fraction"))
    assert results["trained_weights"] == 512 * 5 // 2 + 5  # half the head's weights, and its bias
    assert results["collapsed"] == 0


def test_a_run_repeats_exactly_on_the_cpu():
    run = tiny(method="shuffled_snip", sparsity=0.5, train_blocks="last_block")
    first, second = transfer.run_transfer(run, device="cpu"), transfer.run_transfer(run, device="cpu")
    # NaN (no validation split here) is the one value unequal to itself: compare as pandas does.
    assert pd.Series(first).equals(pd.Series(second))


def test_a_run_names_the_weights_of_its_source_not_only_its_settings(tmp_path, monkeypatch):
    run = tiny(train_blocks="head")
    recorded = transfer.run_transfer(run, device="cpu")["source_weights"]
    source = pretrained.cached_source(*pretrained.source_key(run))
    assert recorded == pretrained.source_fingerprint(*pretrained.source_key(run))
    # the same settings pretrained again into another cache, with one weight's last bit different:
    # what a re-run on another thread count or machine can start from. The record tells them apart.
    monkeypatch.setenv("SNIPNB_CHECKPOINTS", str(tmp_path))
    pretrained.cached_source.cache_clear()
    pretrained.source_fingerprint.cache_clear()
    try:
        again = pretrained.cached_source(*pretrained.source_key(run))
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), source.state_dict().values()))
        assert transfer.run_transfer(run, device="cpu")["source_weights"] == recorded
        with torch.no_grad():
            weight = again.head.weight.view(-1)
            weight[0] = torch.nextafter(weight[0], torch.tensor(math.inf))
        pretrained.source_fingerprint.cache_clear()
        assert transfer.run_transfer(run, device="cpu")["source_weights"] != recorded
    finally:
        pretrained.cached_source.cache_clear()
        pretrained.source_fingerprint.cache_clear()


def test_the_few_shot_subsets_are_nested_and_seeded():
    one, _ = transfer.target_data(tiny(k=1))
    two, _ = transfer.target_data(tiny(k=2))
    assert len(one) == 5 and len(two) == 10 and one.num_classes == 5
    rows = {tuple(image.flatten().tolist()) for image in two.images}
    assert all(tuple(image.flatten().tolist()) in rows for image in one.images)
    assert set(one.mean) == {0.0} and set(one.std) == {1.0}  # pixels reach the backbone in [0, 1]


def test_a_test_sample_is_class_balanced_and_the_same_for_every_run():
    _, full = transfer.target_data(tiny())
    _, a = transfer.target_data(tiny(test_per_class=7, seed=0))
    _, b = transfer.target_data(tiny(test_per_class=7, seed=1, k=1))
    assert torch.bincount(a.labels).tolist() == [7] * 5 and torch.equal(a.images, b.images)
    assert len(full) == 250
    with pytest.raises(ValueError, match="test_per_class=51"):
        transfer.target_data(tiny(test_per_class=51))
    with pytest.raises(ValueError, match="test_per_class=51"):
        transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], [0.5], ["snip"], ["head"], seeds=1,
                      image_size=32, test_per_class=51)


def test_grid_pairs_every_method_with_dense_and_scratch_on_the_same_seeds():
    runs = transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1, 2], [0.5, 0.9], ["snip", "random"],
                         ["head", "last_block"], seeds=2, reference_blocks=["all"], scratch_lr=0.1, image_size=32)
    assert len(runs) == 2 * 2 * (2 * (1 + 2 * 2) + 1 + 1)
    assert {(r.method, r.train_blocks) for r in runs if r.train_blocks == "all"} == {("dense", "all"),
                                                                                    ("scratch", "all")}
    scratch = [r for r in runs if r.method == "scratch"]
    assert len(scratch) == 4 and all(r.lr == 0.1 and r.train_blocks == "all" and r.bn_stats == "batch"
                                     for r in scratch)
    assert {r.lr for r in runs if r.method != "scratch"} == {TransferRun.lr}


def test_a_grid_with_a_source_per_seed_pairs_each_seed_with_its_own_source_everywhere():
    grid = functools.partial(transfer.grid, "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1, 2], [0.5], ["snip"],
                             ["last_block"], 3, image_size=32)
    assert {r.source_seed for r in grid()} == {0}  # by default one source
    runs = grid(source_per_seed=True)
    assert len(runs) == len(grid()) and all(r.source_seed == r.seed for r in runs)
    # The search runs on its own seeds from tuning.SEARCH_SEED_BASE: each needs a source of its own, which no grid
    # run uses.
    search = transfer.lr_grid([0.01, 0.1], "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], ["last_block"], 2,
                              image_size=32, val_per_class=5, source_per_seed=True)
    base = tuning.SEARCH_SEED_BASE
    assert {(r.seed, r.source_seed) for r in search} == {(base, base), (base + 1, base + 1)}
    assert not {r.source_seed for r in search} & {r.source_seed for r in runs}
    curve = transfer.curve_runs(runs, [1, 2], 1, 2)
    assert curve and all(r.source_seed == r.seed for r in curve)
    # The budget check on the seeds after a search's: each seed names its own source, and is one configuration's seed.
    curve = transfer.curve_runs(runs, [1, 2], 1, 2, first_seed=1)
    assert {(r.seed, r.source_seed) for r in curve} == {(1, 1), (2, 2)}
    with pytest.raises(ValueError, match="ImageNet weights are one source"):
        transfer.grid("imagenet", "synthetic:5-9", ["resnet18"], [1], [0.5], ["snip"], ["head"], 1, image_size=32,
                      source_per_seed=True)
    with pytest.raises(ValueError, match="source_seed=3 names one for every run"):
        grid(source_per_seed=True, source_seed=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="imagenet21k"), "source='imagenet21k'"),
    (dict(target="omniglot"), "target='omniglot'"),
    (dict(target="synthetic:5-x"), "target='synthetic:5-x'"),
    (dict(train_blocks="layer3"), "train_blocks must be one of"),
    (dict(image_size=28), "image_size must be an int >= 32"),
    (dict(model="vgg11"), "model must be one of"),
    (dict(method="snap"), "method must be one of"),
    (dict(method="dense", sparsity=0.5), "sparsity must be 0"),
    (dict(method="snip", sparsity=1.0), r"sparsity must be in \[0, 1\)"),
    (dict(method="scratch", train_blocks="head", bn_stats="batch"), "method='scratch' needs train_blocks='all'"),
    (dict(method="scratch", train_blocks="all"), "method='scratch' needs .* bn_stats='batch'"),
    (dict(bn_stats="running"), "bn_stats must be one of"),
    (dict(k=0), "k must be a positive int"),
    (dict(stem="resnet"), "stem must be one of"),
    (dict(source="imagenet", stem="cifar"), "stem='cifar' needs a source the project pretrains"),
    (dict(stem="cifar", image_size=4), "image_size must be an int >= 8 for resnet18 with the cifar stem"),
    (dict(val_per_class=0), "val_per_class must be a positive int"),
])
def test_bad_runs_are_rejected_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_a_k_larger_than_the_smallest_target_class_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="k=101"):
        transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1, 101], [0.5], ["snip"], ["head"], seeds=1,
                      image_size=32)
    with pytest.raises(ValueError, match="scratch"):
        transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], [0.5], ["scratch"], ["head"], seeds=1,
                      image_size=32)


# --- how many SNIP scores are exactly 0 ------------------------------------------------------------

def linear_after_layer3(stem):
    """A random source whose last two residual blocks have no ReLU, so no unit of the last stage or
    of its input is dead: a SNIP score can then be 0 only where a kernel tap meets nothing but padding."""
    net = pretrained.build("resnet18", 5, in_channels=3, image_size=32, seed=0, stem=stem)
    for block in (net.body.layer3[1], *net.body.layer4):
        block.relu = nn.Identity()
    return net


def test_the_zero_score_fraction_counts_the_weights_a_one_pixel_last_stage_cannot_reach(monkeypatch):
    # ImageNet stem at 32 px: layer3 ends at 2 x 2 and layer4 at 1 x 1. layer4.0.conv1 (stride 2 on
    # 2 x 2) reaches 4 of its 9 taps; the three 3x3 convs on the 1 x 1 map reach only the centre.
    # The 1x1 shortcut conv and the head are reached everywhere.
    monkeypatch.setattr(transfer, "source_backbone", lambda run: linear_after_layer3(run.stem))
    run = tiny(method="snip", sparsity=0.5, train_blocks="last_block")
    model = linear_after_layer3("imagenet")
    pretrained.freeze(model, "last_block")
    parameters = dict(model.named_parameters())
    size = {name: parameters[name].numel() for name in pretrained.trainable_weights(model)}
    assert sorted(size) == sorted(f"body.layer4.{n}.weight" for n in ("0.conv1", "0.conv2", "0.downsample.0",
                                                                     "1.conv1", "1.conv2")) + ["head.weight"]
    silent = 5 * size["body.layer4.0.conv1.weight"] // 9 + 8 * sum(
        size[f"body.layer4.{name}.weight"] for name in ("0.conv2", "1.conv1", "1.conv2")) // 9
    expected = silent / sum(size.values())
    results = transfer.run_transfer(run, device="cpu")
    assert results["zero_score_fraction"] == expected
    shuffled = transfer.run_transfer(tiny(method="shuffled_snip", sparsity=0.5, train_blocks="last_block"),
                                     device="cpu")
    assert shuffled["zero_score_fraction"] == expected  # it ranks by the same saliency
    # The CIFAR stem at 32 px leaves the last stage a 4 x 4 map: every tap meets an image pixel.
    cifar = transfer.run_transfer(tiny(method="snip", sparsity=0.5, train_blocks="last_block", stem="cifar"),
                                  device="cpu")
    assert cifar["zero_score_fraction"] == 0


def test_zero_fraction_of_the_run_is_that_of_the_saliency_snip_ranks():
    run = tiny(method="snip", sparsity=0.5, train_blocks="last_block")
    subset, _ = transfer.target_data(run)
    saliency = transfer.adaptation_saliency(run, subset)
    zeros = sum(int((s == 0).sum()) for s in saliency.values())
    assert transfer.zero_fraction(saliency) == zeros / sum(s.numel() for s in saliency.values())
    assert transfer.run_transfer(run, device="cpu")["zero_score_fraction"] == transfer.zero_fraction(saliency)
    assert transfer.zero_fraction({"a": torch.tensor([0.0, 1.0, 0.0, 2.0]), "b": torch.zeros(4)}) == 6 / 8


# --- validation: held out of the training split, never the test split --------------------------------

def rows(images):
    return [tuple(image.flatten().tolist()) for image in images.images]


def test_the_validation_set_is_class_balanced_shared_by_every_run_and_disjoint_from_every_k_shot_subset():
    train = pretrained.load_split("synthetic:5-9", True)
    test = set(rows(pretrained.load_split("synthetic:5-9", False)))
    everything = set(rows(train))
    first = None
    for seed in range(3):
        for k in (1, 2, 5):
            subset, val, _ = transfer.target_splits(tiny(k=k, seed=seed, val_per_class=20))
            assert torch.bincount(val.labels).tolist() == [20] * 5
            assert set(rows(val)) <= everything and not set(rows(val)) & test  # from the training split
            assert not set(rows(val)) & set(rows(subset)), (seed, k)
            assert torch.bincount(subset.labels).tolist() == [k] * 5
            first = val if first is None else first
            assert torch.equal(val.images, first.images)  # one validation set for every seed and k
    # nested subsets still: the 1-shot set is inside the 2-shot set of the same seed
    one, two = (transfer.target_data(tiny(k=k, val_per_class=20))[0] for k in (1, 2))
    assert set(rows(one)) <= set(rows(two))
    assert transfer.target_splits(tiny())[1] is None
    with pytest.raises(ValueError, match="k=2"):  # 100 per class, 99 held out: one left for the k-shot subsets
        transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], [0.5], ["snip"], ["head"], seeds=1,
                      image_size=32, val_per_class=99)
    with pytest.raises(ValueError, match="val_per_class=101"):
        transfer.target_splits(tiny(val_per_class=101))


def test_a_run_reports_the_test_accuracy_at_the_epoch_validation_chose(monkeypatch):
    given = {}

    def fake_fit(model, train, test, epochs, **kw):
        given.update(train=train, test=test, val=kw["val"])
        return History(test_acc=[0.5, 0.9, 0.6], val_acc=[0.7, 0.2, 0.8], test_epochs=[1, 2, 3])

    monkeypatch.setattr(transfer, "fit", fake_fit)
    results = transfer.run_transfer(tiny(val_per_class=10, train_blocks="all"), device="cpu")
    subset, val, test = transfer.target_splits(tiny(val_per_class=10))
    assert torch.equal(given["val"].images, val.images) and torch.equal(given["test"].images, test.images)
    assert results["best_acc"] == 90 and results["final_acc"] == 60  # the best test is chosen on test
    assert results["test_at_best_val"] == 60 and results["val_acc"] == 80 and results["best_val_acc"] == 80


def test_select_lr_reads_the_validation_accuracy_and_never_the_test_accuracy():
    # Test says 0.1, validation says 0.01: validation wins.
    results = pd.DataFrame(dict(lr=[0.01, 0.01, 0.1, 0.1], model="resnet18", train_blocks="last_block", k=[1, 5, 1, 5],
                                seed=0, val_acc=[60.0, 80.0, 50.0, 70.0], final_acc=[10.0, 10.0, 90.0, 90.0],
                                best_acc=[10.0, 10.0, 90.0, 90.0], test_at_best_val=[10.0, 10.0, 90.0, 90.0]))
    lr, table = transfer.select_lr(results)
    assert lr == 0.01 and table.loc[0.01, "all"] == 70 and table.loc[0.1, "resnet18 last_block, k = 5"] == 70
    tied = results.assign(val_acc=[60.0, 80.0, 80.0, 60.0])
    assert transfer.select_lr(tied)[0] == 0.01  # a tie goes to the smaller rate
    with pytest.raises(ValueError, match="validation set"):
        transfer.select_lr(results.assign(val_acc=math.nan))
    with pytest.raises(ValueError, match="same runs"):
        transfer.select_lr(results.iloc[:3])


def test_a_grid_runs_its_seeds_from_first_seed_on_and_refuses_a_negative_one_or_a_searchs():
    grid = functools.partial(transfer.grid, "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], [0.5], ["snip"],
                             ["last_block"], 2, image_size=32)
    assert {r.seed for r in grid()} == {0, 1}
    later = grid(first_seed=5)
    assert {r.seed for r in later} == {5, 6} and len(later) == len(grid())
    assert [dataclasses.replace(r, seed=0) for r in later if r.seed == 5] == [r for r in grid() if r.seed == 0]
    with pytest.raises(ValueError, match="first_seed"):
        grid(first_seed=-1)
    # A grid's seeds stop below the searches' and a search's start there: no search run is ever a grid run.
    assert {r.seed for r in grid(first_seed=tuning.SEARCH_SEED_BASE - 2)} == {9_998, 9_999}
    with pytest.raises(ValueError, match="reach 10000"):
        grid(first_seed=tuning.SEARCH_SEED_BASE - 1)
    search = functools.partial(transfer.lr_grid, [0.1], "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1],
                               ["last_block"], 2, image_size=32, val_per_class=5)
    assert {r.seed for r in search()} == {10_000, 10_001}
    with pytest.raises(ValueError, match="below 10000"):
        search(first_seed=tuning.SEARCH_SEED_BASE - 1)
    with pytest.raises(ValueError, match="below 10000"):
        transfer.baseline_lr_grids({transfer.PRUNED: [0.1]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1],
                                   ["last_block"], [], 2, scratch=False, image_size=32, val_per_class=5, first_seed=2)


def test_each_baseline_is_searched_at_its_own_rates_and_runs_at_the_rate_chosen_for_it():
    lrs = {transfer.PRUNED: [0.01, 0.05], "all": [0.001, 0.01], "head": [0.1], "scratch": [0.05, 0.2]}
    searches = transfer.baseline_lr_grids(lrs, "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1, 2],
                                          ["last_block"], ["head", "all"], 2, image_size=32, val_per_class=5)
    kinds = {key: {(r.method, r.train_blocks, r.lr) for r in runs} for key, runs in searches.items()}
    assert kinds == {transfer.PRUNED: {("dense", "last_block", 0.01), ("dense", "last_block", 0.05)},
                     "all": {("dense", "all", 0.001), ("dense", "all", 0.01)}, "head": {("dense", "head", 0.1)},
                     "scratch": {("scratch", "all", 0.05), ("scratch", "all", 0.2)}}
    assert all(len(runs) == len(lrs[key]) * 2 * 2 for key, runs in searches.items())  # every (k, seed) at each rate
    # Every baseline's search on the search seeds, none a grid's; first_seed moves them within the search's range.
    base = tuning.SEARCH_SEED_BASE
    assert {key: {r.seed for r in runs} for key, runs in searches.items()} == {key: {base, base + 1} for key in lrs}
    after = transfer.baseline_lr_grids(lrs, "synthetic:0-4", "synthetic:5-9", ["resnet18"], [1, 2], ["last_block"],
                                       ["head", "all"], 2, image_size=32, val_per_class=5, first_seed=base + 3)
    assert {key: {r.seed for r in runs} for key, runs in after.items()} == {key: {base + 3, base + 4} for key in lrs}
    assert {key: len(runs) for key, runs in after.items()} == {key: len(runs) for key, runs in searches.items()}
    # The sweep's results, one table, split back: the dense 'all' runs and scratch's (also on 'all') apart.
    everything = [r for runs in searches.values() for r in runs]
    results = pd.DataFrame([{**vars(r), "id": config_id(r), "val_acc": 100 * r.lr}
                            for r in everything]).sample(frac=1, random_state=0)
    seen = {}

    def select(part):  # each search's rate from its own runs only
        seen[len(seen)] = len(part)
        return transfer.select_lr(part)

    chosen, _ = tuning.search_on_validation(searches, lambda runs: results, select)
    assert sorted(seen.values()) == sorted(len(runs) for runs in searches.values())
    assert chosen == {transfer.PRUNED: 0.05, "all": 0.01, "head": 0.1, "scratch": 0.2}
    with pytest.raises(ValueError, match=r"tried has no rates for \['scratch'\]"):
        transfer.baseline_lr_grids({k: v for k, v in lrs.items() if k != "scratch"}, "synthetic:0-4", "synthetic:5-9",
                                   ["resnet18"], [1], ["last_block"], ["head", "all"], 1, image_size=32,
                                   val_per_class=5)
    # The grid runs each reference at its own rate, scratch at its own, everything else at the shared one.
    runs = transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], [0.9], ["snip"], ["last_block"], 1,
                         reference_blocks=["head", "all"], scratch_lr=0.2, reference_lrs={"all": 0.001},
                         lr=0.05, image_size=32)
    assert {(r.method, r.train_blocks, r.lr) for r in runs} == {
        ("dense", "last_block", 0.05), ("snip", "last_block", 0.05), ("dense", "head", 0.05),
        ("dense", "all", 0.001), ("scratch", "all", 0.2)}
    with pytest.raises(ValueError, match=r"reference_lrs names \['layer4'\], which are not among reference_blocks"):
        transfer.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [1], [0.9], ["snip"], ["last_block"], 1,
                      reference_blocks=["all"], reference_lrs={"layer4": 0.1}, image_size=32)


def test_the_learning_rate_search_is_blind_to_the_test_split(monkeypatch):
    settings = dict(image_size=32, source_epochs=1, epochs=1, batch_size=8, val_per_class=10)
    runs = transfer.lr_grid([0.5, 0.01], "synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["head"], seeds=1,
                            **settings)
    assert sorted((r.lr, r.method, r.train_blocks) for r in runs) == [(0.01, "dense", "head"), (0.5, "dense", "head")]
    honest = pd.DataFrame([{**vars(r), **transfer.run_transfer(r, device="cpu")} for r in runs])
    # The same search with the test split's labels scrambled: the test accuracies move, the choice does not.
    # Every test image is labelled class 0, so that even a network that still answers one class for
    # everything (20% on balanced labels, whatever their order) scores otherwise.
    load_split = pretrained.load_split

    def scrambled(spec, train):
        split = load_split(spec, train)
        return split if train else dataclasses.replace(split, labels=torch.zeros_like(split.labels))

    monkeypatch.setattr(pretrained, "load_split", scrambled)
    blind = pd.DataFrame([{**vars(r), **transfer.run_transfer(r, device="cpu")} for r in runs])
    assert not blind.final_acc.equals(honest.final_acc)
    assert blind.val_acc.equals(honest.val_acc)
    assert transfer.select_lr(blind)[0] == transfer.select_lr(honest)[0]
    pd.testing.assert_frame_equal(transfer.select_lr(blind)[1], transfer.select_lr(honest)[1])
    with pytest.raises(ValueError, match="needs val_per_class"):
        transfer.lr_grid([0.1], "synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["head"], seeds=1, image_size=32)


@pytest.mark.parametrize("train_blocks", ["head", "last_block", "last_two_blocks"])
def test_a_run_that_trains_its_last_blocks_gets_the_numbers_of_the_whole_network(train_blocks, monkeypatch):
    # (a small lr: at larger ones these 1-epoch synthetic sources blow up, through the whole network too)
    run = tiny(method="snip", sparsity=0.5, train_blocks=train_blocks, val_per_class=10, epochs=2, k=5, lr=0.002)
    assert transfer.runs_frozen_stages_once(run)
    once, once_model = transfer.fine_tune(run, device="cpu")
    monkeypatch.setattr(transfer, "runs_frozen_stages_once", lambda run: False)
    every_step, every_step_model = transfer.fine_tune(run, device="cpu")
    for key in ("final_acc", "best_acc", "val_acc", "best_val_acc", "test_at_best_val", "density", "trained_weights",
                "zero_score_fraction"):
        assert once[key] == pytest.approx(every_step[key], abs=1e-9), key
    # The stages are back in the returned model, and the two trained the same weights.
    assert not isinstance(once_model.body.layer1, nn.Identity)
    reference = every_step_model.state_dict()
    for key, value in once_model.state_dict().items():
        assert torch.allclose(value.float(), reference[key].float(), atol=1e-4), key
        assert not value.float().isnan().any(), key
    _, _, test = transfer.target_splits(run)
    x = test.images[:16].float() / 255
    assert torch.allclose(once_model.eval()(x), every_step_model.eval()(x), atol=1e-4)


def test_the_frozen_stages_see_a_test_set_once_per_process(monkeypatch):
    calls = []
    real = transfer.frozen.features
    # (passes of one image measure what an image's outputs take, against frozen.STORED_BYTES_PER_SPLIT)
    monkeypatch.setattr(transfer.frozen, "features", lambda prefix, data, *a, **kw: (len(data) > 1 and calls.append(
                        len(data))) or real(prefix, data, *a, **kw))
    monkeypatch.setattr(transfer.frozen, "_KEPT_OUTPUTS", OrderedDict())
    for seed in (0, 1):
        transfer.run_transfer(tiny(train_blocks="last_block", seed=seed, test_per_class=20), device="cpu")
    assert calls == [100, 10, 10]  # the test sample once, then each seed's own 2-shot subset
    transfer.run_transfer(tiny(train_blocks="all", seed=2, test_per_class=20), device="cpu")
    assert len(calls) == 3  # a run training every stage runs the whole network


def test_a_run_records_its_learning_curves_and_curves_lays_them_out_one_row_per_epoch():
    run = tiny(epochs=3, eval_every=2, val_per_class=5, lr=0.002)
    results, _ = transfer.fine_tune(run, device="cpu")
    assert results["test_epochs"] == [2, 3]  # every eval_every, and the last
    assert results["test_curve"][-1] == results["final_acc"] and results["val_curve"][-1] == results["val_acc"]
    assert max(results["test_curve"]) == results["best_acc"]
    table = pd.DataFrame([{"seed": 0, **results}, {"seed": 1, **results, "test_curve": [10.0, 20.0]}])
    long = transfer.curves(table)
    assert list(zip(long.seed, long.epoch, long.acc)) == [
        (0, 2, results["test_curve"][0]), (0, 3, results["test_curve"][1]), (1, 2, 10.0), (1, 3, 20.0)]
    assert transfer.curves(table, "val").acc.tolist() == results["val_curve"] * 2
    with pytest.raises(ValueError, match="no val accuracy"):
        transfer.curves(table.assign(val_curve=[[], []]), "val")
    with pytest.raises(ValueError, match="recorded before"):
        transfer.curves(table.drop(columns=["test_curve"]))


def test_curve_runs_trains_the_first_seeds_once_per_budget_and_tests_them_often():
    runs = [tiny(seed=s, method=m, sparsity=0.9 if m == "snip" else 0.0) for s in range(4) for m in ("dense", "snip")]
    longer = transfer.curve_runs(runs + runs[:2], [1, 4], eval_every=2, seeds=2)
    assert sorted((r.epochs, r.seed, r.method) for r in longer) == sorted(
        (e, s, m) for e in (1, 4) for s in (0, 1) for m in ("dense", "snip"))  # the repeated runs once
    assert {r.eval_every for r in longer} == {2}
    with pytest.raises(ValueError, match="epochs"):
        transfer.curve_runs(runs, [], eval_every=2, seeds=2)
    with pytest.raises(ValueError, match="eval_every"):
        transfer.curve_runs(runs, [4], eval_every=0, seeds=2)


def test_curve_runs_leave_out_a_searchs_seeds_and_refuse_a_configuration_short_of_seeds():
    runs = [tiny(seed=s, method=m, sparsity=0.9 if m == "snip" else 0.0) for s in range(4) for m in ("dense", "snip")]
    later = transfer.curve_runs(runs, [1, 4], eval_every=2, seeds=2, first_seed=2)
    assert {r.seed for r in later} == {2, 3} and len(later) == 2 * 2 * 2
    with pytest.raises(ValueError, match=r"needs seeds \[2, 3, 4\].*resnet18 dense on last_block, k = 2, lacks \[4\]"):
        transfer.curve_runs(runs, [4], eval_every=2, seeds=3, first_seed=2)
    # Seeds counted per configuration: SNIP's seed 3 missing is refused though dense has it.
    with pytest.raises(ValueError, match=r"resnet18 snip at sparsity 0.9 on last_block, k = 2, lacks \[3\]"):
        transfer.curve_runs([r for r in runs if (r.method, r.seed) != ("snip", 3)], [4], eval_every=2, seeds=2,
                            first_seed=2)
    with pytest.raises(ValueError, match="first_seed"):
        transfer.curve_runs(runs, [4], eval_every=2, seeds=2, first_seed=-1)


def _curve_results(val_rise: dict, test_rise: dict, seeds=3, ks=(1, 5), epochs=(3, 6, 9, 10)):
    """One row per (method, seed, k) run as fine_tune records it: validation and test curves that rise
    by the given points per epoch, each seed and k a little apart."""
    rows = []
    for method in val_rise:
        for seed in range(seeds):
            for k in ks:
                offset = 10 * seed + k
                val = [offset + val_rise[method] * (1 + 0.1 * seed) * e for e in epochs]
                test = [offset + test_rise[method] * e for e in epochs]
                rows.append(dict(method=method, seed=seed, k=k, epochs=epochs[-1], test_epochs=list(epochs),
                                 val_curve=val, test_curve=test, val_acc=val[-1], final_acc=test[-1]))
    return pd.DataFrame(rows)


def test_late_gains_read_the_validation_curves_averaged_over_k_within_a_seed():
    results = _curve_results({"rising": 1.0, "flat": 0.0}, {"rising": 0.0, "flat": 2.0})
    gains = transfer.late_gains(results, "method").set_index("method")
    # The last 30% of 10 epochs starts at the test at or before epoch 7: epoch 6. On validation only.
    assert gains.loc["rising", "start"] == 6 and gains.loc["rising", "end"] == 10
    assert gains.loc["rising", "gain"] == pytest.approx(4 * 1.1)  # 4 epochs x the mean rise over seeds 0-2
    assert gains.loc["rising", "reading"] == "still rising" and gains.loc["rising", "n"] == 3  # seeds, not runs
    assert gains.loc["flat", "gain"] == 0 and gains.loc["flat", "reading"] != "still rising"  # its test rose
    with pytest.raises(ValueError, match="repeat a cell"):
        transfer.late_gains(results, [])  # the two methods' runs would be averaged into one curve
    with pytest.raises(ValueError, match="no val accuracy"):
        transfer.late_gains(results.assign(val_curve=[[]] * len(results)), "method")
    uneven = results.copy()
    uneven.loc[0, "test_epochs"], uneven.loc[0, "val_curve"] = [5, 10], [1.0, 2.0]
    uneven.loc[0, "test_curve"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="different epochs"):
        transfer.late_gains(uneven, "method")


def test_budget_gains_read_final_validation_accuracy_paired_on_seeds():
    short = _curve_results({"dense": 0.0}, {"dense": 0.0}, epochs=(5, 10))
    longer = short.assign(epochs=20, val_acc=short.val_acc + 2 + short.k, final_acc=short.final_acc - 5)
    gains = transfer.budget_gains(pd.concat([short, longer]), 10, ["method"])
    assert len(gains) == 1 and gains.epochs.iloc[0] == 20
    assert gains["diff"].iloc[0] == pytest.approx(2 + 3) and gains.n.iloc[0] == 3  # k = 1 and 5 averaged per seed
    with pytest.raises(ValueError, match="val_per_class"):
        transfer.budget_gains(pd.concat([short, longer]).assign(val_acc=math.nan), 10, ["method"])


def test_budget_gains_refuse_budgets_that_hold_different_runs():
    # Every run gains exactly 1 point at 20 epochs; k = 5 reads 40 points above k = 1 at either budget.
    short = _curve_results({"dense": 0.0, "snip": 0.0}, {"dense": 0.0, "snip": 0.0}, epochs=(5, 10))
    short = short.assign(val_acc=10.0 * short.k)
    longer = short.assign(epochs=20, val_acc=short.val_acc + 1)
    gains = transfer.budget_gains(pd.concat([short, longer]), 10, ["method"])
    assert list(gains["diff"]) == pytest.approx([1.0, 1.0])
    # A sharded sweep that lacks seed 0's k = 5 run at 10 epochs: seed 0's mean there is k = 1's alone, and the
    # gain of seed 0 would read 21 points, not 1. Refused, naming the group, the budget and the missing run.
    incomplete = pd.concat([short[~((short.seed == 0) & (short.k == 5) & (short.method == "snip"))], longer])
    with pytest.raises(ValueError, match=r"\{'method': 'snip'\}.*10 epochs lacks \[\(0, 5\)\].*incomplete"):
        transfer.budget_gains(incomplete, 10, ["method"])
    # A seed missing at one budget only is refused too (it would drop out of one side of the pairs).
    with pytest.raises(ValueError, match=r"20 epochs lacks \[\(2, 1\), \(2, 5\)\]"):
        transfer.budget_gains(pd.concat([short, longer[longer.seed != 2]]), 10, ["method"])
