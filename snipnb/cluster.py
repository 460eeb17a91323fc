"""Where a sweep's runs go: a notebook's `cluster` parameter turned into an executor for `run_sweep`.

    "local"               None: the sweep's own processes (`workers`), on this machine
    "tcp://host:8786"     a running Dask scheduler (`dask scheduler`; `dask worker tcp://host:8786` on
                          each machine); any Dask address works (tls://, ...)
    "/path/sched.json"    the same, found through the file `dask scheduler --scheduler-file` wrote
    "slurm:16"            up to 16 batch jobs of Dask workers, submitted by dask-jobqueue as the grid
                          needs them and cancelled when it is done; also pbs, sge, lsf, oar, moab,
                          htcondor. Queue, cores, memory, walltime, GPUs and the job's environment
                          come from Dask's config, section `jobqueue.slurm` (~/.config/dask/jobqueue.yaml)

Dask is needed only for the last three (`pip install "dask[distributed]" dask-jobqueue`). The README
section "Running a grid on a cluster" says what the workers must share: the results folder, the
data root and the library's code.
"""

from __future__ import annotations

import json
import pathlib
import re
from concurrent.futures import Executor

# dask-jobqueue's cluster class for each batch system a spec may name.
BATCH_SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                 "oar": "OARCluster", "moab": "MoabCluster", "htcondor": "HTCondorCluster"}

FORMS = "'local', a Dask scheduler address 'tcp://host:8786', a scheduler file '*.json', or 'slurm:N' (N jobs)"


def parse_cluster(spec: str | None) -> tuple[str, str | int | None]:
    """('local', None), ('address', 'tcp://host:8786'), ('scheduler_file', path) or (batch system, jobs)."""
    if spec is None or str(spec).strip().lower() == "local":
        return "local", None
    spec = str(spec).strip()
    if "://" in spec:
        return "address", spec
    if spec.endswith(".json"):
        return "scheduler_file", spec
    match = re.fullmatch(r"([a-z]+)(?::(\d+))?", spec.lower())
    if match and match[1] in BATCH_SYSTEMS:
        if match[2] is None or int(match[2]) < 1:
            raise ValueError(f"cluster {spec!r}: say how many batch jobs may run at once, e.g. '{match[1]}:8'")
        return match[1], int(match[2])
    raise ValueError(f"cluster must be {FORMS}; got {spec!r}")


class DaskExecutor(Executor):
    """The executor of a Dask client that it owns: shutting it down closes the client, and the batch
    cluster it started (whose jobs are then cancelled). `client.dashboard_link` shows the runs."""

    def __init__(self, client, cluster=None, **submit_options):
        self.client, self.cluster = client, cluster
        # pure=False: a run is never taken from a cache of an earlier identical call.
        self._executor = client.get_executor(pure=False, **submit_options)

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._executor.shutdown(wait=wait and not cancel_futures)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __repr__(self):
        return f"DaskExecutor({self.client.scheduler.address}, dashboard {self.client.dashboard_link})"


def cluster_executor(spec: str | None = "local", *, gpus_per_run: int = 0,
                     connect_timeout: float = 10.0) -> DaskExecutor | None:
    """An executor for `run_sweep(executor=...)` from a `cluster` spec (see the module); None for
    'local'. `gpus_per_run > 0` makes each run (or stack) claim that many of a worker's `GPU`
    resources, so a worker started with `--resources GPU=1` runs one at a time, whatever its
    threads. Shut the executor down (or use it in a `with` block) to close what it opened; the
    end of the Python process does it too.

    An address that does not answer within `connect_timeout` seconds raises ConnectionError naming it.
    """
    kind, value = parse_cluster(spec)
    if gpus_per_run < 0:
        raise ValueError(f"gpus_per_run must be >= 0, got {gpus_per_run}")
    if kind == "local":
        return None
    resources = {"resources": {"GPU": gpus_per_run}} if gpus_per_run else {}
    if kind in BATCH_SYSTEMS:
        return _batch_executor(kind, value, gpus_per_run, resources)
    address = _read_scheduler_file(value) if kind == "scheduler_file" else value
    client = _connect(address, connect_timeout)
    if gpus_per_run:
        workers = client.scheduler_info()["workers"].values()
        # With no worker yet (they may be starting), there is nothing to check.
        if workers and not any(w.get("resources", {}).get("GPU", 0) >= gpus_per_run for w in workers):
            client.close()
            raise ValueError(f"gpus_per_run={gpus_per_run}, but no worker of {address} has that many GPU "
                             f"resources: start each worker with --resources GPU={gpus_per_run}")
    return DaskExecutor(client, **resources)


def _read_scheduler_file(path: str) -> str:
    try:
        return json.loads(pathlib.Path(path).read_text())["address"]
    except FileNotFoundError:
        raise FileNotFoundError(f"no scheduler file {path}: start the scheduler with `dask scheduler "
                                f"--scheduler-file {path}` on a file system this machine sees") from None
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a Dask scheduler file (JSON with an 'address'): {error}") from None


def _connect(address: str, timeout: float):
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except OSError as error:  # refused, unreachable, timed out
        raise ConnectionError(f"no Dask scheduler answered at {address} within {timeout:g} s ({error}). Is "
                              f"`dask scheduler` running there, and is its port open from this machine?") from None


def _batch_executor(system: str, jobs: int, gpus_per_run: int, resources: dict) -> DaskExecutor:
    import dask
    import dask_jobqueue
    from distributed import Client

    # A worker holds only the run it is running (Dask's default lets it queue one more), so a lost
    # job loses only its run, and a slow node does not keep a run the others could do.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        try:
            cluster = getattr(dask_jobqueue, BATCH_SYSTEMS[system])()
        except ValueError as error:
            raise ValueError(f"cluster '{system}:{jobs}': {error}. Its settings come from Dask's config, section "
                             f"jobqueue.{system} (README: Running a grid on a cluster)") from None
    script = cluster.job_script()
    if gpus_per_run and not re.search(r"--resources\s+\S*GPU=", script):
        cluster.close()
        raise ValueError(f"gpus_per_run={gpus_per_run}, but the {system} job's workers declare no GPU: add "
                         f"`worker-extra-args: [\"--resources\", \"GPU={gpus_per_run}\"]` to jobqueue.{system}")
    cluster.adapt(minimum_jobs=0, maximum_jobs=jobs)
    return DaskExecutor(Client(cluster), cluster, **resources)
