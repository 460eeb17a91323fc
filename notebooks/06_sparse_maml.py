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
# # Learning where to learn: MAML, ANIL, BOIL, Sparse-MAML and a SNIP-masked MAML
#
# **Question.** MAML {cite}`finn2017maml` learns an initialisation from which a few gradient steps on five images solve a
# new task. Sparse-MAML {cite}`vonoswald2021where` also learns *which* parameters those steps
# may move: one score $m$ per parameter, and the inner loop updates a parameter only where $m > 0$.
# The paper finds that structured, layer-wise sparsity emerges and that accuracy improves. This
# project asks whether SNIP, which ranks weights by connection sensitivity $|\nabla L \odot \theta|$,
# can make that choice without meta-learning it: **SNIP-MAML** updates, on each episode, only the
# weights SNIP ranks highest on that episode's support set. Is SNIP's choice better than a random one
# of the same per-layer size, or of the same fraction of every layer? Does it agree with the mask
# Sparse-MAML learns?
#
# **Methods**, all built on the same inner loop ($\alpha$ = `inner_lr`, `inner_steps` steps):
# - `maml`: every parameter adapts (second order unless `first_order`);
# - `anil`: only the head adapts; `boil`: only the body adapts, the head is fixed in the inner loop;
# - `sparse_maml`: $\theta' = \theta - \alpha\,\mathrm{step}(m)\odot\nabla L$, $\mathrm{step}(m) =
#   \tfrac12(1 + \mathrm{sign}\,m)$, $m$ meta-learned through a straight-through estimator;
#   `sparse_relu_maml`: $\theta' = \theta - \mathrm{ReLU}(m)\odot\nabla L$, $m$ a learned rate starting at $\alpha$;
# - `snip_maml`: only the top $1 - s$ conv and linear weights by SNIP saliency on the episode's support
#   set adapt (one threshold over all layers). Its two controls draw a fresh random mask on every episode:
#   `shuffled_snip_maml` adapts as many weights per layer as SNIP keeps there, at random positions
#   (SNIP's layer sizes, not its choice within a layer); `uniform_random_maml` adapts the same fraction
#   $1 - s$ of every layer (at least one weight), so it owes nothing to SNIP. A fixed random mask, the
#   same on every episode, is not run.
#
# **As published.** The two scored methods follow the code of von Oswald et al.
# (github.com/Johswald/learning_where_to_learn) where it decides a result, by default: both estimators
# are straight-through as there (the step's backward is $\tfrac12$, ReLU's is 1), so a closed score
# still gets a meta-gradient and can reopen; Sparse-MAML's scores start centred on `score_init` = 0,
# about half closed (Kaiming-uniform for Conv-4, $U(-\tfrac12, \tfrac12)$ for ResNet-12); the scores
# have their own Adam at `mask_lr` (0.0075 for Conv-4, 0.01 for ResNet-12); and BatchNorm's scale and
# shift adapt in the inner loop of Conv-4 but not of ResNet-12 (`bn_inner`), for every method alike.
# Their run script's other settings (for Conv-4: 64 filters, 35 first-order inner steps, meta-batches
# of 2 tasks) are left to this chapter's parameters; the Limits set them beside this run's.
#
# **Protocol.** 5-way episodes. Each method meta-trains for `iterations` meta-batches of
# `meta_batch` tasks with Adam (`outer_lr`). Every `eval_every` iterations it is evaluated on a fixed
# set of meta-validation episodes, and the checkpoint that scored best there is tested on
# `test_episodes` meta-test episodes, with the 95% interval of that mean. One seed fixes the
# initialisation and every episode, so all methods of a seed meet the same validation and test
# episodes. Methods are compared with MAML seed by seed (a paired difference with a t interval over
# seeds). BatchNorm always uses the statistics of the batch it sees, as in MAML and the published code.
#
# **Data.** The chapter executed in the book uses MNIST made into an Omniglot-style task set: a class
# is a digit at one of four rotations (0/90/180/270 degrees). Meta-train on digits 0–5 (24 classes),
# meta-validate on 6–7 (8 classes), meta-test on 8–9 (8 classes). For users, `dataset` may also be
# `omniglot`, `cifar_fs` (CIFAR-100, 64/16/20 classes as Bertinetto et al.) or `mini_imagenet` (files
# you provide under `$SNIPNB_DATA/mini-imagenet`).
#
# **Rerun.** `papermill notebooks/06_sparse_maml.ipynb out.ipynb -p dataset mini_imagenet -p k_shot 1
# -p inner_lr 0.01 -p inner_steps 5 -p eval_inner_steps 10 -p iterations 60000` follows MAML's Conv-4
# protocol on mini-ImageNet (32 filters, meta-batch 4) on a GPU. Finished runs are kept in
# `results_dir`, one file per run, so a killed sweep resumes; `workers` and `shard` split the grid.

# %% tags=["parameters", "remove-cell"]
methods = ["maml", "anil", "boil", "sparse_maml", "sparse_relu_maml", "snip_maml", "shuffled_snip_maml",
           "uniform_random_maml"]
dataset = "mnist_rotations"
model = "conv4"
filters = 32
n_way = 5
k_shot = 1
q_query = 15
inner_steps = 5
eval_inner_steps = None  # inner steps at validation and test; None: inner_steps
inner_lr = 0.1
outer_lr = 0.001
meta_batch = 4
iterations = 1000
first_order = False
sparsity = 0.9  # snip_maml and its two controls: the fraction of weights the inner loop leaves fixed
score_dist = None  # sparse_maml's initial scores: "kaiming_uniform", "uniform" or "constant"; None: as published (conv4: kaiming_uniform, resnet12: uniform)
score_init = 0.0  # sparse_maml: the initial scores' mean (published: 0, about half closed); with "constant", their value
mask_optimizer = "adam"  # sparse_maml and sparse_relu_maml: the scores' own optimiser, "adam" (published) or "sgd" (momentum 0.9, Nesterov)
mask_lr = None  # its learning rate; None: as published (conv4: 0.0075, resnet12: 0.01)
bn_inner = None  # every method: the inner loop adapts BatchNorm's scale and shift; None: as published (conv4: yes, resnet12: no)
eval_every = 100
val_episodes = 100
test_episodes = 600
seeds = 5
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # runs at once, in separate processes; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each run claims
synthetic_shape = (1, 28)  # (channels, image size) when dataset is "synthetic"
results_dir = "results/06_sparse_maml"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)
progress = True  # a progress bar over runs (the book's chapter runs without one)

# %% tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; this cell does nothing otherwise.
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    dataset, synthetic_shape, filters, q_query, inner_steps, iterations, eval_every = "synthetic", (1, 16), 4, 2, 1, 2, 1
    seeds, val_episodes, test_episodes, meta_batch, results_dir = 2, 4, 8, 2, tempfile.mkdtemp()

# %% tags=["remove-input"]
import functools

import pandas as pd
import torch
from IPython.display import Markdown, display

from snipnb import devices, meta, metarun, plots, provenance, published, stats
from snipnb.cluster import cluster_executor
from snipnb.contrasts import Contrast, check_contrasts
from snipnb.notebook import check_parameters
from snipnb.report import answer, late_gain_table
from snipnb.report import table as styled
from snipnb.sweep import run_sweep
from snipnb.train import default_device

check_parameters()
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
device = device or str(default_device())
workers = workers or devices.default_workers(device)
settings = dict(dataset=dataset, model=model, filters=filters, n_way=n_way, k_shot=k_shot, q_query=q_query,
                inner_steps=inner_steps, eval_inner_steps=eval_inner_steps, inner_lr=inner_lr, outer_lr=outer_lr,
                meta_batch=meta_batch, iterations=iterations, first_order=first_order, sparsity=sparsity,
                score_dist=score_dist, score_init=score_init, mask_optimizer=mask_optimizer, mask_lr=mask_lr,
                bn_inner=bn_inner, eval_every=eval_every, val_episodes=val_episodes, test_episodes=test_episodes,
                synthetic_shape=tuple(synthetic_shape))
