"""The main command's chapter selection, output folder and banners, on the smoke configuration."""

import importlib.util
import pathlib
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("run_book", ROOT / "scripts" / "run_book.py")
run_book = importlib.util.module_from_spec(spec)
sys.modules["run_book"] = run_book  # dataclasses look their module up while the class is made
spec.loader.exec_module(run_book)


def names(chapters):
    return [c.name for c in chapters]


def test_a_short_pattern_selects_by_the_start_of_the_name_only():
    # "00" once also picked the three *_cifar100 chapters ("cifar100" contains "00").
    assert names(run_book.select(run_book.CHAPTERS, ["00"], False, False)) == ["00_snip_mnist"]
    assert names(run_book.select(run_book.CHAPTERS, ["01_few_shot_mnist"], False, False)) == ["01_few_shot_mnist"]
    assert all(n.startswith(("03", "04")) for n in names(run_book.select(run_book.CHAPTERS, ["0[34]_"], False, False)))
    with pytest.raises(SystemExit, match="no chapter"):
        run_book.select(run_book.CHAPTERS, ["cifar"], False, False)


def test_on_demand_chapters_run_only_when_asked_or_on_a_gpu():
    default = names(run_book.select(run_book.CHAPTERS, [], False, False))
    assert default and not any("cifar100" in n for n in default)
    assert any("cifar100" in n for n in names(run_book.select(run_book.CHAPTERS, [], True, False)))
    assert any("cifar100" in n for n in names(run_book.select(run_book.CHAPTERS, [], False, True)))


def test_list_prints_every_chapter(capsys):
    assert run_book.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in run_book.CHAPTERS)


def test_a_chapter_runs_into_another_folder_and_leaves_the_book_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_SMOKE", "1")
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    book = {p: p.stat().st_mtime for p in run_book.BOOK_CHAPTERS.glob("*.ipynb")}
    assert run_book.main(["--only", "01_few_shot_mnist", "--out", str(tmp_path), "-p", "seeds", "1",
                          "-p", "no_such_parameter", "1"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["01_few_shot_mnist.ipynb"]
    nb = nbformat.read(tmp_path / "01_few_shot_mnist.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata.tags  # papermill's cell stays off the page
    assert nb.cells[0].source.startswith("# Experiment 1 on MNIST")  # the chapter's own title
    assert not any(o.get("name") == "stderr" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert {p: p.stat().st_mtime for p in run_book.BOOK_CHAPTERS.glob("*.ipynb")} == book


def test_a_chapter_that_fails_gets_a_banner_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_SMOKE", "1")
    run_book.main(["--only", "01_few_shot_mnist", "--out", str(tmp_path), "-P", "01_few_shot_mnist", "seeds", "'two'"])
    nb = nbformat.read(tmp_path / "01_few_shot_mnist.ipynb", as_version=4)
    assert "has not been executed" in nb.cells[1].source and "seeds" in nb.cells[1].source
    with pytest.raises(SystemExit, match="no_such"):
        run_book.main(["--only", "00_snip_mnist", "--out", str(tmp_path), "-P", "00_snip_mnist", "no_such", "1"])


def test_a_chapter_run_by_other_code_is_marked_once_and_keeps_its_numbers(tmp_path):
    chapter = run_book.CHAPTERS_BY_NAME["01_few_shot_mnist"]
    nb = nbformat.read(ROOT / "notebooks" / "01_few_shot.ipynb", as_version=4)
    injected = nbformat.v4.new_code_cell("seeds = 5")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    code = [c for c in nb.cells if c.cell_type == "code" and c is not injected]
    code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="a number\n")]
    target = tmp_path / "01_few_shot_mnist.ipynb"
    nbformat.write(nb, target)
    assert not run_book.stale(target, chapter)  # papermill's injected cell is not a change of code

    code[-1].source += "\nprint('an edit since')"
    nbformat.write(nb, target)
    assert run_book.stale(target, chapter)
    run_book.mark_stale(chapter, target)
    run_book.mark_stale(chapter, target)
    marked = nbformat.read(target, as_version=4)
    banners = [c for c in marked.cells if run_book.STALE_BANNER in c.source]
    assert len(banners) == 1 and run_book.STALE_BANNER in marked.cells[1].source
    assert any(o.get("text") == "a number\n" for c in marked.cells if c.cell_type == "code" for o in c.outputs)


def test_presentation_tags_reach_an_executed_chapter_without_a_rerun(tmp_path):
    chapter = run_book.CHAPTERS_BY_NAME["01_few_shot_mnist"]
    nb = nbformat.read(ROOT / "notebooks" / "01_few_shot.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:  # as executed before the notebook hid its code and tagged its findings
        cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t == "parameters"]
    code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="a number\n")]
    target = tmp_path / "01_few_shot_mnist.ipynb"
    nbformat.write(nb, target)
    assert run_book.retag(chapter, target)
    retagged = [c for c in nbformat.read(target, as_version=4).cells if c.cell_type == "code"]
    assert sum("findings" in c.metadata.tags for c in retagged) == 1
    assert all({"hide-input", "remove-input", "remove-cell"} & set(c.metadata.tags) for c in retagged)
    assert "parameters" in retagged[0].metadata.tags and retagged[-1].outputs  # nothing else changes

    nb.cells.append(nbformat.v4.new_code_cell("print('a cell the notebook no longer has')"))
    nbformat.write(nb, target)
    assert not run_book.retag(chapter, target)  # cells no longer line up: left as they were


def test_refreshing_a_placeholder_changes_no_byte(tmp_path):
    # The book's unexecuted pages are rewritten at every run; a random cell id made each a diff.
    chapter = run_book.CHAPTERS_BY_NAME["03_snip_ewc_cifar100"]
    run_book.placeholder(chapter, tmp_path, "it needs CIFAR-100")
    first = (tmp_path / f"{chapter.name}.ipynb").read_bytes()
    run_book.placeholder(chapter, tmp_path, "it needs CIFAR-100")
    assert (tmp_path / f"{chapter.name}.ipynb").read_bytes() == first
    assert b"has not been executed" in first
