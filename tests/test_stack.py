import pytest
import torch

from snipnb import data, models
from snipnb.pruning import apply_masks, masks_from_scores, masks_of, named_weights, scores, weight
from snipnb.stack import Stack, evaluate_stack, fit_stack
from snipnb.train import evaluate, fit


@pytest.fixture(scope="module")
def sets():
    kw = dict(num_classes=4, channels=1, image_size=16, per_class=24, test_per_class=10, seed=0)
    train, test = data.synthetic(True, **kw), data.synthetic(False, **kw)
    # Three runs, each on its own 48 training images (the same size, so the same steps).
    g = torch.Generator().manual_seed(0)
    subsets = [train.subset(torch.randperm(len(train), generator=g)[:48]) for _ in range(3)]
    return subsets, test


def runs():
    """A dense run and two masked ones (two sparsities), each with its own initialisation."""
    built = [models.build("simple_convnet", 4, 1, 16, seed=s) for s in (0, 1, 2)]
    batch = [(torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(5)), torch.arange(16) % 4)]
    for model, sparsity in zip(built[1:], (0.5, 0.7)):
        apply_masks(model, masks_from_scores(scores(model, batch), sparsity))
    return built


def live_channels(model, name):
    """For a BatchNorm tensor of simple_convnet (`body.{i}.x` after the conv `body.{i-1}`), the
    channels whose filter kept a weight. BatchNorm normalises a pruned filter's constant output,
    x - mean ~ 1e-9 of rounding noise, which every implementation amplifies differently."""
    index = int(name.split(".")[1])
    mask = masks_of(model).get(f"body.{index - 1}.weight")
    if name.endswith("num_batches_tracked") or mask is None:
        return ...
    return mask.flatten(1).any(1)


def relative_error(got, expected):
    got, expected = got.detach().double(), expected.detach().double()
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


RECIPE = dict(epochs=3, lr=0.05, batch_size=16, weight_decay=5e-3, augment=True, eval_every=1, progress=False)


def test_a_stacked_run_equals_the_same_run_alone(sets):
    subsets, test = sets
    seeds = [3, 4, 5]
    # A stack computes in the contiguous layout; fit in channels_last would round differently, and on
    # 48 images rounding differences grow by an epoch's end to ~1e-4.
    # At lr 0.05 this masked network's training is chaotic: the ~1e-6 by which a grouped convolution
    # rounds otherwise than a plain one (and oneDNN by thread count) grows to ~1e-3 by the second
    # epoch. At 0.02 it still learns (the loss halves) and rounding stays rounding.
    recipe = {**RECIPE, "augment": False, "channels_last": False, "lr": 0.02}
    alone = runs()
    histories = [fit(m, t, test, seed=s, device="cpu", **recipe) for m, t, s in zip(alone, subsets, seeds)]
    stacked = runs()
    stacked_histories = fit_stack(stacked, subsets, test, seeds=seeds, device="cpu",
                                  **{k: v for k, v in recipe.items() if k != "channels_last"})
    for one, many, a, b in zip(histories, stacked_histories, alone, stacked):
        assert many.test_epochs == one.test_epochs == [1, 2, 3]
        torch.testing.assert_close(many.train_loss, one.train_loss, rtol=1e-4, atol=1e-5)
        # Accuracies may differ by a borderline test image, no more.
        assert max(abs(x - y) for x, y in zip(many.test_acc, one.test_acc)) <= 1 / len(test)
        # Relative to each tensor's norm: the first conv's gradient, a sum over every pixel, carries
        # the largest rounding differences (~1e-4 of its size after three epochs).
        batchnorms = [f"body.{i}." for i in (1, 5, 9, 13)]
        tensors = [(n, p, q) for (n, p), q in zip(named_weights(a).items(), named_weights(b).values())]
        tensors += [(n, p, dict(b.named_buffers())[n]) for n, p in a.named_buffers() if "parametrizations" not in n]
        for name, p, q in tensors:
            keep = live_channels(a, name) if any(name.startswith(bn) for bn in batchnorms) else ...
            assert relative_error(q[keep], p[keep]) < 1e-3, name
        for name, mask in masks_of(b).items():  # masks held, and were written back with the weights
            assert torch.equal(mask, masks_of(a)[name])
            assert torch.count_nonzero(weight(b, name)[~mask]) == 0


