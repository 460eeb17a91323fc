"""Run tables: the records a sweep returned, published as one CSV and rebuilt byte for byte."""

import dataclasses
import gzip
import json
import math

import pandas as pd
import pytest

from snipnb import runs
from snipnb.sweep import MANIFEST_ENV, REPLAY_ENV, make_record, read_records, run_sweep, save_record


@dataclasses.dataclass(frozen=True)
class ToyRun:
    seed: int
    method: str = "snip"
    lr: float = 0.05
    label: str = "5"  # a string JSON would read as a number
    empty: str = ""
    source: str | None = None
    ks: tuple = (1, 5)
    lrs: dict = dataclasses.field(default_factory=lambda: {"snow": 0.1, "ft": 1.0})
    flag: bool = False


@dataclasses.dataclass(frozen=True)
class OtherRun:
    seed: int
    tasks: int = 3


def toy(run: ToyRun) -> dict:
    return {"final_acc": 50 + run.seed / 3, "curve": [0.1, 1 / 3, run.seed], "forgetting": math.nan,
            "best_epoch": None, "converged": True, "note": "null"}


def other(run: OtherRun) -> dict:
    return {"R": [[1.0, 0.5], [0.25, 2 / 3]], "avg_acc": 0.75 * run.tasks}


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.json"))}


@pytest.fixture
def chapter(tmp_path, monkeypatch):
    """Two sweeps of a chapter into results/, one in a subfolder, as a notebook under run_book runs them."""
    results = tmp_path / "results"
    manifest = tmp_path / "manifest.jsonl"
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    run_sweep(toy, [ToyRun(seed=s, method=m) for s in range(3) for m in ("snip", "random")], results / "mnist",
              progress=False, device="cpu (test)")
    run_sweep(other, [OtherRun(seed=s) for s in range(2)], results / "mnist" / "serving", progress=False)
    monkeypatch.delenv(MANIFEST_ENV)
    return results, manifest


def test_a_table_rebuilds_every_record_byte_for_byte(chapter, tmp_path):
    results, manifest = chapter
    table = tmp_path / "book" / "data" / "chapter.csv.gz"
    written = runs.write_table(table, runs.table_of(manifest, results))
    assert written["runs"] == 8 and written["bytes"] == table.stat().st_size
    rebuilt = tmp_path / "rebuilt"
    runs.rebuild(table, rebuilt)
    assert files(rebuilt) == files(results) and len(files(results)) == 8
    # The same records make the same bytes: a re-rendered chapter leaves its table unchanged in git.
    again = tmp_path / "again.csv.gz"
    runs.write_table(again, runs.records(table))
    assert again.read_bytes() == table.read_bytes()


def test_an_id_that_json_reads_as_a_number_rebuilds(tmp_path, monkeypatch):
    # A hex id of digits and one "e" ("19810e3754318423") is a number to JSON, so its cell is quoted.
    from snipnb import sweep

    hex_id = sweep.config_id
    monkeypatch.setattr(sweep, "config_id", lambda config: f"{int(hex_id(config), 16) % 10 ** 6:06d}e{config.seed}")
    results, manifest = tmp_path / "results", tmp_path / "manifest.jsonl"
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    run_sweep(toy, [ToyRun(seed=s) for s in range(2)], results, progress=False)
    table = tmp_path / "chapter.csv.gz"
    runs.write_table(table, runs.table_of(manifest, results))
    runs.rebuild(table, tmp_path / "rebuilt")
    assert files(tmp_path / "rebuilt") == files(results) and len(files(results)) == 2


