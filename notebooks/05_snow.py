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
# # SNOW: can a small network that subscribes to a frozen source's channels match fine-tuning, for a fraction of the cost?
#
# **Question.** SNOW {cite}`yoo2020snow` keeps a pretrained *source* network frozen and
# trains a small *delta* network beside it. After each of the source's stages, a channel-pooling
# layer picks $M$ of its $N$ channels and hands them, scaled by a learned weight, to the delta. The
# paper's claims are about efficiency: training and inference faster than fine-tuning at similar
# accuracy, and, for $T$ target tasks, one shared source pass plus $T$ small deltas instead of $T$
# fine-tuned networks. This chapter measures both against the three standard transfer baselines,
# and asks the project's question: does SNIP's connection sensitivity, computed once on the
# target's training images, choose the $M$ channels as well as SNOW's learned, noisy selection?
#
# **Method** (`snipnb.snow`, `snipnb.snowrun`; one training recipe for every method, SGD with
# nesterov momentum and a cosine schedule, a learning rate per method):
# - `SNOW`: the source in eval mode under `torch.no_grad()` (bit-identical after training, BatchNorm
#   statistics included); a delta of the source's shape with every width divided by `width_divisor`,
#   randomly initialised; a pooling layer after the stem and after each stage. In training it adds
#   $\mathcal{N}(0, \sigma)$ noise to its weight vector $w$ and takes the top $M$ of the noisy vector;
#   at evaluation the top $M$ of $w$. The chosen channels, times their $w$, are concatenated to the
#   delta's feature map of the same size, which feeds the delta's next stage (after the last
#   stage, its classifier). $M$ defaults to $N/$`width_divisor` at each tap, as many channels as the
#   delta has there. How $w$ learns, so that the selection can settle rather than be redrawn at
#   every step: $w$ has its own learning rate `w_lr` and weight decay `w_weight_decay` (decay
#   pulls every $w_c$ towards 0 alike, and a learning rate sized for the delta's weights barely
#   moves $w$ against the noise); the noise follows `sigma_schedule` (`cosine`: $\sigma$ annealed
#   to 0 over the training steps, so training ends on the selection evaluation uses); and a
#   channel selected again keeps its input slot in the delta's next convolution (`slot_order`
#   `stable`), a newcomer taking the slot a dropped channel freed. `SNOW (seed's setting)` is SNOW
#   as the seed describes it and the project first ran it: constant $\sigma$, slots in source
#   order, $w$ trained at the delta's learning rate and weight decay.
# - `SNOW·SNIP`: the same network, its channels fixed before training to the $M$ with the highest
#   SNIP score $|\sum \partial L/\partial w_c \cdot w_c|$, computed on the target's training images
#   with a scoring copy whose delta takes *all* $N$ channels of every tap; `SNOW·random`: $M$
#   channels at random, the control. Both still learn the scale $w$ of their channels.
# - `FT`: fine-tune every weight of the source with a new head; `FE` (feature extraction): freeze
#   the stem and the first three stages, train the last stage and a new head; `FO`: train the final
#   linear layer only. Their trained BatchNorm layers normalise with each batch's statistics.
#
# Each method is compared with `FT` **on the same seed** (the same few-shot subset, head
# initialisation and data order), as a mean difference with a 95% confidence interval. The cost of
# every run is measured in the run, on the device it trained on, on a copy of the trained network:
# training and inference images per second, FLOPs per image, and the memory of one training step.
# What serving $T$ tasks costs is measured separately, all ways of serving timed in turn on one batch.
#
# **Where the numbers come from.** The line "This run:" names the source, the target and the grid.
# For users the chapter runs an ImageNet source, as the paper and the seed's report do:
# torchvision's ImageNet ResNet-50 (and ResNet-18), on CIFAR-100 (the project's choice of target;
# the paper's own target datasets and numbers are not among the project's documents); ImageNet weights and CIFAR-100 cannot be downloaded on the project's machines, so
# that chapter holds numbers only once someone runs it. The offline chapters use sources the
# project pretrains itself on real data (Experiment 2's): MNIST digits 0–4 adapted to the digits
# 5–9 (new classes, same domain), and all of MNIST adapted to the UCI handwritten digits
# scikit-learn ships (same classes, a new domain of 8×8 scans). They run on two shared CPU cores at
# 32 pixels, through a source whose stem keeps the map large enough for the last stage to see 4×4
# (the ImageNet stem leaves it 1×1 there; "This run" says which); their limits are listed at the end.
#
# **Published numbers.** The seed this chapter grew from, a course report reproducing SNOW, states
# the method but no results, and the paper's own tables are not among the project's documents, so
# no published number is shown beside ours.
#
# **Rerun.** `papermill notebooks/05_snow.ipynb out.ipynb` runs ImageNet ResNet-50 and ResNet-18 →
# CIFAR-100 (torchvision fetches the weights into the torch hub cache). `-p source mnist:0-4
# -p target mnist:5-9 -p image_size 32 -p source_epochs 3 -y "models: [resnet18]"` runs the first
# offline pair. Finished runs are stored in `results_dir`, one file per run, so a killed or extended
# sweep only runs what is missing; `workers`, `shard` and `cluster` split the grid.

# %% tags=["parameters", "remove-cell"]
source = "imagenet"  # torchvision's ImageNet weights, or a dataset the project pretrains on: "mnist:0-4", "mnist"
target = "cifar100"  # the dataset (and classes) adapted to: "mnist:5-9", "uci_digits", ...
models = ["resnet50", "resnet18"]  # ImageNet-architecture ResNets (snipnb.pretrained)
methods = ["snow", "ft", "fe", "fo"]
selections = ["learned", "snip", "random"]  # SNOW's channels: noisy top-M (SNOW), SNIP-chosen, random
m = None  # channels pooled at each tap: None (N / width_divisor there), an int, or one int per tap
sigma = 0.1  # the standard deviation of the selection noise (at the start of training)
sigma_schedule = "cosine"  # "cosine": σ annealed to 0 over the training steps; "constant": the seed's fixed σ
slot_order = "stable"  # "stable": a reselected channel keeps its input slot; "sorted": source order (the seed's)
w_lr = 2.0  # the learning rate of the pooling weights w; None: the method's learning rate (the seed's)
w_weight_decay = 0.0  # the weight decay of w; None: `weight_decay` (the seed's)
compare_seed_setting = True  # also run SNOW as the seed describes it (snowrun.SEED_SETTING) at focus_k
width_divisor = 8  # the delta is this many times narrower than the source
ks = [None]  # images per class of the target's training split; None: all of it
seeds = 5
epochs = 30  # few-shot runs
full_epochs = None  # runs on the whole training split; None: epochs
budget_epochs = None  # the budget check: the grid's runs at focus_k trained again this long (> epochs), all seeds;
# or a list of increasing budgets, a ladder: the first trains every method again, each next one only the methods the
# step before it found still gaining on validation (needs val_per_class); None: no check
budget_note = ""  # how the budget or its ladder was chosen, where that was outside this notebook (shown under Limits)
batch_size = 64
lrs = {"snow": 0.1, "ft": 0.01, "fe": 0.01, "fo": 0.1}  # the learning rate of each method
lr_candidates = {}  # method -> rates: choose its rate among them on validation (needs val_per_class); {}: lrs as given
lr_seeds = 2  # seeds of the learning-rate search (at focus_k), from tuning.SEARCH_SEED_BASE on: no grid's
lr_extensions = 2  # while a chosen rate is a grid's largest or smallest, try one step further out, at most this often
weight_decay = 5e-4
image_size = 224  # the size the networks run at; a self-pretrained source is pretrained at it
stem = "imagenet"  # the source's stem: "imagenet" (7x7 stride 2, max-pool) or "cifar" (3x3 stride 1; self-pretrained)
source_epochs = 5  # pretraining epochs of a self-pretrained source (ignored for imagenet)
source_per_seed = False  # seed s starts from a source pretrained from seed s; False: every run from the one of seed 0
bn_stats = "batch"  # BatchNorm of the baselines' trained blocks: each "batch"'s statistics, or the "source"'s
augment = None  # crop-and-flip augmentation; None: the target's default (on for CIFAR)
eval_every = 5  # test every this many epochs and after the last; the best accuracy is the best of those
test_per_class = None  # test on a fixed class-balanced sample of this many per class; None: the whole test split
val_per_class = None  # hold this many training images per class out for validation (val_acc); None: none
focus_k = None  # the k (one of ks) of the ablations and of the channel figure; None: the whole split if ks has it, else ks[0]
ablate_m = [4, 32]  # M at every tap, against the default
ablate_sigma = [0.0, 0.01, 0.5]
ablate_width_divisor = [4, 16]
serving_tasks = [1, 2, 5]  # T target tasks served at once
timing_batch = 64  # images per batch when throughput and memory are measured
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # runs at once, in separate processes; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each run claims
results_dir = "results/05_snow"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)

