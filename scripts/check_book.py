"""Check the built report the way a reader would see it (run after `jupyter-book build book/`).

- Math renders offline: every page with math loads MathJax from the site itself, and that file is
  there; no `$$` or `\\[` is left in the text outside the math MathJax typesets.
- Headings never show an unfilled variable (a `name` in code font, as "k = `focus_k`" did).
- Every chapter that was not executed says so in a banner, and every executed one has outputs, and
  figures if its code draws any.
- An executed chapter whose notebook's code has changed since says so in a banner (run_book adds it).
- An executed chapter that names its run table links it, and the table is there, with the runs and
  the code the page was made from (`scripts/run_book.py --from-tables` re-renders the page from it).

    python scripts/check_book.py [book/_build/html]
"""

from __future__ import annotations

import pathlib
import re
import sys

import nbformat
from bs4 import BeautifulSoup

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import run_book  # noqa: E402  (the chapters, and how an executed one is compared with its notebook)

BANNER = "has not been executed"


def problems_of_page(page: pathlib.Path, site: pathlib.Path) -> list[str]:
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    main = soup.find("main") or soup
    found = []
    if main.select(".math"):
        sources = [s.get("src", "") for s in soup.find_all("script") if "mathjax" in s.get("src", "").lower()]
        local = [s for s in sources if not re.match(r"^(https?:)?//", s)]
        if not local:
            found.append(f"math is typeset by MathJax from {sources or 'nowhere'}, not from the site itself")
        elif not all((page.parent / s.split("?")[0]).exists() for s in local):
            found.append(f"MathJax file missing: {local}")
    for heading in main.find_all(re.compile(r"^h[1-6]$")):
        for code in heading.find_all("code"):
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", code.get_text().strip()):
                found.append(f"heading {heading.get_text(' ', strip=True)!r} shows the variable `{code.get_text()}`")
    for element in main.select(".math") + main.find_all(["pre", "code"]):
        element.decompose()
    text = main.get_text(" ")
    for raw in ("$$", "\\["):
        if raw in text:
            found.append(f"raw math {raw!r} outside typeset math")
    return found


def draws(nb) -> bool:
    """Whether a notebook's code makes figures (through matplotlib or snipnb's plots)."""
    return any(re.search(r"\bplt\.|\bplots\.", c.source) for c in nb.cells if c.cell_type == "code")


def figures(nb) -> int:
    """How many figures a notebook's outputs hold."""
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def chapter_problems(site: pathlib.Path) -> list[str]:
    found = []
    for notebook in sorted((ROOT / "book" / "experiments").glob("*.ipynb")):
        nb = nbformat.read(notebook, as_version=4)
        executed = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        page = site / "experiments" / f"{notebook.stem}.html"
        if not page.exists():
            found.append(f"{notebook.name}: no page {page}")
            continue
        has_banner = BANNER in page.read_text(encoding="utf-8")
        if not executed and not has_banner:
            found.append(f"{page.name}: not executed and no banner saying so")
        if executed and draws(nb) and not figures(nb):
            found.append(f"{notebook.name}: executed, its code draws figures, and it shows none (a kernel "
                         f"whose matplotlib backend was Agg draws into nothing)")
        chapter = run_book.CHAPTERS_BY_NAME.get(notebook.stem)
        if chapter is None:
            found.append(f"{notebook.name}: no chapter of that name in scripts/run_book.py")
        elif executed and run_book.stale(notebook, chapter) and run_book.STALE_BANNER not in page.read_text(
                encoding="utf-8"):
            found.append(f"{page.name}: executed by other code than notebooks/{chapter.notebook}.py has "
                         f"today, and no banner saying so (run scripts/run_book.py to add it)")
    return found


def table_problems(pages: pathlib.Path, site: pathlib.Path | None = None) -> list[str]:
    """An executed page's run table: there, the page's own (the runs, code and text the page names),
    and, in the built site, a download link to it."""
    found = []
    for notebook in sorted(pages.glob("*.ipynb")):
        meta = nbformat.read(notebook, as_version=4).metadata.get("snipnb", {}).get("runs")
        if not meta:
            continue
        table = (notebook.parent / meta["table"]).resolve()
        if not table.exists():
            found.append(f"{notebook.name}: names the run table {meta['table']}, which is missing")
            continue
        if run_book.runs.summary(run_book.runs.read_text(table)) != {k: meta[k] for k in ("runs", "codes", "sha256")}:
            found.append(f"{notebook.name}: its run table {meta['table']} is not the one the page was made from")
        page = site / "experiments" / f"{notebook.stem}.html" if site is not None else None
        if page is not None and page.exists() and table.name not in page.read_text(encoding="utf-8"):
            found.append(f"{page.name}: no link to its run table {table.name}")
    return found


def main(argv: list[str]) -> int:
    site = pathlib.Path(argv[0]) if argv else ROOT / "book" / "_build" / "html"
    found = [f"{page.relative_to(site)}: {p}" for page in sorted(site.rglob("*.html"))
             if not page.name.startswith(("genindex", "search")) for p in problems_of_page(page, site)]
    found += chapter_problems(site)
    found += table_problems(ROOT / "book" / "experiments", site)
    for problem in found:
        print(problem)
    print(f"{len(found)} problems in the built book" if found else "the built book reads clean")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
