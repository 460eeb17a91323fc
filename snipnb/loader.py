"""A data loader that lives on the device.

Few-shot subsets, MNIST and CIFAR fit in device memory many times over, so the whole split is kept
there as uint8 and every batch is cut, augmented and normalised by tensor ops on that device. There
are no worker processes, no host-to-device copies per step and no per-step host syncs; the idea is
airbench's (Keller Jordan), written for our `ImageData`.
"""

from __future__ import annotations

import torch


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator, drop_last: bool = False):
    """One epoch's batches of indices into `n` examples, on `generator`'s device: in order, or in a
    fresh permutation drawn from `generator` (so a seeded generator repeats the epochs' orders).
    Every loader that promises `DeviceLoader`'s batch order draws it here."""
    device = generator.device
    order = torch.randperm(n, device=device, generator=generator) if shuffle else torch.arange(n, device=device)
    batches = n // batch_size if drop_last else -(-n // batch_size)
    for start in range(0, batches * batch_size, batch_size):
        yield order[start : start + batch_size]


class DeviceLoader:
    """Iterate over (images, labels) batches of an `ImageData` held on `device`.

    `augment` applies the standard CIFAR recipe: random crop after zero-padding by `pad` pixels and a
    random horizontal flip. Images come out as normalised float32 (channels_last when asked).
    Shuffling and augmentation draw from the loader's own generator, so a seed fixes the batch order
    and the crops without touching global RNG state.
    """

    def __init__(
        self,
        data,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 4,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError("data is empty: a loader needs at least one example")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.pad, self.drop_last = shuffle, augment, pad, drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Normalisation constants in uint8 units so a batch is converted in one fused expression.
        channels = self.images.shape[1]
        self.mean = torch.tensor(data.mean, device=self.device).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(data.std, device=self.device).view(1, channels, 1, 1) * 255
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        for idx in batch_indices(len(self.labels), self.batch_size, shuffle=self.shuffle, generator=self.generator,
                                 drop_last=self.drop_last):
            images = self.images[idx]
            if self.augment:
                images = self._crop_and_flip(images)
            images = ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            if self.memory_format == torch.channels_last and images.shape[1] == 1:
                images = single_channel_last(images)
            yield images, self.labels[idx]

    def _crop_and_flip(self, images: torch.Tensor) -> torch.Tensor:
        # One gather does every crop in the batch at once: each image gets its own row/column window
        # into the zero-padded batch, so there is no Python loop over images.
        b, c, h, w = images.shape
        p = self.pad
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b, 1), device=self.device, generator=self.generator)
        dx = torch.randint(0, 2 * p + 1, (b, 1), device=self.device, generator=self.generator)
        rows = dy + torch.arange(h, device=self.device)
        cols = dx + torch.arange(w, device=self.device)
        flip = torch.rand(b, 1, device=self.device, generator=self.generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
        batch = torch.arange(b, device=self.device).view(b, 1, 1, 1)
        channel = torch.arange(c, device=self.device).view(1, c, 1, 1)
        return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def single_channel_last(images: torch.Tensor) -> torch.Tensor:
    """A one-channel (N, 1, H, W) batch viewed with channels_last strides (H·W, 1, W, 1).

    With one channel both layouts hold the same bytes, so `.contiguous(channels_last)` leaves the
    strides as they were and the first convolution takes its output layout from its weight. A
    masked weight (weight · mask) comes out in the contiguous layout, and then the first block of a
    pruned MNIST network ran in NCHW: max-pooling 3.5x slower, and a copy into channels_last at the
    next convolution (a test pass took twice as long as the dense network's). This view costs
    nothing and changes no value.
    """
    n, _, h, w = images.shape
    return images.as_strided(images.shape, (h * w, 1, w, 1))
