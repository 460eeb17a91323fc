"""Write the report's summary pages from the executed chapters themselves.

Every chapter notebook has one code cell tagged `findings`, whose output (Markdown computed from the
chapter's own runs) states what the chapter found; where the chapter declared and tested primary
contrasts, the same output carries their numbers as JSON (`snipnb.report.FINDINGS_MIME`). This script
collects them, in the order of the book's table of contents, into

- book/findings.md: each chapter's verdicts, under a link to it;
- book/summary.md: one table of every tested primary contrast, and book/figures/forest.svg, their
  forest plot (the introduction includes both);
- book/reproducibility.md: the commit, library code, versions and device each chapter ran with.

So the introduction never states a number no executed run produced. scripts/run_book.py runs it
before building the book; a test checks the committed files are up to date.

    python scripts/findings.py          # rewrite them
    python scripts/findings.py --check  # exit 1 if any is stale
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pathlib
import re
import sys

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
FINDINGS_MIME = "application/vnd.snipnb.contrasts+json"  # snipnb.report's; not imported, to keep this light
FOREST = "figures/forest.svg"


def chapters() -> list[str]:
    """The chapter files (book/experiments/NAME) in the order of book/_toc.yml."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])
            if c["file"].startswith("experiments/")]


def title_of(nb) -> str:
    first = next((c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), None)
    return first.source.lstrip().split("\n")[0][2:].strip() if first else "untitled"


def findings_of(nb) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "findings" in cell.metadata.get("tags", []):
            texts = [o["data"]["text/markdown"] for o in cell.get("outputs", [])
                     if o.get("output_type") in ("display_data", "execute_result") and "text/markdown" in o.get("data", {})]
            return "\n\n".join(texts) if texts else None
    return None


def findings_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code" and "findings" in c.metadata.get("tags", [])), None)


def tested_contrasts(nb) -> list[dict]:
    """The chapter's tested primary contrasts, as its findings cell carries them: one dict per
    contrast (snipnb.report.FINDINGS_FIELDS) plus the chapter's `setting` and `unit`."""
    cell = findings_cell(nb)
    rows = []
    for output in (cell.get("outputs", []) if cell else []):
        carried = output.get("data", {}).get(FINDINGS_MIME)
        if carried:
            rows += [{**row, "setting": carried.get("setting", ""), "unit": carried.get("unit", "points")}
                     for row in carried["contrasts"]]
    return rows


def executed_chapters() -> list[tuple[str, object]]:
    """(file, notebook) of every chapter of the table of contents whose page exists."""
    found = []
    for file in chapters():
        path = BOOK / f"{file}.ipynb"
        if path.exists():
            found.append((file, nbformat.read(path, as_version=4)))
    return found


