"""Execute the report's chapters with papermill, then build the book.

    python scripts/run_book.py --list                       # the chapters, their parameters and cost
    python scripts/run_book.py                              # every chapter this machine can run
    python scripts/run_book.py --only 01_few_shot_mnist     # one chapter, by exact name
    python scripts/run_book.py --only '0[34]_'              # or by a pattern anchored at the start
    python scripts/run_book.py --only 01_few_shot_mnist -p seeds 2 --out /tmp/try   # try a setting
    python scripts/run_book.py -P 00_snip_mnist epochs 40   # a parameter for one chapter only

`-p NAME VALUE` goes to every selected chapter that declares NAME (others are told and skip it);
`-P CHAPTER NAME VALUE` to one chapter. Values are YAML, as papermill's `-y`.
Chapters that need data this project cannot download here (CIFAR-100, ImageNet weights) run only
when asked (`--only`, or `--all`) or on a machine with a GPU. A chapter that fails goes into the book
unexecuted, under a banner that says so and how to run it. `--out DIR` writes the executed notebooks
there instead of book/experiments/, and then the book is not rebuilt, so trying a setting never
touches the committed report.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import nbformat
import papermill
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK_CHAPTERS = ROOT / "book" / "experiments"


@dataclasses.dataclass(frozen=True)
class Chapter:
    name: str  # the file in book/experiments/
    notebook: str  # in notebooks/
    title: str  # the page's heading
    parameters: dict = dataclasses.field(default_factory=dict)
    on_demand: bool = False  # needs data or compute the project's machines do not have: run when asked
    cost: str = ""  # measured wall time, for --list and the README


CHAPTERS = [
    Chapter("00_snip_mnist", "00_snip_mnist", "SNIP on MNIST: does the paper's Table 1 reproduce?",
            dict(workers=2, stack=6), cost="CPU (2 cores, shared) ≈ 2 h"),
    # MNIST is the real data the project's own machines have: a grid sized for a CPU.
    Chapter("01_few_shot_mnist", "01_few_shot", "Experiment 1 on MNIST: does SNIP help few-shot learning from scratch?",
            dict(dataset="mnist", models=["simple_convnet"], sparsities=[0.9, 0.95], seeds=3, eval_every=5),
            cost="CPU (2 cores) ≈ 40 min"),
    Chapter("01_few_shot_cifar100", "01_few_shot",
            "Experiment 1 on CIFAR-100: does SNIP help few-shot learning from scratch?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
    # Split-MNIST with an MLP, as van de Ven et al. run it; Split CIFAR-100 with ResNet-18 as the write-up.
    Chapter("03_snip_ewc_mnist", "03_snip_ewc", "Experiment 3 on MNIST: can SNIP saliency replace the Fisher in EWC?",
            dict(dataset="mnist", model="lenet300_100", seeds=3, epochs=4), cost="CPU (2 cores) ≈ 1.5 h"),
    Chapter("03_snip_ewc_cifar100", "03_snip_ewc",
            "Experiment 3 on Split CIFAR-100: can SNIP saliency replace the Fisher in EWC?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
    Chapter("04_snip_packnet_mnist", "04_snip_packnet",
            "Experiment 4 on MNIST: does SNIP pick better weights for PackNet?",
            dict(dataset="mnist", model="lenet300_100", seeds=3, epochs=4), cost="CPU (2 cores) ≈ 1.5 h"),
    Chapter("04_snip_packnet_cifar100", "04_snip_packnet",
            "Experiment 4 on Split CIFAR-100: does SNIP pick better weights for PackNet?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
]


def select(chapters, patterns: list[str], everything: bool, gpu: bool) -> list[Chapter]:
    """By exact name, or a regular expression matched at the start of the name (so '00' is chapter 00,
    never '..._cifar100'). Without patterns: every chapter this machine can run."""
    if not patterns:
        return [c for c in chapters if everything or gpu or not c.on_demand]
    chosen = [c for c in chapters if any(c.name == p or re.match(p, c.name) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no chapter matches {patterns}; --list shows them")
    return chosen


def declared(notebook: pathlib.Path) -> dict:
    return {name: spec["default"] for name, spec in papermill.inspect_notebook(str(notebook)).items()}


def tidy(path: pathlib.Path, title: str, banner: str | None = None) -> None:
    """Make an executed (or unexecuted) notebook a book page: the chapter's own title, papermill's
    injected parameters out of the page, progress-bar frames out of the outputs, a banner on top
    when it did not run."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    first = next((c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), None)
    if first is not None:
        lines = first.source.lstrip().split("\n")
        first.source = "\n".join([f"# {title}", *lines[1:]])
    if banner:
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(f"```{{warning}}\n{banner}\n```"))
    nbformat.write(nb, path)


