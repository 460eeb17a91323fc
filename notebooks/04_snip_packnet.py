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
# # Experiment 4: does SNIP pick better weights for PackNet?
#
# **Question.** PackNet {cite}`mallya2018packnet` gives every task its own slice of one network.
# After a task is trained, it keeps the largest-magnitude fraction of its free weights and freezes
# them, releases the rest to later tasks, and retrains briefly. SNIP-PackNet keeps the weights with
# the largest SNIP saliency $|\partial L/\partial\theta\cdot\theta|$ on the task's data instead. Does
# the choice of weights matter for accuracy, and is either criterion better than keeping a *random*
# fraction of the free weights? And if SNIP's choice differs from the others, is it the weights it
# picks, or only how many it keeps in each layer?
#
# **Benchmarks.** PackNet needs the task id at test time (it picks the task's weights), so both
# benchmarks are task-incremental: **Split** (the classes cut into tasks; Split-MNIST: 0/1, 2/3, ...)
# and **Permuted** (every task all classes, its pixels under a permutation of its own), each with one
# head per task.
#
# **Method.** Each weight has one owner task. A task sees the weights of tasks up to and including
# itself, applied as masks in the forward pass at test time; it also has its own BatchNorm
# statistics and affine parameters, so ResNets work; conv and linear biases are trained by the
# first task only. Frozen weights are restored after every optimiser step, so neither momentum nor
# weight decay can move them. Strategies: `finetune` (no protection) and `joint` (every task at once)
# bracket the results; `packnet` keeps weights by magnitude, `snip_packnet` by SNIP saliency, and two
# controls. `random_packnet` keeps a random fraction of the free weights: its random scores are pooled
# over layers like the others', so it keeps about the same fraction of every layer, and SNIP-PackNet −
# random PackNet compares SNIP's weights *and* its per-layer budget with a uniform one.
# `shuffled_snip_packnet` keeps, at each task, exactly as many of each layer's free weights as SNIP's
# scores choose there, but at random positions among that layer's free weights, at SNIP-PackNet's chosen
# fraction: SNIP's per-layer budget without its choice of weights. (The counts come from SNIP's own
# choice, ties included; shuffling the scores instead would let SNIP's exact zeros, tied across layers,
# move weights between layers.) **Equal budgets:** every strategy
# trains `epochs` per task; PackNet's retraining after pruning is counted inside them
# (`retrain_epochs` of the `epochs`). The fraction of its free weights each task keeps is chosen per
# strategy and benchmark on the validation split (10% of each task's training images, held out), over
# several seeds of its own (from 10,000, which no reported run reaches: a search's winners are never
# among the compared runs); "equal" gives every task the same share of the network. Shuffled SNIP-PackNet is not
# searched: it runs at SNIP-PackNet's chosen fraction, the budget it is a control for.
#
# **Metrics** from the accuracy matrix $R$ (row $i$: after training task $i$; column $j$: task $j$):
# average accuracy after the last task, forgetting (Chaudhry et al. 2018), backward transfer, and
# forward transfer by a linear probe on the frozen body. Methods are compared on the same seeds, as
# mean differences with 95% confidence intervals.
#
# **Rerun.** `papermill notebooks/04_snip_packnet.ipynb out.ipynb -p dataset mnist -p model lenet300_100`
# runs this chapter's protocol at its default size; finished runs are stored in `results_dir`.

