"""What every chapter notebook does first: refuse parameters it does not declare, or of the wrong
type, before a long run starts with the defaults.

papermill injects a cell that starts with "# Parameters" right after the cell tagged `parameters`.
A misspelled name there (`-p epoch 1`) would only define an unused variable and run the defaults,
so `check_parameters` compares the injected names and values with the declared ones.
"""

from __future__ import annotations

import ast

INJECTED_HEADER = "# Parameters"


def assigned(source: str) -> dict[str, object]:
    """Names assigned at the top level of `source`, with their literal values (None when not literal)."""
    values = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and node.value is not None:
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    values[target.id] = None
    return values


def _compatible(default, given) -> bool:
    if default is None or given is None:
        return True  # None means "pick for me" and takes any value; a computed default takes any
    if isinstance(default, bool) or isinstance(given, bool):
        return isinstance(default, bool) == isinstance(given, bool)
    if isinstance(default, (int, float)) and isinstance(given, (int, float)):
        return not (isinstance(default, int) and isinstance(given, float) and not given.is_integer())
    if isinstance(default, (list, tuple)) and isinstance(given, (list, tuple)):
        return True
    return type(default) is type(given)


def unknown_parameters(declared_source: str, injected_source: str) -> list[str]:
    """Problems with papermill's injected parameters: undeclared names, or values whose type does not
    match the declared default. Empty when all is well."""
    declared, given = assigned(declared_source), assigned(injected_source)
    problems = [f"unknown parameter {name!r}" for name in given if name not in declared]
    problems += [f"parameter {name!r} must be a {type(declared[name]).__name__} like its default "
                 f"{declared[name]!r}, got {value!r}"
                 for name, value in given.items() if name in declared and not _compatible(declared[name], value)]
    return problems


def check_parameters(history: list[str] | None = None) -> None:
    """Raise ValueError if papermill injected a parameter the notebook does not declare (or of another
    type), naming it and listing the declared ones. Call it in the cell after `parameters`.
    `history` is IPython's `In` (the executed cells' sources); it is read from the kernel if None."""
    if history is None:
        from IPython import get_ipython

        shell = get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    injected = [i for i, source in enumerate(history) if source.lstrip().startswith(INJECTED_HEADER)]
    if not injected or injected[-1] == 0:
        return  # run by hand or with the defaults: nothing was injected
    declared_source, injected_source = history[injected[-1] - 1], history[injected[-1]]
    problems = unknown_parameters(declared_source, injected_source)
    if problems:
        names = ", ".join(assigned(declared_source))
        raise ValueError("; ".join(problems) + f". This notebook's parameters are: {names}") from None


def pick(name: str, value, grid, preferred=None):
    """A parameter that names one value of a grid (the focus of a plot or a verdict): `value` if
    given, which must be in `grid` (else a ValueError names the parameter); when None, `preferred`
    if the grid has it, else the grid's value nearest to it (the smaller on a tie), else the first.
    So a user who narrows a grid (`-y "ks: [1, 2]"`) need not also set the parameter that points into it."""
    grid = list(grid)
    if not grid:
        raise ValueError(f"{name} points into an empty grid")
    if value is not None:
        if value not in grid:
            raise ValueError(f"{name} must be one of {tuple(grid)}, got {value!r}")
        return value
    if preferred in grid:
        return preferred
    numbers = [v for v in grid if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and isinstance(preferred, (int, float)):
        return min(numbers, key=lambda v: (abs(v - preferred), v))
    return grid[0]
