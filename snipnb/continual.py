"""Learning tasks one after another: task splits, a multi-head network and the strategies.

Task-incremental learning: each task has its own head and the task id is given at test time.
Class-incremental accuracy is reported too: all heads trained so far answer together, without the
task id. Every strategy trains through `snipnb.train.fit`; EWC adds a `penalty`, PackNet restores
frozen weights in `after_step`. EWC and PackNet take their importance from one function,
`importance`, so each SNIP variant differs from its baseline in the score alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .data import ImageData, class_split
from .loader import DeviceLoader
from .pruning import prunable, scores
from .train import evaluate, fit

STRATEGIES = ("finetune", "joint", "ewc", "snip_ewc", "packnet", "snip_packnet")
CRITERIA = {"ewc": "fisher", "snip_ewc": "snip_per_sample", "packnet": "magnitude", "snip_packnet": "snip"}


# ----------------------------------------------------------------------------------------- tasks


@dataclass
class Task:
    classes: list[int]  # the dataset's class ids, in the order of this task's head
    train: ImageData  # labels renumbered 0..len(classes)-1
    val: ImageData
    test: ImageData


def _renumber(data: ImageData, classes: list[int]) -> ImageData:
    part = data.classes(classes)
    lookup = torch.full((data.num_classes,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    return ImageData(part.images, lookup[part.labels], len(classes), data.mean, data.std, data.name)


def split_tasks(train: ImageData, test: ImageData, n_tasks: int, seed: int | None,
                val_fraction: float = 0.1) -> list[Task]:
    """Cut a dataset into `n_tasks` tasks of equal class count (class order from `seed`; None keeps
    0, 1, 2, ...) and hold out `val_fraction` of each task's training images for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tasks = []
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    for classes in class_split(train.num_classes, n_tasks, seed):
        pool = _renumber(train, classes)
        order = torch.randperm(len(pool), generator=g)
        n_val = max(1, round(val_fraction * len(pool)))
        tasks.append(Task(classes, pool.subset(order[n_val:]), pool.subset(order[:n_val]),
                          _renumber(test, classes)))
    return tasks


class MultiHeadNet(nn.Module):
    """A shared body with one linear head per task. `task` picks the head `forward` uses; "all"
    concatenates every head (joint training and class-incremental evaluation)."""

    def __init__(self, net: nn.Module, classes_per_task: list[int]):
        super().__init__()
        self.body = net.body
        self.embed_dim = net.embed_dim
        self.heads = nn.ModuleList(nn.Linear(net.embed_dim, c) for c in classes_per_task)
        self.task: int | str = 0

    @property
    def head(self) -> nn.Module:
        return self.heads[self.task]

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        features = self.body(x)
        if self.task == "all":
            return torch.cat([head(features) for head in self.heads], dim=1)
        return self.heads[self.task](features)


def body_parameters(net: MultiHeadNet) -> list[str]:
    """The shared parameters: everything but the heads."""
    return [n for n, _ in net.named_parameters() if n.startswith("body.")]


# ------------------------------------------------------------------------------------ importance


def importance(net: MultiHeadNet, data: ImageData, criterion: str, *, params: list[str],
               examples: int = 1024, fisher_labels: str = "empirical", seed: int = 0,
               device=None) -> dict[str, torch.Tensor]:
    """How much each parameter in `params` matters to the task `net.task` was trained on.

    `criterion` is a `pruning.scores` method (`fisher`, `snip_per_sample`, `snip`, `magnitude`),
    computed in eval mode on up to `examples` training images. The result is divided by its mean
    over all entries, so Fisher and SNIP importances are on one scale and share one λ grid.
    """
    device = device or next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data), generator=g)[:examples]
    batches = DeviceLoader(data.subset(pick), batch_size=256, device=device)
    raw = scores(net, batches, criterion, params=params, fisher_labels=fisher_labels, seed=seed)
    mean = torch.cat([v.flatten() for v in raw.values()]).mean().clamp_min(1e-30)
    return {n: v / mean for n, v in raw.items()}


# ------------------------------------------------------------------------------------------- EWC


