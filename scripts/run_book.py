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
import ast
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


TRANSFER_CPU = dict(image_size=32, train_blocks=["last_block"], reference_blocks=["head", "all"],
                    sparsities=[0.5, 0.9, 0.98], seeds=5, epochs=30, eval_every=15, lr=0.05, progress=False)

CHAPTERS = [
    Chapter("00_snip_mnist", "00_snip_mnist", "SNIP on MNIST: does the paper's Table 1 reproduce?",
            dict(), cost="CPU (2 cores) ≈ 40 min"),
    # MNIST is the real data the project's own machines have: a grid sized for a CPU.
    Chapter("01_few_shot_mnist", "01_few_shot", "Experiment 1 on MNIST: does SNIP help few-shot learning from scratch?",
            dict(dataset="mnist", models=["simple_convnet"], sparsities=[0.9, 0.95], seeds=5, eval_every=10),
            cost="CPU (1 core of 2, shared) ≈ 75 min"),
    Chapter("01_few_shot_cifar100", "01_few_shot",
            "Experiment 1 on CIFAR-100: does SNIP help few-shot learning from scratch?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
    # Experiment 2 on real data the project has: ResNet-18 pretrained here on MNIST, adapted to new
    # digits or to the UCI digits, a grid sized for two CPU cores. ImageNet -> CIFAR-100 needs the
    # weights and the data.
    Chapter("02_transfer_mnist5to9", "02_transfer",
            "Experiment 2 on MNIST: does SNIP help fine-tuning to new classes (digits 0-4 to 5-9)?",
            dict(source="mnist:0-4", target="mnist:5-9", source_epochs=3, test_per_class=200, **TRANSFER_CPU),
            cost="CPU (1 core of 2, shared) ≈ 35 min"),
    Chapter("02_transfer_mnist_to_uci", "02_transfer",
            "Experiment 2 across domains: does SNIP help fine-tuning from MNIST to the UCI digits?",
            dict(source="mnist", target="uci_digits", source_epochs=2, **TRANSFER_CPU),
            cost="CPU (1 core of 2, shared) ≈ 50 min"),
    Chapter("02_transfer_cifar100", "02_transfer",
            "Experiment 2: does SNIP help fine-tuning ImageNet's ResNet-18 to CIFAR-100?",
            dict(source="imagenet", target="cifar100"), on_demand=True, cost="GPU: hours"),
    # Split-MNIST with an MLP, as van de Ven et al. run it; Split CIFAR-100 with ResNet-18 as the write-up.
    Chapter("03_snip_ewc_mnist", "03_snip_ewc", "Experiment 3 on MNIST: can SNIP saliency replace the Fisher in EWC?",
            dict(dataset="mnist", model="lenet300_100", seeds=5, search_seeds=2, epochs=3, permuted_epochs=1,
                 importance_examples=512, probe_examples=1000, lambdas=[0.001, 0.01, 0.1, 1, 10],
                 lambda_extensions=2), cost="CPU (1 core of 2, shared) ≈ 1 h 45 min"),
    Chapter("03_snip_ewc_cifar100", "03_snip_ewc",
            "Experiment 3 on Split CIFAR-100: can SNIP saliency replace the Fisher in EWC?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
    Chapter("04_snip_packnet_mnist", "04_snip_packnet",
            "Experiment 4 on MNIST: does SNIP pick better weights for PackNet?",
            dict(dataset="mnist", model="lenet300_100", seeds=5, search_seeds=2, epochs=4, permuted_epochs=2,
                 retrain_epochs=1, importance_examples=512, probe_examples=1000, keeps=[None, 0.25, 0.5]),
            cost="CPU (1 core of 2, shared) ≈ 50 min"),
    Chapter("04_snip_packnet_cifar100", "04_snip_packnet",
            "Experiment 4 on Split CIFAR-100: does SNIP pick better weights for PackNet?",
            dict(dataset="cifar100"), on_demand=True, cost="GPU: hours"),
    # MNIST rotations (digit x 0/90/180/270 as classes), sized for a 2-core CPU: the chapter says what was cut.
    Chapter("06_sparse_maml_mnist", "06_sparse_maml",
            "Learning where to learn on MNIST rotations: MAML, ANIL, BOIL, Sparse-MAML and SNIP-MAML",
            dict(dataset="mnist_rotations", filters=16, inner_steps=1, eval_inner_steps=3, inner_lr=0.4,
                 iterations=400, val_episodes=50, seeds=5, progress=False),
            cost="CPU (1 core of 2, shared) ≈ 30 min"),
    # SNOW (issue 12): the paper's setting when asked; the offline pairs of Experiment 2 sized for a 2-core CPU,
    # each method at the best learning rate of a one-seed pilot on the pair (the chapter's Limits say so).
    Chapter("05_snow_mnist5to9", "05_snow",
            "SNOW on MNIST digits 5–9 from a ResNet-18 pretrained on digits 0–4: channel pooling against fine-tuning",
            dict(source="mnist:0-4", target="mnist:5-9", models=["resnet18"], image_size=32, source_epochs=3,
                 ks=[10, None], focus_k=10, seeds=5, epochs=60, full_epochs=1, eval_every=20, test_per_class=200,
                 lrs={"snow": 0.1, "ft": 0.05, "fe": 0.1, "fo": 0.5}),
            cost="CPU (1 core of 2, shared) ≈ 25 min"),
    Chapter("05_snow_uci_digits", "05_snow",
            "SNOW on the UCI digits from a ResNet-18 pretrained on MNIST: channel pooling against fine-tuning",
            dict(source="mnist", target="uci_digits", models=["resnet18"], image_size=32, source_epochs=2,
                 ks=[5, None], focus_k=5, seeds=5, epochs=60, full_epochs=20, eval_every=20,
                 lrs={"snow": 0.2, "ft": 0.05, "fe": 0.05, "fo": 0.1}),
            cost="CPU (1 core of 2, shared) ≈ 25 min"),
    Chapter("05_snow_imagenet_cifar100", "05_snow",
            "SNOW on CIFAR-100 from ImageNet ResNet-50 and ResNet-18: channel pooling against fine-tuning",
            dict(source="imagenet", target="cifar100"), on_demand=True, cost="GPU: hours"),
]
CHAPTERS_BY_NAME = {chapter.name: chapter for chapter in CHAPTERS}


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
        nb.cells = [c for c in nb.cells if "banner" not in c.metadata.get("tags", [])]
        cell = nbformat.v4.new_markdown_cell(f"```{{warning}}\n{banner}\n```")
        cell.id = "banner"  # not a random one: a refreshed page changes only where its text does
        cell.metadata["tags"] = ["banner"]
        nb.cells.insert(1, cell)
    nbformat.write(nb, path)


def _executed(path: pathlib.Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _code_cells(nb) -> list:
    """The notebook's code cells, without the one papermill injects (it holds only parameters)."""
    return [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def code_of(nb) -> list[str]:
    """The code a notebook runs, without the cell papermill injects, as syntax trees: comments and
    line breaks are not changes of code."""
    def tree(source: str) -> str:
        try:
            return ast.dump(ast.parse(source))
        except SyntaxError:  # IPython syntax (magics): compare the text without its whitespace
            return re.sub(r"\s+", "", source)
    return [tree(c.source) for c in _code_cells(nb)]


def stale(target: pathlib.Path, chapter: Chapter) -> bool:
    """Whether the executed chapter ran code other than its notebook's today (its text may differ too)."""
    current = nbformat.read(ROOT / "notebooks" / f"{chapter.notebook}.ipynb", as_version=4)
    return code_of(nbformat.read(target, as_version=4)) != code_of(current)


STALE_BANNER = "was executed by an earlier version of its notebook"
PRESENTATION_TAGS = {"hide-input", "remove-input", "remove-cell", "findings"}


def retag(chapter: Chapter, target: pathlib.Path) -> bool:
    """Give an executed chapter's code cells the presentation tags (what the book hides, which cell
    states the findings) its notebook's cells carry today: tags change no number, so they need no
    rerun. Only where both have the same code cells in the same order; returns whether it did."""
    executed = nbformat.read(target, as_version=4)
    current = nbformat.read(ROOT / "notebooks" / f"{chapter.notebook}.ipynb", as_version=4)
    ours, theirs = _code_cells(executed), _code_cells(current)
    if len(ours) != len(theirs):
        return False
    for cell, source in zip(ours, theirs):
        kept = [t for t in cell.metadata.get("tags", []) if t not in PRESENTATION_TAGS]
        cell.metadata["tags"] = kept + [t for t in source.metadata.get("tags", []) if t in PRESENTATION_TAGS]
    nbformat.write(executed, target)
    return True


def mark_stale(chapter: Chapter, target: pathlib.Path) -> None:
    """A banner on an executed chapter whose notebook has changed since: its numbers stay, labelled."""
    tidy(target, chapter.title, banner=(
        f"**This chapter {STALE_BANNER}**: the numbers below are that run's, and its code and text "
        f"differ from `notebooks/{chapter.notebook}.py` today. To bring it up to date, run "
        f"`bash scripts/run_book.sh --only {chapter.name}` ({chapter.cost})."))


def placeholder(chapter: Chapter, out: pathlib.Path, reason: str) -> None:
    """The chapter's current notebook, unexecuted, under a banner that says so and how to run it."""
    target = out / f"{chapter.name}.ipynb"
    target.write_bytes((ROOT / "notebooks" / f"{chapter.notebook}.ipynb").read_bytes())
    tidy(target, chapter.title, banner=(
        f"**This chapter has not been executed**: {reason}\n\nIt holds no numbers. To run it, provide the "
        f"data (see the README's Data section) and run `bash scripts/run_book.sh --only {chapter.name}` "
        f"({chapter.cost})."))


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
            placeholder(chapter, out, f"the last attempt stopped with: {reason}")
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
    if out == BOOK_CHAPTERS.resolve():
        # Chapters not run now: unexecuted ones show the current text under a banner saying why; an
        # executed one whose notebook has changed since keeps its numbers under a banner saying so.
        for chapter in CHAPTERS:
            target = out / f"{chapter.name}.ipynb"
            if chapter in chosen:
                continue
            if not (target.exists() and _executed(target)):
                placeholder(chapter, out, "it needs data or compute the project's own machines do not have"
                            if chapter.on_demand else "it has not been run since its notebook was written")
            else:
                retag(chapter, target)
                if stale(target, chapter):
                    mark_stale(chapter, target)
    for chapter in chosen:
        print(f"== {chapter.name}")
        mine = {name: yaml.safe_load(value) for c, name, value in args.P if c == chapter.name}
        if not run(chapter, out, everyone, mine, args.log_output):
            failed.append(chapter.name)
    if out == BOOK_CHAPTERS.resolve():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "findings.py")], check=True)
        subprocess.run(["jupyter-book", "build", str(ROOT / "book")], check=True)
        print(f"The report is at {ROOT / 'book' / '_build' / 'html' / 'index.html'}")
    else:
        print(f"Executed notebooks are in {out}; the book was not rebuilt")
    if failed:
        print(f"Not executed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
