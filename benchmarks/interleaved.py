"""Two variants of the same runs timed in turn, repeat after repeat, so a change in the machine's
load falls on both: the shared loop of the benchmarks that compare a frozen part's stored outputs
with the whole network (`transfer_frozen.py`, `snow_stored.py`)."""

from __future__ import annotations

import os
import statistics


def compare(timed, repeats: int, labels: dict[bool, str]) -> None:
    """Call `timed(False)` (the baseline) and `timed(True)` in turn, `repeats` times; each returns
    (seconds per run, final accuracies). Prints every timing as it comes, then a markdown table of
    the min and median seconds per run under `labels`, the speed-up of the medians and whether the
    two variants gave the same accuracies."""
    seconds = {False: [], True: []}
    accuracies = {}
    for _ in range(repeats):
        for variant in (False, True):
            per_run, accuracies[variant] = timed(variant)
            seconds[variant].append(per_run)
            print(f"  {labels[variant]}: {per_run:.2f} s per run (load average {os.getloadavg()[0]:.1f})", flush=True)
    print("| variant | s per run (min) | s per run (median) |\n|---|---|---|")
    for variant in (False, True):
        print(f"| {labels[variant]} | {min(seconds[variant]):.2f} | {statistics.median(seconds[variant]):.2f} |")
    print(f"speed-up (median): {statistics.median(seconds[False]) / statistics.median(seconds[True]):.2f}x; "
          f"final accuracies {accuracies[False]} vs {accuracies[True]}; load average {os.getloadavg()[0]:.1f}")
