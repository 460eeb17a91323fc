"""Many runs as one: train and test a stack of same-shaped runs in one step.

An experiment grid is hundreds of short runs of one architecture on small data: seeds, pruning
methods and sparsities of one grid cell differ only in their numbers. `fit_stack` trains such runs
together. Their parameters and buffers are stacked along a new first dimension and one forward pass
computes every run, `torch.func.vmap` over `functional_call` (convolutions of a stack become one
grouped convolution, linear layers one batched matrix product). Nothing else is shared: each run has
its own batch order and augmentation (its own `DeviceLoader` and seed), its own mask, its own
optimiser state (SGD's momentum is element-wise) and its own BatchNorm statistics. The recipe is
`train.fit`'s, and a stacked run gives the same result as the same run alone, to float tolerance
(tests/test_stack.py checks it with masks and BatchNorm).

What a stack needs in common: the architecture and parameter shapes, the number of training images
(so every run takes the same steps), the batch size and the recipe's settings. Test sets are shared:
each test batch goes through every run of the stack in one pass.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from tqdm import tqdm

from . import devices
from .loader import DeviceLoader
from .masks import masks_of, named_weights, remove_masks
from .train import (History, _autocast, check_labels, check_recipe, label_range, make_optimizer, resolve_device,
                    seed_everything, tested_epochs)


class Stack:
    """`models` held as one stacked set of tensors on `device`, with a forward pass over all of them.

    `params[name]` is an (S, ...) leaf tensor per weight, by the unpruned name; `masks[name]` a float
    (S, ...) 0/1 tensor for each weight any run masks (all ones for runs that do not). The forward
    pass uses `params * masks`, as each run's own parametrization would. A weight the models freeze
    (`requires_grad=False`, as `snipnb.pretrained.freeze` leaves it) is stacked frozen too, and
    `trainable()` leaves it out, so a stack trains what `train.fit` trains and nothing else; the runs
    must agree on which weights they freeze.
    """

    def __init__(self, models: list[nn.Module], device: torch.device):
        if not models:
            raise ValueError("models is empty: a stack needs at least one run")
        self.template = remove_masks(copy.deepcopy(models[0])).to("meta")
        shapes = {n: p.shape for n, p in self.template.named_parameters()}
        buffer_names = [n for n, _ in self.template.named_buffers()]
        for i, model in enumerate(models):
            _check_same_architecture(model, shapes, i)
        weights = [named_weights(m) for m in models]
        trained = {n: p.requires_grad for n, p in weights[0].items()}
        for i, w in enumerate(weights[1:], 1):
            differ = sorted(n for n in shapes if w[n].requires_grad != trained[n])
            if differ:
                raise ValueError(f"models[{i}] freezes other weights than models[0] ({differ[:3]}): the runs of a "
                                 "stack must train the same weights")
        self.params = {n: torch.stack([w[n].detach().to(device) for w in weights]).requires_grad_(trained[n])
                       for n in shapes}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n].detach().to(device) for m in models])
                        for n in buffer_names}
        run_masks = [masks_of(m) for m in models]
        masked = sorted({n for masks in run_masks for n in masks})
        self.masks = {n: torch.stack([masks.get(n, torch.ones(shapes[n], dtype=torch.bool)).to(device)
                                      for masks in run_masks]).to(self.params[n].dtype) for n in masked}
        self.size = len(models)

    def trainable(self) -> list[torch.Tensor]:
        """The stacked weights the optimiser updates: those the models train."""
        return [p for p in self.params.values() if p.requires_grad]

    def plain_model(self, device) -> nn.Module:
        """One real copy of the architecture on `device`, in eval mode and channels_last, to load a
        run's tensors into (made once)."""
        if getattr(self, "_plain", None) is None:
            self._plain = copy.deepcopy(self.template).to_empty(device=device).eval()
            self._plain.to(memory_format=torch.channels_last)
        return self._plain

    def masked_params(self) -> dict[str, torch.Tensor]:
        return {n: p * self.masks[n] if n in self.masks else p for n, p in self.params.items()}

    def forward(self, x: torch.Tensor, *, train: bool, shared: bool = False, params=None) -> torch.Tensor:
        """Logits (S, batch, classes) of every run. `x` is (S, batch, ...), one batch per run, or with
        `shared` one (batch, ...) that every run sees. `params` defaults to `masked_params()`."""
        self.template.train(train)

        def one(p, b, images):
            return functional_call(self.template, (p, b), (images,))

        params = self.masked_params() if params is None else params
        return vmap(one, in_dims=(0, 0, None if shared else 0))(params, self.buffers, x)

    @torch.no_grad()
    def write_back(self, models: list[nn.Module]) -> None:
        """Copy each run's trained parameters and buffers into its model."""
        for i, model in enumerate(models):
            weights, buffers = named_weights(model), dict(model.named_buffers())
            for n, p in self.params.items():
                weights[n].copy_(p[i])
            for n, b in self.buffers.items():
                buffers[n].copy_(b[i])