# %% [markdown] tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; the next cell does nothing
# otherwise.

# %% tags=["remove-cell"]
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    source, target, models, image_size, source_epochs = "synthetic:0-4", "synthetic:5-9", ["resnet18"], 32, 1
    ks, seeds, epochs, eval_every, test_per_class = [2], 2, 2, 1, 10  # seed 10 000 searches, 0 and 1 check the budget
    budget_epochs = [3, 4]  # a ladder: 4 trains only what still gained at 3
    ablate_m, ablate_sigma, ablate_width_divisor, serving_tasks, timing_batch = [4], [0.0], [16], [1, 2], 8
    val_per_class, lr_candidates, lr_seeds, source_per_seed = 2, {"fo": [0.05, 0.1]}, 1, True
    results_dir = tempfile.mkdtemp()
    os.environ["SNIPNB_CHECKPOINTS"] = tempfile.mkdtemp()  # the smoke source is not cached for later

# %% tags=["remove-input"]
import dataclasses
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from snipnb import checks, data, devices, plots, pretrained, provenance, snow, snowrun, stats, transfer, tuning
from snipnb.cluster import cluster_executor
from snipnb.contrasts import Contrast, check_contrasts
from snipnb.notebook import check_parameters, pick
from snipnb.report import answer, late_gain_table, seed_span, table
from snipnb.sweep import config_id, run_sweep
from snipnb.train import default_device

check_parameters()
if lr_candidates and val_per_class is None:
    raise ValueError(f"lr_candidates={lr_candidates} needs val_per_class: the learning rates are chosen on validation "
                     f"images held out of the training split, never on the test split")
checks.integer("lr_seeds", lr_seeds, 1)
checks.integer("lr_extensions", lr_extensions, 0)
checks.integer("seeds", seeds, 1)
checks.integer("epochs", epochs, 1)
ladder = checks.budgets("budget_epochs", budget_epochs)
if ladder and seeds < 2:
    raise ValueError(f"budget_epochs={budget_epochs} needs seeds >= 2: the budget check pairs the grid's runs at "
                     f"focus_k with the same seeds trained longer, and one pair has no interval")
if len(ladder) > 1 and val_per_class is None:
    raise ValueError(f"budget_epochs={budget_epochs}: a ladder decides which methods train longer on validation "
                     f"images held out of the training split (val_per_class), never on the test split")
# Far above any grid's seeds: a search run on a reported seed at the chosen rate is that seed's grid run (one config
# id), read at the rate it won on its own validation accuracy; seeds right after the reported ones would become
# reported seeds as soon as a later execution raised `seeds`.
search_seeds = tuning.search_seeds(lr_seeds) if lr_candidates else range(0)
focus_k = pick("focus_k", focus_k, ks)
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
run_device = device
device = device or str(default_device())
workers = workers or devices.default_workers(device)
target_classes = pretrained.load_split(target, True).num_classes  # a missing dataset fails here
augment = data.recipe_defaults(pretrained.parse_split(target)[0])["augment"] if augment is None else augment
common = dict(batch_size=batch_size, weight_decay=weight_decay, augment=augment, image_size=image_size, stem=stem,
              bn_stats=bn_stats, eval_every=eval_every, test_per_class=test_per_class, timing_batch=timing_batch,
              source_epochs=source_epochs, val_per_class=val_per_class)
learning = dict(sigma=sigma, sigma_schedule=sigma_schedule, slot_order=slot_order, w_lr=w_lr,
                w_weight_decay=w_weight_decay)  # how the pooling weights learn, the chapter's setting


def make_runs(lrs):
    """(the grid, SNOW's run at the focus k that the ablations vary, every run) at learning rates `lrs`."""
    runs = snowrun.grid(source, target, models, ks, methods, seeds, lrs=lrs, selections=selections, epochs=epochs,
                        full_epochs=full_epochs, m=m, width_divisor=width_divisor, source_per_seed=source_per_seed,
                        **learning, **common)
    base = snowrun.SnowRun(source=source, target=target, model=models[0], method="snow", k=focus_k, m=m,
                           width_divisor=width_divisor, lr=lrs.get("snow", snowrun.SnowRun.lr),
                           epochs=(full_epochs or epochs) if focus_k is None else epochs, **learning, **common)
    ablation_runs = snowrun.ablation(base, seeds, m=ablate_m, sigma=ablate_sigma, width_divisor=ablate_width_divisor,
                                     source_per_seed=source_per_seed)
    seed_setting = dataclasses.replace(base, **snowrun.SEED_SETTING)
    at_seed = functools.partial(pretrained.at_seed, source_per_seed=source_per_seed)
    seed_setting_runs = ([at_seed(seed_setting, s) for s in range(seeds)]
                         if compare_seed_setting and seed_setting != base else [])
    budget_runs = [dataclasses.replace(r, epochs=ladder[0]) for r in runs if r.k == focus_k] if ladder else []
    return runs, base, list(dict.fromkeys(runs + [at_seed(base, s) for s in range(seeds)]
                                          + ablation_runs + seed_setting_runs + budget_runs))


runs, base, all_runs = make_runs(lrs)
if ladder and ladder[0] <= base.epochs:
    raise ValueError(f"budget_epochs={budget_epochs} must be more than the {base.epochs} epochs the grid trains at "
                     f"focus_k={focus_k}: the budget check asks what a longer budget changes")


def search_runs(tried):
    """The learning-rate search's runs over the candidates `tried` (method -> rates)."""
    return snowrun.lr_grid(tried, source, target, models, focus_k, lr_seeds, first_seed=search_seeds.start, **common,
                           epochs=base.epochs, m=m, width_divisor=width_divisor, source_per_seed=source_per_seed,
                           **learning)


if lr_candidates:
    search_runs(lr_candidates)  # a bad candidate stops the notebook here, before any run
rates = (", ".join(f"{method.upper()} {lr:g}" for method, lr in lrs.items() if method not in lr_candidates)
         + "".join(f", {method.upper()} chosen on validation, starting from {candidates}"
                   for method, candidates in lr_candidates.items())).strip(", ")
serving_runs = [snowrun.ServingRun(source=source, model=model, image_size=image_size, stem=stem, tasks=t,
                                   num_classes=target_classes, m=m, width_divisor=width_divisor, batch=timing_batch,
                                   source_epochs=source_epochs)
                for model in models for t in serving_tasks]
side = pretrained.last_stage_size(image_size, stem)
whole_split = f", {full_epochs or epochs} on the whole split" if None in ks else ""


def k_label(k):
    return "all" if k is None or (isinstance(k, float) and np.isnan(k)) else str(int(k))


