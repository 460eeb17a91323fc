# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Experiment 1: does SNIP help few-shot learning from scratch?
#
# **Question.** With only $k$ images per class, a dense network can memorise its training set. Does
# a network pruned once at initialisation by SNIP {cite}`lee2019snip` generalise better from the same few images?
# The project's write-up gave four hypotheses, which this chapter tests rather than assumes:
# (H1) SNIP at 90% sparsity beats the dense network for $k \le 10$; (H2) the gain shrinks as $k$ grows;
# (H3) labeled SNIP beats label-free and cross-domain SNIP; (H4) cross-domain SNIP holds up at high
# sparsity.
#
# **Method.** For every model, $k$ and seed, the seed fixes the initialisation and the $k$-shot subset.
# The subsets are nested: the 1-shot set is inside the 2-shot set, and so on. On that subset we train,
# with one recipe (SGD with nesterov momentum, cosine schedule; crop-and-flip augmentation on CIFAR
# only), a dense network and pruned copies of the same initialisation:
# - `snip`: labeled SNIP, scored on the whole few-shot set;
# - `snip_pseudo_labels`: label-free SNIP, the loss against the network's own predictions;
# - `snip_cross_domain`: labeled SNIP scored on as many images of *another* dataset (CIFAR-10 for
#   CIFAR-100; for MNIST the UCI handwritten digits scikit-learn ships: other writers, another scanner,
#   8 px scans upsampled to 28 px);
# - controls: `random` pruning, and `shuffled_snip` (SNIP's per-layer densities, shuffled positions
#   {cite}`frankle2021missing`).
#
# SNIP scores with BatchNorm in *eval* mode by default: at initialisation the running statistics are
# the identity, so every image is scored alone and the score does not depend on which images share
# the batch; *train* mode normalises by the few-shot batch's own statistics. The two give different
# masks, and one grid cell below measures what that changes.
#
# We report the **final** test accuracy and the **best** one over the epochs at which the test set was
# evaluated; the best is chosen on the test set, so it flatters every method alike. Each method is
# compared with dense **on the same seeds**, as a mean difference with a 95% confidence interval.
#
# Runs that share a model and $k$ train together as one stack (`snipnb.stack`): one vmapped forward
# pass for all of them, each with its own data order, mask, optimiser state and BatchNorm statistics.

# %% tags=["parameters", "remove-cell"]
models = ["resnet18", "resnet20", "vgg11", "wrn16_2", "simple_convnet"]
ks = [1, 2, 5, 10, 20]
sparsities = [0.5, 0.8, 0.9, 0.95]
methods = ["snip", "snip_pseudo_labels", "snip_cross_domain", "random", "shuffled_snip"]
seeds = 5
epochs = 30
dataset = "cifar100"
source = None  # cross-domain saliency data; None: the library's default for the dataset
bn_mode = "eval"  # BatchNorm while scoring SNIP: "eval" (running statistics) or "train" (batch statistics)
batch_size = 32
lr = 0.05
eval_every = 5  # test every this many epochs and after the last; the best accuracy is the best of those
stack = None  # runs trained together as one stacked model; 1 trains them one by one; None: 1 on the CPU (faster there), 32 on a GPU
focus_sparsity = None  # the sparsity of the accuracy-vs-k plot and the verdicts; None: 0.9, or the nearest in sparsities
focus_k = None  # the k of the accuracy-vs-sparsity plot, the mask comparison and the BatchNorm ablation; None: 5 or the nearest
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # processes running stacks at once; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each stack claims
results_dir = "results/01_few_shot"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)

# %% tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; this cell does nothing otherwise.
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    models, ks, sparsities, seeds, epochs, dataset = ["simple_convnet"], [1, 2], [0.9], 2, 2, "synthetic"
    results_dir, eval_every = tempfile.mkdtemp(), 1

# %% tags=["remove-input"]
import functools

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from snipnb import checks, data, devices, fewshot, plots, provenance, stats
from snipnb.cluster import cluster_executor
from snipnb.contrasts import Contrast, check_contrasts
from snipnb.notebook import check_parameters, pick
from snipnb.report import answer, table
from snipnb.sweep import config_id, run_sweep
from snipnb.train import default_device

