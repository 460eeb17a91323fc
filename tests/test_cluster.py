"""Sweeps on a Dask cluster, on loopback only: a LocalCluster on 127.0.0.1, and a fake Slurm."""

import functools
import json
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
# Imported before any dask.config.set below, whose exit would otherwise forget the defaults that
# dask-jobqueue adds to Dask's config when it is imported.
pytest.importorskip("dask_jobqueue")
import dask  # noqa: E402

from snipnb.cluster import DaskExecutor, cluster_executor, parse_cluster  # noqa: E402
from snipnb.sweep import SweepIncomplete, config_id, record_path, run_sweep  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import sweep_job  # noqa: E402
from sweep_job import Job, grid, run  # noqa: E402

# Keep worker logs quiet: a killed worker is expected here.
QUIET = {"logging.distributed": "critical"}


def table(df):
    return df.drop(columns=["seconds", "device"]).sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each. A run whose worker dies is not retried
    (allowed-failures 0), and a worker is sent only the run it is running (worker-saturation 1)."""
    settings = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0, **QUIET}
    with dask.config.set(settings), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local, distributed.Client(local) as client:
        yield client


def settled_workers(client, n=2, timeout=60) -> set[int]:
    """The pids of the cluster's workers once exactly `n` of them answer: after a worker is killed,
    its replacement has joined and the dead one has left (`wait_for_workers` counts the dead one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = client.run(os.getpid)
        except (OSError, distributed.comm.CommClosedError):  # a dead worker still registered
            pids = {}
        if len(pids) == n:
            return set(pids.values())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pids)} workers answer after {timeout} s, not {n}")
        time.sleep(0.2)


