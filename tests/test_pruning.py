import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snipnb import models
from snipnb.pruning import (apply_masks, load_pruned, mask_overlap, masks_from_scores, masks_from_state_dict, masks_of,
                            prunable, remove_masks, scores, shuffle_masks, sparsity_report, weight)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def batches(n=2, size=8, seed=0, features=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def small_cnn(seed=0):
    return models.build("simple_convnet", num_classes=4, in_channels=1, image_size=16, seed=seed)


def image_batches(n=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 16, 16, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def test_prunable_is_conv_and_linear_weights_only():
    names = prunable(small_cnn())
    assert names == [f"body.{i}.weight" for i in (0, 4, 8, 12)] + ["head.weight"]


def test_snip_sums_signed_gradients_before_the_absolute_value():
    model, data = tiny_mlp(), batches(n=2)
    got = scores(model, data, "snip")
    # By hand: gradient of the summed batch-mean losses, times the weight, then |.|.
    model.zero_grad()
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            torch.testing.assert_close(got[name], (p.grad * p).abs())
    # Taking |.| per batch and adding would give something else: the order matters.
    per_batch = [scores(model, [b], "snip") for b in data]
    assert not torch.allclose(got["0.weight"], per_batch[0]["0.weight"] + per_batch[1]["0.weight"])


def test_scores_are_float32_with_autocast_off():
    model, data = tiny_mlp(), batches()
    plain = scores(model, data, "snip")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = scores(model, data, "snip")
    for name in plain:
        assert inside[name].dtype == torch.float32
        torch.testing.assert_close(inside[name], plain[name])


def test_bn_mode_is_explicit_and_model_state_is_restored():
    model, data = small_cnn(), image_batches()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eval_scores = scores(model, data, "snip")  # default: eval-mode BatchNorm
    train_scores = scores(model, data, "snip", bn_mode="train")
    assert model.training
    for k, v in model.state_dict().items():  # running statistics were not updated by scoring
        assert torch.equal(v, before[k]), k
    assert not torch.allclose(eval_scores["body.4.weight"], train_scores["body.4.weight"])


def test_max_batches_limits_the_data_seen():
    model, data = tiny_mlp(), batches(n=3)
    torch.testing.assert_close(scores(model, data, max_batches=2)["0.weight"],
                               scores(model, data[:2])["0.weight"])


def test_pseudo_labels_equal_labeled_snip_on_the_models_own_predictions():
    model, data = tiny_mlp(), batches()
    with torch.no_grad():
        own = [(x, model(x).argmax(1)) for x, _ in data]
    free = scores(model, data, objective="pseudo_labels")
    labeled = scores(model, own, objective="labels")
    for name in labeled:
        torch.testing.assert_close(free[name], labeled[name])


def test_rotation_objective_scores_the_body_but_not_the_class_head():
    model, data = small_cnn(), image_batches()
    a = scores(model, data, objective="rotation", seed=1)
    b = scores(model, data, objective="rotation", seed=1)
    assert "head.weight" not in a
    assert set(a) == set(prunable(model)) - {"head.weight"}
    assert all(torch.equal(a[n], b[n]) for n in a)  # the auxiliary head comes from the seed
    assert all(a[n].sum() > 0 for n in a)


def test_fisher_is_the_mean_of_squared_per_sample_gradients():
    model, data = tiny_mlp(), batches(n=2, size=5)
    got = scores(model, data, "fisher")
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n.endswith("weight")}
    count = 0
    for x, y in data:
        for xi, yi in zip(x, y):
            model.zero_grad()
            F.cross_entropy(model(xi[None]), yi[None]).backward()
            for n in expected:
                expected[n] += dict(model.named_parameters())[n].grad ** 2
            count += 1
    for n in expected:
        torch.testing.assert_close(got[n], expected[n] / count)
    # The square of the batch-mean gradient is a different (and wrong) quantity.
    model.zero_grad()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    assert not torch.allclose(got["0.weight"], model[0].weight.grad ** 2)


def test_sampled_fisher_depends_on_the_seed_only():
    model, data = tiny_mlp(), batches()
    a = scores(model, data, "fisher", fisher_labels="sampled", seed=3)
    b = scores(model, data, "fisher", fisher_labels="sampled", seed=3)
    c = scores(model, data, "fisher", fisher_labels="sampled", seed=4)
    assert torch.equal(a["0.weight"], b["0.weight"])
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_magnitude_and_random_scores():
    model = tiny_mlp()
    mag = scores(model, method="magnitude")
    torch.testing.assert_close(mag["0.weight"], model[0].weight.abs())
    r1, r2 = scores(model, method="random", seed=5), scores(model, method="random", seed=5)
    assert torch.equal(r1["2.weight"], r2["2.weight"])
    assert not torch.equal(r1["2.weight"], scores(model, method="random", seed=6)["2.weight"])


@pytest.mark.parametrize("kwargs, argument", [
    (dict(method="snap"), "method"),
    (dict(objective="clusters"), "objective"),
    (dict(bn_mode="frozen"), "bn_mode"),
    (dict(params=["nope.weight"]), "params"),
])
def test_scores_reject_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        scores(tiny_mlp(), batches(), **kwargs)


def test_scores_reject_empty_batches():
    with pytest.raises(ValueError, match="batches"):
        scores(tiny_mlp(), [], "snip")
    with pytest.raises(ValueError, match="batches"):
        scores(tiny_mlp(), iter([]), "fisher")
    with pytest.raises(ValueError, match="batches"):
        scores(tiny_mlp(), None, "snip")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_global_masks_keep_exactly_the_top_fraction(sparsity):
    g = torch.Generator().manual_seed(0)
    s = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(37, generator=g) * 3}
    masks = masks_from_scores(s, sparsity)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == max(1, round((1 - sparsity) * 137))
    # Every kept score beats every pruned one: it is the top of the pooled scores.
    flat_s = torch.cat([s["a"].flatten(), s["b"]])
    flat_m = torch.cat([masks["a"].flatten(), masks["b"]])
    if sparsity > 0:
        assert flat_s[flat_m].min() > flat_s[~flat_m].max()


