"""Tests for snipnb.pretrained. Nothing is downloaded: ImageNet weights are a state_dict of the right
architecture written into a temporary torch hub cache, and sources are pretrained on synthetic data."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from snipnb import devices, pretrained, snow
from snipnb.data import ImageData
from snipnb.train import fit


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SNIPNB_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("SNIPNB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One small source pretrained once for the module: ResNet-18 on two synthetic classes."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return pretrained.pretrain("resnet18", "synthetic", classes=[0, 1], epochs=1, seed=0, cache_dir=folder,
                               device="cpu", progress=False)


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    """The same source with the CIFAR stem (3x3 stride 1, no max-pool)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return pretrained.pretrain("resnet18", "synthetic", classes=[0, 1], epochs=1, seed=0, stem="cifar",
                               cache_dir=folder, device="cpu", progress=False)


# --- ImageNet weights through torchvision's weights API --------------------------------------------

def write_fake_imagenet_weights(model="resnet18"):
    resnet = getattr(torchvision.models, model)()
    path = pretrained.imagenet_weights_path(model)
    path.parent.mkdir(parents=True)
    torch.save(resnet.state_dict(), path)
    return resnet.eval()


def test_imagenet_weights_come_from_the_torch_hub_cache_and_run_like_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    resnet = write_fake_imagenet_weights()
    assert pretrained.imagenet_weights_path("resnet18") == tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth"
    model = pretrained.imagenet("resnet18", image_size=64).eval()
    assert torch.equal(model.body.stem.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.body.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    assert model.meta["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    # A grey 28 px image in [0, 1] is what the backbone takes; torchvision's network gets the same
    # image repeated to RGB, resized to 64 px and normalised with ImageNet's mean and std.
    grey = torch.rand(2, 1, 28, 28)
    rgb = F.interpolate(grey.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = resnet((rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
        assert torch.allclose(model(grey), expected, atol=1e-5)


def test_missing_imagenet_weights_offline_say_where_they_were_looked_for(monkeypatch):
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as caught:
        pretrained.imagenet("resnet50")
    assert str(pretrained.imagenet_weights_path("resnet50")) in str(caught.value)
    assert "SNIPNB_OFFLINE" in str(caught.value)


def test_a_failed_download_says_where_the_weights_were_looked_for(monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="download failed") as caught:
        pretrained.imagenet("resnet18")
    assert str(pretrained.imagenet_weights_path("resnet18")) in str(caught.value)


@pytest.mark.parametrize("model, width", [("resnet18", 512), ("resnet50", 2048)])
def test_backbones_are_named_blocks_with_a_linear_head(model, width):
    net = pretrained.build(model, 7, in_channels=1, image_size=32, seed=0)
    for block in pretrained.BLOCKS:
        net.get_submodule(block)
    assert net.embed_dim == width and net.head.out_features == 7
    assert net(torch.rand(3, 1, 40, 40)).shape == (3, 7)  # any size in, resized to 32
    assert torch.equal(pretrained.build(model, 7, 1, 32, seed=0).head.weight, net.head.weight)


def test_the_input_adapter_repeats_or_averages_channels_and_normalises():
    to_rgb = pretrained.InputAdapter(3, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = to_rgb(torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 3, 8, 8) and torch.allclose(out, torch.ones_like(out))
    to_grey = pretrained.InputAdapter(1, 4, mean=(0.0,), std=(2.0,))
    rgb = torch.stack([torch.full((8, 8), v) for v in (0.2, 0.4, 0.6)]).unsqueeze(0)
    assert torch.allclose(to_grey(rgb), torch.full((1, 1, 4, 4), 0.2))


def test_new_head_is_reproducible_and_sized_for_the_target():
    net = pretrained.build("resnet18", 10, image_size=32, seed=0)
    a = pretrained.new_head(net, 5, seed=3).head.weight.clone()
    assert a.shape == (5, 512)
    assert torch.equal(pretrained.new_head(net, 5, seed=3).head.weight, a)
    assert not torch.equal(pretrained.new_head(net, 5, seed=4).head.weight, a)


# --- freezing blocks -------------------------------------------------------------------------------

def tiny_images(n=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % classes, classes, (0.0,), (1.0,), "tiny")


@pytest.mark.parametrize("train_blocks, stem", [("head", "imagenet"), ("last_block", "imagenet"),
                                               ("last_two_blocks", "imagenet"), ("head", "cifar"),
                                               ("last_block", "cifar")])
def test_frozen_blocks_are_bit_identical_after_training_and_the_rest_learns(train_blocks, stem):
    net = pretrained.build("resnet18", 3, in_channels=1, image_size=32, seed=0, stem=stem)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = pretrained.freeze(net, train_blocks)
    assert trained == list(pretrained.BLOCKS[-pretrained.TRAIN_BLOCKS[train_blocks]:])
    fit(net, tiny_images(), None, epochs=2, batch_size=8, lr=0.05, device="cpu", progress=False)
    for key, value in net.state_dict().items():  # weights and BatchNorm statistics alike
        if key.startswith(tuple(f"{block}." for block in trained)):
            continue
        assert torch.equal(value, before[key]), key
    assert not torch.equal(net.head.weight, before["head.weight"])
    if train_blocks != "head":
        assert not torch.equal(net.body.layer4[1].bn2.running_mean, before["body.layer4.1.bn2.running_mean"])
    net.train()
    assert not net.body.stem.training and net.head.training
    assert pretrained.trainable_weights(net) == [n for n in pretrained.prunable(net)
                                                 if n.startswith(tuple(f"{b}." for b in trained))]


def test_training_everything_freezes_nothing():
    net = pretrained.build("resnet18", 3, image_size=32, seed=0)
    pretrained.freeze(net, "head")
    assert pretrained.freeze(net, "all") == list(pretrained.BLOCKS)
    assert all(p.requires_grad for p in net.parameters()) and net.eval_blocks == ()


def test_source_bn_statistics_keep_every_running_statistic_while_scale_and_shift_train():
    net = pretrained.build("resnet18", 3, in_channels=1, image_size=32, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pretrained.freeze(net, "last_block", bn_stats="source")
    fit(net, tiny_images(), None, epochs=2, batch_size=8, lr=0.05, device="cpu", progress=False)
    for key, value in net.state_dict().items():
        if "running_" in key or "num_batches" in key:
            assert torch.equal(value, before[key]), key
    assert not torch.equal(net.body.layer4[1].bn2.weight, before["body.layer4.1.bn2.weight"])
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        pretrained.freeze(net, "head", bn_stats="running")


# --- self-pretrained sources: checkpoints -----------------------------------------------------------

def test_pretrain_saves_weights_with_metadata_loadable_weights_only(checkpoint):
    blob = torch.load(checkpoint, weights_only=True)
    meta = blob["meta"]
    assert meta["model"] == "resnet18" and meta["dataset"] == "synthetic" and meta["classes"] == [0, 1]
    shape = (meta["epochs"], meta["seed"], meta["image_size"], meta["in_channels"], meta["num_classes"])
    assert shape == (1, 0, 32, 3, 2)
    assert 0 <= meta["test_acc"] <= 100 and meta["snipnb_version"] and meta["torch_version"]
    assert meta["threads"] == pretrained.PRETRAIN_THREADS and meta["device"].startswith("cpu")
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    net, loaded_meta = pretrained.load_checkpoint(checkpoint, model="resnet18", image_size=32)
    assert loaded_meta == meta
    for key, value in blob["state_dict"].items():
        assert torch.equal(net.state_dict()[key], value), key
    assert list(net.body.input.mean.flatten()) == pytest.approx(meta["mean"])


def test_pretrain_is_cached_by_its_settings(checkpoint, monkeypatch):
    import snipnb.train

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached checkpoint was trained again")

    monkeypatch.setattr(snipnb.train, "fit", must_not_train)
    again = pretrained.pretrain("resnet18", "synthetic", classes=[1, 0], epochs=1, seed=0,
                                cache_dir=checkpoint.parent, progress=False)
    assert again == checkpoint
    net = pretrained.load_source("synthetic:0-1", "resnet18", 32, epochs=1, cache_dir=checkpoint.parent)
    assert torch.equal(net.body.stem.conv1.weight, torch.load(checkpoint)["state_dict"]["body.stem.conv1.weight"])
    assert net.head.out_features == 2 and net.meta["source"] == "synthetic"
    with pytest.raises(AssertionError, match="trained again"):  # another seed is another checkpoint
        pretrained.pretrain("resnet18", "synthetic", classes=[0, 1], epochs=1, seed=1,
                            cache_dir=checkpoint.parent, progress=False)


@pytest.mark.parametrize("asked, differs", [(dict(model="resnet50"), "model is 'resnet18' there, 'resnet50'"),
                                            (dict(image_size=64), "image_size is 32 there, 64"),
                                            (dict(in_channels=1), "in_channels is 3 there, 1")])
def test_a_checkpoint_for_another_architecture_or_input_is_refused(checkpoint, asked, differs):
    with pytest.raises(ValueError, match=differs):
        pretrained.load_checkpoint(checkpoint, **asked)


def test_a_checkpoint_whose_weights_do_not_fit_its_architecture_is_refused(checkpoint, tmp_path):
    blob = torch.load(checkpoint, weights_only=True)
    blob["meta"]["in_channels"], blob["meta"]["mean"], blob["meta"]["std"] = 1, [0.5], [0.5]
    torch.save(blob, tmp_path / "forged.pt")
    with pytest.raises(ValueError, match=r"body.stem.conv1.weight: \(64, 3, 7, 7\) in the file, \(64, 1, 7, 7\)"):
        pretrained.load_checkpoint(tmp_path / "forged.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a snipnb checkpoint"):
        pretrained.load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        pretrained.load_checkpoint(tmp_path / "nothing.pt")


def test_a_source_has_the_same_bits_whatever_thread_count_the_caller_runs_at(checkpoint, tmp_path):
    # On the CPU another thread count gives other weights (a sweep worker runs 1 thread, a notebook's
    # kernel 2): pretraining pins its own, so the same settings make the same source from either.
    caller = 1 if torch.get_num_threads() != 1 else 3
    with devices.cpu_threads(caller):
        again = pretrained.pretrain("resnet18", "synthetic", classes=[0, 1], epochs=1, seed=0, cache_dir=tmp_path,
                                    device="cpu", progress=False)
        assert torch.get_num_threads() == caller  # given back to the caller
    first, second = torch.load(checkpoint)["state_dict"], torch.load(again)["state_dict"]
    assert all(torch.equal(first[name], second[name]) for name in first)
    # another thread count is another source, cached under another name
    settings = dict(model="resnet18", dataset="synthetic", classes=[0, 1], epochs=1, seed=0)
    assert pretrained.pretrain_settings(**settings, threads=1) != pretrained.pretrain_settings(**settings)


def test_a_source_pretrains_in_bf16_only_where_the_device_does_it_natively(monkeypatch):
    monkeypatch.setattr(devices, "_warned", set())
    for native in (True, False):
        monkeypatch.setattr(devices, "bf16_native", lambda device, native=native: native)
        assert pretrained.pretrain_precision("cpu") == ("bf16" if native else "fp32")
        assert pretrained.pretrain_precision("cpu", amp=False) == "fp32"
    with pytest.warns(UserWarning, match="running training in fp32 instead"):
        assert pretrained.pretrain_precision("cpu", amp=True) == "fp32"  # asked for, not native: said, not silent


def test_the_precision_a_source_was_pretrained_in_is_what_trains_it_and_part_of_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "bf16_native", lambda device: True)
    trained_with = []
    real_fit = fit

    def recording_fit(*args, **kwargs):
        trained_with.append(kwargs.get("amp"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr("snipnb.train.fit", recording_fit)
    asked = dict(model="resnet18", dataset="synthetic", classes=[0, 1], epochs=1, seed=0, cache_dir=tmp_path,
                 device="cpu", progress=False)
    bf16, fp32 = pretrained.pretrain(**asked), pretrained.pretrain(**asked, amp=False)
    assert trained_with == [True, False]
    assert bf16 != fp32  # two sources, cached under two names
    assert torch.load(bf16)["meta"]["precision"] == "bf16" and torch.load(fp32)["meta"]["precision"] == "fp32"
    assert pretrained.pretrain(**asked) == bf16 and len(trained_with) == 2  # the cache, not another pretraining
    with pytest.raises(ValueError, match="precision is 'bf16' there, 'fp32' was asked for"):
        pretrained.load_checkpoint(bf16, precision="fp32")
    loaded = pretrained.load_source("synthetic:0-1", "resnet18", 32, epochs=1, amp=False, cache_dir=tmp_path,
                                    device="cpu")
    assert loaded.meta["precision"] == "fp32"


def test_a_pretraining_killed_while_saving_leaves_no_checkpoint_in_the_cache(tmp_path, monkeypatch):
    save = torch.save

    def dies_half_way_through_the_checkpoint(obj, f):
        if "meta" not in obj:  # the training state after an epoch: written whole
            return save(obj, f)
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way_through_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrained.pretrain("resnet18", "synthetic", classes=[0, 1], epochs=1, cache_dir=tmp_path, device="cpu",
                            progress=False)
    # no file a later run could take for a finished checkpoint: only the last epoch's state, to go on from
    assert [p.suffix for p in tmp_path.iterdir()] == [".partial"]


# --- the CIFAR stem ---------------------------------------------------------------------------------

def last_stage_map(net, size):
    seen = {}
    hook = net.body.layer4.register_forward_hook(lambda module, args, out: seen.update(shape=tuple(out.shape[-2:])))
    with torch.no_grad():
        net.eval()(torch.rand(1, 1, size, size))
    hook.remove()
    return seen["shape"]


@pytest.mark.parametrize("stem, size", [("imagenet", 32), ("imagenet", 40), ("imagenet", 64), ("cifar", 8),
                                        ("cifar", 28), ("cifar", 32)])
def test_last_stage_size_is_the_map_the_last_stage_computes(stem, size):
    net = pretrained.build("resnet18", 4, in_channels=1, image_size=size, seed=0, stem=stem)
    side = pretrained.last_stage_size(size, stem)
    assert last_stage_map(net, size) == (side, side)


def test_the_cifar_stem_is_a_3x3_stride_1_conv_with_no_max_pool_and_the_same_named_weights():
    cifar = pretrained.build("resnet18", 4, in_channels=1, image_size=32, seed=0, stem="cifar")
    imagenet = pretrained.build("resnet18", 4, in_channels=1, image_size=32, seed=0)
    conv = cifar.body.stem.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert list(dict(cifar.body.stem.named_children())) == ["conv1", "bn1", "relu"]
    assert "maxpool" in dict(imagenet.body.stem.named_children())
    for block in pretrained.BLOCKS:
        cifar.get_submodule(block)
    # The two stems differ only in the stem's conv: every other weight has the same name and shape,
    # so freezing, pruning and SNOW address them alike.
    a, b = cifar.state_dict(), imagenet.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if a[k].shape != b[k].shape] == ["body.stem.conv1.weight"]
    # At 32 px the last stage keeps a 4 x 4 map, where the ImageNet stem leaves it one pixel.
    assert last_stage_map(cifar, 32) == (4, 4) and last_stage_map(imagenet, 32) == (1, 1)
    assert cifar.meta["stem"] == "cifar"


def must_not_train(*args, **kwargs):
    raise AssertionError("a cached checkpoint was trained again")


def test_a_cifar_stem_source_is_cached_by_its_stem_and_a_checkpoint_of_the_other_stem_is_refused(
        cifar_checkpoint, checkpoint, tmp_path, monkeypatch):
    import snipnb.train

    blob = torch.load(cifar_checkpoint, weights_only=True)
    assert blob["meta"]["stem"] == "cifar" and torch.load(checkpoint, weights_only=True)["meta"]["stem"] == "imagenet"
    net, _ = pretrained.load_checkpoint(cifar_checkpoint, stem="cifar", image_size=32)
    assert net.body.stem.conv1.kernel_size == (3, 3) and not hasattr(net.body.stem, "maxpool")
    for key, value in blob["state_dict"].items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(ValueError, match="stem is 'cifar' there, 'imagenet' was asked for"):
        pretrained.load_checkpoint(cifar_checkpoint, stem="imagenet")
    with pytest.raises(ValueError, match="stem is 'imagenet' there, 'cifar' was asked for"):
        pretrained.load_checkpoint(checkpoint, stem="cifar")

    monkeypatch.setattr(snipnb.train, "fit", must_not_train)
    folder = cifar_checkpoint.parent
    asked = dict(model="resnet18", dataset="synthetic", classes=[0, 1], epochs=1, seed=0, cache_dir=folder,
                 progress=False)
    assert pretrained.pretrain(**asked, stem="cifar") == cifar_checkpoint
    loaded = pretrained.load_source("synthetic:0-1", "resnet18", 32, epochs=1, stem="cifar", cache_dir=folder)
    assert torch.equal(loaded.body.stem.conv1.weight, blob["state_dict"]["body.stem.conv1.weight"])
    with pytest.raises(AssertionError, match="trained again"):  # the other stem is another checkpoint
        pretrained.pretrain(**asked, stem="imagenet")
    # A CIFAR-stem file under the name the ImageNet-stem source is cached by is refused, naming the stem.
    forged = tmp_path / "cache"
    forged.mkdir()
    (forged / checkpoint.name).write_bytes(cifar_checkpoint.read_bytes())
    with pytest.raises(ValueError, match="stem is 'cifar' there, 'imagenet' was asked for"):
        pretrained.pretrain(**{**asked, "cache_dir": forged}, stem="imagenet")


def test_snow_splits_a_cifar_stem_source_at_its_taps(cifar_checkpoint):
    source, _ = pretrained.load_checkpoint(cifar_checkpoint)
    stages, layout = snow.split_source(source)
    assert layout.stem == (3, 64, 3, 1, 1, None)  # in, out, kernel, stride, padding, no max-pool
    x = torch.rand(2, 1, 32, 32)
    _, features = stages(x)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8),
                                                     (512, 4, 4)]
    model = snow.build_snow(pretrained.load_checkpoint(cifar_checkpoint)[0], 5, width_divisor=8, seed=0).eval()
    assert model(x).shape == (2, 5)


# --- data for sources and targets --------------------------------------------------------------------

def test_splits_renumber_their_classes_in_order():
    assert pretrained.parse_split("mnist") == ("mnist", None)
    assert pretrained.parse_split("mnist:5-9") == ("mnist", (5, 6, 7, 8, 9))
    assert pretrained.parse_split("cifar100:3,1,7-8") == ("cifar100", (1, 3, 7, 8))
    split = pretrained.load_split("synthetic:7,2", train=True)
    assert split.num_classes == 2 and sorted(split.labels.unique().tolist()) == [0, 1]
    full = pretrained.load_split("synthetic", train=True)
    assert torch.equal(split.images[split.labels == 1], full.images[full.labels == 7])


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: pretrained.build("vgg11", 10), "model must be one of"),
    (lambda: pretrained.build("resnet18", 10, image_size=16), "image_size must be an int >= 32 for resnet18"),
    (lambda: pretrained.build("resnet18", 10, in_channels=2), "in_channels must be 1 or 3"),
    (lambda: pretrained.build("resnet18", 10, stem="tiny"), "stem must be one of"),
    (lambda: pretrained.build("resnet18", 10, image_size=4, stem="cifar"),
     "image_size must be an int >= 8 for resnet18 with the cifar stem"),
    (lambda: pretrained.load_source("imagenet", stem="cifar"), "stem='cifar' has no ImageNet weights"),
    (lambda: pretrained.imagenet("resnet18", image_size=24), "image_size"),
    (lambda: pretrained.imagenet("resnet18", weights="IMAGENET22K"), "weights must be one of"),
    (lambda: pretrained.freeze(pretrained.build("resnet18", 2, image_size=32), "layer3"), "train_blocks must be"),
    (lambda: pretrained.parse_split("imagenette"), "dataset must be one of"),
    (lambda: pretrained.parse_split("mnist:5-x"), "classes in 'mnist:5-x'"),
    (lambda: pretrained.load_split("synthetic:9-10", True), "names class 10"),
    (lambda: pretrained.load_source("omniglot", "resnet18"), "source='omniglot'"),
    (lambda: pretrained.pretrain("resnet18", "synthetic", epochs=0), "epochs must be a positive int"),
    (lambda: pretrained.pretrain("resnet18", "synthetic", threads=0), "threads must be >= 1, got 0"),
])
def test_bad_input_is_a_clear_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_cached_file_that_holds_another_source_is_refused_naming_the_field(checkpoint, tmp_path):
    # The cache is found by file name; a checkpoint for other classes copied over it (4-way head,
    # classes 0-3, where 0-4 was asked) must not load as if it were the one asked for.
    blob = torch.load(checkpoint, weights_only=True)
    asked = dict(model="resnet18", dataset="synthetic", classes=[0, 1], epochs=1, seed=0, image_size=32)
    folder = tmp_path / "cache"
    folder.mkdir()
    target = folder / checkpoint.name  # where pretrain looks for these settings
    for field, value, says in [("classes", [1], "classes is \\[1\\] there, \\[0, 1\\] was asked for"),
                               ("epochs", 3, "epochs is 3 there, 1 was asked for"),
                               ("seed", 7, "seed is 7 there, 0 was asked for"),
                               ("dataset", "mnist", "dataset is 'mnist' there, 'synthetic' was asked for")]:
        forged = {**blob, "meta": {**blob["meta"], field: value}}
        torch.save(forged, target)
        with pytest.raises(ValueError, match=says):
            pretrained.pretrain(**asked, cache_dir=folder, progress=False)
        with pytest.raises(ValueError, match=says):
            pretrained.load_source("synthetic:0-1", "resnet18", 32, epochs=1, seed=0, cache_dir=folder)
    # metadata that contradict the head: three classes named, a 2-way head
    torch.save({**blob, "meta": {**blob["meta"], "classes": [0, 1, 2]}}, target)
    with pytest.raises(ValueError, match="3 classes .* its head has 2 outputs"):
        pretrained.load_checkpoint(target)
    with pytest.raises(TypeError, match="cannot check \\['colour'\\]"):
        pretrained.load_checkpoint(checkpoint, colour="red")


def test_a_pretraining_killed_part_way_goes_on_from_its_last_epoch_to_the_same_source(tmp_path, monkeypatch):
    from test_train import killed_at_the_second_save

    asked = dict(model="resnet18", dataset="synthetic", classes=[0, 1], epochs=2, seed=0, device="cpu", progress=False)
    whole = pretrained.pretrain(**asked, cache_dir=tmp_path / "whole")
    revive = killed_at_the_second_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pretrained.pretrain(**asked, cache_dir=tmp_path / "killed")
    revive()
    assert [p.suffix for p in (tmp_path / "killed").iterdir()] == [".partial"]  # no checkpoint, one epoch's state
    resumed = pretrained.pretrain(**asked, cache_dir=tmp_path / "killed")
    assert [p.name for p in (tmp_path / "killed").iterdir()] == [resumed.name] == [whole.name]  # the state is gone
    first, second = torch.load(whole)["state_dict"], torch.load(resumed)["state_dict"]
    assert all(torch.equal(first[name], second[name]) for name in first)
