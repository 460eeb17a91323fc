"""Two variants of the same runs timed in turn, repeat after repeat, so a change in the machine's
load falls on both: the shared loop of the benchmarks that swap one piece of a run for another
(`transfer_frozen.py`, `snow_stored.py`, `transfer_bf16.py`)."""

from __future__ import annotations

import os
import statistics
import time


def timed(final_acc, runs, swap, stores=()) -> tuple[float, list[float]]:
    """(seconds per run, final accuracies) of `final_acc(run)` over `runs` in a row, with `swap` (a
    context manager that puts the variant in place) entered around them. Each of `stores` (a
    per-process cache of outputs) is emptied first, so every variant pays for filling it, as a sweep
    worker's first run does."""
    for store in stores:
        store.clear()
    with swap:
        start = time.perf_counter()
        accuracies = [final_acc(run) for run in runs]
        return (time.perf_counter() - start) / len(runs), accuracies


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