# %% tags=["parameters", "remove-cell"]
model = "resnet18"
dataset = "cifar100"
benchmarks = None  # None: split_task, plus permuted_task on MNIST
n_tasks = 5  # Split benchmark
permuted_tasks = 10  # Permuted benchmark
seeds = 5  # reported runs
search_seeds = 2  # runs per fraction kept in the validation search, on seeds of its own (from 10,000)
budget_factor = 2  # budget check: every strategy at its fraction also trained this many times the epochs/task; 1: none
budget_seeds = 3  # seeds of the budget check, read on validation (the first ones: never the fraction search's)
epochs = 10  # per task, Split benchmark, for every strategy (PackNet's retraining included)
permuted_epochs = 2  # per task, Permuted benchmark (retraining included)
retrain_epochs = None  # PackNet: of each task's epochs, these retrain after pruning; None: 1, or 0 where a task has 1 epoch
batch_size = 128
optimizer = "adam"
lr = 0.001
weight_decay = 0.0
keeps = [None, 0.25, 0.5]  # fraction of its free weights each task keeps; None: equal shares for all tasks
importance_examples = 1024  # training images per task SNIP scores on
probe_examples = 2000  # images per task the forward-transfer probe is fit on
data_root = None  # None: $SNIPNB_DATA, else ~/.cache/snipnb/data
device = None  # None: CUDA, else MPS, else CPU
workers = None  # processes running runs at once; None: one per CPU core, one on a GPU (snipnb.devices)
shard = None  # "i/n": run only slice i of n of the grid
cluster = "local"  # or a Dask scheduler "tcp://host:8786", its scheduler file, or "slurm:N" (README)
gpus_per_run = 0  # on a cluster: GPUs each run claims
results_dir = "results/04_snip_packnet"
reuse = "same_code"  # or "any": also keep records made by other library code (the chapter names their code)

# %% tags=["remove-cell"]
# CI runs every notebook in a quick configuration on synthetic data; this cell does nothing otherwise.
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    workers = 1  # one process: starting workers would cost more than these seconds of runs
    model, dataset, n_tasks, permuted_tasks, seeds, search_seeds = "lenet300_100", "synthetic", 2, 2, 2, 1
    epochs, permuted_epochs, keeps, importance_examples, probe_examples = 2, 2, [None, 0.5], 16, 32
    benchmarks, results_dir, budget_seeds = ["split_task", "permuted_task"], tempfile.mkdtemp(), 2

# %% tags=["remove-input"]
import functools
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from snipnb import checks, continual_report, data, devices, plots, provenance, report, stats, tuning
from snipnb.cluster import cluster_executor
from snipnb.continual import PACKNET_STRATEGIES
from snipnb.contrasts import check_contrasts, evaluate_contrasts
from snipnb.notebook import check_parameters
from snipnb.report import table
from snipnb.sequence import ContinualRun, run_sequence
from snipnb.sweep import run_sweep
from snipnb.train import default_device

check_parameters()
BENCHMARKS = {"split_task": ("split", "Split, task-IL"), "permuted_task": ("permuted", "Permuted, task-IL")}
if benchmarks is None:
    benchmarks = ["split_task"] + (["permuted_task"] if dataset == "mnist" else [])
for name in benchmarks:
    checks.one_of("benchmarks", name, BENCHMARKS)
for name, value in dict(seeds=seeds, search_seeds=search_seeds, epochs=epochs, permuted_epochs=permuted_epochs,
                        n_tasks=n_tasks, permuted_tasks=permuted_tasks).items():
    checks.integer(name, value, 1)
if seeds < 2:
    raise ValueError(f"seeds must be at least 2: the declared contrasts pair runs on seeds, and a paired test needs "
                     f"two; got seeds={seeds}")
checks.integer("budget_factor", budget_factor, 1)
checks.integer("budget_seeds", budget_seeds, 2 if budget_factor > 1 else 0)  # a paired interval needs two
epochs_per_task = [epochs if BENCHMARKS[b][0] == "split" else permuted_epochs for b in benchmarks]
if retrain_epochs is None:  # follows the epochs, so that -p epochs 1 needs no second parameter
    retrain_epochs = min(1, min(epochs_per_task) - 1)
checks.integer("retrain_epochs", retrain_epochs, 0)
if retrain_epochs >= min(epochs_per_task):
    raise ValueError(f"retrain_epochs ({retrain_epochs}) must be fewer than the epochs per task ({min(epochs_per_task)}): "
                     "PackNet retrains within each task's epochs")
