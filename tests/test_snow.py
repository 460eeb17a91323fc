"""SNOW: channel pooling learns, the source never moves, the delta has the source's shape."""

import copy
import io
from collections import OrderedDict

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from snipnb import data, models, snow
from snipnb.loader import DeviceLoader
from snipnb.train import fit


def tv18(classes=10):
    return torchvision.models.resnet18(num_classes=classes)


def small_images(channels=3, size=32, per_class=8, classes=4):
    return data.synthetic(num_classes=classes, channels=channels, image_size=size, per_class=per_class,
                          test_per_class=4)


def full_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- channel pooling


def test_eval_selection_is_the_top_m_of_w_and_does_not_change():
    pool = snow.ChannelPooling(16, 5, sigma=0.5)
    with torch.no_grad():
        pool.weight.copy_(torch.randn(16, generator=torch.Generator().manual_seed(0)))
    pool.eval()
    expected = torch.topk(pool.weight.detach(), 5).indices.sort().values
    x = torch.randn(3, 16, 4, 4)
    first, second = pool(x), pool(x)
    assert torch.equal(pool.index(), expected)
    assert torch.equal(first, second)
    assert torch.allclose(first, x[:, expected] * pool.weight.detach()[expected].view(1, -1, 1, 1))


def test_noisy_selection_differs_between_training_steps_and_sigma_zero_is_the_top_m():
    torch.manual_seed(0)
    pool = snow.ChannelPooling(32, 8, sigma=0.1).train()
    picks = {frozenset(pool.index().tolist()) for _ in range(6)}
    assert len(picks) > 1
    assert all(len(p) == 8 for p in picks)
    quiet = snow.ChannelPooling(32, 8, sigma=0.0).train()
    with torch.no_grad():
        quiet.weight.copy_(torch.arange(32.0))
    assert quiet.index().tolist() == list(range(24, 32))


def test_w_is_a_parameter_that_gets_gradients_at_the_selected_channels():
    pool = snow.ChannelPooling(10, 3, sigma=0.0)
    assert any(p is pool.weight for p in pool.parameters())
    with torch.no_grad():
        pool.weight.copy_(torch.arange(10.0))
    pool(torch.rand(2, 10, 3, 3)).sum().backward()
    grad = pool.weight.grad
    assert grad is not None and (grad[7:] > 0).all() and (grad[:7] == 0).all()


def test_a_fixed_selection_holds_in_training_and_evaluation():
    pool = snow.ChannelPooling(12, 3, sigma=5.0).fix([9, 1, 4])
    pool.train()
    assert all(pool.index().tolist() == [1, 4, 9] for _ in range(5))
    assert pool.eval().index().tolist() == [1, 4, 9]
    with pytest.raises(ValueError, match="distinct"):
        pool.fix([1, 1, 2])
    with pytest.raises(ValueError, match="0..11"):
        pool.fix([1, 2, 12])


def test_a_reselected_channel_keeps_its_slot_and_a_newcomer_takes_the_freed_one():
    # The delta's next convolution has weights per input slot: with slots in source order, any
    # change of the set would hand every later slot a different channel.
    def draw(pool, top):
        with torch.no_grad():
            pool.weight.fill_(0).index_fill_(0, torch.tensor(top), 1.0)
        return pool.train().index().tolist()

    stable, ordered = snow.ChannelPooling(16, 3, sigma=0.0), snow.ChannelPooling(16, 3, 0.0, slot_order="sorted")
    assert draw(stable, [9, 2, 5]) == [2, 5, 9]  # the first draw fills the slots in source order
    assert draw(stable, [5, 9, 12]) == [12, 5, 9]  # 2 dropped: 12 takes its slot, 5 and 9 stay
    assert draw(stable, [0, 9, 12]) == [12, 0, 9]
    assert draw(ordered, [9, 2, 5]) == [2, 5, 9] and draw(ordered, [5, 9, 12]) == [5, 9, 12]
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(stable(x), x[:, [12, 0, 9]] * stable.weight.detach()[[12, 0, 9]].view(1, -1, 1, 1))
    # Evaluation places the top-M of w by the last training draw's slots, also after a reload.
    with torch.no_grad():
        stable.weight[0], stable.weight[3] = 0.0, 2.0  # the top-M is now {3, 9, 12}: 3 takes the slot of 0
    assert stable.eval().index().tolist() == [12, 3, 9]
    assert stable.index().tolist() == [12, 3, 9] and stable.slots.tolist() == [12, 0, 9]  # eval draws nothing
    loaded = snow.ChannelPooling(16, 3, sigma=0.0)
    loaded.load_state_dict(stable.state_dict())
    assert loaded.eval().index().tolist() == [12, 3, 9]
    assert snow.selection(_holder([stable]))[0].tolist() == [3, 9, 12]  # the set, ascending


def _holder(pools):
    holder = nn.Module()
    holder.pools = nn.ModuleList(pools)
    return holder