display(Markdown(
    f"**This run:** source `{source}` "
    f"({'one source per seed, pretrained from that seed' if source_per_seed else 'one source for every run'}) "
    f"→ target `{target}` ({target_classes} classes); models {', '.join(models)} at "
    f"{image_size} px through the {stem} stem (the last stage sees {side}×{side}); k ∈ "
    f"{{{', '.join(k_label(k) for k in ks)}}} images per class; {seeds} seeds; {len(runs)} runs of {len(methods)} "
    f"methods (SNOW with channels {', '.join(selections)}), "
    f"{len(all_runs) - len(runs)} more for the ablations{' and the budget check' * bool(ladder)} at k = "
    f"{k_label(focus_k)}; {epochs} epochs for few-shot "
    f"runs{whole_split}, batch {batch_size}, learning rates {rates}; SNOW with "
    f"M = {'N/' + str(width_divisor) if m is None else m}, width divisor {width_divisor}, σ = {sigma} "
    f"({sigma_schedule}), slots {slot_order}, w's learning rate {'the method’s' if w_lr is None else w_lr} and "
    f"weight decay {weight_decay if w_weight_decay is None else w_weight_decay}; serving cost "
    f"for T ∈ {serving_tasks}. Code: {provenance.describe(device)}."))

# %% [markdown]
# ## Declared contrasts
# Fixed before the results; this cell stops the notebook before any run if the grid lacks one. Per
# model, at the focus k, in final test accuracy (points), paired on seeds, SNOW's runs at the
# chapter's setting: SNOW − FT (is subscribing to a frozen source less accurate than fine-tuning it?
# a difference test: "as well as" would need an equivalence margin, which the paper does not give),
# SNOW·SNIP − SNOW (does choosing the channels by SNIP beat learning them?) and SNOW·SNIP −
# SNOW·random (does SNIP's choice beat a random one?). Tested together with Holm's correction; every
# other interval below is exploratory and uncorrected. With a budget ladder (`budget_epochs` a list),
# a contrast with a side whose validation accuracy settled at a longer budget than the grid's is also
# tested with each side at its settled budget, in the same family: the comparison at convergence.

# %% tags=["hide-input"]
SNOW_SIDES = {"SNOW": {"method": "snow", "selection": "learned"}, "SNOW·SNIP": {"method": "snow", "selection": "snip"},
              "SNOW·random": {"method": "snow", "selection": "random"}, "FT": {"method": "ft"}}
present = {name for name, side in SNOW_SIDES.items()
           if side["method"] in methods and side.get("selection", selections[0]) in selections}
DECLARED = [(model, a, b) for model in models
            for a, b in (("SNOW", "FT"), ("SNOW·SNIP", "SNOW"), ("SNOW·SNIP", "SNOW·random")) if {a, b} <= present]
PRIMARY = [Contrast(f"{model}, k = {k_label(focus_k)}: {a} − {b}", "final_acc", SNOW_SIDES[a], SNOW_SIDES[b],
                    within={"model": model, "k": focus_k}) for model, a, b in DECLARED]
if PRIMARY:
    check_contrasts(PRIMARY, runs)
    display(table(pd.DataFrame({"contrast": [c.name for c in PRIMARY]}),
                  caption=f"{len(PRIMARY)} declared contrasts in final test accuracy (points), paired on seeds"))
else:
    display(Markdown("This run's methods give no declared contrast: every interval below is exploratory."))

# %% [markdown]
# ## The source
# Pretrained before the sweep (a self-pretrained source is cached on disk by its settings): once, or
# once per seed with `source_per_seed`, the learning-rate search's seeds included (they start from
# sources of their own, which no reported run uses; chapter 02's search at the same source settings
# fine-tunes the same ones). Its own test accuracy says how good the features are that every method
# starts from.
# Sources are pretrained in bf16 autocast where the machine does bf16 natively (under half the time of fp32
# through the CIFAR stem: benchmarks/RESULTS.md), in fp32 elsewhere: the `precision` column says which;
# the fine-tuning that follows trains in fp32 either way.

# %% tags=["hide-input"]
sources = []
searched_from = search_runs(lr_candidates) if lr_candidates else []
for model, source_seed in sorted({(run.model, run.source_seed) for run in all_runs + searched_from}):
    backbone = pretrained.load_source(source, model, image_size, epochs=source_epochs, seed=source_seed, stem=stem,
                                      device=run_device)
    meta = backbone.meta
    if source == "imagenet":
        sources.append({"model": model, "weights": meta["weights"], "trained on": "ImageNet-1k",
                        "top-1 (%)": meta["imagenet_top1"], "as measured by": "torchvision's weights meta"})
    else:
        sources.append({"model": model, "trained on": source, "seed": meta["seed"], "epochs": meta["epochs"],
                        "image size": meta["image_size"], "precision": meta.get("precision", "fp32"),
                        "test accuracy (%)": meta["test_acc"], "as measured by": "this project"})
    del backbone
display(table(pd.DataFrame(sources)))

# %% [markdown]
# ## The learning rates
# With `lr_candidates`: each named method trained at each of its candidate rates, at the focus $k$,
# on `lr_seeds` seeds of its own, numbered from 10 000 (`tuning.SEARCH_SEED_BASE`), which no grid
# reaches, so no compared run takes part in the choice however many seeds an execution runs (SNOW
# with its learned selection, at the chapter's setting); the highest mean accuracy on the
# validation images held out of the training split (`val_per_class`, after the last epoch) picks
# the rate every run of that method uses below, SNOW·SNIP, SNOW·random, the seed's setting and the
# ablations included. A rate chosen at the largest or smallest candidate is only a bound, so the
# grid then gains the next rate one step further out and the choice is made again (at most
# `lr_extensions` times). No test accuracy is read.

# %% tags=["hide-input"]
folder = f"{results_dir}/{source.replace(':', '_')}_to_{target.replace(':', '_')}"
search_sweep = functools.partial(run_sweep, functools.partial(snowrun.run_snow, device=run_device),
                                 folder=f"{folder}/lr_search", workers=workers, shard=shard, executor=executor,
                                 progress=False, reuse=reuse,
                                 device=functools.partial(provenance.device_name, run_device))


def select(results):
    """One method's rate and its rows of `snowrun.select_lrs`' table, from that method's search runs."""
    chosen, rows = snowrun.select_lrs(results)
    (lr,) = chosen.values()
    return lr, rows


def choose(tried):
    """Each method's rate among `tried`, on validation; runs already recorded are reused."""
    searches = {method: search_runs({method: rates}) for method, rates in tried.items()}
    chosen, tables = tuning.search_on_validation(searches, search_sweep, select, shard)
    return chosen, pd.concat(tables.values()).sort_index()  # the table select_lrs gives all methods at once


edges = []
if lr_candidates:
    chosen, lr_table, tried, edges = tuning.widen(lr_candidates, choose, lr_extensions)
    edges = [method.upper() for method in edges]
    lrs = {**lrs, **chosen}
    runs, base, all_runs = make_runs(lrs)
    rates = ", ".join(f"{method.upper()} {lr:g}" + (f" (chosen among {tried[method]})" if method in tried else "")
                      for method, lr in lrs.items())
    lr_table = lr_table.reset_index().assign(method=lambda t: t.method.str.upper())
    display(table(lr_table.round(2).assign(lr=lr_table.lr.map("{:g}".format)),
                  caption="Mean validation accuracy (%) of each candidate learning rate"))
    display(Markdown("**Chosen:** " + ", ".join(f"{method.upper()} {lr:g}" for method, lr in chosen.items())
                     + f" ({seed_span(search_seeds)} per candidate, k = {k_label(focus_k)}; no grid reaches them)."
                     + (f" {', '.join(edges)} still chose the edge of {'its' if len(edges) == 1 else 'their'} grid "
                        f"after {lr_extensions} extension{'s' * (lr_extensions != 1)}: the best rate may lie further "
                        f"out." if edges else "")))
else:
    display(Markdown(f"The learning rates ({rates}) were given (`lrs`), not chosen here."))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
