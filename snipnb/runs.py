"""A chapter's runs as one published table, and the sweep records rebuilt from it.

Every number in the book comes from sweep records (one JSON file per run under `results/`, see
`snipnb.sweep`), and `results/` is not in git. So `scripts/run_book.py` publishes the records each
chapter used as one gzipped CSV beside it, `book/data/<chapter>.csv.gz`: one row per run, with

- `id`, `config_class` and `folder` (the record's folder, relative to the chapter's `results_dir`);
- the config's fields (the seed among them), then the run's results: numbers as numbers, lists
  (per-evaluation curves, accuracy matrices) as JSON strings;
- where the record came from: `seconds`, `stack_size`, `code` (the library-code hash), `commit`,
  `dirty`, `device`, `snipnb`, `torch`, `host`, `finished`;
- `config_fields`, the names of the row's config fields, so that the records rebuild exactly.

pandas reads it as it is (`pd.read_csv(path)`). Each cell is the value's JSON, except a string that
JSON would read as something else, which is written plain (`snip`, not `"snip"`); an empty cell is a
field the run's config class or results do not have, and `null` is None. `rebuild` writes the records
back, byte for byte, after checking that every row's config still hashes to its id.

`used_records` and `sweeps_started` read the manifest that `run_sweep` appends to when
`$SNIPNB_MANIFEST` is set: which records a notebook's sweeps returned, and how far they have got.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pathlib

import pandas as pd

from . import sweep

# A record's fields besides its config and its results, in the order `sweep.make_record` writes them.
RECORD_FIELDS = ("id", "config_class", "seconds", "code", "commit", "dirty", "snipnb", "torch", "stack_size",
                 "device", "host", "finished")
FIRST, LAST = ("id", "config_class", "folder"), ("config_fields",)


def _reads_as_other(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return text == ""
    return True


def _cell(value) -> str:
    if isinstance(value, str) and not _reads_as_other(value):
        return value
    return json.dumps(value)


def _value(cell: str):
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def _check_fields(record: dict, where: str) -> None:
    extra = set(record) - set(RECORD_FIELDS) - {"config", "result"}
    missing = set(RECORD_FIELDS) - set(record)
    if extra or missing:
        raise ValueError(f"{where}: a record with fields {sorted(extra)} beyond, or {sorted(missing)} short of, those "
                         f"a run table has columns for ({', '.join(RECORD_FIELDS)}); update snipnb.runs.RECORD_FIELDS")
    config, result = record["config"], record["result"]
    reserved = set(RECORD_FIELDS) | set(FIRST) | set(LAST)
    clashes = sorted((set(config) & (reserved | set(result))) | (set(result) & reserved))
    if clashes:
        raise ValueError(f"{where}: the field names {clashes} of {record['config_class']} {record['id']} would share a "
                         f"column with another field (a config field, a result or {', '.join(sorted(reserved))})")


def table_text(runs: list[tuple[str, dict]]) -> str:
    """The CSV text of `runs`, a list of (folder relative to the results_dir, record)."""
    rows, config_columns, result_columns = [], {}, {}
    for folder, record in runs:
        _check_fields(record, f"{folder}/{record.get('id')}.json")
        config_columns.update(dict.fromkeys(record["config"]))
        result_columns.update(dict.fromkeys(record["result"]))
        rows.append({"folder": folder, **{k: _cell(v) for k, v in record["config"].items()},
                     **{k: _cell(v) for k, v in record["result"].items()},
                     **{k: _cell(record[k]) for k in RECORD_FIELDS},
                     "config_fields": json.dumps(list(record["config"]))})
    columns = [*FIRST, *config_columns, *result_columns, *(f for f in RECORD_FIELDS if f not in FIRST), *LAST]
    frame = pd.DataFrame(rows, columns=columns, dtype=object).fillna("")
    return frame.to_csv(index=False, lineterminator="\n")


def summary(text: str) -> dict:
    """What a page records of its table, to know it again: runs, the library codes that made them,
    and a hash of the table's text."""
    frame = _frame(text)
    return {"runs": len(frame), "codes": sorted({_value(c) for c in frame["code"]}) if len(frame) else [],
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def write_table(path, runs: list[tuple[str, dict]]) -> dict:
    """Write `runs` (see `table_text`) as a gzipped CSV at `path`, byte for byte the same for the same
    records; return its `summary` with its size in bytes."""
    text = table_text(runs)
    data = gzip.compress(text.encode(), mtime=0)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {**summary(text), "bytes": len(data)}


def read_text(path) -> str:
    return gzip.decompress(pathlib.Path(path).read_bytes()).decode()


def _frame(text: str) -> pd.DataFrame:
    # Every cell as its text: the types are in the text (see the module's docstring).
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)