def test_assign_slots_keeps_kept_channels_in_place_without_a_host_sync():
    slots = torch.tensor([2, 5, 9, 7])
    assert snow.assign_slots(slots, torch.tensor([9, 1, 2, 3])).tolist() == [2, 1, 9, 3]
    assert snow.assign_slots(slots, torch.tensor([7, 2, 5, 9])).tolist() == [2, 5, 9, 7]
    assert snow.assign_slots(torch.full((3,), -1), torch.tensor([8, 1, 4])).tolist() == [1, 4, 8]
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):  # any previous slots, any new set: a permutation of the set, kept ones in place
        previous = torch.randperm(12, generator=generator)[:5]
        chosen = torch.randperm(12, generator=generator)[:5]
        order = snow.assign_slots(previous, chosen)
        assert sorted(order.tolist()) == sorted(chosen.tolist())
        both = torch.isin(previous, chosen)
        assert torch.equal(order[both], previous[both])


def test_the_noise_schedule_anneals_sigma_to_zero_and_constant_keeps_it():
    values = [snow.sigma_at(0.4, "cosine", t, 5) for t in range(5)]
    assert values[0] == 0.4 and values[2] == pytest.approx(0.2) and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert [snow.sigma_at(0.4, "constant", t, 5) for t in range(5)] == [0.4] * 5
    with pytest.raises(ValueError, match="schedule must be one of"):
        snow.sigma_at(0.4, "linear", 0, 5)


def drive(pools, steps, windows, seed=0):
    """Training draws of bare pooling layers (no optimiser), logged after every step."""
    torch.manual_seed(seed)
    holder = _holder(pools).train()
    log = snow.SelectionLog(holder, steps, windows)
    for _ in range(steps):
        for pool in pools:
            pool(torch.zeros(1, pool.channels, 1, 1))
        log.step()
    return log


def test_the_selection_log_where_the_answer_is_known():
    # No noise: every draw is the top-M of w, and with w fixed it never moves.
    quiet = drive([snow.ChannelPooling(20, 10, sigma=0.0), snow.ChannelPooling(8, 2, sigma=0.0)], 12, 4)
    assert quiet.window_steps == [3, 3, 3, 3]
    assert quiet.overlap == [[1.0, 1.0]] * 4
    assert quiet.kept[0] == [1.0, 1.0] and quiet.kept == [[1.0, 1.0]] * 4  # the first step is not compared
    assert quiet.settled() == [[1.0, 1.0]] * 4
    # Noise that swamps w: every draw is M of N at random, so it shares M/N with the top-M, and a
    # stable slot keeps its channel as often as the channel is drawn again (M/N); sorted slots less.
    stable = drive([snow.ChannelPooling(20, 10, sigma=1e4)], 600, 3)
    ordered = drive([snow.ChannelPooling(20, 10, sigma=1e4, slot_order="sorted")], 600, 3)
    for window in stable.overlap + ordered.overlap:
        assert window[0] == pytest.approx(0.5, abs=0.05)
    assert all(w[0] == pytest.approx(0.5, abs=0.05) for w in stable.kept)
    assert all(w[0] < 0.3 for w in ordered.kept)
    with pytest.raises(ValueError, match="fixed selection"):
        snow.SelectionLog(_holder([snow.ChannelPooling(8, 2, 0.1).fix([0, 1])]), 3)


# ------------------------------------------------------------------------------- training SNOW


def test_w_changes_under_training_and_the_source_stays_bit_identical():
    source = tv18()
    source.train()  # whatever mode the user left it in, SNOW runs it in eval mode
    before = full_state(source)
    model = snow.build_snow(source, 4, m=8, sigma=0.1, seed=0)
    initial = [pool.weight.detach().clone() for pool in model.delta.pools]
    images = small_images()
    fit(model, images, images, 2, lr=0.1, batch_size=8, device="cpu", progress=False)
    after = full_state(source)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a source weight or BN statistic moved"
    assert all(not m.training for m in model.source.modules())  # BatchNorm normalised with running stats
    assert all(not p.requires_grad for p in model.source.parameters())
    for pool, start in zip(model.delta.pools, initial):
        assert pool.weight.grad is not None and pool.weight.grad.abs().sum() > 0
        assert not torch.equal(pool.weight.detach(), start), "a pooling weight never moved"


@pytest.mark.parametrize("make", [lambda: tv18(), lambda: models.build("resnet20", 5, seed=0)],
                         ids=["torchvision", "snipnb"])
def test_the_sources_unused_head_is_frozen_with_the_rest(make):
    # SNOW never uses the source's classifier; left trainable, an optimiser over the source's
    # parameters (a linear probe written beside SNOW, say) would move it.
    source = make()
    snow.build_snow(source, 3, seed=0)
    assert not any(p.requires_grad for p in source.parameters())


def test_the_source_runs_without_building_a_graph():
    model = snow.build_snow(tv18(), 3, seed=0).train()
    _, features = model.source(torch.rand(2, 3, 32, 32))
    assert all(not f.requires_grad and f.grad_fn is None for f in features)
    assert model(torch.rand(2, 3, 32, 32)).requires_grad


def test_only_the_delta_trains_and_it_is_a_small_fraction():
    model = snow.build_snow(torchvision.models.resnet50(num_classes=10), 10, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("delta.") for n in trainable)
    assert snow.parameter_count(model, trainable=True) < 0.03 * snow.parameter_count(model, trainable=False)


