"""A tiny job for the sweep tests; importable by name so spawned workers can run it."""

import dataclasses
import os
import sys
import time


@dataclasses.dataclass(frozen=True)
class Job:
    seed: int
    scale: float = 1.0
    sleep: float = 0.0


def run(job: Job) -> dict:
    import torch

    log = os.environ.get("SWEEP_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"start {job.seed} {job.scale}\n")
    time.sleep(job.sleep)
    g = torch.Generator().manual_seed(job.seed)
    return {"value": float(torch.randn(3, generator=g).sum()) * job.scale}


def run_stack(jobs: list[Job]) -> list[dict]:
    """The same runs as `run`, a stack at a time (what a stacked trainer would give)."""
    log = os.environ.get("SWEEP_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"stack {len(jobs)}\n")
    return [run(job) for job in jobs]


def by_scale(job: Job) -> float:
    return job.scale


def grid(sleep=0.0):
    return [Job(seed=s, scale=scale, sleep=sleep) for s in range(4) for scale in (1.0, 2.0)]


if __name__ == "__main__":
    from snipnb.sweep import run_sweep

    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    stack = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if stack:
        run_sweep(run_stack, grid(sleep=float(sys.argv[2])), sys.argv[1], workers=workers, stack=stack,
                  stack_key=by_scale, progress=False)
    else:
        run_sweep(run, grid(sleep=float(sys.argv[2])), sys.argv[1], workers=workers, progress=False)