check_parameters()
checks.integer("seeds", seeds, 1)
focus_k = pick("focus_k", focus_k, ks, preferred=5)
focus_sparsity = pick("focus_sparsity", focus_sparsity, sparsities, preferred=0.9)
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
data.load_cached(dataset, True, data.recipe_defaults(dataset)["synthetic_shape"])  # a missing dataset fails here
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
run_device = device
device = device or str(default_device())
workers = workers or devices.default_workers(device)
stack = stack or devices.default_stack(device)
checks.integer("stack", stack, 1)
source_name = source or fewshot.CROSS_DOMAIN_SOURCE[dataset]
settings = dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, eval_every=eval_every,
                **data.recipe_defaults(dataset))
runs = fewshot.grid(models, ks, sparsities, methods, seeds, source=source, bn_mode=bn_mode, **settings)
other_bn = "train" if bn_mode == "eval" else "eval"
bn_runs = [fewshot.FewShotRun(model=models[0], k=focus_k, seed=s, method="snip", sparsity=focus_sparsity,
                              bn_mode=other_bn, **settings) for s in range(seeds)]
display(Markdown(
    f"**This run:** dataset `{dataset}`, {len(runs)} runs ({len(models)} model{'s' if len(models) > 1 else ''} × {len(ks)} values of k × {seeds} "
    f"seeds × (dense + {len(methods)} methods × {len(sparsities)} sparsities)) plus {len(bn_runs)} for the "
    f"BatchNorm ablation; {epochs} epochs each, tested every {eval_every} epochs and after the last; "
    f"cross-domain saliency from `{source_name}`; stacks of up to {stack}. "
    f"Code: {provenance.describe(device)}."))

# %% [markdown]
# ## Declared contrasts
# The comparisons this chapter tests, fixed before its results were computed, from the write-up's
# hypotheses and the design's controls; this cell stops the notebook before any run if the grid lacks one.
# After the runs they are tested together (Holm: the chance of any false claim among them is held at 5%),
# and they alone are the chapter's findings. Everything else below is exploratory and uncorrected.
#
# Per model, in **final** test accuracy (points), paired on seeds. The seed is the unit: it fixes the
# initialisation and the few-shot subsets, which are nested (the 1-shot set is inside the 5-shot set), so
# a seed's differences over $k \le 10$ are averaged into one number before seeds are compared; pooling
# (seed, k) pairs as if independent would overstate the evidence.
# - At the focus sparsity: SNIP − dense (H1); SNIP − shuffled SNIP and SNIP − random (does *which*
#   weights SNIP keeps matter, beyond how many per layer?); label-free and cross-domain SNIP − labeled
#   SNIP (H3).
# - At the highest sparsity: cross-domain SNIP − dense (H4).
#
# H2 (the gain shrinks as $k$ grows) is a trend over $k$, not a paired difference: it is read below,
# exploratory.

# %% tags=["hide-input"]
few_ks = [k for k in ks if k <= 10] or list(ks)  # H1's few-shot regime (k ≤ 10); all of ks if it has none
# (variant, baseline, sparsity, what the name says), kept where the grid has both methods
pairs = [("snip", "dense", focus_sparsity, "SNIP − dense (H1)"),
         ("snip", "shuffled_snip", focus_sparsity, "SNIP − shuffled SNIP"),
         ("snip", "random", focus_sparsity, "SNIP − random"),
         ("snip_pseudo_labels", "snip", focus_sparsity, "label-free SNIP − labeled SNIP (H3)"),
         ("snip_cross_domain", "snip", focus_sparsity, "cross-domain SNIP − labeled SNIP (H3)"),
         ("snip_cross_domain", "dense", max(sparsities), "cross-domain SNIP − dense (H4)")]
