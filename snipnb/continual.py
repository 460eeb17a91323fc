"""Learning tasks one after another: task sequences, the networks that learn them, the strategies.

Three scenarios (van de Ven & Tolias 2019, "Three scenarios for continual learning"):
- task-incremental (`task`): one head per task, the task id given at test time;
- class-incremental (`class`): one head over every class seen so far, no task id at test time;
- domain-incremental (`domain`): one shared head, the same classes in every task (Permuted MNIST).

Every strategy trains through `snipnb.train.fit`; EWC adds a `penalty`, PackNet restores frozen
weights in `after_step`. EWC and PackNet take their importance from one function, `importance`, so
each SNIP variant differs from its baseline in the score alone, and so do the controls: EWC with a
uniform importance (plain L2 to the old weights) or a shuffled Fisher (the same values at random
positions), PackNet keeping a random fraction of the free weights (random scores, pooled: about the same
fraction of every layer), and shuffled SNIP-PackNet keeping as many of each layer's free weights as
SNIP chooses there, at random positions in that layer (SNIP's per-layer budget without its choice of
weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .data import ImageData, class_split
from .loader import DeviceLoader
from .pruning import prunable, scores
from .train import evaluate, fit

SCENARIOS = ("task", "class", "domain")
STRATEGIES = ("finetune", "joint", "ewc", "snip_ewc", "ewc_uniform", "ewc_random", "packnet", "snip_packnet",
              "random_packnet", "shuffled_snip_packnet")
CRITERIA = {"ewc": "fisher", "snip_ewc": "snip_per_sample", "ewc_uniform": "uniform", "ewc_random": "shuffled_fisher",
            "packnet": "magnitude", "snip_packnet": "snip", "random_packnet": "random", "shuffled_snip_packnet": "snip"}
EWC_STRATEGIES = ("ewc", "snip_ewc", "ewc_uniform", "ewc_random")
PACKNET_STRATEGIES = ("packnet", "snip_packnet", "random_packnet", "shuffled_snip_packnet")
# PackNet variants that keep their criterion's count per layer but not its positions (`PackNet.claim`'s `shuffle`).
POSITION_SHUFFLED = ("shuffled_snip_packnet",)


# ----------------------------------------------------------------------------------------- tasks


@dataclass
class Task:
    classes: list[int]  # the dataset's class ids this task holds
    train: ImageData  # labels: 0..len(classes)-1 per task (task-IL), or the network's output index
    val: ImageData
    test: ImageData


def _relabel(data: ImageData, classes: list[int], labels: list[int]) -> ImageData:
    part = data.classes(classes)
    lookup = torch.full((data.num_classes,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.tensor(labels)
    return ImageData(part.images, lookup[part.labels], max(labels) + 1, data.mean, data.std, data.name)


def _hold_out(pool: ImageData, val_fraction: float, g: torch.Generator) -> tuple[ImageData, ImageData]:
    order = torch.randperm(len(pool), generator=g)
    n_val = max(1, round(val_fraction * len(pool)))
    return pool.subset(order[n_val:]), pool.subset(order[:n_val])


def _check_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def split_tasks(train: ImageData, test: ImageData, n_tasks: int, seed: int | None,
                val_fraction: float = 0.1, scenario: str = "task", holdout_seed: int | None = None) -> list[Task]:
    """Cut a dataset into `n_tasks` tasks of equal class count (class order from `seed`; None keeps
    0, 1, 2, ...) and hold out `val_fraction` of each task's training images for validation, drawn
    from `holdout_seed` (None: from `seed`, or 0 when that is None too).

    The two seeds are apart because a fixed class order (Split-MNIST's) must not fix the validation
    images as well: a run's seed should draw its own hold-out, so that a choice made on validation
    over several seeds is not a choice made on one 10% of each task.

    Labels: per task 0..c-1 for `scenario="task"` (each task its own head); for `"class"` a class's
    position in the class order, so one head over all classes answers (Split-MNIST keeps digit = label).
    """
    _check_fraction(val_fraction)
    if scenario not in ("task", "class"):
        raise ValueError(f"scenario must be 'task' or 'class' for split tasks, got {scenario!r}")
    tasks = []
    if holdout_seed is None:
        holdout_seed = 0 if seed is None else seed
    g = torch.Generator().manual_seed(holdout_seed)
    groups = class_split(train.num_classes, n_tasks, seed)
    for t, classes in enumerate(groups):
        first = t * len(classes)
        labels = list(range(len(classes))) if scenario == "task" else list(range(first, first + len(classes)))
        fit_part, val = _hold_out(_relabel(train, classes, labels), val_fraction, g)
        tasks.append(Task(classes, fit_part, val, _relabel(test, classes, labels)))
    return tasks


def pixel_permutations(n_tasks: int, pixels: int, seed: int) -> list[torch.Tensor]:
    """One fixed permutation of the pixels per task, drawn from `seed`; task 0 keeps the images as
    they are (the identity), as Zenke et al. (2017) and van de Ven & Tolias (2019) do."""
    g = torch.Generator().manual_seed(seed)
    return [torch.arange(pixels)] + [torch.randperm(pixels, generator=g) for _ in range(n_tasks - 1)]


def _permute(data: ImageData, permutation: torch.Tensor) -> ImageData:
    n, c, h, w = data.images.shape
    images = data.images.reshape(n, c, h * w)[:, :, permutation].reshape(n, c, h, w).contiguous()
    return ImageData(images, data.labels.clone(), data.num_classes, data.mean, data.std, data.name)


def permuted_tasks(train: ImageData, test: ImageData, n_tasks: int, seed: int,
                   val_fraction: float = 0.1) -> list[Task]:
    """Permuted MNIST: `n_tasks` tasks with every class, task t's images under `pixel_permutations`'
    t-th permutation (per-channel statistics are unchanged by a permutation). The same held-out
    validation images in every task."""
    _check_fraction(val_fraction)
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    fit_part, val = _hold_out(train, val_fraction, torch.Generator().manual_seed(seed))
    classes = list(range(train.num_classes))
    return [Task(classes, _permute(fit_part, p), _permute(val, p), _permute(test, p))
            for p in pixel_permutations(n_tasks, train.images[0, 0].numel(), seed)]


class MultiHeadNet(nn.Module):
    """A shared body with one linear head per task. `task` picks the head `forward` uses; "all"
    concatenates every head (joint training)."""

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


class SingleHeadNet(nn.Module):
    """A body and one head. `active[t]` outputs answer at stage `task` (van de Ven & Tolias: in
    class-IL, the classes seen so far, so training task t never pushes down classes still to come);
    for domain-IL every stage has every output. `task="all"` answers with every output."""

    def __init__(self, net: nn.Module, active: list[int]):
        super().__init__()
        self.body, self.embed_dim, self.head = net.body, net.embed_dim, net.head
        self.active = list(active)
        self.task: int | str = 0

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        logits = self.head(self.body(x))
        return logits if self.task == "all" else logits[:, : self.active[self.task]]


def body_parameters(net: nn.Module) -> list[str]:
    """The body's parameters: everything but the head(s)."""
    return [n for n, _ in net.named_parameters() if n.startswith("body.")]


def shared_parameters(net: nn.Module) -> list[str]:
    """The parameters later tasks train too, which EWC must protect: the body, and a `SingleHeadNet`'s
    one head (class- and domain-IL: every task answers through it). A `MultiHeadNet`'s heads are
    each one task's own: no later task's loss reaches them."""
    shared = body_parameters(net)
    if isinstance(net, SingleHeadNet):
        shared += [n for n, _ in net.named_parameters() if n.startswith("head.")]
    return shared


# ------------------------------------------------------------------------------------ importance


def importance(net: nn.Module, data: ImageData, criterion: str, *, params: list[str],
               examples: int = 1024, fisher_labels: str = "empirical", seed: int = 0, task: int = 0,
               device=None) -> dict[str, torch.Tensor]:
    """How much each parameter in `params` matters to the task `net.task` was trained on.

    `criterion` is a `pruning.scores` method (`fisher`, `snip_per_sample`, `snip`, `magnitude`,
    `random`), computed in eval mode on up to `examples` training images, or one of the controls:
    `uniform` (every parameter 1: EWC becomes plain L2 to the old weights) and `shuffled_fisher` (the
    Fisher's values at random positions: the same distribution, no information about which
    parameter matters). The result is divided by its mean over all entries, so every importance is
    on one scale and shares one λ grid.

    The images are chosen from `seed` alone. The shuffle is drawn from (`seed`, `task`), the task's
    index in its sequence: each task gets a shuffle of its own, as an uninformative importance
    would, rather than one shared by every task of the same size (Permuted MNIST's tasks all are).
    """
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise ValueError(f"task must be an int >= 0 (the task's index in its sequence), got {task!r}")
    device = device or next(net.parameters()).device
    named = dict(net.named_parameters())
    if criterion == "uniform":
        return {n: torch.ones_like(named[n], dtype=torch.float32) for n in params}
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data), generator=g)[:examples]
    batches = DeviceLoader(data.subset(pick), batch_size=256, device=device)
    method = "fisher" if criterion == "shuffled_fisher" else criterion
    raw = scores(net, batches, method, params=params, fisher_labels=fisher_labels, seed=seed)
    flat = torch.cat([v.flatten() for v in raw.values()])
    if criterion == "shuffled_fisher":
        flat = flat[torch.randperm(len(flat), generator=_task_generator(seed, task)).to(flat.device)]
        raw = dict(zip(raw, (piece.view(v.shape) for piece, v in zip(flat.split([v.numel() for v in raw.values()]),
                                                                        raw.values()))))
    mean = flat.mean().clamp_min(1e-30)
    return {n: v / mean for n, v in raw.items()}


def _task_generator(seed: int, task: int) -> torch.Generator:
    """A generator of its own for each (seed, task): distinct pairs give independent streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, task]).generate_state(1, np.uint64)[0]))


# ------------------------------------------------------------------------------------------- EWC


@dataclass
class EWC:
    """The EWC penalty λ Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², one term per past task, or, with `online`,
    a single running importance γ F + F_t anchored at the latest weights (Schwarz et al. 2018).

    The terms of all past tasks are one quadratic in θ: Σ_t F_t (θ − θ*_t)² = A (θ − m)² + c with
    A = Σ_t F_t, m = Σ_t F_t θ*_t / A and c = Σ_t F_t θ*_t² − A m² (Huszár 2018), so a training step
    pays for one term however many tasks came before (on ten-task Permuted MNIST the per-task sum was
    15% of a run). `anchors` keeps each task's (importance, θ*) as given.
    """

    lam: float
    online: bool = False
    gamma: float = 1.0
    anchors: list[tuple[dict, dict]] = field(default_factory=list)  # (importance, θ*) per term
    _merged: tuple[dict, dict, float] | None = field(default=None, repr=False)  # (A, m, c)

    def consolidate(self, net: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        named = dict(net.named_parameters())
        theta = {n: named[n].detach().clone() for n in weights}
        if self.online and self.anchors:
            previous, _ = self.anchors.pop()
            weights = {n: self.gamma * previous[n] + weights[n] for n in weights}
        self.anchors.append((weights, theta))
        self._merged = self._merge()

    def _merge(self) -> tuple[dict, dict, float]:
        total, centre, constant = {}, {}, 0.0
        for n in self.anchors[0][0]:
            a = sum(w[n] for w, _ in self.anchors)
            moment = sum(w[n] * t[n] for w, t in self.anchors)
            m = torch.where(a > 0, moment / a.clamp_min(1e-30), torch.zeros_like(moment))
            constant += float(sum((w[n] * (t[n] - m) ** 2).sum() for w, t in self.anchors))
            total[n], centre[n] = a, m
        return total, centre, constant

    def penalty(self, net: nn.Module) -> torch.Tensor:
        named = dict(net.named_parameters())
        total, centre, constant = self._merged
        value = torch.zeros((), device=next(net.parameters()).device)
        for n, a in total.items():
            value = value + (a * (named[n] - centre[n]) ** 2).sum()
        return self.lam * (value + constant)


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
    def claim(self, net: MultiHeadNet, task: int, weight_scores: dict[str, torch.Tensor], keep: float,
              shuffle: torch.Generator | None = None) -> None:
        """Task `task` keeps the top `keep` fraction of the free weights by score, pooled over layers; the
        rest are freed and zeroed. Ties are broken by `topk`; the count kept is exact.

        With `shuffle` (a generator), each layer keeps exactly as many of its free weights as the scores
        choose there, but at positions drawn at random among that layer's free weights: the scores'
        per-layer budget without their choice of weights. The counts are taken from the scores' own
        choice, not from shuffled scores: scores tied across layers (SNIP's exact zeros) would otherwise
        let a shuffle move weights from one layer to another.
        """
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        named = dict(net.named_parameters())
        free = {n: self.owner[n] == -1 for n in self.weights}
        pooled = torch.cat([weight_scores[n][free[n]].flatten().float().cpu() for n in self.weights])
        n_keep = round(keep * pooled.numel())
        chosen = torch.zeros(pooled.numel(), dtype=torch.bool)
        if n_keep > 0:
            chosen[torch.topk(pooled, n_keep, sorted=False).indices] = True
        for n, piece in zip(self.weights, chosen.split([int(free[n].sum()) for n in self.weights])):
            if shuffle is not None:
                piece = _same_count_at_random(piece, shuffle)
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


def _same_count_at_random(chosen: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A boolean vector as long as `chosen`, with as many True entries, at positions drawn from `g`."""
    shuffled = torch.zeros_like(chosen)
    shuffled[torch.randperm(len(chosen), generator=g)[:int(chosen.sum())]] = True
    return shuffled


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


class StageView(nn.Module):
    """`net` answering as at stage `task` (its head, or its active classes), for evaluation without
    changing `net.task` for good."""

    def __init__(self, net: nn.Module, task: int):
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x):
        self.net.task = self.task
        return self.net(x)


