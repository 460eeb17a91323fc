"""Experiment 2: few-shot transfer from a pretrained backbone, one run per `TransferRun`.

A run starts from a pretrained source (`snipnb.pretrained.load_source`), gives it a new head for
the target's classes, trains only `train_blocks` on k images per class of the target (the nested
subset `few_shot_indices` draws for the seed) and tests on the target's whole test split. With
`val_per_class`, a fixed class-balanced validation set is held out of the target's training split
first (the k-shot subsets are drawn from the rest): settings such as the learning rate are chosen
on it (`lr_grid`, `select_lr`), and so can the checkpoint (`test_at_best_val`), never on the test split.

Pruning happens once, before fine-tuning, on the weights that will be trained and on nothing else:
SNIP (labeled, or label-free against the network's own predictions) is scored on the adaptation
set itself; `magnitude` keeps the largest pretrained weights; `random` and `shuffled_snip` are the
controls. `scratch` trains the same architecture from a random initialisation on the same subset,
so that what pretraining buys is measured in the same run. Every run that ranks by a SNIP saliency
reports the share of the trained weights whose score is exactly 0 (`zero_score_fraction`): weights
the adaptation set cannot move the loss through, among which SNIP's ranking is arbitrary.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import torch

from . import checks, data, frozen, pretrained, stats, tuning
from .experiment import METHODS as PRUNING_METHODS
from .experiment import DATA_FREE_METHODS, masks_for_method, method_scores, scoring
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
    `source_epochs` epochs from `source_seed`, with `stem` ('imagenet': 7x7 stride 2 and a max-pool,
    the only one ImageNet weights have; 'cifar': 3x3 stride 1, so that at 32 px the last stage
    still sees a 4 x 4 map, see `snipnb.pretrained.build`).
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
    stem: str = "imagenet"  # the backbone's stem: "imagenet" or "cifar" (a self-pretrained source only)
    bn_stats: str = "source"  # BatchNorm in the trained blocks: the source's statistics, or each batch's
    eval_every: int = 1  # test every this many epochs (best_acc is the best of those tests)
    test_per_class: int | None = None  # test on a fixed sample of this many per class; None: the whole split
    val_per_class: int | None = None  # hold out this many training images per class for validation; None: none
    scope: str = "global"  # rank weights over all trained layers, or per layer
    source_epochs: int = 5
    source_seed: int = 0

    def __post_init__(self):
        if self.source != "imagenet":
            _valid_split("source", self.source)
        _valid_split("target", self.target)
        checks = [("model", self.model, pretrained.ARCHITECTURES), ("method", self.method, METHODS),
                  ("train_blocks", self.train_blocks, TRAIN_BLOCKS), ("scope", self.scope, ("global", "layerwise")),
                  ("bn_stats", self.bn_stats, pretrained.BN_STATS), ("stem", self.stem, pretrained.STEMS)]
        for argument, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")
        if self.source == "imagenet" and self.stem != "imagenet":
            raise ValueError(f"stem={self.stem!r} needs a source the project pretrains: ImageNet weights have "
                             f"the imagenet stem")
        pretrained.check_image_size(self.model, self.image_size, self.stem)
        counts = ["k", "epochs", "batch_size", "eval_every", "source_epochs"]
        counts += [name for name in ("test_per_class", "val_per_class") if getattr(self, name) is not None]
        for argument in counts:
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
    return copy.deepcopy(pretrained.cached_source(*pretrained.source_key(run)))


def target_splits(run: TransferRun) -> tuple[data.ImageData, data.ImageData | None, data.ImageData]:
    """(k-shot training subset, validation set or None, test set) of the target, classes numbered
    0..n-1, pixels in [0, 1].

    With `val_per_class`, the validation set is `val_per_class` images per class of the target's
    training split, drawn once (`data.validation_split`): the same for every seed, k and method, and
    disjoint from every k-shot subset, which is drawn from the rest of the split. Without it the
    k-shot subset is drawn from the whole split. The test set is the whole test split, or with
    `test_per_class` the same class-balanced sample of it for every run (drawn with seed 0), so
    paired runs are always tested on the same images.
    """
    train = pretrained.load_split(run.target, True)
    test = pretrained.load_split(run.target, False)
    held_out, pool = data.validation_split(train.labels, run.val_per_class)
    subset = train.subset(pool[data.few_shot_indices(train.labels[pool], run.k, run.seed)])
    val = None if held_out is None else pretrained.unit_range(train.subset(held_out))
    if run.test_per_class is not None:
        test = test.subset(_test_sample(test, run.test_per_class))
    return pretrained.unit_range(subset), val, pretrained.unit_range(test)


def target_data(run: TransferRun) -> tuple[data.ImageData, data.ImageData]:
    """(k-shot training subset, test set) of `target_splits`."""
    subset, _, test = target_splits(run)
    return subset, test


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
    return _prepare(run, subset, device)[:3]


def _prepare(run: TransferRun, subset: data.ImageData, device=None):
    """`prepare`, and the scores the masks were chosen by (None for dense and scratch)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    source = source_backbone(run)
    if run.method == "scratch":
        adapter = source.body.input
        model = pretrained.build(run.model, subset.num_classes, adapter.channels, adapter.image_size,
                                 adapter.mean.flatten().tolist(), adapter.std.flatten().tolist(), seed=run.seed,
                                 stem=run.stem)
    else:
        model = pretrained.new_head(source, subset.num_classes, run.seed)
    model.to(device)
    trained = pretrained.freeze(model, run.train_blocks, run.bn_stats)
    method = "dense" if run.method == "scratch" else run.method
    batches = None
    if method not in DATA_FREE_METHODS:
        batches = DeviceLoader(subset, SALIENCY_BATCH, device=device)
    weight_scores = method_scores(model, method, batches, run.seed, params=pretrained.trainable_weights(model))
    masks = masks_for_method(weight_scores, method, run.sparsity, run.seed, run.scope)
    if masks is not None:
        apply_masks(model, masks)
    return model, masks, trained, weight_scores