def test_pandas_reads_a_table_as_a_tidy_frame(chapter, tmp_path):
    results, manifest = chapter
    table = tmp_path / "chapter.csv.gz"
    runs.write_table(table, runs.table_of(manifest, results))
    frame = pd.read_csv(table)
    toys = frame[frame.config_class == "ToyRun"]
    assert len(frame) == 8 and list(frame.columns[:3]) == ["id", "config_class", "folder"]
    assert set(frame.folder) == {"mnist", "mnist/serving"}
    assert sorted(toys.final_acc) == sorted(read_records(results / "mnist").final_acc)
    assert set(toys.method) == {"snip", "random"} and toys.seed.dtype.kind == "i"
    assert json.loads(toys.curve.iloc[1]) == [0.1, 1 / 3, 0]  # lists are JSON strings
    assert toys.flag.tolist() == [False] * 6 and toys.forgetting.isna().all()
    assert set(frame.device.dropna()) == {"cpu (test)"} and {"code", "commit", "dirty", "stack_size"} <= set(frame)


def test_a_row_that_does_not_hash_to_its_id_is_refused(chapter, tmp_path):
    results, manifest = chapter
    table = tmp_path / "chapter.csv.gz"
    runs.write_table(table, runs.table_of(manifest, results))
    lines = gzip.decompress(table.read_bytes()).decode().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("lr")] = "0.5"
    table.write_bytes(gzip.compress("\n".join([*lines[:3], ",".join(row), *lines[4:]]).encode() + b"\n"))
    with pytest.raises(ValueError, match=r"line 4 \(id [0-9a-f]{16}\): its ToyRun config hashes to [0-9a-f]{16}, not"):
        runs.rebuild(table, tmp_path / "rebuilt")
    assert not (tmp_path / "rebuilt").exists()  # checked before anything is written


def test_records_outside_the_results_dir_make_no_table(chapter, tmp_path):
    results, manifest = chapter
    with pytest.raises(ValueError, match="outside the chapter's results_dir"):
        runs.table_of(manifest, results / "mnist" / "serving")


def test_a_result_named_like_a_record_field_is_refused(tmp_path):
    record = make_record(ToyRun(seed=0), {"final_acc": 1.0, "seconds": 2.0}, 1.0)
    with pytest.raises(ValueError, match=r"\['seconds'\]"):
        runs.table_text([(".", record)])


def test_the_table_columns_cover_what_a_record_holds():
    # A field added to sweep.make_record must get a column, or the records would not rebuild exactly.
    record = make_record(ToyRun(seed=0), {"final_acc": 1.0}, 1.0)
    assert set(record) == set(runs.RECORD_FIELDS) | {"config", "result"}
    assert [k for k in record if k not in ("config", "result")] == list(runs.RECORD_FIELDS)


def test_a_replayed_sweep_trains_nothing_and_names_what_it_lacks(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    for seed in range(2):
        save_record(folder, make_record(ToyRun(seed=seed), toy(ToyRun(seed=seed)), 1.0))
    monkeypatch.setenv(REPLAY_ENV, "1")
    trained = []

    def train(run):
        trained.append(run)
        return toy(run)

    assert len(run_sweep(train, [ToyRun(seed=s) for s in range(2)], folder, progress=False, reuse="any")) == 2
    with pytest.raises(RuntimeError, match=r"1 of 3 runs have no record to reuse .*ToyRun\(seed=2"):
        run_sweep(train, [ToyRun(seed=s) for s in range(3)], folder, progress=False, reuse="any")
    assert trained == []


def test_the_manifest_says_what_each_sweep_has_to_do(tmp_path, monkeypatch):
    manifest = tmp_path / "manifest.jsonl"
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    folder = tmp_path / "results"
    run_sweep(toy, [ToyRun(seed=0)], folder, progress=False)
    run_sweep(toy, [ToyRun(seed=0), ToyRun(seed=1)], folder, progress=False)
    started = runs.sweeps_started(manifest)
    assert [(s["total"], len(s["todo"])) for s in started] == [(1, 1), (2, 1)]
    assert [id_ for _, id_ in runs.used_records(manifest)] == list(read_records(folder, [ToyRun(0), ToyRun(1)]).id)
