"""A backbone's frozen first stages, run once.

When fine-tuning trains only a network's last blocks on images it does not augment, what the frozen
stages before them compute for an image never changes: their weights do not train and their
BatchNorm stays in eval mode (`pretrained.freeze`). Running them again in every epoch and every test
pass is most of a run's arithmetic: at 32 px through the CIFAR stem each of ResNet-18's four
stages costs about as much as the others, so a run that trains the last stage spends three
quarters of its forward passes on stages whose output it could have kept.

`cut` swaps those stages for identities while the trained blocks train on their stored outputs,
and puts them back after. `features` computes the outputs for a dataset, as the whole network
would have fed them to the trained blocks (the same input pipeline, bf16 autocast and memory
format), and `TensorLoader` serves them in the batches `DeviceLoader` would have drawn from the
images. The numbers are those of the whole network up to floating-point rounding: a convolution
over a batch of another size may sum in another order.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .loader import DeviceLoader, batch_indices


def prefix_names(model: nn.Module, trained: list[str]) -> list[str]:
    """The children of `model.body` that come before the first of the `trained` blocks (names as
    `pretrained.BLOCKS`, e.g. ["body.layer4", "head"]): all of the body when only the head trains."""
    children = [name for name, _ in model.body.named_children()]
    first = trained[0].removeprefix("body.")
    return children[:children.index(first)] if first in children else children


@contextlib.contextmanager
def cut(model: nn.Module, trained: list[str]):
    """Within the block, the body's children before the `trained` blocks are `nn.Identity` in
    `model`, and the block is given them as one `nn.Sequential` (frozen, in eval mode); they are
    put back on the way out, also after an error."""
    names = prefix_names(model, trained)
    kept = {name: getattr(model.body, name) for name in names}
    prefix = nn.Sequential(*kept.values()).eval()
    if any(p.requires_grad for p in prefix.parameters()):
        raise ValueError(f"the blocks before {trained[0]} train: only frozen stages can be run once")
    try:
        for name in names:
            setattr(model.body, name, nn.Identity())
        yield prefix
    finally:
        for name, module in kept.items():
            setattr(model.body, name, module)


@torch.no_grad()
def features(prefix: nn.Module, data, batch_size: int, *, device, amp: bool, channels_last: bool) -> torch.Tensor:
    """`prefix`'s output for every image of `data` (an `ImageData`), in order, on `device`: the
    images go through the loader the network would have read them from, under the same bf16
    autocast (`amp`), so the trained blocks are fed what they would have been."""
    loader = DeviceLoader(data, batch_size, device=device, channels_last=channels_last)
    prefix.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    parts = []
    for x, _ in loader:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            parts.append(prefix(x))
    return torch.cat(parts)


class TensorLoader:
    """(features, labels) batches in `DeviceLoader`'s order: with `shuffle`, the permutation a
    `DeviceLoader` of as many images with the same `seed` draws, epoch after epoch."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0):
        if len(features) != len(labels) or len(labels) == 0:
            raise ValueError(f"need as many features as labels, at least one: got {len(features)} and {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.features, self.labels = features, labels.to(features.device)
        self.device = features.device
        self.batch_size, self.shuffle = batch_size, shuffle
        four_d = features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last if four_d else torch.contiguous_format
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for idx in batch_indices(len(self.labels), self.batch_size, shuffle=self.shuffle, generator=self.generator):
            yield self.features[idx].contiguous(memory_format=self.memory_format), self.labels[idx]
