# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Experiment 2: does SNIP help few-shot transfer from a pretrained network?
#
# **Question.** Experiment 1 pruned networks at initialisation. Here the network starts pretrained:
# we give it a new head and fine-tune it on $k$ images per class of a new task. Does pruning the
# weights we fine-tune, with SNIP scored on those few images (the *adaptation set*), make the
# fine-tuned network better than fine-tuning all of them? The project's write-up expected three
# things, which this notebook tests rather than assumes:
# (H1) pretraining dominates: fine-tuning a pretrained network beats training it from scratch, by
# more than pruning changes anything; (H2) at the lowest $k$, SNIP avoids overfitting and makes
# results more stable across seeds; (H3) by $k \ge 20$, dense and SNIP fine-tuning converge.
#
# **Method.** A source network is pretrained once. For every $k$ and seed, the seed fixes a nested
# $k$-shot subset of the target (the 1-shot set is inside the 2-shot set) and the new head. Then,
# with one recipe (SGD with momentum, cosine schedule, one learning rate), we fine-tune:
# - `dense`: every weight of the trained blocks;
# - `snip`: labeled SNIP, $|\partial L/\partial\theta \cdot \theta|$ summed over the whole adaptation
#   set; `snip_pseudo_labels`: label-free SNIP, the loss against the network's own predictions;
# - `magnitude`: keep the largest pretrained weights, the natural baseline for pruning *trained* weights;
# - controls: `random` pruning, and `shuffled_snip` (SNIP's per-layer densities, shuffled positions);
# - `scratch`: the same architecture trained from a random initialisation on the same subset, every
#   block trained, so "does pretraining dominate?" has a number.
#
# Pruning ranks only the weights that are trained (one global ranking over them); frozen blocks keep
# their pretrained weights and BatchNorm statistics bit for bit. `train_blocks` says what is trained
# and pruned: the `head` alone (a linear probe), the `last_block` (the last residual stage and the
# head, the write-up's "final 1–2 blocks"), the `last_two_blocks`, or `all`; `reference_blocks` are
# fine-tuned dense only, for reference. BatchNorm in the trained blocks keeps normalising with the
# source's statistics (`bn_stats="source"`): a few images per batch, and the small maps of the last
# stage at 32 px, cannot estimate them. Training from scratch has no such statistics and uses each
# batch's. We report the **best** test accuracy during training and the **final** one (the best
# epoch is chosen on the test set, so it flatters). Each method is compared with dense fine-tuning
# **on the same seed and the same trained blocks**, as a mean difference with a 95% confidence interval.
#
# **Validation.** With `val_per_class`, a fixed, class-balanced set of the target's *training*
# images is held out before any $k$-shot subset is drawn: one set for every seed, $k$ and method,
# disjoint from every subset. With `lr_candidates`, each baseline's learning rate is chosen on it
# (dense fine-tuning of the pruned blocks, whose rate the pruning methods share; each reference
# block setting; training from scratch: on `lr_seeds` seeds numbered from 10 000
# (`tuning.SEARCH_SEED_BASE`), which no grid reaches, so that no compared run took part in the
# choice, however many seeds an execution runs; the highest mean validation accuracy after the
# last epoch), and every run also reports the test accuracy at the epoch the validation
# set picks (`test_at_best_val`), an honest counterpart of the best test accuracy. The test split
# only ever gives the numbers reported. A validation set larger than the training set is a luxury
# real few-shot learning does not have; it tunes the recipe here, it is not part of the method.
#
# **Where the numbers come from.** The line "This run:" below names the source, the target and the
# grid that produced every number on this page, and what it changed from the write-up's protocol.
# If it is missing, the notebook was not executed. ImageNet weights and CIFAR-100 cannot be
# downloaded on the project's machines, so the ImageNet → CIFAR-100 chapter holds numbers only once
# someone runs it with them. The two offline chapters use a source the project pretrains itself on
# real data: MNIST digits 0–4, adapted to the digits 5–9 (new classes, same domain), and all of
# MNIST, adapted to the UCI handwritten digits scikit-learn ships (same classes, a new domain: 8×8
# scans upsampled). They run on two shared CPU cores, so their grids are cut: ResNet-18 {cite}`he2016resnet` only,
# 32-pixel images, five seeds, the last block pruned (the linear probe and full fine-tuning run
# dense, for reference), three sparsities, and for MNIST a fixed sample of its test split.
#
# **Image size and stem.** The ImageNet ResNets keep their 7×7 stride-2 stem and max-pool, so a
# 32-pixel image would reach the last stage as a single pixel. There a 3×3 kernel's eight outer
# taps meet only padding: no image can move the loss through them, their SNIP score is exactly 0,
# and pruning them is free for every criterion. We upsample inside the network to `image_size`.
# The default, 128, is what BiT's recipe (Kolesnikov et al., 2020) trains on for images of 96 pixels
# or less (resize to 160, random crop of 128); there the last stage sees 4×4. The cost grows with the
# square of the size: 224, the size of ImageNet training, costs three times as much per image as 128.
# A source the project pretrains itself can instead take the CIFAR stem (`stem="cifar"`: one 3×3
# stride-1 conv, no max-pool, as CIFAR ResNets have), which keeps the image's size until the first
# strided stage: at 32 pixels its last stage sees 4×4. Below, the share of the trained weights
# whose SNIP score is exactly 0 is reported for every run, so whether SNIP could choose at all is
# measured, not assumed.
#
# **Rerun.** `papermill notebooks/02_transfer.ipynb out.ipynb` runs ImageNet ResNet-18 → CIFAR-100
# (torchvision fetches the weights into the torch hub cache). The offline pairs: `-p source mnist:0-4
# -p target mnist:5-9 -p image_size 32` (new classes) and `-p source mnist -p target uci_digits -p
# image_size 32` (a new domain); `bash scripts/run_book.sh --only '02_transfer_mnist*'` runs both as
# the book does. Finished runs are stored in `results_dir`, one file per
# run, so a killed or extended sweep only runs what is missing. Use `-p workers 4` for parallel runs
# and `-p shard 0/2` for one shard of the grid.

