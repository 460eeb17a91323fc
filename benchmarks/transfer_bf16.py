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

import interleaved
import transfer_cell
from snipnb import transfer


def timed(runs, bf16: bool) -> tuple[float, list[float]]:
    return interleaved.timed(lambda run: round(transfer_cell.final_acc(run), 1), runs,
                             transfer_cell.training_precision(bf16), [transfer.frozen._KEPT_OUTPUTS])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    transfer_cell.add_arguments(parser, k=20, repeats=2)
    args = parser.parse_args()
    runs = transfer_cell.cell(args)
    transfer_cell.prepare(args, runs)
    interleaved.compare(lambda bf16: timed(runs, bf16), args.repeats, {False: "fp32 training", True: "bf16 training"})


if __name__ == "__main__":
    main()
