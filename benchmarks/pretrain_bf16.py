"""A source pretrained in bf16 autocast against the same source in fp32: time and test accuracy.

Chapters 02 and 05 pretrain a ResNet-18 per seed through the CIFAR stem (16 times the arithmetic of
the ImageNet stem at 32 px), about 25 minutes each on 2 cores in fp32: a third of chapter 02's
cost. A source is one draw for the fine-tuning after it, so what bf16 must keep is how good the
source is, its test accuracy. Each seed's source is pretrained in both precisions, fp32 and bf16
alternating (which comes first alternates from seed to seed), each from an empty cache, at the
pinned `PRETRAIN_THREADS`. Prints the seconds of training (`fit`'s, evaluation included) and the
test accuracy on the source's classes, per seed and precision, and the load average around each.

    SNIPNB_DATA=... SNIPNB_OFFLINE=1 python benchmarks/pretrain_bf16.py --source mnist:0-4 --epochs 1 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from snipnb import pretrained


def pretrain(source: str, epochs: int, seed: int, stem: str, bf16: bool) -> dict:
    name, classes = pretrained.parse_split(source)
    with tempfile.TemporaryDirectory() as cache:
        load = os.getloadavg()[0]
        path = pretrained.pretrain("resnet18", name, classes, epochs, seed, stem=stem, amp=bf16, cache_dir=cache,
                                   device="cpu", progress=False)
        meta = pretrained.load_checkpoint(path)[1]
    return {"seed": seed, "precision": meta["precision"], "seconds": meta["seconds"], "test_acc": meta["test_acc"],
            "load": (load, os.getloadavg()[0])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="mnist:0-4")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = []
    for i, seed in enumerate(args.seeds):
        for bf16 in ((False, True) if i % 2 == 0 else (True, False)):
            rows.append(pretrain(args.source, args.epochs, seed, args.stem, bf16))
            row = rows[-1]
            print(f"seed {seed} {row['precision']}: {row['seconds']:.0f} s, test {row['test_acc']:.2f}%, "
                  f"load {row['load'][0]:.1f} -> {row['load'][1]:.1f}", flush=True)
    print(f"\n{args.source}, {args.epochs} epoch(s), {args.stem} stem, {pretrained.PRETRAIN_THREADS} threads\n")
    print("| seed | fp32 s | bf16 s | speed-up | fp32 test (%) | bf16 test (%) | bf16 − fp32 (points) |")
    print("|---|---|---|---|---|---|---|")
    by = {(r["seed"], r["precision"]): r for r in rows}
    for seed in args.seeds:
        f, b = by[seed, "fp32"], by[seed, "bf16"]
        print(f"| {seed} | {f['seconds']:.0f} | {b['seconds']:.0f} | {f['seconds'] / b['seconds']:.2f}x | "
              f"{f['test_acc']:.2f} | {b['test_acc']:.2f} | {b['test_acc'] - f['test_acc']:+.2f} |")
    ratio = [by[s, "fp32"]["seconds"] / by[s, "bf16"]["seconds"] for s in args.seeds]
    print(f"\nspeed-up: min {min(ratio):.2f}x, median {statistics.median(ratio):.2f}x")


if __name__ == "__main__":
    main()