if not keeps:
    raise ValueError("keeps must list at least one fraction (None: equal shares)")
if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)  # worker processes read it too
shape = data.recipe_defaults(dataset)["synthetic_shape"]
data.load_cached(dataset, True, shape)  # a missing dataset fails here, not in the first run
executor = cluster_executor(cluster, gpus_per_run=gpus_per_run)
run_device = device
device = device or str(default_device())
workers = workers or devices.default_workers(device)

VARIANTS = list(PACKNET_STRATEGIES)  # packnet, snip_packnet, random_packnet, shuffled_snip_packnet
# Whose chosen fraction each variant runs at: its own, searched on validation, but the shuffled control runs at
# SNIP-PackNet's, so that it differs from SNIP-PackNet in the positions of the weights alone.
KEEP_OF = {s: "snip_packnet" if s == "shuffled_snip_packnet" else s for s in VARIANTS}
SEARCHED = [s for s in VARIANTS if KEEP_OF[s] == s]
STRATEGIES = ["finetune", "joint", *VARIANTS]
NAMES = {"finetune": "fine-tuning", "joint": "joint training", "packnet": "PackNet", "snip_packnet": "SNIP-PackNet",
         "random_packnet": "random PackNet", "shuffled_snip_packnet": "shuffled SNIP-PackNet"}
titles = {name: BENCHMARKS[name][1] for name in benchmarks}
label = {(BENCHMARKS[name][0], "task"): name for name in benchmarks}  # (benchmark, scenario) of a run -> its name
common = dict(model=model, dataset=dataset, batch_size=batch_size, optimizer=optimizer, lr=lr,
              weight_decay=weight_decay, retrain_epochs=retrain_epochs, importance_examples=importance_examples,
              **data.recipe_defaults(dataset))


def setting(name):
    """The ContinualRun fields of one benchmark."""
    benchmark = BENCHMARKS[name][0]
    split = benchmark == "split"
    return dict(benchmark=benchmark, scenario="task", n_tasks=n_tasks if split else permuted_tasks,
                epochs=epochs if split else permuted_epochs)


def sweep(configs, desc):
    return run_sweep(functools.partial(run_sequence, device=run_device), configs, f"{results_dir}/{dataset}",
                     workers=workers, shard=shard, executor=executor, progress=False, desc=desc, reuse=reuse,
                     device=functools.partial(provenance.device_name, run_device))


def reported_runs(keep):
    """The runs on the test set: every strategy, benchmark and seed, each PackNet variant keeping the fraction
    keep(name, strategy) (the shuffled control: SNIP-PackNet's, keep(name, "snip_packnet"))."""
    return [ContinualRun(strategy=s, seed=seed, keep=keep(name, KEEP_OF.get(s, s)), probe_examples=probe_examples,
                         **common, **setting(name))
            for name in benchmarks for s in STRATEGIES for seed in range(seeds)]


SEARCH_SEEDS = tuning.search_seeds(search_seeds)  # seeds no reported or budget run reaches: winners never compared
tuning.check_grid_seeds(max(seeds, budget_seeds))
BUDGET_SEEDS = range(budget_seeds)
BUDGETS = [1, budget_factor] if budget_factor > 1 else []  # epochs per task, as multiples of the chapter's


def keep_label(keep):
    return "equal" if keep is None or (isinstance(keep, float) and math.isnan(keep)) else f"{keep:g}"


def describe_benchmark(name):
    s = setting(name)
    return (f"{BENCHMARKS[name][1]} ({s['n_tasks']} tasks, {s['epochs']} epochs per task, of which PackNet "
            f"retrains {retrain_epochs})")