runs = metarun.grid(methods, seeds, **settings)
run0 = runs[0]
display(Markdown(
    f"**This run:** `{dataset}`, {n_way}-way {k_shot}-shot, {q_query} queries per class; `{model}`"
    f"{f' ({filters} filters)' if model == 'conv4' else ''}; {len(methods)} methods × {seeds} seeds = {len(runs)} runs; "
    f"{iterations} meta-iterations of {meta_batch} tasks, {inner_steps} inner steps at α = {inner_lr} "
    f"({'first' if first_order else 'second'} order), Adam at {outer_lr}; BatchNorm "
    f"{'adapts in' if run0.setting('bn_inner') else 'is held out of'} the inner loop; Sparse-MAML's scores "
    f"`{run0.setting('score_dist')}` around {score_init}, and the scored methods' own {mask_optimizer} at "
    f"{run0.setting('mask_lr')}; validation on {val_episodes} episodes "
    f"every {eval_every} iterations; test on {test_episodes} episodes. Code: {provenance.describe(device)}."))

# %% [markdown]
# ## Declared contrasts
# Fixed before the results; this cell stops the notebook before any run, naming the method, if the
# grid lacks one (a smaller `methods` does not shrink the family: it stops). In
# test accuracy (points), paired on seeds (same initialisation, same episodes): Sparse-MAML,
# sparse-ReLU-MAML and SNIP-MAML each against MAML (does restricting where the inner loop learns help?;
# ANIL, BOIL and the two controls are compared with MAML only in the exploratory tables), and SNIP-MAML
# against each of its
# random controls: shuffled SNIP, with SNIP's per-layer counts (does SNIP's choice *within* a layer
# matter?), and the uniform random mask, the same fraction of every layer (does SNIP's choice matter at
# all, layers included?). Tested together with Holm's correction over all of them; every other interval
# below is exploratory and uncorrected.

# %% tags=["hide-input"]
NAMES = {"sparse_maml": "Sparse-MAML", "sparse_relu_maml": "sparse-ReLU-MAML", "snip_maml": "SNIP-MAML",
         "shuffled_snip_maml": "shuffled-SNIP MAML", "uniform_random_maml": "uniform-random MAML", "maml": "MAML"}
DECLARED_PAIRS = [(m, "maml") for m in ("sparse_maml", "sparse_relu_maml", "snip_maml")] + [
    ("snip_maml", control) for control in meta.RANDOM_CONTROLS]
PRIMARY = [Contrast(f"{NAMES[a]} − {NAMES[b]}", "test_acc", {"method": a}, {"method": b}) for a, b in DECLARED_PAIRS]
check_contrasts(PRIMARY, runs)  # every declared pair, so a method missing from the grid stops here, named
display(styled(pd.DataFrame({"contrast": [c.name for c in PRIMARY]}),
               caption=f"{len(PRIMARY)} declared contrasts in test accuracy (points), paired on seeds"))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
results = run_sweep(functools.partial(metarun.run_meta, device=device), runs, f"{results_dir}/{dataset}",
                    workers=workers, shard=shard, progress=progress, executor=executor, reuse=reuse,
                    device=functools.partial(provenance.device_name, device))
display(Markdown(f"{len(results)} of {len(runs)} runs have results; {results.seconds.sum() / 3600:.2f} device-hours in "
                 f"all. Code of the records: {', '.join(sorted(set(results.code)))}."))

# %% [markdown]
# ## Answer
# The declared contrasts, tested together: Holm's adjustment holds the chance of any false claim among them
# at 5%. These are the chapter's findings; "not detected at this power" is not evidence of no difference.
# Every table and verdict after this one is exploratory.

# %% tags=["hide-input", "findings"]
display(answer(results, PRIMARY, setting=f"{dataset}, {model}, {n_way}-way {k_shot}-shot: test accuracy (%)",
               lead=f"{len(PRIMARY)} declared contrasts in test accuracy (points; positive: the first method "
                    f"more accurate), {seeds} seeds:"))