# %% tags=["parameters", "remove-cell"]
source = "imagenet"  # torchvision's ImageNet weights, or a dataset the project pretrains on: "mnist:0-4", "mnist"
target = "cifar100"  # the dataset (and classes) adapted to: "mnist:5-9", "uci_digits", ...
models = ["resnet18"]  # resnet18 (the write-up's backbone) or resnet50
ks = [1, 2, 5, 10, 20]
sparsities = [0.5, 0.8, 0.9, 0.95]  # of the trained weights
methods = ["snip", "snip_pseudo_labels", "magnitude", "random", "shuffled_snip"]
train_blocks = ["head", "last_block", "last_two_blocks", "all"]  # fine-tuned dense and pruned
reference_blocks = []  # fine-tuned dense only, for reference
seeds = 5
epochs = 30
image_size = 128  # the size the backbone runs at; a self-pretrained source is pretrained at it
stem = None  # "imagenet" (7x7 stride 2, max-pool) or "cifar" (3x3 stride 1); None: imagenet for imagenet, else cifar
source_epochs = 5  # pretraining epochs of a self-pretrained source (ignored for imagenet)
source_per_seed = False  # seed s fine-tunes a source pretrained from seed s; False: every run the one from seed 0
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # runs at once, in separate processes; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each run claims
results_dir = "results/02_transfer"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)
batch_size = 32
lr = 0.01  # every fine-tuning run, unless lr_candidates chooses it
lr_candidates = []  # choose each baseline's lr among these on validation (needs val_per_class); []: lr and scratch_lr
lr_seeds = 2  # seeds of that choice, from tuning.SEARCH_SEED_BASE on: no grid's, so its winners are never compared
lr_extensions = 2  # while the chosen lr is the largest or smallest tried, try one grid step further out, at most this often
val_per_class = None  # training images per class held out for validation, apart from every k-shot subset; None: none
scratch_lr = 0.05  # training from scratch, unless lr_candidates chooses it: Experiment 1's learning rate
bn_stats = "source"  # BatchNorm of the trained blocks: "source" statistics, or each "batch"'s
eval_every = 1  # test every this many epochs; the best accuracy is the best of those tests
test_per_class = None  # test on a fixed class-balanced sample of this many per class; None: all the test split
focus_sparsity = None  # the sparsity of the accuracy-vs-k plots and the verdicts; None: 0.9, or the nearest in sparsities
focus_blocks = None  # the trained blocks of the plots and the verdicts; None: last_block if trained, else the first
focus_k = None  # the k of the accuracy-vs-sparsity plot; None: 5, or the nearest in ks
curve_epochs = []  # the budget check, judged on validation (needs val_per_class): dense and SNIP at the focus trained for each of these epochs (epochs among them); []: none
curve_every = 3  # ... tested every this many epochs
curve_seeds = 3  # ... on the grid's first this many seeds (from seed 0); at least 2
budget_note = ""  # how the grid's epochs were chosen, where that was outside this notebook (shown under Limits)
progress = True  # progress bars (the book's chapters are executed without them)

# %% tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; this cell does nothing otherwise.
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    source, target, image_size, source_epochs, seeds, epochs = "synthetic:0-4", "synthetic:5-9", 32, 1, 3, 2
    ks, sparsities, methods, train_blocks, reference_blocks = [1, 2], [0.9], ["snip", "random"], ["last_block"], []
    focus_k, test_per_class, results_dir = 2, 10, tempfile.mkdtemp()
    val_per_class, lr_candidates, lr_seeds, source_per_seed = 5, [0.01, 0.05], 1, True
    curve_epochs, curve_every, curve_seeds = [1, 2], 1, 2
    os.environ["SNIPNB_CHECKPOINTS"] = tempfile.mkdtemp()  # the smoke source is not cached for later

# %% tags=["remove-input"]
import functools

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from snipnb import checks, data, devices, plots, pretrained, provenance, stats, transfer, tuning
from snipnb.cluster import cluster_executor
from snipnb.contrasts import Contrast, check_contrasts
from snipnb.notebook import check_parameters, pick
from snipnb.report import answer, late_gain_table, seed_span, table
from snipnb.sweep import config_id, run_sweep
from snipnb.train import default_device

check_parameters()
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
device = device or str(default_device())
workers = workers or devices.default_workers(device)
focus_blocks = pick("focus_blocks", focus_blocks, train_blocks, preferred="last_block")
focus_sparsity = pick("focus_sparsity", focus_sparsity, sparsities, preferred=0.9)
focus_k = pick("focus_k", focus_k, ks, preferred=5)
stem = stem or ("imagenet" if source == "imagenet" else "cifar")
if curve_epochs and epochs not in curve_epochs:
    raise ValueError(f"curve_epochs={curve_epochs} must hold epochs={epochs}: the budget check compares the grid's "
                     f"budget with the others")
if curve_epochs and val_per_class is None:
    raise ValueError(f"curve_epochs={curve_epochs} needs val_per_class: the budget check is judged on validation "
                     f"images held out of the training split, never on the test split")
checks.integer("lr_extensions", lr_extensions, 0)
checks.integer("lr_seeds", lr_seeds, 1)
checks.integer("curve_seeds", curve_seeds, 1)
if curve_epochs and not 2 <= curve_seeds <= seeds:
    raise ValueError(f"curve_epochs={curve_epochs} pairs curve_seeds={curve_seeds} of the grid's seeds={seeds}: at "
                     f"least 2, and no more than the grid has")
