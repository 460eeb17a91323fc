"""Chapter 01's MNIST grid end to end, one run at a time and as stacks, in one script run.

The same configs (by default the book's: simple_convnet, k = 1..20, 3 seeds, dense + 5 methods × 2
sparsities = 165 runs) go through `snipnb.sweep.run_sweep` twice into empty folders: once with
`stack=1` (each run alone, `train.fit`) and once with `stack=S` (`stack.fit_stack`). The script
prints both wall times and checks that the numbers agree: the same densities, and accuracies equal
up to the float rounding a stacked computation may change (reported as the largest difference).

    python benchmarks/grid_01.py                      # the full grid (long on a CPU)
    python benchmarks/grid_01.py --ks 1 5 --seeds 2   # a quick check
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import torch

from snipnb import data, fewshot
from snipnb.provenance import device_name
from snipnb.sweep import run_sweep
from snipnb.train import default_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="simple_convnet")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--methods", nargs="+",
                        default=["snip", "snip_pseudo_labels", "snip_cross_domain", "random", "shuffled_snip"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--stack", type=int, default=32)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = str(torch.device(args.device) if args.device else default_device())
    settings = dict(dataset=args.dataset, epochs=args.epochs, batch_size=32, lr=0.05, eval_every=args.eval_every,
                    **data.recipe_defaults(args.dataset))
    runs = fewshot.grid([args.model], args.ks, args.sparsities, args.methods, args.seeds, **settings)
    data.load_cached(args.dataset, True, settings["synthetic_shape"])  # loading is not what is timed
    data.load_cached(args.dataset, False, settings["synthetic_shape"])
    fn = functools.partial(fewshot.run_few_shot_stack, device=device)
    timings, tables = {}, {}
    load = [os.getloadavg()[0]]
    for name, stack in (("one at a time", 1), (f"stacks of {args.stack}", args.stack)):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            tables[name] = run_sweep(fn, runs, folder, stack=stack, stack_key=fewshot.stack_key, progress=False)
            timings[name] = time.perf_counter() - start
        load.append(os.getloadavg()[0])
    (a, b), (ta, tb) = tables.keys(), tables.values()
    merged = ta.merge(tb, on="id", suffixes=("_a", "_b"))
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.dataset}, {args.model}, {len(runs)} runs "
          f"(k {args.ks}, {args.seeds} seeds, dense + {len(args.methods)} methods × {len(args.sparsities)} sparsities), "
          f"{args.epochs} epochs, test every {args.eval_every}; load average (1 min) " +
          " / ".join(f"{x:.1f}" for x in load) + " (start / after each)")
    print("| schedule | wall time (min) | runs/hour | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds / 60:.1f} | {len(runs) / seconds * 3600:,.0f} | {timings[a] / seconds:.2f}x |")
    diff = (merged.final_acc_a - merged.final_acc_b).abs()
    print(f"same numbers: densities equal in {int((merged.density_a == merged.density_b).sum())} of {len(merged)} runs; "
          f"final accuracy differs by at most {diff.max():.2f} points (mean {diff.mean():.3f}); "
          f"mean final accuracy {merged.final_acc_a.mean():.2f} vs {merged.final_acc_b.mean():.2f}")


if __name__ == "__main__":
    main()