sweep_runs = functools.partial(run_sweep, functools.partial(snowrun.run_snow, device=run_device), folder=folder,
                               workers=workers, shard=shard, executor=executor, progress=False, reuse=reuse,
                               device=functools.partial(provenance.device_name, run_device))
results = sweep_runs(all_runs)
NAMES = {"ft": "FT", "fe": "FE", "fo": "FO"}
SELECTION_NAMES = {"learned": "SNOW", "snip": "SNOW·SNIP", "random": "SNOW·random"}


def variant_of(method, selection):
    return SELECTION_NAMES[selection] if method == "snow" else NAMES[method]


# The budget ladder: each budget after the first trains again only the focus runs of the methods whose last step
# (the grid's epochs to the first budget, then from budget to budget) gained on validation.
trained_at = {base.epochs: [r for r in runs if r.k == focus_k]}
if ladder:
    trained_at[ladder[0]] = [dataclasses.replace(r, epochs=ladder[0]) for r in trained_at[base.epochs]]
steps_of = [base.epochs] + ladder
for shorter, longer, next_budget in zip(steps_of, steps_of[1:], steps_of[2:]):
    ids = {config_id(r) for length in (shorter, longer) for r in trained_at[length]}
    step_runs = results[results.id.isin(ids)]
    if len(step_runs) < len(ids):  # a shard's run: the ladder waits for every result of the step before it
        break
    step = stats.budget_steps(step_runs.assign(variant=[variant_of(*ms) for ms in zip(step_runs.method,
                                                                                           step_runs.selection)]),
                              "val_acc", [shorter, longer], group=["model", "variant"])
    gaining = step[stats.step_gained(step)]
    still_gaining = set(zip(gaining.model, gaining.variant))
    trained_at[next_budget] = [dataclasses.replace(r, epochs=next_budget) for r in trained_at[longer]
                               if (r.model, variant_of(r.method, r.selection)) in still_gaining]
    if not trained_at[next_budget]:
        break
    results = pd.concat([results, sweep_runs(trained_at[next_budget])], ignore_index=True)
# Timed one at a time: runs timed side by side would slow each other down.
serving = run_sweep(functools.partial(snowrun.run_serving, device=run_device), serving_runs, f"{folder}/serving",
                    shard=shard, executor=executor, device=functools.partial(provenance.device_name, run_device),
                    progress=False, reuse=reuse)
results["shots"] = pd.Categorical(results.k.map(k_label), [k_label(k) for k in ks])
results["m"] = results.m.map(lambda v: "N/d" if v is None or v != v else ",".join(map(str, v))
                             if isinstance(v, list) else str(int(v)))
chapter_m = "N/d" if m is None else ",".join(map(str, m)) if isinstance(m, (list, tuple)) else str(m)
results["variant"] = [variant_of(method, s) for method, s in zip(results.method, results.selection)]
# The budget check's runs are the grid's at focus_k trained longer: kept apart, every other table is the grid's.
is_budget = results.epochs.isin(ladder) & (results.shots == k_label(focus_k))
budget, results = results[is_budget], results[~is_budget]


def has(column, value):
    """Rows whose `column` is `value` (None: stored as missing)."""
    return results[column].isna() if value is None else results[column] == value


def learns_as(settings):
    return pd.concat([has(f, v) for f, v in settings.items()], axis=1).all(axis=1)


learns_as_chapter = learns_as({f: v for f, v in learning.items() if f != "sigma"})
learns_as_seed = learns_as(snowrun.SEED_SETTING)
is_main = (results.method != "snow") | ((results.m == chapter_m) & (results.sigma == sigma) &
                                         (results.width_divisor == width_divisor) & learns_as_chapter)
main = results[is_main]
variants = [v for v in ["SNOW", "SNOW·SNIP", "SNOW·random", "FT", "FE", "FO"] if v in set(main.variant)]
display(Markdown(f"{len(results) + len(budget)} runs ({len(budget)} of them the budget check's) and {len(serving)} "
                 f"serving measurements have results; {(results.seconds.sum() + budget.seconds.sum()) / 3600:.2f} "
                 f"device-hours in all. Code of the records: "
                 f"{', '.join(sorted(set(results.code) | set(budget.code)))}."))

# %% [markdown]
# ## Answer
# The declared contrasts, tested together: Holm's adjustment holds the chance of any false claim among them
# at 5%. These are the chapter's findings; "not detected at this power" is not evidence of no difference.
# Every table and verdict after this one is exploratory.

# %% tags=["hide-input", "findings"]
# Whether each method was still improving when the budget stopped it, read on validation on every seed (the
# learning-rate search ran on seeds of its own): shown with the curves below, and named here, since a contrast with
# a method still rising compares it before it flattened.
at_focus = main[main.shots == k_label(focus_k)]
which = "val" if "val_curve" in at_focus and at_focus.val_curve.notna().all() else "test"
read_on = "validation" if which == "val" else "test"
has_curves = ("test_curve" in at_focus and at_focus.test_curve.notna().all()
              and at_focus.test_epochs.map(stats.shows_late_gain).all())
late = (stats.late_gain(transfer.curves(at_focus, which), ["model", "variant"], step="epoch", value="acc")
        if has_curves else None)
rising = [] if late is None else [f"{r.variant} ({r.model})" for r in late.itertuples() if r.reading == "still rising"]
# Under the cosine schedule the rate reaches 0 at the end, so a method stopped early need not rise late: the
# budget check says it instead. A method that gains at `budget_epochs` had not converged at the grid's epochs.
steps, settled = None, pd.DataFrame(columns=["model", "variant", "budget", "settled"])
gained = None
if len(budget):
    judged_on = "val_acc" if which == "val" else "final_acc"
    both = pd.concat([at_focus[at_focus.seed.isin(set(budget.seed))], budget])
    steps = stats.budget_steps(both, judged_on, [base.epochs] + ladder, group=["model", "variant"])
    gained = steps[steps["from"] == base.epochs]
    if which == "val":  # a budget is settled on validation only: on test it would be a choice made on the test split
        settled = stats.settled_budgets(steps, base.epochs)
unconverged = [] if gained is None else [f"{r.variant} ({r.model}: {r.diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}])"
                                         for r in gained[stats.step_gained(gained)].itertuples()]
# Each declared contrast at the grid's budget, as declared; and where a side's validation accuracy settled at a longer
# budget of the ladder, the same contrast with each side at its settled budget, in the same Holm family.
settled_at = {(r.model, r.variant): int(r.budget) for r in settled.itertuples()}
settled_longer = {(r.model, r.variant): r for r in settled.itertuples() if r.budget != base.epochs}


def at_epochs(contrast, variant_epochs, baseline_epochs, name):
    return dataclasses.replace(contrast, name=name, variant={**contrast.variant, "epochs": variant_epochs},
                               baseline={**contrast.baseline, "epochs": baseline_epochs})


answer_contrasts = [at_epochs(c, base.epochs, base.epochs, c.name) for c in PRIMARY]
for contrast, (model, a, b) in zip(PRIMARY, DECLARED):
    at_a, at_b = settled_at.get((model, a), base.epochs), settled_at.get((model, b), base.epochs)
    if (at_a, at_b) != (base.epochs, base.epochs):
        name = f"{contrast.name}, each at its settled budget ({a} {at_a}, {b} {at_b} epochs)"
        answer_contrasts.append(at_epochs(contrast, at_a, at_b, name))
settled_words = ", ".join(f"{v} ({m}) at {r.budget} epochs" + ("" if r.settled else ", still gaining there")
                          for (m, v), r in settled_longer.items())