def test_layerwise_masks_keep_the_fraction_in_every_layer():
    g = torch.Generator().manual_seed(0)
    s = {"a": torch.rand(10, 10, generator=g), "b": 10 + torch.rand(40, generator=g)}
    masks = masks_from_scores(s, 0.75, scope="layerwise")
    assert int(masks["a"].sum()) == 25 and int(masks["b"].sum()) == 10
    global_masks = masks_from_scores(s, 0.75)  # globally, the 35 kept all come from the larger "b"
    assert int(global_masks["b"].sum()) == 35 and not global_masks["a"].any()


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_masks_reject_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        masks_from_scores({"a": torch.rand(4)}, sparsity)


def test_masks_reject_bad_scope_empty_and_nan():
    with pytest.raises(ValueError, match="scope"):
        masks_from_scores({"a": torch.rand(4)}, 0.5, scope="channel")
    with pytest.raises(ValueError, match="scores"):
        masks_from_scores({}, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        masks_from_scores({"a": torch.tensor([1.0, float("nan")])}, 0.5)


def test_shuffle_keeps_each_layers_density_and_moves_the_weights():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(20, 20, generator=g) < 0.1, "b": torch.rand(50, generator=g) < 0.7}
    shuffled = shuffle_masks(masks, seed=1)
    for n in masks:
        assert int(shuffled[n].sum()) == int(masks[n].sum())
        assert shuffled[n].shape == masks[n].shape
    assert not torch.equal(shuffled["a"], masks["a"])
    assert torch.equal(shuffle_masks(masks, seed=1)["a"], shuffled["a"])


def test_apply_masks_rejects_unknown_names_and_wrong_shapes():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="masks"):
        apply_masks(model, {"9.weight": torch.ones(5, 6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"0.weight": torch.ones(6, 5, dtype=torch.bool)})


def _plain_loop(model, optimizer, steps, seed=0, features=None, classes=3):
    """A training loop a user writes, calling nothing from snipnb."""
    g = torch.Generator().manual_seed(seed)
    shape = features or (6,)
    for _ in range(steps):
        x, y = torch.randn(32, *shape, generator=g), torch.randint(0, classes, (32,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _pruned_nonzero(model, masks):
    return sum(int(torch.count_nonzero(weight(model, n).detach()[~m])) for n, m in masks.items())


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
], ids=["adam_l2", "adamw", "sgd_nesterov"])
def test_masks_hold_in_any_training_loop(make_optimizer):
    # The regression: a plain Adam loop used to revive ~217k of a 90%-pruned LeNet's pruned weights.
    model = models.build("lenet300_100", 3, seed=0)
    masks = masks_from_scores(scores(model, None, "random", seed=1), 0.9)
    apply_masks(model, masks)
    before = {n: weight(model, n).detach().clone() for n in masks}
    _plain_loop(model, make_optimizer(model.parameters()), steps=150, features=(1, 28, 28))
    assert _pruned_nonzero(model, masks) == 0
    for n, m in masks.items():  # the kept weights did train
        assert not torch.equal(weight(model, n).detach()[m], before[n][m]), n
    # And the forward pass computes with exactly those weights: a dense copy with the masked
    # weights baked in gives the same outputs.
    x = torch.randn(4, 1, 28, 28)
    baked = remove_masks(copy.deepcopy(model))
    assert not masks_of(baked) and _pruned_nonzero(baked, masks) == 0
    torch.testing.assert_close(baked(x), model(x))


def test_masked_gradients_are_zero_where_pruned():
    model, data = tiny_mlp(), batches(n=1)
    masks = masks_from_scores(scores(model, data), 0.7)
    apply_masks(model, masks)
    x, y = data[0]
    F.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        if name.endswith("original"):
            mask = masks[name.replace("parametrizations.", "").replace(".original", "")]
            assert torch.all(param.grad[~mask] == 0) and torch.any(param.grad[mask] != 0)


def test_a_pruned_checkpoint_loads_into_a_fresh_model_in_one_call(tmp_path):
    model = small_cnn(seed=0)
    masks = masks_from_scores(scores(model, image_batches()), 0.9)
    apply_masks(model, masks)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(masks_from_state_dict(state)) == set(masks)
    fresh = load_pruned(small_cnn(seed=1), state)
    for name, mask in masks_of(fresh).items():
        assert torch.equal(mask, masks[name])
        assert torch.all(weight(fresh, name)[~mask] == 0)
    x = image_batches()[0][0]
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))
    # A dense checkpoint loads the same way.
    dense = small_cnn(seed=2).state_dict()
    assert not masks_of(load_pruned(small_cnn(seed=3), dense))