# %% [markdown]
# ## Test accuracy (%)
# For each method: the mean over seeds of the test accuracy (± its std over seeds), and each seed's
# accuracy with the 95% interval over its test episodes. `best it.` is the iteration of the checkpoint
# meta-validation chose.

# %% tags=["hide-input"]
summary = stats.summarize(results, ["method"], "test_acc").set_index("method")
per_seed = results.sort_values("seed").groupby("method", sort=False).apply(
    lambda d: ", ".join(f"{a:.1f} ± {c:.1f}" for a, c in zip(d.test_acc, d.test_ci95)), include_groups=False)
table = pd.DataFrame({"test acc, mean ± std over seeds": summary["mean ± std"],
                      "per seed (± 95% CI over episodes)": per_seed,
                      "best it.": results.sort_values("seed").groupby("method").best_iteration.apply(
                          lambda s: ", ".join(str(int(i)) for i in s))})
display(table.loc[[m for m in methods if m in table.index]])

# %% [markdown]
# ### Published figures
# The Sparse-MAML table (mini-ImageNet, from the seed README of the paper's code) and MAML on
# CIFAR-FS (Bertinetto et al., ICLR 2019). They are shown beside ours only where the dataset, the model
# and $k$ match; on any other setup they are context, not a target. A dash: no published figure for
# that method (SNIP-MAML and its controls are this project's), or no run of ours.

# %% tags=["hide-input"]
key = (model, k_shot)
paper = pd.DataFrame({"Sparse-MAML table, mini-ImageNet": published.SPARSE_MAML_MINI_IMAGENET.get(key, {})})
if dataset == "cifar_fs" and k_shot in published.MAML_CIFAR_FS:
    paper.loc["maml", "Bertinetto et al. 2019, CIFAR-FS"] = published.MAML_CIFAR_FS[k_shot]
paper = paper.reindex([m for m in methods if m in paper.index or m in summary.index])  # ours too, not only the paper's
paper["ours"] = summary["mean"].round(2)
same_setup = dataset == "mini_imagenet" or (dataset == "cifar_fs" and model == "conv4")
display(Markdown(f"{n_way}-way {k_shot}-shot, `{model}`. " + (
    "Same dataset as a published column: compare." if same_setup else
    f"**Not comparable:** our dataset is `{dataset}`, the published columns are another dataset; shown for "
    "the ordering of methods the paper found, not for the numbers.")))
display(paper.map(lambda v: "—" if pd.isna(v) else f"{v:.2f}"))  # a method the paper did not run: a dash

# %% [markdown]
# ## Paired differences from MAML
# Method minus MAML on the same seed (same initialisation, same episodes), in accuracy points, with a
# 95% t interval over seeds; `wins` counts seeds where the method beat MAML. Uncorrected: for the methods
# whose difference from MAML is declared, the tested reading is the Answer's.

# %% tags=["hide-input"]
paired = stats.paired_difference(results, "test_acc", baseline={"method": "maml"}, variant=["method"],
                                 pair_on=["seed"])
if len(paired):
    display(paired.set_index("method").round(2))

# %% [markdown]
# ## Meta-validation accuracy over meta-training
# Mean over seeds; the chosen checkpoint is each run's best point on these curves.

# %% tags=["hide-input"]
val_curves = metarun.history_table(results, "val_acc")
fig, (ax,) = plots.panels(1, height=3.4)
for method, part in val_curves.groupby("method", sort=False):
    curve = part.groupby("iteration")["value"].agg(["mean", "std"])
    ax.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), marker="o", ms=3, capsize=2, label=method)
ax.set_xlabel("meta-iteration")
ax.set_ylabel("meta-val accuracy (%)")
ax.axhline(100 / n_way, color="grey", ls=":", lw=1)
plots.shared_legend(fig, [ax])

# %% [markdown]
# Has meta-training flattened? Each run's meta-validation accuracy at its last checkpoint minus at the
# checkpoint 30% of the budget earlier, mean over seeds with a 95% interval (exploratory, uncorrected).

# %% tags=["hide-input"]
late = stats.late_gain(val_curves, "method", fraction=0.3)
display(styled(late_gain_table(late, "method", "it."),
               caption="meta-validation gain over the last 30% of meta-training"))

