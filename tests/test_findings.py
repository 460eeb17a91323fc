"""scripts/findings.py: the book's summary pages come from what the executed chapters carry."""

import importlib.util
import pathlib

import nbformat
import pandas as pd
import pytest

from snipnb.contrasts import Contrast, evaluate_contrasts
from snipnb.provenance import describe
from snipnb.report import Findings

ROOT = pathlib.Path(__file__).parent.parent
spec = importlib.util.spec_from_file_location("findings_script", ROOT / "scripts" / "findings.py")
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)


def two_contrasts():
    rng = pd.Series(range(6), dtype=float)
    results = pd.DataFrame({"seed": list(range(6)) * 2, "method": ["dense"] * 6 + ["snip"] * 6,
                            "error": list(2.0 + 0.1 * rng) + list(2.6 + 0.1 * rng + 0.05 * (rng % 2))})
    return evaluate_contrasts(results, [
        Contrast("SNIP − dense", "error", {"method": "snip"}, {"method": "dense"}),
        Contrast("SNIP − dense against the paper's +0.5", "error", {"method": "snip"}, {"method": "dense"},
                 kind="equivalence", margin=0.3, around=0.5, published=0.5, source="Lee et al. 2019")])


def chapter(findings_output: dict | None, run_line: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    verdict = nbformat.v4.new_code_cell("show(findings)", metadata={"tags": ["findings"]})
    if findings_output:
        verdict.outputs = [nbformat.v4.new_output("display_data", data=findings_output)]
    line = nbformat.v4.new_code_cell("describe()")
    line.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": run_line})]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter: does it work?"), line, verdict]
    return nb


@pytest.fixture
def book(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nparts:\n  - chapters:\n"
                                       "      - file: experiments/a\n      - file: experiments/b\n")
    monkeypatch.setattr(findings, "BOOK", tmp_path)
    monkeypatch.setattr(findings, "ROOT", tmp_path)
    return tmp_path


def test_the_summary_table_and_forest_plot_carry_each_tested_contrast(book):
    bundle = Findings(two_contrasts(), setting="MNIST, LeNet")._repr_mimebundle_()
    nbformat.write(chapter(bundle, f"**This run:** Code: {describe('cpu')}."), book / "experiments" / "a.ipynb")
    nbformat.write(chapter(None, "nothing"), book / "experiments" / "b.ipynb")
    assert findings.main([]) == 0
    summary = (book / "summary.md").read_text()
    rows = two_contrasts().set_index("contrast")
    first = rows.loc["SNIP − dense"]
    # The effect with its family-adjusted interval, signed with a true minus where negative.
    assert f"{first['diff']:+.2f} [{first['adjusted_low']:+.2f}, {first['adjusted_high']:+.2f}]" in summary
    assert "+0.50 (Lee et al. 2019)" in summary  # the published value beside ours, with its source
    assert "2 primary contrasts, declared in 1 executed chapters before their results" in summary
    assert "forest.svg" in summary
    svg = (book / "figures" / "forest.svg").read_text()
    assert svg.startswith("<?xml") and "SNIP − dense against the paper" in svg
    assert findings.main(["--check"]) == 0
    # A changed number in a chapter makes the committed pages stale.
    bundle[findings.FINDINGS_MIME]["contrasts"][0]["diff"] += 1.0
    nbformat.write(chapter(bundle, "x"), book / "experiments" / "a.ipynb")
    assert findings.main(["--check"]) == 1


def test_the_reproducibility_page_names_each_chapters_commit_and_code(book):
    nbformat.write(chapter(None, f"**This run:** 3 runs. Code: {describe('cpu')}."), book / "experiments" / "a.ipynb")
    findings.main([])
    page = (book / "reproducibility.md").read_text()
    from snipnb.provenance import code_version

    assert f"`{code_version()['code']}`" in page and "{doc}`experiments/a`" in page
    assert "experiments/b" not in page  # no page, no row


def test_a_page_rendered_from_earlier_records_names_the_code_and_commit_that_made_its_runs(book):
    # A page re-rendered at a later commit (from its run table) states that commit in its run line; the
    # runs it shows were made by other code at another commit, which only the table knows.
    nb = chapter(None, f"**This run:** 2 runs. Code: {describe('cpu')}.")
    nb.metadata["snipnb"] = {"runs": {"codes": ["d12f1fa4eaa8132b"], "runs": 2, "table": "../data/a.csv.gz"}}
    nbformat.write(nb, book / "experiments" / "a.ipynb")
    (book / "data").mkdir()
    pd.DataFrame({"id": ["x", "y"], "code": ["d12f1fa4eaa8132b"] * 2,
                  "commit": ["3f4c19b1d57e76f37ef0b291a505083d6f2b9a36"] * 2}).to_csv(book / "data" / "a.csv.gz",
                                                                                      index=False)
    findings.main([])
    row = (book / "reproducibility.md").read_text().split("{doc}`experiments/a`")[1]
    assert "  - `d12f1fa4eaa8132b`\n  - `3f4c19b1d5`" in row
