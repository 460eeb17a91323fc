"""Experiment 2: few-shot transfer from a pretrained backbone, one run per `TransferRun`.

A run starts from a pretrained source (`snipnb.pretrained.load_source`), gives it a new head for
the target's classes, trains only `train_blocks` on k images per class of the target (the nested
subset `few_shot_indices` draws for the seed) and tests on the target's whole test split.

Pruning happens once, before fine-tuning, on the weights that will be trained and on nothing else:
SNIP (labeled, or label-free against the network's own predictions) is scored on the adaptation
set itself; `magnitude` keeps the largest pretrained weights; `random` and `shuffled_snip` are the
controls. `scratch` trains the same architecture from a random initialisation on the same subset,
so that what pretraining buys is measured in the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch

from . import data, pretrained
from .experiment import METHODS as PRUNING_METHODS
from .experiment import DATA_FREE_METHODS, make_masks
from .loader import DeviceLoader
from .pruning import apply_masks, scores
from .train import default_device, fit

METHODS = (*PRUNING_METHODS, "scratch")
TRAIN_BLOCKS = tuple(pretrained.TRAIN_BLOCKS)
SALIENCY_BATCH = 256  # images per saliency batch; the gradients of all batches are summed


@dataclasses.dataclass(frozen=True)
class TransferRun:
    """Every setting that changes a result; where the data live and which device runs it do not.

    `source` is 'imagenet' or a dataset the project pretrains on, with its classes ('mnist:0-4');
    `target` a dataset and its classes ('mnist:5-9', 'uci_digits', 'cifar100'). `image_size` is
    the size the backbone runs at; a self-pretrained source was pretrained at that size for
    `source_epochs` epochs from `source_seed`.
    """

    source: str = "imagenet"
    target: str = "cifar100"
    model: str = "resnet18"
    k: int = 5
    method: str = "dense"
    sparsity: float = 0.0
    train_blocks: str = "last_block"
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    weight_decay: float = 5e-4
    augment: bool = False
    image_size: int = 128
    bn_stats: str = "source"  # BatchNorm in the trained blocks: the source's statistics, or each batch's
    eval_every: int = 1  # test every this many epochs (best_acc is the best of those tests)
    test_per_class: int | None = None  # test on a fixed sample of this many per class; None: the whole split
    scope: str = "global"  # rank weights over all trained layers, or per layer
    source_epochs: int = 5
    source_seed: int = 0

    def __post_init__(self):
        if self.source != "imagenet":
            _valid_split("source", self.source)
        _valid_split("target", self.target)
        checks = [("model", self.model, pretrained.ARCHITECTURES), ("method", self.method, METHODS),
                  ("train_blocks", self.train_blocks, TRAIN_BLOCKS), ("scope", self.scope, ("global", "layerwise")),
                  ("bn_stats", self.bn_stats, pretrained.BN_STATS)]
        for argument, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")
        pretrained.check_image_size(self.model, self.image_size)
        counts = ["k", "epochs", "batch_size", "eval_every", "source_epochs"]
        for argument in counts + (["test_per_class"] if self.test_per_class is not None else []):
            value = getattr(self, argument)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive int, got {argument}={value!r}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method in ("dense", "scratch") and self.sparsity != 0:
            raise ValueError(f"sparsity must be 0 for method={self.method!r}, got {self.sparsity}")
        if self.method == "scratch" and (self.train_blocks, self.bn_stats) != ("all", "batch"):
            raise ValueError(f"method='scratch' needs train_blocks='all' and bn_stats='batch' (nothing is "
                             f"pretrained to freeze or to take statistics from), got train_blocks="
                             f"{self.train_blocks!r}, bn_stats={self.bn_stats!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _valid_split(argument: str, spec: str) -> None:
    try:
        pretrained.parse_split(spec)
    except ValueError as error:
        raise ValueError(f"{argument}={spec!r} is not valid: {error}") from None


def source_backbone(run: TransferRun) -> pretrained.Backbone:
    """A fresh copy of the pretrained source of `run`, head included."""
    return copy.deepcopy(_source(run.source, run.model, run.image_size, run.source_epochs, run.source_seed))


@functools.lru_cache(maxsize=2)
def _source(source: str, model: str, image_size: int, epochs: int, seed: int) -> pretrained.Backbone:
    # Read once per process: a sweep worker runs many configs from the same source.
    return pretrained.load_source(source, model, image_size, epochs=epochs, seed=seed)


def target_data(run: TransferRun) -> tuple[data.ImageData, data.ImageData]:
    """(k-shot training subset, test set) of the target, classes numbered 0..n-1, pixels in [0, 1].

    The test set is the whole test split, or with `test_per_class` the same class-balanced sample of
    it for every run (drawn with seed 0), so paired runs are always tested on the same images.
    """
    train = pretrained.load_split(run.target, True)
    test = pretrained.load_split(run.target, False)
    subset = train.subset(data.few_shot_indices(train.labels, run.k, run.seed))
    if run.test_per_class is not None:
        test = test.subset(_test_sample(test, run.test_per_class))
    return pretrained.unit_range(subset), pretrained.unit_range(test)


def _test_sample(test: data.ImageData, per_class: int):
    try:
        return data.few_shot_indices(test.labels, per_class, 0)
    except ValueError as error:
        raise ValueError(f"test_per_class={per_class} is more than the test split holds: {error}") from None


def prepare(run: TransferRun, subset: data.ImageData, device=None):
    """The network `run` fine-tunes, before training: (model, masks, trained blocks).

    The source with a new head from `run.seed` (or, for `scratch`, the same architecture and input
    normalisation freshly initialised from `run.seed`), frozen but for `run.train_blocks`, pruned
    by `run.method` over its trainable weights, scored on `subset`. masks is None when unpruned.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    source = source_backbone(run)
    if run.method == "scratch":
        adapter = source.body.input
        model = pretrained.build(run.model, subset.num_classes, adapter.channels, adapter.image_size,
                                 adapter.mean.flatten().tolist(), adapter.std.flatten().tolist(), seed=run.seed)
    else:
        model = pretrained.new_head(source, subset.num_classes, run.seed)
    model.to(device)
    trained = pretrained.freeze(model, run.train_blocks, run.bn_stats)
    method = "dense" if run.method == "scratch" else run.method
    batches = None
    if method not in DATA_FREE_METHODS:
        batches = DeviceLoader(subset, SALIENCY_BATCH, device=device)
    masks = make_masks(model, method, run.sparsity, batches, seed=run.seed, scope=run.scope,
                       params=pretrained.trainable_weights(model))
    if masks is not None:
        apply_masks(model, masks)
    return model, masks, trained


