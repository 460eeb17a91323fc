"""SNOW and its FE/FO baselines trained on their frozen part's stored outputs (`snipnb.frozen`,
`snowrun.stores_frozen_outputs`) get the numbers of the whole network; a CIFAR-stem source gets a
delta that matches it. Sources are ResNet-18s pretrained for one epoch on synthetic classes 0-4 into
a temporary folder; nothing is downloaded and no real dataset is read."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from snipnb import devices, frozen, pretrained, snow, snowrun


@pytest.fixture(scope="module", autouse=True)
def source_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SNIPNB_CHECKPOINTS", str(tmp_path_factory.mktemp("checkpoints")))
        yield


def tiny(**kw):
    settings = dict(source="synthetic:0-4", target="synthetic:5-9", model="resnet18", image_size=32, source_epochs=1,
                    k=4, epochs=2, batch_size=8, test_per_class=4, val_per_class=3, timing_batch=4, lr=0.01)
    return snowrun.SnowRun(**{**settings, **kw})


def trained(run, monkeypatch, *, stored: bool):
    """(history, selection log, trained model, sizes of the splits `frozen.features` ran on) of `run`,
    trained on stored outputs or through the whole network."""
    calls = []
    real = frozen.features
    # (passes of one image measure what an image's outputs take, against frozen.STORED_BYTES_PER_SPLIT)
    monkeypatch.setattr(frozen, "features", lambda prefix, data, *a, **kw: (len(data) > 1 and calls.append(
                        len(data))) or real(prefix, data, *a, **kw))
    monkeypatch.setattr(snowrun, "stores_frozen_outputs", lambda run: stored and run.method != "ft")
    monkeypatch.setattr(snowrun, "_KEPT_SOURCE_OUTPUTS", OrderedDict())
    monkeypatch.setattr(frozen, "_KEPT_OUTPUTS", OrderedDict())
    train, val, test = snowrun.split_target(run)
    model = snowrun.build(run, train, "cpu")
    history, log = snowrun.train_model(run, model, train, test, val=val, device="cpu")
    monkeypatch.undo()
    return history, log, model, calls


@pytest.mark.parametrize("method, selection, stem", [("snow", "learned", "imagenet"), ("snow", "snip", "imagenet"),
                                                     ("snow", "random", "imagenet"), ("fe", "learned", "imagenet"),
                                                     ("fo", "learned", "imagenet"), ("snow", "learned", "cifar")])
def test_a_run_on_stored_outputs_gets_the_numbers_of_the_whole_network(method, selection, stem, monkeypatch):
    run = tiny(method=method, selection=selection, stem=stem)
    assert snowrun.stores_frozen_outputs(run)
    history, log, model, calls = trained(run, monkeypatch, stored=True)
    assert calls == [20, 15, 20]  # the test and validation sets, then the training set, each once
    reference, reference_log, reference_model, reference_calls = trained(run, monkeypatch, stored=False)
    assert reference_calls == []
    assert history.test_acc == reference.test_acc and history.val_acc == reference.val_acc
    assert history.train_loss == pytest.approx(reference.train_loss, abs=1e-4)
    if log is not None:  # the learned selection drew the same channels step after step
        assert log.overlap == reference_log.overlap
        np.testing.assert_array_equal(log.kept, reference_log.kept)  # NaN (no step before) equal to NaN
    # The frozen part is back in the model, and the two trained the same weights.
    assert not any(isinstance(m, (snow.StoredStages, nn.Identity)) for m in model.modules())
    expected = reference_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-4), key
    if method == "snow":
        assert all(torch.equal(a, b) for a, b in zip(snow.selection(model), snow.selection(reference_model)))


def test_fine_tuning_and_augmented_runs_go_through_the_whole_network():
    assert not snowrun.stores_frozen_outputs(tiny(method="ft"))
    assert not snowrun.stores_frozen_outputs(tiny(augment=True))
    assert not snowrun.stores_frozen_outputs(tiny(method="fe", augment=True))


def test_the_source_sees_a_test_set_once_per_process(monkeypatch):
    calls = []
    real = frozen.features
    monkeypatch.setattr(frozen, "features", lambda prefix, data, *a, **kw: (len(data) > 1 and calls.append(
                        len(data))) or real(prefix, data, *a, **kw))
    monkeypatch.setattr(snowrun, "_KEPT_SOURCE_OUTPUTS", OrderedDict())
    monkeypatch.setattr(frozen, "_KEPT_OUTPUTS", OrderedDict())
    for seed in (0, 1):
        snowrun.run_snow(tiny(k=2, val_per_class=None, seed=seed), "cpu")
    assert calls == [20, 10, 10]  # the test sample once, then each seed's own 2-shot subset
    snowrun.run_snow(tiny(k=2, val_per_class=None, method="fe"), "cpu")
    snowrun.run_snow(tiny(k=2, val_per_class=None, method="fo"), "cpu")
    snowrun.run_snow(tiny(k=2, val_per_class=None, seed=2), "cpu")
    # FE's and FO's frozen parts are other modules: their own test outputs, kept beside SNOW's.
    assert calls == [20, 10, 10, 20, 10, 20, 10, 10]


def test_the_source_is_put_back_after_an_error(monkeypatch):
    run = tiny(k=2)
    train, val, test = snowrun.split_target(run)
    model = snowrun.build(run, train, "cpu")
    source = model.source
    with pytest.raises(RuntimeError, match="inside"):
        with snow.stored_source(model):
            assert isinstance(model.source, snow.StoredStages)
            raise RuntimeError("inside")
    assert model.source is source

    def failing_fit(model, *args, **kwargs):
        assert isinstance(model.source, snow.StoredStages)
        raise RuntimeError("in training")

    monkeypatch.setattr(snowrun, "fit", failing_fit)
    with pytest.raises(RuntimeError, match="in training"):
        snowrun.train_model(run, model, train, test, val=val, device="cpu")
    assert model.source is source
    assert model.eval()(train.images[:2].float() / 255).shape == (2, 5)  # it takes images again


def test_a_split_above_the_cap_sends_the_run_through_the_whole_network(monkeypatch):
    run = tiny(k=2, val_per_class=None)
    train, _, test = snowrun.split_target(run)
    model = snowrun.build(run, train, "cpu")
    sizes = {amp: frozen.bytes_per_image(model.source, train, device="cpu", amp=amp, channels_last=True)
             for amp in (False, True)}
    eval_amp = devices.autocast_enabled("cpu", None, "evaluation")
    train_bytes, test_bytes = len(train) * sizes[False], len(test) * sizes[eval_amp]
    # One split fits and the other does not: the run still goes through the whole network.
    limit = min(train_bytes, test_bytes)
    assert max(train_bytes, test_bytes) > limit
    monkeypatch.setattr(snowrun, "_KEPT_SOURCE_OUTPUTS", OrderedDict())
    monkeypatch.setattr(frozen, "STORED_BYTES_PER_SPLIT", limit)
    calls = []
    real = frozen.features
    monkeypatch.setattr(frozen, "features", lambda prefix, data, *a, **kw: (len(data) > 1 and calls.append(
                        len(data))) or real(prefix, data, *a, **kw))
    source_batches = []
    model.source.register_forward_hook(lambda module, args, output: source_batches.append(len(args[0])))
    history, _ = snowrun.train_model(run, model, train, test, device="cpu")
    assert calls == [] and run.batch_size in source_batches  # the source ran on the training batches
    assert 0 <= history.final_acc <= 1
    monkeypatch.setattr(frozen, "STORED_BYTES_PER_SPLIT", max(train_bytes, test_bytes))
    snowrun.train_model(run, snowrun.build(run, train, "cpu"), train, test, device="cpu")
    assert calls == [len(test), len(train)]


# ------------------------------------------------------------------------------- the CIFAR stem


def test_a_cifar_stem_backbone_gets_a_delta_that_matches_it_at_every_tap():
    backbone = pretrained.build("resnet18", 5, in_channels=1, image_size=16, seed=0, stem="cifar")
    model = snow.build_snow(backbone, 5, seed=0)
    assert model.layout.stem == (1, 64, 3, 1, 1, None)  # 3x3, stride 1, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.delta.stem)
    x = torch.rand(2, 1, 16, 16)
    prepared, taps = model.source(x)
    assert [t.shape[-1] for t in taps] == [16, 16, 8, 4, 2]  # the source's maps: no halving before layer2
    delta_maps = []
    for module in [model.delta.stem, *model.delta.stages]:
        module.register_forward_hook(lambda module, args, output: delta_maps.append(output.shape[-1]))
    assert model(x).shape == (2, 5)
    assert delta_maps == [16, 16, 8, 4, 2]  # the delta's map beside each tap has the tap's size
    assert snowrun.architecture_layout("resnet18", "cifar").stem == (3, 64, 3, 1, 1, None)


def test_the_stem_is_checked_when_the_config_is_made():
    assert tiny(stem="cifar", image_size=8).stem == "cifar"  # the CIFAR stem halves a 32 px image 3 times only
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        tiny(image_size=8)
    with pytest.raises(ValueError, match="needs a source the project pretrains"):
        snowrun.SnowRun(source="imagenet", stem="cifar")
    with pytest.raises(ValueError, match="needs a source the project pretrains"):
        snowrun.ServingRun(source="imagenet", stem="cifar")
    with pytest.raises(ValueError, match="stem must be one of"):
        tiny(stem="tiny")


def test_a_cifar_stem_source_serves_snow_and_its_baselines():
    run = snowrun.ServingRun(source="synthetic:0-4", model="resnet18", image_size=32, stem="cifar", source_epochs=1,
                             tasks=2, num_classes=5, batch=2, repeats=1)
    assert snowrun.source_backbone(run).meta["stem"] == "cifar"
    results = snowrun.run_serving(run, "cpu")
    assert all(results[f"{way}_images_per_s"] > 0 for way in snowrun.SERVING)
    assert results["snow_gflops"] < results["ft_gflops"]