def render() -> str:
    lines = ["<!-- Written by scripts/findings.py from the executed chapters; do not edit by hand. -->", ""]
    for file in chapters():
        path = BOOK / f"{file}.ipynb"
        if not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        lines.append(f"### {title_of(nb)}")
        lines.append("")
        found = findings_of(nb)
        executed = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        if found is None and not executed:
            lines.append(f"Not executed yet, so no findings: see {{doc}}`{file}` for how to run it.")
        elif found is None:
            lines.append(f"Executed before the chapters stated their findings in one cell; its results are in "
                         f"{{doc}}`{file}`.")
        else:
            if any("banner" in c.metadata.get("tags", []) and "earlier version" in c.source for c in nb.cells):
                lines.append("*From a run of an earlier version of the chapter's notebook (its page says more).*")
                lines.append("")
            lines.append(found.strip())
            lines.append("")
            lines.append(f"Details, controls and limits: {{doc}}`{file}`.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def signed(x, digits=2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}".replace("-", "−")


def effect_cell(row) -> str:
    """The effect with its family-adjusted interval, which covers all of a chapter's contrasts at once."""
    if row.get("adjusted_low") is None:
        return f"{signed(row['diff'])} (n = {row['n']}, too few for an interval)"
    return f"{signed(row['diff'])} [{signed(row['adjusted_low'])}, {signed(row['adjusted_high'])}]"


def verdict_cell(row) -> str:
    decision = row.get("decision") or "—"
    if decision in ("higher", "lower"):
        around = row.get("around") or 0.0
        return f"{decision} than {signed(around)}" if around else f"{decision} (differs from 0)"
    if decision == "equivalent within ±margin":
        return f"equivalent within ±{row['margin']:g}" + (f" to {signed(row['around'])}" if row.get("around") else "")
    if decision == "equivalence not shown":
        return f"equivalence within ±{row['margin']:g} not shown"
    return decision


def published_cell(row) -> str:
    if row.get("published") is None:
        return "—"
    return f"{signed(row['published'])} ({row['source']})" if row.get("source") else signed(row["published"])


def summary_rows(found) -> list[dict]:
    rows = []
    for number, (file, nb) in enumerate(found, 1):
        for row in tested_contrasts(nb):
            rows.append({**row, "file": file, "title": title_of(nb), "number": number,
                         "label": file.split("/")[-1]})
    return rows


def render_summary(found) -> str:
    """The introduction's table of every tested primary contrast, with a tally and the forest plot."""
    rows = summary_rows(found)
    lines = ["<!-- Written by scripts/findings.py from the executed chapters; do not edit by hand. -->", ""]
    without = [title_of(nb) for file, nb in found if not tested_contrasts(nb)
               and any(c.get("outputs") for c in nb.cells if c.cell_type == "code")]
    if not rows:
        lines.append("No executed chapter has tested declared contrasts yet.")
        return "\n".join(lines) + "\n"
    decisions = [r.get("decision") for r in rows]
    tally = {d: decisions.count(d) for d in dict.fromkeys(decisions)}
    chapters_tested = len({r["file"] for r in rows})
    lines += [f"{len(rows)} primary contrasts, declared in {chapters_tested} executed chapters before their results "
              f"(a chapter's Limits name any added after a result was seen) and tested within each chapter with "
              f"Holm's correction: "
              + ", ".join(f"{n} {d}" for d, n in tally.items()) + ".", ""]
    lines += ["```{list-table} Every chapter's primary contrasts: the effect is variant − baseline in the "
              "chapter's metric and unit, mean over seeds, with its family-adjusted (Bonferroni) interval, "
              "which holds for all of a chapter's contrasts at once; the verdict is Holm's at 5%, whose steps after "
              "the first are less strict than Bonferroni's, so a contrast can differ from 0 while its interval "
              "still reaches 0.",
              ":header-rows: 1", ":name: summary-table", "",
              "* - Chapter", "  - Contrast", "  - Metric", "  - Effect [adjusted CI]", "  - Published",
              "  - Verdict"]
    for r in rows:
        lines += [f"* - {{doc}}`{r['label']} <{r['file']}>`", f"  - {r['contrast']}",
                  f"  - {r['metric']} ({r['unit']})", f"  - {effect_cell(r)}", f"  - {published_cell(r)}",
                  f"  - {verdict_cell(r)}"]
    lines += ["```", ""]
    if without:
        lines += ["Chapters whose findings are exploratory only (no declared contrasts yet): "
                  + "; ".join(without) + ".", ""]
    lines += [f"```{{figure}} {FOREST}", ":name: forest-plot", ":width: 100%", "",
              "Every primary contrast of the table: the mean effect over seeds (dot) and its family-adjusted "
              "interval (bar). Diamonds mark the published value where there is one; a grey band is an "
              "equivalence margin around the value tested. Each chapter's panel has its own metric.", "```", ""]
    return "\n".join(lines)


def forest_svg(found) -> str | None:
    """The forest plot of `summary_rows`, one panel per chapter, as SVG text with no date in it (so
    the file changes only when a number does)."""
    rows = summary_rows(found)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    groups = list(dict.fromkeys(r["number"] for r in rows))
    heights = [sum(r["number"] == g for r in rows) for g in groups]
    # 11 in of SVG is about 1060 px, shown at the text column's ~750: 11 pt text is about 10 px on the page.
    plt.rcParams.update({"svg.hashsalt": "snipnb", "font.size": 11})
    # Room for each panel's rows, its chapter heading and its x axis: in inches, so a panel of two
    # contrasts is as legible as one of ten.
    height = 0.34 * sum(heights) + 1.5 * len(groups) + 0.2
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, height), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    fig.subplots_adjust(left=0.5, right=0.97, top=1 - 0.55 / height, bottom=0.55 / height,
                        hspace=1.6 * len(groups) / sum(heights))
    for ax, group in zip(axes[:, 0], groups):
        mine = [r for r in rows if r["number"] == group]
        for y, r in enumerate(reversed(mine)):
            if r["kind"] == "equivalence" and r.get("margin"):
                centre = r.get("around") or 0.0
                ax.fill_betweenx([y - 0.35, y + 0.35], centre - r["margin"], centre + r["margin"], color="0.88", lw=0)
            if r.get("adjusted_low") is not None:
                ax.plot([r["adjusted_low"], r["adjusted_high"]], [y, y], color="C0", lw=2)
            ax.plot(r["diff"], y, "o", color="C0")
            if r.get("published") is not None:
                ax.plot(r["published"], y, "D", mfc="none", color="C3", ms=7)
        ax.axvline(0, color="0.4", lw=0.8)
        ax.set_yticks(range(len(mine)), [textwrap.fill(r["contrast"], 58) for r in reversed(mine)], fontsize=11)
        ax.set_ylim(-0.7, len(mine) - 0.3)
        # The chapter's heading spans the figure from its left edge, above the panel's labels.
        ax.annotate(textwrap.shorten(f"{mine[0]['label']}: {mine[0]['title']}", 120), xy=(0.01, 1),
                    xycoords=("figure fraction", "axes fraction"), xytext=(0, 6), textcoords="offset points",
                    ha="left", va="bottom", fontsize=11, fontweight="bold")
        ax.set_xlabel(f"{mine[0]['metric']} ({mine[0]['unit']})", fontsize=11)
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue()


