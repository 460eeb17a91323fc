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
# # Experiment 3: can SNIP saliency replace the Fisher in EWC?
#
# **Question.** Elastic weight consolidation (Kirkpatrick et al. 2017) protects what earlier
# tasks learned by penalising changes to the parameters they depend on,
# $\lambda \sum_i F_i (\theta_i - \theta_i^*)^2$, with $F$ the diagonal Fisher information. SNIP-EWC
# replaces $F$ with SNIP's saliency $|\partial L/\partial\theta \cdot \theta|$. Does that forget less?
#
# **Method.** The classes are split into tasks (CIFAR-100: 5 tasks of 20 classes, class order fixed per
# seed; MNIST: the standard Split-MNIST, 5 tasks of 2 digits). Each task has its own head, and the
# task id is given at test time (task-incremental). We also report class-incremental accuracy, where
# all heads answer together and the task id is not given. Strategies, all trained with the same
# recipe:
# - `finetune`: train each task in turn, with no protection (the dense baseline);
# - `joint`: all tasks at once (the upper bound);
# - `ewc`: Fisher computed in eval mode from per-sample gradients with the true labels (the
#   empirical Fisher; `fisher_labels="sampled"` gives the true Fisher), one penalty term per past task;
# - `snip_ewc`: the same penalty with the importance replaced by per-sample SNIP saliency.
#
# Both importances are divided by their mean, so one $\lambda$ grid serves both. $\lambda$ is chosen
# for each method on a validation set: 10% of each task's training images, held out. The test set
# is never used for this choice. The metrics come from the accuracy matrix $R$ (row $i$: after
# training task $i$; column $j$: task $j$): average accuracy, average forgetting (Chaudhry et al.
# 2018), backward and forward transfer (Lopez-Paz & Ranzato 2017).
#
# **Where the numbers come from.** The line "This run:" below names the dataset and settings behind
# every number on this page. The project's machines have MNIST but not CIFAR-100, so the CIFAR-100
# chapter holds numbers only once someone runs it with the data:
# `papermill notebooks/03_snip_ewc.ipynb out.ipynb -p seeds 5`.

# %% tags=["parameters"]
model = "resnet18"
dataset = "cifar100"
n_tasks = 5
seeds = 5
epochs = 10  # per task
batch_size = 64
lr = 0.05
lambdas = [0.001, 0.01, 0.1, 1, 10, 100]  # searched on validation (seed 0); importances have mean 1
online = False  # one running importance instead of one penalty term per task
fisher_labels = "empirical"  # or "sampled" (the true Fisher)
importance_examples = 1024
data_root = None
device = None
workers = 1
shard = None
results_dir = "results/03_snip_ewc"

# %% [markdown]
# CI runs every notebook in a quick configuration on synthetic data; the next cell does nothing
# otherwise.

# %%
import os
import tempfile

if os.environ.get("SNIPNB_SMOKE"):
    model, dataset, n_tasks, seeds, epochs, lambdas = "lenet300_100", "synthetic", 2, 2, 1, [0.01, 100]
    importance_examples = 64
    results_dir = tempfile.mkdtemp()

# %%
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from snipnb import data, plots, published, stats
from snipnb.sequence import ContinualRun, first_task_importances, mean_matrix, rank_correlation, run_sequence
from snipnb.sweep import run_sweep
from snipnb.train import default_device

if data_root is not None:
    os.environ["SNIPNB_DATA"] = str(data_root)
device = device or str(default_device())
common = dict(model=model, dataset=dataset, n_tasks=n_tasks, epochs=epochs, batch_size=batch_size, lr=lr,
              ewc_online=online, fisher_labels=fisher_labels, importance_examples=importance_examples,
              **data.recipe_defaults(dataset))
sweep = functools.partial(run_sweep, functools.partial(run_sequence, device=device), workers=workers, shard=shard)
display(Markdown(f"**This run:** `{model}` on `{dataset}` in {n_tasks} tasks, {epochs} epochs per task, "
                 f"{seeds} seeds, λ grid {lambdas}, on `{device}` with torch {torch.__version__}."))

# %% [markdown]
# ## Choosing λ on validation
# Seed 0, every λ, both importances; the score is the average validation accuracy after the last task.

# %%
search = sweep([ContinualRun(strategy=s, ewc_lambda=float(lam), split="val", seed=0, **common)
                for s in ("ewc", "snip_ewc") for lam in lambdas], f"{results_dir}/{dataset}", desc="λ search")
