import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from snipnb.sweep import config_id, in_shard, parse_shard, read_records, record_path, run_sweep, stacks, write_record

sys.path.insert(0, str(Path(__file__).parent))
import sweep_job  # noqa: E402
from sweep_job import Job, grid, run  # noqa: E402


def _env(log) -> dict:
    """The environment of a sweep in a subprocess: it imports the snipnb under test, not another."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "SWEEP_TEST_LOG": str(log), "PYTHONPATH": path}


def table(df):
    return df.drop(columns=["seconds"]).sort_values("id").reset_index(drop=True)


def test_config_id_is_stable_and_sensitive_to_every_field():
    assert config_id(Job(1)) == config_id(Job(1))
    assert config_id(Job(1)) != config_id(Job(1, scale=2.0))

    @dataclasses.dataclass(frozen=True)
    class Other:
        seed: int
        scale: float = 1.0
        sleep: float = 0.0

    assert config_id(Other(1)) != config_id(Job(1))  # the class is part of the identity
    with pytest.raises(ValueError, match="config"):
        config_id({"seed": 1})


def test_a_rerun_skips_finished_runs_and_a_new_value_runs_only_new_cells(tmp_path, monkeypatch):
    log = tmp_path / "log"
    monkeypatch.setenv("SWEEP_TEST_LOG", str(log))
    first = run_sweep(run, grid(), tmp_path / "results", progress=False)
    assert len(first) == 8 and len(log.read_text().splitlines()) == 8
    more = grid() + [Job(seed=9)]
    second = run_sweep(run, more, tmp_path / "results", progress=False)
    assert log.read_text().splitlines()[8:] == ["start 9 1.0"]
    assert len(second) == 9


def test_a_killed_sweep_resumes_and_every_run_finishes_exactly_once(tmp_path):
    folder, log = tmp_path / "results", tmp_path / "log"
    env = _env(log)
    proc = subprocess.Popen([sys.executable, sweep_job.__file__, str(folder), "0.4"], env=env)
    deadline = time.time() + 120
    while len(list(folder.glob("*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = {p.stem for p in folder.glob("*.json")}
    assert 3 <= len(finished_before) < 8, "the sweep should have been killed half-way"
    assert len(read_records(folder)) == len(finished_before)  # every file left is a whole record
    started_before = len(log.read_text().splitlines())

    os.environ["SWEEP_TEST_LOG"] = str(log)
    try:
        resumed = run_sweep(run, grid(sleep=0.4), folder, progress=False)
    finally:
        del os.environ["SWEEP_TEST_LOG"]
    restarted = log.read_text().splitlines()[started_before:]
    # Only unfinished runs ran again (the one killed mid-way among them), each once.
    assert len(restarted) == 8 - len(finished_before) == len(set(restarted))
    assert len(resumed) == 8 and resumed.id.is_unique
    uninterrupted = run_sweep(run, grid(sleep=0.4), tmp_path / "clean", progress=False)
    pd.testing.assert_frame_equal(table(resumed), table(uninterrupted))


def test_two_shards_make_the_same_records_as_one_sweep(tmp_path):
    whole = run_sweep(run, grid(), tmp_path / "whole", progress=False)
    shard0 = run_sweep(run, grid(), tmp_path / "split", shard="0/2", progress=False)
    assert 0 < len(shard0) < 8  # a shard runs only its slice
    both = run_sweep(run, grid(), tmp_path / "split", shard="1/2", progress=False)
    pd.testing.assert_frame_equal(table(both), table(whole))
    assert all(in_shard(c, "0/2") != in_shard(c, "1/2") for c in grid())


def test_worker_processes_give_the_same_records(tmp_path):
    serial = run_sweep(run, grid(), tmp_path / "serial", progress=False)
    parallel = run_sweep(run, grid(), tmp_path / "parallel", workers=2, progress=False)
    pd.testing.assert_frame_equal(table(parallel), table(serial))


def test_partial_temporary_files_are_not_records(tmp_path):
    write_record(tmp_path, Job(1), {"value": 1.0}, 0.1)
    (tmp_path / f".{config_id(Job(2))}.json.123.tmp").write_text('{"trunc')
    assert list(read_records(tmp_path).seed) == [1]


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_bad_shards_are_rejected(shard):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(shard)


def test_bad_sweeps_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="configs"):
        run_sweep(run, [], tmp_path)
    with pytest.raises(ValueError, match="duplicates"):
        run_sweep(run, [Job(1), Job(1)], tmp_path)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(run, [Job(1)], tmp_path, workers=0)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its entry waits to be reaped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_workers_of_a_killed_sweep_exit_with_it(tmp_path):
    folder, log = tmp_path / "results", tmp_path / "log"
    env = _env(log)
    proc = subprocess.Popen([sys.executable, sweep_job.__file__, str(folder), "1.0", "2"], env=env)
    deadline = time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    children = _descendants(proc.pid)
    assert len(children) >= 2, "the pool workers should be running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "processes of the killed sweep live on"
    started = len(log.read_text().splitlines())
    time.sleep(1.5)  # nobody starts a run after the sweep died
    assert len(log.read_text().splitlines()) == started


def test_stacks_group_by_key_in_near_equal_chunks():
    jobs = [Job(seed=s, scale=scale) for s in range(5) for scale in (1.0, 2.0)]
    chunks = stacks(jobs, 2, lambda j: j.scale)
    assert [len(c) for c in chunks] == [2, 2, 1, 2, 2, 1]
    assert all(len({j.scale for j in c}) == 1 for c in chunks)
    assert [len(c) for c in stacks(jobs, 4, lambda j: j.scale)] == [3, 2, 3, 2]  # not 4 + 1
    assert sorted(config_id(j) for c in chunks for j in c) == sorted(config_id(j) for j in jobs)


def test_a_stacked_sweep_writes_one_record_per_run(tmp_path, monkeypatch):
    log = tmp_path / "log"
    monkeypatch.setenv("SWEEP_TEST_LOG", str(log))
    stacked = run_sweep(sweep_job.run_stack, grid(), tmp_path / "stacked", stack=3, stack_key=sweep_job.by_scale,
                        progress=False)
    # 4 jobs per scale and stacks of at most 3: two stacks of 2 each, not 3 + 1.
    assert [line for line in log.read_text().splitlines() if line.startswith("stack")] == ["stack 2"] * 4
    serial = run_sweep(run, grid(), tmp_path / "serial", progress=False)
    assert list(stacked.stack_size) == [2] * 8 and list(serial.stack_size) == [1] * 8
    pd.testing.assert_frame_equal(table(stacked).drop(columns="stack_size"), table(serial).drop(columns="stack_size"))


def test_a_stack_without_a_stack_key_is_refused_before_any_run(tmp_path):
    # Without a key the sweep cannot know which runs may train together; it used to run them one by
    # one without a word.
    with pytest.raises(ValueError, match="stack=4 needs stack_key"):
        run_sweep(run, grid(), tmp_path, stack=4, progress=False)
    assert not list(tmp_path.glob("*.json"))


def test_a_killed_stacked_sweep_resumes_without_loss_or_duplicates(tmp_path):
    folder, log = tmp_path / "results", tmp_path / "log"
    env = _env(log)
    proc = subprocess.Popen([sys.executable, sweep_job.__file__, str(folder), "0.3", "1", "2"], env=env)
    deadline = time.time() + 120
    while len(list(folder.glob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in folder.glob("*.json")}
    assert 2 <= len(finished) < 8 and len(finished) % 2 == 0  # whole stacks or nothing
    resumed = run_sweep(sweep_job.run_stack, grid(sleep=0.3), folder, stack=2, stack_key=sweep_job.by_scale,
                        progress=False)
    assert len(resumed) == 8 and resumed.id.is_unique
    assert finished <= set(resumed.id)


def test_records_say_which_code_made_them_and_other_code_is_not_reused(tmp_path, monkeypatch):
    from snipnb import provenance

    first = run_sweep(run, grid(), tmp_path, progress=False)
    now = provenance.code_version()
    assert set(first.code) == {now["code"]} and set(first.commit) == {now["commit"]}
    record = json.loads(record_path(tmp_path, grid()[0]).read_text())
    assert record["torch"] and record["snipnb"] and "dirty" in record
    # Another library version made one record: by default it runs again, with a warning.
    record["code"], record["result"]["value"] = "0000000000000000", 999.0
    record_path(tmp_path, grid()[0]).write_text(json.dumps(record))
    log = tmp_path / "log"
    monkeypatch.setenv("SWEEP_TEST_LOG", str(log))
    kept = run_sweep(run, grid(), tmp_path, reuse="any", progress=False)
    assert 999.0 in set(kept.value) and not log.exists()
    with pytest.warns(UserWarning, match="1 of 8 records .* other library code"):
        again = run_sweep(run, grid(), tmp_path, progress=False)
    assert 999.0 not in set(again.value) and log.read_text().splitlines() == ["start 0 1.0"]
    with pytest.raises(ValueError, match="reuse"):
        run_sweep(run, grid(), tmp_path, reuse="never")
