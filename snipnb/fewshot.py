"""Experiment 1: few-shot learning from scratch, one run per `FewShotRun`.

A run trains one model on k images per class of a dataset (the nested subset `few_shot_indices`
draws for its seed) and tests it on the whole test split. Pruning happens once at initialisation by
one of `experiment.METHODS`, or `snip_cross_domain`: labeled SNIP scored on images of another
dataset (`source`) as many as the few-shot set holds, while training on the target.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from . import checks, data, models
from .experiment import METHODS as PRUNING_METHODS
from .experiment import build_pruned
from .pruning import sparsity_report
from .stack import check_stackable, fit_stack
from .train import default_device, fit

METHODS = (*PRUNING_METHODS, "snip_cross_domain")
# What cross-domain SNIP scores on, per target, unless a run names another source.
# MNIST's other domain is real: the UCI digits scikit-learn ships (scanned on other devices, 8 px
# upsampled), so cross-domain SNIP on MNIST needs no download.
CROSS_DOMAIN_SOURCE = {"cifar100": "cifar10", "cifar10": "cifar100", "mnist": "uci_digits", "uci_digits": "mnist",
                       "synthetic": "synthetic"}


@dataclasses.dataclass(frozen=True)
class FewShotRun:
    """Every setting that changes a result; where the data live and which device runs it do not."""

    model: str = "resnet18"
    dataset: str = "cifar100"
    k: int = 5
    method: str = "dense"
    sparsity: float = 0.0
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = True
    eval_every: int = 1  # test every this many epochs (best_acc is the best of those tests)
    source: str | None = None  # cross-domain saliency data; None: CROSS_DOMAIN_SOURCE[dataset]
    bn_mode: str = "eval"  # BatchNorm while scoring saliency: running statistics ("eval") or the batch's
    synthetic_shape: tuple = (3, 32)  # (channels, image size) when dataset or source is synthetic

    def __post_init__(self):
        # Checked here, so a grid with one bad cell fails before its first run, not hours later.
        checks.one_of("model", self.model, models.NAMES)
        checks.one_of("dataset", self.dataset, data.DATASETS)
        checks.one_of("method", self.method, METHODS)
        checks.one_of("bn_mode", self.bn_mode, ("eval", "train"))
        if self.source is not None:
            checks.one_of("source", self.source, data.DATASETS)
        checks.integer("k", self.k, 1, data.smallest_class(self.dataset))
        checks.number("sparsity", self.sparsity, 0, below=1)
        if self.method == "dense" and self.sparsity != 0:
            raise ValueError(f"sparsity must be 0 for method='dense', got {self.sparsity}")
        checks.integer("seed", self.seed, 0)
        checks.integer("epochs", self.epochs, 1)
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("eval_every", self.eval_every, 1)
        checks.number("lr", self.lr, above=0)
        checks.number("weight_decay", self.weight_decay, 0)


def _data(run: FewShotRun):
    """(few-shot training set, test set, pruning method, saliency data, saliency images per class,
    a key naming the saliency data)."""
    train = data.load_cached(run.dataset, True, run.synthetic_shape)
    test = data.load_cached(run.dataset, False, run.synthetic_shape)
    subset = train.subset(data.few_shot_indices(train.labels, run.k, run.seed))
    if run.method != "snip_cross_domain":
        # Labeled and label-free SNIP score the few-shot set itself: it is all the data there is.
        return subset, test, run.method, subset, run.k, ("few-shot", run.dataset, run.k, run.seed)
    # A synthetic source draws other class prototypes than a synthetic target: another domain.
    source_name = run.source or CROSS_DOMAIN_SOURCE[run.dataset]
    source = data.load_cached(source_name, True, run.synthetic_shape, synthetic_seed=1)
    # As many source images as the few-shot set has, balanced over the source's classes.
    return subset, test, "snip", source, math.ceil(len(subset) / source.num_classes), ("source", source_name)


def masks_for(run: FewShotRun):
    """The masks `run` trains with (None for dense), without training: for comparing criteria."""
    subset, _, method, saliency_data, per_class, _ = _data(run)
    return build_pruned(run.model, method, run.sparsity, run.seed, subset, saliency_data=saliency_data,
                        saliency_per_class=per_class, bn_mode=run.bn_mode)[1]


def _result(model, history) -> dict:
    report = sparsity_report(model)
    return dict(final_acc=100 * history.final_acc, best_acc=100 * history.best_acc, density=report.density,
                collapsed=len(report.collapsed))


def run_few_shot(run: FewShotRun, device=None) -> dict:
    """Train and test one few-shot run; return its results as a flat dict of numbers."""
    return run_few_shot_stack([run], device, stacked=False)[0]


# What the runs of one stack may differ in: everything else (model, data, k, recipe) they share.
STACK_VARIES = ("seed", "method", "sparsity", "source", "bn_mode")


def stack_key(run: FewShotRun) -> tuple:
    """Runs with equal keys can train as one stack (`run_few_shot_stack`, `sweep.run_sweep(stack=)`)."""
    return tuple((f.name, getattr(run, f.name)) for f in dataclasses.fields(run) if f.name not in STACK_VARIES)


def run_few_shot_stack(runs: list[FewShotRun], device=None, *, stacked: bool = True) -> list[dict]:
    """Train and test `runs` as one stack (`stack.fit_stack`); one result dict per run, in order.

    The runs must share everything but `STACK_VARIES`. A network's saliency is scored once and
    reused for every sparsity and for shuffled SNIP. `stacked=False`, or a stack of one run, trains
    them one by one with `train.fit` instead, the reference a stack is tested against.
    """
    runs = check_stackable(runs, stack_key)
    device = torch.device(device) if device is not None else default_device()
    cache, built, trains = {}, [], []
    for run in runs:
        subset, test, method, saliency_data, per_class, saliency_key = _data(run)
        model, _ = build_pruned(run.model, method, run.sparsity, run.seed, subset, saliency_data=saliency_data,
                                saliency_per_class=per_class, device=device, cache=cache, saliency_key=saliency_key,
                                bn_mode=run.bn_mode)
        built.append(model)
        trains.append(subset)
    first = runs[0]
    recipe = dict(batch_size=first.batch_size, lr=first.lr, weight_decay=first.weight_decay, augment=first.augment,
                  device=device, eval_every=first.eval_every, progress=False)
    if stacked and len(runs) > 1:
        histories = fit_stack(built, trains, test, first.epochs, seeds=[r.seed for r in runs], **recipe)
    else:
        histories = [fit(m, t, test, first.epochs, seed=r.seed, **recipe) for m, t, r in zip(built, trains, runs)]
    return [_result(model, history) for model, history in zip(built, histories)]


def grid(models, ks, sparsities, methods, seeds: int, **settings) -> list[FewShotRun]:
    """Every (model, k, seed) once dense and once per pruning method and sparsity.

    `settings` are the other `FewShotRun` fields, shared by all runs (dataset, epochs, lr, ...).
    """
    runs = []
    for model in models:
        for k in ks:
            for seed in range(seeds):
                runs.append(FewShotRun(model=model, k=k, seed=seed, **settings))
                runs += [FewShotRun(model=model, k=k, seed=seed, method=method, sparsity=sparsity, **settings)
                         for method in methods if method != "dense" for sparsity in sparsities]
    return runs
