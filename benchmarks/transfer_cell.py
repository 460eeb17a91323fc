"""What the transfer benchmarks share: one cell of chapter 02's 0-4 -> 5-9 grid as a sweep worker meets
it (the last block of the CIFAR-stem ResNet-18 fine-tuned at 32 px: dense, then SNIP and random at 90%),
its command-line settings, the line that describes it, and bf16 training swapped in for fp32."""

from __future__ import annotations

import argparse
import functools
import os
from unittest import mock

import torch

from snipnb import train, transfer
from snipnb.provenance import device_name
from snipnb.transfer import TransferRun


def add_arguments(parser: argparse.ArgumentParser, *, k: int, repeats: int) -> None:
    parser.add_argument("--source", default="mnist:0-4")
    parser.add_argument("--target", default="mnist:5-9")
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=k)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=repeats)


def cell(args) -> list[TransferRun]:
    common = dict(source=args.source, target=args.target, image_size=32, stem="cifar", source_epochs=args.source_epochs,
                  k=args.k, epochs=args.epochs, eval_every=15, test_per_class=200, val_per_class=10, lr=args.lr,
                  train_blocks="last_block")
    return [TransferRun(**common)] + [TransferRun(**common, method=m, sparsity=0.9) for m in ("snip", "random")]


def prepare(args, runs) -> None:
    """Pretrain the runs' source, or read it from the cache, before any timing; print the setting."""
    transfer.source_backbone(runs[0])
    print(f"device: {device_name('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.source} -> {args.target}, k={args.k}, {args.epochs} epochs, {len(runs)} runs per repeat; "
          f"load average {os.getloadavg()[0]:.1f}")


def final_acc(run: TransferRun) -> float:
    return transfer.run_transfer(run, device="cpu")["final_acc"]


def training_precision(bf16: bool):
    """A context in which `transfer`'s runs train in bf16 autocast (`fit(amp=True)`) or in fp32."""
    return mock.patch.object(transfer, "fit", functools.partial(train.fit, amp=bf16))
