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
import contextlib
from unittest import mock

import interleaved
import transfer_cell
from snipnb import transfer


def timed(runs, once: bool) -> tuple[float, list[float]]:
    swap = contextlib.nullcontext() if once else mock.patch.object(transfer, "runs_frozen_stages_once", lambda run: False)
    return interleaved.timed(transfer_cell.final_acc, runs, swap, [transfer.frozen._KEPT_OUTPUTS])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    transfer_cell.add_arguments(parser, k=5, repeats=3)
    args = parser.parse_args()
    runs = transfer_cell.cell(args)
    transfer_cell.prepare(args, runs)
    interleaved.compare(lambda once: timed(runs, once), args.repeats,
                        {False: "whole network every step", True: "frozen stages once"})


if __name__ == "__main__":
    main()
