"""Wall time of one fixed small few-shot grid at workers=1 and workers=N, in one run on one machine.

Few-shot runs are too small to fill a GPU (or all CPU cores) alone, so several runs at once should
finish a grid sooner. Each setting starts from an empty results folder; the same grid runs in both.

    python benchmarks/sweep_workers.py --workers 1 4
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import torch

from snipnb import data, fewshot
from snipnb.sweep import run_sweep
from snipnb.train import default_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="synthetic", help="synthetic needs no files; or cifar100, mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = args.device or str(default_device())
    runs = fewshot.grid([args.model], [1, 5], [0.9], ["snip", "random"], args.seeds, dataset=args.dataset,
                        epochs=args.epochs, **data.recipe_defaults(args.dataset))
    print(f"device: {device}; torch {torch.__version__}; grid of {len(runs)} runs "
          f"({args.model}, {args.dataset}, k in 1/5, {args.epochs} epochs)")
    print("| workers | wall time (s) | runs per minute | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    base = None
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            run_sweep(functools.partial(fewshot.run_few_shot, device=device), runs, folder, workers=workers,
                      progress=False)
            seconds = time.perf_counter() - start
        base = base or seconds
        print(f"| {workers} | {seconds:.1f} | {60 * len(runs) / seconds:.1f} | {base / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
