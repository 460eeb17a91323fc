"""SNOW against the three standard transfer baselines, one run per `SnowRun`; what serving T tasks
costs, one measurement per `ServingRun`.

Every run starts from the same pretrained source (`snipnb.pretrained.load_source`) and learns the
target's classes with one training recipe (`snipnb.train.fit`):

    snow  the source frozen, a delta network 1/`width_divisor` as wide subscribing to M of its
          channels at every stage (`snipnb.snow`); the channels are learned (`selection="learned"`:
          SNOW's noisy top-M), or fixed before training: the M with the highest SNIP score on the
          target's training images (`"snip"`), or M at random (`"random"`, the control)
    ft    fine-tune every weight, with a new head
    fe    feature extraction: the stem and the first three stages frozen, the last stage and a new
          head trained
    fo    the final linear layer only (a new head on frozen features, a linear probe)

Every run but FT trains on images it does not augment behind a frozen part (SNOW's whole source,
FE's first stages, FO's whole body): what that part computes is computed once per run for the
training images and once per process for the test and validation images (`snipnb.frozen`), and
the rest trains on it, with the numbers of the whole network up to floating-point rounding.

Besides test accuracy, a run measures what it cost on the device it ran on, after training and on
a copy of the trained network: training and inference images per second on `timing_batch` images,
FLOPs per image (`torch.utils.flop_counter`), the memory a training step holds (parameters,
gradients, momentum, and the activations autograd saves for the backward pass, counted tensor by
tensor, which is the same on every device) and, on CUDA, the peak memory the allocator measured.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from collections import OrderedDict

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import checks, data, frozen, pretrained, snow, tuning
from .loader import DeviceLoader
from .train import default_device, fit, make_optimizer, resolve_device

METHODS = ("snow", "ft", "fe", "fo")
# The part of the source each baseline trains (`snipnb.pretrained.freeze`).
TRAIN_BLOCKS = {"ft": "all", "fe": "last_block", "fo": "head"}
TIMED_STEPS, WARMUP_STEPS = 5, 2
SNOW_FIELDS = ("selection", "m", "sigma", "sigma_schedule", "slot_order", "w_lr", "w_weight_decay", "width_divisor")
# The optimiser every run trains with (given to `fit`, and to the pooling weights' own optimiser).
RECIPE = dict(momentum=0.9, nesterov=True, schedule="cosine")
# The seed's SNOW, as the project first ran it: fixed noise, every channel's slot by source order,
# w trained with the delta's learning rate and weight decay.
SEED_SETTING = dict(sigma_schedule="constant", slot_order="sorted", w_lr=None, w_weight_decay=None)


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _check_split(argument: str, spec: str) -> None:
    try:
        pretrained.parse_split(spec)
    except ValueError as error:
        raise ValueError(f"{argument}={spec!r} is not valid: {error}") from None


def _check_source(source: str, model: str, image_size: int, stem: str) -> None:
    if source != "imagenet":
        _check_split("source", source)
    checks.one_of("model", model, pretrained.ARCHITECTURES)
    checks.one_of("stem", stem, pretrained.STEMS)
    if source == "imagenet" and stem != "imagenet":
        raise ValueError(f"stem={stem!r} needs a source the project pretrains: ImageNet weights have the imagenet stem")
    pretrained.check_image_size(model, image_size, stem)


@functools.lru_cache(maxsize=None)
def architecture_layout(model: str, stem: str = "imagenet") -> snow.Layout:
    """The layout of the ImageNet-architecture `model` with `stem` (no weights needed), to check
    SNOW's settings."""
    return snow.split_source(pretrained.build(model, 10, image_size=pretrained.MIN_IMAGE_SIZES[stem], stem=stem))[1]


def _as_m(m):
    """None, an int, or a tuple of ints (a list is turned into a tuple, so the config stays hashable)."""
    if isinstance(m, list):
        return tuple(m)
    return m