def adaptation_saliency(run: TransferRun, subset: data.ImageData, device=None) -> dict[str, torch.Tensor]:
    """Labeled SNIP scores of the weights `run` trains, on `subset`, before any pruning: what `snip`
    ranks. A score of exactly 0 marks a weight these images cannot move the loss through (a dead
    unit, or a 3x3 kernel's outer taps on a 1 x 1 feature map, which only ever meet padding)."""
    model, _, _ = prepare(dataclasses.replace(run, method="dense", sparsity=0.0), subset, device)
    batches = DeviceLoader(subset, SALIENCY_BATCH, device=next(model.parameters()).device)
    return scores(model, batches, "snip", params=pretrained.trainable_weights(model), seed=run.seed)


def fine_tune(run: TransferRun, device=None):
    """Fine-tune and test one transfer run; return (results, trained model).

    Results: `final_acc` and `best_acc`, test accuracies in percent; `density`, the fraction of the
    trained conv and linear weights kept; `trained_weights`, how many parameters the optimiser
    updates (pruned ones excluded); `collapsed`, the number of trained layers pruned away entirely.
    """
    device = torch.device(device) if device is not None else default_device()
    subset, test = target_data(run)
    model, masks, _ = prepare(run, subset, device)
    history = fit(model, subset, test, run.epochs, lr=run.lr, batch_size=run.batch_size,
                  weight_decay=run.weight_decay, augment=run.augment, device=device, eval_every=run.eval_every,
                  seed=run.seed, progress=False)
    masks = masks or {}
    pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
    scored = sum(m.numel() for m in masks.values())
    results = {"final_acc": 100 * history.final_acc, "best_acc": 100 * history.best_acc,
               "density": 1 - pruned / scored if masks else 1.0,
               "trained_weights": sum(p.numel() for p in model.parameters() if p.requires_grad) - pruned,
               "collapsed": sum(int(not m.any()) for m in masks.values())}
    return results, model


def run_transfer(run: TransferRun, device=None) -> dict:
    """Fine-tune and test one transfer run; return its results as a flat dict of numbers (`fine_tune`)."""
    return fine_tune(run, device)[0]


def grid(source: str, target: str, models, ks, sparsities, methods, train_blocks, seeds: int, *,
         reference_blocks=(), scratch: bool = True, scratch_lr: float | None = None, **settings) -> list[TransferRun]:
    """Every (model, k, seed): dense fine-tuning and each pruning method and sparsity, for every
    `train_blocks`; dense fine-tuning alone for every `reference_blocks` (e.g. the linear probe, as
    a reference); with `scratch`, the same network trained from scratch (all blocks, batch
    statistics, at `scratch_lr` if given). `settings` are the other `TransferRun` fields, shared by
    all runs.

    Every k is checked against the target's smallest class here, before anything runs.
    """
    unknown = [m for m in methods if m not in METHODS or m == "scratch"]
    if unknown:
        raise ValueError(f"methods must be among {tuple(m for m in METHODS if m != 'scratch')}, got {unknown}")
    both = set(train_blocks) & set(reference_blocks)
    if both:
        raise ValueError(f"reference_blocks repeats train_blocks {sorted(both)}: each setting is in one list")
    train = pretrained.load_split(target, True)
    for k in ks:
        data.few_shot_indices(train.labels, k, 0)  # a ValueError naming k if a class is too small
    if settings.get("test_per_class") is not None:
        _test_sample(pretrained.load_split(target, False), settings["test_per_class"])
    runs = []
    for model in models:
        for k in ks:
            for seed in range(seeds):
                common = dict(source=source, target=target, model=model, k=k, seed=seed, **settings)
                for blocks in train_blocks:
                    runs.append(TransferRun(**common, train_blocks=blocks))
                    runs += [TransferRun(**common, train_blocks=blocks, method=method, sparsity=sparsity)
                             for method in methods if method != "dense" for sparsity in sparsities]
                runs += [TransferRun(**common, train_blocks=blocks) for blocks in reference_blocks]
                if scratch:
                    lr = {} if scratch_lr is None else {"lr": scratch_lr}
                    runs.append(TransferRun(**{**common, **lr, "method": "scratch", "train_blocks": "all",
                                               "bn_stats": "batch"}))
    return runs
