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
# # SNIP on MNIST: does the paper's Table 1 reproduce?
#
# **Question.** Lee et al. {cite}`lee2019snip` prune LeNet-300-100 and LeNet-5-Caffe *once, at
# initialisation*, keeping the weights with the largest connection sensitivity
# $|\partial L/\partial \theta \cdot \theta|$ on one mini-batch, and report in their Table 1 that the
# sparse networks train to the dense network's error (LeNet-300-100: 1.7% dense, 1.6% at 95% sparsity,
# 2.4% at 98%; LeNet-5-Caffe: 0.9% dense, 0.8% at 98%, 1.1% at 99%). Before asking whether SNIP helps
# with little data, we check that our SNIP does what theirs does, and where it does not, *which
# difference from their protocol* is responsible.
#
# **The paper's recipe**: SGD with momentum 0.9, batch 100, weight decay $5\cdot10^{-4}$, learning rate
# 0.1 decayed by 0.1 every 25,000 iterations, 10% of the training set held out for validation. The paper
# does not say how long it trains; we call three phases of its schedule (75,000 iterations, down to lr
# 0.001) its budget. Our runs follow it except in two ways, each shown below: they are shorter (in
# the book's chapter the Table 1 cells train 4,320 iterations for LeNet-300-100 and 1,080 for
# LeNet-5-Caffe, with length checks at 27,000; "This run" gives this run's), and LeNet-5-Caffe
# trains at lr 0.02 (the check below asks whether 0.1 diverges here, and why).
#
# **What the official code** ([namhoonlee/snip-public](https://github.com/namhoonlee/snip-public)) does
# beyond the paper's text, each of which we make a setting and ablate on LeNet-300-100:
# - *Initialisation*: TensorFlow's `variance_scaling_initializer()` (a normal of std $\sqrt{1/\text{fan-in}}$
#   truncated at 2 std) for weights **and biases** of the network that is scored (`snip/network.py`,
#   `get_initializer`); ours is Glorot with zero biases.
# - *A fresh initialisation is trained*: the network that is trained is a second set of variables,
#   initialised anew, under the mask scored on the first (`snip/model.py`: `weights_ap` vs `weights_bp`;
#   `snip/main.py`: `initializer_w_ap`). Ours trains the initialisation it scored.
# - *The saliency batch*: one batch of 100 training images drawn at random (`snip/prune.py`,
#   `snip/dataset.py` `get_next_batch`); ours is class-balanced (10 per class). We also try 1,000 images.
# - *Checkpoint choice*: checkpoints every 1,000 iterations, the last 10 kept, and `snip/test.py` prints
#   the error of the **best test accuracy** among them: a choice made on the test set. We report the
#   final checkpoint, the one with the best validation accuracy, and the official best-test one.
#
# The official code also prunes biases (`snip/model.py`, `prn_keys`), and its defaults are plain SGD at a
# constant lr 0.1 for 10,000 iterations (`snip/main.py`), not the paper's stated recipe; we follow the paper.
#
# **Method.** For each network, sparsity and seed: initialise, score with SNIP on one batch of training
# images, keep the global top $1-s$, and train with the recipe above. The same initialisation and data
# order train the dense baseline and two controls: **random** pruning (uniform over weights) and
# **shuffled SNIP** (SNIP's per-layer densities, positions shuffled within each layer). Every comparison
# is paired on seeds: a difference with a 95% t interval.
#
# **Rerun** with other settings, e.g. the paper's budget on a GPU:
# `papermill notebooks/00_snip_mnist.ipynb out.ipynb -p paper_budget True -p seeds 5`.

# %% tags=["parameters", "remove-cell"]
models = ["lenet300_100", "lenet5_caffe"]
sparsities = [0.95, 0.98]  # LeNet-300-100's, the paper's
sparsities_lenet5 = [0.98, 0.99]  # LeNet-5-Caffe's, the paper's
methods = ["snip", "random", "shuffled_snip"]  # at every sparsity, beside the dense baseline
seeds = 5  # LeNet-300-100's Table 1 cells
seeds_lenet5 = 5  # LeNet-5-Caffe's Table 1 cells (a LeNet-5 run costs ten LeNet-300-100 runs on a CPU)
ablation_seeds = None  # each ablation on LeNet-300-100; None: seeds
epochs = 8  # LeNet-300-100, our default recipe (540 iterations an epoch on MNIST)
long_epochs = 50  # the training-length ablation: past the paper's first decay at 25,000 iterations
epochs_lenet5 = 2
long_epochs_lenet5 = None  # LeNet-5-Caffe's training-length check: every method at its sparsities this long; None: none
lr = 0.1  # the paper's
lr_lenet5 = 0.02  # the paper's 0.1 diverges for the dense LeNet-5-Caffe at the paper's momentum (checked below)
momentum_lenet5 = 0.9  # the paper's; 0.0 is the official code's default optimiser (plain SGD), e.g. with lr_lenet5 0.1
check_momenta = [0.9, 0.0]  # the learning-rate check trains at lr 0.1 with each: the paper's and the official code's
check_inits = ["default", "variance_scaling"]  # ... and from each initialisation: ours (Glorot) and the official code's
check_warmup = 250  # ... and with the paper's momentum after a linear warm-up over this many iterations (0: not checked)
paper_budget = False  # True: every run trains 75,000 iterations (table1.PAPER_ITERATIONS)
large_saliency_batch = 1000  # the saliency-batch-size ablation (ours and the paper's: 100)
checkpoint = "best validation"  # the error reported: "final", "best validation" or "best test (official)"
speed_iterations = 200  # iterations timed to measure the cost of a run on this machine
stack = None  # runs trained together as one stacked model; 1 trains them one by one; None: 1 on the CPU (faster there), 32 on a GPU
dataset = "mnist"
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # processes running stacks at once; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each stack claims
results_dir = "results/00_snip_mnist"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)

# %% tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; this cell does nothing otherwise.
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    seeds, seeds_lenet5, ablation_seeds, epochs, long_epochs, epochs_lenet5, long_epochs_lenet5 = 2, 2, 2, 1, 2, 1, 2
    dataset, speed_iterations, results_dir = "synthetic", 3, tempfile.mkdtemp()
    large_saliency_batch = 500  # the synthetic set has 90 training images a class

# %% tags=["remove-input"]
import functools
import math

import pandas as pd
from matplotlib import ticker
from IPython.display import Markdown, display

from snipnb import checks, data, devices, plots, provenance, published, stats, table1
from snipnb.cluster import cluster_executor
from snipnb.contrasts import Contrast, check_contrasts
from snipnb.models import INITS
from snipnb.notebook import check_parameters
from snipnb.pruning import mask_overlap
from snipnb.report import answer, late_gain_table, table
from snipnb.sweep import config_id, run_sweep
from snipnb.train import default_device

check_parameters()
ablation_seeds = seeds if ablation_seeds is None else ablation_seeds
for name, value in (("seeds", seeds), ("seeds_lenet5", seeds_lenet5), ("ablation_seeds", ablation_seeds),
                    ("epochs", epochs), ("long_epochs", long_epochs), ("epochs_lenet5", epochs_lenet5),
                    ("speed_iterations", speed_iterations),
                    ("large_saliency_batch", large_saliency_batch)):
    checks.integer(name, value, 1)
