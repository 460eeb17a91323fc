"""Training images per second: `snipnb.train.fit` against a plain PyTorch loop, in one run.

The plain loop is what most research code looks like: a torchvision-transforms Dataset, a
DataLoader with worker processes, per-sample crop and flip on the CPU, fp32, contiguous memory, a
host-to-device copy per batch, and `loss.item()` every step. Both train the same model on the same
synthetic CIFAR-shaped data with the same optimiser and batch size; each is warmed up for an epoch
before it is timed.

    python benchmarks/train_throughput.py --models resnet20 simple_convnet --epochs 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from snipnb import data, models
from snipnb.train import default_device, fit


class TransformedImages(Dataset):
    def __init__(self, images: data.ImageData):
        self.images, self.labels = images.images, images.labels
        self.transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(images.mean, images.std)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain_loop(model, train, epochs, batch_size, device, workers) -> float:
    loader = DataLoader(TransformedImages(train), batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def epoch():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging, and with it a host sync

    epoch()  # warm-up: worker start-up, cuDNN autotuning, allocator
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    _sync(device)
    return epochs * len(train) / (time.perf_counter() - start)


def snipnb_loop(model, train, epochs, batch_size, device) -> float:
    fit(model, train, None, 1, batch_size=batch_size, lr=0.05, augment=True, device=device, progress=False)
    _sync(device)
    history = fit(model, train, None, epochs, batch_size=batch_size, lr=0.05, augment=True, device=device,
                  progress=False)
    return history.images / history.seconds


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["simple_convnet", "resnet20"])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    train = data.synthetic(num_classes=10, per_class=args.images // 10)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{_cpu_name()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({where}); torch {torch.__version__}; {len(train)} images 3x32x32, "
          f"batch {args.batch_size}, {args.epochs} timed epochs after 1 warm-up")
    print("| model | plain DataLoader loop (img/s) | snipnb.fit (img/s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.models:
        plain = plain_loop(models.build(name, 10, seed=0), train, args.epochs, args.batch_size, device, args.workers)
        ours = snipnb_loop(models.build(name, 10, seed=0), train, args.epochs, args.batch_size, device)
        print(f"| {name} | {plain:,.0f} | {ours:,.0f} | {ours / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