# Far above any grid's seeds: a search run on a reported seed would put its winners, read at the rate they won on
# their own validation accuracy, among the compared runs, and seeds numbered right after the reported ones would
# become reported seeds as soon as a later execution raised `seeds`.
search_seeds = tuning.search_seeds(lr_seeds) if lr_candidates else range(0)
if lr_candidates and val_per_class is None:
    raise ValueError(f"lr_candidates={lr_candidates} needs val_per_class: the learning rate is chosen on validation "
                     f"images held out of the training split, never on the test split")
settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, bn_stats=bn_stats, eval_every=eval_every,
                test_per_class=test_per_class, val_per_class=val_per_class, image_size=image_size, stem=stem,
                source_epochs=source_epochs, augment=data.recipe_defaults(pretrained.parse_split(target)[0])["augment"])
make_grid = functools.partial(transfer.grid, source, target, models, ks, sparsities, methods, train_blocks, seeds,
                              reference_blocks=reference_blocks, scratch_lr=scratch_lr, source_per_seed=source_per_seed)
runs = make_grid(**settings)
blocks_trained = train_blocks + reference_blocks
side = pretrained.last_stage_size(image_size, stem)
display(Markdown(f"**This run:** source `{source}` "
                 + ("(one source per seed, pretrained from that seed)" if source_per_seed else "(one source for every run)")
                 + f" → target `{target}`, {len(runs)} runs ({len(models)} model{'s' * (len(models) > 1)} × "
                 f"{len(ks)} k × {seeds} seeds × (dense on {blocks_trained} + {len(methods)} methods × "
                 f"{len(sparsities)} sparsities on {train_blocks} + scratch)), {epochs} epochs each, "
                 + (f"each baseline's learning rate chosen on validation among {lr_candidates} (below), "
                    if lr_candidates else f"learning rate {lr} (scratch {scratch_lr}), ")
                 + f"images at {image_size} px through the {stem} stem (the last stage sees {side}×{side}), tested on "
                 f"{'the whole test split' if test_per_class is None else f'{test_per_class} test images per class'}"
                 + ("" if val_per_class is None else
                    f", validated on {val_per_class} training images per class held out of every k-shot subset")
                 + f". Code: {provenance.describe(device)}."))
# The write-up's protocol, and what this run changed of it.
protocol = dict(source="imagenet", target="cifar100", models=["resnet18"], ks=[1, 2, 5, 10, 20], seeds=5,
                train_blocks=["last_block", "last_two_blocks"])
ours = dict(source=source, target=target, models=models, ks=ks, seeds=seeds,
            train_blocks=[b for b in protocol["train_blocks"] if b in train_blocks])
changed = [f"{key}: {ours[key]} for the write-up's {value}" for key, value in protocol.items() if ours[key] != value]
display(Markdown("**Changed from the write-up's protocol:** " + ("; ".join(changed) if changed else "nothing") + "."))

# %% [markdown]
# ## Declared contrasts
# Fixed before the results, from the write-up's hypotheses and the design's controls; this cell stops
# the notebook before any run if the grid lacks one. Per model, at the focus sparsity with the focus
# blocks fine-tuned (the table names both), in final test accuracy (points), paired on seeds after averaging over
# every $k$ within a seed (the $k$-shot subsets of one seed are nested, so they are not independent):
# SNIP − dense fine-tuning of the same blocks (does pruning by SNIP help?), SNIP − random and
# SNIP − shuffled SNIP (does SNIP's choice of weights matter, beyond pruning as much, and beyond its
# per-layer budget?). They are tested together with Holm's correction and are this chapter's
# findings; every other interval below is exploratory and uncorrected.

# %% tags=["hide-input"]
PRIMARY = []
for model in models:
    focus_cell = dict(model=model, train_blocks=focus_blocks)
    if "snip" not in methods:
        continue
    PRIMARY.append(Contrast(f"{model}: SNIP − dense fine-tuning", "final_acc", {"method": "snip",
                            "sparsity": focus_sparsity}, {"method": "dense"}, within=focus_cell,
                            average_over=("k",)))
    for control in ("random", "shuffled_snip"):
        if control in methods:
            PRIMARY.append(Contrast(f"{model}: SNIP − {control.replace('_', ' ')}", "final_acc",
                                    {"method": "snip"}, {"method": control},
                                    within={**focus_cell, "sparsity": focus_sparsity}, average_over=("k",)))
if PRIMARY:
    check_contrasts(PRIMARY, runs)
    display(table(pd.DataFrame([{"contrast": c.name, "metric": "final test accuracy (points)"} for c in PRIMARY]),
                  caption=f"{len(PRIMARY)} declared contrasts at sparsity {focus_sparsity:.0%}, fine-tuning "
                          f"{focus_blocks}, paired on seeds, averaged over k = {ks}"))
else:
    display(Markdown("SNIP is not among this run's methods, so the chapter declares no contrast: every interval "
                     "below is exploratory."))

# %% [markdown]
# ## The source
# Pretrained before the sweep (a self-pretrained source is cached on disk by its settings): once, or
# once per seed with `source_per_seed`, the learning-rate search's seeds included (they fine-tune
# sources of their own, which no reported run uses; chapter 05's search at the same source settings
# fine-tunes the same ones). Its own test accuracy says how good the features are that the target
# starts from.
# Sources are pretrained in bf16 autocast where the machine does bf16 natively (under half the time of fp32
# through the CIFAR stem: benchmarks/RESULTS.md), in fp32 elsewhere: the `precision` column says which;
# the fine-tuning that follows trains in fp32 either way.

# %% tags=["hide-input"]
search_sources = {(model, pretrained.at_seed(runs[0], seed, source_per_seed).source_seed)
                  for model in models for seed in search_seeds}