again = len(answer_contrasts) - len(PRIMARY)
display(answer(pd.concat([main, budget]), answer_contrasts,
               setting=f"{source} → {target}, {', '.join(models)}: final test accuracy (%)",
               lead=f"{len(PRIMARY)} declared contrasts in final test accuracy at k = {k_label(focus_k)} (points; "
                    f"positive: the first more accurate), {seeds} seeds, at {epochs} epochs"
                    + (f", where {', '.join(rising)} still rose on {read_on} over the last 30% of the epochs (see "
                       f"'Is the budget long enough?'), so {'it is' if len(rising) == 1 else 'they are'} compared "
                       "before flattening" if rising else "")
                    + (f"; trained {ladder[0]} epochs, {', '.join(unconverged)} gained {read_on} accuracy "
                       f"(points, 95% CI, uncorrected), so {'it was' if len(unconverged) == 1 else 'they were'} "
                       f"compared before converging" if unconverged else "")
                    + (f"; on the budget ladder ({', '.join(map(str, ladder))} epochs) validation accuracy settled "
                       f"for {settled_words}, every other method at {base.epochs}: the {again} contrast"
                       f"{'s' * (again != 1)} with a side there {'are' if again != 1 else 'is'} tested again with each "
                       f"side at its settled budget, in the same family" if settled_longer else "") + ":"))

# %% [markdown]
# ## Accuracy
# Final test accuracy (%), mean ± std over seeds, for every model and number of training images
# per class ("all": the whole training split).

# %% tags=["hide-input"]
summary = stats.summarize(main, ["model", "shots", "variant"], "final_acc")
display(table(summary.pivot(index=["model", "shots"], columns="variant", values="mean ± std")[variants]))

# %% [markdown]
# Each method minus `FT` on the same seeds, in accuracy points: the mean difference and its 95% t
# interval over seeds. An interval that excludes 0 is a difference the seeds agree on.

# %% tags=["hide-input"]
against_ft = stats.paired_difference(main, "final_acc", baseline={"variant": "FT"}, variant=["variant"],
                                     pair_on=["seed"], group=["model", "shots"])


def interval(row):
    if row.n < 2:
        return f"{row['diff']:+.1f} (n = {int(row.n)})"
    return f"{row['diff']:+.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}]"


if len(against_ft):
    against_ft["cell"] = against_ft.apply(interval, axis=1)
    display(table(against_ft.pivot(index=["model", "shots"], columns="variant", values="cell")
                  [[v for v in variants if v != "FT"]]))

# %% [markdown]
# ## Is the budget long enough?
# Read on the validation images (on test only where no validation set was held out), on every
# seed (the learning-rate search ran on seeds of its own): accuracy over training at the focus
# $k$, mean over seeds, every method at the chapter's setting (tested every `eval_every` epochs and
# after the last). Then each method's gain over the last 30% of its epochs,
# paired over seeds (exploratory, uncorrected): "still rising" means the budget stopped a method that
# was still improving, so it is compared before it flattened. With `budget_epochs`, every method
# trained again that long (dashed; each run its own cosine schedule) on the same seeds: what the
# longer budget gains in final validation accuracy, and, as a result rather than a judgement of the
# budget, each method against `FT` at it in final test accuracy. With a ladder of budgets, each next
# one (dotted, then dash-dotted) trains again only the methods whose last step still gained; a
# method's budget is settled where a step gains nothing detectable.

# %% tags=["hide-input"]
if has_curves:
    tested = transfer.curves(at_focus, which)
    longer = transfer.curves(budget, which) if len(budget) else None
    fig, axes = plots.panels(len(models), height=3.2)
    for ax, model in zip(axes, models):
        for i, variant in enumerate(variants):
            mean = tested[(tested.model == model) & (tested.variant == variant)].groupby("epoch").acc.mean()
            ax.plot(mean.index, mean.values, marker=".", label=variant, color=f"C{i}")
            if longer is not None:
                for length, style in zip(ladder, ["--", ":", "-.", (0, (1, 4))] * len(ladder)):
                    part = longer[(longer.model == model) & (longer.variant == variant) & (longer.epochs == length)]
                    if len(part):
                        mean = part.groupby("epoch").acc.mean()
                        ax.plot(mean.index, mean.values, ls=style, lw=1, color=f"C{i}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{read_on} accuracy (%)")
        ax.set_title(f"{model}, k = {k_label(focus_k)}", fontsize="medium")
    plots.shared_legend(fig, axes)
    display(table(late_gain_table(late, ["model", "variant"], "epoch"),
                  caption=f"{read_on} accuracy gained over the last 30% of the epochs, {seed_span(at_focus.seed)}"))
else:
    display(Markdown("No learning curves: these runs were tested once or not before the last 30% of their epochs, "
                     "or were recorded before runs kept their curves."))
budget_verdicts = []
if len(budget):
    at_longer = stats.paired_difference(budget, "final_acc", baseline={"variant": "FT"}, variant=["variant"],
                                        pair_on=["seed"], group=["model", "epochs"])
    spread = stats.summarize(both, ["model", "variant", "epochs"], judged_on).pivot(
        index=["model", "variant"], columns="epochs", values="mean ± std")
    spread.columns = [f"{int(length)} epochs (%)" for length in spread.columns]
    spread = spread.loc[gained.set_index(["model", "variant"]).index]
    for (shorter, length), step in steps.groupby(["from", "to"]):
        spread[f"{int(length)} − {int(shorter)}"] = step.set_index(["model", "variant"]).apply(stats.verdict, axis=1)
    display(table(spread,
                  caption=f"Final {read_on} accuracy at the grid's budget and at each budget of the ladder "
                          f"({', '.join(map(str, ladder))} epochs) that trained: each next one trains only what the "
                          f"step before it found still gaining, {seed_span(budget.seed)}; each step's gain paired "
                          f"over seeds (exploratory, uncorrected)"))
    budget_verdicts = [f"{r['variant']} − FT at {int(r['epochs'])} epochs ({r['model']}, k = {k_label(focus_k)}, "
                       f"final test accuracy): {stats.verdict(r)}" for _, r in at_longer.iterrows()]
    display(Markdown("\n".join(f"- {v}" for v in budget_verdicts) or "No seed ran FT at the longer budget."))

# %% [markdown]
# ## What each method costs
# Medians over the runs of each method (the cost does not depend on $k$): parameters the optimiser
# trains (what one more task adds) and parameters inference uses; training and inference images
# per second on the run's device with a batch of `timing_batch`; FLOPs per image (counted, the same
# on every device); the memory one training step holds (parameters, gradients, momentum and the
# activations saved for the backward pass, counted), and on CUDA the allocator's peak.

# %% tags=["hide-input"]
COST = {"trainable_params": "trained parameters", "total_params": "parameters used", "train_images_per_s":
        "training images/s", "infer_images_per_s": "inference images/s", "train_gflops": "training GFLOPs/image",
        "infer_gflops": "inference GFLOPs/image", "train_memory_mb": "training-step memory (MiB)",
        "peak_memory_mb": "peak CUDA memory (MiB)"}
costs = main.groupby(["model", "variant"], sort=False)[list(COST)].median()
costs = costs.reindex(pd.MultiIndex.from_tuples([(mo, v) for mo in models for v in variants
                                                 if (mo, v) in costs.index]))
costs["training images/s vs FT"] = [row.train_images_per_s / costs.loc[(mo, "FT"), "train_images_per_s"]
                                    if (mo, "FT") in costs.index else np.nan for (mo, _), row in costs.iterrows()]
shown = costs.rename(columns=COST)
shown[["trained parameters", "parameters used"]] = shown[["trained parameters", "parameters used"]].astype(int)
display(table(shown, digits=2))

