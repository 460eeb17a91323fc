"""One training recipe for every experiment: SGD with momentum, weight decay and a cosine schedule.

Convolutions use channels_last; data stay on the device (`DeviceLoader`) and the loop never waits on
the host inside an epoch: the loss is summed on the device and read once per epoch. What depends on
the device (bf16 autocast, the test batch size, the CPU's memory allocator) is chosen in
`snipnb.devices`. Masks attached by `snipnb.masks.apply_masks` hold in the forward pass, so nothing
here handles them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from . import checks, devices
from .devices import default_device  # noqa: F401  (its home was here; kept importable from train)
from .files import write_atomically
from .frozen import TensorLoader
from .loader import DeviceLoader

SCHEDULES = ("cosine", "constant", "step")
OPTIMIZERS = ("sgd", "adam")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)  # mean over each epoch's examples
    test_acc: list[float] = field(default_factory=list)  # in [0, 1], after each epoch in test_epochs
    test_epochs: list[int] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)  # in [0, 1], at the same epochs, when a val set is given
    seconds: float = 0.0
    images: int = 0  # training images processed

    @property
    def best_acc(self) -> float:
        """Best test accuracy over epochs. It selects on the test set, so it flatters; see final_acc."""
        return max(self.test_acc) if self.test_acc else float("nan")

    @property
    def best_epoch(self) -> int:
        return self.test_epochs[int(np.argmax(self.test_acc))] if self.test_acc else 0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    @property
    def test_at_best_val(self) -> float:
        """Test accuracy at the tested epoch with the best validation accuracy (the first, on ties):
        checkpoint selection that never looks at the test set. NaN without a validation set."""
        if not self.val_acc:
            return float("nan")
        return self.test_acc[int(np.argmax(self.val_acc))]


def _loader(data, batch_size, device, channels_last, train, augment, seed):
    if isinstance(data, (DeviceLoader, TensorLoader)):
        return data
    return DeviceLoader(data, batch_size, shuffle=train, augment=augment and train, device=device,
                        channels_last=channels_last, seed=seed)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int | None = None, device=None, amp: bool | None = None) -> float:
    """Top-1 accuracy of `model` on `data` (an ImageData or a DeviceLoader), in [0, 1].

    `batch_size` (for an ImageData) and `amp` (bf16 autocast) default to what is fastest on the
    device (`snipnb.devices`); neither changes which images are counted."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = devices.autocast_enabled(device, amp, "evaluation")
    channels_last = device.type in ("cuda", "cpu")
    if device.type == "cpu":
        devices.keep_freed_memory()
    loader = _loader(data, batch_size or devices.eval_batch_size(device), device, channels_last, False, False, 0)
    labels = label_range(loader.labels)
    was_training = model.training
    model.eval()
    if channels_last and loader.memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)  # as fit leaves it; a mismatch converts every batch
    correct = torch.zeros((), dtype=torch.long, device=device)
    # A masked model's weights are computed once for the whole pass, not once per batch.
    with parametrize.cached():
        for i, (x, y) in enumerate(loader):
            with _autocast(device, amp):
                logits = model(x)
            if i == 0:
                check_labels(labels, logits.shape[1], "evaluate")
            correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return correct.item() / len(loader.labels)


def label_range(labels: torch.Tensor) -> tuple[int, int]:
    """(smallest, largest) label, read once per run: the one host sync the label check costs."""
    low, high = torch.aminmax(labels)
    return int(low), int(high)


def check_labels(labels: tuple[int, int], outputs: int, where: str) -> None:
    """Refuse labels a model with `outputs` logits cannot predict, before they fail deep inside
    cross-entropy (or, worse, silently count as wrong answers in an accuracy)."""
    low, high = labels
    if low < 0 or high >= outputs:
        raise ValueError(f"{where}: the labels run from {low} to {high}, but the model has {outputs} output "
                         f"classes (0..{outputs - 1}); build it for {high + 1} classes or renumber the labels")