@dataclass
class EWC:
    """The EWC penalty λ Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², one term per past task, or, with `online`,
    a single running importance γ F + F_t anchored at the latest weights (Schwarz et al. 2018)."""

    lam: float
    online: bool = False
    gamma: float = 1.0
    anchors: list[tuple[dict, dict]] = field(default_factory=list)  # (importance, θ*) per term

    def consolidate(self, net: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        named = dict(net.named_parameters())
        theta = {n: named[n].detach().clone() for n in weights}
        if self.online and self.anchors:
            previous, _ = self.anchors.pop()
            weights = {n: self.gamma * previous[n] + weights[n] for n in weights}
        self.anchors.append((weights, theta))

    def penalty(self, net: nn.Module) -> torch.Tensor:
        named = dict(net.named_parameters())
        total = torch.zeros((), device=next(net.parameters()).device)
        for weights, theta in self.anchors:
            for n, w in weights.items():
                total = total + (w * (named[n] - theta[n]) ** 2).sum()
        return self.lam * total


# --------------------------------------------------------------------------------------- PackNet


def _is_norm(module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase)


class PackNet:
    """Parameter isolation (Mallya & Lazebnik 2018): every prunable body weight has one owner task.

    `owner[name]` is -1 for a free weight or the task that claimed it. Task t trains its free weights
    while those of earlier tasks stay frozen; then it keeps the best-scored fraction of its free
    weights, releases the rest (set to zero, free for later tasks) and retrains briefly. Task t is
    evaluated through masks in the forward pass: weights owned by tasks 0..t, its own BatchNorm
    statistics and affine parameters, its own head. Other body parameters (conv and linear biases)
    are trained by the first task only, as in PackNet.
    """

    def __init__(self, net: MultiHeadNet):
        named = dict(net.named_parameters())
        self.weights = [n for n in prunable(net) if n.startswith("body.")]
        self.owner = {n: torch.full(named[n].shape, -1, dtype=torch.int16, device=named[n].device)
                      for n in self.weights}
        self.norm_names = {f"{m_name}.{p}" for m_name, m in net.named_modules() if _is_norm(m)
                           for p, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))}
        self.shared = [n for n in body_parameters(net) if n not in self.weights and n not in self.norm_names]
        self.norm_state: dict[int, dict[str, torch.Tensor]] = {}

    def frozen_restorer(self, net: MultiHeadNet, task: int, retraining: bool = False):
        """An `after_step` that puts back everything task `task` may not change: the weights of
        earlier tasks, the shared biases after the first task, and, while retraining, the weights
        the task released (which stay zero)."""
        named = dict(net.named_parameters())
        fixed = {}
        for n in self.weights:
            o = self.owner[n]
            mask = (o >= 0) & (o < task)
            if retraining:
                mask |= o == -1
            fixed[n] = (mask, named[n].detach().clone())
        if task > 0:
            fixed.update({n: (None, named[n].detach().clone()) for n in self.shared})

        @torch.no_grad()
        def restore():
            for n, (mask, saved) in fixed.items():
                if mask is None:
                    named[n].copy_(saved)
                else:
                    named[n].copy_(torch.where(mask, saved, named[n]))
        return restore

    @torch.no_grad()
    def claim(self, net: MultiHeadNet, task: int, weight_scores: dict[str, torch.Tensor], keep: float) -> None:
        """Task `task` keeps the top `keep` fraction of the free weights by score; the rest are freed
        and zeroed. Ties are broken by `topk`; the count kept is exact."""
        named = dict(net.named_parameters())
        free = {n: self.owner[n] == -1 for n in self.weights}
        pooled = torch.cat([weight_scores[n][free[n]].flatten().float().cpu() for n in self.weights])
        n_keep = round(keep * pooled.numel())
        chosen = torch.zeros(pooled.numel(), dtype=torch.bool)
        if n_keep > 0:
            chosen[torch.topk(pooled, n_keep, sorted=False).indices] = True
        for n, piece in zip(self.weights, chosen.split([int(free[n].sum()) for n in self.weights])):
            claimed = torch.zeros_like(free[n])
            claimed[free[n]] = piece.to(claimed.device)
            self.owner[n][claimed] = task
            named[n][free[n] & ~claimed] = 0.0

    def save_norms(self, net: MultiHeadNet, task: int) -> None:
        """Keep task `task`'s BatchNorm statistics and affine parameters for its evaluation. Without
        this (the `shared` policy) every task is evaluated with the last task's BatchNorm."""
        state = net.state_dict()
        self.norm_state[task] = {n: state[n].clone() for n in self.norm_names}

    def view(self, net: MultiHeadNet, task: int) -> nn.Module:
        """A module computing task `task`'s network from `net` without changing any weight."""
        return _TaskView(self, net, task)

    def usage(self) -> dict[str, list[float]]:
        """Per layer, the fraction of its weights owned by each task and, last, still free."""
        tasks = range(max(int(o.max()) for o in self.owner.values()) + 1)
        return {n: [float((o == t).float().mean()) for t in tasks] + [float((o == -1).float().mean())]
                for n, o in self.owner.items()}


class _TaskView(nn.Module):
    def __init__(self, packnet: PackNet, net: MultiHeadNet, task: int):
        super().__init__()
        self.packnet, self.net, self.task = packnet, net, task

    def forward(self, x):
        p = self.packnet
        state = {n: t for n, t in self.net.named_parameters()}
        state.update({n: t for n, t in self.net.named_buffers()})
        for n in p.weights:
            o = p.owner[n]
            state[n] = state[n] * ((o >= 0) & (o <= self.task))
        state.update(p.norm_state.get(self.task, {}))
        self.net.task = self.task
        return functional_call(self.net, state, (x,))


# ------------------------------------------------------------------------------------ evaluation


class _HeadView(nn.Module):
    """`net` answering with head `task`, for evaluation without touching `net.task` for good."""

    def __init__(self, net: MultiHeadNet, task: int):
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x):
        self.net.task = self.task
        return self.net(x)


@torch.no_grad()
def class_incremental_accuracy(task_models: list[nn.Module], eval_sets: list[ImageData], device) -> float:
    """Accuracy with no task id: every task model's head answers, the largest logit of all wins.
    `task_models[j]` gives task j's logits; `eval_sets[j]` holds task j's images, local labels."""
    sizes = [m_data.num_classes for m_data in eval_sets]
    offsets = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)
    for m in task_models:
        m.eval()
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    for true_task, data in enumerate(eval_sets):
        for x, y in DeviceLoader(data, 2048, device=device):
            logits = torch.cat([m(x).float() for m in task_models], dim=1)
            correct += (logits.argmax(1) == offsets[true_task] + y).sum()
            total += len(y)
    return correct.item() / total