@dataclasses.dataclass(frozen=True)
class SnowRun:
    """Every setting that changes a result; where the data live and which device runs it do not.

    `source` is 'imagenet' (torchvision's weights) or a dataset the project pretrains on, with its
    classes ('mnist:0-4'); `target` a dataset and its classes ('mnist:5-9', 'uci_digits',
    'cifar100'). `k` images per class of the target's training split, or None for all of it.
    SNOW's own settings (`SNOW_FIELDS`) stay at their defaults for the baselines:
    `selection`, `m`, `width_divisor` (`snipnb.snow.build_snow`); how the pooling weights w learn:
    `sigma`, the selection noise at the start of training, and `sigma_schedule`, how it changes
    over the steps (`snipnb.snow.sigma_at`: "cosine" anneals it to 0, "constant" keeps it);
    `slot_order`, where a selected channel enters the delta ("stable" or "sorted",
    `snipnb.snow.ChannelPooling`); `w_lr` and `w_weight_decay`, the learning rate and weight
    decay of w, on the run's schedule (None: the run's `lr`, `weight_decay`). `SEED_SETTING` is
    the seed's SNOW as the project first ran it. `bn_stats` is the baselines' BatchNorm in the
    trained blocks (`snipnb.pretrained.freeze`); SNOW's delta always normalises with its own batch
    statistics. `image_size` is the size the source runs at (a self-pretrained source was
    pretrained at it) and `stem` its stem ('imagenet': 7x7 stride 2 and a max-pool, the only one
    ImageNet weights have; 'cifar': 3x3 stride 1, so that at 32 px the last stage still sees a 4 x 4
    map, see `snipnb.pretrained.build`). `saliency_images`: how many training images SNIP scores
    the channels on (the first of the training set, in the seed's few-shot order).
    `timing_batch`: the batch the cost is measured on. `val_per_class`: hold this many images per
    class of the target's training split out as a validation set (the same for every run, drawn
    before the training images), for choosing settings without the test split; None: no
    validation set.
    """

    source: str = "imagenet"
    target: str = "cifar100"
    model: str = "resnet50"
    method: str = "snow"
    selection: str = "learned"
    m: int | tuple | None = None
    sigma: float = 0.1
    sigma_schedule: str = "cosine"
    slot_order: str = "stable"
    w_lr: float | None = 2.0
    w_weight_decay: float | None = 0.0
    width_divisor: int = 8
    k: int | None = None
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = False
    image_size: int = 224
    stem: str = "imagenet"  # the source's stem: "imagenet" or "cifar" (a self-pretrained source only)
    bn_stats: str = "batch"
    eval_every: int = 1
    test_per_class: int | None = None
    saliency_images: int = 1024
    timing_batch: int = 64
    source_epochs: int = 5
    source_seed: int = 0
    val_per_class: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "m", _as_m(self.m))
        _check_source(self.source, self.model, self.image_size, self.stem)
        _check_split("target", self.target)
        checks.one_of("method", self.method, METHODS)
        checks.one_of("selection", self.selection, snow.SELECTIONS)
        checks.one_of("sigma_schedule", self.sigma_schedule, snow.SIGMA_SCHEDULES)
        checks.one_of("slot_order", self.slot_order, snow.SLOT_ORDERS)
        if self.w_lr is not None:
            checks.number("w_lr", self.w_lr, above=0)
        if self.w_weight_decay is not None:
            checks.number("w_weight_decay", self.w_weight_decay, 0)
        if self.val_per_class is not None:
            checks.integer("val_per_class", self.val_per_class, 1)
        checks.one_of("bn_stats", self.bn_stats, pretrained.BN_STATS)
        layout = architecture_layout(self.model, self.stem)
        snow.check_divisor(layout, self.width_divisor)
        snow.pooled_channels(layout, self.m, self.width_divisor)  # M in 1..N at every tap
        checks.number("sigma", self.sigma, 0)
        if self.k is not None:
            checks.integer("k", self.k, 1)
        if self.test_per_class is not None:
            checks.integer("test_per_class", self.test_per_class, 1)
        for argument in ("epochs", "batch_size", "eval_every", "saliency_images", "timing_batch", "source_epochs"):
            checks.integer(argument, getattr(self, argument), 1)
        checks.integer("seed", self.seed, 0)
        checks.number("lr", self.lr, above=0)
        checks.number("weight_decay", self.weight_decay, 0)
        if self.method != "snow":
            defaults = _defaults(SnowRun)
            changed = [f for f in SNOW_FIELDS if getattr(self, f) != defaults[f]]
            if changed:
                raise ValueError(f"{changed[0]}={getattr(self, changed[0])!r} applies to method='snow' only; "
                                 f"method={self.method!r} takes the default {defaults[changed[0]]!r}")


# ------------------------------------------------------------------------------------------- data


def source_backbone(run) -> pretrained.Backbone:
    """A fresh copy of the pretrained source of `run` (a `SnowRun` or `ServingRun`), head included."""
    return copy.deepcopy(pretrained.cached_source(*pretrained.source_key(run)))


def target_data(run: SnowRun) -> tuple[data.ImageData, data.ImageData]:
    """(training set, test set) of the target (`split_target` without the validation set)."""
    train, _, test = split_target(run)
    return train, test


