"""The main command's chapter selection, output folder and banners, on the smoke configuration."""

import dataclasses
import importlib.util
import json
import pathlib
import shutil
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("run_book", ROOT / "scripts" / "run_book.py")
run_book = importlib.util.module_from_spec(spec)
sys.modules["run_book"] = run_book  # dataclasses look their module up while the class is made
spec.loader.exec_module(run_book)
SMALL_BOOK = run_book.small_book  # some tests replace it: building a book takes a while


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
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as scripts/test.sh exports: the kernel must draw inline regardless
    monkeypatch.setattr(run_book, "small_book", lambda out, title, intro: None)
    book = {p: p.stat().st_mtime for p in run_book.BOOK_CHAPTERS.glob("*.ipynb")}
    assert run_book.main(["--only", "01_few_shot_mnist", "--out", str(tmp_path), "-p", "seeds", "1"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["01_few_shot_mnist.ipynb"]  # a smoke run publishes no table
    nb = nbformat.read(tmp_path / "01_few_shot_mnist.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata.tags  # papermill's cell stays off the page
    assert nb.cells[0].source.startswith("# Experiment 1 on MNIST")  # the chapter's own title
    assert not any(o.get("name") == "stderr" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert {p: p.stat().st_mtime for p in run_book.BOOK_CHAPTERS.glob("*.ipynb")} == book


def test_a_chapter_that_fails_gets_a_banner_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_SMOKE", "1")
    monkeypatch.setattr(run_book, "small_book", lambda out, title, intro: None)
    assert run_book.main(["--only", "01_few_shot_mnist", "--out", str(tmp_path),
                          "-P", "01_few_shot_mnist", "bn_mode", "sideways"]) == 1  # the notebook's check stops it
    nb = nbformat.read(tmp_path / "01_few_shot_mnist.ipynb", as_version=4)
    assert "has not been executed" in nb.cells[1].source and "bn_mode" in nb.cells[1].source
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


def test_an_unexecuted_page_says_why_in_its_own_chapters_words(tmp_path):
    # An on-demand chapter that needs only time (MNIST at a long protocol) must not claim it lacks data.
    standard = run_book.CHAPTERS_BY_NAME["03_snip_ewc_permuted_standard"]
    cifar = run_book.CHAPTERS_BY_NAME["03_snip_ewc_cifar100"]
    default = dataclasses.replace(run_book.CHAPTERS_BY_NAME["03_snip_ewc_mnist"], name="zz_unrun")
    assert run_book.label_unrun([standard, cifar, default], tmp_path) == []

    def banner(chapter):
        return nbformat.read(tmp_path / f"{chapter.name}.ipynb", as_version=4).cells[1].source
    assert standard.unexecuted in banner(standard) and "data or compute" not in banner(standard)
    assert "data or compute" in banner(cifar)
    assert "has not been run since its notebook was written" in banner(default)
    assert str(standard.cost) in banner(standard)


def test_an_unexecuted_page_is_its_question_under_the_banner_without_empty_result_sections(tmp_path):
    chapter = run_book.CHAPTERS_BY_NAME["01_few_shot_cifar100"]
    run_book.placeholder(chapter, tmp_path, "it needs CIFAR-100")
    cells = nbformat.read(tmp_path / f"{chapter.name}.ipynb", as_version=4).cells
    assert cells[0].source.startswith(f"# {chapter.title}") and "banner" in cells[1].metadata.tags
    assert not [c for c in cells if c.cell_type == "code"]
    text = "\n".join(c.source for c in cells)
    assert "**Question.**" in text and "## Accuracy by k" not in text  # the question, no headings over nothing


# --- choosing chapters, and every mistake stopping run_book before anything runs --------------------

def test_the_chapters_are_in_the_books_order_with_costs_that_add_up():
    assert names(run_book.CHAPTERS) == run_book.book_order()
    assert all(isinstance(c.cost.minutes, (int, float)) for c in run_book.CHAPTERS if not c.on_demand)


def test_list_has_a_header_aligned_columns_the_books_order_and_a_total(capsys):
    assert run_book.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:1 + len(run_book.CHAPTERS)]
    assert header.split()[0] == "chapter" and "cost" in header and "notebook" in header
    assert [row.split()[0] for row in rows] == run_book.book_order()
    column = header.index("notebook")
    assert all(row[column:].startswith(f"{run_book.CHAPTERS_BY_NAME[row.split()[0]].notebook}.ipynb") for row in rows)
    total = sum(c.cost.minutes for c in run_book.CHAPTERS if not c.on_demand)
    assert any(line.startswith(f"{len(run_book.select(run_book.CHAPTERS, [], False, False))} default chapters: "
                               f"≈ {run_book.duration(total)}") for line in lines)
    estimated = [c.name for c in run_book.CHAPTERS if not c.on_demand and c.cost.estimated_from]
    assert all(any(name in line for line in lines if "default chapters" in line) for name in estimated)


@pytest.mark.parametrize("device, native, warned", [("cpu", False, True), ("cpu", True, False), ("mps", False, False)])
def test_list_warns_that_a_cpu_without_native_bf16_takes_longer_than_the_costs_it_lists(capsys, monkeypatch,
                                                                                       device, native, warned):
    # The costs were measured with native bf16; a CPU without it runs every chapter slower and pretrains
    # chapter 02's and 05's sources about 6x slower, and a reader planning a run on such a laptop should
    # learn it before, not hours in.
    monkeypatch.setattr(run_book.devices, "default_device", lambda: run_book.devices.torch.device(device))
    monkeypatch.setattr(run_book.devices, "bf16_native", lambda _: native)
    assert run_book.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert ("runs the library in fp32" in out) == warned
    if warned:
        assert "threads; fp32)" in out and "every chapter takes longer" in out and "several times their listed cost" in out


def test_an_estimated_cost_says_so_and_from_what():
    assert str(run_book.Cost(90, "CPU")) == "≈ 1 h 30 min on CPU"
    assert str(run_book.Cost(90, "CPU", estimated_from="its parts")) == "about 1 h 30 min on CPU, estimated from its parts"


def test_only_takes_globs_and_a_pattern_never_picks_an_on_demand_chapter():
    select = run_book.select
    assert names(select(run_book.CHAPTERS, ["*snow*"], False, False)) == ["05_snow_mnist5to9", "05_snow_uci_digits"]
    assert "05_snow_imagenet_cifar100" in names(select(run_book.CHAPTERS, ["*snow*"], True, False))
    assert names(select(run_book.CHAPTERS, ["01"], False, False)) == ["01_few_shot_mnist"]
    assert names(select(run_book.CHAPTERS, ["01_few_shot_cifar100"], False, False)) == ["01_few_shot_cifar100"]
    with pytest.raises(SystemExit, match="only on-demand chapters .* add --all"):
        select(run_book.CHAPTERS, ["*cifar100"], False, False)


@pytest.fixture
def no_runs(monkeypatch):
    """papermill replaced by a recorder: whatever it records ran."""
    calls = []
    monkeypatch.setattr(run_book.papermill, "execute_notebook", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(run_book, "small_book", lambda out, title, intro: None, raising=False)
    return calls


@pytest.mark.parametrize("argv, message", [
    (["--only", "00_snip_mnist", "--only", "01_few_shot_mnist", "-p", "no_such", "1"], "-p no_such: no selected"),
    (["--only", "00_snip_mnist", "--only", "01_few_shot_mnist", "-P", "01_few_shot_mnist", "no_such", "1"],
     "unknown parameter 'no_such'"),
    (["--only", "00_snip_mnist", "--only", "01_few_shot_mnist", "-p", "seeds", "two"], "'seeds' must be"),
    (["--only", "01_few_shot_mnist", "-p", "seeds", "[1,"], "not a YAML value"),
    (["--only", "01_few_shot_mnist", "-P", "00_snip_mnist", "seeds", "2"], "not among the selected"),
    (["-P", "no_chapter", "seeds", "1"], "names no chapter"),
    (["--only", "no_chapter"], "matches no chapter"),
    (["--quick", "--only", "01_few_shot_cifar100"], "no quick parameters"),
    (["--quick", "--only", "01_few_shot_mnist", "-p", "results_dir", "x"], "sets results_dir itself"),
])
def test_a_mistake_is_one_line_and_a_non_zero_exit_before_any_run(argv, message, tmp_path, no_runs):
    with pytest.raises(SystemExit) as stopped:
        run_book.main([*argv, "--out", str(tmp_path)])
    assert message in str(stopped.value.code) and "\n" not in str(stopped.value.code)
    assert no_runs == []


def test_quick_never_writes_into_the_book(no_runs):
    with pytest.raises(SystemExit, match="never writes into the book"):
        run_book.main(["--quick", "--out", str(run_book.BOOK_CHAPTERS)])


def test_every_default_chapter_has_quick_parameters_its_notebook_takes():
    for chapter in run_book.CHAPTERS:
        assert run_book.problems(chapter, chapter.parameters) == []
        if not chapter.on_demand:
            quick = {**chapter.parameters, **chapter.quick, "results_dir": "/tmp/quick"}
            assert run_book.problems(chapter, quick) == []
            # A quick budget's cost is measured or says it is not: --list shows it either way.
            assert chapter.quick_cost is not None and (chapter.quick_cost.minutes or 1) > 0


# --- run tables: published with each chapter, and a chapter re-rendered from its table alone -------

TINY = '''import dataclasses, random

from snipnb.notebook import check_parameters
from snipnb.sweep import run_sweep

check_parameters()


@dataclasses.dataclass(frozen=True)
class TinyRun:
    seed: int
    label: str = "5"


def train(run):  # not seeded: a run made again would give other numbers
    return {"acc": 100 * random.random(), "curve": [random.random() for _ in range(3)]}


results = run_sweep(train, [TinyRun(s) for s in range(seeds)], f"{results_dir}/tiny", progress=False, reuse=reuse)
print(results.sort_values("seed")[["seed", "acc", "curve"]].to_string())
print(f"{results.acc.mean():.6f} over {len(results)} runs of code {', '.join(sorted(set(results.code)))}")
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A chapter of three runs whose numbers are random, its results under tmp_path/results."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell('seeds = 3\nresults_dir = "results/tiny"\nreuse = "same_code"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny\n\nThree runs of random numbers."), parameters,
                nbformat.v4.new_code_cell(TINY)]
    nbformat.write(nb, notebooks / "tiny.ipynb")
    chapter = run_book.Chapter("tiny", "tiny", "A tiny chapter", dict(results_dir=str(tmp_path / "results")),
                               cost=run_book.Cost(1, "CPU"), quick=dict(seeds=2), quick_cost=run_book.Cost(1, "CPU"))
    monkeypatch.setattr(run_book, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(run_book, "CHAPTERS", [chapter])
    monkeypatch.setattr(run_book, "CHAPTERS_BY_NAME", {chapter.name: chapter})
    books = []
    monkeypatch.setattr(run_book, "small_book", lambda out, title, intro: books.append((out, title, intro)))
    return books


def outputs(path):
    nb = nbformat.read(path, as_version=4)
    return [o.get("text") or o.get("data", {}).get("text/plain") for c in nb.cells if c.cell_type == "code"
            for o in c.outputs]


def rewrite_table(path, change):
    import gzip

    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    path.write_bytes(gzip.compress(frame.to_csv(index=False, lineterminator="\n").encode(), mtime=0))


def test_a_chapter_publishes_its_runs_and_re_renders_from_them_alone(tiny, tmp_path, capfd):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_book.main(["--only", "tiny", "--out", str(first)]) == 0
    shown = capfd.readouterr()
    assert "tiny: 3/3 runs recorded" in shown.out  # progress, run by run, on the terminal
    assert "without encryption" not in shown.err  # the kernel talks over IPC, not plain TCP
    import pandas as pd

    table = pd.read_csv(first / "data" / "tiny.csv.gz")
    assert table.seed.tolist() == [0, 1, 2] and set(table.folder) == {"tiny"} and table.acc.between(0, 100).all()
    assert {"id", "config_class", "curve", "code", "commit", "dirty", "device", "stack_size"} <= set(table.columns)
    page = nbformat.read(first / "tiny.ipynb", as_version=4)
    assert page.cells[0].source.startswith("# A tiny chapter\n\n**Runs:** the 3 runs")
    assert "{download}`tiny.csv.gz <data/tiny.csv.gz>`" in page.cells[0].source
    assert page.cells[1].source.startswith("Three runs")
    before = (first / "tiny.ipynb").read_bytes()
    run_book.tidy(first / "tiny.ipynb", "A tiny chapter")
    assert (first / "tiny.ipynb").read_bytes() == before  # tidying a page again changes nothing

    import shutil

    shutil.rmtree(tmp_path / "results")  # a clean clone: no records, only the page and its table
    assert run_book.main(["--only", "tiny", "--out", str(second), "--from-tables", str(first)]) == 0
    assert outputs(second / "tiny.ipynb") == outputs(first / "tiny.ipynb")  # number for number: nothing trained
    assert (second / "data" / "tiny.csv.gz").read_bytes() == (first / "data" / "tiny.csv.gz").read_bytes()
    assert not (tmp_path / "results").exists()


def test_a_table_that_does_not_match_its_chapter_is_refused(tiny, tmp_path, monkeypatch, capfd):
    first, again = tmp_path / "first", tmp_path / "again"
    assert run_book.main(["--only", "tiny", "--out", str(first)]) == 0
    # The notebook asks for runs the table lacks: it stops, and trains nothing.
    assert run_book.main(["--only", "tiny", "--out", str(again), "--from-tables", str(first), "-p", "seeds", "4"]) == 1
    assert "1 of 4 runs have no record to reuse" in capfd.readouterr().err
    assert len(list((tmp_path / "results" / "tiny").glob("*.json"))) == 3

    calls = []
    monkeypatch.setattr(run_book.papermill, "execute_notebook", lambda *args, **kwargs: calls.append(args))
    table = first / "data" / "tiny.csv.gz"
    published = table.read_bytes()
    for change, message in [
        (lambda f: f.assign(seed=f.seed.replace("2", "7")), r"line 4 \(id [0-9a-f]+\): its TinyRun config hashes to"),
        (lambda f: f.assign(code='"0123abcd"'), "made by library code 0123abcd, the page's by"),
        (lambda f: f.iloc[:2], "holds 2 runs, the page was made from 3"),
        (lambda f: f.assign(acc="50.0"), "other values than the page was made from"),
    ]:
        rewrite_table(table, change)
        with pytest.raises(SystemExit, match=message):
            run_book.main(["--only", "tiny", "--out", str(again), "--from-tables", str(first)])
        table.write_bytes(published)
    table.unlink()
    with pytest.raises(SystemExit, match="tiny.csv.gz is missing"):
        run_book.main(["--only", "tiny", "--out", str(again), "--from-tables", str(first)])
    with pytest.raises(SystemExit, match="names no run table"):
        run_book.main(["--only", "tiny", "--out", str(again), "--from-tables", str(tmp_path / "notebooks")])
    assert calls == []


def test_quick_runs_a_chapter_at_its_quick_budget_into_a_small_book_under_a_smoke_banner(tiny, tmp_path):
    out = tmp_path / "quick"
    assert run_book.main(["--quick", "--only", "tiny", "--out", str(out)]) == 0
    page = nbformat.read(out / "tiny.ipynb", as_version=4)
    assert run_book.QUICK_BANNER in page.cells[1].source and "seeds=2" in page.cells[1].source
    assert "over 2 runs" in outputs(out / "tiny.ipynb")[0]  # the quick budget's
    assert (out / "data" / "tiny.csv.gz").exists() and not (tmp_path / "results").exists()  # records: temporary
    [(book, title, intro)] = tiny
    assert book == out.resolve() and "quick" in title and "{doc}`tiny`" in intro


def test_a_small_book_of_the_pages_links_each_table(tiny, tmp_path):
    out = tmp_path / "out"
    assert run_book.main(["--only", "tiny", "--out", str(out)]) == 0
    index = SMALL_BOOK(out.resolve(), "A tiny book", "# A tiny book\n\n{doc}`tiny`\n")
    assert index is not None and index.exists()
    assert list((out / "_build" / "html" / "_downloads").glob("*/tiny.csv.gz"))
    assert "tiny.csv.gz" in (out / "_build" / "html" / "tiny.html").read_text()


def test_the_book_check_finds_a_page_whose_table_is_missing_or_not_its_own(tiny, tmp_path):
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    check_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_book)
    out = tmp_path / "out"
    assert run_book.main(["--only", "tiny", "--out", str(out)]) == 0
    assert check_book.table_problems(out) == []
    rewrite_table(out / "data" / "tiny.csv.gz", lambda f: f.iloc[:2])
    assert check_book.table_problems(out) == ["tiny.ipynb: its run table data/tiny.csv.gz is not the one the page "
                                              "was made from"]
    (out / "data" / "tiny.csv.gz").unlink()
    assert "which is missing" in check_book.table_problems(out)[0]


def texts(path):
    """Every text a page shows (its figures aside), without what differs at each rendering: pandas
    Styler's random table ids and the memory addresses in reprs."""
    import re

    nb = nbformat.read(path, as_version=4)
    shown = [o.get("text") or {k: v for k, v in o.get("data", {}).items() if k.startswith("text/")}
             for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return re.sub(r"T_[0-9a-f]{5}|0x[0-9a-f]+", "", repr(shown))


def test_a_real_chapter_re_renders_from_its_table_number_for_number(tmp_path, monkeypatch):
    # Chapter 01 on synthetic data at a tiny size (not SNIPNB_SMOKE, whose results_dir is temporary).
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    chapter = run_book.Chapter("01_synthetic", "01_few_shot", "Experiment 1 on synthetic data", dict(
        dataset="synthetic", models=["simple_convnet"], ks=[1, 2], sparsities=[0.9], methods=["snip"], seeds=2,
        epochs=1, results_dir=str(tmp_path / "results"), min_steps=0, evaluations=None, val_per_class=5,
        lr_candidates=[0.01, 0.05], lr_seeds=1, lr_extensions=0))  # the learning-rate search replays too
    monkeypatch.setattr(run_book, "CHAPTERS", [chapter])
    monkeypatch.setattr(run_book, "small_book", lambda out, title, intro: None)
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_book.main(["--only", chapter.name, "--out", str(first)]) == 0
    import shutil

    shutil.rmtree(tmp_path / "results")
    assert run_book.main(["--only", chapter.name, "--out", str(second), "--from-tables", str(first)]) == 0
    shown = texts(first / f"{chapter.name}.ipynb")
    assert "±" in shown and texts(second / f"{chapter.name}.ipynb") == shown


# --- the docs' example commands run offline as written ---------------------------------------------

ONLINE_DATA = {"cifar10", "cifar100", "imagenet"}  # what torchvision downloads; MNIST and UCI are offline


def example_commands(path):
    """Each `papermill notebooks/X.ipynb ...` line of a doc: the notebook and its -p/-y parameters.
    The cluster examples are left out: they are for a cluster, with its data."""
    import shlex

    import yaml

    for line in path.read_text().splitlines():
        if not line.startswith("papermill notebooks/") or "cluster" in line:
            continue
        words = shlex.split(line.split("  #")[0])
        notebook, parameters, i = pathlib.Path(words[1]).stem, {}, 3
        while i < len(words):
            if words[i] == "-p":
                parameters[words[i + 1]] = yaml.safe_load(words[i + 2])
                i += 3
            elif words[i] == "-y":
                parameters.update(yaml.safe_load(words[i + 1]))
                i += 2
            else:
                i += 1
        yield line, notebook, parameters


@pytest.mark.parametrize("doc", ["README.md", "book/intro.md"])
def test_the_docs_example_commands_take_declared_parameters_and_offline_data(doc):
    commands = list(example_commands(ROOT / doc))
    assert commands
    for line, notebook, parameters in commands:
        chapter = run_book.Chapter(notebook, notebook, notebook)
        assert run_book.problems(chapter, parameters) == [], line
        settings = {**run_book.declared(run_book.notebook_of(chapter)), **parameters}
        wanted = {settings.get(name) for name in ("dataset", "source", "target")}
        assert not wanted & ONLINE_DATA, f"{doc}: {line} needs {wanted & ONLINE_DATA}, which is not offline"


def test_durations_read_in_the_unit_that_matters():
    assert run_book.duration(27 / 60) == "27 s"
    assert run_book.duration(117 / 60) == "1 min 57 s" and run_book.duration(2) == "2 min"
    assert run_book.duration(32) == "32 min" and run_book.duration(150) == "2 h 30 min" and run_book.duration(120) == "2 h"


def test_the_book_check_knows_a_chapter_that_draws_but_shows_no_figure():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    check_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_book)
    drawing = nbformat.v4.new_code_cell("fig = plots.panels(2)\nplt.show()")
    drawing.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "<Figure size 750x300>"})]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), drawing])
    assert check_book.draws(nb) and check_book.figures(nb) == 0  # what an Agg kernel leaves
    drawing.outputs.append(nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="}))
    assert check_book.figures(nb) == 1
    assert not check_book.draws(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(explot.x)")]))


def test_banners_labels_a_page_whose_notebook_changed_and_runs_nothing(tiny, tmp_path, monkeypatch):
    # After a notebook edit the book's page must say it is an earlier version's (the book check demands
    # it), without running the chapter: --banners does only that, and rewrites the findings pages.
    book = tmp_path / "book"
    book.mkdir()
    monkeypatch.setattr(run_book, "BOOK_CHAPTERS", book)
    findings = []
    monkeypatch.setattr(run_book, "write_findings", lambda: findings.append(True))
    monkeypatch.setattr(run_book, "run", lambda *args, **kwargs: pytest.fail("--banners ran a chapter"))
    page = nbformat.read(tmp_path / "notebooks" / "tiny.ipynb", as_version=4)
    page.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="a number\n")]
    nbformat.write(page, book / "tiny.ipynb")

    assert run_book.main(["--banners"]) == 0  # the page runs the notebook's code of today: no banner
    assert findings and not any(run_book.STALE_BANNER in c.source for c in
                                nbformat.read(book / "tiny.ipynb", as_version=4).cells)
    notebook = nbformat.read(tmp_path / "notebooks" / "tiny.ipynb", as_version=4)
    notebook.cells[-1].source += "\nprint('an edit since')"
    nbformat.write(notebook, tmp_path / "notebooks" / "tiny.ipynb")
    assert run_book.main(["--banners"]) == 0
    marked = nbformat.read(book / "tiny.ipynb", as_version=4)
    assert sum(run_book.STALE_BANNER in c.source for c in marked.cells) == 1
    assert any(o.get("text") == "a number\n" for c in marked.cells if c.cell_type == "code" for o in c.outputs)
    with pytest.raises(SystemExit, match="takes no other option"):
        run_book.main(["--banners", "--only", "tiny"])


@dataclasses.dataclass(frozen=True)
class Toy:  # a run's config, for the unfinished-table tests
    seed: int


def unfinished_chapter(tmp_path, monkeypatch):
    """A chapter whose unfinished table and results_dir live in `tmp_path`: (chapter, parameters, results)."""
    monkeypatch.setattr(run_book, "UNFINISHED", tmp_path / "unfinished")
    (tmp_path / "unfinished").mkdir()
    parameters = {"results_dir": str(tmp_path / "results")}
    return run_book.Chapter("zz_test", "00_snip_mnist", "test"), parameters, pathlib.Path(parameters["results_dir"])


def test_an_unfinished_execution_resumes_from_its_committed_table_on_another_machine(tmp_path, monkeypatch):
    # Background runs end with the session and a later session may start on a fresh machine with an
    # empty results/: only what is committed survives, so the records so far must travel in git.
    from snipnb import provenance, sweep

    chapter, parameters, results = unfinished_chapter(tmp_path, monkeypatch)
    ours = [sweep.write_record(results / "mnist", Toy(seed), {"acc": 0.5 + seed}, 1.0) for seed in range(3)]
    other = sweep.make_record(Toy(9), {"acc": 0.1}, 1.0, code={**provenance.code_version(), "code": "0" * 16})
    sweep.save_record(results / "mnist", other)
    (results / "mnist" / ".half.json.123.tmp").write_text("{")  # a record being written is not read

    assert run_book.save_unfinished(chapter, parameters) == 3  # the other code's run cannot be reused
    saved = {p.name: p.read_bytes() for p in ours}
    shutil.rmtree(results)  # the fresh machine
    assert run_book.restore_unfinished(chapter, parameters) == 3
    assert {p.name: p.read_bytes() for p in (results / "mnist").glob("*.json")} == saved
    assert run_book.restore_unfinished(chapter, parameters) == 0  # what is there is kept, not written again


def test_an_unfinished_table_holds_only_its_chapters_folders_when_two_chapters_share_a_results_dir(tmp_path, monkeypatch):
    # Chapter 05's two pairs run one notebook into one results_dir: executed one after the other, the
    # second pair's table took the first pair's 135 runs as its own.
    from snipnb import runs, sweep

    chapter, parameters, results = unfinished_chapter(tmp_path, monkeypatch)
    for seed in range(3):
        sweep.write_record(results / "uci", Toy(seed), {"acc": seed}, 1.0)  # the other chapter's, finished
    put_back = sweep.write_record(results / "five" / "search", Toy(7), {"acc": 7}, 1.0)
    sweep.write_record(results / "five", Toy(8), {"acc": 8}, 1.0)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"folder": str(results / "five"), "total": 2, "todo": []}) + "\n")
    table = run_book.unfinished_path(chapter)

    assert run_book.save_unfinished(chapter, parameters, manifest) == 1  # only the sweep this execution started
    assert {folder for folder, _ in runs.records(table)} == {"five"}
    # A run put back from the chapter's table stays in it while its sweep has not started again.
    runs.write_table(table, [("five/search", json.loads(put_back.read_text()))])
    assert run_book.save_unfinished(chapter, parameters, manifest) == 2
    assert {folder for folder, _ in runs.records(table)} == {"five", "five/search"}
    assert run_book.save_unfinished(chapter, parameters) == 5  # without a manifest: every record of this code


def test_an_unfinished_table_made_at_another_precision_is_not_mixed_into_this_machines_runs(tmp_path, monkeypatch, capsys):
    # A session may land on a CPU without native bf16: its fp32 runs (and fp32-pretrained sources)
    # must not join a chapter whose other runs were made in bf16, nor the other way round.
    from snipnb import provenance, sweep

    chapter, parameters, results = unfinished_chapter(tmp_path, monkeypatch)
    made_on = {0: "cpu (x86_64, 1 threads; bf16 evaluation)", 1: "cpu (x86_64, 2 threads; bf16 evaluation)",
               2: "cpu (x86_64, 2 threads; fp32)", 3: "NVIDIA H100 80GB HBM3 (bf16 training and evaluation)", 4: None}
    for seed, device in made_on.items():
        sweep.write_record(results / "mnist", Toy(seed), {"acc": seed}, 1.0, device=device)
    assert run_book.save_unfinished(chapter, parameters) == 5
    shutil.rmtree(results)

    monkeypatch.setattr(provenance, "device_name", lambda device=None: "cpu (x86_64, 2 threads; bf16 evaluation)")
    assert run_book.restore_unfinished(chapter, parameters) == 3  # the thread count is no precision; no name, no claim
    back = {json.loads(p.read_text())["config"]["seed"] for p in (results / "mnist").glob("*.json")}
    assert back == {0, 1, 4}
    said = capsys.readouterr().out
    assert "2 runs" in said and "another precision" in said and "(bf16 evaluation)" in said

    shutil.rmtree(results)
    monkeypatch.setattr(provenance, "device_name", lambda device=None: "cpu (x86_64, 2 threads; fp32)")
    assert run_book.restore_unfinished(chapter, parameters) == 2  # the fp32 run, and the one naming no device


def test_precision_of_reads_the_precision_a_device_name_states():
    from snipnb import provenance

    assert provenance.precision_of("cpu (x86_64, 2 threads; bf16 evaluation)") == "bf16 evaluation"
    assert provenance.precision_of("cpu (aarch64, 1 threads; fp32)") == "fp32"
    assert provenance.precision_of("NVIDIA A100-SXM4-40GB (bf16 training and evaluation)") == "bf16 training and evaluation"
    assert provenance.precision_of("mps (fp32)") == "fp32"
    assert provenance.precision_of(None) is None
    assert provenance.precision_of(provenance.device_name("cpu")) in ("fp32", "bf16 evaluation")


def test_extend_trains_only_the_runs_a_published_table_lacks(tiny, tmp_path, capfd):
    import shutil

    import pandas as pd

    first, second = tmp_path / "first", tmp_path / "second"
    assert run_book.main(["--only", "tiny", "--out", str(first)]) == 0
    shutil.rmtree(tmp_path / "results")  # a clean clone: only the page and its table
    assert run_book.main(["--only", "tiny", "--out", str(second), "--extend", str(first), "-p", "seeds", "4"]) == 0
    assert "tiny: 3 published runs put back" in capfd.readouterr().out
    published, extended = (pd.read_csv(d / "data" / "tiny.csv.gz").set_index("seed") for d in (first, second))
    assert list(extended.index) == [0, 1, 2, 3]  # seed 3 trained; the train function is not seeded, so a
    assert extended.acc.loc[[0, 1, 2]].tolist() == published.acc.tolist()  # retrained seed would differ
    with pytest.raises(SystemExit, match="--extend sets reuse itself"):
        run_book.main(["--only", "tiny", "--out", str(second), "--extend", str(first), "-p", "reuse", "any"])
    with pytest.raises(SystemExit, match="choose one"):
        run_book.main(["--only", "tiny", "--out", str(second), "--extend", str(first), "--from-tables", str(first)])


def test_the_kernels_sockets_live_in_a_folder_of_the_run_not_in_the_repository(tiny, tmp_path):
    # A kernel killed with its run (a session ending, Ctrl-C twice) leaves its IPC sockets behind: they
    # must not be left in the repository, which is the kernel's working directory.
    nb = nbformat.read(run_book.NOTEBOOKS / "tiny.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, ipykernel.connect\n"
        "info = json.load(open(ipykernel.connect.get_connection_file()))\n"
        "print(info['transport'], info['ip'])"))
    nbformat.write(nb, run_book.NOTEBOOKS / "tiny.ipynb")
    assert run_book.main(["--only", "tiny", "--out", str(tmp_path / "out")]) == 0
    transport, ip = outputs(tmp_path / "out" / "tiny.ipynb")[-1].split()
    assert transport == "ipc"
    sockets = pathlib.Path(ip).parent
    assert run_book.ROOT not in sockets.parents and sockets != run_book.ROOT and sockets != pathlib.Path(".")
    assert not sockets.exists()  # the run's folder went with it
