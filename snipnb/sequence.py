"""Experiments 3 and 4: one strategy over one task sequence, one run per `ContinualRun`.

The run records the full accuracy matrix R (R[i, j]: accuracy on task j after training task i) on
the validation or the test split, the accuracy at initialisation b, forward transfer measured by a
linear probe on the frozen body, and, for PackNet, which task owns how much of every layer.

Benchmarks: `split` (the classes cut into tasks; task- or class-incremental) and `permuted` (every
task all classes, pixels permuted per task; domain- or task-incremental). Every strategy trains
`epochs` per task: PackNet spends `retrain_epochs` of them retraining after pruning, so all
strategies see the same number of passes over each task.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from . import checks, data, metrics
from .continual import (CRITERIA, EWC, EWC_STRATEGIES, PACKNET_STRATEGIES, POSITION_SHUFFLED, SCENARIOS, STRATEGIES,
                        MultiHeadNet, PackNet, SingleHeadNet, StageView, body_parameters, importance,
                        linear_probe_accuracy, permuted_tasks, shared_parameters, split_tasks)
from .models import NAMES, build
from .train import OPTIMIZERS, default_device, evaluate, fit

BENCHMARKS = ("split", "permuted")


@dataclasses.dataclass(frozen=True)
class ContinualRun:
    """Every setting that changes a result; the data folder and the device do not."""

    strategy: str = "finetune"
    model: str = "resnet18"
    dataset: str = "cifar100"
    benchmark: str = "split"  # "split" classes into tasks, or "permuted" pixels per task
    scenario: str = "task"  # "task", "class" (split only) or "domain" (permuted only)
    n_tasks: int = 5
    seed: int = 0
    epochs: int = 10  # per task, for every strategy (PackNet's retraining included)
    batch_size: int = 64
    optimizer: str = "sgd"  # or "adam", whose bounded steps keep a stiff EWC penalty from diverging
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = True
    ewc_lambda: float = 100.0
    ewc_online: bool = False
    fisher_labels: str = "empirical"  # or "sampled": the true Fisher
    importance_examples: int = 1024
    keep: float | None = None  # PackNet: fraction of the free weights a task keeps; None: equal shares
    retrain_epochs: int = 2  # PackNet: of the `epochs`, these retrain after pruning
    packnet_bn: str = "per_task"  # PackNet's BatchNorm: "per_task" statistics and affine, or "shared"
    probe_examples: int = 2000  # forward transfer: images per task the linear probe is fit on
    split: str = "test"  # "val" while choosing λ and keep, "test" for the reported numbers
    synthetic_shape: tuple = (3, 32)

    def __post_init__(self):
        # Checked here, so a grid with one bad cell fails before its first run, not hours later.
        checks.one_of("strategy", self.strategy, STRATEGIES)
        checks.one_of("model", self.model, NAMES)
        checks.one_of("dataset", self.dataset, data.DATASETS)
        checks.one_of("benchmark", self.benchmark, BENCHMARKS)
        checks.one_of("scenario", self.scenario, ("task", "class") if self.benchmark == "split" else ("task", "domain"))
        if self.strategy in PACKNET_STRATEGIES and self.scenario != "task":
            raise ValueError(f"strategy {self.strategy!r} needs the task id at test time (scenario='task'), "
                             f"got scenario={self.scenario!r}")
        checks.integer("n_tasks", self.n_tasks, 1)
        classes = data.num_classes(self.dataset)
        if self.benchmark == "split" and classes % self.n_tasks:
            raise ValueError(f"n_tasks must divide the {classes} classes of {self.dataset!r}, got {self.n_tasks}")
        checks.one_of("split", self.split, ("val", "test"))
        checks.one_of("packnet_bn", self.packnet_bn, ("per_task", "shared"))
        checks.one_of("fisher_labels", self.fisher_labels, ("empirical", "sampled"))
        checks.one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.keep is not None:
            checks.number("keep", self.keep, most=1, above=0)
        checks.integer("seed", self.seed, 0)
        checks.integer("epochs", self.epochs, 1)
        checks.integer("retrain_epochs", self.retrain_epochs, 0)
        if self.strategy in PACKNET_STRATEGIES and self.retrain_epochs >= self.epochs:
            raise ValueError(f"retrain_epochs ({self.retrain_epochs}) must be fewer than epochs ({self.epochs}): "
                             "PackNet retrains within each task's epochs")
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("importance_examples", self.importance_examples, 1)
        checks.integer("probe_examples", self.probe_examples, 0)
        checks.number("lr", self.lr, above=0)
        checks.number("weight_decay", self.weight_decay, 0)
        checks.number("ewc_lambda", self.ewc_lambda, 0)


def tasks_for(run: ContinualRun):
    """The run's task sequence. Split: class order from the seed (Split-MNIST keeps 0/1, 2/3, ...),
    validation images held out of each task by the seed (Split-MNIST's too: its fixed order must not
    fix them). Permuted: pixel permutations and the validation images from the seed."""
    train = data.load_cached(run.dataset, True, run.synthetic_shape)
    test = data.load_cached(run.dataset, False, run.synthetic_shape)
    if run.benchmark == "permuted":
        return permuted_tasks(train, test, run.n_tasks, run.seed)
    order_seed = None if run.dataset == "mnist" else run.seed
    return split_tasks(train, test, run.n_tasks, order_seed, scenario=run.scenario, holdout_seed=run.seed)


def _joint_data(run: ContinualRun, tasks) -> data.ImageData:
    """Every task's training images at once. Task-IL labels are shifted into one label space, that of
    the concatenated heads; class- and domain-IL labels already are the head's outputs."""
    offsets = np.cumsum([0] + [len(t.classes) for t in tasks[:-1]]) if run.scenario == "task" else [0] * len(tasks)
    images = torch.cat([t.train.images for t in tasks])
    labels = torch.cat([t.train.labels + int(o) for t, o in zip(tasks, offsets)])
    first = tasks[0].train
    return data.ImageData(images, labels, int(labels.max()) + 1, first.mean, first.std, first.name)