display(Markdown(
    f"**This run:** `{model}` on `{dataset}`: {'; '.join(describe_benchmark(b) for b in benchmarks)}. "
    f"{optimizer.capitalize()} at learning rate {lr:g}, batch {batch_size}, weight decay {weight_decay:g}; SNIP "
    f"scored on {importance_examples} training images per task; forward-transfer probe on {probe_examples} images "
    f"per task. Fraction kept per task searched on validation over {search_seeds} seed{'s' * (search_seeds > 1)} "
    f"({report.seed_span(SEARCH_SEEDS)}) from {', '.join(keep_label(k) for k in keeps)}; reported runs on the test set "
    f"over {seeds} seeds. "
    + (f"Budget check: every strategy also at {budget_factor}× the epochs per task (PackNet's retraining scaled "
       f"alike), on {report.seed_span(BUDGET_SEEDS)}, read on validation. " if BUDGETS else
       "No budget check (budget_factor=1). ")
    + f"Code: {provenance.describe(device)}."))

# %% [markdown]
# ## Declared contrasts
# The comparisons this chapter tests, from its question: does SNIP pick better weights for PackNet
# than magnitude does, does either criterion beat keeping a random fraction, and is what SNIP picks
# the weights themselves or only its budget per layer? The first three pairs were declared on
# 2026-12-04, before this chapter's results were computed; SNIP-PackNet − shuffled SNIP-PackNet was
# added on 2026-12-06, after an execution of the first three had been seen (2026-12-05) and before any
# shuffled run, so it is declared in advance of the execution that tests it, and it joins the others'
# family: all are Holm-adjusted together. This cell stops the notebook before any run if the grid
# lacks one. After the runs
# they are tested together (Holm: the chance of any false claim among them is held at 5%), and they
# alone are the chapter's findings. Everything else below is exploratory and uncorrected for
# multiplicity.
#
# Per benchmark, in average accuracy after the last task (points), paired on seeds (a seed fixes the
# initialisation, the validation split and the permutations, shared by every strategy):
# - SNIP-PackNet − PackNet: does SNIP's saliency pick better, or worse, weights than magnitude?
# - SNIP-PackNet − random PackNet and PackNet − random PackNet: does either criterion's choice of
#   weights beat a random choice of as many? Random PackNet keeps about the same fraction of every
#   layer, so these compare a criterion's weights *and* its per-layer budget with a uniform one.
# - SNIP-PackNet − shuffled SNIP-PackNet: do SNIP's weights beat random ones in the same number in
#   every layer, at every task? Only this contrast separates SNIP's choice of weights from its
#   per-layer budget.
#
# All are two-sided difference tests: no margin of practical equality could be fixed in advance for
# these benchmarks, so the chapter claims no equality; a difference not detected is only that.
#
# Each variant in these contrasts runs at its own best fraction kept, chosen on validation (shuffled
# SNIP-PackNet at SNIP-PackNet's), so a contrast between criteria compares each at its best capacity,
# not at equal capacity: a difference may come from the fraction as well as from the criterion. The
# fraction search below also shows the declared pairs at every fraction kept, each pair at the same
# fraction (exploratory, from the search's own validation runs).
#
# A rerun on a narrower grid keeps the contrasts of what it runs: `benchmarks` drops a benchmark's
# contrasts with it (the family, and so Holm's correction, is then the ones left, named in the table
# below); every strategy always runs, so no contrast can lose its method; `seeds` must be at least 2.
# A contrast edited here to name a strategy or benchmark the grid lacks stops this cell, naming it.

# %% tags=["hide-input"]
DECLARED_PAIRS = [("snip_packnet", "packnet"), ("snip_packnet", "random_packnet"), ("packnet", "random_packnet"),
                  ("snip_packnet", "shuffled_snip_packnet")]
PRIMARY = continual_report.declared_contrasts(DECLARED_PAIRS, titles, NAMES)
# The reported runs' fraction kept comes from the validation search below, but the contrasts select on benchmark,
# strategy and seed only: the reported grid with a placeholder fraction (None, equal shares) has the same rows, so a
# contrast it lacks stops here, not later.
check_contrasts(PRIMARY, continual_report.named_grid(reported_runs(lambda name, strategy: None), label))
display(table(pd.DataFrame({"contrast": [c.name for c in PRIMARY], "test": "difference, two-sided"}),
              caption=f"{len(PRIMARY)} declared contrasts in average accuracy after the last task (points; "
                      f"positive: the first is more accurate), paired on seeds"))