def _executed(path: pathlib.Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def run(chapter: Chapter, out: pathlib.Path, everyone: dict, mine: dict, log_output: bool) -> bool:
    notebook = ROOT / "notebooks" / f"{chapter.notebook}.ipynb"
    known = declared(notebook)
    parameters = dict(chapter.parameters)
    for name, value in everyone.items():
        if name in known:
            parameters[name] = value
        else:
            print(f"   {chapter.name} has no parameter {name!r}; not passed to it")
    unknown = [name for name in mine if name not in known]
    if unknown:
        raise SystemExit(f"{chapter.name} has no parameter {unknown}; it has {sorted(known)}")
    parameters.update(mine)
    target = out / f"{chapter.name}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        executed = pathlib.Path(tmp) / target.name
        try:
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(ROOT),
                                       log_output=log_output, progress_bar=not log_output)
        except Exception as error:  # the notebook's own error message is the useful part
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            print(f"!! {chapter.name} did not run: {reason}", file=sys.stderr)
            if target.exists() and _executed(target):
                print(f"   kept the executed {target} that was there", file=sys.stderr)
                return False
            target.write_bytes(notebook.read_bytes())
            command = f"bash scripts/run_book.sh --only {chapter.name}"
            tidy(target, chapter.title, banner=(
                f"**This chapter has not been executed**: the last attempt stopped with: {reason}\n\n"
                f"It holds no numbers. To run it, provide the data (see the README's Data section) and run "
                f"`{command}` ({chapter.cost})."))
            return False
        target.write_bytes(executed.read_bytes())
    tidy(target, chapter.title)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the chapters and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a chapter's name, or a pattern matched at the start of names (repeatable)")
    parser.add_argument("--all", action="store_true", help="also the on-demand chapters (CIFAR-100, ImageNet)")
    parser.add_argument("--out", type=pathlib.Path, default=BOOK_CHAPTERS,
                        help="where the executed notebooks go (default: the book; elsewhere the book is not rebuilt)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every selected chapter that declares it (YAML value)")
    parser.add_argument("-P", nargs=3, action="append", default=[], metavar=("CHAPTER", "NAME", "VALUE"),
                        help="a parameter for one chapter (YAML value)")
    parser.add_argument("--log-output", action="store_true", help="stream each notebook's output to the terminal")
    args = parser.parse_args(argv)

    patterns = args.only or ([os.environ["ONLY"]] if os.environ.get("ONLY") else [])
    if args.list:
        for c in CHAPTERS:
            when = "on demand" if c.on_demand else "default"
            print(f"{c.name:28} {when:10} {c.cost:24} {c.notebook}.ipynb {c.parameters}")
        return 0
    import torch

    chosen = select(CHAPTERS, patterns, args.all, torch.cuda.is_available())
    names = {c.name for c in CHAPTERS}
    for chapter_name, _, _ in args.P:
        if chapter_name not in names:
            raise SystemExit(f"-P names no chapter: {chapter_name!r}; --list shows them")
    everyone = {name: yaml.safe_load(value) for name, value in args.p}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for chapter in chosen:
        print(f"== {chapter.name}")
        mine = {name: yaml.safe_load(value) for c, name, value in args.P if c == chapter.name}
        if not run(chapter, out, everyone, mine, args.log_output):
            failed.append(chapter.name)
    if out == BOOK_CHAPTERS.resolve():
        subprocess.run(["jupyter-book", "build", str(ROOT / "book")], check=True)
        print(f"The report is at {ROOT / 'book' / '_build' / 'html' / 'index.html'}")
    else:
        print(f"Executed notebooks are in {out}; the book was not rebuilt")
    if failed:
        print(f"Not executed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