# %% tags=["hide-input"]
fig, axes = plots.panels(2 * len(models), height=3.2)
markers = dict(zip(["SNOW", "SNOW·SNIP", "SNOW·random", "FT", "FE", "FO"], "o^vsDP"))
for row, model in zip(zip(axes[::2], axes[1::2]), models):
    for ax, (x, label) in zip(row, [("trainable_params", "trained parameters"),
                                    ("train_images_per_s", "training images/s")]):
        part = main[main.model == model]
        for shots, style in zip(part.shots.cat.categories, ["-", "--", ":", "-."] * 3):
            cell = part[part.shots == shots].groupby("variant").agg(acc=("final_acc", "mean"), sd=("final_acc", "std"),
                                                                    x=(x, "median"))
            for variant, point in cell.iterrows():
                ax.errorbar(point.x, point.acc, yerr=0 if np.isnan(point.sd) else point.sd, marker=markers[variant],
                            ls="none", capsize=3, label=f"{variant}, k = {shots}")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{model}: accuracy against {label}", fontsize="medium")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Serving $T$ tasks at once
# Every image answered for all $T$ tasks: SNOW runs the source once and $T$ deltas; `FT` runs $T$
# fine-tuned copies; `FE` runs the frozen trunk once and $T$ copies of the last stage; `FO` runs the
# frozen network once and $T$ heads. Images per second (median of the rounds, all variants timed in
# turn on the same batch), parameters held, and FLOPs per image.

# %% tags=["hide-input"]
WAYS = ["snow", "ft", "fe", "fo"]
long = pd.concat([serving[["model", "tasks"]].assign(way=way.upper() if way != "snow" else "SNOW",
                                                      images_per_s=serving[f"{way}_images_per_s"],
                                                      params=serving[f"{way}_params"] / 1e6,
                                                      gflops=serving[f"{way}_gflops"]) for way in WAYS])
display(table(long.pivot_table(index=["model", "tasks"], columns="way", values=["images_per_s", "params", "gflops"])
              .rename(columns={"images_per_s": "images/s", "params": "parameters (millions)",
                               "gflops": "GFLOPs/image"}), digits=2))
fig, axes = plots.panels(2 * len(models), height=3.2)
styles = dict(zip(["SNOW", "FT", "FE", "FO"], [("o", "-"), ("s", "--"), ("D", ":"), ("P", "-.")]))
for row, model in zip(zip(axes[::2], axes[1::2]), models):
    part = long[long.model == model]
    for ax, (column, label) in zip(row, [("images_per_s", "images/s answered for every task"),
                                         ("params", "parameters held (millions)")]):
        for way, cell in part.groupby("way"):
            marker, ls = styles[way]
            ax.plot(cell.tasks, cell[column], marker=marker, ls=ls, label=way)
        ax.set_xticks(serving_tasks)
        ax.set_xlabel("tasks served at once, T")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_title(f"{model}: {label}", fontsize="medium")
plots.shared_legend(fig, axes, ncol=4)

# %% [markdown]
# ## Which channels: learned, SNIP-chosen or random?
# The project's question. SNIP-chosen and random channels against SNOW's learned selection, and
# SNIP against random, on the same seeds (final accuracy, points). Then how much of what SNOW
# learned to pick SNIP also ranks in its top $M$, against what a random pick shares by chance, and
# the share of source channels whose SNIP score is exactly 0 (the training images cannot move the
# loss through them, so SNIP's choice among them is arbitrary), over all taps and at the last stage.

# %% tags=["hide-input"]
snow_main = main[main.method == "snow"]
channel_rows = []  # (model, k, what, verdict)
for baseline, others in (("learned", ["snip", "random"]), ("random", ["snip"])):
    part = snow_main[snow_main.selection.isin([baseline, *others])]
    if part.selection.nunique() < 2:
        continue
    diffs = stats.paired_difference(part, "final_acc", baseline={"selection": baseline}, variant=["selection"],
                                    pair_on=["seed"], group=["model", "shots"])
    for _, row in diffs.iterrows():
        what = f"{SELECTION_NAMES[row.selection]} − {SELECTION_NAMES[baseline]}"
        declared = f"{row.model}, k = {row.shots}: {what}" in {c.name for c in PRIMARY}
        channel_rows.append((row.model, row.shots, what, stats.verdict(row, declared=declared)))
display(Markdown("\n".join(f"- {model}, k = {k}: {what}: {verdict}." for model, k, what, verdict in channel_rows)
                 if channel_rows else "Only one selection rule was run."))
learned = snow_main[snow_main.selection == "learned"]
if len(learned):
    read = ["snip_overlap", "chance_overlap", "w_moved", "zero_score_fraction", "zero_score_fraction_last"]
    overlap = learned.groupby(["model", "shots"], observed=True)[[c for c in read if c in learned]].mean()
    display(table(overlap.rename(columns={"snip_overlap": "learned ∩ SNIP top-M (share)",
                                          "chance_overlap": "random ∩ SNIP top-M, expected (M/N)",
                                          "w_moved": "mean |w − 1| after training",
                                          "zero_score_fraction": "SNIP score exactly 0 (share, all taps)",
                                          "zero_score_fraction_last": "… at the last stage"}), digits=3))

# %% [markdown]
# ## Does the learned selection settle?
# A selection is learned only if what the delta trains on settles to what evaluation uses.
# `snipnb.snow.SelectionLog` cuts each run's training steps into equal stretches and counts, per
# tap: the share of a training draw's $M$ channels that are the top $M$ of $w$ at that moment
# (what evaluation would take; $M/N$ for a draw at random, 1 with no noise), the share of the
# delta's input slots that hold the same channel as the step before, and the share of the final
# evaluation selection that the evaluation selection already holds at the end of each stretch.
# The chapter's setting (solid) against the seed's (dashed), the first model at the focus $k$, mean
# over seeds: a thick line is the mean over taps, a thin one a single tap (the stem and each stage).
# Then both settings' numbers, and their accuracy paired on the same seeds.

# %% tags=["hide-input"]
learned_focus = results[(results.method == "snow") & (results.selection == "learned") & (results.model == models[0])
                        & (results.shots == k_label(focus_k)) & (results.m == chapter_m) & (results.sigma == sigma)
                        & (results.width_divisor == width_divisor)]
SETTINGS = {"chapter's setting": learned_focus[learns_as_chapter], "seed's setting": learned_focus[learns_as_seed]}
if all(learning[f] == v for f, v in snowrun.SEED_SETTING.items()):
    SETTINGS.pop("seed's setting")  # the chapter runs the seed's setting itself: one set of runs, not two
SETTINGS = {name: part for name, part in SETTINGS.items() if len(part)}
CURVES = {"overlap_curve": ("does training take what evaluation takes?", "training draw ∩ top-M of w (share)"),
          "slot_kept_curve": ("do the delta's input slots keep their channel?", "slots kept from the step before"),
          "settled_curve": ("has the evaluation selection settled?", "final selection already chosen")}
if SETTINGS:
    fig, axes = plots.panels(len(CURVES), height=3.0)
    for (name, part), ls, color in zip(SETTINGS.items(), ["-", "--"], ["C0", "C3"]):
        steps = np.array(part.curve_steps.iloc[0], dtype=float)  # the same for every seed of a setting
        for ax, (column, (title, label)) in zip(axes, CURVES.items()):
            curve = np.nanmean(np.array(part[column].tolist(), dtype=float), axis=0)  # window x tap
            ax.plot(steps, curve, ls=ls, color=color, lw=0.8, alpha=0.45)
            ax.plot(steps, np.nanmean(curve, axis=1), ls=ls, color=color, lw=2.5, label=name)
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{models[0]}, k = {k_label(focus_k)}: how the learned selection settles\n(thick: mean over taps)")
    plots.shared_legend(fig, axes)
    plt.show()
SETTLING = {"train_eval_overlap": "training ∩ evaluation, all steps", "train_eval_overlap_last":
            "training ∩ evaluation, last stretch", "slot_kept": "slots kept per step", "w_moved": "mean |w − 1|"}