if long_epochs_lenet5 is not None:
    checks.integer("long_epochs_lenet5", long_epochs_lenet5, 1)
checks.one_of("checkpoint", checkpoint, table1.CHECKPOINTS)
for name in models:
    checks.one_of("models", name, ("lenet300_100", "lenet5_caffe"))
checks.number("momentum_lenet5", momentum_lenet5, 0, below=1)
for value in check_momenta:
    checks.number("check_momenta", value, 0, below=1)
for value in check_inits:
    checks.one_of("check_inits", value, INITS)
checks.integer("check_warmup", check_warmup, 0)
if ablation_seeds > seeds:
    raise ValueError(f"ablation_seeds ({ablation_seeds}) must not exceed seeds ({seeds}): each ablation is "
                     f"compared with our default recipe on the same seeds")
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
data.load_cached(dataset, True, (1, 28))  # a missing dataset fails here
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
run_device = device
device = device or str(default_device())
workers = workers or devices.default_workers(device)
stack = stack or devices.default_stack(device)
checks.integer("stack", stack, 1)
error = table1.CHECKPOINTS[checkpoint]  # the result column every table reads

steps = table1.steps_per_epoch(table1.Table1Run(dataset=dataset))
if paper_budget:
    epochs = long_epochs = epochs_lenet5 = long_epochs_lenet5 = math.ceil(table1.PAPER_ITERATIONS / steps)
PAPER_MOMENTUM = table1.Table1Run.momentum
setup = {"lenet300_100": dict(sparsities=sparsities, seeds=seeds, epochs=epochs, lr=lr, momentum=PAPER_MOMENTUM),
         "lenet5_caffe": dict(sparsities=sparsities_lenet5, seeds=seeds_lenet5, epochs=epochs_lenet5, lr=lr_lenet5,
                              momentum=momentum_lenet5)}
runs = [run for name in models
        for run in table1.grid(name, setup[name]["sparsities"], methods, setup[name]["seeds"], dataset=dataset,
                               epochs=setup[name]["epochs"], lr=setup[name]["lr"], momentum=setup[name]["momentum"])]
default_run = table1.Table1Run(dataset=dataset, epochs=epochs, lr=lr)  # our recipe, LeNet-300-100
changes = table1.ablations(long_epochs if long_epochs != epochs else None, large_saliency_batch)
ablation_runs = []
if "lenet300_100" in models:
    ablation_runs = [r for r in table1.ablation_grid(changes, sparsities, ablation_seeds, dataset=dataset,
                                                     epochs=epochs, lr=lr) if r not in set(runs)]
# Each network's Table 1 cells trained longer, every method: its declared contrasts are tested there.
long_lenet5_runs = []
if "lenet5_caffe" in models and long_epochs_lenet5 not in (None, epochs_lenet5):
    long_lenet5_runs = table1.grid("lenet5_caffe", sparsities_lenet5, methods, seeds_lenet5,
                                   dataset=dataset, epochs=long_epochs_lenet5, lr=lr_lenet5, momentum=momentum_lenet5)
# LeNet-300-100's length ablation trains dense and SNIP; its controls join it at that length.
long_control_runs = []
if ablation_runs and long_epochs != epochs:
    long_control_runs = [r for r in table1.grid("lenet300_100", sparsities, [m for m in methods if m != "snip"],
                                                ablation_seeds, dataset=dataset, epochs=long_epochs, lr=lr)
                         if r not in set(ablation_runs)]
# The runs at each network's longer length: the ones its declared contrasts are tested at.
length_runs = [r for r in ablation_runs if r.epochs != epochs] + long_control_runs + long_lenet5_runs
iterations = {name: setup[name]["epochs"] * steps for name in models}
percents = lambda values: " and ".join(f"{v:.0%}" for v in values)
display(Markdown(
    f"**This run:** dataset `{dataset}` ({steps} iterations an epoch at batch 100 after the 10% validation "
    f"split); Table 1 cells: " + "; ".join(
        f"{name} at sparsities {percents(setup[name]['sparsities'])}, {setup[name]['seeds']} seeds, dense + "
        f"{len(methods)} methods, {setup[name]['epochs']} epochs ({iterations[name]:,} iterations) at lr "
        f"{setup[name]['lr']}, momentum {setup[name]['momentum']}" for name in models) +
    (f"; {len(ablation_runs)} more runs for {len(changes)} ablations of LeNet-300-100 on {ablation_seeds} seeds "
     f"(the longest {long_epochs} epochs, {long_epochs * steps:,} iterations)" if ablation_runs else "") +
    (f"; {len(long_control_runs)} runs of LeNet-300-100's controls at the ablation's length"
     if long_control_runs else "") +
    (f"; {len(long_lenet5_runs)} LeNet-5-Caffe runs, dense and every method, for {long_epochs_lenet5} epochs "
     f"({long_epochs_lenet5 * steps:,} iterations)" if long_lenet5_runs else "") +
    f". Errors are read at the **{checkpoint}** checkpoint. Code: {provenance.describe(device)}."))

# %% [markdown]
# ## Declared contrasts
# The comparisons this chapter tests, from the paper's claim and the design's controls, declared on
# 2026-12-04 with the equivalence margin, after two earlier executions had been seen (2026-11-21, and
# 2026-11-30, whose page showed LeNet-300-100's SNIP − dense at 27,000 iterations on seeds 0-4, +0.65
# points at 95% and +1.57 at 98%): they are declared in advance only for what those executions had not
# run, seeds 5-9 of LeNet-300-100 and every LeNet-5-Caffe run at 27,000 iterations; this cell stops the notebook before any run if the grid lacks one. After the runs
# they are tested together (Holm: the chance of any false claim among them is held at 5%), and they alone
# are the chapter's findings. Every other interval below is exploratory and uncorrected for multiplicity.
#
# - Per network: SNIP − dense at its highest Table 1 sparsity; SNIP − random and SNIP − shuffled SNIP,
#   each paired at the same sparsity and averaged over the network's Table 1 sparsities within each seed.
# - Changed after an earlier execution's results were seen, and so not declared blind: LeNet-5-Caffe's
#   SNIP − dense moved to its 27,000-iteration length check (2026-12-05, as LeNet-300-100's had), and
#   LeNet-300-100's cells went from 5 to 10 seeds, seeds 0-4 among them (2026-12-05). The controls
#   moved to the same longer length (2026-12-06): they had been tested only at the Table 1 cells'
#   length, where a review of an earlier execution judged training not to have flattened (their
#   short-budget results had been seen, the long ones not). The longer length, 27,000 iterations in the book's chapter, is
#   itself 36% of the paper's schedule, with one decay: its contrasts are made before the paper's
#   budget too, and the budget check below says how far its curves had flattened.
# - Does our SNIP − dense reproduce the paper's, at each Table 1 sparsity? An equivalence test (TOST)
#   around the paper's gap, with a margin of **0.5 points**: half a point of MNIST test error is 50 of the
#   10,000 test images, less than the 0.7-point cost the paper reports at LeNet-300-100's 98% (its one
#   cell where SNIP is clearly behind dense) and five times the rounding of its table. A gap within 0.5 of
#   the paper's tells the paper's story; we say "reproduces" only when the test shows that.
# - Each network's contrasts are tested at the longest budget this run trains it for: its
#   training-length runs' when there are some (past the paper's first learning-rate decay), where every
#   method trains; the Table 1 cells' shorter runs are then exploratory.