# %% [markdown]
# ## Choosing the fraction kept per task, on validation
# Validation average accuracy after the last task, mean ± std over the search seeds; the best
# fraction of each strategy on each benchmark is used for its reported runs (shuffled SNIP-PackNet's
# too: it runs at SNIP-PackNet's). Whether each choice lies *inside the grid (by the first task's
# share)*: "equal" keeps 1/(T − t) of the free weights at task t, not a fixed fraction, so it is not on
# the fractions' scale; the candidates are ordered by the share of the network the first task keeps
# (equal: 1/T of it). "no" means the search chose an end of the grid, and a better fraction may lie
# beyond it.

# %% tags=["hide-input"]
search = sweep([ContinualRun(strategy=s, keep=keep, seed=seed, split="val", probe_examples=0, **common, **setting(name))
                for name in benchmarks for s in SEARCHED for keep in keeps for seed in SEARCH_SEEDS],
               desc="keep search")
search = continual_report.named(search, label)
search["kept"] = search["keep"].map(keep_label)
means = search.groupby(["benchmark", "strategy", "kept"], sort=False).avg_acc.mean()
chosen = {(b, s): means[b][KEEP_OF[s]].idxmax() for b in benchmarks for s in VARIANTS}
best_keep = {key: None if k == "equal" else float(k) for key, k in chosen.items()}
share = {b: functools.partial(continual_report.first_task_share, n_tasks=setting(b)["n_tasks"]) for b in benchmarks}
INSIDE = "inside the grid (by the first task's share)"
inside = {(b, s): continual_report.inside_the_grid(share[b](best_keep[b, s]), [share[b](k) for k in keeps])
          for b in benchmarks for s in SEARCHED}
name_of = {BENCHMARKS[n][1]: n for n in benchmarks}
shown = stats.summarize(search, ["benchmark", "strategy", "kept"], "avg_acc")
shown["benchmark"] = shown["benchmark"].map(lambda b: BENCHMARKS[b][1])
wide = shown.pivot(index=["benchmark", "strategy"], columns="kept", values="mean ± std")
wide["chosen"] = [chosen[name_of[b], s] for b, s in wide.index]
wide[INSIDE] = [inside[name_of[b], s] for b, s in wide.index]
wide["runs that diverged"] = search.groupby([search.benchmark.map(lambda b: BENCHMARKS[b][1]), "strategy"]).diverged.sum()
wide = wide.reindex([(BENCHMARKS[b][1], s) for b in benchmarks for s in SEARCHED])
display(table(wide[[keep_label(k) for k in keeps] + ["chosen", INSIDE, "runs that diverged"]]))

# %% [markdown]
# ### The declared pairs at equal capacity
# The declared contrasts compare each variant at its own best fraction. Here the same pairs are at
# every fraction kept, both sides at the same fraction, paired on the search seeds: validation average
# accuracy after the last task, from the search's own runs (no extra run). **Exploratory**: few seeds,
# per-comparison 95% intervals, uncorrected, on validation. SNIP-PackNet − shuffled SNIP-PackNet is not
# here: the shuffled control is not searched, and runs only at SNIP-PackNet's fraction, where its
# declared contrast already compares the two at equal capacity.

# %% tags=["hide-input"]
EQUAL_CAPACITY = [pair for pair in DECLARED_PAIRS if set(pair) <= set(SEARCHED)]
at_fraction = continual_report.paired_comparisons(search, EQUAL_CAPACITY, metrics=("avg_acc",), within=("kept",))
display(table(continual_report.by_setting_table(at_fraction, EQUAL_CAPACITY, titles, "kept",
                                                [keep_label(k) for k in keeps]),
              caption=f"Exploratory: each declared pair at each fraction kept (columns), validation average "
                      f"accuracy, difference [95% CI] over the search's {report.seed_span(SEARCH_SEEDS)}"))

