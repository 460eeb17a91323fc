"""Chapter 00: SNIP's Table 1 (Lee et al., ICLR 2019) on MNIST, one run per `Table1Run`.

A run prunes a LeNet once at initialisation and trains it with the paper's recipe: SGD with momentum
0.9 (not nesterov), batch 100, weight decay 5e-4, learning rate 0.1 decayed by 0.1 every 25,000
iterations, 10% of the training set held out for validation. The fields that are not the paper's
recipe are the differences between our SNIP and the official code, so each can be ablated on its own:
training length (`epochs`), initialisation (`init`), training a fresh initialisation under the scored
mask (`fresh_init`), and the saliency batch (`saliency_images`, `saliency_balanced`). The checkpoint a
result is read at is not a field: every run reports all three choices (`result_columns`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import pandas as pd
import torch

from . import checks, data, models
from .experiment import build_pruned
from .pruning import sparsity_report
from .stack import check_stackable, fit_stack
from .train import default_device, fit

METHODS = ("dense", "snip", "random", "shuffled_snip")
# The paper names the decay interval (25k iterations for MNIST) but not the length of training. We
# call three phases of it (lr 0.1, 0.01, 0.001) the paper's budget: an assumption, stated in the chapter.
PAPER_STEP_EVERY = 25_000
PAPER_ITERATIONS = 3 * PAPER_STEP_EVERY
# The official test.py reports the best test accuracy over the 10 checkpoints its Saver keeps, saved
# every 1,000 iterations: the last 10,000 iterations of training.
OFFICIAL_WINDOW = 10_000
FRESH_INIT_OFFSET = 10_000  # a fresh initialisation's seed: far from every run seed of a grid
VAL_SPLIT_SEED = 0  # one validation split for every run, as the official code's RandomState(9)


@dataclasses.dataclass(frozen=True)
class Table1Run:
    """Every setting that changes a result; where the data live and which device runs it do not."""

    model: str = "lenet300_100"
    method: str = "dense"
    sparsity: float = 0.0
    seed: int = 0
    dataset: str = "mnist"
    epochs: int = 8
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 100
    step_every: int = PAPER_STEP_EVERY  # iterations between decays of the learning rate by 0.1
    warmup_iterations: int = 0  # the learning rate rises linearly from lr / n to lr over the first n; decays count after
    val_fraction: float = 0.1
    eval_every: int = 1  # epochs between checkpoints (each tested on validation and test)
    init: str = "default"  # models.build: Glorot, zero biases; or "variance_scaling" (TF's, biases too)
    fresh_init: bool = False  # train a fresh initialisation under the mask scored on this seed's
    saliency_images: int = 100  # the saliency batch
    saliency_balanced: bool = True  # the same number per class; False: drawn at random (official code)
    synthetic_shape: tuple = (1, 28)  # (channels, image size) when dataset is synthetic

    def __post_init__(self):
        # Checked here, so a grid with one bad cell fails before its first run, not hours later.
        checks.one_of("model", self.model, models.NAMES)
        checks.one_of("method", self.method, METHODS)
        checks.one_of("dataset", self.dataset, data.DATASETS)
        checks.one_of("init", self.init, models.INITS)
        checks.number("sparsity", self.sparsity, 0, below=1)
        if (self.method == "dense") != (self.sparsity == 0):
            raise ValueError(f"sparsity must be 0 for method='dense' and above 0 otherwise, got method="
                             f"{self.method!r} with sparsity {self.sparsity}")
        checks.integer("seed", self.seed, 0, FRESH_INIT_OFFSET - 1)
        checks.integer("epochs", self.epochs, 1)
        checks.number("lr", self.lr, above=0)
        checks.number("momentum", self.momentum, 0, below=1)
        checks.number("weight_decay", self.weight_decay, 0)
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("step_every", self.step_every, 1)
        checks.integer("warmup_iterations", self.warmup_iterations, 0)
        checks.number("val_fraction", self.val_fraction, above=0, below=1)
        checks.integer("eval_every", self.eval_every, 1)
        classes = data.num_classes(self.dataset)
        checks.integer("saliency_images", self.saliency_images, classes)
        if self.saliency_balanced and self.saliency_images % classes:
            raise ValueError(f"a balanced saliency batch holds the same number of images of each of the "
                             f"{classes} classes: saliency_images must be a multiple of {classes}, "
                             f"got {self.saliency_images}")
        if self.method in ("dense", "random"):
            # Settings that cannot change such a run would only make copies of it under other names.
            scored = {"fresh_init": False, "saliency_images": 100, "saliency_balanced": True}
            changed = [name for name, default in scored.items() if getattr(self, name) != default]
            if changed:
                raise ValueError(f"{changed[0]} does not apply to method={self.method!r} (no saliency is "
                                 f"scored): leave it at its default")

    @property
    def train_seed(self) -> int:
        """The seed of the initialisation that is trained: the scored one, or a fresh one."""
        return self.seed + FRESH_INIT_OFFSET if self.fresh_init else self.seed


def split_validation(train: data.ImageData, fraction: float, seed: int = VAL_SPLIT_SEED):
    """(training part, validation part): a random `fraction` of `train` held out, the same for every run."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held = int(round(fraction * len(train)))
    if not 0 < held < len(train):
        raise ValueError(f"val_fraction={fraction} of {len(train)} images leaves no training or no validation set")
    return train.subset(order[held:].sort().values), train.subset(order[:held].sort().values)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, synthetic_shape: tuple, val_fraction: float):
    """(training part, validation part, test set), made once per process: a sweep worker runs many runs."""
    train, val = split_validation(data.load_cached(dataset, True, synthetic_shape), val_fraction)
    return train, val, data.load_cached(dataset, False, synthetic_shape)


