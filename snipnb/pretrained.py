"""Pretrained backbones: torchvision's ImageNet ResNets, and sources the project pretrains itself.

A backbone is a `snipnb.models.Net` (`body` then a linear `head`) whose body is named blocks:

    body.input   images in [0, 1] -> the backbone's channels, size and normalisation (no weights)
    body.stem    conv 7x7 stride 2, BN, ReLU, max-pool: the ImageNet stem (`stem="imagenet"`);
                 or conv 3x3 stride 1, BN, ReLU: the CIFAR stem (`stem="cifar"`), which keeps
                 the image's size, so at 32 px the last stage still sees 4 x 4 (the ImageNet
                 stem leaves it 1 x 1, where a 3x3 kernel's outer taps meet only padding)
    body.layer1 .. body.layer4   the four residual stages
    body.pool    global average pooling
    head         the classifier

The input block is why one backbone takes any image: it averages or repeats channels, resizes to
the `image_size` the backbone runs at, and normalises with the statistics its weights were trained
with (ImageNet's for torchvision's weights, the pretraining data's for the project's own). Feed it
`unit_range(data)`, whose loader yields pixels in [0, 1].

Two kinds of source:
- `imagenet(model, image_size)`: torchvision's weights API downloads the file into the torch hub
  cache (`$TORCH_HOME/hub/checkpoints`) and checks its hash; offline, the file must already be there.
- `pretrain(model, dataset, classes, epochs, seed, stem=...)`: trains the backbone on real data the
  machine has and saves a checkpoint with its metadata, cached by its settings; `load_checkpoint` refuses
  one that does not match what is asked for. `load_source(spec, model)` covers both.

`freeze(model, train_blocks, bn_stats)` trains only the last blocks; the rest keeps its weights and
its BatchNorm statistics bit for bit (frozen blocks stay in eval mode whatever `train()` is called).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
import urllib.error
import urllib.parse
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from . import __version__, checks, data, devices, frozen, provenance
from .data import _offline, _socket_timeout
from .files import write_atomically
from .models import Net
from .masks import named_weights
from .pruning import prunable

ARCHITECTURES = ("resnet18", "resnet50")
BLOCKS = ("body.stem", "body.layer1", "body.layer2", "body.layer3", "body.layer4", "head")
# How many of BLOCKS, counted from the end, each setting trains. A block is a residual stage.
TRAIN_BLOCKS = {"head": 1, "last_block": 2, "last_two_blocks": 3, "all": len(BLOCKS)}
# What BatchNorm normalises with in the trained blocks: the source's running statistics, or each batch's.
BN_STATS = ("source", "batch")
# The first layers of the network: torchvision's ImageNet stem, or the CIFAR stem (`build`).
STEMS = ("imagenet", "cifar")
# How many times each stem and the stages after it halve the image before the last stage: the
# ImageNet stem twice (a stride-2 conv, a max-pool) and three strided stages; the CIFAR stem never.
HALVINGS = {"imagenet": 5, "cifar": 3}
MIN_IMAGE_SIZES = {stem: 2 ** halvings for stem, halvings in HALVINGS.items()}  # the last stage sees 1 x 1
MIN_IMAGE_SIZE = MIN_IMAGE_SIZES["imagenet"]
IMAGENET_WEIGHTS = {"resnet18": torchvision.models.ResNet18_Weights,
                    "resnet50": torchvision.models.ResNet50_Weights}
DOWNLOAD_TIMEOUT_S = 30.0
# The CPU threads a source is pretrained with, whatever the caller runs at. On the CPU, training is
# bit-reproducible for a given thread count but not across counts, and few-shot fine-tuning turns a
# source's last bits into points of accuracy (benchmarks/RESULTS.md): a sweep worker (1 thread) and a
# notebook's kernel (2 threads on the report's machine) would otherwise make two different sources
# under one name. 2 is what chapters 02 and 05 were pretrained at. On a GPU it changes nothing.
PRETRAIN_THREADS = 2
# What a source is pretrained in: bf16 autocast where the device does bf16 natively, fp32 elsewhere.
# A source is one draw for the fine-tuning that follows (chapters pretrain one per seed), so what
# matters is that it is as good, which its test accuracy shows, and it is made in under half the time
# through the CIFAR stem on a CPU with AMX (benchmarks/RESULTS.md). The fine-tuning runs stay fp32.
PRECISIONS = ("fp32", "bf16")


def _check_choice(argument: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {tuple(allowed)}, got {value!r}")


def check_image_size(model: str, image_size, stem: str = "imagenet") -> None:
    """A ValueError unless `image_size` is an int `model` with `stem` can run at."""
    _check_choice("stem", stem, STEMS)
    least = MIN_IMAGE_SIZES[stem]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < least:
        raise ValueError(f"image_size must be an int >= {least} for {model} with the {stem} stem (it halves "
                         f"the image {HALVINGS[stem]} times), got image_size={image_size!r}")


def last_stage_size(image_size: int, stem: str = "imagenet") -> int:
    """The side of the feature map the last stage (`body.layer4`) computes at `image_size`."""
    _check_choice("stem", stem, STEMS)
    return -(-image_size // 2 ** HALVINGS[stem])  # every halving rounds up (padding 1 or 3)


# ------------------------------------------------------------------------------------ the network


class InputAdapter(nn.Module):
    """Pixels in [0, 1], any channel count and size -> what the backbone was trained on.

    One channel is repeated to three (a grey image seen by an RGB network); three are averaged to
    one. Images are resized bilinearly (antialiased when shrinking) to `image_size`, then
    normalised with `mean` and `std`, kept as buffers so a checkpoint carries them.
    """

    def __init__(self, channels: int, image_size: int, mean, std):
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got mean={mean}, std={std}")
        self.channels, self.image_size = channels, image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ValueError(f"the backbone takes 1 or {self.channels} channels, got {x.shape[1]}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.image_size)
        return (x - self.mean) / self.std


class Backbone(Net):
    """A `Net` made of named blocks (`BLOCKS`). The blocks named in `eval_blocks` stay in eval mode,
    so `model.train()` (which every training loop calls) never updates their BatchNorm statistics.
    `meta` says where the weights came from."""

    def __init__(self, body: nn.Module, embed_dim: int, num_classes: int, meta: dict | None = None):
        super().__init__(body, embed_dim, num_classes)
        self.eval_blocks: tuple[str, ...] = ()
        self.meta = dict(meta or {})

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.eval_blocks:
            self.get_submodule(name).eval()
        return self


def _assemble(resnet: torchvision.models.ResNet, channels: int, image_size: int, mean, std,
              meta: dict | None = None, stem: str = "imagenet") -> Backbone:
    """Move a torchvision ResNet's modules into a Backbone; the fc layer becomes the head. The CIFAR
    stem leaves out the max-pool."""
    layers = OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu)
    if stem == "imagenet":
        layers["maxpool"] = resnet.maxpool
    stem = nn.Sequential(layers)
    body = nn.Sequential(OrderedDict(
        input=InputAdapter(channels, image_size, mean, std), stem=stem,
        layer1=resnet.layer1, layer2=resnet.layer2, layer3=resnet.layer3, layer4=resnet.layer4,
        pool=nn.Sequential(resnet.avgpool, nn.Flatten())))
    model = Backbone(body, resnet.fc.in_features, resnet.fc.out_features, meta)
    model.head = resnet.fc
    return model


def build(model: str, num_classes: int, in_channels: int = 3, image_size: int = 224, mean=None, std=None,
          seed: int | None = None, stem: str = "imagenet") -> Backbone:
    """A randomly initialised ImageNet-architecture `model` (torchvision's init) for
    `in_channels` x `image_size`^2 inputs, normalised by `mean`/`std` (default 0.5 and 0.25 per
    channel). With `seed` the init is reproducible and the global RNG is left untouched.

    `stem="imagenet"` keeps torchvision's stem (7x7 conv stride 2, max-pool); `stem="cifar"` puts a
    3x3 stride-1 conv in its place and drops the max-pool, as CIFAR ResNets do (`snipnb.models`'
    `resnet18`): the same blocks and weights' names, on a 16 times larger map from the stem on.
    """
    _check_choice("model", model, ARCHITECTURES)
    check_image_size(model, image_size, stem)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    mean = (0.5,) * in_channels if mean is None else tuple(mean)
    std = (0.25,) * in_channels if std is None else tuple(std)

    def make() -> Backbone:
        resnet = getattr(torchvision.models, model)(weights=None, num_classes=num_classes)
        if stem == "cifar":
            resnet.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        elif in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if stem == "cifar" or in_channels != 3:
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
        return _assemble(resnet, in_channels, image_size, mean, std,
                         {"source": "random init", "seed": seed, "stem": stem}, stem)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return make()


def new_head(model: Backbone, num_classes: int, seed: int) -> Backbone:
    """Replace the head by a fresh linear layer for `num_classes`, initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        head = nn.Linear(model.embed_dim, num_classes)
    model.head = head.to(next(model.parameters()).device)
    return model


# ----------------------------------------------------------------------------- freezing blocks


def freeze(model: Backbone, train_blocks: str, bn_stats: str = "batch") -> list[str]:
    """Train only the last blocks (`TRAIN_BLOCKS`); return the names of the blocks left trainable.

    Every other block loses `requires_grad` (the optimiser never touches it) and stays in eval
    mode (its BatchNorm statistics never move): it is bit-identical after training. In the trained
    blocks BatchNorm normalises with each batch's statistics and updates its running ones
    (`bn_stats="batch"`, ordinary fine-tuning), or keeps normalising with the source's
    (`bn_stats="source"`: only its scale and shift train), which a batch of a few images, or a
    1 x 1 feature map, cannot estimate.
    """
    trained = trained_blocks(train_blocks)
    _check_choice("bn_stats", bn_stats, BN_STATS)
    frozen = BLOCKS[:-len(trained)]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(tuple(f"{block}." for block in trained)))
    model.eval_blocks = BLOCKS if bn_stats == "source" else frozen
    model.train(model.training)
    return list(trained)


