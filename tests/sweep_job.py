"""A tiny job for the sweep tests; importable by name so spawned workers can run it."""

import dataclasses
import os
import pathlib
import signal
import sys
import threading
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


def run_or_die(job: Job, deaths: str) -> dict:
    """`run`, except that the process running it dies half-way (SIGKILL: no clean-up, like a lost node)
    while a file named by the job's config id is in the folder `deaths`."""
    from snipnb.sweep import config_id

    if (pathlib.Path(deaths) / config_id(job)).exists():
        time.sleep(1.0)  # mid-run
        os.kill(os.getpid(), signal.SIGKILL)
    return run(job)


def run_or_raise(job: Job, doomed: int) -> dict:
    if job.seed == doomed:
        raise ArithmeticError(f"run {job} failed on purpose")
    return run(job)


def whoami() -> str:
    """For `run_sweep(device=whoami)`: which process made a record."""
    return f"pid {os.getpid()}"


_running, _most_running, _lock = 0, 0, threading.Lock()


def run_counting(job: Job) -> dict:
    """`run`, and how many runs this process was running at once, at most, so far."""
    global _running, _most_running
    with _lock:
        _running += 1
        _most_running = max(_most_running, _running)
    try:
        time.sleep(job.sleep)
        return {**run(Job(job.seed, job.scale)), "most_at_once": _most_running}
    finally:
        with _lock:
            _running -= 1


def reset_counting() -> None:
    global _most_running
    _most_running = 0


def send_records_to(folder: str | None) -> None:
    """In a worker process: store every record in `folder` instead of the sweep's (a results folder
    this worker does not share with the client); None undoes it."""
    from snipnb import sweep

    original = getattr(sweep, "_original_save_record", sweep.save_record)
    sweep._original_save_record = original
    sweep.save_record = original if folder is None else (lambda _, record: original(folder, record))


def pretend_loaded_code(code: str | None) -> None:
    """In a worker process: pretend it started with other library code (None: forget it)."""
    from snipnb import sweep

    sweep._LOADED_CODE = code


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
