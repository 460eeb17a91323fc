"""Grids of short runs that resume, run in parallel and split across machines.

A run is a config, a frozen dataclass, and a function of it that returns a dict of results. The run's
identity is a hash of the config's class and fields, so the same settings always map to the same
record and adding a value to a grid only adds runs. Each finished run is one JSON file in the results
folder. It is written to a temporary name and renamed into place, so a run killed half-way leaves
nothing behind. Rerunning a sweep skips every config that has a record; `shard="i/n"` runs the
configs whose hash falls in slice i of n, so several GPUs or machines can fill one folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import pandas as pd
from tqdm import tqdm


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


def write_record(folder, config, result: dict, seconds: float) -> pathlib.Path:
    """Write one finished run atomically: a reader sees the whole record or none of it."""
    path = record_path(folder, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"id": config_id(config), "config_class": type(config).__name__,
              "config": dataclasses.asdict(config), "result": result, "seconds": seconds,
              "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_records(folder, configs=None) -> pd.DataFrame:
    """One row per finished run in `folder` (only those of `configs` if given): config fields, then results."""
    folder = pathlib.Path(folder)
    paths = ([record_path(folder, c) for c in configs] if configs is not None
             else sorted(folder.glob("*.json")))
    rows = []
    for path in paths:
        if path.exists():
            record = json.loads(path.read_text())
            rows.append({**record["config"], **record["result"], "seconds": record["seconds"], "id": record["id"]})
    return pd.DataFrame(rows)


def _start_worker(parent_pid: int, threads: int) -> None:
    """Pool worker set-up: share the CPU cores, and die with the process that started the sweep.

    A killed sweep (SIGKILL, a lost job on a cluster) cannot tell its workers to stop, and a worker
    left behind would go on taking runs, then block for ever, holding a GPU's memory. So every worker
    watches its parent and exits within a second of losing it.
    """
    import torch

    torch.set_num_threads(threads)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _run_one(fn, config, folder):
    start = time.perf_counter()
    result = fn(config)
    write_record(folder, config, result, time.perf_counter() - start)
    return config_id(config)


def run_sweep(fn, configs, folder, *, workers: int = 1, shard: str | None = None, progress: bool = True,
              desc: str = "runs") -> pd.DataFrame:
    """Run `fn(config)` for every config of this shard that has no record in `folder`; return all records.

    `fn` must be importable by name (a module-level function) when `workers > 1`: the runs go to
    `workers` processes, which share the CPU cores or one GPU. The returned table holds every config
    of `configs` that has a record, finished now or earlier, by this shard or another.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: nothing to run")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ids = [config_id(c) for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("configs has duplicates: every run must differ in at least one field")
    mine = [c for c in configs if in_shard(c, shard)]
    todo = [c for c in mine if not record_path(folder, c).exists()]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, disable=not progress)
    if workers == 1:
        for config in todo:
            _run_one(fn, config, folder)
            bar.update()
    else:
        # Processes rather than threads: each run holds the GIL for its Python loop.
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(os.getpid(), threads)) as pool:
            futures = [pool.submit(_run_one, fn, c, folder) for c in todo]
            for future in as_completed(futures):
                future.result()  # re-raise a failed run here, with its traceback
                bar.update()
    bar.close()
    return read_records(folder, configs)
