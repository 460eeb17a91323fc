"""Continual-learning metrics, all computed from the accuracy matrix alone.

`R[i, j]` is the accuracy on task j after training tasks 0..i (rows: training stages, columns:
tasks), T x T; `b[j]` is the accuracy on task j of the network at initialisation, before any task.
Accuracies may be fractions or percentages; each metric comes out in the same unit.
"""

from __future__ import annotations

import numpy as np


def _check(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R must be a square T x T accuracy matrix, got shape {R.shape}")
    _check_finite("R", R)
    return R


def _check_finite(name: str, values: np.ndarray) -> None:
    # A NaN accuracy (a diverged run, an empty test split) would otherwise come out as a NaN metric.
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        where = ", ".join(f"{name}[{', '.join(map(str, i))}] = {values[tuple(i)]}" for i in bad[:3])
        raise ValueError(f"{name} must hold finite accuracies, got {where}")


def average_accuracy(R) -> float:
    """Mean accuracy over all tasks after the last one: the mean of the last row."""
    return float(_check(R)[-1].mean())


def average_forgetting(R) -> float:
    """Chaudhry et al. (2018): for every task j but the last, the best accuracy it had once it was
    learned (rows j..T-2) minus its final accuracy, averaged. Rows before task j was trained are
    left out: they read an untrained head. FACIL and Mammoth compute the same in effect (they hold
    zeros before a task is trained). Avalanche's `forgetting` uses R[j, j] rather than the max;
    that is `-backward_transfer` here, term by term.
    """
    R = _check(R)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R) -> float:
    """Lopez-Paz & Ranzato (2017), BWT: mean over tasks but the last of R[T-1, j] - R[j, j].
    Negative means forgetting. Mammoth computes the same; Avalanche reports its sign flipped per task
    as `forgetting` (and averages over experiences seen, in its own stream order)."""
    R = _check(R)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R, b) -> float:
    """Lopez-Paz & Ranzato (2017), FWT: mean over tasks but the first of R[j-1, j] - b[j], what
    training earlier tasks did for a task before it was trained. Mammoth's `forward_transfer` is the
    same with b from a randomly initialised network, as here."""
    R = _check(R)
    b = np.asarray(b, dtype=float)
    if b.shape != (len(R),):
        raise ValueError(f"b must hold one accuracy per task ({len(R)}), got shape {b.shape}")
    _check_finite("b", b)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def summary(R, b) -> dict[str, float]:
    """All four metrics of one accuracy matrix, as a row for a results table."""
    return dict(avg_acc=average_accuracy(R), forgetting=average_forgetting(R), bwt=backward_transfer(R),
                fwt=forward_transfer(R, b))