def zero_fraction(weight_scores: dict[str, torch.Tensor]) -> float:
    """The share of the scored weights whose score is exactly 0. For SNIP these are weights the
    scoring images cannot move the loss through: pruning any of them first is an arbitrary choice."""
    zeros = sum(int((s == 0).sum()) for s in weight_scores.values())
    return zeros / sum(s.numel() for s in weight_scores.values())


def adaptation_saliency(run: TransferRun, subset: data.ImageData, device=None) -> dict[str, torch.Tensor]:
    """Labeled SNIP scores of the weights `run` trains, on `subset`, before any pruning: what `snip`
    ranks. A score of exactly 0 marks a weight these images cannot move the loss through (a dead
    unit, or a 3x3 kernel's outer taps on a 1 x 1 feature map, which only ever meet padding)."""
    model, _, _ = prepare(dataclasses.replace(run, method="dense", sparsity=0.0), subset, device)
    batches = DeviceLoader(subset, SALIENCY_BATCH, device=next(model.parameters()).device)
    return scores(model, batches, "snip", params=pretrained.trainable_weights(model), seed=run.seed)


def fine_tune(run: TransferRun, device=None):
    """Fine-tune and test one transfer run; return (results, trained model).

    Results: `final_acc` and `best_acc`, test accuracies in percent (`best_acc` is the best test
    of training, so it is chosen on the test set); with `val_per_class`, `val_acc` and
    `best_val_acc`, the validation accuracy after the last epoch and the best of its tests, and
    `test_at_best_val`, the test accuracy at the epoch validation chose (all NaN without a
    validation set); `density`, the fraction of the trained conv and linear weights kept;
    `trained_weights`, how many parameters the optimiser updates (pruned ones excluded);
    `collapsed`, the number of trained layers pruned away entirely; `zero_score_fraction`, for a
    method that ranks by a SNIP saliency (`snip`, `snip_pseudo_labels`, `shuffled_snip`), the share
    of the trained weights whose score was exactly 0 (`zero_fraction`), NaN for the other methods;
    the learning curves: `test_epochs`, the epochs tested after (every `eval_every` and the last),
    `test_curve` and `val_curve` (empty without a validation set), the accuracies (%) there;
    `source_weights`, which source's weights the run started from (`pretrained.source_fingerprint`).
    """
    device = torch.device(device) if device is not None else default_device()
    subset, val, test = target_splits(run)
    model, masks, trained, weight_scores = _prepare(run, subset, device)
    recipe = dict(lr=run.lr, batch_size=run.batch_size, weight_decay=run.weight_decay, device=device,
                  eval_every=run.eval_every, seed=run.seed, progress=False)
    stored = None
    if runs_frozen_stages_once(run):
        stored = frozen.stored_outputs(frozen.frozen_prefix(model, trained), subset, val, test, device,
                                       batch_size=run.batch_size, seed=run.seed)
    if stored is None:
        history = fit(model, subset, test, run.epochs, augment=run.augment, val=val, **recipe)
    else:
        train_outputs, test_outputs, val_outputs = stored
        with frozen.cut(model, trained):
            history = fit(model, train_outputs, test_outputs, run.epochs, val=val_outputs, **recipe)
    masks = masks or {}
    pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
    scored = sum(m.numel() for m in masks.values())
    ranks_by_snip = run.method != "scratch" and (scoring(run.method) or "").startswith("snip")
    results = {"final_acc": 100 * history.final_acc, "best_acc": 100 * history.best_acc,
               "val_acc": 100 * history.val_acc[-1] if history.val_acc else math.nan,
               "best_val_acc": 100 * max(history.val_acc) if history.val_acc else math.nan,
               "test_at_best_val": 100 * history.test_at_best_val,
               "density": 1 - pruned / scored if masks else 1.0,
               "trained_weights": sum(p.numel() for p in model.parameters() if p.requires_grad) - pruned,
               "collapsed": sum(int(not m.any()) for m in masks.values()),
               "zero_score_fraction": zero_fraction(weight_scores) if ranks_by_snip else math.nan,
               "test_epochs": list(history.test_epochs), "test_curve": [100 * a for a in history.test_acc],
               "val_curve": [100 * a for a in history.val_acc],
               "source_weights": pretrained.source_fingerprint(*pretrained.source_key(run))}
    return results, model