def config_hash(config_class: str, config: dict) -> str:
    """`sweep.config_id` of the config a record holds, without its class: the id depends only on the
    class's name and the field values."""
    return sweep.config_id(dataclasses.make_dataclass(config_class, list(config))(**config))


def records(path) -> list[tuple[str, dict]]:
    """The table at `path` as (folder, record) pairs, the records as `sweep.make_record` made them.
    Raises ValueError, naming the line, for a row whose config does not hash to its id or whose folder
    leaves the results_dir."""
    path = pathlib.Path(path)
    frame = _frame(read_text(path))
    missing = [c for c in (*FIRST, *RECORD_FIELDS, *LAST) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a run table: it has no column {', '.join(missing)}")
    fixed = set(FIRST) | set(RECORD_FIELDS) | set(LAST)
    out = []
    for line, row in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        # An id JSON would read as a number ("19810e3754318423") is written quoted, as any such cell.
        row.update({c: _value(row[c]) for c in RECORD_FIELDS[:2]})
        where = f"{path}, line {line} (id {row['id']})"
        names = json.loads(row["config_fields"])
        empty = [n for n in names if row.get(n, "") == ""]
        if empty:
            raise ValueError(f"{where}: no value for the config field(s) {', '.join(empty)}")
        config = {n: _value(row[n]) for n in names}
        result = {c: _value(v) for c, v in row.items() if c not in fixed and c not in names and v != ""}
        record = {"id": row["id"], "config_class": row["config_class"], "config": config, "result": result,
                  **{k: _value(row[k]) for k in RECORD_FIELDS[2:]}}
        actual = config_hash(row["config_class"], config)
        if actual != row["id"]:
            raise ValueError(f"{where}: its {row['config_class']} config hashes to {actual}, not to its id: the row "
                             f"was changed, or its config class has gained or lost a field since")
        folder = pathlib.PurePosixPath(row["folder"])
        if folder.is_absolute() or ".." in folder.parts:
            raise ValueError(f"{where}: folder {row['folder']!r} is not inside the results_dir")
        out.append((row["folder"], record))
    return out


def rebuild(path, results_dir) -> list[pathlib.Path]:
    """Write the records of the table at `path` under `results_dir`, each in its folder, as the sweep
    wrote them (checked as `records` checks them, before any is written); return their paths."""
    runs = records(path)
    return [sweep.save_record(pathlib.Path(results_dir) / folder, record) for folder, record in runs]


def _manifest(manifest) -> list[dict]:
    path = pathlib.Path(manifest)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line being written as we read
            break
    return entries


def used_records(manifest) -> list[tuple[pathlib.Path, str]]:
    """(folder, id) of every record the notebook's sweeps returned, in order, each once."""
    seen = {}
    for entry in _manifest(manifest):
        for id_ in entry.get("ids", []):
            seen.setdefault((pathlib.Path(entry["folder"]), id_), None)
    return list(seen)


def sweeps_started(manifest) -> list[dict]:
    """Each sweep the notebook started: its `folder`, `total` runs and the ids it had `todo`."""
    return [e for e in _manifest(manifest) if "todo" in e]


def table_of(manifest, results_dir) -> list[tuple[str, dict]]:
    """The records the manifest names, as (folder relative to `results_dir`, record) for `write_table`.
    Raises ValueError if a record lies outside `results_dir` (the table could not rebuild it there)."""
    results_dir = pathlib.Path(results_dir).resolve()
    runs = []
    for folder, id_ in used_records(manifest):
        try:
            relative = folder.resolve().relative_to(results_dir)
        except ValueError:
            raise ValueError(f"the records in {folder} are outside the chapter's results_dir {results_dir}, "
                             f"so no table can put them back") from None
        runs.append((relative.as_posix(), json.loads((folder / f"{id_}.json").read_text())))
    return runs