# %% [markdown]
# ## The sequence, on the test set
# Every strategy on every benchmark, with the fraction chosen above, mean ± std over the seeds, in
# percent. Forgetting: lower is better; BWT: backward transfer; FWT: forward transfer by linear probe.
# PackNet cannot forget by construction (a task's weights, statistics and head are frozen), so its
# price is paid in the accuracy later tasks reach with the capacity left to them.

# %% tags=["hide-input"]
results = continual_report.named(sweep(reported_runs(lambda name, s: best_keep.get((name, s))), desc="sequences"),
                                  label)


def epochs_per_task(b, s):
    n = setting(b)["epochs"]
    return f"{n} ({n - retrain_epochs} + {retrain_epochs} retraining)" if s in VARIANTS else f"{n}"


summary = continual_report.summary(results, titles, **{"epochs per task": epochs_per_task,
                                                       "kept per task": lambda b, s: chosen.get((b, s), math.nan)})
# The budget check's runs (shown under "Is the budget long enough?"), here so that the answer can name what rose.
budget = continual_report.budget_records(functools.partial(sweep, desc="budget check"),
                                         reported_runs(lambda name, s: best_keep.get((name, s))), BUDGET_SEEDS, BUDGETS,
                                         label) if BUDGETS else pd.DataFrame(columns=["seconds", "code"])
if BUDGETS:
    checked = continual_report.budget_check(budget)
    changes = continual_report.budget_changes(checked, titles, NAMES)
budget_hours = budget.seconds.sum() / 3600
codes = set(results.code) | set(search.code) | set(budget.code)
display(Markdown(f"{len(results)} runs; {results.seconds.sum() / 3600:.2f} device-hours for these, "
                 f"{search.seconds.sum() / 3600:.2f} for the search and {budget_hours:.2f} for the budget check. "
                 f"Code of the records: {', '.join(sorted(codes))}."))
display(table(summary))

# %% [markdown]
# ## Answer
# The declared contrasts, tested together (Holm); the findings below say the same in full.

# %% tags=["remove-input"]
tested = evaluate_contrasts(results, PRIMARY)
decided = continual_report.decisions(tested, PRIMARY)
# "Better weights" needs SNIP-PackNet above both other criteria and above its own per-layer budget at random positions.
better = continual_report.shown_on(decided, titles, "snip_packnet",
                                   ["packnet", "random_packnet", "shuffled_snip_packnet"])
WHAT_BETTER_MEANS = ("SNIP-PackNet more accurate than PackNet, than random PackNet and than shuffled SNIP-PackNet, "
                     "which keeps SNIP's count in every layer at random positions")
claim = (f"SNIP picks better weights for PackNet ({WHAT_BETTER_MEANS}) "
         + (f"on: {', '.join(better)}." if better else "on no benchmark of this run."))
setup = (f"`{model}` trained from scratch on `{dataset}`, {seeds} seeds; Mallya & Lazebnik add fine-grained tasks to "
         f"an ImageNet-trained VGG-16, so no published figure matches this protocol.")
if BUDGETS:
    setup += " " + continual_report.budget_note(changes, budget_factor, report.seed_span(BUDGET_SEEDS))
display(Markdown(continual_report.answer_box(tested, claim, setup)))

# %% tags=["hide-input"]
continual_report.seen_accuracy_figure(results, titles, STRATEGIES)
plt.show()

# %% [markdown]
# ## Exploratory comparisons
# Differences on the same seeds, in accuracy points, with 95% confidence intervals: each PackNet
# variant against fine-tuning, SNIP-PackNet against magnitude PackNet, both against the random
# control, and SNIP-PackNet against its shuffled control. These are **exploratory**: each interval
# stands alone, not corrected for the many in the table, so some exclude 0 by chance; the declared
# contrasts are tested in the findings below. The
# detectable difference is the smallest in average accuracy the run would most likely have detected
# (paired t, 80% power).

