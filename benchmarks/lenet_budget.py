"""LeNet-300-100 on full MNIST: runs per hour at the SNIP paper's training budget, alone and stacked.

Chapter 00 asks whether Table 1 reproduces at the paper's budget (75,000 iterations of batch 100).
This prints what that costs here: run-iterations per second of `snipnb.table1.Table1Run`'s recipe
trained one run at a time and as stacks of S runs (`snipnb.stack.fit_stack`), the variants
interleaved, each repeated, min and median reported with the machine's load average; and the runs
per hour at the paper's budget that the best rate implies (training only: the test passes a
chapter adds are not counted). Uses MNIST from $SNIPNB_DATA, else synthetic data of its shape.

    python benchmarks/lenet_budget.py --stack 1 4 16 --iterations 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from snipnb import data, table1
from snipnb.provenance import device_name
from snipnb.train import default_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stack", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--iterations", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--method", default="snip", help="a pruned run holds its masks in the forward pass")
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    try:
        data.load("mnist", True, download=False)
        run = table1.Table1Run(method=args.method, sparsity=args.sparsity)
        source = "MNIST"
    except FileNotFoundError:
        run = table1.Table1Run(method=args.method, sparsity=args.sparsity, dataset="synthetic")
        source = "synthetic (MNIST-shaped stand-in)"
    rates = {size: [] for size in args.stack}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for size in args.stack:  # interleaved: every variant once per repeat
            rates[size].append(table1.measure_speed(run, size, args.iterations, device))
    load_after = os.getloadavg()
    print(f"device: {device_name(device)}; torch {torch.__version__}; {source}; lenet300_100 {args.method} at "
          f"sparsity {args.sparsity}, batch {run.batch_size}, {args.iterations} timed iterations; {args.repeats} "
          f"interleaved repeats; load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("| stack | run-iterations/s (best) | (median) | runs/hour at 75,000 iterations (best) |")
    print("| ---: | ---: | ---: | ---: |")
    for size, values in rates.items():
        best = max(values)
        print(f"| {size} | {best:,.0f} | {statistics.median(values):,.0f} | "
              f"{best * 3600 / table1.PAPER_ITERATIONS:.1f} |")


if __name__ == "__main__":
    main()