pairs = [p for p in pairs if {p[0], p[1]} <= {"dense", *methods}]
over = "k = " + ", ".join(map(str, few_ks))
PRIMARY = [Contrast(f"{model}, sparsity {sp:g}, mean over {over}: {label}", "final_acc",
                    {"method": variant, "sparsity": sp},
                    {"method": "dense"} if baseline == "dense" else {"method": baseline, "sparsity": sp},
                    within={"model": model}, average_over=("k",))
           for model in models for variant, baseline, sp, label in pairs] if seeds >= 2 else []
declared_runs = [r for r in runs if r.k in few_ks]
if PRIMARY:
    check_contrasts(PRIMARY, declared_runs)
    display(table(pd.DataFrame({"contrast": [c.name for c in PRIMARY]}),
                  caption=f"{len(PRIMARY)} declared contrasts in final test accuracy (points; positive: the first "
                          f"is more accurate), paired on seeds"))
else:
    display(Markdown("**No contrast is tested in this run**: " + ("a paired test needs at least 2 seeds, and "
                     f"seeds = {seeds}." if seeds < 2 else f"methods = {methods} has none of the pairs above.")
                     + " Everything below is exploratory."))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
results = run_sweep(functools.partial(fewshot.run_few_shot_stack, device=run_device), runs + bn_runs,
                    f"{results_dir}/{dataset}", workers=workers, shard=shard, stack=stack,
                    stack_key=fewshot.stack_key, executor=executor, reuse=reuse,
                    device=functools.partial(provenance.device_name, run_device), progress=False)
bn_results = results[results.bn_mode == other_bn]
results = results[results.bn_mode == bn_mode]
hours = results.seconds.sum() / 3600
display(Markdown(f"{len(results) + len(bn_results)} runs have results, {hours:.2f} device-hours of training "
                 f"and testing in all (a stack's time is divided among its runs). Code of the records: "
                 f"{', '.join(sorted(set(results.code)))}."))

# %% [markdown]
# ## Answer
# The declared contrasts, tested together: Holm's adjustment holds the chance of any false claim among them
# at 5%. These are the chapter's findings; "not detected at this power" is not evidence of no difference.
# Every table and verdict after this one is exploratory.

# %% tags=["hide-input", "findings"]
display(answer(results, PRIMARY, needed={config_id(r) for r in declared_runs},
               setting=f"{dataset}, {', '.join(models)}: final test accuracy (%)",
               lead=f"{len(PRIMARY)} declared contrasts in final test accuracy on `{dataset}` (points; positive: "
                    f"the first is more accurate), {seeds} seeds, each seed's differences averaged over {over}:"))

# %% [markdown]
# ## Accuracy by k
# Mean ± std over seeds, in percent, at the focus sparsity (the dense network has none).

# %% tags=["hide-input"]
def accuracy_table(metric):
    s = stats.summarize(results, ["model", "k", "method", "sparsity"], metric)
    s = s[(s.method == "dense") | (s.sparsity == focus_sparsity)]
    return s.pivot(index=["model", "k"], columns="method", values="mean ± std")[["dense", *methods]]


for metric, label in (("final_acc", "final"), ("best_acc", "best over the tested epochs")):
    display(Markdown(f"**Test accuracy, {label}**, pruned methods at sparsity {focus_sparsity}"))
    display(table(accuracy_table(metric)))

# %% tags=["hide-input"]
summary = {metric: stats.summarize(results, ["model", "k", "method", "sparsity"], metric)
           for metric in ("final_acc", "best_acc")}
fig, axes = plots.panels(2 * len(models), height=3.2)
for row, model in zip(zip(axes[::2], axes[1::2]), models):
    for ax, (metric, s) in zip(row, summary.items()):
        s = s[(s.model == model) & ((s.method == "dense") | (s.sparsity == focus_sparsity))]
        plots.errorbars(s, x="k", hue="method", ax=ax, ylabel=f"{metric} (%)", logx=True)
        ax.set_title(f"{model}: {metric.replace('_', ' ')} at sparsity {focus_sparsity}", fontsize="medium")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Accuracy by sparsity
# At the focus $k$; the dashed line is the dense network.

