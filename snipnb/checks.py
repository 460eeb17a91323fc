"""Argument checks that name the argument and the value, so a bad setting fails where it was made."""

from __future__ import annotations

import numbers


def one_of(argument: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {tuple(allowed)}, got {value!r}")


def integer(argument: str, value, least: int | None = None, most: int | None = None) -> None:
    """`value` is an int (not a bool) within [least, most]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{argument} must be an int, got {value!r}")
    _within(argument, value, least, most)


def number(argument: str, value, least: float | None = None, most: float | None = None, *,
           above: float | None = None, below: float | None = None) -> None:
    """`value` is a real number (not NaN) within [least, most] and (above, below)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{argument} must be a number, got {value!r}")
    _within(argument, value, least, most)
    if above is not None and not value > above:
        raise ValueError(f"{argument} must be > {above}, got {value!r}")
    if below is not None and not value < below:
        raise ValueError(f"{argument} must be < {below}, got {value!r}")


def _within(argument, value, least, most) -> None:
    if least is not None and value < least:
        raise ValueError(f"{argument} must be >= {least}, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{argument} must be <= {most}, got {value!r}")


def budgets(argument: str, value) -> list[int]:
    """A budget parameter that is none (None or 0), one budget (an int), or a ladder of budgets (a
    list of increasing ints), as the list of its budgets."""
    if value is None or (not isinstance(value, bool) and isinstance(value, numbers.Integral) and value == 0):
        return []
    if not isinstance(value, (list, tuple)):
        integer(argument, value, 1)
        return [value]
    for i, length in enumerate(value):
        integer(f"{argument}[{i}]", length, 1)
    if not value or any(longer <= shorter for shorter, longer in zip(value, value[1:])):
        raise ValueError(f"{argument} must be increasing budgets, got {value!r}")
    return list(value)