def trained_blocks(train_blocks: str) -> list[str]:
    """The names (`BLOCKS`) of the blocks `train_blocks` trains (`TRAIN_BLOCKS`), in order."""
    if train_blocks not in TRAIN_BLOCKS:
        raise ValueError(f"train_blocks must be one of {tuple(TRAIN_BLOCKS)}, got {train_blocks!r}")
    return list(BLOCKS[-TRAIN_BLOCKS[train_blocks]:])


def trainable_weights(model: nn.Module) -> list[str]:
    """The prunable weights (conv and linear) that will be trained: what SNIP scores in transfer."""
    weights = named_weights(model)  # a masked weight's trainable tensor is its parametrization's original
    return [name for name in prunable(model) if weights[name].requires_grad]


# ----------------------------------------------------------------------------- ImageNet weights


def imagenet_weights(model: str, weights: str = "IMAGENET1K_V1"):
    """torchvision's weights enum member for `model` (e.g. `ResNet18_Weights.IMAGENET1K_V1`)."""
    _check_choice("model", model, ARCHITECTURES)
    enum = IMAGENET_WEIGHTS[model]
    _check_choice("weights", weights, [w.name for w in enum])
    return enum[weights]


def imagenet_weights_path(model: str, weights: str = "IMAGENET1K_V1") -> pathlib.Path:
    """Where torchvision keeps (or would download) the file: the torch hub cache's checkpoints."""
    url = imagenet_weights(model, weights).url
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def imagenet(model: str = "resnet18", image_size: int = 224, weights: str = "IMAGENET1K_V1",
             progress: bool = False) -> Backbone:
    """torchvision's ImageNet `model` with its 1000-class head, run at `image_size` and normalised
    with the weights' own mean and std.

    The file comes through torchvision's weights API: read from the torch hub cache, else
    downloaded there with its hash checked. With $SNIPNB_OFFLINE set, or when the download fails,
    a FileNotFoundError names the path it looked for.
    """
    enum_member = imagenet_weights(model, weights)
    check_image_size(model, image_size)
    path = imagenet_weights_path(model, weights)
    name = f"{type(enum_member).__name__}.{weights}"
    how_to = (f"Place the file from {enum_member.url} at {path} (the torch hub cache, moved with $TORCH_HOME), "
              f"or run once online.")
    if not path.is_file() and _offline():
        raise FileNotFoundError(f"ImageNet weights {name} not found at {path}; SNIPNB_OFFLINE is set, so no "
                                f"download was tried. {how_to}")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            state = enum_member.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as error:
        raise FileNotFoundError(f"ImageNet weights {name} not found at {path}, and the download failed: "
                                f"{error}. {how_to}") from error
    resnet = getattr(torchvision.models, model)(weights=None)
    resnet.load_state_dict(state)
    transform = enum_member.transforms()
    meta = {"source": "imagenet", "weights": name, "path": str(path), "model": model, "stem": "imagenet",
            "image_size": image_size, "imagenet_top1": enum_member.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
    return _assemble(resnet, 3, image_size, tuple(transform.mean), tuple(transform.std), meta)


# ------------------------------------------------------------------------- data for a source/target


def parse_split(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """'mnist' -> ('mnist', None): every class; 'mnist:0-4' or 'mnist:5,7,9' -> the dataset and classes."""
    name, _, classes = str(spec).partition(":")
    _check_choice("dataset", name, data.DATASETS)
    if not classes:
        return name, None
    try:
        picked = []
        for part in classes.split(","):
            low, _, high = part.partition("-")
            picked += list(range(int(low), int(high or low) + 1))
    except ValueError:
        picked = []
    if not picked or len(set(picked)) != len(picked) or min(picked) < 0:
        raise ValueError(f"classes in {spec!r} must look like '0-4' or '5,7,9' (distinct, >= 0)")
    return name, tuple(sorted(picked))


def load_split(spec: str, train: bool) -> data.ImageData:
    """The split of dataset `spec` ('mnist:0-4', ...) with its classes renumbered 0..n-1 in order."""
    name, classes = parse_split(spec)
    full = data.load_cached(name, train)
    if classes is None:
        return full
    if max(classes) >= full.num_classes:
        raise ValueError(f"{spec!r} names class {max(classes)}, but {name} has {full.num_classes} classes")
    kept = full.classes(classes)
    lookup = torch.full((full.num_classes,), -1, dtype=torch.int64)
    lookup[list(classes)] = torch.arange(len(classes))
    return dataclasses.replace(kept, labels=lookup[kept.labels], num_classes=len(classes),
                               name=f"{name}:{','.join(map(str, classes))}")


def unit_range(images: data.ImageData) -> data.ImageData:
    """The same images, normalised to plain [0, 1] by the loader: a backbone normalises them itself."""
    channels = images.images.shape[1]
    return dataclasses.replace(images, mean=(0.0,) * channels, std=(1.0,) * channels)


# --------------------------------------------------------------------------------- checkpoints


def checkpoint_dir(root=None) -> pathlib.Path:
    """`root` if given, else $SNIPNB_CHECKPOINTS, else ~/.cache/snipnb/checkpoints."""
    if root is None:
        root = os.environ.get("SNIPNB_CHECKPOINTS") or pathlib.Path.home() / ".cache" / "snipnb" / "checkpoints"
    return pathlib.Path(root).expanduser()


def save_checkpoint(model: Backbone, meta: dict, path) -> pathlib.Path:
    """Write weights and metadata to a temporary file, then rename it into place: a run killed while
    writing leaves no file under `path` that a later run could take for a finished checkpoint."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return write_atomically(path, lambda f: torch.save({"state_dict": state, "meta": meta}, f))


# What a checkpoint's metadata must match when asked for: every setting `pretrain` is keyed by,
# and the input shape the weights take.
CHECKED = ("model", "stem", "dataset", "classes", "epochs", "seed", "image_size", "in_channels", "lr",
           "batch_size", "weight_decay", "augment", "threads", "precision")


def load_checkpoint(path, **expected) -> tuple[Backbone, dict]:
    """(backbone, metadata) from a checkpoint of `pretrain`, read with `torch.load(weights_only=True)`.

    Every setting in `expected` (any of `CHECKED`: `model`, `stem`, `dataset`, `classes`, `epochs`,
    `seed`, `image_size`, `in_channels`, ...) that is not None must equal the checkpoint's, or a
    ValueError names each field that differs. A file's name is no proof of what it holds: a checkpoint copied
    over a cached one is refused here, not loaded. The head must have one output per class of the
    metadata, and the weights' names and shapes must fit the architecture.
    """
    unknown = sorted(set(expected) - set(CHECKED))
    if unknown:
        raise TypeError(f"load_checkpoint() cannot check {unknown}; it checks {CHECKED}")
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
        raise ValueError(f"{path} is not a snipnb checkpoint: it has no 'state_dict' and 'meta'")
    meta, state = blob["meta"], blob["state_dict"]
    if "classes" in expected and expected["classes"] is not None:
        expected = {**expected, "classes": sorted(int(c) for c in expected["classes"])}
    differ = [f"{key} is {meta.get(key)!r} there, {value!r} was asked for"
              for key, value in expected.items() if value is not None and meta.get(key) != value]
    if differ:
        raise ValueError(f"checkpoint {path} does not match: " + "; ".join(differ))
    classes = meta.get("classes")
    if classes is not None and meta.get("num_classes") != len(classes):
        raise ValueError(f"checkpoint {path} does not match itself: its metadata name {len(classes)} classes "
                         f"{classes}, its head has {meta.get('num_classes')} outputs")
    # Checkpoints written before the stem was a setting all have the ImageNet stem (their metadata
    # lack `stem`, so asking for one by name refuses them).
    backbone = build(meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"], meta["mean"],
                     meta["std"], stem=meta.get("stem", "imagenet"))
    _check_state(backbone.state_dict(), state, f"checkpoint {path} (model={meta['model']!r})")
    backbone.load_state_dict(state)
    backbone.meta = {**meta, "source": meta["dataset"], "path": str(path)}
    return backbone, meta


def _check_state(expected: dict, found: dict, what: str) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: {tuple(found[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} weights (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights the model does not have (first: {unexpected[0]})")
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        parts.append(f"shapes differ for {', '.join(shapes[:3])}{more}")
    if parts:
        raise ValueError(f"{what} does not fit the architecture: " + "; ".join(parts))


def pretrain_settings(model: str, dataset: str, classes=None, epochs: int = 5, seed: int = 0, *, image_size: int = 32,
                      lr: float = 0.1, batch_size: int = 128, weight_decay: float = 5e-4,
                      stem: str = "imagenet", threads: int = PRETRAIN_THREADS, precision: str = "fp32") -> dict:
    """The settings a pretrained source is keyed and checked by (its checkpoint's name and metadata).
    `threads` and `precision` are among them: on the CPU another thread count, and bf16 against fp32
    anywhere, make other weights."""
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("model", model, ARCHITECTURES)
    check_image_size(model, image_size, stem)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    checks.integer("threads", threads, 1)
    spec = dataset if classes is None else f"{dataset}:{','.join(str(int(c)) for c in classes)}"
    name, picked = parse_split(spec)
    return {"model": model, "stem": stem, "dataset": name, "classes": None if picked is None else list(picked),
            "epochs": epochs, "seed": seed, "image_size": image_size, "lr": lr, "batch_size": batch_size,
            "weight_decay": weight_decay, "augment": data.recipe_defaults(name)["augment"], "threads": threads,
            "precision": precision}


def pretrain_precision(device=None, amp: bool | None = None) -> str:
    """What a source pretrains in on `device` (default: `devices.default_device()`): with `amp=None`,
    "bf16" where the device does bf16 natively (`devices.bf16_native`) and "fp32" elsewhere;
    `amp=False` "fp32"; `amp=True` "bf16", or "fp32" with one warning where bf16 is not native."""
    device = torch.device(device) if device is not None else devices.default_device()
    if amp is None:
        return "bf16" if devices.bf16_native(device) else "fp32"
    return "bf16" if devices.autocast_enabled(device, amp, "training") else "fp32"


def pretrain(model: str, dataset: str, classes=None, epochs: int = 5, seed: int = 0, *, image_size: int = 32,
             lr: float = 0.1, batch_size: int = 128, weight_decay: float = 5e-4, stem: str = "imagenet",
             threads: int = PRETRAIN_THREADS, amp: bool | None = None, cache_dir=None, device=None,
             progress: bool = True) -> pathlib.Path:
    """Train `model` with `stem` (`build`) from scratch on `classes` of `dataset` (all if None) and
    return its checkpoint.

    The checkpoint is cached in `checkpoint_dir(cache_dir)` under a name made from every setting,
    so a second call with the same settings returns at once. It holds the weights and metadata:
    the settings, the input shape, the normalisation, the test accuracy on those classes, the
    library and torch versions, and the device it was made on. Training is `snipnb.train.fit` with its
    defaults (crop-and-flip augmentation for CIFAR only), on `threads` CPU threads whatever the caller
    runs at (`PRETRAIN_THREADS`), so the same settings make the same bits on any thread count; another
    CPU's instruction set (`cpu_capability` in the metadata) or a GPU may still differ in the last bits.
    Training runs in bf16 autocast or fp32 as `pretrain_precision(device, amp)` says (default: bf16
    where the device does it natively); the precision is one of the settings. A pretraining killed
    part-way goes on from its last finished epoch at the next call with the same settings, to the same
    bits (`fit`'s `state_file`, kept beside the checkpoint as `<name>.partial` until it is saved).
    """
    from .train import fit  # the training floor, needed only to pretrain

    precision = pretrain_precision(device, amp)
    settings = pretrain_settings(model, dataset, classes, epochs, seed, image_size=image_size, lr=lr,
                                 batch_size=batch_size, weight_decay=weight_decay, stem=stem, threads=threads,
                                 precision=precision)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = checkpoint_dir(cache_dir) / f"{model}-{settings['dataset']}-{key}.pt"
    if path.is_file():
        load_checkpoint(path, **settings)  # the file under this name must hold what the name promises
        return path

    name, picked, augment = settings["dataset"], settings["classes"], settings["augment"]
    spec = name if picked is None else f"{name}:{','.join(map(str, picked))}"
    train, test = load_split(spec, True), load_split(spec, False)
    in_channels = train.images.shape[1]
    device = torch.device(device) if device is not None else devices.default_device()
    # The training state after each epoch, beside the checkpoint-to-be: a pretraining killed part-way (a
    # machine taken back) goes on from its last epoch at the next call, to the same bits.
    partial = path.with_suffix(".partial")
    with devices.cpu_threads(threads):
        backbone = build(model, train.num_classes, in_channels, image_size, train.mean, train.std, seed=seed,
                         stem=stem)
        history = fit(backbone, unit_range(train), unit_range(test), epochs, lr=lr, batch_size=batch_size,
                      weight_decay=weight_decay, augment=augment, device=device, eval_every=epochs, seed=seed,
                      amp=precision == "bf16", state_file=partial,
                      progress=progress, desc=f"pretrain {model} ({stem} stem) on {spec}")
        made_on = provenance.device_name(device)  # inside, so it names the pinned thread count
    meta = {**settings, "in_channels": in_channels, "num_classes": train.num_classes,
            "mean": list(train.mean), "std": list(train.std), "test_acc": 100 * history.final_acc,
            "train_loss": history.train_loss[-1], "seconds": history.seconds, "snipnb_version": __version__,
            "torch_version": str(torch.__version__), "device": made_on,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    saved = save_checkpoint(backbone, meta, path)
    partial.unlink()
    return saved


def load_source(source: str, model: str = "resnet18", image_size: int | None = None, *, epochs: int = 5,
                seed: int = 0, stem: str = "imagenet", amp: bool | None = None, cache_dir=None, device=None,
                progress: bool = False) -> Backbone:
    """The pretrained backbone `source` names, with the head it was trained with.

    `source` is 'imagenet' (torchvision's weights, `image_size` default 224, the ImageNet stem only)
    or a dataset the project pretrains on itself, with classes if not all: 'mnist', 'mnist:0-4'
    (`image_size` default 32, `epochs`, `seed`, `stem` and `amp` of the pretraining; cached, see `pretrain`).
    """
    _check_choice("stem", stem, STEMS)
    if source == "imagenet":
        if stem != "imagenet":
            raise ValueError(f"stem={stem!r} has no ImageNet weights: torchvision's ResNets have the ImageNet stem; "
                             f"use stem='imagenet', or a source the project pretrains ('mnist', ...)")
        return imagenet(model, 224 if image_size is None else image_size)
    try:
        name, classes = parse_split(source)
    except ValueError as error:
        raise ValueError(f"source={source!r} is neither 'imagenet' nor a dataset to pretrain on: {error}") from None
    image_size = 32 if image_size is None else image_size
    path = pretrain(model, name, classes, epochs, seed, image_size=image_size, stem=stem, amp=amp, cache_dir=cache_dir,
                    device=device, progress=progress)
    settings = pretrain_settings(model, name, classes, epochs, seed, image_size=image_size, stem=stem,
                                 precision=pretrain_precision(device, amp))
    return load_checkpoint(path, **settings)[0]


def check_source_per_seed(source: str, settings: dict) -> None:
    """A grid that gives seed s a source pretrained from seed s needs a source the project pretrains,
    and no `source_seed` of its own in `settings` (which would say: one source for every run)."""
    if source == "imagenet":
        raise ValueError("source_per_seed=True needs a source the project pretrains ('mnist:0-4', ...): "
                         "torchvision's ImageNet weights are one source")
    if "source_seed" in settings:
        raise ValueError(f"source_per_seed=True gives each seed its own source, but source_seed="
                         f"{settings['source_seed']!r} names one for every run: give one or the other")


def seed_fields(seed: int, source_per_seed: bool = False) -> dict:
    """The fields of a `TransferRun` or `SnowRun` that `seed` sets: `seed`, and with `source_per_seed`
    its source's `source_seed` too (seed s fine-tunes the source pretrained from seed s)."""
    return {"seed": seed, **({"source_seed": seed} if source_per_seed else {})}


def at_seed(run, seed: int, source_per_seed: bool = False):
    """`run` (a `TransferRun` or `SnowRun`) at another `seed`, paired with its source as the grids pair
    them (`seed_fields`)."""
    return dataclasses.replace(run, **seed_fields(seed, source_per_seed))


def source_key(run) -> tuple:
    """The settings that name a run's pretrained source (a `TransferRun`, `SnowRun` or `ServingRun`),
    in the order `cached_source` and `source_fingerprint` take them."""
    return run.source, run.model, run.image_size, run.source_epochs, run.source_seed, run.stem


@functools.lru_cache(maxsize=2)
def cached_source(source: str, model: str, image_size: int | None, epochs: int, seed: int, stem: str) -> Backbone:
    """`load_source`, read once per process: a sweep worker runs many configs from the same source.
    Shared, so a caller copies it before changing it."""
    return load_source(source, model, image_size, epochs=epochs, seed=seed, stem=stem)


@functools.lru_cache(maxsize=2)
def source_fingerprint(source: str, model: str, image_size: int | None, epochs: int, seed: int, stem: str) -> str:
    """16 hex digits over `cached_source`'s weights and buffers: which source a run started from.

    The settings name a source, not its bits: a source pretrained again (on another thread count,
    machine or library version) differs in its last bits, and few-shot fine-tuning can turn that
    into points of accuracy. A record that carries this says whether a re-run started where it did."""
    state = cached_source(source, model, image_size, epochs, seed, stem).state_dict()
    return frozen.fingerprint(*state.values())[:16]