def split_target(run: SnowRun) -> tuple[data.ImageData, data.ImageData | None, data.ImageData]:
    """(training set, validation set or None, test set) of the target, classes numbered 0..n-1,
    pixels in [0, 1].

    With `val_per_class`, that many images per class of the training split are held out first, the
    same for every run (`data.validation_split`); the training set is `k` images per class of the rest
    (the nested subset `few_shot_indices` draws for the seed) or all the rest. The test set is the
    whole test split, or with `test_per_class` the same class-balanced sample of it for every run
    (drawn with seed 0), so paired runs meet the same images.
    """
    train = pretrained.load_split(run.target, True)
    test = pretrained.load_split(run.target, False)
    held, rest = data.validation_split(train.labels, run.val_per_class)
    val = None if held is None else train.subset(held)
    train = train.subset(rest)
    if run.k is not None:
        train = train.subset(data.few_shot_indices(train.labels, run.k, run.seed))
    if run.test_per_class is not None:
        test = test.subset(data.few_shot_indices(test.labels, run.test_per_class, 0))
    return (pretrained.unit_range(train), None if val is None else pretrained.unit_range(val),
            pretrained.unit_range(test))


# ----------------------------------------------------------------------------------------- models


def build(run: SnowRun, train: data.ImageData, device=None) -> nn.Module:
    """The network `run` trains, before training, on `device`: SNOW over the source (with its
    channels fixed now for `selection` 'snip' or 'random'), or the source with a new head and the
    baseline's blocks frozen."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    source = source_backbone(run)
    if run.method != "snow":
        model = pretrained.new_head(source, train.num_classes, run.seed).to(device)
        pretrained.freeze(model, TRAIN_BLOCKS[run.method], run.bn_stats)
        return model
    model = snow.build_snow(source, train.num_classes, m=run.m, sigma=run.sigma, width_divisor=run.width_divisor,
                            slot_order=run.slot_order, seed=run.seed).to(device)
    if run.selection == "snip":
        snow.fix_selection(model, snow.snip_channels(model, saliency_batches(run, train, device), seed=run.seed))
    elif run.selection == "random":
        snow.fix_selection(model, snow.random_channels(model.layout, run.m, run.width_divisor, run.seed))
    return model


def saliency_batches(run: SnowRun, train: data.ImageData, device) -> DeviceLoader:
    """The target's training images SNIP scores channels on: the first `saliency_images` of them."""
    images = train.subset(torch.arange(min(len(train), run.saliency_images)))
    return DeviceLoader(images, 256, device=device)


def train_run(run: SnowRun, device=None) -> tuple[dict, nn.Module]:
    """Train and test one run; return (results, trained model). See `run_snow` for the results."""
    device = torch.device(device) if device is not None else default_device()
    train, val, test = split_target(run)
    model = build(run, train, device)
    history, log = train_model(run, model, train, test, val=val, device=device)
    results = {"final_acc": 100 * history.final_acc, "best_acc": 100 * history.best_acc,
               "train_seconds": history.seconds,
               "trainable_params": snow.parameter_count(model, trainable=True),
               "total_params": snow.parameter_count(model),
               "source_weights": pretrained.source_fingerprint(*pretrained.source_key(run))}
    # The learning curves: every test (and validation) accuracy (%) during training, at `test_epochs`.
    results.update(test_epochs=list(history.test_epochs), test_curve=[100 * acc for acc in history.test_acc])
    if val is not None:
        results.update(val_acc=100 * history.val_acc[-1], test_at_best_val=100 * history.test_at_best_val,
                       val_curve=[100 * acc for acc in history.val_acc])
    results.update(cost(model, _timing_images(run, train), device))
    if run.method == "snow":
        results.update(selection_summary(run, model, train, device))
    if log is not None:
        results.update(settling(log))
    return results, model


def steps_of(run: SnowRun, train: data.ImageData) -> int:
    """The optimiser steps `run` takes on `train` (`fit` keeps the last, smaller batch)."""
    return run.epochs * math.ceil(len(train) / run.batch_size)