search = search.rename(columns={"ewc_lambda": "λ"})
display(search.pivot(index="λ", columns="strategy", values=["avg_acc", "forgetting", "diverged"]).round(2))
display(Markdown("`diverged`: the training loss became infinite. A large λ times the largest importances "
                 "makes the penalty too stiff for the learning rate, and the weights blow up."))
best_lambda = search.loc[search.groupby("strategy").avg_acc.idxmax()].set_index("strategy")["λ"].to_dict()
fig, ax = plt.subplots(figsize=(6, 3.5))
for s, part in search.groupby("strategy"):
    ax.plot(part["λ"], part.avg_acc, marker="o", label=f"{s} (chosen λ = {best_lambda[s]:g})")
ax.set(xscale="log", xlabel="λ", ylabel="validation average accuracy (%)")
ax.legend(fontsize="small")
print("chosen λ:", best_lambda)

# %% [markdown]
# ## The sequence, on the test set

# %%
runs = [ContinualRun(strategy=s, seed=seed, ewc_lambda=float(best_lambda.get(s, 0.0)), **common)
        for s in ("finetune", "joint", "ewc", "snip_ewc") for seed in range(seeds)]
results = sweep(runs, f"{results_dir}/{dataset}", desc="sequences")
columns = ["avg_acc", "forgetting", "bwt", "fwt", "final_class_il"]
table = pd.concat([stats.summarize(results, ["strategy"], c).set_index("strategy")["mean ± std"].rename(c)
                   for c in columns], axis=1)
table["write-up expected forgetting"] = pd.Series(published.WRITEUP_EXPECTED_FORGETTING)
display(Markdown("Task-incremental metrics in %, mean ± std over seeds (class-IL: final class-incremental "
                 "accuracy). The last column is the write-up's hypothesis, not a measurement."))
display(table)

# %% [markdown]
# **Paired comparisons** on the same seeds (same initialisation and class order): each method against
# fine-tuning, and SNIP-EWC against EWC. Positive `diff` means higher. For forgetting, lower is better.

# %%
long = results.melt(id_vars=["strategy", "seed"], value_vars=["avg_acc", "forgetting"], var_name="metric")
long = long.dropna(subset=["value"])
for baseline in ("finetune", "ewc"):
    p = stats.paired_difference(long, "value", baseline={"strategy": baseline}, variant=["strategy"],
                                pair_on=["seed"], group=["metric"])
    display(Markdown(f"against `{baseline}`"))
    display(p.round(2))

# %%
strategies = ["finetune", "ewc", "snip_ewc"]
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
# ## Do SNIP and the Fisher rank parameters alike?
# After the first task (seed 0), Spearman's rank correlation between the two importances over the
# body's parameters. If it were near 1, SNIP-EWC could not differ much from EWC.

# %%
flat = first_task_importances(ContinualRun(seed=0, **common), device=device)
rho = rank_correlation(flat["fisher"], flat["snip_per_sample"])
print(f"Spearman rank correlation, Fisher vs SNIP importance: {rho:.3f} over {len(flat['fisher']):,} parameters")

# %% [markdown]
# ## What the numbers say
# Computed from this run, so a rerun with other parameters never shows stale claims.

# %%
def paired_line(a, b, metric):
    p = stats.paired_difference(long[long.metric == metric], "value", baseline={"strategy": b},
                                variant=["strategy"], pair_on=["seed"])
    row = p[p.strategy == a].iloc[0]
    if row.n < 2:
        return f"{a} − {b} = {row['diff']:+.2f} points on one seed (no interval)"
    sure = row.ci_low > 0 or row.ci_high < 0
    return (f"{a} − {b} = {row['diff']:+.2f} points (95% CI {row.ci_low:+.2f} to {row.ci_high:+.2f}; "
            f"{'the seeds agree' if sure else 'not distinguishable from 0'})")


mean_forgetting = results.groupby("strategy").forgetting.mean()
lines = [f"- Forgetting: {paired_line('snip_ewc', 'ewc', 'forgetting')}; "
         f"{paired_line('ewc', 'finetune', 'forgetting')}.",
         f"- Average accuracy: {paired_line('snip_ewc', 'ewc', 'avg_acc')}.",
         "- The write-up expected forgetting of " + ", ".join(
             f"{s} {v:g}%" for s, v in published.WRITEUP_EXPECTED_FORGETTING.items()) + "; we measure " +
         ", ".join(f"{s} {mean_forgetting[s]:.1f}%" for s in published.WRITEUP_EXPECTED_FORGETTING) + "."]
display(Markdown("\n".join(lines)))