# %% tags=["hide-input"]
MARGIN = 0.5  # error points; fixed before the results (see above)
paper = published.SNIP_TABLE1_ERROR
PAPER = "Lee et al. 2019, Table 1"
NAMES = {"snip": "SNIP", "random": "random", "shuffled_snip": "shuffled SNIP", "dense": "dense"}
# Each network's contrasts at its longest budget: LeNet-300-100's length ablation when it runs.
gap_epochs = {name: setup[name]["epochs"] for name in models}
if ablation_runs and long_epochs > epochs and ablation_seeds >= 2:
    gap_epochs["lenet300_100"] = long_epochs
if long_lenet5_runs and seeds_lenet5 >= 2:
    gap_epochs["lenet5_caffe"] = long_epochs_lenet5
declared_runs = runs + length_runs
PRIMARY = []
# A narrowed grid declares what it can test: SNIP's contrasts need SNIP, and a paired test 2 seeds.
for name in (models if "snip" in methods else []):
    if setup[name]["seeds"] < 2:
        continue
    sps, long_gap = setup[name]["sparsities"], dict(model=name, epochs=gap_epochs[name])
    budget = f"{gap_epochs[name] * steps:,} iterations"
    PRIMARY.append(Contrast(f"{name} at {max(sps):.0%}, {budget}: SNIP − dense", "error",
                            {"method": "snip", "sparsity": max(sps)}, {"method": "dense"}, within=long_gap))
    for sp in sps:
        if (name, sp) in paper and (name, 0.0) in paper:
            gap = round(paper[name, sp] - paper[name, 0.0], 2)
            PRIMARY.append(Contrast(f"{name} at {sp:.0%}, {budget}: SNIP − dense against the paper's {gap:+.1f}",
                                    "error", {"method": "snip", "sparsity": sp}, {"method": "dense"},
                                    within=long_gap, kind="equivalence", margin=MARGIN, around=gap,
                                    published=gap, source=PAPER))
    for control in [m for m in ("random", "shuffled_snip") if m in methods]:
        PRIMARY.append(Contrast(
            f"{name}, {budget}: SNIP − {NAMES[control]} (mean over " + percents(sps) + ")", "error",
            {"method": "snip"}, {"method": control}, within=long_gap, average_over=("sparsity",)))
if PRIMARY:
    check_contrasts(PRIMARY, declared_runs)
    display(table(pd.DataFrame([{"contrast": c.name, "test": "equivalence (TOST)" if c.kind == "equivalence" else
                                 "difference", "against": f"{c.around:+.1f} ± {c.margin}" if c.margin else "0"}
                                for c in PRIMARY]),
                  caption=f"{len(PRIMARY)} declared contrasts in test error (points; positive: more error than the "
                          f"baseline), paired on seeds"))
else:
    display(Markdown("**No contrast is tested in this run**: they need `snip` in `methods` and at least 2 seeds "
                     f"(methods = {methods}, seeds = {seeds}, seeds_lenet5 = {seeds_lenet5}). Everything below "
                     "is exploratory."))

# %% [markdown]
# ## Is the paper's learning rate stable?
# The mean training loss of dense networks over their first 100 iterations at the paper's learning rate
# 0.1, with the paper's momentum 0.9 and with the official code's default optimiser, plain SGD (its
# `--optimizer sgd`: no momentum, so a steady step is lr times the gradient rather than momentum 0.9's
# lr / (1 − 0.9) times it), each from our initialisation (Glorot, zero biases) and from the official
# code's (variance scaling, biases too), and at the setting this run uses. A loss that is not a finite
# number, or is 10 or more (chance is 2.3), is a run that diverged. Which of these settings diverge
# says whether the momentum, the initialisation or both make the paper's rate unstable here.

# %% tags=["hide-input"]
checked = pd.concat([table1.stability(name, [dict(lr=rate, momentum=m, init=i) for rate, m, i in
                                             dict.fromkeys([*((0.1, m, i) for m in check_momenta for i in check_inits),
                                                            (setup[name]["lr"], setup[name]["momentum"], "default")])],
                                      seeds=3, iterations=100, device=run_device, dataset=dataset)
                     for name in models], ignore_index=True)
unstable = checked[checked.diverged > 0]
shown = checked.assign(lr=checked.lr.map("{:g}".format), momentum=checked.momentum.map("{:g}".format)).set_index(
    ["model", "lr", "momentum", "init"])


def losses_or_diverged(frame):
    """A stability table with each seed's loss to 3 decimals, or "diverged" where it is not finite or is
    at least `table1.DIVERGED_LOSS`."""
    return frame.apply(lambda col: col.map(lambda x: f"{x:.3f}" if math.isfinite(x) and x < table1.DIVERGED_LOSS
                                           else "diverged") if col.name.startswith("seed") else col)


def why_unstable(name):
    """What the check says makes the paper's rate diverge for `name`: the momentum, the initialisation, or both."""
    at = checked[(checked.model == name) & (checked.lr == 0.1)]
    tried = {(r.momentum, r.init) for r in at.itertuples()}
    diverged = {(r.momentum, r.init) for r in at.itertuples() if r.diverged > 0}
    if not diverged:
        return f"{name} diverged at lr 0.1 in none of the settings checked."
    if diverged == tried:
        return f"{name} diverged at lr 0.1 in every setting checked: neither the momentum nor the initialisation alone tames it."
    for i, factor in ((0, "momentum"), (1, "initialisation")):
        values = {setting[i] for setting in diverged}
        if {setting for setting in tried if setting[i] in values} == diverged:
            named = " or ".join(f"{v:g}" if i == 0 else f"`{v}`" for v in sorted(values, key=str))
            return (f"{name} at lr 0.1 diverged exactly where the {factor} was {named}, whatever the other setting: "
                    f"in this check the {factor} decides.")
    return (f"{name} at lr 0.1 diverged at " + "; ".join(f"momentum {m:g} from `{i}`" for m, i in sorted(diverged))
            + ", and not in the other settings: neither setting alone decides.")


display(table(losses_or_diverged(shown)))
display(Markdown(
    ("Diverged: " + ", ".join(f"{r.model} at lr {r.lr:g}, momentum {r.momentum:g}, {r.init} init ({r.diverged} of "
                              f"3 seeds)" for r in unstable.itertuples())
     + "." if len(unstable) else "No network diverged in its first 100 iterations.")
    + " " + " ".join(why_unstable(name) for name in models)))

# %% [markdown]
# Does a warm-up tame the paper's rate? Dense LeNet-5-Caffe at lr 0.1 with momentum 0.9 from our
# initialisation, the learning rate rising linearly from lr / `check_warmup` to lr over the first
# `check_warmup` iterations, trained twice that long but at most one epoch (the mean training loss
# over all of them; the same 3 seeds). A warm-up is not in the paper: this asks only whether the
# divergence at the paper's rate, where the check above finds one, is a start-up transient or a rate too large
# for this network at this momentum.

