"""A network's frozen part, run once.

When a run trains only part of a network on images it does not augment, what the frozen part
before it computes for an image never changes: its weights do not train and its BatchNorm stays in
eval mode (`pretrained.freeze`, SNOW's source). Running it again in every epoch and every test pass
is most of a run's arithmetic: at 32 px through the CIFAR stem each of ResNet-18's four stages
costs about as much as the others, so a run that trains the last stage spends three quarters of
its forward passes on stages whose output it could have kept, and SNOW, whose source is frozen
whole, nearly all of its source's.

`cut` swaps a backbone's frozen stages for identities while the trained blocks train on their
stored outputs, and puts them back after. `features` computes the outputs for a dataset, as the
whole network would have fed them to the trained part (the same input pipeline, bf16 autocast and
memory format), `TensorLoader` serves them in the batches `DeviceLoader` would have drawn from the
images, and `stored_outputs` does both for a run's training, test and validation sets, keeping the
test and validation sets' across the runs of a process. The numbers are those of the whole
network up to floating-point rounding: a convolution over a batch of another size may sum in
another order.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict

import torch
from torch import nn

from . import devices
from .loader import DeviceLoader, batch_indices

# Above this many bytes of stored outputs for one split (training, test or validation set), a run
# goes through the whole network instead: at 32 px through the CIFAR stem SNOW's source emits about
# 0.75 MB per image, so a whole split would need tens of GB.
STORED_BYTES_PER_SPLIT = 2 * 2**30
KEPT_ENTRIES = 2  # (test, validation) outputs kept per store, the oldest used dropped first

# The frozen stages' outputs on a target's test and validation sets, kept across the runs of a
# process that share the stages and the images: a sweep worker tests hundreds of runs on them.
_KEPT_OUTPUTS: OrderedDict = OrderedDict()


def prefix_names(model: nn.Module, trained: list[str]) -> list[str]:
    """The children of `model.body` that come before the first of the `trained` blocks (names as
    `pretrained.BLOCKS`, e.g. ["body.layer4", "head"]): all of the body when only the head trains."""
    children = [name for name, _ in model.body.named_children()]
    first = trained[0].removeprefix("body.")
    return children[:children.index(first)] if first in children else children


def frozen_prefix(model: nn.Module, trained: list[str]) -> nn.Sequential:
    """The body's children before the `trained` blocks as one `nn.Sequential` (the model's own
    modules, not copies), in eval mode; a ValueError if any of them trains."""
    prefix = nn.Sequential(*(getattr(model.body, name) for name in prefix_names(model, trained))).eval()
    if any(p.requires_grad for p in prefix.parameters()):
        raise ValueError(f"the blocks before {trained[0]} train: only frozen stages can be run once")
    return prefix


@contextlib.contextmanager
def cut(model: nn.Module, trained: list[str]):
    """Within the block, the body's children before the `trained` blocks are `nn.Identity` in
    `model`, and the block is given them as one `nn.Sequential` (`frozen_prefix`); they are put back
    on the way out, also after an error."""
    prefix = frozen_prefix(model, trained)
    kept = dict(zip(prefix_names(model, trained), prefix))
    try:
        for name in kept:
            setattr(model.body, name, nn.Identity())
        yield prefix
    finally:
        for name, module in kept.items():
            setattr(model.body, name, module)


def _flat(output) -> tuple[torch.Tensor, ...]:
    if isinstance(output, torch.Tensor):
        return (output,)
    return tuple(tensor for part in output for tensor in _flat(part))


def _format(tensor: torch.Tensor) -> torch.memory_format:
    four_d = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if four_d else torch.contiguous_format


@torch.no_grad()
def features(prefix: nn.Module, data, batch_size: int, *, device, amp: bool, channels_last: bool):
    """`prefix`'s output for every image of `data` (an `ImageData`), in order, on `device`: the
    images go through the loader the network would have read them from, under the same bf16
    autocast (`amp`), so the trained part is fed what it would have been. A tensor if `prefix`
    returns one; if it returns tensors in (nested) tuples or lists, as SNOW's `SourceStages` does,
    a flat tuple of them in order."""
    loader = DeviceLoader(data, batch_size, device=device, channels_last=channels_last)
    prefix.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    outputs, single, start = None, True, 0
    for x, _ in loader:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            output = prefix(x)
        single = isinstance(output, torch.Tensor)
        parts = _flat(output)
        if outputs is None:  # filled in place, not concatenated: the outputs are held once, not twice
            outputs = tuple(torch.empty((len(data), *p.shape[1:]), dtype=p.dtype, device=p.device,
                                        memory_format=_format(p)) for p in parts)
        for out, part in zip(outputs, parts):
            out[start:start + len(part)] = part
        start += len(x)
    return outputs[0] if single else outputs


def bytes_per_image(prefix: nn.Module, data, *, device, amp: bool, channels_last: bool) -> int:
    """What `features` stores for one image of `data` (its first, run through `prefix`)."""
    one = features(prefix, data.subset(torch.arange(1)), 1, device=device, amp=amp, channels_last=channels_last)
    return sum(t.numel() * t.element_size() for t in _flat(one))


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' dtypes, shapes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().view(-1)
        digest.update(str((flat.dtype, tuple(tensor.shape))).encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stored_outputs(prefix: nn.Module, train, val, test, device, *, batch_size: int, seed: int,
                   kept: OrderedDict | None = None, limit: int | None = None):
    """(train, test, val) loaders of `prefix`'s outputs (`features`, `TensorLoader`) for a run
    that trains what comes after it: the training set's in the order `fit` would have drawn the
    images (`batch_size`, `seed`), the test and validation sets' (each None if not given) as
    `evaluate` would have fed them to the trained part. None if any split's outputs would take
    more than `limit` bytes (default `STORED_BYTES_PER_SPLIT`): then the run goes through the
    whole network.

    The test and validation sets' outputs are kept in `kept` (default: this module's store; at
    most `KEPT_ENTRIES` entries), keyed by content, not by the run's settings: the same frozen
    weights on the same images, on the same device and precision.
    """
    from .train import resolve_device  # train imports this module

    kept = _KEPT_OUTPUTS if kept is None else kept
    limit = STORED_BYTES_PER_SPLIT if limit is None else limit
    _, amp, channels_last = resolve_device(device, None, None)
    eval_amp = devices.autocast_enabled(device, None, "evaluation")
    eval_batch = devices.eval_batch_size(device)
    evaluated = [split for split in (test, val) if split is not None]
    key = (fingerprint(*prefix.state_dict().values()),
           *(None if split is None else fingerprint(split.images, split.labels) for split in (test, val)),
           str(device), eval_amp, channels_last)
    sizes = {amp: bytes_per_image(prefix, train, device=device, amp=amp, channels_last=channels_last)}
    if evaluated and key not in kept:
        sizes[eval_amp] = sizes.get(eval_amp) or bytes_per_image(prefix, train, device=device, amp=eval_amp,
                                                                  channels_last=channels_last)
        if max(len(split) for split in evaluated) * sizes[eval_amp] > limit:
            return None
    if len(train) * sizes[amp] > limit:
        return None
    if evaluated:
        if key not in kept:
            if len(kept) >= KEPT_ENTRIES:
                kept.popitem(last=False)
            kept[key] = tuple(
                None if split is None else TensorLoader(features(prefix, split, eval_batch, device=device, amp=eval_amp,
                                                                 channels_last=channels_last), split.labels, eval_batch)
                for split in (test, val))
        kept.move_to_end(key)
        test_loader, val_loader = kept[key]
    else:
        test_loader = val_loader = None
    outputs = features(prefix, train, eval_batch, device=device, amp=amp, channels_last=channels_last)
    return TensorLoader(outputs, train.labels, batch_size, shuffle=True, seed=seed), test_loader, val_loader


class TensorLoader:
    """(features, labels) batches in `DeviceLoader`'s order: with `shuffle`, the permutation a
    `DeviceLoader` of as many images with the same `seed` draws, epoch after epoch. `features` is a
    tensor, or a tuple of tensors (one row per image in each), served as a tuple of batches."""

    def __init__(self, features, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        tensors = _flat(features)
        if not tensors or any(len(t) != len(labels) for t in tensors) or len(labels) == 0:
            raise ValueError(f"need as many features as labels, at least one: got {[len(t) for t in tensors]} and "
                             f"{len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.features, self.single = features, isinstance(features, torch.Tensor)
        self.device = tensors[0].device
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self._tensors = tensors
        self._formats = tuple(_format(t) for t in tensors)
        self.memory_format = torch.channels_last if torch.channels_last in self._formats else torch.contiguous_format
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for idx in batch_indices(len(self.labels), self.batch_size, shuffle=self.shuffle, generator=self.generator):
            batch = tuple(t[idx].contiguous(memory_format=f) for t, f in zip(self._tensors, self._formats))
            yield (batch[0] if self.single else batch), self.labels[idx]
