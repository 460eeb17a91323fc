"""Chapter 02's fine-tuning runs trained in bf16 autocast against the same runs in fp32, interleaved.

The chapters' costs are mostly ResNet-18's last block trained at 4x4 through the CIFAR stem
(chapter 02's grid, chapter 05's FT and FE runs). On a CPU with native bf16 (AVX512-BF16) the
matrix products run at about twice fp32's peak; `fit(amp=True)` trains in bf16 autocast. Evaluation
is bf16 in both variants (the CPU's default), and both use the frozen stages' stored outputs, so the
only difference is the training step's precision. Each variant starts from an empty store of
outputs. Prints seconds per run (min and median over the repeats), the speed-up, and each variant's
final accuracies: bf16 training changes every trajectory, so the accuracies are not expected to be
identical, and how far they move is what a chapter adopting it would have to bound.

    SNIPNB_DATA=... OMP_NUM_THREADS=1 python benchmarks/transfer_bf16.py --k 20 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

import interleaved
from snipnb import train, transfer
from snipnb.provenance import device_name
from snipnb.transfer import TransferRun


def cell(args) -> list[TransferRun]:
    common = dict(source=args.source, target=args.target, image_size=32, stem="cifar", source_epochs=args.source_epochs,
                  k=args.k, epochs=args.epochs, eval_every=15, test_per_class=200, val_per_class=10, lr=args.lr,
                  train_blocks="last_block")
    return [TransferRun(**common)] + [TransferRun(**common, method=m, sparsity=0.9) for m in ("snip", "random")]


def timed(runs, bf16: bool) -> tuple[float, list[float]]:
    transfer.frozen._KEPT_OUTPUTS.clear()
    transfer.fit = functools.partial(train.fit, amp=bf16)
    try:
        start = time.perf_counter()
        accuracies = [round(transfer.run_transfer(run, device="cpu")["final_acc"], 1) for run in runs]
        return (time.perf_counter() - start) / len(runs), accuracies
    finally:
        transfer.fit = train.fit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="mnist:0-4")
    parser.add_argument("--target", default="mnist:5-9")
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = cell(args)
    transfer.source_backbone(runs[0])  # pretrained or read from the cache before any timing
    print(f"device: {device_name('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.source} -> {args.target}, k={args.k}, {args.epochs} epochs, {len(runs)} runs per repeat; "
          f"load average {os.getloadavg()[0]:.1f}")
    interleaved.compare(lambda bf16: timed(runs, bf16), args.repeats, {False: "fp32 training", True: "bf16 training"})


if __name__ == "__main__":
    main()
