"""Would bf16 training change chapter 02's findings? Its declared contrasts at fp32 and at bf16, tested for equivalence.

`transfer_bf16.py` shows bf16 autocast training runs chapter 02's last-block fine-tuning 1.5x faster on
a CPU with native bf16, and moves a run's final accuracy by a few tenths of a point. Whether a chapter
may adopt it depends on its findings, not its runs: this script re-runs the runs behind the chapter's
declared contrasts (the last block fine-tuned at the chapter's chosen learning rate: dense, and SNIP,
random and shuffled SNIP at the focus sparsity, every k and seed of the published table) in bf16, and
tests each contrast's change (its bf16 value − its fp32 value, per seed after averaging over k, as the
chapter pairs them) for equivalence with TOST, Holm across the family.

The margin is fixed here, before any bf16 run: MARGIN points. Less than a tenth of the smallest effect the
chapter detected (SNIP − shuffled SNIP, +5.9 points) and of its detectable effect (about ±10 points).

Both sides are made here, each run once in fp32 and once in bf16 (the order alternating from run to
run), from the same pretrained source. Not the published table: a re-run of the chapter's runs does not
reproduce its accuracies bit for bit (the source pretrained again, on another thread count, is not the
same bit for bit, and a few-shot run amplifies any difference), so the table is shown beside both as
what a re-run of the chapter moves, not used as the fp32 side.

    SNIPNB_DATA=... OMP_NUM_THREADS=1 python benchmarks/transfer_bf16_equivalence.py --shard 0/2 --out DIR &
    SNIPNB_DATA=... OMP_NUM_THREADS=1 python benchmarks/transfer_bf16_equivalence.py --shard 1/2 --out DIR
    python benchmarks/transfer_bf16_equivalence.py --analyse --out DIR
"""

from __future__ import annotations

import argparse
import pathlib
import time

import pandas as pd

import transfer_cell
from snipnb import runs as run_tables
from snipnb import transfer
from snipnb.contrasts import Contrast, describe_contrast, evaluate_contrasts
from snipnb.provenance import code_version, device_name
from snipnb.transfer import TransferRun

TABLE = pathlib.Path(__file__).resolve().parents[1] / "book" / "data" / "02_transfer_mnist5to9.csv.gz"
MARGIN = 1.0  # points of final test accuracy, fixed before the bf16 runs
FOCUS = dict(train_blocks="last_block", lr=0.05, epochs=30, eval_every=15)  # the chapter's grid at its chosen lr
SPARSITY = 0.9
CONTROLS = {"SNIP − dense fine-tuning": ("dense", 0.0), "SNIP − random": ("random", SPARSITY),
            "SNIP − shuffled SNIP": ("shuffled_snip", SPARSITY)}


def published_runs(table: pathlib.Path = TABLE) -> pd.DataFrame:
    """The published fp32 runs behind the declared contrasts: 4 methods x every k x every seed."""
    runs = pd.read_csv(table)
    focus = (runs[list(FOCUS)] == pd.Series(FOCUS)).all(axis=1)
    wanted = runs.method.eq("snip") & runs.sparsity.eq(SPARSITY)
    for method, sparsity in CONTROLS.values():
        wanted |= runs.method.eq(method) & runs.sparsity.eq(sparsity)
    chosen = runs[focus & wanted].sort_values(["seed", "k", "method"]).reset_index(drop=True)
    if chosen.groupby(["method", "sparsity"]).size().nunique() != 1:
        raise ValueError(f"{table}: expected as many runs per method, got {chosen.groupby('method').size().to_dict()}")
    return chosen


def published_configs(table: pathlib.Path = TABLE) -> dict[str, TransferRun]:
    """Every published record's `TransferRun` by id, rebuilt as `snipnb.runs.records` reads a run table."""
    return {record["id"]: TransferRun(**record["config"]) for _, record in run_tables.records(table)}


def run(config: TransferRun, bf16: bool) -> tuple[float, float]:
    """(final accuracy, seconds) of one run with its training step in bf16 autocast or in fp32."""
    with transfer_cell.training_precision(bf16):
        start = time.perf_counter()
        accuracy = transfer_cell.final_acc(config)
        return accuracy, time.perf_counter() - start


