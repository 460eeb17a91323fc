"""SNOW against fine-tuning (FT): training and inference images per second, FLOPs and memory.

Both networks start from the same ImageNet-architecture ResNet (random weights: the cost does not
depend on them). FT trains every weight with a new head; SNOW freezes that network as its source
and trains a delta 1/`width_divisor` as wide (`snipnb.snow`). The four measurements (FT training
step, SNOW training step, FT inference, SNOW inference) run interleaved on the same batch, after one
warm-up round, so a change in machine load hits all of them alike. Reported per model: the best
and the median images/s over the repeats, their ratio (best against best), the FLOPs per image
(`torch.utils.flop_counter`) and the memory one training step holds (parameters, gradients,
momentum, and the activations autograd saves, counted), with the load average before and after.
With `--tasks`, the same for serving T tasks: one source pass and T deltas against T FT copies.

    python benchmarks/snow_throughput.py --models resnet18 resnet50 --image-size 64 --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch

from snipnb import pretrained, provenance, snow
from snipnb.snowrun import (count_flops, inference_step, saved_activation_bytes, timed, training_state_bytes,
                            training_step)
from snipnb.train import default_device, resolve_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--width-divisor", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, nargs="*", default=[], help="also time serving T tasks at once")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device, amp, channels_last = resolve_device(args.device or default_device(), None, None)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    print(f"device: {provenance.device_name(device)}; torch {torch.__version__}; {args.image_size} px, batch "
          f"{args.batch}, {args.classes} classes, width divisor {args.width_divisor}, bf16 autocast {amp}; "
          f"{args.repeats} interleaved repeats after a warm-up; load average before {os.getloadavg()[0]:.1f}")
    print("| model | FT train img/s (best / median) | SNOW train img/s | train ratio | FT infer img/s | "
          "SNOW infer img/s | infer ratio | train GFLOPs/img FT / SNOW | infer GFLOPs/img FT / SNOW | "
          "train-step MiB FT / SNOW |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(args.classes, (args.batch,), device=device)
    for name in args.models:
        source = pretrained.build(name, args.classes, 3, args.image_size, seed=0)
        ft = copy.deepcopy(source).to(device, memory_format=fmt)
        sn = snow.build_snow(source, args.classes, width_divisor=args.width_divisor, seed=0).to(device, memory_format=fmt)
        steps = {"ft_train": training_step(ft, x, y, amp), "snow_train": training_step(sn, x, y, amp),
                 "ft_infer": inference_step(ft, x, amp), "snow_infer": inference_step(sn, x, amp)}
        times = {key: [] for key in steps}
        for repeat in range(args.repeats + 1):
            for key, step in steps.items():
                seconds = timed(step, device)
                if repeat:  # the first round warms up
                    times[key].append(seconds)
        rate = {key: (args.batch / min(t), args.batch / statistics.median(t)) for key, t in times.items()}
        flops = {label: count_flops(model, x, y) for label, model in (("ft", ft), ("snow", sn))}
        memory = {}
        for label, model in (("ft", ft), ("snow", sn)):
            model.train()
            memory[label] = (training_state_bytes(model) + saved_activation_bytes(model, x, y, amp, device)) / 2**20
        fmt_rate = lambda key: f"{rate[key][0]:,.0f} / {rate[key][1]:,.0f}"  # noqa: E731
        gf = {label: (t / args.batch / 1e9, i / args.batch / 1e9) for label, (t, i) in flops.items()}
        print(f"| {name} | {fmt_rate('ft_train')} | {fmt_rate('snow_train')} | "
              f"{rate['snow_train'][0] / rate['ft_train'][0]:.2f}x | {fmt_rate('ft_infer')} | {fmt_rate('snow_infer')} | "
              f"{rate['snow_infer'][0] / rate['ft_infer'][0]:.2f}x | {gf['ft'][0]:.2f} / {gf['snow'][0]:.2f} | "
              f"{gf['ft'][1]:.2f} / {gf['snow'][1]:.2f} | {memory['ft']:,.0f} / {memory['snow']:,.0f} |", flush=True)
        if args.tasks:
            serve(name, source, sn, x, args, device, amp, fmt)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def serve(name, source, snow_model, x, args, device, amp, fmt):
    """T tasks: one source pass and T deltas against T fine-tuned copies, interleaved."""
    layout = snow_model.layout
    for tasks in args.tasks:
        deltas = [snow.build_delta(layout, args.classes, width_divisor=args.width_divisor, seed=t) for t in range(tasks)]
        shared = snow.SnowTasks(snow_model.source, deltas).to(device, memory_format=fmt).eval()
        copies = [copy.deepcopy(source).to(device, memory_format=fmt).eval() for _ in range(tasks)]

        @torch.no_grad()
        def run_snow():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                shared(x)

        @torch.no_grad()
        def run_copies():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                for model in copies:
                    model(x)

        times = {"snow": [], "ft": []}
        for repeat in range(args.repeats + 1):
            for key, fn in (("ft", run_copies), ("snow", run_snow)):
                seconds = timed(fn, device)
                if repeat:
                    times[key].append(seconds)
        best = {key: args.batch / min(t) for key, t in times.items()}
        params = {"snow": snow.parameter_count(shared), "ft": tasks * snow.parameter_count(source)}
        print(f"  serving {name}, T = {tasks}: SNOW {best['snow']:,.0f} img/s with {params['snow'] / 1e6:.1f} M "
              f"parameters; {tasks} FT copies {best['ft']:,.0f} img/s with {params['ft'] / 1e6:.1f} M; "
              f"{best['snow'] / best['ft']:.2f}x the images/s, {params['ft'] / params['snow']:.1f}x fewer parameters",
              flush=True)


if __name__ == "__main__":
    main()