def test_stacked_runs_see_their_own_augmented_batches(sets):
    # With crops, the zero padding makes flat regions whose max-pool ties two implementations may
    # break differently, so only the first epoch is compared tightly; the batches are the same.
    subsets, test = sets
    seeds = [3, 4, 5]
    alone = [fit(m, t, None, seed=s, device="cpu", channels_last=False, **RECIPE)
             for m, t, s in zip(runs(), subsets, seeds)]
    stacked = fit_stack(runs(), subsets, None, seeds=seeds, device="cpu", **RECIPE)
    for one, many in zip(alone, stacked):
        assert many.train_loss[0] == pytest.approx(one.train_loss[0], rel=1e-5)
        assert many.train_loss == pytest.approx(one.train_loss, rel=1e-2)


def test_runs_of_a_stack_do_not_share_anything(sets):
    # The same run twice in one stack with different seeds: different batches, different results;
    # the same seed: identical results (nothing leaks from the neighbour).
    subsets, test = sets
    twins = [models.build("simple_convnet", 4, 1, 16, seed=0) for _ in range(3)]
    h = fit_stack(twins, [subsets[0]] * 3, test, seeds=[7, 7, 8], device="cpu", **RECIPE)
    assert h[0].train_loss == h[1].train_loss and h[0].train_loss != h[2].train_loss
    for p, q in zip(twins[0].parameters(), twins[1].parameters()):
        assert torch.equal(p, q)


def test_stacked_evaluation_equals_evaluate(sets):
    subsets, test = sets
    built = runs()
    from snipnb.loader import DeviceLoader

    stack = Stack(built, torch.device("cpu"))
    expected = [evaluate(m, test) for m in built]
    for one_by_one in (True, False):  # the CPU's way and the GPU's way
        got = evaluate_stack(stack, DeviceLoader(test, 7), one_by_one=one_by_one)
        assert got == pytest.approx(expected, abs=1 / len(test))


def test_a_stack_refuses_runs_that_do_not_share_a_shape(sets):
    subsets, test = sets
    other = models.build("lenet5_caffe", 4, 1, 16, seed=0)
    with pytest.raises(ValueError, match=r"models\[1\] differs"):
        fit_stack([runs()[0], other], subsets[:2], test, seeds=[0, 1], device="cpu", **RECIPE)
    with pytest.raises(ValueError, match="one size"):
        fit_stack(runs()[:2], [subsets[0], subsets[1].subset(torch.arange(40))], test, seeds=[0, 1],
                  device="cpu", **RECIPE)
    with pytest.raises(ValueError, match="one entry per run"):
        fit_stack(runs()[:2], subsets[:2], test, seeds=[0], device="cpu", **RECIPE)


def test_a_stack_too_big_for_memory_says_to_make_it_smaller(sets, monkeypatch):
    subsets, test = sets

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Stack, "forward", out_of_memory)
    with pytest.raises(MemoryError, match=r"smaller stack \(say 1\)"):
        fit_stack(runs()[:2], subsets[:2], test, seeds=[0, 1], device="cpu", **RECIPE)


