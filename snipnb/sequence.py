"""Experiments 3 and 4: one strategy over one task sequence, one run per `ContinualRun`.

The run records the full accuracy matrix R (R[i, j]: accuracy on task j after training task i) on
the validation or the test split, the accuracy at initialisation b, the class-incremental accuracy
after each task, and, for PackNet, which task owns how much of every layer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from . import checks, data, metrics
from .continual import (CRITERIA, EWC, STRATEGIES, MultiHeadNet, PackNet, _HeadView, body_parameters,
                        class_incremental_accuracy, importance, split_tasks)
from .models import NAMES, build
from .train import default_device, evaluate, fit


@dataclasses.dataclass(frozen=True)
class ContinualRun:
    """Every setting that changes a result; the data folder and the device do not."""

    strategy: str = "finetune"
    model: str = "resnet18"
    dataset: str = "cifar100"
    n_tasks: int = 5
    seed: int = 0
    epochs: int = 10  # per task
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = True
    ewc_lambda: float = 100.0
    ewc_online: bool = False
    fisher_labels: str = "empirical"  # or "sampled": the true Fisher
    importance_examples: int = 1024
    keep: float | None = None  # PackNet: fraction of the free weights a task keeps; None: equal shares
    retrain_epochs: int = 2  # PackNet: retraining after pruning
    packnet_bn: str = "per_task"  # PackNet's BatchNorm: "per_task" statistics and affine, or "shared"
    split: str = "test"  # "val" while choosing λ and keep, "test" for the reported numbers
    synthetic_shape: tuple = (3, 32)

    def __post_init__(self):
        # Checked here, so a grid with one bad cell fails before its first run, not hours later.
        checks.one_of("strategy", self.strategy, STRATEGIES)
        checks.one_of("model", self.model, NAMES)
        checks.one_of("dataset", self.dataset, data.DATASETS)
        classes = data.num_classes(self.dataset)
        checks.integer("n_tasks", self.n_tasks, 1)
        if classes % self.n_tasks:
            raise ValueError(f"n_tasks must divide the {classes} classes of {self.dataset!r}, got {self.n_tasks}")
        checks.one_of("split", self.split, ("val", "test"))
        checks.one_of("packnet_bn", self.packnet_bn, ("per_task", "shared"))
        checks.one_of("fisher_labels", self.fisher_labels, ("empirical", "sampled"))
        if self.keep is not None:
            checks.number("keep", self.keep, most=1, above=0)
        checks.integer("seed", self.seed, 0)
        checks.integer("epochs", self.epochs, 1)
        checks.integer("retrain_epochs", self.retrain_epochs, 0)
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("importance_examples", self.importance_examples, 1)
        checks.number("lr", self.lr, above=0)
        checks.number("weight_decay", self.weight_decay, 0)
        checks.number("ewc_lambda", self.ewc_lambda, 0)


def tasks_for(run: ContinualRun):
    """The run's task sequence: class order from the seed (Split-MNIST keeps 0/1, 2/3, ...)."""
    order_seed = None if run.dataset == "mnist" else run.seed
    return split_tasks(data.load_cached(run.dataset, True, run.synthetic_shape),
                       data.load_cached(run.dataset, False, run.synthetic_shape), run.n_tasks, order_seed)


def _joint_data(tasks) -> data.ImageData:
    # Labels shifted into one label space, matching the concatenated heads of MultiHeadNet.
    offsets = np.cumsum([0] + [len(t.classes) for t in tasks[:-1]])
    images = torch.cat([t.train.images for t in tasks])
    labels = torch.cat([t.train.labels + int(o) for t, o in zip(tasks, offsets)])
    first = tasks[0].train
    return data.ImageData(images, labels, int(sum(len(t.classes) for t in tasks)), first.mean, first.std, first.name)


