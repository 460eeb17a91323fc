"""Tests for snipnb.transfer, on a ResNet-18 the tests pretrain on synthetic classes 0-4 and transfer to
the synthetic classes 5-9. Nothing is downloaded and no real dataset is read."""

import pytest
import torch

from snipnb import pretrained, transfer
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


@pytest.mark.parametrize("train_blocks", ["head", "last_block", "last_two_blocks"])
def test_a_transfer_run_leaves_the_frozen_blocks_bit_identical(train_blocks):
    run = tiny(method="snip", sparsity=0.5, train_blocks=train_blocks)
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
    assert set(results) == {"final_acc", "best_acc", "density", "trained_weights", "collapsed"}
    assert 0 <= results["final_acc"] <= results["best_acc"] <= 100
    assert results["trained_weights"] == 512 * 5 // 2 + 5  # half the head's weights, and its bias
    assert results["collapsed"] == 0


def test_a_run_repeats_exactly_on_the_cpu():
    run = tiny(method="shuffled_snip", sparsity=0.5, train_blocks="last_block")
    assert transfer.run_transfer(run, device="cpu") == transfer.run_transfer(run, device="cpu")


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
