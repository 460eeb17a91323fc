"""How much bf16 evaluation moves test accuracy: the tolerance behind `snipnb.devices`' CPU default.

Trains the kinds of network the CPU chapters test (chapter 01's few-shot simple_convnet, dense and
90% SNIP-pruned, at several k; chapter 00's LeNet-300-100 and LeNet-5-Caffe) on MNIST, then tests
each trained network on the whole test split twice, in fp32 and in bf16 autocast, and prints the
accuracy difference per network and the largest one. The networks are trained in fp32 either way;
only the test pass differs. Uses MNIST from $SNIPNB_DATA (else synthetic data of its shape).

    python benchmarks/bf16_accuracy.py --seeds 2
"""

from __future__ import annotations

import argparse
import os

import torch

from snipnb import data, models
from snipnb.experiment import build_pruned
from snipnb.provenance import device_name
from snipnb.train import evaluate, fit


def mnist():
    try:
        return data.load("mnist", True, download=False), data.load("mnist", False, download=False), "MNIST"
    except FileNotFoundError:
        shape = dict(num_classes=10, channels=1, image_size=28, per_class=600, test_per_class=1000)
        return data.synthetic(True, **shape), data.synthetic(False, **shape), "synthetic, MNIST-shaped"


def trained(args, train):
    """(label, trained model) for every network the comparison covers."""
    for seed in range(args.seeds):
        for k in args.ks:
            subset = train.subset(data.few_shot_indices(train.labels, k, seed))
            for method, sparsity in (("dense", 0.0), ("snip", 0.9)):
                model, _ = build_pruned("simple_convnet", method, sparsity, seed, subset, saliency_per_class=k)
                fit(model, subset, None, 30, batch_size=32, lr=0.05, device="cpu", amp=False, seed=seed, progress=False)
                yield f"simple_convnet k={k} {method} seed {seed}", model
        for name, sparsity, lr in (("lenet300_100", 0.98, 0.1), ("lenet5_caffe", 0.98, 0.02)):
            part = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:args.lenet_images])
            model, _ = build_pruned(name, "snip", sparsity, seed, part, saliency_per_class=10)
            fit(model, part, None, args.lenet_epochs, batch_size=100, lr=lr, device="cpu", amp=False, seed=seed,
                progress=False)
            yield f"{name} SNIP {sparsity:.0%} seed {seed}", model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--lenet-images", type=int, default=20000)
    parser.add_argument("--lenet-epochs", type=int, default=3)
    args = parser.parse_args()
    train, test, source = mnist()
    print(f"device: {device_name('cpu')}; torch {torch.__version__}; {source}; test on {len(test)} images; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| network | fp32 accuracy (%) | bf16 accuracy (%) | bf16 − fp32 (points) |")
    print("| --- | ---: | ---: | ---: |")
    diffs = []
    for label, model in trained(args, train):
        fp32 = 100 * evaluate(model, test, device="cpu", amp=False)
        bf16 = 100 * evaluate(model, test, device="cpu", amp=True)
        diffs.append(bf16 - fp32)
        print(f"| {label} | {fp32:.2f} | {bf16:.2f} | {bf16 - fp32:+.2f} |", flush=True)
    print(f"{len(diffs)} networks: largest |bf16 − fp32| {max(map(abs, diffs)):.2f} points, "
          f"mean {sum(diffs) / len(diffs):+.3f}")


if __name__ == "__main__":
    main()