def execute(args) -> None:
    index, count = (int(part) for part in args.shard.split("/"))
    published, configs = published_runs(), published_configs()
    mine = published.iloc[index::count]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"shard{index}of{count}.csv"
    done = set(pd.read_csv(path).id) if path.exists() else set()
    transfer.source_backbone(configs[mine.id.iloc[0]])  # pretrained or read from the cache before any run
    print(f"{device_name('cpu')}; code {code_version()}; {len(mine)} runs, {len(done)} already done", flush=True)
    for i, (_, row) in enumerate(mine.iterrows()):
        for bf16 in ([True, False] if i % 2 == 0 else [False, True]):  # neither precision always runs first
            precision = "bf16" if bf16 else "fp32"
            if f"{row.id}:{precision}" in done:
                continue
            accuracy, seconds = run(configs[row.id], bf16)
            record = dict(id=f"{row.id}:{precision}", published_id=row.id, precision=precision, method=row.method,
                          k=row.k, seed=row.seed, final_acc=accuracy, published_acc=row.final_acc, seconds=seconds,
                          **{f"code_{key}": value for key, value in code_version().items()})
            pd.DataFrame([record]).to_csv(path, mode="a", header=not path.exists(), index=False)
            print(f"[{i + 1}/{len(mine)}] {row.method} k={row.k} seed={row.seed} {precision}: {accuracy:.1f} "
                  f"(published {row.final_acc:.1f}), {seconds:.1f} s", flush=True)


def contrast_values(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (precision, seed, k): each declared contrast's value, SNIP at SPARSITY − its control."""
    wide = runs.pivot_table(index=["precision", "seed", "k"], columns="method", values="final_acc")
    rows = [dict(precision=p, seed=s, k=k, contrast=name, value=wide.loc[(p, s, k), "snip"] - wide.loc[(p, s, k), control])
            for (p, s, k) in wide.index for name, (control, _) in CONTROLS.items()]
    return pd.DataFrame(rows)


def per_run(a: pd.Series, b: pd.Series) -> str:
    change = a.to_numpy() - b.to_numpy()
    return (f"mean {change.mean():+.2f}, sd {change.std(ddof=1):.2f}, largest |difference| {abs(change).max():.2f} "
            f"points over {len(change)} runs")


def analyse(args) -> None:
    made = pd.concat([pd.read_csv(p) for p in sorted(args.out.glob("shard*.csv"))], ignore_index=True)
    published = published_runs()
    fp32, bf16 = (made[made.precision == p].set_index("published_id").reindex(published.id) for p in ("fp32", "bf16"))
    if fp32.final_acc.isna().any() or bf16.final_acc.isna().any():
        raise SystemExit(f"not every run made yet: {fp32.final_acc.notna().sum()} fp32 and {bf16.final_acc.notna().sum()} "
                         f"bf16 of {len(published)}")
    print(f"fp32 here − published: {per_run(fp32.final_acc, fp32.published_acc)}; "
          f"{int((fp32.final_acc.round(6) == fp32.published_acc.round(6)).sum())} identical")
    print(f"bf16 − fp32, both here: {per_run(bf16.final_acc, fp32.final_acc)}")
    print(f"seconds per run (median, min): fp32 {fp32.seconds.median():.1f}, {fp32.seconds.min():.1f}; "
          f"bf16 {bf16.seconds.median():.1f}, {bf16.seconds.min():.1f}; total fp32 {fp32.seconds.sum():.0f} s, "
          f"bf16 {bf16.seconds.sum():.0f} s")
    sides = {"published": published.assign(precision="published"),
             "fp32": fp32.reset_index(drop=True), "bf16": bf16.reset_index(drop=True)}
    both = pd.concat([side.assign(precision=name)[["precision", "method", "k", "seed", "final_acc"]]
                      for name, side in sides.items()], ignore_index=True)
    values = contrast_values(both)
    means = values.groupby(["contrast", "precision", "seed"]).value.mean().groupby(["contrast", "precision"]).mean()
    family = [Contrast(f"change in {name} (bf16 − fp32)", "value", {"precision": "bf16"}, {"precision": "fp32"},
                       within={"contrast": name}, average_over=("k",), kind="equivalence", margin=MARGIN)
              for name in CONTROLS]
    tested = evaluate_contrasts(values, family)
    print(f"declared contrasts (mean over seeds of the mean over k), and their change tested for equivalence "
          f"within ±{MARGIN} points (TOST, Holm over {len(family)}):")
    for (_, row), name in zip(tested.iterrows(), CONTROLS):
        print(f"- {name}: published {means[(name, 'published')]:+.2f}, fp32 here {means[(name, 'fp32')]:+.2f}, "
              f"bf16 here {means[(name, 'bf16')]:+.2f}. " + describe_contrast(row))
    rerun = [Contrast(f"change in {name} (fp32 here − published)", "value", {"precision": "fp32"},
                      {"precision": "published"}, within={"contrast": name}, average_over=("k",))
             for name in CONTROLS]
    print("for scale, what re-running the chapter in fp32 moved (exploratory, per seed over k):")
    for _, row in evaluate_contrasts(values, rerun).iterrows():
        print(f"- {row['contrast']}: {row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], "
              f"sd over seeds {row['sd']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the shards' CSVs")
    parser.add_argument("--shard", default="0/1", help="i/n: this process makes every n-th run from the i-th")
    parser.add_argument("--analyse", action="store_true", help="read the shards and test the contrasts' changes")
    args = parser.parse_args()
    analyse(args) if args.analyse else execute(args)


if __name__ == "__main__":
    main()