def settled_halfway(part):
    """Mean over runs and taps of the share of the final evaluation selection already held at the end of the
    first stretch past half the training steps."""
    steps = np.array(part.curve_steps.iloc[0], dtype=float)
    at = int(np.argmax(steps >= steps[-1] / 2))
    return float(np.nanmean([np.nanmean(np.array(curve, dtype=float)[at]) for curve in part.settled_curve]))


rows = []
for name, part in SETTINGS.items():
    row = {"setting": name, **{label: part[column].mean() for column, label in SETTLING.items()},
           "final selection held half-way": settled_halfway(part),
           "final acc (%)": stats.summarize(part.assign(setting=name), ["setting"], "final_acc")["mean ± std"].iloc[0]}
    rows.append(row)
display(table(pd.DataFrame(rows), digits=3))
settle_verdicts = []
if len(SETTINGS) == 2:
    both = pd.concat([part.assign(setting=name) for name, part in SETTINGS.items()])
    d = stats.paired_difference(both, "final_acc", baseline={"setting": "seed's setting"}, variant=["setting"],
                                pair_on=["seed"])
    settle_verdicts = [stats.verdict(row) for _, row in d.iterrows()]
    display(Markdown(f"Chapter's setting − seed's setting, final accuracy: {settle_verdicts[0]}."
                     if settle_verdicts else "No seed ran both settings."))

# %% [markdown]
# ## Ablations: M, σ and the width divisor
# SNOW at the focus $k$, one setting changed at a time from the chapter's; the paired difference
# is against the chapter's setting on the same seeds.

# %% tags=["hide-input"]
focus = results[(results.method == "snow") & (results.selection == "learned") & (results.model == models[0]) &
                (results.shots == k_label(focus_k)) & learns_as_chapter]
defaults = {"m": chapter_m, "sigma": sigma, "width_divisor": width_divisor}
ablated, rows = {}, []
for field in defaults:
    others = [f for f in defaults if f != field]
    keep = np.logical_and.reduce([focus[f] == defaults[f] for f in others])
    part = focus[keep].copy()
    part["is_base"] = part[field] == defaults[field]
    ablated[field] = part
    diffs = stats.paired_difference(part, "final_acc", baseline={"is_base": True}, variant=[field], pair_on=["seed"])
    for value, group in part.groupby(field, sort=True):
        row = {"setting": field, "value": value, "final acc (%)": stats.summarize(group, [field], "final_acc")
               ["mean ± std"].iloc[0], "trained parameters": int(group.trainable_params.median())}
        d = diffs[diffs[field] == value] if len(diffs) else diffs
        row["against the chapter's setting"] = "(the chapter's setting)" if value == defaults[field] else (
            stats.verdict(d.iloc[0]) if len(d) else "—")
        rows.append(row)
display(table(pd.DataFrame(rows)))
fig, axes = plots.panels(len(ablated), height=3.0)
for ax, (field, part) in zip(axes, ablated.items()):
    s = part.groupby(field)["final_acc"].agg(["mean", "std"])
    positions = np.arange(len(s))
    ax.errorbar(positions, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3)
    ax.set_xticks(positions, [str(v) for v in s.index])
    if defaults[field] in s.index:
        ax.axvline(list(s.index).index(defaults[field]), color="grey", ls=":", lw=1)
    ax.set_xlabel({"m": "M per tap", "sigma": "σ", "width_divisor": "width divisor"}[field])
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{models[0]}, k = {k_label(focus_k)}: {field}", fontsize="medium")

# %% [markdown]
# ## Which source channels each pooling layer uses
# One SNOW run trained again (the first model, the focus $k$, seed 0) to look inside: every source
# channel's learned weight $w_c$ at every tap, the $M$ it selects at evaluation (the top $M$ of $w$,
# filled), and the $M$ SNIP ranks highest on the same training images (crosses).

# %% tags=["hide-input"]
figure_run = dataclasses.replace(base, seed=0)
_, figure_model = snowrun.train_run(figure_run, run_device)
train_images, _ = snowrun.target_data(figure_run)
snip_scores = snow.snip_channel_scores(figure_model, snowrun.saliency_batches(
    figure_run, train_images, next(figure_model.parameters()).device), seed=figure_run.seed)
taps = ["stem"] + [f"stage {j}" for j in range(1, len(figure_model.delta.pools))]
fig, axes = plots.panels(len(taps), ncols=1, height=1.7)
for ax, tap, pool, scores, chosen in zip(axes, taps, figure_model.delta.pools, snip_scores,
                                         snow.selection(figure_model)):
    w = pool.weight.detach().cpu().numpy()
    picked = chosen.numpy()
    snipped = np.argsort(-scores.numpy())[:pool.m]
    ax.scatter(np.arange(len(w)), w, s=6, color="lightgrey", label="not selected")
    ax.scatter(picked, w[picked], s=14, color="C0", label="selected (top-M of w)")
    ax.scatter(snipped, w[snipped], s=22, marker="x", color="C3", label="SNIP's top-M")
    shared = len(set(picked) & set(snipped))
    ax.set_title(f"{tap}: N = {pool.channels}, M = {pool.m}; {shared} of the {pool.m} selected are also SNIP's",
                 fontsize="small")
    ax.set_ylabel("w")
axes[-1].set_xlabel("source channel")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Exploratory findings
# Every other comparison, uncorrected (the tested answer is above); computed from this run, so a rerun
# with other parameters never shows stale claims.

# %% tags=["hide-input"]
findings = []
for (model, shots), cell in against_ft.groupby(["model", "shots"], sort=False, observed=True):
    parts = [f"{row.variant} {stats.verdict(row, declared=row.variant == 'SNOW')}"
             for _, row in cell.iterrows() if row.variant in ("SNOW", "FE", "FO")]
    if parts:
        findings.append(f"- **Accuracy against fine-tuning** ({model}, {source} → {target}, k = {shots}; final "
                        f"accuracy minus FT's): " + "; ".join(parts) + ".")
for model in models:
    if (model, "SNOW") in costs.index and (model, "FT") in costs.index:
        s, f = costs.loc[(model, "SNOW")], costs.loc[(model, "FT")]
        findings.append(
            f"- **Training cost** ({model}, {image_size} px): SNOW trains {s.trainable_params / f.trainable_params:.1%} "
            f"of FT's parameters, at {s.train_gflops / f.train_gflops:.2f}× FT's FLOPs per training image and "
            f"{s.train_memory_mb / f.train_memory_mb:.2f}× its training-step memory (counted); inference at "
            f"{s.infer_gflops / f.infer_gflops:.2f}× FT's FLOPs. Timed in the runs on "
            f"{provenance.device_name(run_device)}, a machine other work shared (medians over runs, one timing each): "
            f"training {s.train_images_per_s:,.0f} images/s against FT's {f.train_images_per_s:,.0f} "
            f"({s.train_images_per_s / f.train_images_per_s:.2f}×), inference "
            f"{s.infer_images_per_s / f.infer_images_per_s:.2f}× FT's images/s.")
top = max(serving_tasks)
for _, row in serving[serving.tasks == top].iterrows():
    findings.append(f"- **Serving {top} tasks at once** ({row.model}): one source pass and {top} deltas hold "
                    f"{row.snow_params / 1e6:.1f} M parameters against {row.ft_params / 1e6:.1f} M for {top} fine-tuned "
                    f"copies ({row.ft_params / row.snow_params:.1f}× fewer), at {row.snow_gflops / row.ft_gflops:.2f}× "
                    f"the FLOPs (counted). One timing on a shared machine, which the load moves: "
                    f"{row.snow_images_per_s:,.0f} images/s against {row.ft_images_per_s:,.0f} "
                    f"({row.snow_images_per_s / row.ft_images_per_s:.2f}×).")
