"""Every notebook is a Jupytext pair, and the two halves say the same thing."""

import pathlib

import jupytext
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.py"))


def cells(notebook):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in notebook.cells]


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_and_ipynb_are_in_sync(script):
    paired = script.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --sync {script}`"
    assert cells(jupytext.read(script)) == cells(jupytext.read(paired)), (
        f"{script.name} and {paired.name} differ: run `jupytext --sync {script}`")


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_for_papermill(script):
    tagged = [c for c in jupytext.read(script).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_ipynb_carries_no_outputs(script):
    # Executed copies live in book/experiments/; the paired notebook stays a clean source.
    notebook = jupytext.read(script.with_suffix(".ipynb"))
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_book_shows_findings_not_code(script):
    # A chapter's reader sees outputs: every code cell hides its input (a click shows it) or is
    # removed, and one cell, tagged `findings`, states what the chapter found (scripts/findings.py).
    code = [c for c in jupytext.read(script).cells if c.cell_type == "code"]
    shown = [c.source.splitlines()[0] for c in code
             if not {"hide-input", "remove-input", "remove-cell"} & set(c.metadata.get("tags", []))]
    assert not shown, f"{script.name}: code cells shown in the book, starting {shown}"
    assert sum("findings" in c.metadata.get("tags", []) for c in code) == 1


def test_the_books_findings_page_is_made_from_the_executed_chapters():
    import subprocess
    import sys

    root = pathlib.Path(__file__).parent.parent
    done = subprocess.run([sys.executable, str(root / "scripts" / "findings.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout
