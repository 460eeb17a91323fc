"""Grids of short runs that resume, run in parallel and split across machines.

A run is a config, a frozen dataclass, and a function of it that returns a dict of results. The run's
identity is a hash of the config's class and fields, so the same settings always map to the same
record and adding a value to a grid only adds runs. Each finished run is one JSON file in the results
folder. It is written to a temporary name and renamed into place, so a run killed half-way leaves
nothing behind. Rerunning a sweep skips every config that has a record made by the same library
code (each record says which code made it, `provenance`); `shard="i/n"` runs the configs whose hash
falls in slice i of n, so several GPUs or machines can fill one folder. Configs that can train
together are run as stacks (`stack`, `stack_key`; see `snipnb.stack`), one record per run still.

Runs go to local processes (`workers`) or to any `concurrent.futures.Executor` (`executor`), such as a
Dask cluster's (`snipnb.cluster`). A run whose worker is lost (a killed process, a lost node) costs
only that run: the others finish, and the sweep then raises `SweepIncomplete` naming the lost runs,
which the next call runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import BrokenExecutor, CancelledError, Executor, ProcessPoolExecutor, as_completed

import pandas as pd
from tqdm import tqdm

from . import devices, provenance
from .files import write_atomically


def config_id(config) -> str:
    """A stable 16-hex-digit id of a config: the same class and field values give the same id."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config must be a dataclass instance, got {type(config).__name__}")
    payload = json.dumps({"class": type(config).__name__, **dataclasses.asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None means the whole grid, (0, 1)."""
    if shard is None:
        return 0, 1
    try:
        i, n = (int(part) for part in str(shard).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ValueError(f"shard must look like 'i/n' with 0 <= i < n, got {shard!r}")
    return i, n


def in_shard(config, shard: str | None) -> bool:
    i, n = parse_shard(shard)
    return int(config_id(config), 16) % n == i


def record_path(folder, config) -> pathlib.Path:
    return pathlib.Path(folder) / f"{config_id(config)}.json"


def make_record(config, result: dict, seconds: float, *, code: dict | None = None, stack_size: int = 1,
                device: str | None = None) -> dict:
    """One finished run as the JSON record `write_record` stores. `code` is `provenance.code_version()`
    (taken now if not given): which code made the result. `host` is the machine that calls this."""
    return {"id": config_id(config), "config_class": type(config).__name__, "config": dataclasses.asdict(config),
            "result": result, "seconds": seconds, **(code or provenance.code_version()), "stack_size": stack_size,
            "device": device, "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def save_record(folder, record: dict) -> pathlib.Path:
    """Store a record atomically: a reader sees the whole record or none of it."""
    return write_atomically(pathlib.Path(folder) / f"{record['id']}.json", lambda f: json.dump(record, f), mode="w")


def write_record(folder, config, result: dict, seconds: float, *, code: dict | None = None,
                 stack_size: int = 1, device: str | None = None) -> pathlib.Path:
    """Write one finished run atomically (`make_record`, then `save_record`)."""
    return save_record(folder, make_record(config, result, seconds, code=code, stack_size=stack_size, device=device))


# Record fields that come into a results table beside the config and the results.
RECORD_COLUMNS = ("seconds", "id", "code", "commit", "dirty", "stack_size", "device")


def read_records(folder, configs=None) -> pd.DataFrame:
    """One row per finished run in `folder` (only those of `configs` if given): config fields, results,
    then where the record came from (`RECORD_COLUMNS`)."""
    folder = pathlib.Path(folder)
    paths = ([record_path(folder, c) for c in configs] if configs is not None
             else sorted(folder.glob("*.json")))
    rows = []
    for path in paths:
        if path.exists():
            record = json.loads(path.read_text())
            rows.append({**record["config"], **record["result"], **{k: record.get(k) for k in RECORD_COLUMNS}})
    return pd.DataFrame(rows)


def _record_code(path: pathlib.Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("code")
    except (OSError, ValueError):
        return None


def _start_worker(parent_pid: int, threads: int) -> None:
    """Pool worker set-up: share the CPU cores, and die with the process that started the sweep.

    A killed sweep (SIGKILL, a lost job on a cluster) cannot tell its workers to stop, and a worker
    left behind would go on taking runs, then block for ever, holding a GPU's memory. So every worker
    watches its parent and exits within a second of losing it.
    """
    import torch

    torch.set_num_threads(threads)
    devices.keep_freed_memory()  # whatever loop the runs use (benchmarks/RESULTS.md)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


# The library code this process runs, hashed when it first runs a chunk for an executor: Python does
# not reload modules, so a long-lived worker runs the code it started with whatever is on disk now.
_LOADED_CODE: str | None = None


def _check_loaded_code(code: dict) -> None:
    global _LOADED_CODE
    if _LOADED_CODE is None:
        _LOADED_CODE = provenance.source_hash()
    if _LOADED_CODE != code["code"]:
        raise RuntimeError(f"this worker (host {socket.gethostname()}, pid {os.getpid()}) runs library code "
                           f"{_LOADED_CODE}, the sweep's is {code['code']}: its records would name the wrong code. "
                           f"Restart the workers after changing the code, and run them all from the same one.")


def _run_chunk(fn, chunk: list, folder, code: dict, stacked: bool, device, check_code: bool = False) -> list[dict]:
    """Run one stack (or one run) where the executor put it; store its records in `folder` unless it
    is None (the folder is not shared: the caller stores them); return them either way."""
    if check_code:
        _check_loaded_code(code)
    start = time.perf_counter()
    results = fn(chunk) if stacked else [fn(chunk[0])]
    if len(results) != len(chunk):
        raise ValueError(f"a stacked fn must return one result per config: got {len(results)} for {len(chunk)}")
    seconds = (time.perf_counter() - start) / len(chunk)
    device = device() if callable(device) else device  # named by the machine that ran it
    records = [make_record(config, result, seconds, code=code, stack_size=len(chunk), device=device)
               for config, result in zip(chunk, results)]
    if folder is not None:
        for record in records:
            save_record(folder, record)
    return records


class SweepIncomplete(RuntimeError):
    """Some runs were lost with their workers; every other run finished and has its record.

    `lost`: the configs that have no record; `results`: the table `run_sweep` would have returned.
    Calling `run_sweep` again runs the lost configs (and nothing else)."""

    def __init__(self, message: str, lost: list, results: pd.DataFrame):
        super().__init__(message)
        self.lost, self.results = lost, results


def _worker_lost_errors() -> tuple[type, ...]:
    """What a future raises when its worker, not its run, failed: a broken local pool, a cancelled
    future (a closed client or cluster), or Dask's `KilledWorker` (the worker died running it once
    more than `distributed.scheduler.allowed-failures`)."""
    errors = [BrokenExecutor, CancelledError]
    distributed = sys.modules.get("distributed")  # a Dask executor has imported it
    if distributed is not None and hasattr(distributed, "KilledWorker"):
        errors.append(distributed.KilledWorker)
    return tuple(errors)


def _collect(futures: dict, keep) -> list[tuple[list, BaseException]]:
    """Wait for every future (future -> its chunk), passing each finished chunk's records to `keep`.
    Returns the chunks whose worker was lost, with the error. An error raised by a run itself
    propagates with its traceback, after the chunks not yet started are cancelled."""
    lost_errors = _worker_lost_errors()
    lost = []
    try:
        for future in as_completed(list(futures)):
            # Let go of a finished future at once: Dask keeps a result while a future refers to it,
            # and would run it again if the worker holding it died.
            chunk = futures.pop(future)
            try:
                records = future.result()
            except lost_errors as error:
                lost.append((chunk, error))
                continue
            finally:
                del future
            keep(chunk, records)
    finally:
        for future in futures:  # after an error or an interrupt: start nothing more
            future.cancel()
    return lost


def _lost_message(lost_chunks, lost: list, total: int, folder) -> str:
    examples = {}  # one message of each kind of error, not one per lost run
    for _, error in lost_chunks:
        examples.setdefault(type(error).__name__, (str(error).strip().splitlines() or [""])[0][:200])
    reasons = "; ".join(f"{name}: {example}" if example else name for name, example in examples.items())
    listed = ", ".join(repr(c) for c in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
    return (f"{len(lost)} of {total} runs were lost with their workers ({reasons}). "
            f"Every other run has its record in {folder}. Run the sweep again to run the {len(lost)}: {listed}")


def stacks(configs: list, stack: int, key) -> list[list]:
    """`configs` cut into stacks: configs with equal `key(config)`, in order of first appearance, in
    as few chunks of at most `stack` as there can be, of near-equal sizes."""
    groups: dict = {}
    for config in configs:
        groups.setdefault(key(config), []).append(config)
    chunks = []
    for group in groups.values():
        count = -(-len(group) // stack)
        size = -(-len(group) // count)
        chunks += [group[i : i + size] for i in range(0, len(group), size)]
    return chunks


REUSE = ("same_code", "any")

# Set by scripts/run_book.py for the notebook it executes, so that no notebook needs to know: the file
# each sweep tells which records it ran and returned (one JSON line at its start, one at its end), and
# whether this execution may train at all (a chapter re-rendered from its published table may not).
MANIFEST_ENV, REPLAY_ENV = "SNIPNB_MANIFEST", "SNIPNB_REPLAY"


def _tell_manifest(entry: dict) -> None:
    path = os.environ.get(MANIFEST_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def run_sweep(fn, configs, folder, *, workers: int = 1, executor: Executor | None = None, shard: str | None = None,
              stack: int = 1, stack_key=None, reuse: str = "same_code", device=None, shared_folder: bool = True,
              progress: bool = True, desc: str = "runs") -> pd.DataFrame:
    """Run every config of this shard that has no record in `folder`; return all records.

    - Without `stack_key`, `fn(config)` returns one run's results, a flat dict. With `stack_key`,
      `fn(list_of_configs)` trains them as one stack and returns one dict per config: configs with
      equal `stack_key(config)` are grouped into stacks of at most `stack` runs. Each run still gets
      its own record.
    - `reuse="same_code"` (default) reruns a config whose record was made by other library code
      (`provenance.code_version()["code"]`) and says how many; `reuse="any"` keeps every record.
    - `workers > 1` runs stacks (or runs) in that many processes, sharing the CPU cores or one GPU;
      `fn` must then be importable by name. A worker exits when the sweep's process dies.
    - `executor`: any `concurrent.futures.Executor` runs them instead, e.g. a Dask cluster's
      (`snipnb.cluster.cluster_executor`, or `distributed.Client(...).get_executor()`); it decides how
      many run at once, so `workers` stays 1. The sweep does not shut it down.
    - `shared_folder=True` (default): the worker that ran a config writes its record into `folder`,
      which must be the same folder on every worker (a shared file system, as on any Slurm
      cluster), so a finished run is kept even if this process dies. `shared_folder=False`: the
      workers write nothing; they return the records and this process writes them.
    - `device`: written into each record (the name of what ran it). A callable, such as
      `functools.partial(provenance.device_name, device)`, is called by the worker that ran the
      run, so on a cluster each record names its own machine's device.

    A run whose worker is lost costs only that run: the sweep finishes the others, then raises
    `SweepIncomplete` naming the lost configs; calling it again runs them. (Dask first runs a run
    whose worker died again elsewhere, up to `distributed.scheduler.allowed-failures` times.) An
    error raised by `fn` stops the sweep with its traceback.

    The returned table holds every config of `configs` that has a record, finished now or earlier,
    by this shard or another. Under `scripts/run_book.py`, the sweep names the records it returned in
    the file `$SNIPNB_MANIFEST` names, and `$SNIPNB_REPLAY` makes a config without a record an error.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: nothing to run (is a grid parameter such as seeds 0 or an empty list?)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if executor is not None and workers != 1:
        raise ValueError(f"pass workers or executor, not both: the executor decides how many run at once "
                         f"(got workers={workers})")
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__} "
                         f"(a Dask Client gives one with client.get_executor())")
    if stack < 1:
        raise ValueError(f"stack must be >= 1, got {stack}")
    if stack > 1 and stack_key is None:
        raise ValueError(f"stack={stack} needs stack_key, the function that says which configs can train together "
                         f"(e.g. fewshot.stack_key), and an fn that takes a list of configs; without it every "
                         f"run would train alone")
    if reuse not in REUSE:
        raise ValueError(f"reuse must be one of {REUSE}, got {reuse!r}")
    ids = [config_id(c) for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("configs has duplicates: every run must differ in at least one field")
    # Workers elsewhere resolve a relative path against their own working directory.
    folder = pathlib.Path(folder).absolute()
    code = provenance.code_version()
    mine = [c for c in configs if in_shard(c, shard)]
    todo, stale = [], []
    for c in mine:
        path = record_path(folder, c)
        if not path.exists():
            todo.append(c)
        elif reuse == "same_code" and _record_code(path) != code["code"]:
            stale.append(c)
    if stale:
        warnings.warn(f"{len(stale)} of {len(mine)} records in {folder} were made by other library code than "
                      f"this ({code['code']}); they run again. Pass reuse='any' to keep them.", stacklevel=2)
    todo += stale
    if todo and os.environ.get(REPLAY_ENV):
        raise RuntimeError(f"{len(todo)} of {len(mine)} runs have no record to reuse in {folder} (the first: "
                           f"{todo[0]!r}), and ${REPLAY_ENV} forbids training: the records this chapter is "
                           f"re-rendered from lack them")
    _tell_manifest({"folder": str(folder), "total": len(mine), "todo": [config_id(c) for c in todo]})
    stacked = stack_key is not None
    chunks = stacks(todo, stack, stack_key) if stacked else [[c] for c in todo]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, disable=not progress)
    written_there = []  # records the workers wrote, checked below

    def keep(chunk, records):
        if shared_folder:
            written_there.extend(records)
        else:
            for record in records:
                save_record(folder, record)
        bar.update(len(chunk))

    worker_folder = folder if shared_folder else None
    lost_chunks = []
    if executor is None and workers == 1:
        for chunk in chunks:
            keep(chunk, _run_chunk(fn, chunk, worker_folder, code, stacked, device))
    elif executor is not None:
        futures = {executor.submit(_run_chunk, fn, chunk, worker_folder, code, stacked, device, True): chunk
                   for chunk in chunks}
        lost_chunks = _collect(futures, keep)
    else:
        # Processes rather than threads: each run holds the GIL for its Python loop.
        threads = max(1, devices.cpu_cores() // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(os.getpid(), threads)) as pool:
            futures = {pool.submit(_run_chunk, fn, chunk, worker_folder, code, stacked, device): chunk
                       for chunk in chunks}
            lost_chunks = _collect(futures, keep)
    bar.close()
    unseen = [r for r in written_there if not (folder / f"{r['id']}.json").exists()]
    if unseen:
        for record in unseen:
            save_record(folder, record)
        warnings.warn(f"{len(unseen)} records the workers wrote were not in {folder} as this machine sees it; "
                      f"written here from the results the workers returned. If the workers do not share this "
                      f"folder, pass shared_folder=False so that they write nothing.", stacklevel=2)
    results = read_records(folder, configs)
    lost = [c for chunk, _ in lost_chunks for c in chunk if not record_path(folder, c).exists()]
    if lost:
        raise SweepIncomplete(_lost_message(lost_chunks, lost, len(mine), folder), lost, results)
    _tell_manifest({"folder": str(folder), "ids": list(results["id"]) if len(results) else []})
    return results