def check_recipe(*, epochs: int, eval_every: int, lr: float, schedule: str, optimizer: str = "sgd",
                 step_every: int = 0, warmup_epochs: float = 0.0, warmup_steps: int = 0,
                 evaluations: int | None = None) -> None:
    if evaluations is not None and (isinstance(evaluations, bool) or not isinstance(evaluations, int)
                                    or evaluations < 1):
        raise ValueError(f"evaluations must be None or an int >= 1, got {evaluations!r}")
    if warmup_epochs < 0 or warmup_steps < 0:
        raise ValueError(f"warmup_epochs and warmup_steps must be >= 0, got {warmup_epochs} and {warmup_steps}")
    if warmup_epochs and warmup_steps:
        raise ValueError(f"give the warm-up in epochs or in steps, not both (warmup_epochs={warmup_epochs}, "
                         f"warmup_steps={warmup_steps})")
    if schedule == "step" and step_every < 1:
        raise ValueError(f"schedule='step' needs step_every >= 1 (steps between decays), got {step_every}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def tested_epochs(epochs: int, eval_every: int = 1, evaluations: int | None = None) -> list[int]:
    """The epochs after which a run of `epochs` epochs is tested: every `eval_every` and the last, or
    with `evaluations`, that many spread evenly over the run, the last among them (fewer when the run
    has fewer epochs). Runs whose lengths differ (a floor in steps lengthens the smallest training
    sets most) then still have their tests at the same fractions of their budgets."""
    # Checked here too, not only by the recipe's checks: a caller planning the tests alone (a chapter
    # saying when its runs are tested) would otherwise get a ZeroDivisionError or an empty list.
    checks.integer("epochs", epochs, 1)
    checks.integer("eval_every", eval_every, 1)
    if evaluations is not None:
        checks.integer("evaluations", evaluations, 1)
    if evaluations is None:
        return [e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs]
    return sorted({math.ceil(epochs * i / evaluations) for i in range(1, evaluations + 1)})


def resolve_device(device, amp: bool | None, channels_last: bool | None) -> tuple[torch.device, bool, bool]:
    """The device (default: `default_device()`), bf16 autocast for training (default: on CUDA only;
    `devices.autocast_enabled`) and channels_last (default: on CUDA and the CPU, where oneDNN's
    convolutions prefer it too). On the CPU it also keeps freed memory in the process
    (`devices.keep_freed_memory`)."""
    device = torch.device(device) if device is not None else default_device()
    amp = devices.autocast_enabled(device, amp, "training")
    channels_last = device.type in ("cuda", "cpu") if channels_last is None else channels_last
    if device.type == "cpu":
        devices.keep_freed_memory()
    return device, amp, channels_last


# Where `make_optimizer` uses PyTorch's fused update by default. On the CPU the per-tensor loop reads
# and writes each parameter once per elementwise op (six for Adam): fused, an epoch of `fit` was 1.25x
# faster for LeNet-300-100 with SGD, 1.35x for van de Ven's 2x1000 MLP with Adam, the same for conv
# nets (benchmarks/RESULTS.md). Unmeasured on a GPU, where PyTorch's own default (foreach) stays.
FUSED_OPTIMIZER_DEVICES = ("cpu",)


def make_optimizer(params, steps: int, *, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                   schedule: str, warmup_steps: int = 0, optimizer: str = "sgd", step_every: int = 0,
                   step_gamma: float = 0.1, fused: bool | None = None):
    """The recipe's optimiser and a per-step learning-rate schedule over `steps` steps, linear
    warm-up first. `optimizer="sgd"`: SGD, nesterov if asked and momentum > 0; `"adam"`: Adam with L2
    weight decay (its step size is bounded by lr, so a stiff penalty such as EWC's with a large λ
    cannot blow the weights up). Schedules: `cosine` to zero, `constant`, or `step`: lr times
    `step_gamma` every `step_every` steps (the SNIP paper's LeNet recipe). `fused`: PyTorch's fused
    update, one pass over each parameter (None: on the CPU only, `FUSED_OPTIMIZER_DEVICES`); the same
    update as the per-tensor loop to float rounding. Returns (optimizer, scheduler)."""
    params = list(params)
    if fused is None:
        fused = bool(params) and all(p.device.type in FUSED_OPTIMIZER_DEVICES for p in params)
    fused = True if fused else None  # None, not False: False would also turn off PyTorch's foreach on a GPU
    if optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                    weight_decay=weight_decay, fused=fused)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return step_gamma ** ((step - warmup_steps) // step_every)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def fit(
    model: nn.Module,
    train,
    test=None,
    epochs: int = 30,
    *,
    lr: float = 0.1,
    optimizer: str = "sgd",
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
    channels_last: bool | None = None,
    eval_batch_size: int | None = None,
    eval_every: int = 1,
    evaluations: int | None = None,
    val=None,
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    seed: int = 0,
    state_file: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train `model` in place on `train`, testing it on `test` as it goes; return the `History`.

    The optimiser is SGD with momentum (default) or Adam (`optimizer="adam"`), with weight decay
    and a per-step learning-rate schedule (cosine by default), after a linear warm-up given in
    epochs (`warmup_epochs`) or in steps (`warmup_steps`), not both.

    `train` and `test` are `ImageData` (then `augment` turns on crop+flip for training) or
    `DeviceLoader`s. `amp` (bf16 autocast in training) defaults to on for CUDA only, `eval_amp` (in
    testing) to on for CUDA and CPUs with native bf16, `eval_batch_size` to the device's fastest and
    `channels_last` to on for CUDA and the CPU (`snipnb.devices`).
    The test set is evaluated every `eval_every` epochs and after the last one, or with
    `evaluations` that many times spread over the run (`tested_epochs`; `History.test_epochs` says
    which), and so is `val` if given (`History.test_at_best_val`). The same `seed` on the CPU repeats a run exactly (batch
    order, augmentation).
    Continual-learning strategies hook in with `penalty()`, added to every step's loss (EWC), and
    `after_step()`, called after every optimiser step (PackNet restores its frozen weights there).
    `state_file`: the training state (model, optimiser, schedule, the random generators, the history)
    is written there after every epoch, and a call that finds it there goes on from it, so a run
    killed part-way (a machine taken back) loses at most an epoch and ends as the uninterrupted run
    would, bit for bit on the same CPU. Delete it when the run is done. A state written by another
    recipe (epochs, seed, lr, batch size, steps per epoch) is refused; the hooks' own state is not
    kept, so `state_file` refuses them.
    """
    if state_file is not None and (penalty is not None or after_step is not None):
        raise ValueError("fit: state_file keeps the model, optimiser, schedule and data order, not the own state of a "
                         "penalty or after_step hook (EWC's anchors, PackNet's frozen weights): drop one or the other")
    check_recipe(epochs=epochs, eval_every=eval_every, lr=lr, schedule=schedule, optimizer=optimizer,
                 step_every=step_every, warmup_epochs=warmup_epochs, warmup_steps=warmup_steps,
                 evaluations=evaluations)
    tests = set(tested_epochs(epochs, eval_every, evaluations))
    device, amp, channels_last = resolve_device(device, amp, channels_last)
    seed_everything(seed)

    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    train_loader = _loader(train, batch_size, device, channels_last, True, augment, seed)
    eval_amp = devices.autocast_enabled(device, eval_amp, "evaluation")
    eval_batch_size = eval_batch_size or devices.eval_batch_size(device)
    test_loader = _loader(test, eval_batch_size, device, channels_last, False, False, seed) if test is not None else None
    optimizer, scheduler = make_optimizer(model.parameters(), epochs * len(train_loader), lr=lr, momentum=momentum,
                               nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                               warmup_steps=warmup_steps or round(warmup_epochs * len(train_loader)), optimizer=optimizer,
                               step_every=step_every, step_gamma=step_gamma)
    val_loader = _loader(val, eval_batch_size, device, channels_last, False, False, seed) if val is not None else None
    labels = label_range(train_loader.labels)
    history = History()
    recipe = dict(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, steps_per_epoch=len(train_loader),
                  optimizer=type(optimizer).__name__, schedule=schedule)
    first = 0
    if state_file is not None and os.path.exists(state_file):
        first = _resume(state_file, recipe, model, optimizer, scheduler, train_loader.generator, history)
    start = time.perf_counter()
    bar = tqdm(range(first, epochs), initial=first, total=epochs, desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        loss_sum = torch.zeros((), device=device)
        for step, (x, y) in enumerate(train_loader):
            with _autocast(device, amp):
                logits = model(x)
                if epoch == 0 and step == 0:
                    check_labels(labels, logits.shape[1], "fit")
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            total = loss if penalty is None else loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            scheduler.step()
            loss_sum += loss.detach().float() * len(y)
        history.images += len(train_loader.labels)
        history.train_loss.append(loss_sum.item() / len(train_loader.labels))
        if test_loader is not None and epoch + 1 in tests:
            history.test_epochs.append(epoch + 1)
            history.test_acc.append(evaluate(model, test_loader, device=device, amp=eval_amp))
            if val_loader is not None:
                history.val_acc.append(evaluate(model, val_loader, device=device, amp=eval_amp))
            bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", acc=f"{history.test_acc[-1]:.3f}")
        if state_file is not None:
            so_far = dataclasses.replace(history, seconds=history.seconds + time.perf_counter() - start)
            _save_state(state_file, epoch + 1, recipe, model, optimizer, scheduler, train_loader.generator, so_far)
    history.seconds += time.perf_counter() - start
    return history


def _save_state(path, epochs_done: int, recipe: dict, model, optimizer, scheduler, generator, history: History) -> None:
    state = dict(epochs_done=epochs_done, recipe=recipe, model=model.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), loader_rng=generator.get_state(), torch_rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 python_rng=random.getstate(), numpy_rng=np.random.get_state(), history=dataclasses.asdict(history))
    write_atomically(path, lambda f: torch.save(state, f))  # a kill while writing keeps the last epoch's whole


def _resume(path, recipe: dict, model, optimizer, scheduler, generator, history: History) -> int:
    """Put the state `_save_state` wrote back in place; return how many epochs it had done."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds Python's RNG state
    if state["recipe"] != recipe:
        differ = {k: (state["recipe"].get(k), v) for k, v in recipe.items() if state["recipe"].get(k) != v}
        raise ValueError(f"fit: {os.fspath(path)} holds the state of another run (saved, asked: {differ}); delete it "
                         "or give this run another state_file")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["loader_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    for name, value in state["history"].items():
        setattr(history, name, value)
    return state["epochs_done"]