sources = []
for model, source_seed in sorted({(run.model, run.source_seed) for run in runs if run.method != "scratch"}
                                 | search_sources):
    backbone = pretrained.load_source(source, model, image_size, epochs=source_epochs, seed=source_seed, stem=stem,
                                      device=device, progress=progress)
    meta = backbone.meta
    if source == "imagenet":
        sources.append(dict(model=model, weights=meta["weights"], trained_on="ImageNet-1k",
                            **{"top-1 (%)": meta["imagenet_top1"], "as measured by": "torchvision's weights meta"}))
    else:
        sources.append(dict(model=model, stem=meta["stem"], trained_on=source, seed=meta["seed"], epochs=meta["epochs"],
                            image_size=meta["image_size"], precision=meta.get("precision", "fp32"),
                            **{"test accuracy (%)": round(meta["test_acc"], 2), "as measured by": "this project"}))
    del backbone
display(pd.DataFrame(sources))

# %% [markdown]
# ## The learning rates
# With `lr_candidates`, each baseline gets its own rate: dense fine-tuning of the pruned blocks
# (every pruning method on those blocks shares its rate, so the pruned networks get the dense
# baseline's tuned rate), each reference block setting, and training from scratch, each run at every
# $k$ on `lr_seeds` seeds of its own (named below; no grid reaches them) at each candidate; the mean
# validation accuracy after the last epoch (%) picks the rate. A rate chosen at the largest or
# smallest candidate is only a bound, so its grid then gains the next rate one step further out
# and the choice is made again (at most `lr_extensions` times). No test accuracy is read.

# %% tags=["hide-input"]
sweep = functools.partial(run_sweep, functools.partial(transfer.run_transfer, device=device),
                          folder=f"{results_dir}/{source.replace(':', '_')}_to_{target.replace(':', '_')}",
                          workers=workers, shard=shard, progress=progress, executor=executor, reuse=reuse,
                          device=functools.partial(provenance.device_name, device))