PROVENANCE = re.compile(r"commit `(?P<commit>[^`]+)`, library code `(?P<code>[^`]+)`, snipnb (?P<snipnb>\S+), "
                        r"torch (?P<torch>\S+), on (?P<device>[^\n]+?)\.?(?:\n|$)")


def provenance_of(nb) -> dict | None:
    """What the chapter's run line says it ran with (snipnb.provenance.describe)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown", "")
            match = PROVENANCE.search(text) if isinstance(text, str) else None
            if match:
                return match.groupdict()
    return None


def runs_made_by(file: str, nb) -> tuple[str, str]:
    """(the library codes, the commits) that made the runs a page shows, from its run table: "—" each
    where it names none."""
    meta = nb.metadata.get("snipnb", {}).get("runs")
    if not meta:
        return "—", "—"
    codes = ", ".join(f"`{code}`" for code in meta["codes"]) or "—"
    table = (BOOK / file).parent / meta["table"]
    if not table.exists():
        return codes, "—"
    with gzip.open(table, "rt", newline="") as rows:
        commits = sorted({row["commit"][:10] for row in csv.DictReader(rows) if row.get("commit")})
    return codes, ", ".join(f"`{commit}`" for commit in commits) or "—"


def render_reproducibility(found) -> str:
    lines = ["<!-- Written by scripts/findings.py from the executed chapters; do not edit by hand. -->", "",
             "# Reproducibility", "",
             "Every executed chapter's page states the commit it ran at and a hash of the library code "
             "(`snipnb/`) it ran with; every run's record carries both, with the versions and the device. "
             "A page rendered from an earlier execution's records (`run_book.sh --from-tables`, or a chapter "
             "that went on across machines from its committed records) ran at a later commit than its runs: "
             "the last two columns name the library code and commits that made the runs, from its run "
             "table. They are collected here, from the pages. `bash scripts/run_book.sh --list` gives each "
             "chapter's measured cost on the project's machine, a 2-core x86-64 CPU with no GPU; a chapter's "
             "run table (`book/data/`, where published) holds every run's record.", "",
             "```{list-table} What each executed chapter ran with, as its page states it",
             ":header-rows: 1", "", "* - Chapter", "  - Commit", "  - Library code", "  - snipnb / torch",
             "  - Device", "  - Executed", "  - Runs made by", "  - at commit"]
    for file, nb in found:
        meta = provenance_of(nb)
        if meta is None:
            continue
        run = nb.metadata.get("papermill", {})
        when = (run.get("end_time") or "")[:10] or "—"
        lines += [f"* - {{doc}}`{file}`", f"  - `{meta['commit']}`", f"  - `{meta['code']}`",
                  f"  - {meta['snipnb']} / {meta['torch']}", f"  - {meta['device']}", f"  - {when}",
                  *(f"  - {made}" for made in runs_made_by(file, nb))]
    lines += ["```", "", "To check a chapter against its code: `git checkout COMMIT`, then "
              "`bash scripts/run_book.sh --only CHAPTER` reruns it, reusing any run whose record "
              "names the same library code and config.", ""]
    return "\n".join(lines)


def outputs() -> dict[pathlib.Path, str]:
    """The pages, and the forest plot's data (checked, where the SVG itself varies with matplotlib's version)."""
    found = executed_chapters()
    plotted = [{k: r.get(k) for k in ("label", "contrast", "diff", "adjusted_low", "adjusted_high", "published",
                                      "margin", "around")} for r in summary_rows(found)]
    return {BOOK / "findings.md": render(), BOOK / "summary.md": render_summary(found),
            BOOK / "reproducibility.md": render_reproducibility(found),
            (BOOK / FOREST).with_suffix(".json"): json.dumps(plotted, indent=1) + "\n"}


def main(argv: list[str]) -> int:
    pages = outputs()
    if "--check" in argv:
        stale = [str(p.relative_to(ROOT)) for p, text in pages.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}: run python scripts/findings.py")
            return 1
        return 0
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    forest = forest_svg(executed_chapters())
    if forest is not None:
        (BOOK / FOREST).write_text(forest)
        print(f"wrote book/{FOREST}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
