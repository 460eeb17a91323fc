"""What the write-up's full Experiment 1 grid costs, counted in floating-point operations.

The write-up's grid is 5 models × 5 values of k × 5 seeds × (dense + 5 methods × 4 sparsities) on
CIFAR-100, 30 epochs per run, tested every `eval_every` epochs on the 10,000 test images. This script
counts, with `torch.utils.flop_counter`, the operations of one training step and of one test image
for every model, multiplies them out over the grid, and converts them to hours at the sustained
throughputs given on the command line (`--tflops`, e.g. what benchmarks/fewshot_run.py measured on
a device). Dense operations are counted for pruned runs too: masks zero weights, they do not skip
the arithmetic.

    python benchmarks/grid_cost.py --tflops 0.05 50 200
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from snipnb import models


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def per_model(name: str, batch_size: int) -> tuple[int, int]:
    """(operations of one training step at `batch_size`, operations of testing one image)."""
    model = models.build(name, 100, 3, 32, seed=0)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 100, (batch_size,))

    def step():
        F.cross_entropy(model(x), y).backward()

    model.eval()
    with torch.no_grad():
        test = flops(lambda: model(x[:1]))
    model.train()
    return flops(step), test


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet20", "vgg11", "wrn16_2", "simple_convnet"])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", type=int, default=1 + 5 * 4, help="dense + methods × sparsities")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--tflops", type=float, nargs="+", default=[0.05, 50, 200],
                        help="sustained TFLOP/s to convert operations to hours")
    args = parser.parse_args()
    evals = len(range(args.eval_every, args.epochs + 1, args.eval_every)) + (args.epochs % args.eval_every != 0)
    runs = len(args.models) * len(args.ks) * args.seeds * args.variants
    print(f"grid: {runs:,} runs ({len(args.models)} models × {len(args.ks)} k × {args.seeds} seeds × "
          f"{args.variants} variants), {args.epochs} epochs at batch {args.batch_size}, {evals} test passes "
          f"of {args.test_images:,} images each")
    print("| model | train step (GFLOP) | test image (GFLOP) | training, all k (PFLOP) | testing (PFLOP) | share testing |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    total_train = total_test = 0.0
    for name in args.models:
        step, test = per_model(name, args.batch_size)
        steps = sum(args.epochs * -(-k * args.classes // args.batch_size) for k in args.ks)
        train_ops = step * steps * args.seeds * args.variants
        test_ops = test * args.test_images * evals * len(args.ks) * args.seeds * args.variants
        total_train, total_test = total_train + train_ops, total_test + test_ops
        print(f"| {name} | {step / 1e9:.2f} | {test / 1e9:.3f} | {train_ops / 1e15:.1f} | {test_ops / 1e15:.1f} | "
              f"{test_ops / (train_ops + test_ops):.0%} |")
    total = total_train + total_test
    print(f"| all | | | {total_train / 1e15:.1f} | {total_test / 1e15:.1f} | {total_test / total:.0%} |")
    print("| sustained TFLOP/s | hours for the grid |")
    print("| ---: | ---: |")
    for rate in args.tflops:
        print(f"| {rate:g} | {total / (rate * 1e12) / 3600:,.1f} |")


if __name__ == "__main__":
    main()