def runs_frozen_stages_once(run: TransferRun) -> bool:
    """Whether `fine_tune` trains `run`'s blocks on the frozen stages' stored outputs
    (`snipnb.frozen.stored_outputs`): unless every stage trains, or augmentation shows the stages
    new crops every epoch (or a split's outputs would exceed `frozen.STORED_BYTES_PER_SPLIT`)."""
    return run.train_blocks != "all" and not run.augment


def run_transfer(run: TransferRun, device=None) -> dict:
    """Fine-tune and test one transfer run; return its results as a flat dict of numbers (`fine_tune`)."""
    return fine_tune(run, device)[0]


def grid(source: str, target: str, models, ks, sparsities, methods, train_blocks, seeds: int, *,
         reference_blocks=(), scratch: bool = True, scratch_lr: float | None = None, source_per_seed: bool = False,
         reference_lrs: dict | None = None, first_seed: int = 0, **settings) -> list[TransferRun]:
    """Every (model, k, seed), `seeds` seeds from `first_seed` on: dense fine-tuning and each pruning
    method and sparsity, for every `train_blocks`; dense fine-tuning alone for every
    `reference_blocks` (e.g. the linear probe, as a reference), at `reference_lrs[blocks]` where
    given; with `scratch`, the same network trained from scratch (all blocks, batch statistics, at
    `scratch_lr` if given). `settings` are the other `TransferRun` fields, shared by all runs (`lr`
    among them). With `source_per_seed`, seed s fine-tunes a source pretrained from seed s
    (`source_seed`), so that variation over seeds includes the source's; otherwise every run starts
    from one source. The seeds stay below `tuning.SEARCH_SEED_BASE`, where a learning-rate search's
    (`lr_grid`) begin, so that no search's winning run is compared.

    Every k is checked against the target's smallest class (less its validation images) here,
    before anything runs.
    """
    tuning.check_grid_seeds(seeds, first_seed)
    return _runs(source, target, models, ks, sparsities, methods, train_blocks, seeds,
                 reference_blocks=reference_blocks, scratch=scratch, scratch_lr=scratch_lr,
                 source_per_seed=source_per_seed, reference_lrs=reference_lrs, first_seed=first_seed, **settings)