findings += [f"- **Channels** ({model}, k = {k}): {what}: {verdict}." for model, k, what, verdict in channel_rows]
if len(learned) and "snip_overlap" in learned:
    for (model, shots), part in learned.groupby(["model", "shots"], observed=True):
        if len(part) < 2:
            continue
        gap, low, high = stats.t_interval(part.snip_overlap - part.chance_overlap)
        call = ("more than chance" if low > 0 else "less than chance" if high < 0 else
                "a difference from chance is not detected at this power")
        findings.append(f"- **Does SNOW learn SNIP's channels?** ({model}, k = {shots}): its learned top-M shares "
                        f"{part.snip_overlap.mean():.3f} of SNIP's against {part.chance_overlap.mean():.3f} for a random "
                        f"pick, {gap:+.3f} [{low:+.3f}, {high:+.3f}] over {len(part)} seeds: {call}.")
for name, part in SETTINGS.items():
    annealed = name == "chapter's setting" and sigma_schedule == "cosine"
    findings.append(f"- **Does the selection settle** ({name}; {models[0]}, k = {k_label(focus_k)}): half-way through "
                    f"training the evaluation selection already held {settled_halfway(part):.0%} of its final "
                    f"channels; a training draw shared {part.train_eval_overlap.mean():.0%} of its channels with "
                    f"evaluation's top-M over training, {part.train_eval_overlap_last.mean():.0%} in the last stretch"
                    + (" (where the cosine schedule has taken σ to nearly 0, so that share is near 1 whatever w "
                       "learned)" if annealed else "")
                    + f"; {part.slot_kept.mean():.0%} of the delta's input slots kept their channel from step to step.")
if settle_verdicts:
    findings.append(f"- **Chapter's setting against the seed's** ({models[0]}, k = {k_label(focus_k)}; final "
                    f"accuracy): {settle_verdicts[0]}.")
sigma_part = ablated.get("sigma")
if sigma_part is not None and 0.0 in set(sigma_part.sigma) and sigma != 0:
    d = stats.paired_difference(sigma_part, "final_acc", baseline={"is_base": True}, variant=["sigma"],
                                pair_on=["seed"])
    d = d[d.sigma == 0.0]
    if len(d):
        findings.append(f"- **No selection noise** (σ = 0, the top-M of w in training too) against σ = {sigma}, "
                        f"{sigma_schedule} ({models[0]}, k = {k_label(focus_k)}): {stats.verdict(d.iloc[0])}.")
if unconverged:
    findings.append(f"- **Not converged at {epochs} epochs**: trained {ladder[0]}, {', '.join(unconverged)} gained "
                    f"{read_on} accuracy (points, 95% CI, uncorrected), so the contrasts with "
                    f"{'it' if len(unconverged) == 1 else 'them'} at {epochs} epochs are read before convergence.")
if settled_longer:
    findings.append(f"- **Settled budgets** (budget ladder {', '.join(map(str, ladder))} epochs; a step that gains "
                    f"nothing detectable on {read_on} at this power settles it): {settled_words}; every other method at "
                    f"{base.epochs}. The Answer tests the declared contrasts with a side there again at those budgets.")
findings += [f"- **Longer budget**: {v}." for v in budget_verdicts]
display(Markdown("\n".join(findings)))

# %% [markdown]
# ## Discussion
# The Answer and the findings above are the chapter's; they are computed, not written. Read the
# accuracy together with the cost: the paper's case for SNOW is efficiency at similar accuracy, so
# the Answer's SNOW − FT says whether the accuracy held on this pair, and the cost lines say what
# SNOW saves in trained parameters, FLOPs and memory, which are counted and so do not depend on
# the machine's load. The images per second are single timings on a shared machine; they are shown,
# not read. The channel question is answered by the paired differences against the random
# control: SNIP's choice, or SNOW's learned one, has shown that *which* channels matter only where
# it beats random channels of the same number.
#
# ## Limits

# %% tags=["remove-input"]
tuning_note = (f"learning rates {rates}; those chosen were chosen at k = {k_label(focus_k)} on "
               f"{seed_span(search_seeds)}, on {val_per_class} images per class held out of the training split, "
               f"and are used for every k and seed"
               + (f"; {', '.join(edges)} chose the edge of a grid widened {lr_extensions} times, so "
                  f"{'its rate is' if len(edges) == 1 else 'their rates are'} a bound, not an optimum" if edges else "")
               if lr_candidates else
               f"one learning rate per method ({rates}), the same for every k and seed, not tuned on a validation split"
               + ("; the offline chapters' rates come from a one-seed pilot on the same pairs, read on their test "
                  "splits, so they are not independent of them" if source != "imagenet" else ""))
limits = [f"- Source `{source}`, target `{target}`; {seeds} seeds; {epochs} epochs for few-shot runs"
          + (f" and {full_epochs or epochs} on the whole training split" if None in ks else "") + f"; {tuning_note}.",
          f"- The ablations run at one k ({k_label(focus_k)}) and one model ({models[0]}), one setting at a time; "
          f"interactions between M, σ and the width divisor are not measured.",
          "- Images per second are measured inside each run, on a copy of the trained network, with a batch of "
          f"{timing_batch}; where several runs share a device they slow each other down. FLOPs and counted memory do "
          "not depend on the load.",
          "- The channel figure shows one run (seed 0), trained again for the figure."]
if lr_candidates:
    limits.append(f"- The learning-rate search ran on {seed_span(search_seeds)}, which no grid reaches"
                  + (" (each from a source of its own)" if source_per_seed else "") + ", so no compared run won it. "
                  "Its rates were chosen for learned SNOW at the chapter's setting and for each baseline: "
                  "SNOW·SNIP and SNOW·random take learned SNOW's rate without a search, so SNOW·SNIP − SNOW and "
                  "SNOW·random − SNOW lean towards SNOW, and every ablation against the chapter's setting leans "
                  "towards the chapter's setting; where both sides were searched (SNOW, FE or FO − FT) the lean has no "
                  "known sign.")
if lr_candidates and len(budget):
    trained_budgets = ", ".join(str(int(length)) for length in sorted(set(budget.epochs)))
    limits.append(f"- The budget check leans towards \"enough\": its {trained_budgets}-epoch runs take the rates "
                  f"chosen for the grid's {base.epochs} epochs, untuned, so it compares a tuned budget with an untuned "
                  "longer one.")
if budget_note:
    limits.append(f"- **How the budget was chosen.** {budget_note}")
limits.append(f"- SNOW's own settings were set, not chosen on validation: σ = {sigma}, M and the width divisor from the "
              f"seed's report; w's learning rate ({w_lr}), its weight decay, the {sigma_schedule} σ and the {slot_order} "
              "slots by this project, so that the selection can settle. The ablations show what changing one of them "
              "does, read on test, so they say where a search would look, not what it would find.")
if None not in ks:
    limits.append(f"- No run trains on the whole training split (k ∈ {{{', '.join(k_label(k) for k in ks)}}}): the "
                  "paper's comparisons are on whole datasets; `ks` with None adds them, at many times the cost.")
if image_size < 224:
    limits.append(f"- At {image_size} px through the {stem} stem the last stage sees a {side}×{side} map, against 7×7 "
                  "at the paper's 224 px, and SNOW's per-tap pooling sees correspondingly small maps.")
if source != "imagenet":
    limits.append(f"- The source is a ResNet the project pretrained on `{source}`, a much smaller and simpler source "
                  "than ImageNet; the paper's claims are about ImageNet sources, which the ImageNet → CIFAR-100 "
                  "chapter tests when run.")
    if not source_per_seed:
        limits.append("- Every run starts from one source, pretrained once from seed 0: the seeds vary the few-shot "
                      "subsets, the new head and the order of the data, not the source, so the intervals leave out "
                      "how far another pretraining of the same recipe would move them; for chapter 02's runs from the "
                      "same 5–9 source, that was several points per run (benchmarks/RESULTS.md, \"Would bf16 "
                      "training change chapter 02's findings?\"). `-p source_per_seed True` pretrains one source per "
                      "seed.")
display(Markdown("\n".join(limits)))