# %% tags=["hide-input"]
fig, axes = plots.panels(len(models), height=3.4, width=min(plots.PAGE_WIDTH, 4.5 * len(models)))
for ax, model in zip(axes, models):
    s = summary["final_acc"]
    s = s[(s.model == model) & (s.k == focus_k)]
    plots.errorbars(s[s.method != "dense"], x="sparsity", hue="method", ax=ax, ylabel="final accuracy (%)")
    ax.axhline(s[s.method == "dense"]["mean"].mean(), color="k", ls="--", lw=1)
    ax.set_title(f"{model}, k = {focus_k}", fontsize="medium")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Paired differences from dense
# Method minus dense on the same seeds, in accuracy points, with a 95% t interval. Exploratory: one
# interval per cell, none corrected for the others; an interval that spans 0 is "not detected at this
# power", not evidence of no difference.

# %% tags=["hide-input"]
paired = {metric: stats.paired_difference(results, metric, baseline={"method": "dense"},
                                          variant=["method", "sparsity"], pair_on=["seed"], group=["model", "k"])
          for metric in ("final_acc", "best_acc")}


def cell(row):
    if row.n < 2:
        return f"{row['diff']:+.1f} (n={int(row.n)})"
    return f"{row['diff']:+.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}]"


for metric, p in paired.items():
    at_focus = p[p.sparsity == focus_sparsity].assign(cell=lambda d: d.apply(cell, axis=1))
    display(Markdown(f"**{metric.replace('_', ' ')}**: difference from dense at sparsity {focus_sparsity}, "
                     f"columns are k"))
    display(table(at_focus.pivot(index=["model", "method"], columns="k", values="cell")))

# %% [markdown]
# ## What the masks look like
# For the first model at the focus $k$ and seed 0: the per-layer density each criterion picks, and
# how much their kept weights overlap (Jaccard index, 1 = the same weights).

# %% tags=["hide-input"]
criteria = [m for m in methods if m != "shuffled_snip"]
masks = {m: fewshot.masks_for(fewshot.FewShotRun(model=models[0], k=focus_k, seed=0, method=m, source=source,
                                                 sparsity=focus_sparsity, bn_mode=bn_mode, **settings))
         for m in criteria}
fig = plt.figure(figsize=(plots.PAGE_WIDTH, 7.5), layout="constrained")
top, bottom = (part.subplots() for part in fig.subfigures(2, 1, height_ratios=[1, 1.2]))  # each lays out alone
plots.density_bars(masks, ax=top, title=f"{models[0]}: kept weights per layer at sparsity {focus_sparsity}")
plots.overlap_matrix(masks, ax=bottom)

# %% [markdown]
# ## BatchNorm while scoring: eval or train statistics?
# One grid cell (first model, focus $k$, SNIP at the focus sparsity), scored both ways on the same
# seeds: how much the masks overlap, and what it does to accuracy.

# %% tags=["hide-input"]
from snipnb.pruning import mask_overlap

cell_runs = results[(results.model == models[0]) & (results.k == focus_k) & (results.method == "snip") &
                    (results.sparsity == focus_sparsity)]
both = pd.concat([cell_runs, bn_results])
bn_paired = stats.paired_difference(both, "final_acc", baseline={"bn_mode": bn_mode}, variant=["bn_mode"],
                                    pair_on=["seed"])
overlaps = [mask_overlap(*(fewshot.masks_for(fewshot.FewShotRun(model=models[0], k=focus_k, seed=s, method="snip",
                                                                sparsity=focus_sparsity, bn_mode=mode, **settings))
                           for mode in (bn_mode, other_bn))) for s in range(seeds)]
bn_line = (f"Jaccard overlap of the kept weights, {bn_mode} vs {other_bn} BatchNorm: "
           f"{pd.Series(overlaps).mean():.2f} (seeds: {', '.join(f'{o:.2f}' for o in overlaps)}). ")
if len(bn_paired):
    bn_line += f"Final accuracy, {other_bn} − {bn_mode}: {stats.verdict(bn_paired.iloc[0], exploratory=True)}."
display(Markdown(bn_line))