# %% tags=["hide-input"]
if check_warmup and "lenet5_caffe" in models:
    warmed = table1.stability("lenet5_caffe", [dict(lr=0.1, momentum=PAPER_MOMENTUM, warmup_iterations=check_warmup)],
                              seeds=3, iterations=2 * check_warmup, device=run_device, dataset=dataset)
    seed_columns = [c for c in warmed.columns if c.startswith("seed")]
    display(table(losses_or_diverged(warmed.set_index(["model", "lr", "momentum", "warmup_iterations"])
                                     [seed_columns + ["diverged"]])))
    trained = min(2 * check_warmup, steps)
    cold = checked[(checked.model == "lenet5_caffe") & (checked.lr == 0.1) & (checked.momentum == PAPER_MOMENTUM)
                   & (checked.init == "default")].diverged.sum()
    reading = ("" if not cold else " So without a warm-up the divergence is a start-up transient, at least over the "
               "iterations trained here" if warmed.diverged.iloc[0] == 0 else
               " So the rate is too large for this network at this momentum, not only at the start")
    display(Markdown(f"With a warm-up over {check_warmup:,} iterations, {warmed.diverged.iloc[0]} of 3 seeds diverged "
                     f"in the first {trained:,} ({max(0, trained - check_warmup):,} of them at the full rate); "
                     f"without one, {cold} of 3 did (the table above).{reading}" + ("." if reading else "")))

# %% [markdown]
# ## What a run costs here, and how far toward the paper's budget this run goes
# A stack of runs of our recipe trains for a few hundred iterations on this machine; from its speed,
# runs per hour at each length, and what the whole grid would cost at the paper's budget.