def data_of(run: Table1Run):
    """(training part, validation part, test set) that `run` trains, selects checkpoints and tests on."""
    return _data(run.dataset, run.synthetic_shape, run.val_fraction)


def build(run: Table1Run, device=None, cache: dict | None = None):
    """`run`'s network, pruned and ready to train, and its masks (None for dense)."""
    train, _, _ = data_of(run)
    return build_pruned(run.model, run.method, run.sparsity, run.seed, train,
                        saliency_per_class=run.saliency_images // train.num_classes, device=device, cache=cache,
                        saliency_key=("train part", run.dataset, run.val_fraction),
                        balanced=run.saliency_balanced, init=run.init, train_seed=run.train_seed)


def masks_for(run: Table1Run):
    """The masks `run` trains with (None for dense), without training."""
    return build(run)[1]


def steps_per_epoch(run: Table1Run) -> int:
    train, _, _ = data_of(run)
    return math.ceil(len(train) / run.batch_size)


# What the runs of one stack may differ in: everything else (model, data, recipe, length) they share.
STACK_VARIES = ("seed", "method", "sparsity", "init", "fresh_init", "saliency_images", "saliency_balanced")


def stack_key(run: Table1Run) -> tuple:
    """Runs with equal keys can train as one stack (`run_table1_stack`, `sweep.run_sweep(stack=)`)."""
    return tuple((f.name, getattr(run, f.name)) for f in dataclasses.fields(run) if f.name not in STACK_VARIES)


def _recipe(run: Table1Run, device) -> dict:
    return dict(lr=run.lr, momentum=run.momentum, nesterov=False, weight_decay=run.weight_decay,
                batch_size=run.batch_size, schedule="step", step_every=run.step_every, step_gamma=0.1,
                device=device, eval_every=run.eval_every, progress=False)


def in_official_window(iterations) -> list[bool]:
    """Which of the checkpoints at `iterations` (ascending, the last the run's end) the official test.py
    reads its best test accuracy from: those in the last `OFFICIAL_WINDOW` iterations."""
    iterations = list(iterations)
    return [it > iterations[-1] - OFFICIAL_WINDOW for it in iterations]


def _result(model, history, steps: int) -> dict:
    """Test error (%) at three checkpoint choices, from the test and validation accuracies of every
    checkpoint: the last one; the one with the best validation accuracy; and the best test accuracy
    over the checkpoints of the last `OFFICIAL_WINDOW` iterations, as the official test.py reports.
    With them the learning curves: validation and test error (%) at every checkpoint's iteration."""
    iterations = [epoch * steps for epoch in history.test_epochs]
    window = [acc for inside, acc in zip(in_official_window(iterations), history.test_acc) if inside]
    best_val = max(range(len(history.val_acc)), key=history.val_acc.__getitem__)  # the first, on ties
    report = sparsity_report(model)
    return dict(final_error=100 * (1 - history.final_acc), best_val_error=100 * (1 - history.test_at_best_val),
                best_test_error=100 * (1 - max(window)), val_error=100 * (1 - history.val_acc[best_val]),
                best_val_iteration=iterations[best_val], iterations=iterations[-1], checkpoints=len(iterations),
                density=report.density, collapsed=len(report.collapsed), curve_iterations=iterations,
                val_error_curve=[100 * (1 - acc) for acc in history.val_acc],
                test_error_curve=[100 * (1 - acc) for acc in history.test_acc])