# %% [markdown]
# ## Per-cell verdicts (exploratory)
# The hypotheses read cell by cell, in **final** accuracy: each (model, k) cell's 95% interval, none
# corrected for the others, and the cells are not independent (a seed's nested few-shot sets). They show
# where the tested contrasts above come from; they are not findings.

# %% tags=["hide-input"]
final = paired["final_acc"]
focus = final[final.sparsity == focus_sparsity]


def count(rows):
    better, worse = int((rows.ci_low > 0).sum()), int((rows.ci_high < 0).sum())
    unclear = rows[(rows.ci_low <= 0) & (rows.ci_high >= 0)]
    text = f"better in {better}, worse in {worse}, not detected at this power in {len(unclear)} of {len(rows)} cells"
    if len(unclear):
        text += f" (there the run would detect about ±{unclear.detectable.median():.1f} points, median)"
    return text


lines = []
low_k = focus[(focus.method == "snip") & (focus.k <= 10)]
if len(low_k):
    lines.append(f"- **H1** (SNIP at {focus_sparsity} beats dense for k ≤ 10), over (model, k) cells: {count(low_k)}.")
for model in models:
    snip = focus[(focus.method == "snip") & (focus.model == model)].sort_values("k")
    if len(snip) > 2:
        # H2 is about the size of SNIP's effect, whatever its sign: does |SNIP − dense| fall with k?
        trend = snip["diff"].abs().corr(snip["k"], method="spearman")
        sign = "gains" if (snip["diff"] > 0).all() else "losses" if (snip["diff"] < 0).all() else "mixed signs"
        lines.append(f"- **H2** ({model}): SNIP − dense by k: " +
                     ", ".join(f"{d:+.1f} (k={k})" for k, d in zip(snip.k, snip["diff"])) +
                     f"; {sign}. Rank correlation of their size with k: {trend:+.2f}, so the effect "
                     f"{'shrinks' if trend < 0 else 'does not shrink'} as k grows.")
top = max(sparsities)
cross = final[(final.method == "snip_cross_domain") & (final.sparsity == top)]
if len(cross):
    lines.append(f"- **H4** (cross-domain SNIP at sparsity {top} vs dense), over (model, k) cells: {count(cross)}.")
for control in ("random", "shuffled_snip"):
    rows = focus[focus.method == control]
    if len(rows):
        lines.append(f"- Control `{control}` at {focus_sparsity} vs dense: {count(rows)}.")
lines.append("- **H3** is tested only as declared contrasts (in the answer above), one difference per seed.")
display(Markdown("Exploratory, per cell, uncorrected:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Discussion
# The answer at the top is the chapter's findings: the declared contrasts, tested as one family, computed
# rather than written, so they hold for whatever grid was run; the per-cell verdicts are exploratory.
# Read them against the controls: a SNIP variant that does no better than `random` or `shuffled_snip`
# at the same sparsity has not shown that *which* weights it keeps matters.
#
# ## Limits

# %% tags=["remove-input"]
limits = [f"- Dataset `{dataset}`; {seeds} seeds; {epochs} epochs per run at batch {batch_size} and lr {lr}; "
          f"models {', '.join(models)}.",
          f"- The best accuracy is the best of the epochs tested (every {eval_every} and the last), chosen on "
          f"the test set; the final accuracy is the honest one.",
          "- No hyperparameter was tuned per method or per k: every run uses the same recipe, which may suit "
          "dense and sparse networks differently.",
          f"- The BatchNorm ablation covers one cell ({models[0]}, k = {focus_k}, sparsity {focus_sparsity}).",
          f"- A run's numbers reproduce exactly only at its stack size (up to {stack} here; each record says "
          "its own): a stacked run and the same run alone agree to rounding for a few epochs, and over 30 "
          "epochs on a few images that rounding grows into another trajectory, up to 2.4 points of final "
          "accuracy for one run (benchmarks/RESULTS.md). Every comparison here pairs runs made the same way."]
if dataset == "mnist":
    limits.append("- MNIST is easy: at k ≥ 10 every method is near its ceiling, which leaves little room for "
                  "differences; the CIFAR-100 chapter is the write-up's real test.")
display(Markdown("\n".join(limits)))