def train_model(run: SnowRun, model: nn.Module, train, test=None, *, val=None,
                device=None) -> tuple:
    """Train `model` (`build(run, ...)`) on `train` with the run's recipe (`snipnb.train.fit`);
    return (its `History`, a `snipnb.snow.SelectionLog` of the learned selection or None).

    For SNOW, the pooling weights w get their own learning rate and weight decay (`w_lr`,
    `w_weight_decay`; `pooling_optimizer`), and with a learned selection the noise follows
    `sigma_schedule`, set before every step, and a `SelectionLog` records how the selection settles.
    Where the run allows it (`stores_frozen_outputs`), what the model's frozen part computes is
    computed once and the rest trains and is tested on it: the same steps on the same numbers, up
    to floating-point rounding.
    """
    device = torch.device(device) if device is not None else default_device()
    steps = steps_of(run, train)
    calls, log, release = [], None, (lambda: None)
    if run.method == "snow":
        w_lr = run.lr if run.w_lr is None else run.w_lr
        w_decay = run.weight_decay if run.w_weight_decay is None else run.w_weight_decay
        if (w_lr, w_decay) != (run.lr, run.weight_decay):
            step, release = pooling_optimizer(model, steps, lr=w_lr, weight_decay=w_decay)
            calls.append(step)
        if run.selection == "learned":
            calls.append(_noise_schedule(run, model, steps))
            log = snow.SelectionLog(model, steps)
            calls.append(log.step)

    def after_step():
        for call in calls:
            call()

    try:
        (train, test, val), takes_them = _frozen_part_once(run, model, train, val, test, device)
        with takes_them():
            history = fit(model, train, test, run.epochs, lr=run.lr, batch_size=run.batch_size,
                          weight_decay=run.weight_decay, augment=run.augment, device=device,
                          eval_every=run.eval_every, val=val, after_step=after_step if calls else None, seed=run.seed,
                          progress=False, **RECIPE)
    finally:
        release()
    return history, log


def stores_frozen_outputs(run: SnowRun) -> bool:
    """Whether `train_model` trains `run` on the stored outputs of its model's frozen part
    (`snipnb.frozen.stored_outputs`): SNOW's whole source, FE's stem and first three stages, FO's
    whole body; never FT, which freezes nothing, nor a run whose augmentation shows the frozen part
    new crops every epoch. A split whose outputs would take more than
    `frozen.STORED_BYTES_PER_SPLIT` still sends the run through the whole network."""
    return run.method != "ft" and not run.augment


# SNOW's source outputs on a target's test and validation sets, kept across the runs of a process
# (`frozen.stored_outputs`); apart from the baselines' (in `frozen`'s own store), which are other
# modules' outputs: a worker running SNOW, FE and FO in turn keeps all three.
_KEPT_SOURCE_OUTPUTS: OrderedDict = OrderedDict()


def _frozen_part_once(run: SnowRun, model: nn.Module, train, val, test, device):
    """((train, test, val) as `fit` is to take them, a function giving the context within which
    `model` takes them): the frozen part's stored outputs and the swap that makes the model start
    after that part (`snow.stored_source`, `frozen.cut`), or the images and nothing to swap."""
    whole_network = ((train, test, val), contextlib.nullcontext)
    if not stores_frozen_outputs(run):
        return whole_network
    if run.method == "snow":
        prefix, swap, kept = model.source, functools.partial(snow.stored_source, model), _KEPT_SOURCE_OUTPUTS
    else:
        trained = pretrained.trained_blocks(TRAIN_BLOCKS[run.method])
        prefix, swap, kept = frozen.frozen_prefix(model, trained), functools.partial(frozen.cut, model, trained), None
    stored = frozen.stored_outputs(prefix, train, val, test, device, batch_size=run.batch_size, seed=run.seed,
                                   kept=kept)
    return whole_network if stored is None else (stored, swap)


def _noise_schedule(run: SnowRun, model: snow.Snow, steps: int):
    done = 0
    snow.set_sigma(model, snow.sigma_at(run.sigma, run.sigma_schedule, 0, steps))

    def step():
        nonlocal done
        done += 1
        snow.set_sigma(model, snow.sigma_at(run.sigma, run.sigma_schedule, done, steps))

    return step


def pooling_optimizer(model: snow.Snow, steps: int, *, lr: float, weight_decay: float):
    """Train the pooling weights w of `model` with their own SGD (the recipe's momentum and cosine
    schedule over `steps` steps, at `lr` and `weight_decay`) beside `fit`'s optimiser, which then
    leaves them alone. Returns (step, release): `step()` goes in `fit`'s `after_step`; `release()`
    undoes the hooks once training is over.

    `fit` optimises every parameter of the model at one learning rate and weight decay. A hook
    takes w's gradient away as soon as backward has accumulated it, so `fit`'s optimiser finds no
    gradient and skips w; `step()` hands the gradient to w's own optimiser. (With parameter groups
    in `fit`, this would be a second group with its own lr and weight decay; the updates are the same.)
    """
    weights = [pool.weight for pool in model.delta.pools]
    optimizer, scheduler = make_optimizer(weights, steps, lr=lr, weight_decay=weight_decay, **RECIPE)
    taken: dict = {}

    def take(weight):
        taken[weight] = weight.grad
        weight.grad = None

    handles = [weight.register_post_accumulate_grad_hook(take) for weight in weights]

    def step():
        for weight in weights:
            weight.grad = taken.pop(weight, None)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def release():
        for handle in handles:
            handle.remove()

    return step, release