def _fresh_net(run: ContinualRun, tasks, device):
    """The run's initial network, its backbone and head(s) both from `run.seed`: one head per task
    (task-IL), or one head whose active outputs grow with the classes seen (class-IL) or are all
    classes from the start (domain-IL)."""
    first = tasks[0].train
    outputs = {"task": 1, "class": sum(len(t.classes) for t in tasks), "domain": first.num_classes}[run.scenario]
    backbone = build(run.model, outputs, in_channels=first.images.shape[1], image_size=first.images.shape[-1],
                     seed=run.seed)
    if run.scenario == "task":
        torch.manual_seed(run.seed)  # the heads
        return MultiHeadNet(backbone, [len(t.classes) for t in tasks]).to(device)
    seen = np.cumsum([len(t.classes) for t in tasks]).tolist()
    active = seen if run.scenario == "class" else [first.num_classes] * len(tasks)
    return SingleHeadNet(backbone, active).to(device)


def _train_options(run: ContinualRun, device) -> dict:
    return dict(batch_size=run.batch_size, optimizer=run.optimizer, lr=run.lr, weight_decay=run.weight_decay,
                augment=run.augment, device=device, seed=run.seed, progress=False)


def _views(run, net, T, t):
    """Who answers for task j after training task t: in task-IL task j's head; in class-IL the head
    over the classes seen by stage max(t, j) (a task still to come needs its own classes to be
    answerable); in domain-IL the one head."""
    if run.scenario == "class":
        return [StageView(net, max(t, j)) for j in range(T)]
    return [StageView(net, j) for j in range(T)]


def _probes(run, net, tasks, evals, device) -> list[float]:
    """Forward transfer's raw material: the linear-probe accuracy (%) of the current body on every task."""
    if not run.probe_examples:
        return [math.nan] * len(tasks)
    return [100 * linear_probe_accuracy(net.body, t.train, e, examples=run.probe_examples, seed=run.seed,
                                        device=device) for t, e in zip(tasks, evals)]