def _runs(source: str, target: str, models, ks, sparsities, methods, train_blocks, seeds: int, *, reference_blocks=(),
          scratch: bool = True, scratch_lr: float | None = None, source_per_seed: bool = False,
          reference_lrs: dict | None = None, first_seed: int = 0, **settings) -> list[TransferRun]:
    """`grid`'s runs on any seeds, a search's included."""
    unknown = [m for m in methods if m not in METHODS or m == "scratch"]
    if unknown:
        raise ValueError(f"methods must be among {tuple(m for m in METHODS if m != 'scratch')}, got {unknown}")
    both = set(train_blocks) & set(reference_blocks)
    if both:
        raise ValueError(f"reference_blocks repeats train_blocks {sorted(both)}: each setting is in one list")
    reference_lrs = dict(reference_lrs or {})
    strays = sorted(set(reference_lrs) - set(reference_blocks))
    if strays:
        raise ValueError(f"reference_lrs names {strays}, which are not among reference_blocks {list(reference_blocks)}")
    checks.integer("seeds", seeds, 1)
    checks.integer("first_seed", first_seed, 0)
    if source_per_seed:
        pretrained.check_source_per_seed(source, settings)
    train = pretrained.load_split(target, True)
    _, pool = data.validation_split(train.labels, settings.get("val_per_class"))
    for k in ks:
        data.few_shot_indices(train.labels[pool], k, 0)  # a ValueError naming k if a class is too small
    if settings.get("test_per_class") is not None:
        _test_sample(pretrained.load_split(target, False), settings["test_per_class"])
    runs = []
    for model in models:
        for k in ks:
            for seed in range(first_seed, first_seed + seeds):
                common = dict(source=source, target=target, model=model, k=k, **settings,
                              **pretrained.seed_fields(seed, source_per_seed))
                for blocks in train_blocks:
                    runs.append(TransferRun(**common, train_blocks=blocks))
                    runs += [TransferRun(**common, train_blocks=blocks, method=method, sparsity=sparsity)
                             for method in methods if method != "dense" for sparsity in sparsities]
                runs += [TransferRun(**{**common, **({"lr": reference_lrs[blocks]} if blocks in reference_lrs else {})},
                                     train_blocks=blocks) for blocks in reference_blocks]
                if scratch:
                    lr = {} if scratch_lr is None else {"lr": scratch_lr}
                    runs.append(TransferRun(**{**common, **lr, "method": "scratch", "train_blocks": "all",
                                               "bn_stats": "batch"}))
    return runs


def curve_runs(runs, epochs, eval_every: int, seeds: int, first_seed: int = 0) -> list[TransferRun]:
    """`runs` of `seeds` seeds from `first_seed` on, once for each number of `epochs` (each its own
    schedule, the cosine decay stretched over it), tested every `eval_every` epochs: the learning
    curves that show whether a grid's budget has flattened (`curves` reads them).

    `first_seed` can leave out seeds a learning-rate search used, were they among `runs`': its runs
    at the chosen rate won on their own validation accuracy, so they would read high against the
    same seeds trained longer. Every configuration of `runs` (a run but for its seed and, with a
    source per seed, the source that seed names) must hold each of those seeds, or the budgets
    would be compared on different seeds per configuration."""
    checks.integer("eval_every", eval_every, 1)
    checks.integer("seeds", seeds, 1)
    checks.integer("first_seed", first_seed, 0)
    if not runs or not epochs:
        raise ValueError(f"curve_runs needs runs and a list of epochs, got {len(runs)} runs and epochs={epochs!r}")
    for count in epochs:
        checks.integer("epochs", count, 1)
    wanted = set(range(first_seed, first_seed + seeds))
    held = {}
    for run in runs:
        held.setdefault(dataclasses.replace(run, seed=0, source_seed=0), set()).add(run.seed)
    for configuration, present in held.items():
        missing = sorted(wanted - present)
        if missing:
            raise ValueError(f"curve_runs: seeds={seeds} from first_seed={first_seed} needs seeds {sorted(wanted)} of "
                             f"every configuration, but {configuration.model} {configuration.method}"
                             + (f" at sparsity {configuration.sparsity}" if configuration.sparsity else "")
                             + f" on {configuration.train_blocks}, k = {configuration.k}, lacks {missing}")
    return list(dict.fromkeys(dataclasses.replace(run, epochs=count, eval_every=eval_every)
                              for count in epochs for run in runs if run.seed in wanted))