# %% tags=["hide-input"]
speed = {name: table1.measure_speed(table1.Table1Run(model=name, dataset=dataset, lr=setup[name]["lr"],
                                                    momentum=setup[name]["momentum"]),
                                    stack=min(stack, 12 if name == "lenet300_100" else 3),
                                    iterations=speed_iterations if name == "lenet300_100" else
                                    max(1, speed_iterations // 4), device=run_device)
         for name in models}
long_of = {"lenet300_100": long_epochs, "lenet5_caffe": long_epochs_lenet5 if long_lenet5_runs else None}
cost = pd.DataFrame([{"model": name, "run-iterations / s": rate,
                      "runs / hour, Table 1 cells": 3600 * rate / (setup[name]["epochs"] * steps),
                      "runs / hour, length check": 3600 * rate / (long_of[name] * steps) if long_of.get(name) else None,
                      "runs / hour, paper budget": 3600 * rate / table1.PAPER_ITERATIONS}
                     for name, rate in speed.items()]).set_index("model")
display(table(cost, digits=1))
# Longest runs first, so that parallel workers finish together.
all_runs = sorted(runs + ablation_runs + long_control_runs + long_lenet5_runs, key=lambda r: -r.epochs * steps / speed[r.model])
hours = sum(r.epochs * steps / speed[r.model] for r in all_runs) / 3600
paper_hours = sum(table1.PAPER_ITERATIONS / speed[r.model] for r in all_runs) / 3600
display(Markdown(
    f"Training this grid's {len(all_runs)} runs takes about **{hours:.1f} hours** at these speeds (before "
    f"testing and scoring); the same runs at the paper's budget of {table1.PAPER_ITERATIONS:,} iterations "
    f"would take about **{paper_hours:.0f} hours**. " +
    ("This run trains every network for the paper's budget." if paper_budget else
     f"So this run trains LeNet-300-100 for {epochs * steps:,} iterations, the training-length ablation for "
     f"{long_epochs * steps:,} (past the first decay of the learning rate at {table1.PAPER_STEP_EVERY:,}), "
     f"and LeNet-5-Caffe for {epochs_lenet5 * steps:,}"
     + (f" (its length check for {long_epochs_lenet5 * steps:,})" if long_lenet5_runs else "")
     + "; `-p paper_budget True` runs the paper's budget.")))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
results = run_sweep(functools.partial(table1.run_table1_stack, device=run_device), all_runs,
                    f"{results_dir}/{dataset}", workers=workers, shard=shard, stack=stack,
                    stack_key=table1.stack_key, executor=executor, reuse=reuse,
                    device=functools.partial(provenance.device_name, run_device), progress=False)
results["error"] = results[error]
measured = results.groupby(["model", "epochs"]).seconds.mean().rename("seconds / run").to_frame()
measured["runs / hour"] = 3600 / measured["seconds / run"]
display(Markdown(f"{len(results)} runs have results, {results.seconds.sum() / 3600:.2f} hours of training, "
                 f"testing and scoring in all (a stack's time is divided among its runs). Code of the "
                 f"records: {', '.join(sorted(set(results.code)))}. Measured per run:"))
display(table(measured, digits=1))

# %% [markdown]
# ## Answer
# The declared contrasts, tested together as one family: Holm's adjustment holds the chance of any false
# claim among them at 5%. A gap "reproduces" the paper's only where the equivalence test (TOST) shows it
# within the declared margin of the paper's; "not detected at this power" is not evidence of no difference.
# These are the chapter's findings; every table and verdict after this one is exploratory.

# %% tags=["hide-input", "findings"]
def answer_lead(tested):
    against_paper = tested[tested.kind == "equivalence"]
    shown = int((against_paper.decision == "equivalent within ±margin").sum())
    return ((f"Our SNIP − dense is shown within ±{MARGIN} points of the paper's in **{shown} of "
             f"{len(against_paper)}** Table 1 cells. " if len(against_paper) else "")
            + f"The {len(tested)} declared contrasts, in test error points at the {checkpoint} checkpoint "
              f"(positive: more error than the baseline), on "
            + " and ".join(f"{seeds_said(pairs)} seeds for {name}" for name, pairs in paired_seeds(tested).items())
            + ":")


def paired_seeds(tested):
    """Network -> the numbers of seeds its tested contrasts paired (as tested, not as asked: a missing run shows)."""
    counts = {}
    for contrast, n in zip(PRIMARY, tested.n):
        counts.setdefault(contrast.within["model"], set()).add(int(n))
    return counts


def seeds_said(counts):
    return f"{min(counts)}" if len(counts) == 1 else f"{min(counts)} to {max(counts)}"


display(answer(results, PRIMARY, needed={config_id(r) for r in declared_runs}, lead=answer_lead,
               setting=f"{dataset}, {' and '.join(models)}: test error (%) at the {checkpoint} checkpoint"))

# %% [markdown]
# ## Table 1: ours beside the paper's
# Test error (%), mean ± std over seeds, at each length this run trains a network's Table 1 cells for
# (the longer one is where the declared contrasts are tested); the paper's numbers are its Table 1.

# %% tags=["hide-input"]
main = results[results.id.isin({config_id(r) for r in runs})]
both_lengths = results[results.id.isin({config_id(r) for r in runs + length_runs})]
cell = stats.summarize(both_lengths, ["model", "epochs", "method", "sparsity"], "error").set_index(
    ["model", "epochs", "method", "sparsity"])["mean ± std"]
side_by_side = pd.DataFrame([
    {"model": m, "iterations": f"{e * steps:,}", "sparsity": f"{sp:.0%}", "dense": cell.get((m, e, "dense", 0.0)),
     **{NAMES[meth]: cell.get((m, e, meth, sp)) for meth in methods},
     "paper: dense": paper.get((m, 0.0)), "paper: SNIP": paper.get((m, sp))}
    for m in models for e in sorted({r.epochs for r in runs + length_runs if r.model == m})
    for sp in setup[m]["sparsities"]]).set_index(["model", "iterations", "sparsity"])
display(table(side_by_side, caption=f"test error (%) at the {checkpoint} checkpoint, mean ± std over seeds"))

# %% [markdown]
# **Paired against dense.** Each pruned run minus the dense run of the same seed (same initialisation and
# batch order), in error points with a 95% t interval; positive means *more* error than dense, at each
# length this run trains a network's Table 1 cells for. The paper's column is its SNIP error minus its
# dense error. Exploratory: intervals none corrected for the others; the declared contrasts above are the
# tested ones, and their cells say so rather than show a second, uncorrected reading.

# %% tags=["hide-input"]
paired_lengths = stats.paired_difference(both_lengths, "error", baseline={"method": "dense"},
                                         variant=["method", "sparsity"], pair_on=["seed"], group=["model", "epochs"])


def interval(row) -> str:
    if row["n"] < 2:
        return f"{row['diff']:+.2f} (one seed)"
    return f"{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def paper_gap(model, sparsity):
    if (model, sparsity) in paper and (model, 0.0) in paper:
        return paper[model, sparsity] - paper[model, 0.0]
    return None


def declared_gap(row):
    """SNIP − dense at a network's highest sparsity and declared length is a declared contrast."""
    return (row.method == "snip" and row.epochs == gap_epochs[row.model]
            and row.sparsity == max(setup[row.model]["sparsities"]) and bool(PRIMARY))


paired_cells = paired_lengths.assign(cell=paired_lengths.apply(
    lambda row: "declared: see the Answer" if declared_gap(row) else interval(row), axis=1),
    iterations=(paired_lengths.epochs * steps).map("{:,}".format))
paired_table = paired_cells.pivot(index=["model", "iterations", "sparsity"], columns="method", values="cell")[methods]
paired_table["paper: SNIP − dense"] = [paper_gap(m, sp) for m, _, sp in paired_table.index]
paired_table.index = paired_table.index.set_levels([f"{sp:.0%}" for sp in paired_table.index.levels[2]], level=2)
paired_table = paired_table.rename(columns={m: f"{NAMES.get(m, m)} − dense [95% CI]" for m in methods})
display(table(paired_table, digits=1, caption=f"Test error minus dense, points, {checkpoint} checkpoint "
                                              f"(exploratory, uncorrected)"))

# %% [markdown]
# Test error against sparsity at the length the declared contrasts are tested at (each panel names it),
# on a log scale (random pruning at the highest sparsities is off by an order of magnitude); the dashed
# line is our dense network, the crosses and dotted line the paper's.

# %% tags=["hide-input"]
at_declared = both_lengths[both_lengths.epochs == both_lengths.model.map(gap_epochs)]
summary_declared = stats.summarize(at_declared, ["model", "method", "sparsity"], "error")
fig, axes = plots.panels(len(models), height=3.4)
styles = {"snip": dict(marker="o", ls="-"), "random": dict(marker="s", ls="--"), "shuffled_snip": dict(marker="^", ls=":")}
for ax, name in zip(axes, models):
    part = summary_declared[summary_declared.model == name]
    for meth in methods:
        rows = part[part.method == meth].sort_values("sparsity")
        ax.errorbar(rows.sparsity, rows["mean"], yerr=rows["std"].fillna(0), capsize=3, label=meth,
                    **styles.get(meth, {}))
    dense = part[part.method == "dense"]["mean"]
    if len(dense):
        ax.axhline(dense.iloc[0], color="k", ls="--", lw=1, label="dense (ours)")
    published_points = [(sp, paper[name, sp]) for sp in setup[name]["sparsities"] if (name, sp) in paper]
    if published_points:
        ax.plot(*zip(*published_points), "kx", ms=9, mew=2, label="SNIP (paper)")
    if (name, 0.0) in paper:
        ax.axhline(paper[name, 0.0], color="k", ls=":", lw=1, label="dense (paper)")
    ax.set_yscale("log")
    # Plain numbers on the log axis: the decades, and 2 and 5 times them.
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xticks(setup[name]["sparsities"], [f"{sp:.0%}" for sp in setup[name]["sparsities"]])
    ax.set_xlabel("sparsity")
    ax.set_ylabel(f"test error (%), {checkpoint} checkpoint")
    ax.set_title(f"{name}, {gap_epochs[name] * steps:,} iterations")
plots.shared_legend(fig, axes)

# %% [markdown]
# ## Is the budget long enough?
# Validation error over training for dense and SNIP at each network's highest Table 1 sparsity, mean
# over seeds, at each length this run trains them for (the longest solid). The learning rate drops
# tenfold every 25,000 iterations, so a curve that passes that point may drop there. Then each curve's
# last stretch at its final learning rate, paired over seeds (exploratory, uncorrected): validation
# accuracy at the end minus at the first checkpoint after the last decay (or 30% of the budget before
# the end, for a run that never decays), for every method at that sparsity. "Still rising" means the
# budget stopped a curve that was still improving, and the comparison is made before it flattened.
# For runs that pass the first decay, also the plateau before it: the gain from 15,000 iterations to
# the last checkpoint at the starting rate. A curve still rising there was cut by the decay, not flat.

# %% tags=["hide-input"]
curve_ids = {config_id(r) for r in runs + length_runs}
top = results.model.map({name: max(setup[name]["sparsities"]) for name in models})
shown = results[results.id.isin(curve_ids) & ((results.method == "dense") | (results.sparsity == top))]
long_curves = table1.curves(shown).assign(val_acc=lambda d: 100 - d.checkpoint_val_error)
fig, axes = plots.panels(len(models), height=3.2)
for ax, name in zip(axes, models):
    part = long_curves[(long_curves.model == name) & long_curves.method.isin(["dense", "snip"])]
    for (method, length), run_curves in part.groupby(["method", "epochs"]):
        mean = run_curves.groupby("iteration").checkpoint_val_error.mean()
        ax.plot(mean.index, mean.values, ls="-" if length == part.epochs.max() else "--", marker=".", ms=3,
                color=f"C{int(method != 'dense')}",
                label=f"{NAMES[method]}" + (f" {max(setup[name]['sparsities']):.0%}" if method == "snip" else "")
                      + f", {length * steps:,} iterations")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation error (%)")
    ax.set_title(name, fontsize="medium")
    ax.legend(fontsize="small")
measurable = long_curves[long_curves.groupby("id").iteration.transform("size") > 1]  # a stretch needs two points
if len(measurable):
    late = pd.concat([stats.late_gain(group, ["model", "method", "epochs"], step="iteration", value="val_acc",
                                      fraction=table1.last_stretch(length * steps, steps))
                      for length, group in measurable.groupby("epochs")])
    late = late.assign(iterations=(late.epochs * steps).map("{:,}".format)).drop(columns="epochs")
    display(table(late_gain_table(late, ["model", "method", "iterations"], "it."),
                  caption="validation accuracy gained over each curve's last stretch at its final learning rate"))
    PLATEAU_FROM = 15_000
    before_decay = measurable[(measurable.epochs * steps > table1.PAPER_STEP_EVERY)
                              & (measurable.iteration <= table1.PAPER_STEP_EVERY)]
    if len(before_decay) and before_decay.iteration.min() <= PLATEAU_FROM:
        plateau = stats.late_gain(before_decay, ["model", "method", "epochs"], step="iteration", value="val_acc",
                                  fraction=1 - PLATEAU_FROM / before_decay.iteration.max())
        plateau = plateau.assign(iterations=(plateau.epochs * steps).map("{:,}".format)).drop(columns="epochs")
        display(table(late_gain_table(plateau, ["model", "method", "iterations"], "it."),
                      caption=f"validation accuracy gained on the plateau before the first decay, from about "
                              f"{PLATEAU_FROM:,} iterations to the last checkpoint at the starting rate (runs that pass "
                              f"{table1.PAPER_STEP_EVERY:,})"))
else:
    display(Markdown("Every run here has a single checkpoint: no curve has a last stretch to read."))

# %% [markdown]
# ## Which difference matters? Ablations on LeNet-300-100
# Each row changes one thing from our default recipe (the first row) toward the official code or the
# paper's budget, on the same seeds. Columns: SNIP's error and the dense error trained the same way
# (mean ± std); SNIP − dense paired on seeds [95% CI], and how far it lies from the paper's SNIP − dense
# [95% CI]; and each ablation against the default, paired on seeds: the change in SNIP's error and in
# SNIP − dense. All exploratory: intervals uncorrected for their number; an interval of the departure
# that spans 0 is not evidence that the gaps are equal.

# %% tags=["hide-input"]
if ablation_runs:
    view = table1.ablation_view(results[results.model == "lenet300_100"], changes, default_run)
    names = ["default", *changes]
    gap = table1.gaps(view, "error")
    within = stats.paired_difference(view, "error", baseline={"method": "dense"}, variant=["method", "sparsity"],
                                     pair_on=["seed"], group=["ablation"]).set_index(["ablation", "sparsity"])
    on_snip = stats.paired_difference(gap, "error", baseline={"ablation": "default"}, variant=["ablation"],
                                      pair_on=["seed"], group=["sparsity"]).set_index(["ablation", "sparsity"])
    on_gap = stats.paired_difference(gap, "gap", baseline={"ablation": "default"}, variant=["ablation"],
                                     pair_on=["seed"], group=["sparsity"]).set_index(["ablation", "sparsity"])
    means = stats.summarize(view, ["ablation", "method", "sparsity"], "error").set_index(
        ["ablation", "method", "sparsity"])["mean ± std"]
    # The length ablation at the declared length holds declared comparisons: shown once, in the Answer.
    declared_ablation = (f"{long_epochs} epochs" if PRIMARY and "lenet300_100" in gap_epochs
                         and gap_epochs["lenet300_100"] == long_epochs != epochs else None)
    rows = []
    for sp in sparsities:
        target = paper_gap("lenet300_100", sp)
        for name in names:
            departure = None
            if (name, sp) in within.index and target is not None:
                w = within.loc[(name, sp)]
                departure = ("declared (TOST): see the Answer" if name == declared_ablation else
                             interval({**w, **{c: w[c] - target for c in ("diff", "ci_low", "ci_high")}}))
            rows.append({
                "sparsity": f"{sp:.0%}", "ablation": name, "SNIP error": means.get((name, "snip", sp)),
                "dense error": means.get((name, "dense", 0.0)),
                "SNIP − dense [95% CI]": ("declared: see the Answer" if name == declared_ablation and sp == max(sparsities)
                                          else interval(within.loc[(name, sp)]) if (name, sp) in within.index else None),
                "ours − paper's SNIP − dense": departure,
                "Δ SNIP error": interval(on_snip.loc[(name, sp)]) if (name, sp) in on_snip.index else None,
                "Δ (SNIP − dense)": interval(on_gap.loc[(name, sp)]) if (name, sp) in on_gap.index else None})
    display(table(pd.DataFrame(rows).set_index(["sparsity", "ablation"]),
                  caption=f"LeNet-300-100, test error (%) at the {checkpoint} checkpoint; the paper's SNIP − dense: "
                          + ", ".join(f"{paper_gap('lenet300_100', sp):+.1f} at {sp:.0%}" for sp in sparsities
                                      if paper_gap("lenet300_100", sp) is not None) + " (exploratory, uncorrected)"))
    lines = []
    for name in changes:
        for sp in sparsities:
            if (name, sp) in on_gap.index:
                lines.append(f"- **{name}**, {sp:.0%}: SNIP's error changes by {stats.verdict(on_snip.loc[(name, sp)], exploratory=True)}; "
                             f"SNIP − dense changes by {stats.verdict(on_gap.loc[(name, sp)], exploratory=True)}.")
    display(Markdown("Each ablation against our default recipe, paired on seeds (exploratory: not declared "
                     "contrasts, uncorrected for multiplicity):\n\n" + "\n".join(lines)))
else:
    display(Markdown("No ablation ran: they need `lenet300_100` in `models`."))

# %% [markdown]
# ## Checkpoint choice
# The same LeNet-300-100 runs read at three checkpoints: the last; the one with the best validation
# accuracy (the choice that never looks at the test set); and the best test accuracy over the checkpoints
# of the last 10,000 iterations, what the official `snip/test.py` reports. Test error (%), mean ± std,
# then each choice against the best-validation one, paired on seeds, and SNIP − dense under each.

# %% tags=["hide-input"]
if ablation_runs:
    lengths_shown = [n for n in names if n == "default" or changes[n].keys() == {"epochs"}]
    runs_read = view[view.ablation.isin(lengths_shown)]
    label_sparsity = lambda frame: frame.rename(index=lambda v: f"{v:.0%}" if isinstance(v, float) else v)
    long_form = runs_read.melt(id_vars=["ablation", "method", "sparsity", "seed"],
                               value_vars=list(table1.CHECKPOINTS.values()), var_name="column", value_name="err")
    long_form["checkpoint"] = long_form.column.map({v: k for k, v in table1.CHECKPOINTS.items()})
    by_choice = stats.summarize(long_form, ["ablation", "method", "sparsity", "checkpoint"], "err")
    shown = by_choice.pivot(index=["ablation", "method", "sparsity"], columns="checkpoint",
                            values="mean ± std")[list(table1.CHECKPOINTS)]
    versus = stats.paired_difference(long_form, "err", baseline={"checkpoint": "best validation"},
                                     variant=["checkpoint"], pair_on=["seed"], group=["ablation", "method", "sparsity"])
    for choice in ("final", "best test (official)"):
        part = versus[versus.checkpoint == choice].set_index(["ablation", "method", "sparsity"])
        shown[f"{choice} − best validation [95% CI]"] = part.apply(interval, axis=1)
    display(table(label_sparsity(shown), caption=f"LeNet-300-100, test error (%) by checkpoint choice (exploratory, "
                                                 f"uncorrected)"))
    gap_by_choice = pd.DataFrame({
        choice: stats.paired_difference(runs_read, column, baseline={"method": "dense"},
                                        variant=["method", "sparsity"], pair_on=["seed"],
                                        group=["ablation"]).set_index(["ablation", "sparsity"]).apply(interval, axis=1)
        for choice, column in table1.CHECKPOINTS.items()})
    if declared_ablation and (declared_ablation, max(sparsities)) in gap_by_choice.index:
        gap_by_choice.loc[(declared_ablation, max(sparsities)), checkpoint] = "declared: see the Answer"
    display(table(label_sparsity(gap_by_choice), caption="SNIP − dense [95% CI] under each checkpoint choice (exploratory, uncorrected)"))

# %% [markdown]
# ## Which weights does SNIP keep?
# Per-layer density of the masks at each network's highest sparsity (seed 0). Random pruning keeps every
# layer at the global density; SNIP moves the budget between layers, and shuffled SNIP copies SNIP's budget.

# %% tags=["hide-input"]
fig, axes = plots.panels(len(models), height=3.4)
for ax, name in zip(axes, models):
    top = max(setup[name]["sparsities"])
    masks = {meth: table1.masks_for(table1.Table1Run(model=name, method=meth, sparsity=top, dataset=dataset))
             for meth in methods}
    plots.density_bars(masks, ax=ax, title=f"{name} at sparsity {top:.0%}")
plots.shared_legend(fig, axes)
collapsed = main[main.collapsed > 0].groupby(["model", "method", "sparsity"]).size()
display(Markdown("Runs with a layer pruned away entirely: " + (
    ", ".join(f"{m} {meth} at {sp:.0%} ({n} seeds)" for (m, meth, sp), n in collapsed.items()) or "none") + "."))

# %% [markdown]
# Kept first-layer connections per input pixel of LeNet-300-100 (seed 0): each pixel feeds 300 hidden
# units, and the map counts how many of those connections survive. The paper's Figure 2 shows SNIP keeping
# the centre of the image, where the digits are, and dropping the always-black border. The second row of
# maps is SNIP at the highest sparsity under each saliency setting the ablations use.

# %% tags=["hide-input"]
if "lenet300_100" in models:
    top = max(sparsities)
    first_layer = {f"{meth} @ {sp:.0%}": table1.masks_for(table1.Table1Run(method=meth, sparsity=sp, dataset=dataset))
                   for sp in sparsities for meth in methods}
    plots.image_grid({label: plots.kept_inputs(m["body.1.weight"], (1, 28, 28)) for label, m in first_layer.items()},
                     title="LeNet-300-100: kept connections per input pixel", ncols=len(methods))
    saliency_settings = {"ours": {}, "random batch": dict(saliency_balanced=False),
                         f"{large_saliency_batch:,} images": dict(saliency_images=large_saliency_batch),
                         "variance scaling": dict(init="variance_scaling"),
                         "official code": dict(init="variance_scaling", saliency_balanced=False)}
    snip_masks = {label: table1.masks_for(table1.Table1Run(method="snip", sparsity=top, dataset=dataset, **fields))
                  for label, fields in saliency_settings.items()}
    plots.image_grid({label: plots.kept_inputs(m["body.1.weight"], (1, 28, 28)) for label, m in snip_masks.items()},
                     title=f"LeNet-300-100: SNIP at {top:.0%} under each saliency setting", ncols=3)
    display(Markdown(f"Jaccard overlap of SNIP's kept weights at {top:.0%} (seed 0) with ours (1 is the same "
                     "weights): " + ", ".join(f"{label} {mask_overlap(snip_masks['ours'], m):.2f}"
                                              for label, m in snip_masks.items() if label != "ours") +
                     ". Another initialisation scores other weights, so its mask differs whatever the batch."))

# %% [markdown]
# ## Table 1 cell by cell (exploratory)
# The same cells one by one at each length, and what each ablation changes: 95% intervals, none
# corrected for the others, for reading beside the tested answer above (the declared comparisons are
# not read again here). An interval of ours − the paper's that spans 0 is not
# evidence that the gaps are equal.

# %% tags=["hide-input"]
lines = []
means_lengths = both_lengths.groupby(["model", "epochs", "method", "sparsity"]).error.mean()
published_error = lambda key: f"{paper[key]}%" if key in paper else "none"
for (name, length), part in paired_lengths.groupby(["model", "epochs"], sort=False):
    declared_here = bool(PRIMARY) and length == gap_epochs[name]
    for sp in setup[name]["sparsities"]:
        match = part[(part.method == "snip") & (part.sparsity == sp)]
        if not len(match):
            continue
        row, target = match.iloc[0], paper_gap(name, sp)
        line = (f"- **{name} at {sp:.0%}**, {length * steps:,} iterations"
                + (" (the declared length)" if declared_here else "") + ": SNIP "
                f"{means_lengths[name, length, 'snip', sp]:.2f}% (paper {published_error((name, sp))}), dense "
                f"{means_lengths[name, length, 'dense', 0.0]:.2f}% (paper {published_error((name, 0.0))}). SNIP − dense: "
                + ("declared, see the Answer." if declared_gap(row) else f"{stats.verdict(row, exploratory=True)}."))
        if target is not None and row["n"] >= 2:
            line += (f" Ours − the paper's {target:+.1f}: " + ("tested for equivalence in the Answer." if declared_here
                     else f"{row['diff'] - target:+.2f} [{row.ci_low - target:+.2f}, {row.ci_high - target:+.2f}]."))
        for control in ("random", "shuffled_snip"):
            c = part[(part.method == control) & (part.sparsity == sp)]
            if len(c):
                line += f" {NAMES[control].capitalize()} − dense: {c.iloc[0]['diff']:+.2f}."
        lines.append(line)
answer = []
if ablation_runs:
    detected = [f"{name} at {sp:.0%} ({'raises' if r['diff'] > 0 else 'lowers'} SNIP − dense by {abs(r['diff']):.2f} "
                f"points [{r.ci_low:+.2f}, {r.ci_high:+.2f}])"
                for (name, sp), r in on_gap.iterrows() if r["n"] >= 2 and (r.ci_low > 0 or r.ci_high < 0)]
    moved = [f"{name} at {sp:.0%} ({r['diff']:+.2f} points)" for (name, sp), r in on_snip.iterrows()
             if r["n"] >= 2 and (r.ci_low > 0 or r.ci_high < 0)]
    answer.append("Ablations of LeNet-300-100 whose 95% interval of the change in SNIP − dense excludes 0: "
                  + ("; ".join(detected) or "none") + ". Of the change in SNIP's own error: "
                  + ("; ".join(moved) or "none") + ".")
    quiet = on_gap[(on_gap.ci_low <= 0) & (on_gap.ci_high >= 0)]
    if len(quiet):
        seeds_quiet = sorted({int(n) for n in quiet.n})
        answer.append(f"The others are not detected at this power: with {'–'.join(map(str, seeds_quiet))} "
                      f"seeds the run would detect a change of SNIP − dense of about "
                      f"±{quiet.detectable.min():.2f} to ±{quiet.detectable.max():.2f} points.")
display(Markdown("\n".join(lines) + ("\n\n" + " ".join(answer) if answer else "")))

# %% [markdown]
# ## Discussion
# The paper's claim is relative: SNIP's sparse networks train to the dense network's error. The declared
# contrasts (the answer above) test that claim; the ablations, exploratory, suggest which of the official code's choices move
# SNIP relative to dense. Read the controls with them: where SNIP beats shuffled SNIP, the weights it
# keeps within a layer matter beyond its per-layer budget; where no difference is detected, the run
# cannot tell the two apart at its power, which is not a showing that they are equal.

# %% tags=["remove-input"]
notes = []
if ablation_runs and f"{long_epochs} epochs" in changes:
    name = f"{long_epochs} epochs"
    for sp in sparsities:
        if (name, sp) in on_gap.index and ("default", sp) in within.index:
            before, after = within.loc[("default", sp)], within.loc[(name, sp)]
            notes.append(f"- Training for {long_epochs * steps:,} rather than {epochs * steps:,} iterations takes "
                         f"SNIP − dense at {sp:.0%} from {before['diff']:+.2f} points ({int(before.n)} seeds) to "
                         f"{after['diff']:+.2f} ({int(after.n)} seeds); on the seeds both ran, the change is "
                         f"{stats.verdict(on_gap.loc[(name, sp)], exploratory=True)}. Dense error: "
                         f"{means.get(('default', 'dense', 0.0), '—')} → {means.get((name, 'dense', 0.0), '—')}.")
if ablation_runs:
    official = "official code (all three)"
    for sp in sparsities:
        if (official, sp) in on_snip.index:
            notes.append(f"- The official code's saliency and initialisation together change SNIP's error at {sp:.0%} "
                         f"by {stats.verdict(on_snip.loc[(official, sp)], exploratory=True)}.")
if long_lenet5_runs:
    lenet5 = results[results.id.isin({config_id(r) for r in runs + long_lenet5_runs})
                     & (results.model == "lenet5_caffe") & results.method.isin(["dense", "snip"])]
    # Each length as an "ablation" of the other, so LeNet-300-100's per-seed gaps serve (table1.gaps).
    gap5 = table1.gaps(lenet5.assign(ablation=lenet5.epochs), "error")
    mean_gap5 = gap5.groupby(["ablation", "sparsity"]).gap.mean()
    change5 = stats.paired_difference(gap5, "gap", baseline={"ablation": epochs_lenet5}, variant=["ablation"],
                                      pair_on=["seed"], group=["sparsity"]).set_index("sparsity")
    dense5 = lenet5[lenet5.method == "dense"].groupby("epochs").error.agg(["mean", "std"])
    for sp in sparsities_lenet5:
        if sp in change5.index:
            notes.append(f"- LeNet-5-Caffe: training for {long_epochs_lenet5 * steps:,} rather than "
                         f"{epochs_lenet5 * steps:,} iterations takes SNIP − dense at {sp:.0%} from "
                         f"{mean_gap5[(epochs_lenet5, sp)]:+.2f} points to "
                         f"{mean_gap5[(long_epochs_lenet5, sp)]:+.2f}; on the seeds both ran, the change is "
                         f"{stats.verdict(change5.loc[sp], exploratory=True)}. Dense error: "
                         + " → ".join(f"{dense5.loc[e, 'mean']:.2f} ± {dense5.loc[e, 'std']:.2f}"
                                      for e in (epochs_lenet5, long_epochs_lenet5)) + ".")
display(Markdown("\n".join(notes) or "No ablation ran."))

# %% [markdown]
# ## Limits

# %% tags=["remove-input"]
test_images = len(table1.data_of(default_run)[2])
# The checkpoints (one an epoch) table1 reads the official choice from: those in the last OFFICIAL_WINDOW iterations.
in_window = lambda length: sum(table1.in_official_window([e * steps for e in range(1, length + 1)]))
limits = [
    f"- Dataset `{dataset}`: {len(table1.data_of(default_run)[0]):,} training images after holding out 10% for "
    f"validation (one fixed split), {test_images:,} test images. Seeds: {seeds} for LeNet-300-100's Table 1 "
    f"cells, {seeds_lenet5} for LeNet-5-Caffe's, {ablation_seeds} for each ablation.",
    f"- Length: LeNet-300-100 {epochs * steps:,} iterations ({long_epochs * steps:,} in the length ablation), "
    f"LeNet-5-Caffe {epochs_lenet5 * steps:,}"
    + (f" ({long_epochs_lenet5 * steps:,} in its length check)" if long_lenet5_runs else "")
    + f"; the paper's budget, as we read it, is "
    f"{table1.PAPER_ITERATIONS:,} (it states the decay interval, not the total). Runs shorter than "
    f"{table1.PAPER_STEP_EVERY:,} iterations never see the learning rate decay."
    + ("" if paper_budget else " No run here trains the paper's budget, so what its last two decays would do to "
       "the gaps is not measured (`-p paper_budget True` runs it)."),
    "- LeNet-5-Caffe's Table 1 cells are not ablated" + (" but for training length." if long_lenet5_runs else ".")]
for name in models:
    if setup[name]["lr"] != 0.1:
        at_paper = unstable[(unstable.model == name) & (unstable.lr == 0.1) & (unstable.momentum == PAPER_MOMENTUM)]
        limits.append(f"- {name} trains at lr {setup[name]['lr']}, not the paper's 0.1" +
                      (f", at which (with the paper's momentum) its dense network diverged in the check above from "
                       f"{' and '.join(sorted(set(at_paper.init)))} initialisation. The lower rate was taken because "
                       f"0.1 diverged, not chosen on validation among others." if len(at_paper) else
                       ", chosen neither for divergence (the check above shows none at 0.1) nor on validation.")
                      + " What the lower rate does to its error and to SNIP − dense is not measured: no run trains it "
                        "at 0.1 (with a warm-up, or without momentum) to the end of a budget.")
    if setup[name]["momentum"] != PAPER_MOMENTUM:
        limits.append(f"- {name} trains with momentum {setup[name]['momentum']:g}, not the paper's "
                      f"{PAPER_MOMENTUM:g}" + (" (plain SGD, the official code's default optimiser)."
                                               if setup[name]["momentum"] == 0 else "."))
limits += [
    "- Not reproduced from the official code: it also prunes biases, and it initialises the biases of the "
    "fresh network it trains at zero (ours, under variance scaling, draws them like the weights).",
    f"- Checkpoints are taken every epoch ({steps} iterations) rather than every 1,000 iterations, so the official "
    f"choice is the best of the checkpoints in the last {table1.OFFICIAL_WINDOW:,} iterations ("
    + ", ".join(f"{in_window(length)} in a run of {length} epochs" for length in sorted(
        {epochs, long_epochs, epochs_lenet5} | ({long_epochs_lenet5} if long_lenet5_runs else set())))
    + ") rather than of 10.",
    "- The ablations change one thing at a time from our recipe (and all three saliency and initialisation "
    "settings together); interactions between training length and the other settings were not run.",
]
# A control that cannot train compares SNIP with a broken network, not with another choice of weights.
untrainable = stats.summarize(both_lengths[both_lengths.method == "random"], ["model", "epochs", "sparsity"], "error")
untrainable = untrainable[untrainable["mean"] > 50]
if len(untrainable):
    limits.append("- Random pruning leaves networks that barely train at "
                  + ", ".join(f"{r.model} {r.sparsity:.0%} ({r.epochs * steps:,} iterations: {r['mean']:.0f}% error)"
                              for _, r in untrainable.iterrows())
                  + "; chance is 90%. There SNIP − random says only that SNIP's network trains"
                  + (", and the declared SNIP − random of "
                     + " and ".join(sorted(set(untrainable.model[untrainable.epochs == untrainable.model.map(gap_epochs)])))
                     + ", averaged over its Table 1 sparsities, carries such a cell"
                     if (untrainable.epochs == untrainable.model.map(gap_epochs)).any() else
                     " (none of these cells is at the length the declared contrasts are tested at)")
                  + "; SNIP − shuffled SNIP is the informative control.")
display(Markdown("\n".join(limits)))