def test_scores_of_a_pruned_model_are_keyed_and_zero_like_the_masks():
    model, data = tiny_mlp(), batches()
    masks = masks_from_scores(scores(model, data), 0.5)
    apply_masks(model, masks)
    for method in ("snip", "magnitude", "fisher", "snip_per_sample"):
        again = scores(model, data, method)
        assert set(again) == set(masks)
        for n, m in masks.items():
            assert torch.all(again[n][~m] == 0), (method, n)


def test_scores_refuse_an_empty_batch():
    model = tiny_mlp()
    empty = [(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))]
    for method in ("snip", "fisher"):
        with pytest.raises(ValueError, match="0 images"):
            scores(model, empty, method)


def test_reapplying_masks_replaces_them():
    model = tiny_mlp()
    first = {"0.weight": torch.rand(5, 6) < 0.5}
    apply_masks(model, first)
    second = {"0.weight": torch.ones(5, 6, dtype=torch.bool)}
    apply_masks(model, second)
    assert masks_of(model)["0.weight"].all()
    assert len([b for b, _ in model.named_buffers()]) == 1


def test_sparsity_report_counts_density_and_collapse():
    model = tiny_mlp()
    apply_masks(model, {"0.weight": torch.zeros(5, 6, dtype=torch.bool),
                        "2.weight": torch.tensor([[True] * 5, [False] * 5, [True, False, False, False, False]])})
    report = sparsity_report(model)
    assert report.collapsed == ["0.weight"]
    assert report.total == 45 and report.kept == 6
    assert report.density == pytest.approx(6 / 45)
    row = report.layers.set_index("layer").loc["2.weight"]
    assert row.kept == 6 and row.nonzero == 6 and row.density == pytest.approx(0.4)


def test_unmasked_model_reports_dense():
    report = sparsity_report(tiny_mlp())
    assert report.density == 1.0 and report.collapsed == []


def test_mask_overlap_is_the_jaccard_index_over_shared_layers():
    a = {"x": torch.tensor([True, True, False, False]), "y": torch.tensor([True]), "only_a": torch.tensor([True])}
    b = {"x": torch.tensor([True, False, True, False]), "y": torch.tensor([True])}
    assert mask_overlap(a, b) == pytest.approx(2 / 4)  # kept by both: x0, y0; by either: x0, x1, x2, y0
    assert mask_overlap(a, a) == 1.0
    with pytest.raises(ValueError, match="share no layer"):
        mask_overlap({"p": a["x"]}, {"q": a["x"]})


def test_per_sample_snip_is_the_mean_of_per_sample_saliencies():
    model, data = tiny_mlp(), batches(n=1, size=4)
    got = scores(model, data, "snip_per_sample")
    x, y = data[0]
    expected = torch.zeros_like(model[0].weight)
    for xi, yi in zip(x, y):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        expected += (model[0].weight.grad * model[0].weight).abs()
    torch.testing.assert_close(got["0.weight"], expected / 4)
    # The mean of |.| is at least the |.| of the mean, which batch SNIP takes (triangle inequality).
    batch = scores(model, data, "snip")["0.weight"]
    assert torch.all(got["0.weight"] >= batch - 1e-6) and torch.any(got["0.weight"] > batch + 1e-4)