def idle(client, timeout=30):
    """Wait until no task is running or waiting to run, on the scheduler and on every worker: every
    run of a stopped sweep has ended."""
    def scheduled(dask_scheduler):
        return sum(ts.state in ("processing", "waiting", "queued", "no-worker") for ts in dask_scheduler.tasks.values())

    def executing(dask_worker):
        return len(dask_worker.state.executing) + len(dask_worker.state.ready)

    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(scheduled) or any(client.run(executing).values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster still runs tasks after {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def executor(cluster):
    with cluster_executor(cluster.scheduler.address) as ex:
        yield ex


def test_a_sweep_on_a_cluster_makes_the_records_of_a_local_sweep(cluster, executor, tmp_path):
    assert isinstance(executor, DaskExecutor)
    here = run_sweep(run, grid(), tmp_path / "here", device=sweep_job.whoami, progress=False)
    there = run_sweep(run, grid(), tmp_path / "there", executor=executor, device=sweep_job.whoami, progress=False)
    pd.testing.assert_frame_equal(table(there), table(here))
    # The device name is taken by the process that ran the config: a worker, not this one.
    workers = {f"pid {pid}" for pid in cluster.run(os.getpid).values()}
    assert set(here.device) == {f"pid {os.getpid()}"} and set(there.device) <= workers
    stacked = run_sweep(sweep_job.run_stack, grid(), tmp_path / "stacked", executor=executor, stack=2,
                        stack_key=sweep_job.by_scale, progress=False)
    assert list(stacked.stack_size) == [2] * 8
    pd.testing.assert_frame_equal(table(stacked).drop(columns="stack_size"), table(here).drop(columns="stack_size"))


def test_a_relative_folder_means_the_same_folder_on_the_workers(executor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_sweep(run, grid()[:2], "relative", executor=executor, progress=False)
    assert len(list((tmp_path / "relative").glob("*.json"))) == 2


def test_records_come_back_from_workers_that_do_not_share_the_folder(cluster, executor, tmp_path):
    # The workers' "shared" folder is another one than the client's: as on machines without a
    # shared file system.
    theirs = tmp_path / "on_the_workers"
    cluster.run(sweep_job.send_records_to, str(theirs))
    try:
        with pytest.warns(UserWarning, match="8 records the workers wrote were not in .* shared_folder=False"):
            shared = run_sweep(run, grid(), tmp_path / "a", executor=executor, progress=False)
        assert len(list(theirs.glob("*.json"))) == 8 and len(shared) == 8  # both have them
        for path in theirs.glob("*.json"):
            path.unlink()
        returned = run_sweep(run, grid(), tmp_path / "b", executor=executor, shared_folder=False, progress=False)
        assert not list(theirs.glob("*.json"))  # the workers wrote nothing: this process did
    finally:
        cluster.run(sweep_job.send_records_to, None)
    assert len(returned) == 8
    pd.testing.assert_frame_equal(table(returned), table(shared))


def test_a_killed_worker_costs_only_its_run_and_a_rerun_completes_it(cluster, executor, tmp_path):
    doomed = Job(seed=2, scale=2.0)
    deaths, folder = tmp_path / "deaths", tmp_path / "results"
    deaths.mkdir()
    (deaths / config_id(doomed)).touch()
    fn = functools.partial(sweep_job.run_or_die, deaths=str(deaths))
    workers_before = set(cluster.run(os.getpid).values())
    with pytest.raises(SweepIncomplete) as lost:
        run_sweep(fn, grid(), folder, executor=executor, progress=False)
    message = str(lost.value)
    assert message.startswith("1 of 8 runs were lost with their workers (KilledWorker") and repr(doomed) in message
    assert lost.value.lost == [doomed] and len(lost.value.results) == 7
    finished = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(finished) == 7 and record_path(folder, doomed).name not in finished  # nor a partial file

    assert settled_workers(cluster) != workers_before  # the nanny restarted the killed worker
    (deaths / config_id(doomed)).unlink()
    done = run_sweep(fn, grid(), folder, executor=executor, progress=False)
    assert len(done) == 8 and done.id.is_unique and len(list(folder.iterdir())) == 8
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in finished} == finished  # not rerun


def test_a_killed_local_worker_is_reported_and_a_rerun_completes_it(tmp_path):
    # Python's process pool breaks when one of its workers dies, so every unfinished run is lost
    # with it; they are reported the same way, and a rerun runs exactly those.
    doomed = Job(seed=1, scale=1.0)
    deaths, folder = tmp_path / "deaths", tmp_path / "results"
    deaths.mkdir()
    (deaths / config_id(doomed)).touch()
    fn = functools.partial(sweep_job.run_or_die, deaths=str(deaths))
    with pytest.raises(SweepIncomplete, match=r"runs were lost with their workers \(BrokenProcessPool") as lost:
        run_sweep(fn, grid(), folder, workers=2, progress=False)
    assert doomed in lost.value.lost
    assert str(lost.value).count("BrokenProcessPool") == 1  # one reason, however many runs it cost
    finished = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    unfinished = {record_path(folder, c).name for c in grid()} - set(finished)
    assert unfinished == {record_path(folder, c).name for c in lost.value.lost}  # every one reported
    (deaths / config_id(doomed)).unlink()
    done = run_sweep(fn, grid(), folder, progress=False)
    assert len(done) == 8 and done.id.is_unique
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in finished} == finished


def test_an_error_in_a_run_stops_the_sweep_with_that_error(executor, tmp_path):
    # A bug in the run is not a lost worker: it surfaces as itself, not as an incomplete sweep.
    with pytest.raises(ArithmeticError, match="failed on purpose"):
        run_sweep(functools.partial(sweep_job.run_or_raise, doomed=0), grid(), tmp_path, executor=executor,
                  progress=False)


def test_a_worker_running_other_library_code_is_refused(cluster, executor, tmp_path):
    # A long-lived `dask worker` keeps the code it imported; after a `git pull` its records would
    # name code it does not run.
    settled_workers(cluster)  # a worker joining later would not be pretending
    # A run left over from an earlier test may still be hashing the code it loaded: finishing after
    # the pretence, it would overwrite it with the real hash.
    idle(cluster)
    assert len(cluster.run(sweep_job.pretend_loaded_code, "0" * 16)) == 2
    try:
        with pytest.raises(RuntimeError, match=f"runs library code {'0' * 16}, the sweep's is .* Restart the workers"):
            run_sweep(run, grid(), tmp_path, executor=executor, progress=False)
        # The sweep stops at the first refusal and cancels the rest, but Dask may already have handed
        # a worker its next run, which is refused too: once nothing of that sweep runs any more,
        # no refused worker has written a record.
        idle(cluster)
        assert not list(tmp_path.glob("*.json"))
    finally:
        cluster.run(sweep_job.pretend_loaded_code, None)
    assert len(run_sweep(run, grid(), tmp_path, executor=executor, progress=False)) == 8


def test_one_run_at_a_time_per_gpu_whatever_the_threads(tmp_path):
    jobs = [Job(seed=s, sleep=0.3) for s in range(4)]
    with dask.config.set(QUIET), distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
        dashboard_address=":0", resources={"GPU": 1},
    ) as local:
        sweep_job.reset_counting()
        with cluster_executor(local.scheduler_address) as threads:
            free = run_sweep(sweep_job.run_counting, jobs, tmp_path / "free", executor=threads, progress=False)
        assert free.most_at_once.max() == 2  # the control: two threads run two at once
        sweep_job.reset_counting()
        with cluster_executor(local.scheduler_address, gpus_per_run=1) as gpus:
            one = run_sweep(sweep_job.run_counting, jobs, tmp_path / "gpu", executor=gpus, progress=False)
        assert one.most_at_once.max() == 1


def test_claiming_gpus_no_worker_has_is_refused(cluster):
    with pytest.raises(ValueError, match=r"no worker of tcp://127\.0\.0\.1:\d+ has .* --resources GPU=1"):
        cluster_executor(cluster.scheduler.address, gpus_per_run=1)


