"""Chapter 02's fine-tuning runs with the frozen stages run once (`snipnb.frozen`) against the same
runs through the whole network every step, interleaved.

One worker's view of a sweep: the runs of one (k, seed) cell that train the last block (dense and
SNIP-pruned) in a row, as a sweep worker meets them, so the kept test-set outputs are computed once
per variant and process, as in the chapter. Each variant starts from an empty store of outputs, so
its first run pays for the test set. Both do the same work otherwise: the same runs, the same
test and validation passes. Prints the seconds per run (min and median over the repeats), the
speed-up, and whether the two gave the same accuracies.

    SNIPNB_DATA=... python benchmarks/transfer_frozen.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import interleaved
from snipnb import transfer
from snipnb.provenance import device_name
from snipnb.transfer import TransferRun


def cell(args) -> list[TransferRun]:
    common = dict(source=args.source, target=args.target, image_size=32, stem="cifar", source_epochs=args.source_epochs,
                  k=args.k, epochs=args.epochs, eval_every=15, test_per_class=200, val_per_class=10, lr=0.05,
                  train_blocks="last_block")
    return [TransferRun(**common)] + [TransferRun(**common, method=m, sparsity=0.9) for m in ("snip", "random")]


def timed(runs, once: bool) -> tuple[float, list[float]]:
    transfer.frozen._KEPT_OUTPUTS.clear()
    real = transfer.runs_frozen_stages_once
    transfer.runs_frozen_stages_once = real if once else (lambda run: False)
    try:
        start = time.perf_counter()
        accuracies = [transfer.run_transfer(run, device="cpu")["final_acc"] for run in runs]
        return (time.perf_counter() - start) / len(runs), accuracies
    finally:
        transfer.runs_frozen_stages_once = real


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="mnist:0-4")
    parser.add_argument("--target", default="mnist:5-9")
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = cell(args)
    transfer.source_backbone(runs[0])  # pretrained or read from the cache before any timing
    print(f"device: {device_name('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.source} -> {args.target}, k={args.k}, {args.epochs} epochs, {len(runs)} runs per repeat; "
          f"load average {os.getloadavg()[0]:.1f}")
    interleaved.compare(lambda once: timed(runs, once), args.repeats,
                        {False: "whole network every step", True: "frozen stages once"})

if __name__ == "__main__":
    main()