# %% tags=["hide-input"]
PAIRS = [(s, "finetune") for s in VARIANTS] + [("snip_packnet", "packnet"), ("snip_packnet", "random_packnet"),
                                              ("packnet", "random_packnet"), ("snip_packnet", "shuffled_snip_packnet")]
comparisons = continual_report.paired_comparisons(results, PAIRS)
display(table(continual_report.comparison_table(comparisons, PAIRS, titles),
              caption="Exploratory: per-comparison 95% intervals, not corrected for multiplicity (the declared "
                      "contrasts' rows too: their tests are in the findings)"))

# %% [markdown]
# ## Is the budget long enough?
# A comparison made while a method is still learning is a comparison early in training. Every
# strategy, at the fraction chosen above, is trained again at `budget_factor` times the epochs per
# task (PackNet's retraining epochs scaled alike), beside the same seeds at the chapter's epochs:
# seeds 0 to `budget_seeds` − 1, which the fraction search did not use (its runs won the search on
# their validation accuracy, so they would read high at the chapter's budget), and read on
# validation, since whether a budget suffices is a choice. Two readings: the final average accuracy,
# and the mean of R's diagonal, each task's accuracy right after it was trained and pruned. Paired on
# seeds; exploratory, uncorrected. "Rose" means the chapter stopped that strategy while it still
# gained; "no rise detected at this power" says how large a gain the check would have seen. Below it,
# the declared pairs at both budgets on the same validation runs: whether their sign holds when every
# strategy trains longer.

# %% tags=["hide-input"]
if BUDGETS:
    for shown in continual_report.budget_section(budget, checked, changes, DECLARED_PAIRS, titles, NAMES, BUDGETS,
                                                 report.seed_span(BUDGET_SEEDS)):
        display(shown)
else:
    display(Markdown("No budget check in this run (`budget_factor` is 1): the chapter's epochs per task are not "
                     "shown to suffice."))

# %% [markdown]
# ## Capacity: which task owns how much of every layer
# Seed 0 of each PackNet variant on the first benchmark, at its chosen fraction: for each layer of
# the body (the task heads are each task's own), the share of its weights each task owns. Shuffled
# SNIP-PackNet's first task owns the same share of every layer as SNIP-PackNet's (same seed, same
# first network, same scores); its later tasks are scored on a network that kept other weights, so
# their shares may differ.

# %% tags=["hide-input"]
first = benchmarks[0]
fig, axes = plots.panels(len(VARIANTS), height=3.0)
for ax, s in zip(axes, VARIANTS):
    usage = results[(results.benchmark == first) & (results.strategy == s) & (results.seed == 0)].usage.iloc[0]
    plots.capacity_bars(usage, ax=ax, title=f"{s} (kept per task: {chosen[(first, s)]})")
    ax.set_xticks(range(len(usage)), [f"layer {i + 1}" for i in range(len(usage))], rotation=0)
    for bars in ax.containers:  # tasks counted from 1, as in the curves above
        name = bars.get_label()
        bars.set_label(f"task {int(name.split()[1]) + 1}" if name.startswith("task") else name)
plots.shared_legend(fig, axes, ncol=6)
plt.show()

# %% [markdown]
# ## Beside the published protocol
# van de Ven & Tolias (2019) and van de Ven, Tuytelaars & Tolias (2022) do not run PackNet. Mallya &
# Lazebnik (CVPR 2018, arXiv:1711.05769) evaluate it on "a variety of network architectures and
# large-scale datasets", adding "three fine-grained classification tasks to a single ImageNet-trained
# VGG-16 network" (their abstract): a large pretrained network, not one trained from scratch on these
# benchmarks. There is no published figure for this protocol to set beside ours.

# %% [markdown]
# ## Findings
# The declared contrasts, tested together; computed from this run, so a rerun with other parameters never
# shows stale claims.

