import pytest
import torch

from snipnb import data, models
from snipnb.experiment import METHODS, make_masks, prune_and_fit, saliency_batches
from snipnb.plots import kept_inputs


@pytest.fixture(scope="module")
def tiny():
    kw = dict(num_classes=4, channels=1, image_size=12, per_class=20, test_per_class=10)
    return data.synthetic(True, **kw), data.synthetic(False, **kw)


def lenet(seed=0):
    return models.build("lenet300_100", 4, in_channels=1, image_size=12, seed=seed)


def test_saliency_batch_is_one_balanced_normalised_batch(tiny):
    train, _ = tiny
    [(x, y)] = saliency_batches(train, per_class=3, seed=0)
    assert x.shape == (12, 1, 12, 12) and torch.bincount(y).tolist() == [3, 3, 3, 3]
    assert abs(float(x.mean())) < 0.5  # normalised, not raw 0..255 pixels


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
def test_every_method_keeps_the_requested_fraction(tiny, method):
    train, _ = tiny
    masks = make_masks(lenet(), method, 0.9, saliency_batches(train, 2, 0), seed=0)
    kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    if method == "snip_rotation":  # the class head is not scored and stays out of the budget
        assert "head.weight" not in masks
    assert kept == round(0.1 * total)


def test_shuffled_snip_has_snips_layer_budget_not_its_positions(tiny):
    train, _ = tiny
    batches = saliency_batches(train, 2, 0)
    snip = make_masks(lenet(), "snip", 0.95, batches, seed=0)
    shuffled = make_masks(lenet(), "shuffled_snip", 0.95, batches, seed=0)
    for name in snip:
        assert int(shuffled[name].sum()) == int(snip[name].sum())
    assert not torch.equal(shuffled["body.1.weight"], snip["body.1.weight"])


def test_cross_domain_saliency_depends_on_the_batches_given(tiny):
    train, _ = tiny
    other = data.synthetic(True, num_classes=4, channels=1, image_size=12, per_class=20, seed=5)
    own = make_masks(lenet(), "snip", 0.9, saliency_batches(train, 2, 0))
    cross = make_masks(lenet(), "snip", 0.9, saliency_batches(other, 2, 0))
    assert not torch.equal(own["body.1.weight"], cross["body.1.weight"])


def test_dense_gives_no_masks_and_unknown_methods_fail():
    assert make_masks(lenet(), "dense", 0.0) is None
    with pytest.raises(ValueError, match="method"):
        make_masks(lenet(), "snip2", 0.5)


def test_prune_and_fit_reports_the_density_it_trained(tiny):
    train, test = tiny
    row, model = prune_and_fit("lenet300_100", "snip", 0.9, 0, train, test, epochs=1, progress=False)
    assert row["density"] == pytest.approx(0.1, abs=1e-4) and row["sparsity"] == 0.9
    assert 0 <= row["final_acc"] <= 100 and row["collapsed"] == 0
    dense_row, _ = prune_and_fit("lenet300_100", "dense", 0.9, 0, train, test, epochs=1, progress=False)
    assert dense_row["density"] == 1.0 and dense_row["sparsity"] == 0.0


def test_kept_inputs_counts_connections_per_pixel():
    mask = torch.zeros(3, 2 * 2 * 2, dtype=torch.bool)
    mask[:, 0] = True  # pixel (0, 0) of channel 0 feeds all three units
    mask[0, 4 + 3] = True  # pixel (1, 1) of channel 1 feeds one unit
    assert kept_inputs(mask, (2, 2, 2)).tolist() == [[3, 0], [0, 1]]
    with pytest.raises(ValueError, match="mask"):
        kept_inputs(mask, (1, 3, 3))


def test_saliency_batch_can_be_random_as_the_official_code_takes_it(tiny):
    train, _ = tiny
    [(x, y)] = saliency_batches(train, per_class=3, seed=0, balanced=False)
    assert len(y) == 12
    [(x2, y2)] = saliency_batches(train, per_class=3, seed=0, balanced=False)
    assert torch.equal(y, y2)


def test_a_fresh_initialisation_can_train_under_the_scored_mask(tiny):
    from snipnb.experiment import build_pruned
    from snipnb.pruning import masks_of, weight

    train, _ = tiny
    scored, masks = build_pruned("lenet300_100", "snip", 0.9, 0, train)
    fresh, same = build_pruned("lenet300_100", "snip", 0.9, 0, train, train_seed=7)
    assert all(torch.equal(masks[n], same[n]) for n in masks)
    assert all(torch.equal(masks_of(fresh)[n], masks[n]) for n in masks)
    kept = masks["body.1.weight"]
    assert not torch.equal(weight(fresh, "body.1.weight")[kept], weight(scored, "body.1.weight")[kept])