def run_sequence(run: ContinualRun, device=None) -> dict:
    """Train `run.strategy` over the task sequence and return R, b and the metrics (in percent).

    `fwt` is forward transfer by linear probe: for each task j > 0, the probe accuracy of the body
    trained on tasks 0..j-1 minus that of the body at initialisation (`probe_before`, `probe_init`).
    """
    device = torch.device(device) if device is not None else default_device()
    tasks = tasks_for(run)
    T = len(tasks)
    net = _fresh_net(run, tasks, device)
    evals = [t.val if run.split == "val" else t.test for t in tasks]
    train_options = _train_options(run, device)
    b = [100 * evaluate(view, e) for view, e in zip(_views(run, net, T, 0), evals)]
    probe_init = _probes(run, net, tasks, evals, device)

    if run.strategy == "joint":
        net.task = "all"
        history = fit(net, _joint_data(run, tasks), None, run.epochs, **train_options)
        row = [100 * evaluate(view, e) for view, e in zip(_views(run, net, T, T - 1), evals)]
        return dict(R=[row], b=b, avg_acc=float(np.mean(row)), forgetting=math.nan, bwt=math.nan, fwt=math.nan,
                    probe_init=probe_init, diverged=not all(math.isfinite(loss) for loss in history.train_loss))

    ewc = EWC(run.ewc_lambda, online=run.ewc_online) if run.strategy in EWC_STRATEGIES else None
    packnet = PackNet(net) if run.strategy in PACKNET_STRATEGIES else None
    # Shuffled SNIP-PackNet's positions: their own stream, so the training's random draws match SNIP-PackNet's.
    shuffle = torch.Generator().manual_seed(run.seed) if run.strategy in POSITION_SHUFFLED else None
    importance_options = dict(examples=run.importance_examples, fisher_labels=run.fisher_labels, seed=run.seed,
                              device=device)
    R, retrained, histories, probe_before = np.zeros((T, T)), [], [], [math.nan]
    for t, task in enumerate(tasks):
        net.task = t
        if packnet is not None:
            histories.append(fit(net, task.train, None, run.epochs - run.retrain_epochs,
                                 after_step=packnet.frozen_restorer(net, t), **train_options))
            weight_scores = importance(net, task.train, CRITERIA[run.strategy], params=packnet.weights, task=t,
                                       **importance_options)
            packnet.claim(net, t, weight_scores, run.keep if t < T - 1 and run.keep else 1 / (T - t), shuffle=shuffle)
            if run.retrain_epochs:
                fit(net, task.train, None, run.retrain_epochs,
                    after_step=packnet.frozen_restorer(net, t, retraining=True), **train_options)
            if run.packnet_bn == "per_task":
                packnet.save_norms(net, t)
            retrained.append(100 * evaluate(packnet.view(net, t), evals[t]))
            views = [packnet.view(net, j) for j in range(T)]
        else:
            penalty = (lambda: ewc.penalty(net)) if ewc is not None and ewc.anchors else None
            histories.append(fit(net, task.train, None, run.epochs, penalty=penalty, **train_options))
            if ewc is not None:
                ewc.consolidate(net, importance(net, task.train, CRITERIA[run.strategy], task=t,
                                                params=shared_parameters(net), **importance_options))
            views = _views(run, net, T, t)
        R[t] = [100 * evaluate(view, e) for view, e in zip(views, evals)]
        if t + 1 < T and run.probe_examples:
            # What task t + 1 starts from (for PackNet: earlier tasks' weights, the free ones zero).
            probe_before.append(100 * linear_probe_accuracy(net.body, tasks[t + 1].train, evals[t + 1],
                                                            examples=run.probe_examples, seed=run.seed, device=device))
    # A penalty too stiff for the learning rate blows the weights up; say so rather than report chance.
    diverged = any(not math.isfinite(loss) for h in histories for loss in h.train_loss)
    # No probe (probe_examples=0), no forward transfer: probe_before then holds only its leading NaN.
    fwt = (float(np.mean([probe_before[j] - probe_init[j] for j in range(1, T)])) if T > 1 else 0.0
           ) if run.probe_examples else math.nan
    result = dict(R=R.tolist(), b=b, diverged=diverged, avg_acc=metrics.average_accuracy(R),
                  forgetting=metrics.average_forgetting(R), bwt=metrics.backward_transfer(R),
                  fwt=fwt, probe_before=probe_before, probe_init=probe_init)
    if packnet is not None:
        result["after_retraining"] = retrained  # task t right after its own pruning and retraining
        result["usage"] = packnet.usage()
    return result


def mean_matrix(results, strategy: str) -> np.ndarray:
    """The accuracy matrix of `strategy` averaged over the seeds in a sweep's results table."""
    rows = results[results.strategy == strategy]
    return np.mean([np.array(R) for R in rows.R], axis=0)


def first_task_importances(run: ContinualRun, criteria=("fisher", "snip_per_sample"), device=None,
                           max_entries: int = 1_000_000) -> dict[str, torch.Tensor]:
    """Train the first task of `run` and return each criterion's importance of the body parameters,
    flattened (the same random `max_entries` positions for all), for comparing criteria."""
    device = torch.device(device) if device is not None else default_device()
    tasks = tasks_for(run)
    task = tasks[0]
    net = _fresh_net(run, tasks, device)
    fit(net, task.train, None, run.epochs, **_train_options(run, device))
    flat = {}
    for criterion in criteria:
        weights = importance(net, task.train, criterion, params=body_parameters(net),
                             examples=run.importance_examples, seed=run.seed, device=device)
        flat[criterion] = torch.cat([w.flatten().cpu() for w in weights.values()])
    n = len(next(iter(flat.values())))
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_entries]
    return {c: v[pick] for c, v in flat.items()}


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two flat tensors (ties ranked by position)."""
    ranks = [torch.argsort(torch.argsort(v)).double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])