def curves(results: pd.DataFrame, which: str = "test") -> pd.DataFrame:
    """One row per run and tested epoch of `results` (`fine_tune`'s, one row per run): the run's
    columns, `epoch`, and `acc`, its `which` ('test' or 'val') accuracy (%) after that epoch."""
    checks.one_of("which", which, ("test", "val"))
    curve = f"{which}_curve"
    missing = [c for c in ("test_epochs", curve) if c not in results.columns]
    if missing:
        raise ValueError(f"curves needs the runs' {missing}: runs recorded before fine_tune kept its curves lack them")
    if (results[curve].map(len) != results.test_epochs.map(len)).any():
        raise ValueError(f"some runs have no {which} accuracy at every tested epoch (val_per_class unset?)")
    long = results.drop(columns=[c for c in ("test_curve", "val_curve") if c != curve]).explode(["test_epochs", curve])
    return long.rename(columns={"test_epochs": "epoch", curve: "acc"}).astype({"epoch": int, "acc": float})


def late_gains(results: pd.DataFrame, by, fraction: float = 0.3) -> pd.DataFrame:
    """How much each group of `by` still rose on **validation** over the last `fraction` of its
    epochs (`stats.late_gain`), one curve per seed: the mean of the seed's validation curves over
    its k's (a seed's k-shot subsets are nested, so its k's are not independent pairs). Only the
    validation curves are read: a budget judged on test accuracy is a choice made on the test split.
    `results` is one row per run (`fine_tune`'s), at most one run per (`by`, seed, k)."""
    by = [by] if isinstance(by, str) else list(by)
    repeated = results.duplicated([*by, "seed", "k"], keep=False)
    if repeated.any():
        raise ValueError(f"late_gains: {int(repeated.sum())} runs repeat a cell of {[*by, 'seed', 'k']}; name the "
                         f"column that tells them apart in by")
    long = curves(results, "val")
    runs = long.groupby([*by, "seed"], sort=False).k.transform("nunique")
    tested = long.groupby([*by, "seed", "epoch"], sort=False).k.transform("size")
    if (runs != tested).any():
        raise ValueError("late_gains: the runs of a seed were tested at different epochs, so their mean curve "
                         "would mix them; give them one epochs and eval_every")
    mean = long.groupby([*by, "seed", "epoch"], sort=False).acc.mean().reset_index()
    return stats.late_gain(mean, by, step="epoch", value="acc", fraction=fraction)


def budget_gains(results: pd.DataFrame, baseline_epochs: int, by) -> pd.DataFrame:
    """Final **validation** accuracy at each budget (`epochs`) minus at `baseline_epochs`, per group of
    `by`, paired on seeds after averaging each seed's runs over k (`stats.paired_difference`'s
    columns). Only `val_acc` is read, never a test column: whether a budget suffices is a choice,
    and choices are made on validation. Every budget of a group must hold the same (seed, k) runs
    (`check_same_runs_per_budget`)."""
    by = [by] if isinstance(by, str) else list(by)
    if "val_acc" not in results or results.val_acc.isna().any():
        raise ValueError("budget_gains needs runs with a validation set (val_per_class); some have no val_acc")
    check_same_runs_per_budget(results, by)
    per_seed = stats.seed_means(results, "val_acc", ["seed"], average_over=["k"], by=[*by, "epochs"])
    return stats.paired_difference(per_seed, "val_acc", baseline={"epochs": baseline_epochs}, variant=["epochs"],
                                   pair_on=["seed"], group=by)


def check_same_runs_per_budget(results: pd.DataFrame, by) -> None:
    """A ValueError unless, within each group of `by`, every budget (`epochs`) holds the same (seed, k)
    runs. A seed's mean over k at one budget and over other k's at another differ by how hard those
    k's are, not by the budget: an incomplete (sharded) sweep would read as a gain or a loss."""
    by = [by] if isinstance(by, str) else list(by)
    for key, group in results.groupby(by, sort=False) if by else [((), results)]:
        cells = {epochs: set(runs[["seed", "k"]].itertuples(index=False, name=None))
                 for epochs, runs in group.groupby("epochs")}
        every = set.union(*cells.values())
        short = {epochs: sorted(every - held) for epochs, held in cells.items() if held != every}
        if short:
            raise ValueError(f"the budgets of {dict(zip(by, key if isinstance(key, tuple) else (key,)))} hold "
                             f"different (seed, k) runs: {', '.join(f'{e} epochs lacks {m}' for e, m in short.items())}"
                             f" (an incomplete sweep?); each seed's mean over k would compare different k's")