def run_snow(run: SnowRun, device=None) -> dict:
    """Train, test and measure one run; return its results as a flat dict of numbers.

    `final_acc`, `best_acc`: test accuracy in percent after the last epoch, and the best of the
    tested epochs (chosen on the test set, so it flatters). `trainable_params`: what the optimiser
    updates, i.e. what one more task adds; `total_params`: what inference uses (a SNOW model's
    source and delta, a baseline's whole network). The cost (`cost`): `train_images_per_s`,
    `infer_images_per_s`, `train_gflops`, `infer_gflops` per image, `train_memory_mb` (counted),
    `peak_memory_mb` (measured on CUDA, NaN elsewhere). With `val_per_class`: `val_acc`, the
    validation accuracy after the last epoch, and `test_at_best_val`, the test accuracy at the
    tested epoch with the best validation accuracy. For SNOW, which channels it subscribed to
    (`selection_summary`), and for a learned selection how it settled over training (`settling`).
    `source_weights`: which source's weights the run started from (`pretrained.source_fingerprint`).
    The learning curves: `test_curve` (and with a validation set `val_curve`), the accuracy (%) at
    each of `test_epochs` (`transfer.curves` lays them out one row per epoch).
    """
    return train_run(run, device)[0]


def _timing_images(run: SnowRun, train: data.ImageData) -> data.ImageData:
    # As many training images as the timing batch holds, repeated when the few-shot set is smaller.
    return train.subset(torch.arange(run.timing_batch) % len(train))


# ------------------------------------------------------------------------------------------- cost


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device) -> float:
    """Seconds one call of `step` takes on `device` (CUDA's queue drained before and after)."""
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def training_step(model: nn.Module, x, y, amp: bool):
    """A function doing one training step of `model` on (x, y): forward, backward, and SGD with
    momentum on its trainable parameters, in bf16 autocast where `amp`. It changes `model`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step():
        model.train()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference_step(model: nn.Module, x, amp: bool):
    """A function doing one inference pass of `model` on `x`: eval mode, no gradient."""

    @torch.no_grad()
    def step():
        model.eval()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)

    return step


def training_state_bytes(model: nn.Module) -> int:
    """Bytes a training step holds besides activations: parameters, and the gradients and momentum
    of the trainable ones."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(p.numel() * p.element_size() for p in model.parameters()) + 2 * trained