def test_an_unreachable_scheduler_is_a_clear_error_naming_it():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Dask scheduler answered at {address} within 2 s"):
        cluster_executor(address, connect_timeout=2)
    assert time.monotonic() - start < 30  # not Dask's own 30 s default


def test_a_missing_scheduler_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dask scheduler --scheduler-file"):
        cluster_executor(str(tmp_path / "scheduler.json"))


def test_a_scheduler_file_finds_the_scheduler(cluster, tmp_path):
    # What `dask scheduler --scheduler-file` writes, less what is not read.
    (tmp_path / "scheduler.json").write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler.address}))
    with cluster_executor(str(tmp_path / "scheduler.json")) as ex:
        assert ex.client.scheduler.address == cluster.scheduler.address


@pytest.mark.parametrize("spec, parsed", [
    (None, ("local", None)), ("local", ("local", None)), (" Local ", ("local", None)),
    ("tcp://10.0.0.1:8786", ("address", "tcp://10.0.0.1:8786")), ("tls://head:8786", ("address", "tls://head:8786")),
    ("/shared/scheduler.json", ("scheduler_file", "/shared/scheduler.json")),
    ("slurm:16", ("slurm", 16)), ("pbs:2", ("pbs", 2)),
])
def test_cluster_specs(spec, parsed):
    assert parse_cluster(spec) == parsed


def test_local_is_the_sweeps_own_processes():
    assert cluster_executor("local") is None and cluster_executor(None) is None


@pytest.mark.parametrize("spec, message", [
    ("slurm", "how many batch jobs"), ("slurm:0", "how many batch jobs"), ("kubernetes", "cluster must be"),
    ("10.0.0.1:8786", "cluster must be"), ("", "cluster must be"),
])
def test_bad_cluster_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_cluster(spec)


def test_bad_executor_arguments_are_refused(executor, tmp_path):
    with pytest.raises(ValueError, match="workers or executor"):
        run_sweep(run, grid(), tmp_path, executor=executor, workers=2)
    with pytest.raises(ValueError, match="get_executor"):
        run_sweep(run, grid(), tmp_path, executor=executor.client)
    with pytest.raises(ValueError, match="gpus_per_run"):
        cluster_executor("slurm:2", gpus_per_run=-1)


FAKE_SBATCH = """#!/usr/bin/env bash
# Runs the job script here, in its own process group, and answers as sbatch does.
n=$(ls "{jobs}" | wc -l)
cp "$1" "{jobs}/job$n.sh"
setsid bash "{jobs}/job$n.sh" > "{jobs}/job$n.log" 2>&1 < /dev/null &
echo $! >> "{jobs}/pids"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for id in "$@"; do kill -TERM -- "-$id" 2> /dev/null; done
exit 0
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks for processes left behind in /proc")
def test_a_sweep_on_slurm_through_dask_jobqueue(tmp_path, monkeypatch):
    """A fake sbatch that starts the job script on this machine: the job script, its settings, and the
    sweep, end to end; and no process is left once the executor is shut down."""
    bin_, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_.mkdir(), jobs.mkdir()
    for name, text in {"sbatch": FAKE_SBATCH.format(jobs=jobs), "scancel": FAKE_SCANCEL}.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    paths = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    jobqueue = {  # what a user writes in ~/.config/dask/jobqueue.yaml, section jobqueue.slurm
        "cores": 1, "processes": 1, "memory": "2GiB", "queue": "gpu", "walltime": "01:00:00",
        "job-extra-directives": ["--gres=gpu:1"], "worker-extra-args": ["--resources", "GPU=1"],
        "job-script-prologue": [f"export PYTHONPATH={paths}"],
        "scheduler-options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        "death-timeout": 15,
    }
    with dask.config.set({**QUIET, **{f"jobqueue.slurm.{k}": v for k, v in jobqueue.items()}}):
        with cluster_executor("slurm:1", gpus_per_run=1) as ex:
            results = run_sweep(run, grid()[:2], tmp_path / "results", executor=ex, progress=False)
    assert len(results) == 2
    script = (jobs / "job0.sh").read_text()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    assert not (jobs / "job1.sh").exists()  # slurm:1: one job at most
    pids = [int(line) for line in (jobs / "pids").read_text().split()]
    deadline = time.time() + 30
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "the Slurm job's worker outlived the executor"


def test_a_slurm_cluster_without_gpus_declared_is_refused(monkeypatch):
    loopback = {"host": "127.0.0.1", "dashboard_address": ":0"}
    with dask.config.set({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "1GiB",
                          "jobqueue.slurm.scheduler-options": loopback, **QUIET}):
        with pytest.raises(ValueError, match="worker-extra-args.*GPU=1"):
            cluster_executor("slurm:2", gpus_per_run=1)
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ValueError, match="jobqueue.slurm"):
            cluster_executor("slurm:2")