def _fresh_net(run: ContinualRun, tasks, device) -> MultiHeadNet:
    """The run's initial network: the backbone and then one head per task, both from `run.seed`."""
    first = tasks[0].train
    backbone = build(run.model, 1, in_channels=first.images.shape[1], image_size=first.images.shape[-1], seed=run.seed)
    torch.manual_seed(run.seed)  # the heads
    return MultiHeadNet(backbone, [len(t.classes) for t in tasks]).to(device)


def _train_options(run: ContinualRun, device) -> dict:
    return dict(batch_size=run.batch_size, lr=run.lr, weight_decay=run.weight_decay, augment=run.augment,
                device=device, seed=run.seed, progress=False)


def run_sequence(run: ContinualRun, device=None) -> dict:
    """Train `run.strategy` over the task sequence and return R, b and the metrics (in percent)."""
    device = torch.device(device) if device is not None else default_device()
    tasks = tasks_for(run)
    T = len(tasks)
    net = _fresh_net(run, tasks, device)
    evals = [t.val if run.split == "val" else t.test for t in tasks]
    train_options = _train_options(run, device)
    heads = [_HeadView(net, j) for j in range(T)]
    b = [100 * evaluate(heads[j], evals[j]) for j in range(T)]

    if run.strategy == "joint":
        net.task = "all"
        history = fit(net, _joint_data(tasks), None, run.epochs, **train_options)
        row = [100 * evaluate(heads[j], evals[j]) for j in range(T)]
        class_il = 100 * class_incremental_accuracy(heads, evals, device)
        return dict(R=[row], b=b, class_il=[class_il], avg_acc=float(np.mean(row)), forgetting=math.nan,
                    bwt=math.nan, fwt=math.nan, final_class_il=class_il,
                    diverged=not all(math.isfinite(loss) for loss in history.train_loss))

    ewc = EWC(run.ewc_lambda, online=run.ewc_online) if run.strategy in ("ewc", "snip_ewc") else None
    packnet = PackNet(net) if run.strategy in ("packnet", "snip_packnet") else None
    importance_options = dict(examples=run.importance_examples, fisher_labels=run.fisher_labels, seed=run.seed,
                              device=device)
    R, class_il, retrained, histories = np.zeros((T, T)), [], [], []
    for t, task in enumerate(tasks):
        net.task = t
        if packnet is not None:
            histories.append(fit(net, task.train, None, run.epochs, after_step=packnet.frozen_restorer(net, t),
                                 **train_options))
            weight_scores = importance(net, task.train, CRITERIA[run.strategy], params=packnet.weights,
                                       **importance_options)
            packnet.claim(net, t, weight_scores, run.keep if t < T - 1 and run.keep else 1 / (T - t))
            if run.retrain_epochs:
                fit(net, task.train, None, run.retrain_epochs,
                    after_step=packnet.frozen_restorer(net, t, retraining=True), **train_options)
            if run.packnet_bn == "per_task":
                packnet.save_norms(net, t)
            retrained.append(100 * evaluate(packnet.view(net, t), evals[t]))
            models = [packnet.view(net, j) for j in range(T)]
        else:
            penalty = (lambda: ewc.penalty(net)) if ewc is not None and ewc.anchors else None
            histories.append(fit(net, task.train, None, run.epochs, penalty=penalty, **train_options))
            if ewc is not None:
                ewc.consolidate(net, importance(net, task.train, CRITERIA[run.strategy],
                                                params=body_parameters(net), **importance_options))
            models = heads
        R[t] = [100 * evaluate(models[j], evals[j]) for j in range(T)]
        class_il.append(100 * class_incremental_accuracy(models[: t + 1], evals[: t + 1], device))
    # A penalty too stiff for the learning rate blows the weights up; say so rather than report chance.
    diverged = any(not math.isfinite(loss) for h in histories for loss in h.train_loss)
    result = dict(R=R.tolist(), b=b, class_il=class_il, final_class_il=class_il[-1], diverged=diverged,
                  **metrics.summary(R, b))
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
    task = tasks_for(run)[0]
    net = _fresh_net(run, [task], device)
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