def curves(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run and checkpoint of `results` (one row per run, as `run_sweep` returns them):
    the run's columns, `iteration`, and its `checkpoint_val_error` and `checkpoint_test_error` (%)
    there (a run's own `val_error` is its best checkpoint's)."""
    columns = ["curve_iterations", "val_error_curve", "test_error_curve"]
    missing = [c for c in columns if c not in results.columns]
    if missing:
        raise ValueError(f"curves needs the runs' {missing}: runs recorded before table1 kept its curves lack them")
    names = ["iteration", "checkpoint_val_error", "checkpoint_test_error"]
    long = results.explode(columns).rename(columns=dict(zip(columns, names)))
    return long.astype(dict(zip(names, (int, float, float))))


def last_stretch(iterations: int, steps: int, eval_every: int = 1, step_every: int = PAPER_STEP_EVERY) -> float:
    """The share of a run of `iterations` (checkpoints every `eval_every` epochs of `steps`) that lies
    from its first checkpoint after its last learning-rate decay to its end: the stretch at the final
    rate, where a curve that still falls had more to learn (`stats.late_gain`'s `fraction`). 0.3 for a
    run that never decays, or whose last decay leaves it fewer than two checkpoints."""
    every = steps * eval_every
    decays = range(step_every, iterations, step_every)
    if not decays:
        return 0.3
    after = (decays[-1] // every + 1) * every  # a checkpoint at the decay's own iteration precedes it
    return 1 - after / iterations if after < iterations else 0.3


# Result columns per checkpoint choice, for tables and paired comparisons.
CHECKPOINTS = {"final": "final_error", "best validation": "best_val_error", "best test (official)": "best_test_error"}


def run_table1_stack(runs: list[Table1Run], device=None) -> list[dict]:
    """Train and test `runs` as one stack (`stack.fit_stack`); one result dict per run, in order.

    The runs must share everything but `STACK_VARIES`. A network's saliency is scored once and
    reused for every sparsity and for shuffled SNIP. A stack of one run trains with `train.fit`.
    """
    runs = check_stackable(runs, stack_key)
    device = torch.device(device) if device is not None else default_device()
    train, val, test = data_of(runs[0])
    cache = {}
    built = [build(run, device, cache)[0] for run in runs]
    histories = _fit(built, runs, train, test, runs[0].epochs, device, val=val)
    steps = steps_per_epoch(runs[0])
    return [_result(model, history, steps) for model, history in zip(built, histories)]


def _train_briefly(runs: list[Table1Run], iterations: int, device) -> tuple[float, list]:
    """Train `runs` as one stack for their first `iterations` steps (fewer if the training part is
    smaller), testing nothing; (seconds, histories)."""
    checks.integer("iterations", iterations, 1)
    device = torch.device(device) if device is not None else default_device()
    train, _, _ = data_of(runs[0])
    steps = min(iterations, len(train) // runs[0].batch_size)
    part = train.subset(torch.arange(steps * runs[0].batch_size))
    built = [build(run, device)[0] for run in runs]
    start = time.perf_counter()
    histories = _fit(built, runs, part, None, 1, device)
    return time.perf_counter() - start, histories


def _fit(built: list, runs: list[Table1Run], train, test, epochs: int, device, val=None):
    """Train the built models of `runs` on `train`: as one stack, or with `train.fit` when alone."""
    recipe = dict(_recipe(runs[0], device), warmup_steps=runs[0].warmup_iterations)
    if len(runs) == 1:
        return [fit(built[0], train, test, epochs, seed=runs[0].seed, val=val, **recipe)]
    return fit_stack(built, [train] * len(runs), test, epochs, seeds=[r.seed for r in runs], val=val, **recipe)


def measure_speed(run: Table1Run, stack: int, iterations: int, device=None) -> float:
    """Run-iterations per second of `stack` copies of `run` (seeds 0, 1, ...) trained as one stack
    for `iterations` steps, after an untimed warm-up step (first calls pay for allocations)."""
    checks.integer("stack", stack, 1)
    runs = [dataclasses.replace(run, seed=s) for s in range(stack)]
    _train_briefly(runs, 1, device)
    seconds, histories = _train_briefly(runs, iterations, device)
    return histories[0].images / run.batch_size * stack / seconds


def early_losses(runs: list[Table1Run], iterations: int, device=None) -> list[float]:
    """Each run's mean training loss over its first `iterations` steps: NaN or inf where training
    diverged, the check that a learning rate is stable before hours are spent on it."""
    return [h.train_loss[0] for h in _train_briefly(list(runs), iterations, device)[1]]


# A mean training loss of this or more over the first iterations is a run that diverged: chance is ln 10 = 2.3.
DIVERGED_LOSS = 10.0


def stability(model: str, settings: list[dict], seeds: int = 3, iterations: int = 100, device=None,
              **fields) -> pd.DataFrame:
    """The check that a learning rate is stable: dense `model` trained for its first `iterations` steps
    from `seeds` initialisations under each of `settings` (dicts of `Table1Run` fields, such as lr and
    momentum); `fields` are the other fields, shared (dataset, ...). One row per setting: its fields,
    each seed's mean training loss (`seed 0`, ...; NaN or inf where training diverged) and `diverged`,
    how many seeds have a loss that is not finite or at least `DIVERGED_LOSS`."""
    checks.integer("seeds", seeds, 1)
    rows = []
    for setting in settings:
        runs = [Table1Run(model=model, seed=seed, **{**fields, **setting}) for seed in range(seeds)]
        losses = early_losses(runs, iterations, device)
        rows.append(dict(model=model, **setting, **{f"seed {seed}": loss for seed, loss in enumerate(losses)},
                         diverged=sum(not math.isfinite(loss) or loss >= DIVERGED_LOSS for loss in losses)))
    return pd.DataFrame(rows)


def ablations(long_epochs: int | None = None, large_batch: int = 1000) -> dict[str, dict]:
    """Each difference from the official code, as the `Table1Run` fields it changes from our default
    recipe; with `long_epochs`, also the length of training. `large_batch`: the larger saliency batch."""
    changes = {
        "variance-scaling init": dict(init="variance_scaling"),
        "fresh init under the mask": dict(fresh_init=True),
        f"saliency batch of {large_batch:,}": dict(saliency_images=large_batch),
        "random saliency batch": dict(saliency_balanced=False),
        "official code (all three)": dict(init="variance_scaling", fresh_init=True, saliency_balanced=False),
    }
    if long_epochs is not None:
        changes = {f"{long_epochs} epochs": dict(epochs=long_epochs), **changes}
    return changes


# The fields an ablation may change, and those of them that change a dense run too.
ABLATED = ("epochs", "init", "fresh_init", "saliency_images", "saliency_balanced")
DENSE_ABLATED = ("epochs", "init")


def grid(model: str, sparsities, methods, seeds: int, **settings) -> list[Table1Run]:
    """Every seed once dense and once per pruning method and sparsity; `settings` are the other
    `Table1Run` fields (epochs, lr, ...), shared by all runs."""
    runs = []
    for seed in range(seeds):
        runs.append(Table1Run(model=model, seed=seed, **settings))
        runs += [Table1Run(model=model, method=method, sparsity=sparsity, seed=seed, **settings)
                 for sparsity in sparsities for method in methods if method != "dense"]
    return runs


def ablation_grid(changes: dict[str, dict], sparsities, seeds: int, **settings) -> list[Table1Run]:
    """For each ablation: SNIP at every sparsity on every seed, with the dense runs it is compared
    with where it changes those (a new length or initialisation)."""
    runs = []
    for fields in changes.values():
        for seed in range(seeds):
            if any(name in fields for name in DENSE_ABLATED):
                dense = {k: v for k, v in fields.items() if k in DENSE_ABLATED}
                runs.append(Table1Run(seed=seed, **{**settings, **dense}))
            runs += [Table1Run(method="snip", sparsity=sparsity, seed=seed, **{**settings, **fields})
                     for sparsity in sparsities]
    return list(dict.fromkeys(runs))  # ablations share their dense runs


def ablation_view(results, changes: dict[str, dict], default: Table1Run):
    """The rows of `results` (a sweep's table) each ablation compares, labelled `ablation`: its SNIP
    runs and the dense runs trained its way. "default" is our recipe, `default`'s fields. A dense run
    appears under every ablation it serves."""
    parts = []
    for name, fields in {"default": {}, **changes}.items():
        wanted = {field: fields.get(field, getattr(default, field)) for field in ABLATED}
        snip = results.method == "snip"
        dense = results.method == "dense"
        for field, value in wanted.items():
            snip &= results[field] == value
            if field in DENSE_ABLATED:
                dense &= results[field] == value
        parts.append(results[snip | dense].assign(ablation=name))
    return pd.concat(parts, ignore_index=True)


def gaps(view, value: str):
    """SNIP − dense per ablation, sparsity and seed (column `gap`), from an `ablation_view`."""
    dense = view[view.method == "dense"][["ablation", "seed", value]].rename(columns={value: "_dense"})
    snip = view[view.method == "snip"].merge(dense, on=["ablation", "seed"])
    return snip.assign(gap=snip[value] - snip["_dense"]).drop(columns="_dense")