def test_a_stack_tracks_validation_and_a_step_schedule_like_fit(sets):
    subsets, test = sets
    val = subsets[2].subset(torch.arange(20))
    recipe = {**RECIPE, "augment": False, "schedule": "step", "step_every": 4}
    alone = [fit(m, t, test, val=val, seed=s, device="cpu", channels_last=False, **recipe)
             for m, t, s in zip(runs()[:2], subsets[:2], (3, 4))]
    stacked = fit_stack(runs()[:2], subsets[:2], test, val=val, seeds=[3, 4], device="cpu", **recipe)
    for one, many in zip(alone, stacked):
        assert len(many.val_acc) == len(one.val_acc) == 3
        assert max(abs(a - b) for a, b in zip(many.val_acc, one.val_acc)) <= 1 / len(val)
        torch.testing.assert_close(many.train_loss, one.train_loss, rtol=1e-4, atol=1e-5)


def test_a_stack_spreads_its_tests_over_the_run_as_fit_does(sets):
    subsets, test = sets
    recipe = {**RECIPE, "epochs": 4, "evaluations": 2}
    stacked = fit_stack(runs()[:2], subsets[:2], test, val=test, seeds=[3, 4], device="cpu", **recipe)
    alone = fit(runs()[0], subsets[0], test, val=test, seed=3, device="cpu", channels_last=False, **recipe)
    assert alone.test_epochs == [2, 4]
    assert all(h.test_epochs == [2, 4] and len(h.val_acc) == 2 for h in stacked)


def frozen_body(model):
    """A linear probe: only the head trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return model


def test_a_stack_trains_only_what_fit_trains(sets):
    # fit leaves a frozen weight alone (it gets no gradient); a stack must too, or a linear probe
    # trained as a stack would quietly fine-tune its whole body.
    subsets, test = sets
    recipe = {**RECIPE, "augment": False, "lr": 0.02}
    before = [{n: t.clone() for n, t in named_weights(m).items()} for m in map(frozen_body, runs()[:2])]
    alone = [frozen_body(m) for m in runs()[:2]]
    for m, t, s in zip(alone, subsets, (3, 4)):
        fit(m, t, test, seed=s, device="cpu", channels_last=False, **recipe)
    stacked = [frozen_body(m) for m in runs()[:2]]
    fit_stack(stacked, subsets[:2], test, seeds=[3, 4], device="cpu", **recipe)
    for initial, a, b in zip(before, alone, stacked):
        for name, p in named_weights(b).items():
            if name.startswith("head."):
                assert not torch.equal(p, initial[name]), name  # the head did train
                assert relative_error(p, named_weights(a)[name]) < 1e-3, name
            else:
                assert torch.equal(p, initial[name]) and torch.equal(named_weights(a)[name], initial[name]), name
        assert b.head.weight.requires_grad and not b.body[0].weight.requires_grad  # flags kept


def test_a_stack_keeps_frozen_batchnorm_statistics(sets):
    # A pretrained backbone fine-tuned with the source's BatchNorm statistics keeps them in eval
    # mode through every train() call; a stacked run must not update them either.
    from snipnb import pretrained

    subsets, test = sets
    built = [pretrained.build("resnet18", 4, 1, 32, seed=s) for s in (0, 1)]
    for model in built:
        pretrained.freeze(model, "last_block", bn_stats="source")
    frozen = [{n: b.clone() for n, b in m.named_buffers()} for m in built]
    weights = [{n: p.clone() for n, p in named_weights(m).items()} for m in built]
    fit_stack(built, subsets[:2], None, seeds=[0, 1], device="cpu", **{**RECIPE, "augment": False, "epochs": 1})
    for model, buffers, initial in zip(built, frozen, weights):
        for name, b in model.named_buffers():
            assert torch.equal(b, buffers[name]), name
        moved = {n for n, p in named_weights(model).items() if not torch.equal(p, initial[n])}
        assert moved and all(n.startswith(("body.layer4.", "head.")) for n in moved)


def test_a_stack_refuses_runs_that_freeze_other_weights(sets):
    subsets, test = sets
    with pytest.raises(ValueError, match=r"models\[1\] freezes other weights .*body\.0\.weight"):
        fit_stack([runs()[0], frozen_body(runs()[1])], subsets[:2], test, seeds=[0, 1], device="cpu", **RECIPE)