# ----------------------------------------------------------------------------------------- shapes


def backbone_like(resnet):
    # The shape of snipnb.pretrained.Backbone: body.input, body.stem, body.layer1..4, body.pool, head.
    body = nn.Sequential(OrderedDict(
        input=nn.Identity(), stem=nn.Sequential(OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu,
                                                            maxpool=resnet.maxpool)),
        layer1=resnet.layer1, layer2=resnet.layer2, layer3=resnet.layer3, layer4=resnet.layer4,
        pool=nn.Sequential(resnet.avgpool, nn.Flatten())))
    model = models.Net(body, resnet.fc.in_features, 5)
    return model


SOURCES = {
    "torchvision_resnet18": (lambda: tv18(), 64, (64, 64, 128, 256, 512), 1),
    "torchvision_resnet50": (lambda: torchvision.models.resnet50(num_classes=10), 64, (64, 256, 512, 1024, 2048), 4),
    "backbone_resnet18": (lambda: backbone_like(tv18()), 64, (64, 64, 128, 256, 512), 1),
    "snipnb_resnet18": (lambda: models.build("resnet18", 10, seed=0), 32, (64, 64, 128, 256, 512), 1),
    "snipnb_resnet20": (lambda: models.build("resnet20", 10, seed=0), 32, (16, 16, 32, 64), 1),
}


