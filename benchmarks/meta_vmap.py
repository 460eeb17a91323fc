"""One meta-batch of MAML (forward, inner loop, outer backward): vmap over tasks against a Python loop,
and three ways to write BatchNorm with batch statistics.

Variants, all on the same meta-batches, timed in turn (interleaved) after one warm-up round each:
- `vmap, textbook norm`: the tasks as one vmap, BatchNorm as `(x - mean) * rsqrt(var + eps) * w + b`
  (the library's until 2026-12-05, and what a researcher would write);
- `loop, textbook norm`: the same norm, the tasks in a Python loop;
- `loop, folded norm, means`: centred once and the per-channel factors folded, with `mean` (the
  library's from 2026-12-05 to 2026-12-06);
- `loop, library norm`: the library's `BatchStatNorm2d` (the same, its means as sums times 1/n);
- `vmap, library norm`: the library's norm under vmap, what a GPU runs;
- `loop, F.batch_norm`: PyTorch's kernel, for reference only: under vmap its second-order gradient is
  wrong (`meta.BatchStatNorm2d`), so the library cannot use it where it vmaps.
Each variant's meta-gradient is compared with the first's (largest relative difference of a weight's
gradient norm; the conv biases, whose gradient before BatchNorm is zero up to rounding, are left out).

Reported per variant: min and median seconds of wall time and of this process's CPU time. With one
thread (`OMP_NUM_THREADS=1`) CPU time counts only this process's work, so it stays a fair measure
while other jobs share the cores; wall time does not. The load average is printed before and after.

    OMP_NUM_THREADS=1 python benchmarks/meta_vmap.py --filters 16 --tasks 4 --steps 1 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

from snipnb import meta, meta_data
from snipnb.train import default_device


def textbook_norm(self, x):
    mean = x.mean((0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean((0, 2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def folded_mean_norm(self, x):
    centred = x - x.mean((0, 2, 3), keepdim=True)
    var = centred.square().mean((0, 2, 3), keepdim=True)
    scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
    return torch.addcmul(self.bias.view(1, -1, 1, 1), centred, scale)


def torch_norm(self, x):
    return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


VARIANTS = {  # name: (vectorize, norm's forward or None for the library's)
    "vmap, textbook norm": (True, textbook_norm),
    "loop, textbook norm": (False, textbook_norm),
    "loop, folded norm, means": (False, folded_mean_norm),
    "loop, library norm": (False, None),
    "vmap, library norm": (True, None),
    "loop, F.batch_norm": (False, torch_norm),
}


def time_one(model, params, batch, inner, variant, device):
    vectorize, norm = VARIANTS[variant]
    for p in params.values():
        p.grad = None
    with mock.patch.object(meta.BatchStatNorm2d, "forward", norm or meta.BatchStatNorm2d.forward):
        wall, cpu = time.perf_counter(), time.process_time()
        losses, _ = meta.meta_batch_loss(model, "maml", params, {}, batch, inner, vectorize=vectorize)
        losses.mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, {n: p.grad.clone() for n, p in params.items()}


def gradient_difference(grads, reference) -> float:
    return max(((grads[n] - reference[n]).norm() / reference[n].norm()).item()
               for n in grads if not (n.startswith("body.conv") and n.endswith("bias")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[16])
    parser.add_argument("--tasks", type=int, nargs="+", default=[4])
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--q-query", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or default_device())
    split = meta_data.synthetic(classes=(10, 5, 5), per_class=40, image_size=args.image_size).train
    inner = meta.InnerLoop(args.steps, 0.4, args.first_order)
    print(f"device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads); "
          f"torch {torch.__version__}; conv4 on 1x{args.image_size}x{args.image_size}, 5-way {args.k_shot}-shot, "
          f"{args.q_query} queries, {args.steps} inner steps, {'first' if args.first_order else 'second'} order, "
          f"{args.repeats} interleaved repeats; load average before {os.getloadavg()[0]:.1f}")
    print("| filters | tasks | variant | wall min (s) | wall median (s) | CPU min (s) | CPU median (s) | "
          "first/this (CPU median) | gradient vs first |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for filters in args.filters:
        model = meta.build("conv4", 1, 5, args.image_size, filters, seed=0).to(device)
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        for tasks in args.tasks:
            sampler = meta_data.EpisodeSampler(split, 5, args.k_shot, args.q_query, seed=0, device=device)
            times = {v: ([], []) for v in VARIANTS}
            difference = {v: 0.0 for v in VARIANTS}
            for repeat in range(args.repeats + 1):
                batch = sampler.sample(tasks)
                reference = None
                for variant in VARIANTS:
                    wall, cpu, grads = time_one(model, params, batch, inner, variant, device)
                    reference = reference or grads
                    difference[variant] = max(difference[variant], gradient_difference(grads, reference))
                    if repeat:  # the first round is the warm-up
                        times[variant][0].append(wall)
                        times[variant][1].append(cpu)
            first = statistics.median(times[next(iter(VARIANTS))][1])
            for variant, (wall, cpu) in times.items():
                print(f"| {filters} | {tasks} | {variant} | {min(wall):.3f} | {statistics.median(wall):.3f} | "
                      f"{min(cpu):.3f} | {statistics.median(cpu):.3f} | {first / statistics.median(cpu):.2f}x | "
                      f"{difference[variant]:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