def lr_grid(lrs, source: str, target: str, models, ks, train_blocks, seeds: int, *, scratch: bool = False,
            first_seed: int = tuning.SEARCH_SEED_BASE, **settings) -> list[TransferRun]:
    """Dense fine-tuning of every `train_blocks` (and with `scratch`, training from scratch), (model,
    k, seed) for `seeds` seeds from `first_seed` on, at every learning rate in `lrs`: the runs
    `select_lr` chooses a learning rate from. The seeds are at or above `tuning.SEARCH_SEED_BASE`,
    which no grid reaches: run on a grid's seeds, the search's runs at the chosen rate would be
    compared having won on their own validation accuracy (with a source per seed, each search seed
    fine-tunes a source of its own). `settings` are `grid`'s, and must hold `val_per_class`: the
    choice is made on a validation set, never on the test split."""
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty list of learning rates > 0, got {lrs!r}")
    if settings.get("val_per_class") is None:
        raise ValueError("lr_grid needs val_per_class: the learning rate is chosen on validation images held out "
                         "of the training split, never on the test split")
    checks.integer("seeds", seeds, 1)
    checks.integer("first_seed", first_seed, 0)
    tuning.check_search_seeds(range(first_seed, first_seed + seeds))
    runs = _runs(source, target, models, ks, [], [], train_blocks, seeds, scratch=scratch, first_seed=first_seed,
                 **settings)
    return [dataclasses.replace(run, lr=lr) for lr in sorted(set(lrs)) for run in runs]


PRUNED = "pruned"  # the key of `baseline_lr_grids` for the rate shared by every run on `train_blocks`


def baseline_lr_grids(tried: dict, source: str, target: str, models, ks, train_blocks, reference_blocks, seeds: int,
                      *, scratch: bool = True, first_seed: int = tuning.SEARCH_SEED_BASE,
                      **settings) -> dict[str, list[TransferRun]]:
    """The searches that give each baseline its own learning rate, one `lr_grid` per key of the dict
    returned, at the rates `tried[key]` lists: `PRUNED`, dense fine-tuning of `train_blocks`, whose
    rate every pruning method on those blocks shares (so the pruned networks get the dense
    baseline's tuned rate); each of `reference_blocks` by its name; and with `scratch`, 'scratch'.
    A reference fine-tuned at another setting's rate can sit far from its own best: fine-tuning
    every block of a pretrained ResNet-18 at the last block's rate collapsed to chance. Every search
    runs `seeds` seeds from `first_seed` on (`lr_grid`)."""
    keys = [PRUNED, *reference_blocks, *(["scratch"] if scratch else [])]
    missing = [key for key in keys if key not in tried]
    if missing:
        raise ValueError(f"tried has no rates for {missing}: give a list of candidate rates for each of {keys}")
    searches = {PRUNED: dict(train_blocks=train_blocks), **{b: dict(train_blocks=[b]) for b in reference_blocks},
                **({"scratch": dict(train_blocks=[], scratch=True)} if scratch else {})}
    return {key: lr_grid(tried[key], source, target, models, ks, seeds=seeds, first_seed=first_seed, **search,
                         **settings)
            for key, search in searches.items()}


def select_lr(results: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """(the learning rate with the highest mean validation accuracy after the last epoch, the table
    it was read from) over the runs of `lr_grid` (`results`: one row per run, as `run_sweep` returns
    them). The table holds the mean `val_acc` per learning rate and (model, trained blocks, k), and
    over all of them (`all`). Only the validation accuracy is read; on a tie the smaller rate wins."""
    return tuning.select_lr(results, ["model", "train_blocks", "k"],
                            lambda key: f"{key[0]} {key[1]}, k = {key[2]}")
