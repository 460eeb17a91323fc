"""Seconds per few-shot run, test passes included: a textbook loop, `fit` one run at a time, and stacks.

What the experiments do, timed the way a researcher would otherwise write it. One run trains a model
on k images per class for `epochs` epochs and tests it on the whole test split every `eval_every`
epochs and after the last (chapter 01's cadence). The variants:

- `textbook`: a torchvision-transforms Dataset and a DataLoader without workers, fp32, eager, a
  `loss.item()` every step, a test pass through a DataLoader (Synaptic-Flow's train loop, in short);
- `fit`: `snipnb.train.fit`, one run at a time (data on the device, no per-step host syncs);
- `fit masked`: the same on a 90%-pruned network (the cost of holding masks in the forward pass);
- `stack S`: S runs (different seeds) as one `snipnb.stack.fit_stack`; seconds per run = wall / S.

Variants are interleaved, each repeated, and min and median are reported with the machine's load
average, so other work on the machine shows. Uses MNIST if it is in $SNIPNB_DATA, else synthetic
data of MNIST's shape and test-set size.

    python benchmarks/fewshot_run.py --model simple_convnet --k 5 --repeats 3 --stack 8 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from snipnb import data, models
from snipnb.pruning import apply_masks, masks_from_scores, scores
from snipnb.provenance import device_name
from snipnb.stack import fit_stack
from snipnb.train import default_device, fit


class Transformed(Dataset):
    def __init__(self, images: data.ImageData):
        self.images, self.labels = images.images, images.labels
        self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(images.mean, images.std)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def textbook(model, train, test, args, device, seed):
    torch.manual_seed(seed)
    loader = DataLoader(Transformed(train), batch_size=args.batch_size, shuffle=True, num_workers=0)
    test_loader = DataLoader(Transformed(test), batch_size=args.eval_batch_size, num_workers=0)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * len(loader))
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test_loader:
                    correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()


def build(args, train, seed, masked=False):
    model = models.build(args.model, 10, train.images.shape[1], train.images.shape[-1], seed=seed)
    if masked:
        batch = [(train.images[:100].float() / 255, train.labels[:100])]
        apply_masks(model, masks_from_scores(scores(model, batch), 0.9))
    return model


def recipe(args, device):
    return dict(lr=0.05, batch_size=args.batch_size, eval_every=args.eval_every, device=device, progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="simple_convnet")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--stack", type=int, nargs="*", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=10000, help="cut the test split for a quick check")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    try:
        full, test = data.load("mnist", True, download=False), data.load("mnist", False, download=False)
        source = "MNIST"
    except FileNotFoundError:
        shape = dict(num_classes=10, channels=1, image_size=28, per_class=100, test_per_class=1000)
        full, test = data.synthetic(True, **shape), data.synthetic(False, **shape)
        source = "synthetic, MNIST-shaped"
    test = test.subset(torch.arange(min(args.test_images, len(test))))
    train = full.subset(data.few_shot_indices(full.labels, args.k, 0))

    variants = {
        "textbook": lambda s: textbook(build(args, train, s), train, test, args, device, s),
        "fit": lambda s: fit(build(args, train, s), train, test, args.epochs, seed=s, **recipe(args, device)),
        "fit masked": lambda s: fit(build(args, train, s, masked=True), train, test, args.epochs, seed=s,
                                    **recipe(args, device)),
    }
    for size in args.stack:
        variants[f"stack {size}"] = (lambda n: lambda s: fit_stack(
            [build(args, train, s + i) for i in range(n)], [train] * n, test, args.epochs,
            seeds=[s + i for i in range(n)], eval_batch_size=args.eval_batch_size,
            **{k: v for k, v in recipe(args, device).items()}))(size)
    per_run = {name: [] for name in variants}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name, run in variants.items():  # interleaved: every variant once per repeat
            runs = int(name.split()[1]) if name.startswith("stack") else 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(repeat * 100)
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_run[name].append((time.perf_counter() - start) / runs)
    load_after = os.getloadavg()
    print(f"device: {device_name(device)}; torch {torch.__version__}; {source}; {args.model}, k={args.k} "
          f"({len(train)} images), {args.epochs} epochs, batch {args.batch_size}, test {len(test)} images every "
          f"{args.eval_every} epochs; {args.repeats} interleaved repeats; load average (1 min) "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    base = min(per_run["textbook"])
    print("| variant | s/run min | s/run median | speed-up vs textbook (min) |")
    print("| --- | ---: | ---: | ---: |")
    for name, times in per_run.items():
        print(f"| {name} | {min(times):.2f} | {statistics.median(times):.2f} | {base / min(times):.2f}x |")


if __name__ == "__main__":
    main()