@torch.no_grad()
def _features(body: nn.Module, data: ImageData, device) -> tuple[torch.Tensor, torch.Tensor]:
    body.eval()
    parts = [(body(x).float().flatten(1), y) for x, y in DeviceLoader(data, 1024, device=device)]
    return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


def linear_probe_accuracy(body: nn.Module, train: ImageData, test: ImageData, *, examples: int = 2000,
                          steps: int = 100, weight_decay: float = 1e-4, seed: int = 0, device=None) -> float:
    """Accuracy in [0, 1] on `test` of a linear classifier fit to the frozen `body`'s features of up to
    `examples` images of `train`: what the body already offers a task it has not been trained on.

    This is the forward-transfer probe: reading a task's untrained head instead measures a random
    projection (±5–10 points of noise). The classifier is a multinomial logistic regression on
    standardised features, fit by full-batch L-BFGS (deterministic), with a small L2 penalty.
    """
    device = device or next(body.parameters()).device
    was_training = body.training
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:examples]
    x, y = _features(body, train.subset(pick), device)
    x_test, y_test = _features(body, test, device)
    body.train(was_training)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    classes = int(max(y.max(), y_test.max())) + 1
    weight = torch.zeros(x.shape[1], classes, device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        solver.zero_grad()
        value = F.cross_entropy(x @ weight + bias, y) + weight_decay * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        solver.step(loss)
    with torch.no_grad():
        return ((x_test @ weight + bias).argmax(1) == y_test).float().mean().item()