# %% tags=["remove-input", "findings"]
means = results.groupby(["benchmark", "strategy"]).avg_acc.mean()
worst = results[results.strategy.isin(VARIANTS)].groupby("benchmark").forgetting.max()
display(Markdown("\n\n".join(
    f"**{titles[name]}.** Fine-tuning ends at {means[name, 'finetune']:.1f}% average accuracy, joint training at "
    f"{means[name, 'joint']:.1f}%; PackNet reaches {means[name, 'packnet']:.1f}%, SNIP-PackNet "
    f"{means[name, 'snip_packnet']:.1f}%, random PackNet {means[name, 'random_packnet']:.1f}% and shuffled "
    f"SNIP-PackNet {means[name, 'shuffled_snip_packnet']:.1f}% (means over {seeds} "
    f"seeds). The largest forgetting of any PackNet run is {worst[name]:.2f} points." for name in benchmarks)))
display(report.Findings(tested, f"{model} on {dataset}: average accuracy after the last task, {seeds} seeds",
                        lead=f"**Declared contrasts** ({len(PRIMARY)}, each fixed before the execution that tests it: "
                             f"see 'Declared contrasts'; average accuracy, points, paired on seeds; Holm-adjusted "
                             f"across the {len(PRIMARY)}):"))
display(Markdown(
    f"That SNIP picks better weights for PackNet ({WHAT_BETTER_MEANS}, in the tested family) is shown "
    + (f"on: {', '.join(better)}." if better else "on no benchmark here.")))

# %% [markdown]
# ## Exploratory reading
# What the exploratory comparisons above suggest beyond the declared contrasts. Each interval stands
# alone, uncorrected for multiplicity: a lead for a new, declared test, not a finding.

# %% tags=["remove-input"]
row = functools.partial(continual_report.comparison, comparisons)
verdict = functools.partial(stats.verdict, exploratory=True)
display(Markdown("\n\n".join(
    f"**{titles[name]}.**\n" + "\n".join(
        f"- {NAMES[s]} − fine-tuning, average accuracy: {verdict(row(name, s, 'finetune'))}." for s in VARIANTS)
    + f"\n- SNIP-PackNet − PackNet, forgetting: {verdict(row(name, 'snip_packnet', 'packnet', 'forgetting'))}."
    for name in benchmarks)))

# %% [markdown]
# ## Limits

# %% tags=["remove-input"]
limits = [f"- Dataset `{dataset}`, model `{model}`; {seeds} seeds for the reported runs and {search_seeds} for each "
          f"fraction kept; a difference smaller than the detectable one (the findings and the exploratory table "
          f"say how small) may exist unseen.",
          f"- {epochs} epochs per task on the Split benchmark and {permuted_epochs} on the Permuted one, for every "
          f"strategy; PackNet spends {retrain_epochs} of them retraining after pruning, so it trains on fewer epochs "
          f"before pruning than fine-tuning does in all. "
          + (continual_report.budget_note(changes, budget_factor, report.seed_span(BUDGET_SEEDS)) if BUDGETS else
             "No budget check was run: whether these epochs suffice is not shown."),
          f"- SNIP scores each task on {importance_examples} training images; the fractions kept searched were "
          f"{', '.join(keep_label(k) for k in keeps)} and are the same for every task of a run; shuffled SNIP-PackNet "
          f"was not searched: it runs at SNIP-PackNet's fraction. The declared contrasts compare each variant at its "
          f"own best fraction; at equal fractions the pairs are compared only on validation, over {search_seeds} "
          f"search seed{'s' * (search_seeds > 1)}.",
          "- Only task-incremental learning: PackNet needs the task id at test time."]
if dataset == "mnist":
    limits.append("- A small MLP (LeNet-300-100) and short training, to fit a shared 2-core CPU; PackNet was "
                  "designed for large convolutional networks with much spare capacity.")
display(Markdown("\n".join(limits)))
