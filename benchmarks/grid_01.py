"""Chapter 01's MNIST grid through `run_sweep`: one run at a time or as stacks, in one or several processes.

The same configs (by default one (k, seed) cell of the book's grid: simple_convnet, dense + 5
methods × 2 sparsities = 11 runs) go through `snipnb.sweep.run_sweep` into an empty folder once per
schedule: `stack=1` (each run alone, `train.fit`) or `stack=S` (`stack.fit_stack`), with one worker
process or one single-threaded worker per core. The schedules are interleaved and repeated, and
min and median wall times are printed with the machine's load. The script also checks that the
numbers agree: the same densities, and accuracies equal up to the float rounding a stacked
computation may change (reported as the largest difference); runs made the same way must agree
exactly whatever the number of workers.

    OMP_NUM_THREADS=1 python benchmarks/grid_01.py --repeats 3       # one cell, four schedules
    python benchmarks/grid_01.py --ks 1 2 5 10 20 --seeds 5 --repeats 1   # the chapter's whole grid
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import torch

from snipnb import data, devices, fewshot
from snipnb.provenance import device_name
from snipnb.sweep import run_sweep
from snipnb.train import default_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="simple_convnet")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--ks", type=int, nargs="+", default=[5])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--methods", nargs="+",
                        default=["snip", "snip_pseudo_labels", "snip_cross_domain", "random", "shuffled_snip"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--stack", type=int, default=32)
    parser.add_argument("--workers", type=int, default=devices.cpu_cores())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = str(torch.device(args.device) if args.device else default_device())
    settings = dict(dataset=args.dataset, epochs=args.epochs, batch_size=32, lr=0.05, eval_every=args.eval_every,
                    **data.recipe_defaults(args.dataset))
    runs = fewshot.grid([args.model], args.ks, args.sparsities, args.methods, args.seeds, **settings)
    data.load_cached(args.dataset, True, settings["synthetic_shape"])  # loading is not what is timed
    data.load_cached(args.dataset, False, settings["synthetic_shape"])
    fn = functools.partial(fewshot.run_few_shot_stack, device=device)
    schedules = {"one at a time, 1 process": (1, 1), f"stacks of {args.stack}, 1 process": (args.stack, 1),
                 f"one at a time, {args.workers} processes": (1, args.workers),
                 f"stacks of {args.stack}, {args.workers} processes": (args.stack, args.workers)}
    timings, tables = {name: [] for name in schedules}, {}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, (stack, workers) in schedules.items():  # interleaved: every schedule once per repeat
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                tables[name] = run_sweep(fn, runs, folder, stack=stack, stack_key=fewshot.stack_key, workers=workers,
                                         progress=False)
                timings[name].append(time.perf_counter() - start)
        load.append(os.getloadavg()[0])
    print(f"device: {device_name(device)}, {torch.get_num_threads()} threads in the main process, 1 per worker; "
          f"torch {torch.__version__}; {args.dataset}, {args.model}, {len(runs)} runs (k {args.ks}, {args.seeds} seeds, "
          f"dense + {len(args.methods)} methods × {len(args.sparsities)} sparsities), {args.epochs} epochs, test every "
          f"{args.eval_every}; {args.repeats} interleaved repeats; load average (1 min) " +
          " / ".join(f"{x:.1f}" for x in load) + " (start / after each repeat)")
    base = min(next(iter(timings.values())))
    print("| schedule | wall min (s) | wall median (s) | runs/hour (min) | speed-up (min) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seconds in timings.items():
        print(f"| {name} | {min(seconds):.1f} | {statistics.median(seconds):.1f} | "
              f"{len(runs) / min(seconds) * 3600:,.0f} | {base / min(seconds):.2f}x |")
    names = list(tables)
    for a, b in ((names[0], names[2]), (names[0], names[1])):
        merged = tables[a].merge(tables[b], on="id", suffixes=("_a", "_b"))
        diff = (merged.final_acc_a - merged.final_acc_b).abs()
        print(f"{a} vs {b}: densities equal in {int((merged.density_a == merged.density_b).sum())} of {len(merged)} "
              f"runs; final accuracy differs by at most {diff.max():.2f} points (mean {diff.mean():.3f})")


if __name__ == "__main__":
    main()
