"""Chapter 05's SNOW and FE runs on their frozen part's stored outputs (`snipnb.frozen`,
`snowrun.stores_frozen_outputs`) against the same runs through the whole network every step,
interleaved, at the CIFAR stem.

One worker's view of a sweep: SNOW (learned selection) for a few seeds and FE, k images per class,
in a row as a sweep worker meets them, so the kept test-set outputs are computed once per variant
and process, as in the chapter. Each variant starts from empty stores of outputs, so its first
SNOW run and its FE run pay for the test set. Both do the same work otherwise: the same runs, the
same test passes, the same cost measurement after training. Prints the seconds per run (min and
median over the repeats), the speed-up, and whether the two gave the same accuracies.

    SNIPNB_DATA=... OMP_NUM_THREADS=1 python benchmarks/snow_stored.py --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
from unittest import mock

import torch

import interleaved
from snipnb import frozen, snowrun
from snipnb.provenance import device_name
from snipnb.snowrun import SnowRun


def cell(args) -> list[SnowRun]:
    common = dict(source=args.source, target=args.target, model="resnet18", image_size=32, stem="cifar",
                  source_epochs=args.source_epochs, k=args.k, epochs=args.epochs, eval_every=args.eval_every,
                  test_per_class=args.test_per_class, timing_batch=args.timing_batch, batch_size=16)
    return ([SnowRun(**common, method="snow", lr=0.1, seed=seed) for seed in range(args.seeds)]
            + [SnowRun(**common, method="fe", lr=0.01)])


def timed(runs, stored: bool) -> tuple[float, list[float]]:
    swap = contextlib.nullcontext() if stored else mock.patch.object(snowrun, "stores_frozen_outputs", lambda run: False)
    return interleaved.timed(lambda run: snowrun.run_snow(run, device="cpu")["final_acc"], runs, swap,
                             [snowrun._KEPT_SOURCE_OUTPUTS, frozen._KEPT_OUTPUTS])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="mnist:0-4")
    parser.add_argument("--target", default="mnist:5-9")
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2, help="SNOW runs per repeat (one FE run besides)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--timing-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = cell(args)
    snowrun.source_backbone(runs[0])  # pretrained or read from the cache before any timing
    print(f"device: {device_name('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.source} -> {args.target}, CIFAR stem at 32 px, k={args.k}, {args.epochs} epochs, test every "
          f"{args.eval_every} on {args.test_per_class} per class, {len(runs)} runs per repeat "
          f"({args.seeds} SNOW, 1 FE); load average {os.getloadavg()[0]:.1f}")
    interleaved.compare(lambda stored: timed(runs, stored), args.repeats,
                        {False: "whole network every step", True: "frozen part's outputs stored"})

if __name__ == "__main__":
    main()