# %% [markdown]
# ## Where Sparse-MAML learns to learn
# The fraction of each layer's weights whose score is above zero (the weights the inner loop may
# move), over meta-training, mean over seeds. The paper reports that whole layers close and
# that the pattern is structured by depth.

# %% tags=["hide-input"]
scored = [m for m in ("sparse_maml", "sparse_relu_maml") if m in methods]
density = metarun.history_table(results[results.method.isin(scored)], "density") if scored else pd.DataFrame()
if len(density):
    fig, axes = plots.panels(len(scored), height=3.2)
    for ax, method in zip(axes, scored):
        part = density[density.method == method]
        for layer, rows in part.groupby("layer", sort=False):
            curve = rows.groupby("iteration")["value"].agg(["mean", "std"])
            ax.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), marker="o", ms=3, capsize=2,
                        label=layer.removeprefix("body.").removesuffix(".weight"))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("fraction of weights with m > 0")
        ax.set_title(method, fontsize="medium")
    plots.shared_legend(fig, axes)

# %% [markdown]
# ## Does SNIP pick the weights Sparse-MAML learns to adapt?
# At Sparse-MAML's chosen checkpoint: the density of its learned mask per layer, beside the density
# of SNIP's mask at the same overall density (scored on the support set of each of 100 meta-test
# episodes, at the learned initialisation, averaged), and their overlap (Jaccard index). Two masks that
# keep the same layers overlap by layer structure alone, whatever they pick inside a layer, so the
# overlap is judged against `layer_chance_jaccard`: what masks with these per-layer counts share when
# the positions inside each layer are random. `chance_jaccard`, a uniform mask's overlap at that
# density, is shown for contrast. NaN: every learned score closed, no mask to compare.

# %% tags=["hide-input"]
sparse_rows = results[results.method == "sparse_maml"]
if len(sparse_rows):
    layers = [c.removeprefix("snip_density:") for c in sparse_rows.columns if c.startswith("snip_density:")]
    bars = pd.DataFrame({"Sparse-MAML (m > 0)": [sparse_rows[f"density:{n}"].mean() for n in layers],
                         "SNIP, same density": [sparse_rows[f"snip_density:{n}"].mean() for n in layers]},
                        index=[n.removeprefix("body.").removesuffix(".weight") for n in layers])
    fig, (ax,) = plots.panels(1, height=3.2)
    bars.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("fraction of the layer adapted")
    ax.set_ylim(0, 1.05)
    plots.shared_legend(fig, [ax], ncol=2)
    # Older code's records lack layer_chance_jaccard: show what they have (the verdict below says so).
    overlap = [c for c in ("seed", "density", *metarun.OVERLAP_COLUMNS) if c in sparse_rows]
    display(sparse_rows[overlap].round(3).set_index("seed"))

# %% [markdown]
# ## How stable is SNIP's mask from episode to episode?
# SNIP-MAML scores a new mask on every episode's support set, and its controls draw a fresh random mask
# on every episode. At SNIP-MAML's chosen checkpoint, on 100 meta-test episodes: the mean Jaccard of
# SNIP's mask with the next episode's (`snip_episode_jaccard`), beside what two of each control's masks
# share by chance, from the counts they keep per layer (`shuffled_chance_jaccard`,
# `uniform_chance_jaccard`). A fixed random mask, the same on every episode, is not run: where SNIP's mask
# is much steadier than the controls', SNIP-MAML − control measures stability and choice together.

# %% tags=["hide-input"]
snip_rows = results[results.method == "snip_maml"]
if len(snip_rows):
    display(snip_rows[["seed", "snip_episode_jaccard", "shuffled_chance_jaccard", "uniform_chance_jaccard"]]
            .round(3).set_index("seed"))

# %% [markdown]
# ## Exploratory verdicts
# Every method against MAML and the learned sparsity, uncorrected (the tested answer is above);
# computed from this run's numbers, so a rerun with other parameters never shows stale claims.

