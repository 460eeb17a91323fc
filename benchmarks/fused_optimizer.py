"""`snipnb.train.fit` with PyTorch's per-tensor optimiser loop against its fused update, on the CPU.

The loop (what `torch.optim.SGD(...)` and `torch.optim.Adam(...)` run on the CPU unless told
otherwise) reads and writes every parameter once per elementwise op of the update: six ops for Adam.
The fused update does it in one pass. Both variants train the same model from the same initial
weights on the same batches in the same order, one epoch per timing, in turn (interleaved), after one
warm-up epoch each; only `make_optimizer`'s `fused` differs.

Cases, the chapters' recipes on synthetic images of their inputs' shapes (so no data is needed):
- `lenet300_100`, SGD with Nesterov momentum, batch 100 (chapters 00, 03 and 04);
- `mlp1000`, Adam at lr 1e-4, batch 128 (van de Ven's standard Permuted MNIST, chapter 03's
  `03_snip_ewc_permuted_standard`);
- `simple_convnet`, SGD, batch 32 (chapter 01's few-shot runs);
- `resnet18_last_block`: ResNet-18's last stage and head on the stored outputs of the frozen stages,
  SGD, batch 32 (chapters 02 and 05 fine-tuning `last_block`).

Reported per case and variant: min and median seconds of wall time and of this process's CPU time per
epoch. With one thread (`OMP_NUM_THREADS=1`), CPU time counts only this process's work, so it stays a
fair measure while other jobs share the cores; wall time does not. Also the largest difference of a
weight between the variants after 10 steps from the same weights: float rounding (`rounding`).

    OMP_NUM_THREADS=1 python benchmarks/fused_optimizer.py --repeats 10
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from unittest import mock

import torch
import torchvision

from snipnb import data, models, train
from snipnb.provenance import device_name


def last_block() -> torch.nn.Module:
    """ResNet-18's last stage and a 5-class head: what chapters 02 and 05 train, on the frozen stages'
    stored outputs (256 x 8 x 8 at 32 px through the CIFAR stem)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    return torch.nn.Sequential(resnet.layer4, resnet.avgpool, torch.nn.Flatten(), torch.nn.Linear(512, 5))


CASES = {  # case: (model, input channels and size, classes, images per class, fit's recipe)
    "lenet300_100": (lambda: models.build("lenet300_100", 10, seed=0), (1, 28), 10, 600,
                     dict(batch_size=100, lr=0.1)),
    "mlp1000": (lambda: models.build("mlp1000", 10, seed=0), (1, 28), 10, 600,
                dict(batch_size=128, lr=1e-4, optimizer="adam", weight_decay=0.0)),
    "simple_convnet": (lambda: models.build("simple_convnet", 10, in_channels=1, image_size=28, seed=0), (1, 28), 10,
                       100, dict(batch_size=32, lr=0.05)),
    "resnet18_last_block": (last_block, (256, 8), 5, 64, dict(batch_size=32, lr=0.05)),
}


def epoch(model, images, recipe, fused: bool, seed: int) -> tuple[float, float]:
    """(wall s, CPU s) of one epoch of `fit` with the update fused or not."""
    forced = functools.partial(train.make_optimizer, fused=fused)
    with mock.patch.object(train, "make_optimizer", forced):
        wall, cpu = time.perf_counter(), time.process_time()
        train.fit(model, images, None, 1, schedule="constant", seed=seed, progress=False, **recipe)
        return time.perf_counter() - wall, time.process_time() - cpu


def rounding(build, images, recipe, steps: int = 10) -> float:
    """The largest difference of a weight after `steps` steps from the same initial weights, loop
    against fused. Over many steps at these learning rates a training run amplifies any rounding
    difference (a 1e-7 nudge of LeNet-300-100's initial weights moved a weight by 0.35 after 120
    steps of the loop): the update's own rounding is what a short run shows."""
    few = images.subset(torch.arange(steps * recipe["batch_size"]))
    nets = {fused: build() for fused in (False, True)}
    for fused, net in nets.items():
        epoch(net, few, recipe, fused, seed=0)
    return max((a - b).abs().max().item() for a, b in zip(nets[False].parameters(), nets[True].parameters()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"device: {device_name('cpu')}; torch {torch.__version__}; "
          f"{args.repeats} interleaved epochs per variant after one warm-up; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.cases:
        build, (channels, size), classes, per_class, recipe = CASES[name]
        images = data.synthetic(num_classes=classes, channels=channels, image_size=size, per_class=per_class)
        nets = {fused: build() for fused in (False, True)}
        times = {fused: [] for fused in nets}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for fused, net in nets.items():
                wall, cpu = epoch(net, images, recipe, fused, seed=repeat)
                if repeat:
                    times[fused].append((wall, cpu))
        drift = rounding(build, images, recipe)
        base = statistics.median(cpu for _, cpu in times[False])
        for fused, label in ((False, "per-tensor loop (PyTorch's CPU default)"), (True, "fused (the library now)")):
            walls, cpus = [w for w, _ in times[fused]], [c for _, c in times[fused]]
            rows.append(f"| {name} | {recipe.get('optimizer', 'sgd')}, batch {recipe['batch_size']} | {label} | "
                        f"{min(walls):.3f} | {statistics.median(walls):.3f} | {min(cpus):.3f} | "
                        f"{statistics.median(cpus):.3f} | {base / statistics.median(cpus):.2f}x | "
                        f"{'—' if not fused else f'{drift:.1e}'} |")
        print(rows[-1], flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print("| model | optimiser | update | wall min (s) | wall median (s) | CPU min (s) | CPU median (s) | "
          "speed-up (CPU median) | weight difference after 10 steps |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