def check_stackable(runs, stack_key) -> list:
    """`runs` as a list, after checking that they can train as one stack.

    `stack_key(run)` gives the (field, value) pairs a stack's runs must share; the first field on which
    a run differs from the first run is named in the error, with both values.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("runs is empty: nothing to train")
    shared = stack_key(runs[0])
    for run in runs[1:]:
        differ = [name for (name, a), (_, b) in zip(shared, stack_key(run)) if a != b]
        if differ:
            raise ValueError(f"runs of one stack must share {differ[0]!r}: got {getattr(runs[0], differ[0])!r} "
                             f"and {getattr(run, differ[0])!r}")
    return runs


def _check_same_architecture(other: nn.Module, shapes: dict, index: int) -> None:
    theirs = {n: p.shape for n, p in named_weights(other).items()}
    if theirs != shapes:
        differ = sorted(n for n in set(shapes) | set(theirs) if shapes.get(n) != theirs.get(n))
        raise ValueError(f"models[{index}] differs from models[0] in parameters {differ[:3]}: "
                         "a stack holds one architecture")


def fit_stack(
    models: list[nn.Module],
    trains: list,
    test=None,
    epochs: int = 30,
    *,
    seeds: list[int],
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "cosine",
    step_every: int = 0,
    step_gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_steps: int = 0,
    label_smoothing: float = 0.0,
    augment: bool = False,
    device=None,
    amp: bool | None = None,
    eval_amp: bool | None = None,
    eval_batch_size: int | None = None,
    eval_every: int = 1,
    evaluations: int | None = None,
    val=None,
    progress: bool = True,
    desc: str = "stack",
) -> list[History]:
    """`train.fit` for many runs at once: run i trains `models[i]` on `trains[i]` with seed `seeds[i]`.

    The models are trained in place (their parameters and buffers are written back at the end) and
    every one is tested on the shared `test` (and `val`, if given) every `eval_every` epochs and after
    the last, or `evaluations` times spread over the run (`train.tested_epochs`). Returns
    one `History` per run; `seconds` is the stack's wall time divided among its runs.
    `amp`, `eval_amp` and `eval_batch_size` default as in `train.fit` (`snipnb.devices`).
    """
    check_recipe(epochs=epochs, eval_every=eval_every, lr=lr, schedule=schedule, step_every=step_every,
                 warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, evaluations=evaluations)
    tests = set(tested_epochs(epochs, eval_every, evaluations))
    if not len(models) == len(trains) == len(seeds):
        raise ValueError(f"models, trains and seeds must have one entry per run, got {len(models)}, "
                         f"{len(trains)} and {len(seeds)}")
    sizes = {len(t) for t in trains}
    if len(sizes) > 1:
        raise ValueError(f"the training sets of a stack must have one size (the same steps per epoch), "
                         f"got sizes {sorted(sizes)}")
    # channels_last does not carry through vmap's stacked dimension, so a stack runs contiguous.
    device, amp, _ = resolve_device(device, amp, False)
    eval_amp = devices.autocast_enabled(device, eval_amp, "evaluation")
    eval_batch_size = eval_batch_size or devices.eval_batch_size(device)
    seed_everything(seeds[0])

    stack = Stack(models, device)
    loaders = [t if isinstance(t, DeviceLoader) else
               DeviceLoader(t, batch_size, shuffle=True, augment=augment, device=device, seed=s)
               for t, s in zip(trains, seeds)]
    test_loader, val_loader = (None if d is None else d if isinstance(d, DeviceLoader) else
                               DeviceLoader(d, eval_batch_size, device=device) for d in (test, val))
    steps_per_epoch = len(loaders[0])
    optimizer, scheduler = make_optimizer(stack.trainable(), epochs * steps_per_epoch, lr=lr, momentum=momentum,
                               nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                               warmup_steps=warmup_steps or round(warmup_epochs * steps_per_epoch), step_every=step_every,
                               step_gamma=step_gamma)
    labels = (min(label_range(loader.labels)[0] for loader in loaders),
              max(label_range(loader.labels)[1] for loader in loaders))
    histories = [History() for _ in models]
    n = len(loaders[0].labels)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    try:
        for epoch in bar:
            loss_sum = torch.zeros(stack.size, device=device)
            for step, batches in enumerate(zip(*loaders)):
                x = torch.stack([b[0] for b in batches])
                y = torch.stack([b[1] for b in batches])
                with _autocast(device, amp):
                    logits = stack.forward(x, train=True)
                    if epoch == 0 and step == 0:
                        check_labels(labels, logits.shape[-1], "fit_stack")
                    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                             label_smoothing=label_smoothing).view(y.shape).float().mean(1)
                optimizer.zero_grad(set_to_none=True)
                # Each run's loss depends on its own slice only, so the sum's gradient is every
                # run's own gradient, side by side.
                losses.sum().backward()
                optimizer.step()
                scheduler.step()
                loss_sum += losses.detach() * y.shape[1]
            for history, loss in zip(histories, (loss_sum / n).tolist()):
                history.train_loss.append(loss)
                history.images += n
            if test_loader is not None and epoch + 1 in tests:
                for history, acc in zip(histories, evaluate_stack(stack, test_loader, amp=eval_amp)):
                    history.test_epochs.append(epoch + 1)
                    history.test_acc.append(acc)
                if val_loader is not None:
                    for history, acc in zip(histories, evaluate_stack(stack, val_loader, amp=eval_amp)):
                        history.val_acc.append(acc)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if isinstance(error, torch.OutOfMemoryError) or "alloc" in str(error).lower():
            raise MemoryError(f"a stack of {stack.size} runs does not fit in {device} memory; pass a smaller "
                              f"stack (say {max(1, stack.size // 2)})") from error
        raise
    stack.write_back(models)
    seconds = (time.perf_counter() - start) / stack.size
    for history in histories:
        history.seconds = seconds
    return histories


# How a test pass goes through a stack, per device (benchmarks/RESULTS.md). On the CPU, vmap's
# grouped convolutions run in the contiguous layout and lose to one model at a time in channels_last
# (about 1.9x for simple_convnet); on a GPU one pass for the whole stack saves launches.
EVAL_ONE_BY_ONE = {"cpu"}


@torch.no_grad()
def evaluate_stack(stack: Stack, data: DeviceLoader, amp: bool | None = None,
                   one_by_one: bool | None = None) -> list[float]:
    """Top-1 accuracy in [0, 1] of every run of `stack` on `data`, with the masked weights computed
    once. Each batch goes through all runs in one vmapped pass, or (`one_by_one`, the default on the
    CPU) through one plain channels_last copy of the network per run. `amp` (bf16 autocast)
    defaults as in `train.evaluate`."""
    amp = devices.autocast_enabled(data.device, amp, "evaluation")
    params = stack.masked_params()
    labels = label_range(data.labels)
    one_by_one = data.device.type in EVAL_ONE_BY_ONE if one_by_one is None else one_by_one
    if one_by_one:
        return [_evaluate_run(stack, params, i, data, amp, labels) for i in range(stack.size)]
    correct = torch.zeros(stack.size, dtype=torch.long, device=data.device)
    for i, (x, y) in enumerate(data):
        with _autocast(data.device, amp):
            logits = stack.forward(x, train=False, shared=True, params=params)
        if i == 0:
            check_labels(labels, logits.shape[-1], "evaluate_stack")
        correct += (logits.argmax(-1) == y).sum(1)
    return [c / len(data.labels) for c in correct.tolist()]


def _evaluate_run(stack: Stack, params: dict, index: int, data: DeviceLoader, amp: bool, labels) -> float:
    model = stack.plain_model(data.device)
    for name, p in model.named_parameters():
        p.copy_(params[name][index])
    for name, b in model.named_buffers():
        b.copy_(stack.buffers[name][index])
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for i, (x, y) in enumerate(data):
        with _autocast(data.device, amp):
            logits = model(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
        if i == 0:
            check_labels(labels, logits.shape[-1], "evaluate_stack")
        correct += (logits.argmax(-1) == y).sum()
    return correct.item() / len(data.labels)