# %% tags=["hide-input"]
declared = {(c.variant["method"], c.baseline["method"]) for c in PRIMARY}  # the Answer's pairs, no others


def against_maml(method):
    row = paired[paired.method == method]
    if (method, "maml") in declared:
        return f"{NAMES[method]} − MAML: declared, see the Answer."
    if not len(row):
        return f"`{method}`: not run."
    return f"`{method}` − MAML: {stats.verdict(row.iloc[0], exploratory=True)}."


def learned_overlap():
    try:
        return metarun.learned_overlap_line(sparse_rows)
    except metarun.OlderRecordsError as error:  # records kept with reuse="any" may predate the chance level
        return f"- **Learned sparsity:** not judged: {error}."


lines = ["**Exploratory** (uncorrected):", ""] + [f"- {against_maml(m)}" for m in methods if m != "maml"]
lines += [f"- {c.name} ({1 - sparsity:.0%} of weights adapted): declared, see the Answer." for c in PRIMARY
          if c.baseline["method"] in meta.RANDOM_CONTROLS]
if len(snip_rows):
    lines.append(metarun.mask_stability_line(snip_rows))
if len(sparse_rows):
    lines.append(learned_overlap())
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Limits
# Where this run's settings come from: they are the notebook's parameters, and the book's execution
# sets them in `scripts/run_book.py` (chapter `06_sparse_maml_mnist`, with the reason for each). They
# were sized for a shared 2-core CPU when the chapter was first executed, and the number of
# meta-iterations was raised later until meta-validation flattened; the chapter runs no search over
# them. They follow no published protocol. The published protocols differ from each other as well: below,
# this run beside MAML's mini-ImageNet and Omniglot settings (its code) and the public Sparse-MAML run
# script's Conv-4 line ("not stated": the source does not give the value; sources in `snipnb.published`).

# %% tags=["hide-input"]
display(styled(metarun.protocol_table(run0), caption="this run's settings beside published meta-learning protocols"))
at_end = int((results.best_iteration == iterations).sum())
rising = list(late.method[late.reading == "still rising"])
display(Markdown(
    "- The book's chapter runs on a 2-core CPU (`scripts/run_book.sh --list` gives its cost); its fewer "
    f"filters and iterations are what make it affordable there. In {at_end} of {len(results)} runs the "
    "checkpoint meta-validation chose is the last one. "
    + (f"Meta-validation accuracy was still rising over the last 30% of meta-training for {', '.join(rising)} "
       "(the table under the curves): those methods are under-trained, and their ranking may change with "
       "longer training." if rising else
       "No method's meta-validation accuracy rose detectably over the last 30% of meta-training (the table "
       "under the curves gives each gain's interval: a slow rise inside it is not ruled out).")
    + (f"\n- Sparse-MAML's scores start at {score_init} for all (every parameter open, as MAML)"
       if run0.setting("score_dist") == "constant" else
       f"\n- Sparse-MAML's scores start `{run0.setting('score_dist')}` around {score_init}"
       + (" (about half closed)" if score_init == 0 else ""))
    + (f"; Adam moves each by about `mask_lr` = {run0.setting('mask_lr')} per iteration, so a score "
       "near zero flips within a few iterations" if mask_optimizer == "adam" else
       f"; SGD moves each by `mask_lr` = {run0.setting('mask_lr')} times its meta-gradient per iteration") +
    "; how it would settle over a published protocol's 40,000 to 60,000 meta-iterations is not measured here. "
    f"sparse-ReLU-MAML's m starts at α = {inner_lr}, so closing a parameter takes at least about "
    f"{inner_lr / run0.setting('mask_lr'):.0f} iterations of steady push"
    + (" (under Adam)." if mask_optimizer == "adam" else ".")
    + ("\n- MNIST rotations is far easier than mini-ImageNet, and a 6 turned upside down resembles a 9, so "
       "meta-val and meta-test classes are related. These numbers rank methods on this task set only."
       if dataset == "mnist_rotations" else "") +
    "\n- Few seeds: an interval that spans zero means a difference is not detected at this power, "
    "not that there is none."))