def choose(tried):
    """Each baseline's rate among `tried[key]`, on validation; runs already recorded are reused."""
    searches = transfer.baseline_lr_grids(tried, source, target, models, ks, train_blocks, reference_blocks, lr_seeds,
                                          source_per_seed=source_per_seed, first_seed=search_seeds.start,
                                          **settings)
    chosen, tables = tuning.search_on_validation(searches, sweep, transfer.select_lr, shard)
    return chosen, {key: (table, len(searches[key]) // len(tried[key])) for key, table in tables.items()}


BASELINE_NAMES = {transfer.PRUNED: f"Dense fine-tuning of {', '.join(f'`{b}`' for b in train_blocks)} (the pruned runs "
                                   f"there share its rate)",
                  **{b: f"Dense fine-tuning of `{b}`" for b in reference_blocks}, "scratch": "Training from scratch"}
if lr_candidates:
    keys = [transfer.PRUNED, *reference_blocks, "scratch"]
    chosen, lr_tables, tried, edges = tuning.widen({key: lr_candidates for key in keys}, choose, lr_extensions)
    settings["lr"] = lr = chosen[transfer.PRUNED]
    scratch_lr, reference_lrs = chosen["scratch"], {b: chosen[b] for b in reference_blocks}
    runs = make_grid(**settings, scratch_lr=scratch_lr, reference_lrs=reference_lrs)
    for key in keys:
        lr_table, runs_each = lr_tables[key]
        display(Markdown(f"**{BASELINE_NAMES[key]}: {chosen[key]}** among {tried[key]}, the highest "
                         f"mean validation accuracy over {runs_each} runs per candidate "
                         f"({seed_span(search_seeds)}, which no grid reaches)."
                         + (" Still the edge of its grid after the extensions: its best rate may lie further out."
                            if key in edges else "")))
        display(lr_table.round(2))
else:
    display(Markdown(f"The learning rate {lr} (scratch {scratch_lr}) was given (`lr`, `scratch_lr`), not chosen here."))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
results = sweep(runs)
print(f"{len(results)} of {len(runs)} runs have results; {results.seconds.sum() / 3600:.2f} GPU/CPU hours in all")

# %% [markdown]
# ## Answer
# The declared contrasts, tested together: Holm's adjustment holds the chance of any false claim among them
# at 5%. These are the chapter's findings; "not detected at this power" is not evidence of no difference.
# Every table and verdict after this one is exploratory.

# %% tags=["hide-input", "findings"]
display(answer(results, PRIMARY, needed={config_id(r) for r in runs},
               setting=f"{source} → {target}, {', '.join(models)}: final test accuracy (%)",
               lead=f"{len(PRIMARY)} declared contrasts in final test accuracy at sparsity {focus_sparsity:.0%} "
                    f"fine-tuning `{focus_blocks}` (points; positive: SNIP more accurate), {seeds} seeds, each "
                    f"seed's differences averaged over k = {ks}:"))

# %% [markdown]
# ## Accuracy by k (%)
# Mean ± std over seeds: every method at the focus sparsity and trained blocks (named above each
# table), beside dense fine-tuning of every trained-block setting and training from scratch. First
# the final accuracy the verdicts use; then, with a validation set, the test accuracy at the epoch
# validation picks; last the best test accuracy over the tests during training, which is chosen on
# the test set and flatters every method.

# %% tags=["hide-input"]
metrics = ("final_acc",) + (() if val_per_class is None else ("test_at_best_val",)) + ("best_acc",)
summary = {metric: stats.summarize(results, ["model", "k", "train_blocks", "method", "sparsity"], metric)
           for metric in metrics}


def label(row):
    if row.method == "scratch":
        return "scratch"
    if row.method == "dense":
        return f"dense ({row.train_blocks})"
    return row.method


for metric, s in summary.items():
    shown = s[(s.method.isin(["dense", "scratch"])) |
              ((s.train_blocks == focus_blocks) & (s.sparsity == focus_sparsity))].copy()
    shown["run"] = shown.apply(label, axis=1)
    columns = ["scratch", *[f"dense ({b})" for b in blocks_trained], *methods]
    display(Markdown(f"**{metric}**; methods prune {focus_sparsity:.0%} of the weights of `{focus_blocks}`"))
    display(shown.pivot(index=["model", "k"], columns="run", values="mean ± std")[columns])

# %% tags=["hide-input"]
fig, axes = plots.panels(len(summary) * len(models), ncols=len(summary), height=3.2)
for row, model in zip([axes[i:i + len(summary)] for i in range(0, len(axes), len(summary))], models):
    for ax, (metric, s) in zip(row, summary.items()):
        fine_tuned = (s.train_blocks == focus_blocks) & ((s.method == "dense") | (s.sparsity == focus_sparsity))
        plots.errorbars(s[(s.model == model) & ((s.method == "scratch") | fine_tuned)], x="k", hue="method", ax=ax,
                        ylabel=f"{metric} (%)", logx=True)
        ax.set_title(f"{model}, {focus_blocks}:\n{metric} at sparsity {focus_sparsity}", fontsize="medium")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Where pruning pretrained weights breaks
# Final accuracy against sparsity at the focus k (in each panel's title), one panel per trained-block
# setting; the dashed line is dense fine-tuning of the same blocks.

# %% tags=["hide-input"]
s = summary["final_acc"]
fig, axes = plots.panels(len(train_blocks) * len(models), height=3.2)
for row, model in zip([axes[i:i + len(train_blocks)] for i in range(0, len(axes), len(train_blocks))], models):
    for ax, blocks in zip(row, train_blocks):
        part = s[(s.model == model) & (s.k == focus_k) & (s.train_blocks == blocks)]
        plots.errorbars(part[part.method != "dense"], x="sparsity", hue="method", ax=ax, ylabel="final_acc (%)")
        ax.axhline(part[part.method == "dense"]["mean"].mean(), color="k", ls="--", lw=1)
        ax.set_title(f"{model}, {blocks}, k = {focus_k}", fontsize="medium")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Can SNIP choose?
# A weight whose SNIP score is exactly 0 is one the adaptation set cannot move the loss through: a
# dead unit's, or a kernel tap that meets only padding (all eight outer taps of a 3×3 kernel on a
# 1×1 map). SNIP ranks such weights arbitrarily among themselves. Where they are at least as many
# as the weights a sparsity prunes, SNIP prunes only them, and beating magnitude, random or
# shuffled pruning then says only that those prune weights that matter, not that SNIP chose well.
# The table gives their share of the trained weights (%, mean over seeds) in the runs that rank by
# labeled SNIP; the lines below count the runs in which SNIP could prune only such weights.

# %% tags=["hide-input"]
ranked = "snip" if "snip" in methods else "shuffled_snip"  # shuffled SNIP ranks by the same saliency
scored = results[results.method == ranked].drop_duplicates(["model", "train_blocks", "k", "seed"])
if len(scored):
    display((100 * scored.pivot_table(index=["model", "train_blocks"], columns="k", values="zero_score_fraction",
                                      aggfunc="mean")).round(1))
    lines = []
    for (model, blocks), rows in scored.groupby(["model", "train_blocks"]):
        counts = ", ".join(f"{int((rows.zero_score_fraction >= s).sum())} at sparsity {s}" for s in sparsities)
        lines.append(f"- `{model}`, `{blocks}`: {rows.zero_score_fraction.min():.1%} to "
                     f"{rows.zero_score_fraction.max():.1%} of the trained weights score exactly 0 "
                     f"({len(rows)} runs; the last stage sees {side}×{side}). Runs in which SNIP prunes only "
                     f"zero-score weights: {counts}.")
    display(Markdown("\n".join(lines)))
else:
    display(Markdown("No run of this grid ranks by labeled SNIP (`snip` or `shuffled_snip`), so none reports it."))

# %% [markdown]
# ## What the masks keep
# For the first model at the focus cell (named below), seed 0:
# the share of each trained layer every criterion keeps, and how much their kept weights overlap
# (Jaccard index, 1 = the same weights). One global ranking over all trained layers can empty a
# layer; the table below counts such collapsed layers over the whole run (mean per run).

# %% tags=["hide-input"]
criteria = [m for m in methods if m != "shuffled_snip"]
focus_runs = {m: transfer.TransferRun(source=source, target=target, model=models[0], k=focus_k, seed=0, method=m,
                                      sparsity=focus_sparsity, train_blocks=focus_blocks, **settings)
              for m in criteria}
adaptation_set, _ = transfer.target_data(focus_runs[criteria[0]])
masks = {m: transfer.prepare(run, adaptation_set)[1] for m, run in focus_runs.items()}
display(Markdown(f"`{models[0]}`, k = {focus_k}, seed 0, {focus_sparsity:.0%} of `{focus_blocks}` pruned."))
fig = plt.figure(figsize=(plots.PAGE_WIDTH, 7.5), layout="constrained")
top, bottom = (part.subplots() for part in fig.subfigures(2, 1, height_ratios=[1, 1.2]))  # each lays out alone
plots.density_bars(masks, ax=top, title=f"{models[0]}, {focus_blocks}: kept weights per layer at {focus_sparsity}")
plots.overlap_matrix(masks, ax=bottom)
pruned = results[~results.method.isin(["dense", "scratch"])]
display(pruned.pivot_table(index=["model", "train_blocks", "method"], columns="sparsity", values="collapsed",
                           aggfunc="mean").round(2))

# %% [markdown]
# ## Paired differences from dense fine-tuning
# Method minus dense fine-tuning of the same blocks on the same seeds, in accuracy points, with a
# 95% t interval; `wins` counts the seeds where the method was higher. An interval that excludes 0
# is a difference the seeds agree on; one that spans 0 detects nothing at this number of seeds.

# %% tags=["hide-input"]
fine_tuned = results[results.method != "scratch"]
paired = {metric: stats.paired_difference(fine_tuned, metric, baseline={"method": "dense"},
                                          variant=["method", "sparsity"], pair_on=["seed"],
                                          group=["model", "train_blocks", "k"])
          for metric in ("best_acc", "final_acc")}
for metric, p in paired.items():
    p["cell"] = [stats.format_difference(*values) for values in zip(p["diff"], p.ci_low, p.ci_high, p.n)]
    display(Markdown(f"**{metric}**: difference from dense at sparsity {focus_sparsity}"))
    display(p[p.sparsity == focus_sparsity].pivot(index=["model", "train_blocks", "method"], columns="k",
                                                  values="cell"))

# %% [markdown]
# ## What pretraining buys
# Dense fine-tuning minus training from scratch, on the same seeds and the same few images.

# %% tags=["hide-input"]
dense_vs_scratch = results[results.method.isin(["dense", "scratch"])]
pretraining = stats.paired_difference(dense_vs_scratch, "final_acc", baseline={"method": "scratch"},
                                      variant=["train_blocks"], pair_on=["seed"], group=["model", "k"])
pretraining["cell"] = [stats.format_difference(*v) for v in zip(pretraining["diff"], pretraining.ci_low,
                                                                 pretraining.ci_high, pretraining.n)]
display(pretraining.pivot(index=["model", "train_blocks"], columns="k", values="cell"))

# %% [markdown]
# ## Stability and overfitting
# The spread of the final accuracy over seeds (std), and how far it falls from the best epoch to
# the last (best − final, a sign of overfitting the few images), at the focus blocks and sparsity
# (named below).

# %% tags=["hide-input"]
results["drop"] = results.best_acc - results.final_acc
at_focus = results[(results.train_blocks == focus_blocks) &
                   ((results.method == "dense") | (results.sparsity == focus_sparsity))]
with_scratch = pd.concat([at_focus, results[results.method == "scratch"]])
spread = with_scratch.groupby(["model", "k", "method"], sort=False).agg(std=("final_acc", "std"),
                                                                        drop=("drop", "mean"))
display(Markdown(f"Fine-tuning `{focus_blocks}`, methods at sparsity {focus_sparsity:.0%}:"))
display(spread.round(2).unstack("method"))

# %% [markdown]
# ## Is the budget long enough?
# Judged on the validation images, never on the test split (whether a budget suffices is a choice).
# First, from the grid's own runs at no extra cost: every method at the focus cell and every
# baseline (named below), each seed's validation curve averaged over $k$, and what it gained from
# its latest test at or before 70% of its epochs to its last (the table names both epochs), paired
# on seeds (exploratory, uncorrected). Training decays the learning rate to zero on a cosine
# schedule, and accuracy rises as the rate anneals whatever the budget: "still rising" suggests a
# budget too short without showing it, and a flat end does not rule one out, for the annealing
# flattens every curve at its end by construction. The test is the next one, with `curve_epochs`:
# dense fine-tuning and SNIP at the focus sparsity, fine-tuning the focus blocks at every $k$,
# trained again on the grid's first `curve_seeds` seeds for each budget in `curve_epochs` (the
# grid's among them), each with its own cosine schedule, tested every `curve_every` epochs. The
# curves show the shape and the table answers the question: what another budget gains in final
# validation accuracy over the grid's, paired on seeds after averaging over $k$ within a seed.
# SNIP − dense at each budget follows in final test accuracy, as a result, not a judgement of the
# budget.

# %% tags=["hide-input"]
grid_cell = results[(results.model == models[0]) & (results.method.isin(["dense", "scratch"]) |
                                                     ((results.train_blocks == focus_blocks) &
                                                      (results.sparsity == focus_sparsity)))].copy()
grid_cell["run"] = [label(row) for _, row in grid_cell.iterrows()]
has_curves = (val_per_class is not None and len(grid_cell) > 0 and "val_curve" in grid_cell
              and grid_cell.val_curve.notna().all()
              and grid_cell.test_epochs.map(stats.shows_late_gain).all())


def tested_window(late):
    """The epochs a late-gain table reads from and to, as its rows give them."""
    starts, ends = sorted(set(late.start)), sorted(set(late.end))
    if len(starts) == 1 and len(ends) == 1:
        return f"from epoch {starts[0]} to epoch {ends[0]}"
    return f"from epoch {' or '.join(map(str, starts))} to epoch {' or '.join(map(str, ends))} (each row says which)"


if has_curves:
    late = transfer.late_gains(grid_cell, "run")
    display(table(late_gain_table(late, "run", "epoch"),
                  caption=f"Validation accuracy gained {tested_window(late)} ({models[0]}, the grid's {epochs}-epoch "
                          f"runs; methods prune {focus_sparsity:.0%} of `{focus_blocks}`; {seed_span(grid_cell.seed)}, "
                          f"each averaged over k)"))
else:
    display(Markdown("No late-gain table: " + ("this run holds no validation set (`val_per_class`)."
                                               if val_per_class is None else
                                               "the grid's runs were tested once, or not before the last 30% of "
                                               "their epochs, or were recorded before runs kept their curves.")))

# %% tags=["hide-input"]
if curve_epochs:
    focus_runs_all = [r for r in runs if r.model == models[0] and r.train_blocks == focus_blocks and
                      (r.method == "dense" or (r.method == "snip" and r.sparsity == focus_sparsity))]
    # The grid's first seeds: the search ran on seeds of its own, so none of these runs won a search.
    wanted = transfer.curve_runs(focus_runs_all, curve_epochs, curve_every, curve_seeds, first_seed=0)
    budget = sweep(wanted)
    if len(budget) < len(wanted):
        # Each seed's mean over k, at budgets missing different runs, would compare different k's (and so would
        # the SNIP − dense gaps below): stop, as the learning-rate search does.
        raise RuntimeError(f"the budget check has {len(budget)} of its {len(wanted)} runs (shard {shard} ran its "
                           f"slice): run every shard, then run again to read it")
    budget["run"] = budget.method.map({"dense": "dense", "snip": f"SNIP {focus_sparsity:.0%}"})
    long = transfer.curves(budget, "val")
    mean_curves = long.groupby(["k", "run", "epochs", "epoch"]).acc.mean().reset_index()
    fig, axes = plots.panels(len(ks), ncols=min(len(ks), 3), height=2.6)
    for ax, k in zip(axes, ks):
        for (name, length), part in mean_curves[mean_curves.k == k].groupby(["run", "epochs"]):
            ax.plot(part.epoch, part.acc, marker=".", linestyle="-" if length == max(curve_epochs) else "--",
                    color="C0" if name == "dense" else "C1", label=f"{name}, {length} epochs")
        ax.axvline(epochs, color="0.6", linewidth=0.8)
        ax.set_title(f"k = {k}", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
    for ax in axes[len(ks):]:
        ax.set_visible(False)
    plots.shared_legend(fig, axes[:len(ks)])
    budget_seeds = seed_span(budget.seed)
    fig.suptitle(f"Mean validation accuracy over {budget_seeds} ({models[0]}, `{focus_blocks}`; grey: the "
                 f"grid's {epochs} epochs)", fontsize="medium")
    plt.show()
    gains = transfer.budget_gains(budget, epochs, ["run"])
    gains = gains.assign(reading=[stats.verdict(row, exploratory=True) for _, row in gains.iterrows()])
    display(table(gains[["run", "epochs", "reading"]].rename(columns={"epochs": "budget (epochs)"}),
                  caption=f"Final validation accuracy at each budget minus at {epochs} epochs (points, mean over k "
                          f"within a seed; {budget_seeds})"))
    per_seed = stats.seed_means(budget, "final_acc", ["seed"], average_over=["k"], by=["run", "epochs"])
    gaps = stats.paired_difference(per_seed, "final_acc", baseline={"run": "dense"}, variant=["run"], pair_on=["seed"],
                                   group=["epochs"])
    if len(gaps):
        gaps = gaps.assign(reading=[stats.verdict(row, exploratory=True) for _, row in gaps.iterrows()])
        display(table(gaps[["epochs", "run", "reading"]].rename(columns={"epochs": "budget (epochs)"}),
                      caption="SNIP − dense final test accuracy at each budget (points, mean over k within a seed): "
                              "a result at each budget, not a judgement of it"))
else:
    display(Markdown("No budget check in this run (`curve_epochs` is empty): the grid's budget is not shown to suffice."))

# %% [markdown]
# ## Verdicts on the hypotheses
# The write-up's hypotheses read from this run's paired differences in **final** accuracy: exploratory
# and uncorrected (the tested answer is above). Computed from this run, so a rerun with other
# parameters never shows stale claims.

# %% tags=["hide-input"]
final = paired["final_acc"]
focus = final[(final.train_blocks == focus_blocks) & (final.sparsity == focus_sparsity)]
low_k, high_k = min(ks), max(ks)


def count(rows):
    readings = [stats.ci_reading(lo, hi) for lo, hi in zip(rows.ci_low, rows.ci_high)]
    return (f"higher in {readings.count('higher')}, lower in {readings.count('lower')}, "
            f"not detected at this power in {len(readings) - readings.count('higher') - readings.count('lower')}")


def at(rows, k):
    row = rows[rows.k == k].iloc[0]
    reading = stats.ci_reading(row.ci_low, row.ci_high)
    return f"{stats.format_difference(row['diff'], row.ci_low, row.ci_high, row.n)} ({reading})"


lines = []
for model in models:
    # H1: pretraining against scratch, k by k, and beside the size of what SNIP changes.
    gain = pretraining[(pretraining.model == model) & (pretraining.train_blocks == focus_blocks)]
    helped = sorted(gain[gain.ci_low > 0].k)
    snip_effect = focus[(focus.method == "snip") & (focus.model == model)]["diff"].abs().max()
    lines.append(f"- **H1** ({model}, pretraining dominates). Dense fine-tuning of `{focus_blocks}` minus scratch: "
                 + ", ".join(f"{at(gain, k)} at k = {k}" for k in ks) + ". "
                 + (f"Pretraining helps where the seeds agree, at k ∈ {helped}; " if helped
                    else "At no k do the seeds agree that pretraining helps; ")
                 + f"over all trained-block settings and k: {count(pretraining[pretraining.model == model])}. "
                 f"The largest SNIP − dense difference at {focus_sparsity} is {snip_effect:.1f} points.")
    snip = focus[(focus.method == "snip") & (focus.model == model)]
    lowest = at_focus[(at_focus.model == model) & (at_focus.k == low_k) & at_focus.method.isin(["dense", "snip"])]
    std = lowest.groupby("method")["final_acc"].std()
    drop = stats.paired_difference(lowest, "drop", baseline={"method": "dense"}, variant=["method"],
                                   pair_on=["seed"]).iloc[0]
    lines.append(f"- **H2** ({model}, k = {low_k}): SNIP − dense {at(snip, low_k)}. Seed-to-seed std of the final "
                 f"accuracy: {std['snip']:.2f} for SNIP, {std['dense']:.2f} for dense (descriptive: {seeds} seeds "
                 f"cannot test a variance). Fall from the best epoch to the last, SNIP − dense: "
                 f"{stats.format_difference(drop['diff'], drop.ci_low, drop.ci_high, drop.n)} "
                 f"({stats.ci_reading(drop.ci_low, drop.ci_high)}).")
    top = snip[snip.k == high_k].iloc[0]
    size = snip.set_index("k")["diff"].abs()
    lines.append(f"- **H3** ({model}, k = {high_k}): SNIP − dense {at(snip, high_k)}; its size is {size[high_k]:.1f} "
                 f"points at k = {high_k} against {size[low_k]:.1f} at k = {low_k}. "
                 + ("An interval spanning 0 is consistent with convergence; it does not show it."
                    if stats.ci_reading(top.ci_low, top.ci_high) == "not detected at this power"
                    else "The seeds agree that the two have not converged."))
# Is it SNIP's choice of weights, or any pruning at that density? SNIP against each control, paired.
for control in ("snip_pseudo_labels", "magnitude", "random", "shuffled_snip"):
    rows = focus[focus.method == control]
    if len(rows) and "snip" in methods:
        pair = at_focus[at_focus.method.isin(["snip", control])]
        versus = stats.paired_difference(pair, "final_acc", baseline={"method": control}, variant=["method"],
                                         pair_on=["seed"], group=["model", "k"])
        lines.append(f"- `{control}` at {focus_sparsity} on `{focus_blocks}`, over (model, k) cells: against dense "
                     f"{count(rows)}; SNIP against it {count(versus)}.")
display(Markdown("**Exploratory readings of the write-up's hypotheses** (uncorrected):\n\n" + "\n".join(lines)))

# %% [markdown]
# **Where it breaks.** The lowest sparsity at which a method's final accuracy at the focus k is
# below dense fine-tuning of the same blocks with an interval that excludes 0 ("—": at no sparsity
# of this run).

# %% tags=["hide-input"]
at_k = final[final.k == focus_k]
display(Markdown(f"At k = {focus_k}:"))
breaks = at_k[at_k.ci_high < 0].groupby(["model", "method", "train_blocks"]).sparsity.min()
breaks = breaks.reindex(pd.MultiIndex.from_frame(at_k[["model", "method", "train_blocks"]].drop_duplicates()))
display(breaks.unstack("train_blocks").reindex(columns=train_blocks).map(lambda v: "—" if pd.isna(v) else v))

# %% [markdown]
# ## Limits
# - **One recipe.** The pruning methods share dense fine-tuning's rate on the same blocks; each
#   reference block setting and training from scratch have their own. No rate is tuned per method
#   or per $k$. "The learning rates" above says whether this run chose them on its validation set or
#   was given them. A given rate was chosen outside this notebook: the offline chapters' first rate
#   came from a pilot read on a test split, which is why the choice on validation exists; and
#   before each baseline had its own, fine-tuning every block of the 5–9 pair's source at the last
#   block's rate collapsed to chance. A rate chosen at the edge of its grid, even after the grid was
#   widened, is a bound, and "The learning rates" says so.
# - **The pruned runs borrow dense fine-tuning's rate.** With `lr_candidates`, the search trains
#   each baseline on `lr_seeds` seeds of its own, from 10 000, which no grid reaches (with
#   `source_per_seed`, each from a source of its own), so no compared run took part in choosing a
#   rate, however many seeds an execution runs. The rate the pruning methods share was chosen for
#   dense fine-tuning, not for them, so each method − dense, the declared SNIP − dense among them,
#   leans towards dense. SNIP against its controls has no known sign (neither side was searched),
#   nor has dense − scratch (both were).
# - **The budget check leans towards "enough".** The rates were chosen for the grid's budget on
#   this validation set, and the check's other budgets run at those rates untuned: it compares a
#   tuned budget with untuned longer ones, which favours the grid's.
# - **One validation set.** The validation images are drawn once and shared by every seed, $k$ and
#   method, as in chapter 01: the seeds vary the $k$-shot subsets, not the validation set, so the
#   choice of rates and the budget's reading leave out how another validation draw would move them.
# - **Best accuracy flatters.** It is the best of the tests during training, chosen on the test
#   set; the verdicts use the final accuracy, and with a validation set `test_at_best_val` is the
#   test accuracy at the epoch validation picks. The offline chapters test every 15 epochs (two or
#   four tests a run), so the fall from best to final is a coarse measure; "Is the budget long
#   enough?" tests a few of their runs at every few epochs.
# - **Few seeds.** With 3 to 5 seeds an interval is wide; "not detected at this power" means just
#   that, and the seed-to-seed standard deviations are descriptive.
# - **One source, unless `source_per_seed`.** Without it every run fine-tunes one source, pretrained
#   once from seed 0: the seeds vary the few-shot subsets, the new head and the order of the data,
#   not the source, so the intervals leave out how far another pretraining of the same recipe would
#   move them. That is not small: the 5–9 source pretrained again on another thread count moved this
#   chapter's single runs by several points (benchmarks/RESULTS.md, "Would bf16 training change
#   chapter 02's findings?"). `-p source_per_seed True` pretrains one source per seed, so the seeds
#   measure both; "This run" says which this page used.
# - **Offline sources are small.** A ResNet-18 pretrained for a few epochs on MNIST digits is a far
#   narrower source than ImageNet; how far it beats training from scratch on these targets is what
#   "What pretraining buys" measures. The offline chapters test the protocol on real data; they are
#   not a substitute for the ImageNet → CIFAR-100 chapter.
# - **Image size.** Through the ImageNet stem at 32 pixels the last stage sees a 1×1 map: its 3×3
#   kernels use only their centre tap, so it acts like a stack of fully connected layers, and most
#   of its weights cannot affect the output at all ("Can SNIP choose?" gives the share). Any
#   criterion that looks at the data keeps the centre taps; criteria that do not (magnitude,
#   random, shuffled SNIP) spend their budget on dead weights. The CIFAR stem at 32 pixels, or the
#   ImageNet stem at 128 or 224, leave the last stage a 4×4 map or more: a different question.
# - **The new head is pruned too.** It is part of the trained weights, and one global ranking
#   covers it. Its fresh weights are smaller than pretrained ones, so global magnitude pruning
#   can remove it entirely (the collapsed layers above); SNIP's gradient factor keeps it.

# %% tags=["remove-input"]
if budget_note:  # a chapter whose budget was chosen outside this notebook says how (scripts/run_book.py)
    display(Markdown(f"- **How the budget was chosen.** {budget_note}"))
