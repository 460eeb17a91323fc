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
# # Experiment 4: does SNIP pick better weights for PackNet?
#
# **Question.** PackNet (Mallya & Lazebnik 2018) gives every task its own slice of one network.
# After a task is trained, it keeps the largest-magnitude fraction of its free weights and freezes
# them. It releases the rest to later tasks and retrains briefly. SNIP-PackNet keeps the weights
# with the largest SNIP saliency $|\partial L/\partial\theta\cdot\theta|$ on the task's data instead.
# Does the choice matter for accuracy, or for how much capacity later tasks get?
#
# **Method.** The same task sequences as Experiment 3, task-incremental with one head per task.
# Each weight has one owner task. A task sees the weights of tasks up to and including itself,
# applied as masks in the forward pass at test time (weights are never zeroed in place). It also
# has its own BatchNorm statistics and affine parameters, so ResNets work; conv and linear biases
# are trained by the first task only. The optimiser is rebuilt for every task, and frozen weights
# are restored after every step, so neither momentum nor weight decay can move them. By default
# every task gets an equal share of the weights; the fraction kept per task (`keeps`) is chosen on
# the validation split. Fine-tuning and joint training bracket the results.
#
# **Where the numbers come from.** The line "This run:" below names the dataset and settings behind
# every number on this page. The project's machines have MNIST but not CIFAR-100, so the CIFAR-100
# chapter holds numbers only once someone runs it with the data:
# `papermill notebooks/04_snip_packnet.ipynb out.ipynb -p seeds 5`.

# %% tags=["parameters"]
model = "resnet18"
dataset = "cifar100"
n_tasks = 5
seeds = 5
epochs = 10  # per task
retrain_epochs = 2  # after pruning each task
batch_size = 64
lr = 0.05
keeps = [None, 0.3, 0.5]  # fraction of the free weights each task keeps; None: equal shares for all tasks
importance_examples = 1024
data_root = None
device = None
workers = 1
shard = None
results_dir = "results/04_snip_packnet"

# %% [markdown]
# CI runs every notebook in a quick configuration on synthetic data; the next cell does nothing
# otherwise.

# %%
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    model, dataset, n_tasks, seeds, epochs, retrain_epochs, keeps = "lenet300_100", "synthetic", 2, 2, 1, 1, [None, 0.5]
    importance_examples, results_dir = 64, tempfile.mkdtemp()

# %%
import functools

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from snipnb import data, plots, published, stats
from snipnb.sequence import ContinualRun, mean_matrix, run_sequence
from snipnb.sweep import run_sweep
from snipnb.train import default_device

if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)
device = device or str(default_device())
common = dict(model=model, dataset=dataset, n_tasks=n_tasks, epochs=epochs, retrain_epochs=retrain_epochs,
              batch_size=batch_size, lr=lr, importance_examples=importance_examples,
              **data.recipe_defaults(dataset))
sweep = functools.partial(run_sweep, functools.partial(run_sequence, device=device), workers=workers, shard=shard)
display(Markdown(f"**This run:** `{model}` on `{dataset}` in {n_tasks} tasks, {epochs} + {retrain_epochs} epochs "
                 f"per task, {seeds} seeds, keep grid {keeps}, on `{device}` with torch {torch.__version__}."))

# %% [markdown]
# ## Choosing the fraction kept per task, on validation (seed 0)

# %%
search = sweep([ContinualRun(strategy=s, keep=keep, split="val", seed=0, **common)
                for s in ("packnet", "snip_packnet") for keep in keeps], f"{results_dir}/{dataset}", desc="keep search")
search["keep"] = search["keep"].map(lambda k: "equal" if k is None or pd.isna(k) else f"{k:g}")
display(search.pivot(index="keep", columns="strategy", values="avg_acc").round(2))
chosen = search.loc[search.groupby("strategy").avg_acc.idxmax()].set_index("strategy")["keep"].to_dict()
best_keep = {s: None if k == "equal" else float(k) for s, k in chosen.items()}
print("chosen fraction kept per task:", chosen)

# %% [markdown]
# ## The sequence, on the test set

# %%
runs = [ContinualRun(strategy=s, seed=seed, keep=best_keep.get(s), **common)
        for s in ("finetune", "joint", "packnet", "snip_packnet") for seed in range(seeds)]
results = sweep(runs, f"{results_dir}/{dataset}", desc="sequences")
columns = ["avg_acc", "forgetting", "bwt", "fwt", "final_class_il"]
table = pd.concat([stats.summarize(results, ["strategy"], c).set_index("strategy")["mean ± std"].rename(c)
                   for c in columns], axis=1)
table["write-up expected"] = pd.Series(published.WRITEUP_EXPECTED_PACKNET)
display(Markdown("Task-incremental metrics in %, mean ± std over seeds (class-IL: final class-incremental "
                 "accuracy). The last column is the write-up's hypothesis, not a measurement."))
display(table)

# %%
long = results.melt(id_vars=["strategy", "seed"], value_vars=["avg_acc", "forgetting", "final_class_il"],
                    var_name="metric").dropna(subset=["value"])
paired = stats.paired_difference(long, "value", baseline={"strategy": "packnet"}, variant=["strategy"],
                                 pair_on=["seed"], group=["metric"])
display(Markdown("**Paired against magnitude PackNet** on the same seeds; positive `diff` means higher."))
display(paired.round(2))

# %%
strategies = ["finetune", "packnet", "snip_packnet"]
fig, axes = plt.subplots(1, len(strategies), figsize=(4 * len(strategies), 3.6))
for ax, s in zip(axes, strategies):
    plots.accuracy_matrix(mean_matrix(results, s), ax=ax, title=f"{s}: mean R over seeds")
fig.tight_layout()
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 3.8))
plots.task_curves({s: mean_matrix(results, s) for s in strategies}, ax=left)
forgetting = stats.summarize(results[results.strategy != "joint"], ["strategy"], "forgetting")
right.bar(forgetting.strategy, forgetting["mean"], yerr=forgetting["std"].fillna(0), capsize=4)
right.set(ylabel="average forgetting (%)", title="Forgetting, mean ± std over seeds")
fig.tight_layout()

# %% [markdown]
# ## Capacity: which task owns how much of every layer (seed 0)

# %%
fig, axes = plt.subplots(1, 2, figsize=(14, 3.8))
for ax, s in zip(axes, ("packnet", "snip_packnet")):
    usage = results[(results.strategy == s) & (results.seed == 0)].usage.iloc[0]
    plots.capacity_bars(usage, ax=ax, title=f"{s}: share of each layer per task")
fig.tight_layout()

# %% [markdown]
# ## What the numbers say
# Computed from this run, so a rerun with other parameters never shows stale claims.

# %%
lines = []
for metric in ("avg_acc", "final_class_il"):
    row = paired[(paired.metric == metric) & (paired.strategy == "snip_packnet")].iloc[0]
    if row.n < 2:
        lines.append(f"- {metric}: snip_packnet − packnet = {row['diff']:+.2f} points on one seed.")
        continue
    sure = row.ci_low > 0 or row.ci_high < 0
    lines.append(f"- {metric}: snip_packnet − packnet = {row['diff']:+.2f} points (95% CI {row.ci_low:+.2f} to "
                 f"{row.ci_high:+.2f}; {'the seeds agree' if sure else 'not distinguishable from 0'}).")
worst = results.groupby("strategy").forgetting.max()
lines.append("- Largest forgetting over seeds: " + ", ".join(f"{s} {worst[s]:.2f}" for s in strategies) +
             " points. PackNet cannot forget by construction: a task's weights, statistics and head are frozen.")
display(Markdown("\n".join(lines)))
