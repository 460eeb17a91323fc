"""Experiment 1: few-shot learning from scratch, one run per `FewShotRun`.

A run trains one model on k images per class of a dataset (the nested subset `few_shot_indices`
draws for its seed) and tests it on the whole test split. With `val_per_class`, a validation set is
held out of the training split once (`data.validation_split`), before any k-shot subset is drawn:
the same images for every run, disjoint from every subset, so settings (the learning rate) and
the checkpoint (`test_at_best_val`) are chosen on it, never on the test split.

`epochs` counts passes over the k-shot set, and at k = 1 a pass over 10 images is one optimiser
step: 30 epochs would train for 30 steps. `min_steps` puts a floor under a run's length in
optimiser steps (`epochs_for`), so the smallest sets train longest in epochs, and `evaluations`
spreads that many tests over each run whatever its length. Pruning happens once at initialisation by
one of `experiment.METHODS`, or `snip_cross_domain`: labeled SNIP scored on images of another
dataset (`source`) as many as the few-shot set holds, while training on the target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import pandas as pd
import torch

from . import checks, data, models, tuning
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
    evaluations: int | None = None  # test this many times spread over the run instead (`train.tested_epochs`)
    min_steps: int = 0  # train at least this many optimiser steps, in more epochs if need be (`epochs_for`)
    val_per_class: int | None = None  # hold out this many training images per class for validation; None: none
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
        if self.val_per_class is not None:
            checks.integer("val_per_class", self.val_per_class, 1, data.smallest_class(self.dataset) - 1)
        # The k-shot subsets are drawn from what validation leaves.
        checks.integer("k", self.k, 1, data.smallest_class(self.dataset) - (self.val_per_class or 0))
        checks.number("sparsity", self.sparsity, 0, below=1)
        if self.method == "dense" and self.sparsity != 0:
            raise ValueError(f"sparsity must be 0 for method='dense', got {self.sparsity}")
        checks.integer("seed", self.seed, 0)
        checks.integer("epochs", self.epochs, 1)
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("eval_every", self.eval_every, 1)
        checks.integer("min_steps", self.min_steps, 0)
        if self.evaluations is not None:
            checks.integer("evaluations", self.evaluations, 1)
        checks.number("lr", self.lr, above=0)
        checks.number("weight_decay", self.weight_decay, 0)


def epochs_for(k: int, num_classes: int, epochs: int, min_steps: int = 0, batch_size: int = 32) -> int:
    """The epochs a run on `k` images of each of `num_classes` classes trains: `epochs`, or more
    where that many passes over the k-shot set would take fewer than `min_steps` optimiser steps (a
    pass is ceil(k · classes / batch_size) steps; 10 images at batch 32 are one step per epoch)."""
    for name, value, least in (("k", k, 1), ("num_classes", num_classes, 1), ("epochs", epochs, 1),
                               ("min_steps", min_steps, 0), ("batch_size", batch_size, 1)):
        checks.integer(name, value, least)
    steps_per_epoch = math.ceil(k * num_classes / batch_size)
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def trained_epochs(run: FewShotRun) -> int:
    """The epochs `run` trains (`epochs_for` at its dataset's number of classes)."""
    return epochs_for(run.k, data.num_classes(run.dataset), run.epochs, run.min_steps, run.batch_size)


class _RunData(NamedTuple):
    train: data.ImageData  # the k-shot subset
    val: data.ImageData | None
    test: data.ImageData
    method: str  # the pruning method build_pruned applies
    saliency_data: data.ImageData
    saliency_per_class: int
    saliency_key: tuple  # names the saliency data, for the scores' cache


def _data(run: FewShotRun) -> _RunData:
    train = data.load_cached(run.dataset, True, run.synthetic_shape)
    test = data.load_cached(run.dataset, False, run.synthetic_shape)
    held_out, pool = data.validation_split(train.labels, run.val_per_class)
    val = None if held_out is None else train.subset(held_out)
    subset = train.subset(pool[data.few_shot_indices(train.labels[pool], run.k, run.seed)])
    if run.method != "snip_cross_domain":
        # Labeled and label-free SNIP score the few-shot set itself: it is all the data there is.
        return _RunData(subset, val, test, run.method, subset, run.k,
                        ("few-shot", run.dataset, run.k, run.seed, run.val_per_class))
    # A synthetic source draws other class prototypes than a synthetic target: another domain.
    source_name = run.source or CROSS_DOMAIN_SOURCE[run.dataset]
    source = data.load_cached(source_name, True, run.synthetic_shape, synthetic_seed=1)
    # As many source images as the few-shot set has, balanced over the source's classes.
    return _RunData(subset, val, test, "snip", source, math.ceil(len(subset) / source.num_classes),
                    ("source", source_name))


def splits(run: FewShotRun) -> tuple[data.ImageData, data.ImageData | None, data.ImageData]:
    """(k-shot training subset, validation set or None, test set) that `run` trains and tests on."""
    found = _data(run)
    return found.train, found.val, found.test


def masks_for(run: FewShotRun):
    """The masks `run` trains with (None for dense), without training: for comparing criteria."""
    found = _data(run)
    return build_pruned(run.model, found.method, run.sparsity, run.seed, found.train,
                        saliency_data=found.saliency_data, saliency_per_class=found.saliency_per_class,
                        bn_mode=run.bn_mode)[1]


def _result(model, history, epochs: int) -> dict:
    """Test accuracies in percent: `final_acc` after the last epoch, `best_acc` the best test of
    the run (chosen on the test set, so it flatters), `test_at_best_val` the test accuracy at the
    tested epoch with the best validation accuracy (chosen without the test set) and `val_acc` the
    last validation accuracy (both NaN without a validation set); `epochs_trained`; the curves:
    `test_epochs` and the accuracies there, `test_curve` and `val_curve` (empty without a
    validation set); `density` and `collapsed` (layers pruned away entirely)."""
    report = sparsity_report(model)
    return dict(final_acc=100 * history.final_acc, best_acc=100 * history.best_acc,
                val_acc=100 * history.val_acc[-1] if history.val_acc else math.nan,
                test_at_best_val=100 * history.test_at_best_val, epochs_trained=epochs,
                test_epochs=list(history.test_epochs), test_curve=[100 * a for a in history.test_acc],
                val_curve=[100 * a for a in history.val_acc], density=report.density,
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
    found = [_data(run) for run in runs]
    for run, its in zip(runs, found):
        model, _ = build_pruned(run.model, its.method, run.sparsity, run.seed, its.train,
                                saliency_data=its.saliency_data, saliency_per_class=its.saliency_per_class,
                                device=device, cache=cache, saliency_key=its.saliency_key, bn_mode=run.bn_mode)
        built.append(model)
        trains.append(its.train)
    first = runs[0]
    epochs = trained_epochs(first)
    # The runs share their stack key's dataset and val_per_class, so one validation set and one test
    # set (`data.validation_split` holds out the same images for every seed): the first run's are all's.
    val, test = found[0].val, found[0].test
    recipe = dict(batch_size=first.batch_size, lr=first.lr, weight_decay=first.weight_decay, augment=first.augment,
                  device=device, eval_every=first.eval_every, evaluations=first.evaluations, val=val, progress=False)
    if stacked and len(runs) > 1:
        histories = fit_stack(built, trains, test, epochs, seeds=[r.seed for r in runs], **recipe)
    else:
        histories = [fit(m, t, test, epochs, seed=r.seed, **recipe) for m, t, r in zip(built, trains, runs)]
    return [_result(model, history, epochs) for model, history in zip(built, histories)]


def grid(models, ks, sparsities, methods, seeds: int, **settings) -> list[FewShotRun]:
    """Every (model, k, seed) once dense and once per pruning method and sparsity, on seeds 0 to
    `seeds` − 1 (below `tuning.SEARCH_SEED_BASE`, where the learning-rate searches' begin).

    `settings` are the other `FewShotRun` fields, shared by all runs (dataset, epochs, lr, ...).
    """
    tuning.check_grid_seeds(seeds)
    runs = []
    for model in models:
        for k in ks:
            for seed in range(seeds):
                runs.append(FewShotRun(model=model, k=k, seed=seed, **settings))
                runs += [FewShotRun(model=model, k=k, seed=seed, method=method, sparsity=sparsity, **settings)
                         for method in methods if method != "dense" for sparsity in sparsities]
    return runs


def lr_grid(lrs, models, ks, seeds, **settings) -> list[FewShotRun]:
    """Dense runs of every model and k, on each of `seeds` (seed numbers), at every learning rate in
    `lrs`: the runs `select_lr` chooses a model's rate from. `settings` are the other `FewShotRun`
    fields and must hold `val_per_class`: the rate is chosen on validation images, never on test.

    `seeds` must not be a grid's (`tuning.search_seeds` gives them): at the chosen rate the search's runs are
    the ones that won on validation, and compared with others they would read high."""
    lrs = sorted(set(lrs))
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty list of learning rates > 0, got {lrs!r}")
    if settings.get("val_per_class") is None:
        raise ValueError("lr_grid needs val_per_class: the learning rate is chosen on validation images held out "
                         "of the training split, never on the test split")
    seeds = tuning.check_search_seeds(seeds)
    return [FewShotRun(model=model, k=k, seed=seed, lr=lr, **settings)
            for lr in lrs for model in models for k in ks for seed in seeds]


def select_lr(results: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """(the learning rate with the highest mean validation accuracy after the last epoch, the table
    it was read from) over one model's `lr_grid` runs (`results`: one row per run, as `run_sweep`
    returns them). The table holds the mean `val_acc` per rate and k, and over all runs (`all`).
    Only the validation accuracy is read; on a tie the smaller rate wins (`tuning.select_lr`)."""
    if results.model.nunique() != 1:
        raise ValueError(f"select_lr chooses one model's rate, got runs of {sorted(results.model.unique())}")
    return tuning.select_lr(results, ["k"], lambda k: f"k = {k}")