def cost(model: nn.Module, images: data.ImageData, device) -> dict:
    """What one batch of `images` costs `model` (measured on a copy, so `model` is left as it is).

    Images per second are the median of `TIMED_STEPS` steps after `WARMUP_STEPS`: training steps
    (`training_step`) and inference passes (`inference_step`), in bf16 autocast on CUDA as `fit` trains.
    """
    device, amp, channels_last = resolve_device(device, None, None)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = copy.deepcopy(model).to(device, memory_format=fmt)
    x, y = next(iter(DeviceLoader(images, len(images), device=device, channels_last=channels_last)))
    model.train()
    saved = saved_activation_bytes(model, x, y, amp, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_rate = _images_per_s(training_step(model, x, y, amp), len(y), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    state = training_state_bytes(model)
    infer_rate = _images_per_s(inference_step(model, x, amp), len(y), device)
    train_flops, infer_flops = count_flops(model, x, y)
    return {"train_images_per_s": train_rate, "infer_images_per_s": infer_rate,
            "train_gflops": train_flops / len(y) / 1e9, "infer_gflops": infer_flops / len(y) / 1e9,
            "train_memory_mb": (state + saved) / 2**20, "peak_memory_mb": peak}


def _images_per_s(step, batch: int, device: torch.device, steps: int = TIMED_STEPS) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    times = [timed(step, device) for _ in range(steps)]
    return batch / sorted(times)[len(times) // 2]


def saved_activation_bytes(model, x, y, amp: bool, device) -> int:
    """Bytes autograd keeps for the backward pass of one training step, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def count_flops(model: nn.Module, x, y) -> tuple[int, int]:
    """(training, inference) FLOPs of one batch: forward and backward, and a forward in eval mode."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return train, counter.get_total_flops()


# -------------------------------------------------------------------------------------- selection


def selection_summary(run: SnowRun, model: snow.Snow, train: data.ImageData, device) -> dict:
    """Which source channels a trained SNOW model subscribes to, as numbers.

    `snip_overlap`: the share of its selected channels that SNIP, scored on the same training
    images, also ranks in its top M (mean over taps); `chance_overlap`: what a random selection
    shares on average (M/N, mean over taps). `w_moved`: the mean |w - 1| over all pooling weights,
    how far training moved them from their initial 1. `zero_score_fraction` (all taps) and
    `zero_score_fraction_last` (the last stage's): the share of source channels whose SNIP score is
    exactly 0, channels the training images cannot move the loss through, among which SNIP's
    choice is arbitrary. The source is frozen, so these are the scores SNOW·SNIP chose by.
    """
    chosen = snow.selection(model)
    scores = snow.snip_channel_scores(model, saliency_batches(run, train, device), seed=run.seed)
    snipped = snow.top_channels(model, scores)
    shares = [len(set(a.tolist()) & set(b.tolist())) / len(a) for a, b in zip(chosen, snipped)]
    pools = model.delta.pools
    moved = torch.cat([(p.weight.detach() - 1).abs().cpu() for p in pools]).mean().item()
    zero = torch.cat([s == 0 for s in scores]).float().mean().item()
    return {"snip_overlap": sum(shares) / len(shares),
            "chance_overlap": sum(p.m / p.channels for p in pools) / len(pools), "w_moved": moved,
            "zero_score_fraction": zero, "zero_score_fraction_last": (scores[-1] == 0).float().mean().item()}


def settling(log: snow.SelectionLog) -> dict:
    """How a learned selection settled over training (`snipnb.snow.SelectionLog`), as numbers and,
    per window of training steps and per tap, lists.

    `overlap_curve`, `slot_kept_curve`, `settled_curve`: the log's `overlap`, `kept` and
    `settled()`, one list per window, one value per tap; `curve_steps`: the training step each
    window ends at (1-based, the last is the run's last step). `train_eval_overlap`: the overlap
    over all steps and taps, how much of what the delta trained on was what evaluation takes;
    `train_eval_overlap_last`: the same over the last window; `slot_kept`: the mean share of slots
    that kept their channel from one step to the next.
    """
    overlap, kept = torch.tensor(log.overlap), torch.tensor(log.kept)
    weights = torch.tensor(log.window_steps, dtype=torch.float).view(-1, 1)
    return {"overlap_curve": log.overlap, "slot_kept_curve": log.kept, "settled_curve": log.settled(),
            "curve_steps": torch.tensor(log.window_steps).cumsum(0).tolist(),
            "train_eval_overlap": float((overlap * weights).sum() / (weights.sum() * overlap.shape[1])),
            "train_eval_overlap_last": float(overlap[-1].mean()), "slot_kept": float(kept.nanmean())}


# ------------------------------------------------------------------------------------------- grids


def grid(source: str, target: str, models, ks, methods, seeds: int, *, lrs: dict | None = None,
         selections=("learned",), full_epochs: int | None = None, source_per_seed: bool = False,
         **settings) -> list[SnowRun]:
    """Every (model, k, seed) once per method, SNOW once per selection rule. `k=None` trains on the
    whole training split, for `full_epochs` epochs if given (a few-shot set needs more epochs than a
    full split for as many steps). `lrs` maps a method to its learning rate (default: `settings["lr"]`
    or SnowRun's). `settings` are the other `SnowRun` fields, shared by all runs; SNOW's own
    (`SNOW_FIELDS`: `m`, `sigma`, `w_lr`, ...) go to SNOW runs only. With `source_per_seed`, seed s
    starts from a source pretrained from seed s (`source_seed`); otherwise every run from one source.
    The seeds, 0 to `seeds` − 1, stay below `tuning.SEARCH_SEED_BASE`, where the learning-rate search's
    (`lr_grid`) begin, so that no search's winning run is compared.

    Every k is checked against the target's smallest class here, before anything runs.
    """
    tuning.check_grid_seeds(seeds)
    return _runs(source, target, models, ks, methods, range(seeds), lrs=lrs, selections=selections,
                 full_epochs=full_epochs, source_per_seed=source_per_seed, **settings)


def _runs(source: str, target: str, models, ks, methods, seeds: range, *, lrs: dict | None = None,
          selections=("learned",), full_epochs: int | None = None, source_per_seed: bool = False,
          **settings) -> list[SnowRun]:
    """`grid`'s runs on the seeds `seeds` (any: a search's included)."""
    for method in methods:
        checks.one_of("method", method, METHODS)
    for selection in selections:
        checks.one_of("selection", selection, snow.SELECTIONS)
    lrs = dict(lrs or {})
    unknown = [m for m in lrs if m not in METHODS]
    if unknown:
        raise ValueError(f"lrs names methods that do not exist: {unknown}; they are {METHODS}")
    if full_epochs is not None:
        checks.integer("full_epochs", full_epochs, 1)
    check_ks(target, ks)
    if source_per_seed:
        pretrained.check_source_per_seed(source, settings)
    snow_settings = {f: settings.pop(f) for f in SNOW_FIELDS if f in settings}
    runs = []
    for model in models:
        for k in ks:
            for seed in seeds:
                for method in methods:
                    common = dict(source=source, target=target, model=model, k=k, method=method, **settings,
                                  **pretrained.seed_fields(seed, source_per_seed))
                    if k is None and full_epochs is not None:
                        common["epochs"] = full_epochs
                    if method in lrs:
                        common["lr"] = lrs[method]
                    if method != "snow":
                        runs.append(SnowRun(**common))
                        continue
                    runs += [SnowRun(**common, **{**snow_settings, "selection": s}) for s in selections]
    return runs


def ablation(base: SnowRun, seeds: int, *, source_per_seed: bool = False, **values) -> list[SnowRun]:
    """SNOW's `base` run with one setting changed at a time, for every seed: `ablation(base, 3,
    m=[4, 16], sigma=[0, 0.5])` varies M, then σ. The base itself is not repeated. With
    `source_per_seed`, seed s starts from a source pretrained from seed s, as in `grid`, whose seeds
    these are (below `tuning.SEARCH_SEED_BASE`)."""
    tuning.check_grid_seeds(seeds)
    runs = []
    for field, options in values.items():
        if field not in SNOW_FIELDS:
            raise ValueError(f"an ablation varies one of {SNOW_FIELDS}, got {field!r}")
        for value in options:
            if _as_m(value) == getattr(base, field):
                continue
            runs += [pretrained.at_seed(dataclasses.replace(base, **{field: value}), seed, source_per_seed)
                     for seed in range(seeds)]
    return runs


def lr_grid(candidates: dict, source: str, target: str, models, k, seeds: int, *,
            first_seed: int = tuning.SEARCH_SEED_BASE, **settings) -> list[SnowRun]:
    """Every method in `candidates` (a dict: method -> learning rates) at each of its rates, at one
    `k`, for (model, seed) with `seeds` seeds from `first_seed` on: the runs `select_lrs` chooses each
    method's learning rate from. SNOW runs with its learned selection. `settings` are `grid`'s and
    must hold `val_per_class`: the choice is made on a validation set, never on the test split.

    The seeds are at or above `tuning.SEARCH_SEED_BASE`, which no grid reaches: on a grid's seeds the
    search's runs at the chosen rates would be grid runs, compared having won on their own validation
    accuracy. With `source_per_seed`, each search seed starts from a source of its own, pretrained
    from that seed (the same checkpoint as chapter 02's search seed at the same source settings)."""
    if not candidates:
        raise ValueError("candidates must map at least one method to its learning rates, got {}")
    for method, rates in candidates.items():
        checks.one_of("method", method, METHODS)
        if not rates or any(not isinstance(lr, (int, float)) or not lr > 0 for lr in rates):
            raise ValueError(f"the learning rates of {method!r} must be a non-empty list of numbers > 0, got {rates!r}")
    if settings.get("val_per_class") is None:
        raise ValueError("lr_grid needs val_per_class: the learning rates are chosen on validation images held out "
                         "of the training split, never on the test split")
    checks.integer("seeds", seeds, 1)
    checks.integer("first_seed", first_seed, 0)
    searched = range(first_seed, first_seed + seeds)
    tuning.check_search_seeds(searched)
    settings.pop("selections", None)
    return [run for method, rates in candidates.items() for lr in sorted(set(rates))
            for run in _runs(source, target, models, [k], [method], searched, lrs={method: lr},
                             selections=("learned",), **settings)]


def select_lrs(results: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """({method: the learning rate with its highest mean validation accuracy after the last epoch},
    the table it was read from) over the runs of `lr_grid` (`results`: one row per run, as
    `run_sweep` returns them). The table holds the mean `val_acc` per method and learning rate, and
    how many runs each mean is over. Only the validation accuracy is read; on a tie the smaller
    rate wins. Each method's choice is `tuning.select_lr`'s, with its checks: a validation accuracy
    for every run, and every rate run on the same (model, seed) cells."""
    view = results[["method", "lr", "model", "seed", "val_acc"]]  # no test column is looked at
    chosen = {method: _select_lr(method, runs) for method, runs in view.groupby("method", sort=False)}
    table = view.groupby(["method", "lr"]).val_acc.agg(["mean", "count"]).rename(
        columns={"mean": "val_acc", "count": "runs"})
    return chosen, table


def _select_lr(method: str, runs: pd.DataFrame) -> float:
    try:
        return tuning.select_lr(runs, ["model"], str)[0]
    except ValueError as error:
        raise ValueError(f"select_lrs, method {method!r}: {error}") from None


def check_ks(target: str, ks) -> None:
    """A ValueError naming any k larger than the target's smallest training class."""
    labels = pretrained.load_split(target, True).labels
    for k in ks:
        if k is not None:
            data.few_shot_indices(labels, k, 0)


# -------------------------------------------------------------------------------- serving T tasks


SERVING = ("snow", "ft", "fe", "fo")


@dataclasses.dataclass(frozen=True)
class ServingRun:
    """The cost of answering `tasks` target tasks for every image, each with `num_classes` classes.

    `snow`: one source pass and one delta per task. `ft`: one fine-tuned copy of the whole network
    per task. `fe`: the frozen stem and first three stages once, then a copy of the last stage and a
    head per task. `fo`: the frozen network once, then a head per task. The weights do not change
    the cost, so nothing is trained: every copy is the source itself and every delta is freshly
    initialised. All variants are timed in turn, `repeats` times, on the same batch.
    """

    source: str = "imagenet"
    model: str = "resnet50"
    image_size: int = 224
    stem: str = "imagenet"  # the source's stem, as `SnowRun.stem`
    tasks: int = 1
    num_classes: int = 100
    m: int | tuple | None = None
    width_divisor: int = 8
    batch: int = 64
    repeats: int = 5
    source_epochs: int = 5
    source_seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "m", _as_m(self.m))
        _check_source(self.source, self.model, self.image_size, self.stem)
        layout = architecture_layout(self.model, self.stem)
        snow.check_divisor(layout, self.width_divisor)
        snow.pooled_channels(layout, self.m, self.width_divisor)
        for argument in ("tasks", "num_classes", "batch", "repeats", "source_epochs"):
            checks.integer(argument, getattr(self, argument), 1)


class _SharedTrunk(nn.Module):
    """A frozen trunk computed once, then one branch per task."""

    def __init__(self, trunk: nn.Module, branches):
        super().__init__()
        self.trunk, self.branches = trunk, nn.ModuleList(branches)

    def forward(self, x):
        h = self.trunk(x)
        return [branch(h) for branch in self.branches]


def serving_models(run: ServingRun) -> dict[str, nn.Module]:
    """The four ways of serving `run.tasks` tasks (`ServingRun`), as modules returning a list of logits."""
    source = source_backbone(run)
    body = source.body
    heads = [nn.Linear(source.embed_dim, run.num_classes) for _ in range(run.tasks)]
    copies = [pretrained.new_head(copy.deepcopy(source), run.num_classes, t) for t in range(run.tasks)]
    stem = nn.Sequential(body.input, body.stem, body.layer1, body.layer2, body.layer3)
    stages, layout = snow.split_source(copy.deepcopy(source))
    deltas = [snow.build_delta(layout, run.num_classes, m=run.m, width_divisor=run.width_divisor, seed=t)
              for t in range(run.tasks)]
    return {"snow": snow.SnowTasks(stages, deltas),
            "ft": _SharedTrunk(nn.Identity(), copies),
            "fe": _SharedTrunk(stem, [nn.Sequential(copy.deepcopy(body.layer4), body.pool, head) for head in heads]),
            "fo": _SharedTrunk(body, heads)}


def run_serving(run: ServingRun, device=None) -> dict:
    """Images per second answered for every task, parameters held and FLOPs per image, for each way
    of serving (`<way>_images_per_s`, `<way>_params`, `<way>_gflops`), all on `device`, timed in
    turn on the same batch (the median of `repeats` rounds, after one warm-up round)."""
    device, amp, channels_last = resolve_device(device if device is not None else default_device(), None, None)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    served = {name: module.to(device, memory_format=fmt).eval() for name, module in serving_models(run).items()}
    channels = served["ft"].branches[0].body.input.channels
    size = run.image_size
    x = torch.rand(run.batch, channels, size, size, device=device).contiguous(memory_format=fmt)
    times = {name: [] for name in served}

    @torch.no_grad()
    def answer(module):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return module(x)

    for round_ in range(run.repeats + 1):
        for name, module in served.items():
            seconds = timed(lambda: answer(module), device)
            if round_:  # the first round warms up
                times[name].append(seconds)
    results = {}
    for name, module in served.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
        results[f"{name}_images_per_s"] = run.batch / sorted(times[name])[len(times[name]) // 2]
        results[f"{name}_params"] = snow.parameter_count(module)
        results[f"{name}_gflops"] = counter.get_total_flops() / run.batch / 1e9
    return results
