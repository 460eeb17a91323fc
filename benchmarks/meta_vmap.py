"""One meta-batch of MAML (forward, inner loop, outer backward): vmap over tasks against a Python loop.

The two variants run interleaved (loop, vmap, loop, vmap, ...) on the same meta-batches, after one
warm-up call each, so a change in machine load hits both alike. Reported: min and median seconds
per meta-batch over the repeats, and the load average before and after (other work on the machine
slows both and widens the spread; the min is the better estimate of the cost itself).

    python benchmarks/meta_vmap.py --filters 32 --tasks 4 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from snipnb import meta, meta_data
from snipnb.train import default_device


def time_one(model, method, params, scores, batch, inner, vectorize, device) -> float:
    start = time.perf_counter()
    losses, _ = meta.meta_batch_loss(model, method, params, scores, batch, inner, vectorize=vectorize)
    losses.mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[32])
    parser.add_argument("--tasks", type=int, nargs="+", default=[4])
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--q-query", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or default_device())
    split = meta_data.synthetic(classes=(10, 5, 5), per_class=40, image_size=args.image_size).train
    inner = meta.InnerLoop(args.steps, 0.1, args.first_order)
    load_before = os.getloadavg()
    print(f"device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads); "
          f"torch {torch.__version__}; conv4 on 1x{args.image_size}x{args.image_size}, 5-way {args.k_shot}-shot, "
          f"{args.q_query} queries, {args.steps} inner steps, {'first' if args.first_order else 'second'} order, "
          f"{args.repeats} interleaved repeats; load average before {load_before[0]:.1f}")
    print("| filters | tasks | loop min (s) | loop median (s) | vmap min (s) | vmap median (s) | loop/vmap (min) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for filters in args.filters:
        model = meta.build("conv4", 1, 5, args.image_size, filters, seed=0).to(device)
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        for tasks in args.tasks:
            sampler = meta_data.EpisodeSampler(split, 5, args.k_shot, args.q_query, seed=0, device=device)
            times = {True: [], False: []}
            for repeat in range(args.repeats + 1):
                batch = sampler.sample(tasks)
                for vectorize in (False, True):
                    seconds = time_one(model, "maml", params, {}, batch, inner, vectorize, device)
                    if repeat:  # the first round is the warm-up
                        times[vectorize].append(seconds)
            loop, vmap = times[False], times[True]
            print(f"| {filters} | {tasks} | {min(loop):.3f} | {statistics.median(loop):.3f} | {min(vmap):.3f} | "
                  f"{statistics.median(vmap):.3f} | {min(loop) / min(vmap):.2f}x |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
