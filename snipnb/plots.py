"""The figures the notebooks share; each draws on an axis it is given or makes its own."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .pruning import SparsityReport, mask_overlap


# The book's text column is about 750 px wide and the inline backend draws at 100 dpi, so a figure wider
# than PAGE_WIDTH inches is shrunk to fit, and its text with it. At page width matplotlib's 10 pt text is
# 14 px on the page and "small" (legends, annotations) 11.6 px; the figures use nothing smaller.
PAGE_WIDTH = 7.5


def panels(n: int, ncols: int = 2, height: float = 3.0, width: float = PAGE_WIDTH, **kwargs):
    """A figure `width` inches wide with `n` panels in rows of at most `ncols` (one very wide row would be
    shrunk on the page); returns (fig, axes), axes a flat list of the `n` panels. Its layout is
    constrained, so `shared_legend` can put a legend outside the panels."""
    if n < 1 or ncols < 1:
        raise ValueError(f"n and ncols must be at least 1, got n={n}, ncols={ncols}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, layout="constrained",
                             **kwargs)
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def shared_legend(fig, axes, ncol: int | None = None, **kwargs):
    """One legend for panels that share their lines, below them, where it covers no data (each panel's
    own legend is removed). The figure's layout must be constrained (as `panels` makes it)."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    return fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                      ncol=ncol or min(len(labels), 3), fontsize="small", frameon=False, **kwargs)


def legend_beside(ax, **kwargs):
    """The axis's legend outside it, on the right, where it covers no data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False, **kwargs)


def _axis(ax, figsize=(PAGE_WIDTH - 2, 3.5)):  # room at page width for a legend beside it
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _layer_density(masks_or_report) -> pd.Series:
    if isinstance(masks_or_report, SparsityReport):
        return masks_or_report.layers.set_index("layer").density
    return pd.Series({name: float(mask.float().mean()) for name, mask in masks_or_report.items()})


def density_bars(masks: dict, ax=None, title: str = "Kept weights per layer"):
    """Grouped bars of per-layer density, one colour per label (values: SparsityReport or masks)."""
    ax = _axis(ax)
    labels = list(masks)
    densities = {label: _layer_density(value) for label, value in masks.items()}
    layers = list(densities[labels[0]].index)
    width = 0.8 / len(labels)
    x = np.arange(len(layers))
    for i, label in enumerate(labels):
        density = densities[label].reindex(layers).fillna(1.0)  # a layer left unscored stays dense
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, density, width, label=label)
    ax.set_xticks(x, [layer.removesuffix(".weight") for layer in layers], rotation=45, ha="right")
    ax.set_ylabel("density (kept / total)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize="medium")
    legend_beside(ax)
    return ax


def kept_inputs(mask: torch.Tensor, image_shape: tuple[int, int, int]) -> np.ndarray:
    """For a first fully-connected layer's mask (out x C*H*W): kept connections per input pixel (H x W)."""
    if mask.dim() != 2 or mask.shape[1] != int(np.prod(image_shape)):
        raise ValueError(f"mask must be (out, {int(np.prod(image_shape))}) for image_shape={image_shape}, "
                         f"got {tuple(mask.shape)}")
    return mask.sum(0).view(image_shape).sum(0).cpu().numpy()


def image_grid(images: dict[str, np.ndarray], cmap: str = "viridis", title: str | None = None,
               ncols: int = 4):
    """Images in rows of `ncols` at page width, one colour bar each (e.g. kept-connection maps per method)."""
    ncols = min(ncols, len(images))
    fig, axes = panels(len(images), ncols=ncols, height=0.8 * PAGE_WIDTH / ncols)
    for ax, (label, image) in zip(axes, images.items()):
        shown = ax.imshow(image, cmap=cmap)
        ax.set_title(label, fontsize="small")
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return fig


def errorbars(summary: pd.DataFrame, x: str, hue: str, y: str = "mean", err: str = "std", ax=None,
              ylabel: str | None = None, logx: bool = False):
    """One line with error bars per value of `hue`, from a `stats.summarize` table."""
    ax = _axis(ax)
    for label, part in summary.groupby(hue, sort=False):
        part = part.sort_values(x)
        ax.errorbar(part[x], part[y], yerr=part[err].fillna(0), marker="o", capsize=3, label=str(label))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    legend_beside(ax)
    return ax