@pytest.mark.parametrize("name", SOURCES)
def test_the_delta_has_the_sources_shape_divided_at_every_stage(name):
    make, size, widths, expansion = SOURCES[name]
    divisor = 4 if name == "snipnb_resnet20" else 8
    model = snow.build_snow(make(), 7, width_divisor=divisor, seed=0).eval()
    assert model.layout.widths == widths
    ms = [pool.m for pool in model.delta.pools]
    assert ms == [n // divisor for n in widths]
    seen = {}
    hooks = [stage.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, (args[0].shape, out.shape)))
             for i, stage in enumerate(model.delta.stages)]
    x = torch.rand(2, 3, size, size)
    _, features = model.source(x)
    stem_out = model.delta.stem(x)
    logits = model(x)
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 7)
    assert stem_out.shape == (2, widths[0] // divisor, *features[0].shape[-2:])
    for i, feature in enumerate(features[1:]):
        given, out = seen[i]
        delta_in = widths[0] // divisor if i == 0 else widths[i] // divisor
        assert given[1] == delta_in + ms[i], f"stage {i + 1}: the delta's channels plus the pooled ones"
        assert out == (2, widths[i + 1] // divisor, *feature.shape[-2:]), f"stage {i + 1}"
    assert model.delta.head.in_features == widths[-1] // divisor + ms[-1]
    for source_stage, delta_stage in zip(model.source.stages[1:], model.delta.stages):
        assert [type(b) for b in delta_stage] == [type(b) for b in source_stage]  # same blocks, as many
    assert model.layout.expansion == expansion


def test_one_m_for_every_tap_or_one_per_tap():
    model = snow.build_snow(tv18(), 3, m=[2, 3, 4, 5, 6], seed=0)
    assert [p.m for p in model.delta.pools] == [2, 3, 4, 5, 6]
    assert [p.m for p in snow.build_snow(tv18(), 3, m=16, seed=0).delta.pools] == [16] * 5


# ----------------------------------------------------------------------------- saving and serving


def test_a_state_dict_round_trip_reproduces_the_outputs():
    source = tv18()
    a = snow.build_snow(source, 5, m=8, seed=0)
    images = small_images()
    fit(a, images, None, 1, lr=0.1, batch_size=8, device="cpu", channels_last=False, progress=False)
    a.delta.pools[2].fix([0, 1, 2, 3, 4, 5, 6, 7])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = snow.build_snow(copy.deepcopy(source), 5, m=8, seed=1)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.delta.pools[2].fixed and not b.delta.pools[1].fixed
    x = torch.rand(4, 3, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    assert all(torch.equal(i, j) for i, j in zip(snow.selection(a), snow.selection(b)))


def test_one_source_pass_serves_every_task():
    source = tv18()
    stages, layout = snow.split_source(source)
    deltas = [snow.build_delta(layout, 3 + t, m=4, seed=t) for t in range(3)]
    served = snow.SnowTasks(stages, deltas).eval()
    calls = []
    stages.stages[0].register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(2, 3, 32, 32)
    outputs = served(x)
    assert len(calls) == 1 and [o.shape[1] for o in outputs] == [3, 4, 5]
    for delta, out in zip(deltas, outputs):
        assert torch.allclose(snow.Snow(stages, delta, layout).eval()(x), out)


# ------------------------------------------------------------------------ SNIP-chosen channels


def test_snip_never_picks_a_channel_the_source_leaves_dead():
    source = tv18()
    dead = torch.arange(0, 64, 2)  # every other stem channel is zero after its ReLU
    with torch.no_grad():
        source.bn1.weight[dead] = 0
        source.bn1.bias[dead] = -1
    model = snow.build_snow(source, 4, m=16, seed=0)
    images = small_images()
    batches = DeviceLoader(images, 16)
    scores = snow.snip_channel_scores(model, batches, seed=0)
    assert [len(s) for s in scores] == list(model.layout.widths)
    assert (scores[0][dead] == 0).all() and (scores[0][1::2] > 0).all()
    chosen = snow.snip_channels(model, batches, seed=0)
    assert all(c % 2 == 1 for c in chosen[0].tolist())
    assert [len(c) for c in chosen] == [16] * 5
    assert all(not p.requires_grad for p in model.source.parameters())


def test_random_channels_are_the_same_count_and_depend_on_the_seed():
    _, layout = snow.split_source(tv18())
    a, b = snow.random_channels(layout, 8, 8, seed=0), snow.random_channels(layout, 8, 8, seed=1)
    assert [len(i) for i in a] == [8] * 5 and any(not torch.equal(i, j) for i, j in zip(a, b))
    assert all(torch.equal(i, j) for i, j in zip(a, snow.random_channels(layout, 8, 8, seed=0)))


# ------------------------------------------------------------------------------------ bad input


def test_m_larger_than_n_is_refused_naming_the_tap():
    with pytest.raises(ValueError, match="m=65 is larger than N=64"):
        snow.build_snow(tv18(), 3, m=65)
    with pytest.raises(ValueError, match="one value per tap"):
        snow.build_snow(tv18(), 3, m=[4, 4])
    with pytest.raises(ValueError, match="m must be at most"):
        snow.ChannelPooling(8, 9, 0.1)


def test_a_negative_sigma_is_refused():
    with pytest.raises(ValueError, match="sigma"):
        snow.build_snow(tv18(), 3, sigma=-0.1)
    with pytest.raises(ValueError, match="sigma"):
        snow.ChannelPooling(8, 2, float("nan"))


def test_a_divisor_that_does_not_divide_the_widths_is_refused():
    with pytest.raises(ValueError, match="width_divisor=3 does not divide"):
        snow.build_snow(tv18(), 3, width_divisor=3)
    with pytest.raises(ValueError, match="width_divisor=32 does not divide"):
        snow.build_snow(models.build("resnet20", 10), 3, width_divisor=32)


@pytest.mark.parametrize("make", [lambda: models.build("vgg11", 10), lambda: models.build("simple_convnet", 10),
                                  lambda: nn.Linear(3, 3), lambda: torchvision.models.resnext50_32x4d(),
                                  lambda: torchvision.models.wide_resnet50_2()],
                         ids=["vgg11", "simple_convnet", "linear", "resnext", "wide_resnet"])
def test_an_unsupported_source_is_refused_with_what_is_supported(make):
    with pytest.raises(ValueError, match="SNOW cannot use this source.*Supported"):
        snow.build_snow(make(), 3)


# ------------------------------------------------------------------------------- runs (snowrun)

from snipnb import pretrained, snowrun, transfer, tuning  # noqa: E402


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory):
    """Runs from a source pretrained (one epoch) on synthetic classes 0-4, cached in a temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SNIPNB_CHECKPOINTS", str(tmp_path_factory.mktemp("checkpoints")))
    yield dict(source="synthetic:0-4", target="synthetic:5-9", model="resnet18", image_size=32, source_epochs=1)
    mp.undo()


def tiny_run(source, **kw):
    settings = dict(k=2, epochs=1, batch_size=8, test_per_class=4, timing_batch=4, eval_every=1, **source)
    return snowrun.SnowRun(**{**settings, **kw})


def test_a_snow_run_and_its_baselines_report_accuracy_and_cost(synthetic_source):
    results = {method: snowrun.run_snow(tiny_run(synthetic_source, method=method), "cpu")
               for method in snowrun.METHODS}
    cost_keys = {"train_images_per_s", "infer_images_per_s", "train_gflops", "infer_gflops", "train_memory_mb",
                 "peak_memory_mb"}
    for method, result in results.items():
        assert cost_keys | {"final_acc", "best_acc", "trainable_params", "total_params"} <= set(result), method
        assert 0 <= result["final_acc"] <= result["best_acc"] <= 100
        assert all(v > 0 for k, v in result.items() if k in cost_keys - {"peak_memory_mb"})
    assert {"snip_overlap", "chance_overlap", "w_moved"} <= set(results["snow"])
    trained = {m: r["trainable_params"] for m, r in results.items()}
    assert trained["fo"] == 512 * 5 + 5  # the new head and nothing else
    assert trained["fo"] < trained["snow"] < trained["fe"] < trained["ft"] == results["ft"]["total_params"]
    # FO back-propagates through its head only; fine-tuning through everything (about 3x a forward pass).
    assert results["fo"]["train_gflops"] == pytest.approx(results["fo"]["infer_gflops"], rel=0.01)
    assert results["ft"]["train_gflops"] > 2.5 * results["ft"]["infer_gflops"]
    assert results["snow"]["train_gflops"] < results["fe"]["train_gflops"] < results["ft"]["train_gflops"]
    assert results["snow"]["train_memory_mb"] < results["ft"]["train_memory_mb"]


def test_snip_and_random_selections_are_fixed_before_training_and_differ(synthetic_source):
    snip, model_snip = snowrun.train_run(tiny_run(synthetic_source, selection="snip"), "cpu")
    _, model_random = snowrun.train_run(tiny_run(synthetic_source, selection="random"), "cpu")
    assert snip["snip_overlap"] == 1.0  # SNIP's own top-M, scored on the same images
    assert all(pool.fixed for pool in model_snip.delta.pools + model_random.delta.pools)
    assert any(not torch.equal(a, b) for a, b in zip(snow.selection(model_snip), snow.selection(model_random)))


def test_a_snow_run_reports_the_share_of_channels_snip_scores_exactly_zero(synthetic_source, monkeypatch):
    run = tiny_run(synthetic_source)
    train, _ = snowrun.target_data(run)
    model = snowrun.build(run, train, "cpu")
    widths = [pool.channels for pool in model.delta.pools]
    # Scores with every other channel of the last tap, and none elsewhere, at exactly 0.
    scores = [torch.arange(1, n + 1, dtype=torch.float32) for n in widths]
    scores[-1][::2] = 0
    monkeypatch.setattr(snow, "snip_channel_scores", lambda *args, **kwargs: scores)
    summary = snowrun.selection_summary(run, model, train, "cpu")
    assert summary["zero_score_fraction_last"] == 0.5
    assert summary["zero_score_fraction"] == pytest.approx(widths[-1] / 2 / sum(widths))
    assert "zero_score_fraction" in snowrun.run_snow(run, "cpu")


def test_a_run_on_the_whole_target_split_leaves_the_source_bit_identical(synthetic_source):
    run = tiny_run(synthetic_source, k=None, epochs=1, batch_size=64)
    train, _ = snowrun.target_data(run)
    assert len(train) == 500  # every synthetic training image of classes 5-9
    _, model = snowrun.train_run(run, "cpu")
    # The run trained a copy of the cached source; the cache itself is what the source was before.
    original = pretrained.cached_source(*pretrained.source_key(run)).body
    for stage, name in zip(model.source.stages, ["stem", "layer1", "layer2", "layer3", "layer4"]):
        before, after = getattr(original, name).state_dict(), stage.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k].cpu()) for k in before), name
    assert all(not module.training for module in model.source.modules())


def test_the_pooling_weights_take_their_own_learning_rate_and_no_weight_decay(synthetic_source):
    # One step (ten images, one batch), against the update worked out by hand: nesterov SGD's first
    # step moves a parameter by lr * (1 + momentum) * its gradient (plus weight decay times itself).
    run = tiny_run(synthetic_source, epochs=1, batch_size=64, sigma=0.0, lr=0.05, weight_decay=0.01, w_lr=3.0,
                   w_weight_decay=0.0)
    train, _, _ = snowrun.split_target(run)
    model = snowrun.build(run, train, "cpu")
    reference = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    x, y = next(iter(DeviceLoader(train, len(train), channels_last=True)))
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    momentum = snowrun.RECIPE["momentum"]
    snowrun.train_model(run, model, train, device="cpu")
    for pool, before in zip(model.delta.pools, reference.delta.pools):
        step = 3.0 * (1 + momentum) * before.weight.grad
        assert step.abs().max() > 1e-4
        assert torch.allclose(pool.weight.detach(), before.weight.detach() - step, rtol=1e-4, atol=1e-6)
    conv, conv_before = model.delta.stem[0].weight, reference.delta.stem[0].weight
    expected = conv_before - 0.05 * (1 + momentum) * (conv_before.grad + 0.01 * conv_before)
    assert torch.allclose(conv.detach(), expected.detach(), rtol=1e-4, atol=1e-6)
    # Training over, w's gradient is w's again (the hooks that kept it from fit's optimiser are gone).
    model.zero_grad(set_to_none=True)
    model.train()(x).sum().backward()
    assert all(pool.weight.grad is not None for pool in model.delta.pools)


def test_the_selection_noise_of_each_draw_follows_the_schedule(synthetic_source):
    run = tiny_run(synthetic_source, epochs=3, batch_size=4, sigma=0.5, sigma_schedule="cosine")
    train, _, _ = snowrun.split_target(run)
    model = snowrun.build(run, train, "cpu")
    seen = []
    model.delta.pools[0].register_forward_pre_hook(lambda pool, _: seen.append(pool.sigma) if pool.training else None)
    snowrun.train_model(run, model, train, device="cpu")
    steps = snowrun.steps_of(run, train)
    assert steps == 9 and seen == [snow.sigma_at(0.5, "cosine", t, steps) for t in range(steps)]
    assert seen[0] == 0.5 and seen[-1] == 0.0


def test_a_learned_run_reports_how_its_selection_settled(synthetic_source):
    quiet = snowrun.run_snow(tiny_run(synthetic_source, epochs=3, batch_size=4, sigma=0.0), "cpu")
    taps = 5
    assert len(quiet["overlap_curve"]) == 9 and all(len(w) == taps for w in quiet["overlap_curve"])
    assert quiet["overlap_curve"] == [[1.0] * taps] * 9  # no noise: training takes what evaluation takes
    assert quiet["curve_steps"] == list(range(1, 10))  # 9 steps in 9 windows, one step each
    assert quiet["train_eval_overlap"] == quiet["train_eval_overlap_last"] == 1.0
    assert quiet["settled_curve"][-1] == [1.0] * taps
    assert all(0 <= v <= 1 for w in quiet["slot_kept_curve"][1:] for v in w)
    # Noise that swamps w: a draw shares about M/N with the top-M (here 8 of 64..512), far below 1.
    loud = snowrun.run_snow(tiny_run(synthetic_source, epochs=3, batch_size=4, m=8, sigma=1e4,
                                     sigma_schedule="constant"), "cpu")
    assert loud["train_eval_overlap"] < 0.4
    fixed = snowrun.run_snow(tiny_run(synthetic_source, selection="random"), "cpu")
    assert "overlap_curve" not in fixed


def test_a_validation_split_is_held_out_of_the_training_images(synthetic_source):
    run = tiny_run(synthetic_source, k=None, val_per_class=3)
    train, val, test = snowrun.split_target(run)
    whole, _ = snowrun.target_data(tiny_run(synthetic_source, k=None))
    assert len(val) == 15 and len(train) == len(whole) - 15
    rows = {tuple(image.flatten().tolist()) for image in train.images}
    assert not any(tuple(image.flatten().tolist()) in rows for image in val.images)
    few, val_few, _ = snowrun.split_target(tiny_run(synthetic_source, k=2, seed=1, val_per_class=3))
    assert torch.equal(val_few.images, val.images)  # the same validation images for every run
    assert not ({tuple(i.flatten().tolist()) for i in few.images} & {tuple(i.flatten().tolist()) for i in val.images})
    result = snowrun.run_snow(tiny_run(synthetic_source, val_per_class=3, epochs=2), "cpu")
    assert 0 <= result["val_acc"] <= 100 and 0 <= result["test_at_best_val"] <= 100
    # The learning curves: a test and a validation accuracy at every tested epoch, the last the final ones.
    assert result["test_epochs"] == [1, 2] and len(result["test_curve"]) == len(result["val_curve"]) == 2
    assert result["test_curve"][-1] == result["final_acc"] and result["val_curve"][-1] == result["val_acc"]
    assert max(result["test_curve"]) == result["best_acc"]
    long = transfer.curves(pd.DataFrame([result]), "val")
    assert list(long.epoch) == [1, 2] and list(long.acc) == result["val_curve"]
    assert snowrun.split_target(tiny_run(synthetic_source))[1] is None


def test_serving_t_tasks_shares_the_source(synthetic_source):
    settings = {k: v for k, v in synthetic_source.items() if k != "target"}
    one, three = (snowrun.run_serving(snowrun.ServingRun(**settings, tasks=t, num_classes=5, batch=4, repeats=1), "cpu")
                  for t in (1, 3))
    for way in snowrun.SERVING:
        assert one[f"{way}_images_per_s"] > 0 and three[f"{way}_params"] >= one[f"{way}_params"]
    delta = three["snow_params"] - one["snow_params"]  # two more deltas
    assert delta < 0.1 * one["snow_params"]
    assert three["ft_params"] == pytest.approx(3 * one["ft_params"], rel=1e-3)
    assert three["snow_gflops"] < 0.5 * three["ft_gflops"]
    assert one["fo_params"] < three["fe_params"] < three["ft_params"]


def test_the_grid_gives_snow_its_settings_and_each_method_its_learning_rate(synthetic_source):
    runs = snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2, None], ["snow", "ft", "fo"], 2,
                        lrs={"snow": 0.2, "ft": 0.01}, selections=["learned", "snip"], full_epochs=3, epochs=7,
                        image_size=32, m=4, sigma=0.05)
    assert len(runs) == 2 * 2 * (2 + 2)
    assert {r.epochs for r in runs if r.k is None} == {3} and {r.epochs for r in runs if r.k == 2} == {7}
    assert {(r.method, r.lr) for r in runs} == {("snow", 0.2), ("ft", 0.01), ("fo", snowrun.SnowRun.lr)}
    assert all((r.m, r.sigma) == (4, 0.05) for r in runs if r.method == "snow")
    assert all((r.m, r.sigma, r.selection) == (None, 0.1, "learned") for r in runs if r.method != "snow")
    with pytest.raises(ValueError, match="k must be between"):
        snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [101], ["snow"], 1, image_size=32)


def test_the_grid_and_the_ablation_carry_how_w_learns_to_snow_runs_only(synthetic_source):
    # The seed's setting everywhere SNOW runs, the baselines untouched (they would refuse it).
    runs = snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["snow", "ft"], 1, image_size=32,
                        **snowrun.SEED_SETTING)
    snow_run, ft_run = sorted(runs, key=lambda r: r.method != "snow")
    assert {f: getattr(snow_run, f) for f in snowrun.SEED_SETTING} == snowrun.SEED_SETTING
    assert {f: getattr(ft_run, f) for f in snowrun.SEED_SETTING} == {
        f: getattr(snowrun.SnowRun, f) for f in snowrun.SEED_SETTING}
    # The chapter's setting by default, and it is not the seed's in any one field.
    chapter = snowrun.SnowRun(model="resnet18", image_size=32)
    assert (chapter.sigma_schedule, chapter.slot_order, chapter.w_lr, chapter.w_weight_decay) == (
        "cosine", "stable", 2.0, 0.0)
    assert all(getattr(chapter, f) != v for f, v in snowrun.SEED_SETTING.items())
    runs = snowrun.ablation(chapter, 1, w_lr=[0.5], sigma_schedule=["constant"], slot_order=["sorted"])
    assert [(r.w_lr, r.sigma_schedule, r.slot_order) for r in runs] == [
        (0.5, "cosine", "stable"), (2.0, "constant", "stable"), (2.0, "cosine", "sorted")]


def test_the_learning_rate_search_runs_each_method_at_its_own_rates_on_validation(synthetic_source):
    settings = dict(image_size=32, source_epochs=1, epochs=3, val_per_class=5, m=4, sigma=0.05)
    runs = snowrun.lr_grid({"snow": [0.2, 0.05], "fo": [0.5]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2,
                           selections=["snip"], **settings)
    s0, s1 = tuning.search_seeds(2)  # the search's own seeds, never a grid's
    assert sorted((r.method, r.lr, r.seed) for r in runs) == [
        ("fo", 0.5, s0), ("fo", 0.5, s1), ("snow", 0.05, s0), ("snow", 0.05, s1), ("snow", 0.2, s0), ("snow", 0.2, s1)]
    assert all(r.k == 2 and r.val_per_class == 5 and r.epochs == 3 for r in runs)
    # SNOW's own settings reach its runs, and the search is of its learned selection whatever the grid's are.
    assert all((r.selection, r.m, r.sigma) == ("learned", 4, 0.05) for r in runs if r.method == "snow")
    with pytest.raises(ValueError, match="needs val_per_class"):
        snowrun.lr_grid({"snow": [0.1]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 1, image_size=32)
    with pytest.raises(ValueError, match="method"):
        snowrun.lr_grid({"sgd": [0.1]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 1, **settings)
    with pytest.raises(ValueError, match="non-empty list"):
        snowrun.lr_grid({"ft": []}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 1, **settings)


def test_select_lrs_reads_each_methods_validation_accuracy_and_never_the_test_accuracy():
    # Test accuracy says the larger rate for both methods; validation says the smaller for SNOW, the larger for FO.
    results = pd.DataFrame(dict(method=["snow"] * 4 + ["fo"] * 4, lr=[0.05, 0.05, 0.2, 0.2, 0.1, 0.1, 0.5, 0.5],
                                model="resnet18", seed=[0, 1] * 4,
                                val_acc=[70.0, 80.0, 60.0, 70.0, 40.0, 50.0, 45.0, 45.0],
                                final_acc=[10.0, 10.0, 90.0, 90.0] * 2, test_at_best_val=[10.0, 10.0, 90.0, 90.0] * 2))
    chosen, table = snowrun.select_lrs(results)
    assert chosen == {"snow": 0.05, "fo": 0.1}  # FO's two rates tie at 45: the smaller wins
    assert table.loc[("snow", 0.2), "val_acc"] == 65 and table.loc[("fo", 0.5), "runs"] == 2
    with pytest.raises(ValueError, match="validation set"):
        snowrun.select_lrs(results.assign(val_acc=float("nan")))
    with pytest.raises(ValueError, match="same runs"):
        snowrun.select_lrs(results.iloc[:3])
    # As many runs per rate, but SNOW's 0.2 on seed 2 where its 0.05 ran seed 1: not the same runs.
    with pytest.raises(ValueError, match="method 'snow'.*same runs"):
        snowrun.select_lrs(results.assign(seed=[0, 1, 0, 2, 0, 1, 0, 1]))


def test_an_ablation_changes_one_setting_at_a_time():
    base = snowrun.SnowRun(model="resnet18", image_size=32, m=8)
    runs = snowrun.ablation(base, 2, m=[8, 4], sigma=[0.0], width_divisor=[4])
    changed = [(r.m, r.sigma, r.width_divisor) for r in runs]
    assert changed == [(4, 0.1, 8)] * 2 + [(8, 0.0, 8)] * 2 + [(8, 0.1, 4)] * 2
    assert [r.seed for r in runs] == [0, 1] * 3
    with pytest.raises(ValueError, match="ablation varies"):
        snowrun.ablation(base, 1, lr=[0.1])
    assert {r.source_seed for r in runs} == {0}  # one source unless asked otherwise
    paired = snowrun.ablation(base, 3, sigma=[0.0], source_per_seed=True)
    assert [(r.seed, r.source_seed) for r in paired] == [(0, 0), (1, 1), (2, 2)]


def test_a_grid_with_a_source_per_seed_pairs_each_seed_with_its_own_source():
    runs = snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["snow", "ft"], 3, image_size=32,
                        source_per_seed=True)
    assert len(runs) == 6 and all(r.source_seed == r.seed for r in runs)
    search = snowrun.lr_grid({"ft": [0.01]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2, image_size=32,
                             val_per_class=2, source_per_seed=True)
    base = tuning.SEARCH_SEED_BASE
    assert [(r.seed, r.source_seed) for r in search] == [(base, base), (base + 1, base + 1)]
    assert not {r.source_seed for r in search} & {r.source_seed for r in runs}  # sources of its own
    # At the same source settings chapter 02's search seeds name the same sources (pretrained once, cached by them).
    same = dict(image_size=32, stem="cifar", source_epochs=3, val_per_class=2, source_per_seed=True)
    snow_sources = {pretrained.source_key(r) for r in snowrun.lr_grid(
        {"ft": [0.01]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2, **same)}
    transfer_sources = {pretrained.source_key(r) for r in transfer.lr_grid(
        [0.01], "synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["last_block"], 2, **same)}
    assert snow_sources == transfer_sources and len(snow_sources) == 2
    assert pretrained.at_seed(runs[0], 2, source_per_seed=True).source_seed == 2
    assert pretrained.at_seed(runs[0], 2).source_seed == runs[0].source_seed
    with pytest.raises(ValueError, match="ImageNet weights are one source"):
        snowrun.grid("imagenet", "synthetic:5-9", ["resnet18"], [2], ["ft"], 1, source_per_seed=True)


def test_a_search_runs_on_seeds_no_grid_or_ablation_reaches():
    settings = dict(image_size=32, val_per_class=2)
    search = snowrun.lr_grid({"ft": [0.01, 0.1]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2, **settings)
    assert {r.seed for r in search} == {10_000, 10_001}
    later = snowrun.lr_grid({"ft": [0.01]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 1,
                            first_seed=tuning.SEARCH_SEED_BASE + 4, **settings)
    assert {r.seed for r in later} == {10_004}
    with pytest.raises(ValueError, match="below 10000"):
        snowrun.lr_grid({"ft": [0.01]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2, first_seed=0, **settings)
    with pytest.raises(ValueError, match="first_seed must be >= 0"):
        snowrun.lr_grid({"ft": [0.01]}, "synthetic:0-4", "synthetic:5-9", ["resnet18"], 2, 2, first_seed=-1,
                        **settings)
    grid = snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["ft"], 3, **settings)
    assert not {r.seed for r in grid} & {r.seed for r in search}
    with pytest.raises(ValueError, match="reach 10000"):
        snowrun.grid("synthetic:0-4", "synthetic:5-9", ["resnet18"], [2], ["ft"], tuning.SEARCH_SEED_BASE + 1,
                     **settings)
    with pytest.raises(ValueError, match="reach 10000"):
        snowrun.ablation(snowrun.SnowRun(model="resnet18", image_size=32), tuning.SEARCH_SEED_BASE + 1, sigma=[0.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="ft", sigma=0.5), "sigma=0.5 applies to method='snow' only"),
    (dict(method="fo", selection="snip"), "selection='snip' applies to method='snow' only"),
    (dict(model="vgg11"), "model must be one of"),
    (dict(m=65), "m=65 is larger than N=64"),
    (dict(model="resnet50", m=[8, 8]), "one value per tap"),
    (dict(sigma=-1.0), "sigma must be >= 0"),
    (dict(width_divisor=3), "width_divisor=3 does not divide"),
    (dict(selection="magic"), "selection must be one of"),
    (dict(method="fe", w_lr=9.0), "w_lr=9.0 applies to method='snow' only"),
    (dict(method="ft", **snowrun.SEED_SETTING), "applies to method='snow' only"),
    (dict(sigma_schedule="linear"), "sigma_schedule must be one of"),
    (dict(slot_order="random"), "slot_order must be one of"),
    (dict(w_lr=0.0), "w_lr must be > 0"),
    (dict(w_weight_decay=-1e-4), "w_weight_decay must be >= 0"),
    (dict(val_per_class=0), "val_per_class must be >= 1"),
    (dict(k=0), "k must be >= 1"),
    (dict(target="nowhere"), "target='nowhere' is not valid"),
])
def test_a_bad_setting_fails_when_the_config_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        snowrun.SnowRun(**{"model": "resnet18", "image_size": 32, **kwargs})


def test_a_list_of_m_is_kept_as_a_tuple_so_the_config_stays_hashable():
    run = snowrun.SnowRun(model="resnet18", image_size=32, m=[2, 3, 4, 5, 6])
    assert run.m == (2, 3, 4, 5, 6) and hash(run)
    with pytest.raises(ValueError, match="ServingRun|m=99"):
        snowrun.ServingRun(model="resnet18", image_size=32, m=99)


def test_a_timed_training_step_moves_only_what_trains_and_inference_moves_nothing():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    model[0].requires_grad_(False)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    before = full_state(model)
    snowrun.inference_step(model, x, amp=False)()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    snowrun.training_step(model, x, y, amp=False)()
    after = model.state_dict()
    assert model.training
    assert torch.equal(after["0.weight"], before["0.weight"])  # frozen
    assert not torch.equal(after["2.weight"], before["2.weight"])
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])  # train mode, even after eval
