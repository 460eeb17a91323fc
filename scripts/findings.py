"""Write book/findings.md, the report's summary of results, from the executed chapters themselves.

Every chapter notebook has one code cell tagged `findings`, whose output (Markdown computed from the
chapter's own runs) states what the chapter found. This script collects those outputs, in the order
of the book's table of contents, under a link to each chapter, so the introduction (which includes
findings.md) never states a number no executed run produced. scripts/run_book.py runs it before
building the book; a test checks the committed file is up to date.

    python scripts/findings.py          # rewrite book/findings.md
    python scripts/findings.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


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


def main(argv: list[str]) -> int:
    target = BOOK / "findings.md"
    text = render()
    if "--check" in argv:
        if not target.exists() or target.read_text() != text:
            print("book/findings.md is stale: run python scripts/findings.py")
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