def overlap_matrix(masks: dict, ax=None, title: str = "Mask overlap (Jaccard)"):
    """Heat map of the Jaccard index between every pair of masks (a dict label -> masks)."""
    labels = list(masks)
    values = np.array([[mask_overlap(masks[a], masks[b]) for b in labels] for a in labels])
    ax = _axis(ax, figsize=(1.1 * len(labels) + 2, 1.1 * len(labels) + 1))
    shown = ax.imshow(values, vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                    color="black" if values[i, j] > 0.5 else "white", fontsize="small")
    ax.set_title(title)
    ax.figure.colorbar(shown, ax=ax, fraction=0.046)
    return values


def accuracy_matrix(R, ax=None, title: str = "", vmax: float = 100.0):
    """Heat map of an accuracy matrix: row i = after training task i, column j = task j."""
    R = np.asarray(R)
    ax = _axis(ax, figsize=(3.6, 3.2))
    shown = ax.imshow(R, vmin=0, vmax=vmax, cmap="viridis")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize="small",
                    color="white" if R[i, j] < 0.6 * vmax else "black")
    ax.set_xlabel("task tested")
    ax.set_ylabel("after training task")
    ax.set_title(title, fontsize="small")
    return shown


def task_curves(matrices: dict, ax=None, title: str = "Accuracy on each task over the sequence"):
    """For each strategy (a dict label -> mean R), accuracy on every task from the stage it was
    trained on to the end; one colour per strategy, one line per task."""
    ax = _axis(ax)
    for color, (label, R) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], matrices.items()):
        R = np.asarray(R)
        for j in range(R.shape[1]):
            stages = np.arange(j, R.shape[0])
            ax.plot(stages, R[j:, j], color=color, marker="o", ms=3, label=label if j == 0 else None)
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize="medium")
    legend_beside(ax)
    return ax


def capacity_bars(usage: dict[str, list[float]], ax=None, title: str = "Share of each layer owned by each task"):
    """Stacked bars per layer: the fraction of its weights each task owns, and the free rest."""
    ax = _axis(ax)
    layers = list(usage)
    shares = np.array([usage[n] for n in layers])
    bottom = np.zeros(len(layers))
    for t in range(shares.shape[1]):
        label = "free" if t == shares.shape[1] - 1 else f"task {t}"
        ax.bar(range(len(layers)), shares[:, t], bottom=bottom, label=label,
               color="lightgrey" if label == "free" else None)
        bottom += shares[:, t]
    ax.set_xticks(range(len(layers)), [n.removeprefix("body.").removesuffix(".weight") for n in layers],
                  rotation=45, ha="right")
    ax.set_ylabel("share of the layer's weights")
    ax.set_title(title, fontsize="medium")
    legend_beside(ax)
    return ax


# Lines a reader can tell apart in print and in grey: a marker and a dash pattern per line.
LINE_STYLES = [dict(marker=m, linestyle=s) for m, s in zip("os^Dv<>pX*", ["-", "--", "-.", ":"] * 3)]


def seen_accuracy_curves(matrices: dict, ax=None, title: str = "Average accuracy on the tasks seen so far"):
    """For each strategy (a dict label -> mean R), the average accuracy over tasks 0..i after training
    task i (van de Ven & Tolias's curve), one styled line per strategy, tasks on integer ticks (1-based)."""
    ax = _axis(ax)
    for style, (label, R) in zip(LINE_STYLES, matrices.items()):
        R = np.asarray(R)
        stages = np.arange(1, R.shape[0] + 1)
        seen = [R[i, : i + 1].mean() for i in range(R.shape[0])]
        ax.plot(stages, seen, label=label, ms=5, **style)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("after training task")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title, fontsize="medium")
    legend_beside(ax)
    return ax


def search_curves(summary: pd.DataFrame, x: str, chosen: dict, ax=None, hue: str = "strategy",
                  ylabel: str = "validation accuracy (%)", title: str = "", logx: bool = True):
    """A hyperparameter search: mean ± std over seeds (a `stats.summarize` table) of each `hue` value
    against `x`, one styled line each, with the value `chosen[label]` ringed on its line."""
    ax = _axis(ax)
    for style, (label, part) in zip(LINE_STYLES, summary.groupby(hue, sort=False)):
        part = part.sort_values(x)
        line = ax.errorbar(part[x], part["mean"], yerr=part["std"].fillna(0), capsize=3, ms=5, label=str(label),
                           **style)
        if label in chosen:
            at = part[part[x] == chosen[label]]
            ax.plot(at[x], at["mean"], marker="o", ms=14, mfc="none", mew=1.5, linestyle="none",
                    color=line[0].get_color())
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    legend_beside(ax)
    return ax
