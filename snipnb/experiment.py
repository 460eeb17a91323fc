"""The pruning variants the notebooks compare, each turned into masks the same way.

Every variant is a name, so a results table has one `method` column and a grid is a product of
names, sparsities and seeds. The controls sit beside SNIP: `random` (uniform random pruning, the
same density in every layer in expectation) and `shuffled_snip` (SNIP's per-layer densities with
the kept positions shuffled, the check Frankle et al. 2021 ask for).
"""

from __future__ import annotations

import torch
from torch import nn

from .data import few_shot_indices
from .loader import DeviceLoader
from .models import build
from .pruning import apply_masks, masks_from_scores, scores, shuffle_masks, sparsity_report
from .train import fit

# method name -> (score method, SNIP objective)
_SCORED = {
    "snip": ("snip", "labels"),
    "snip_pseudo_labels": ("snip", "pseudo_labels"),
    "snip_rotation": ("snip", "rotation"),
    "magnitude": ("magnitude", "labels"),
    "random": ("random", "labels"),
}
METHODS = ("dense", *_SCORED, "shuffled_snip")
DATA_FREE_METHODS = ("dense", "random", "magnitude")  # the rest score weights on a batch of images


def make_masks(model: nn.Module, method: str, sparsity: float, batches=None, seed: int = 0,
               scope: str = "global", params: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """Masks for `model` by `method` at `sparsity`; None for `dense`.

    `batches` feed the data-dependent methods: pass another dataset's batches for cross-domain SNIP.
    `params` restricts scoring and pruning to those weights (default: every prunable weight); the
    sparsity is then a fraction of them, and the rest stay dense (transfer scores only what it trains).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "dense":
        return None
    if method == "shuffled_snip":
        return shuffle_masks(make_masks(model, "snip", sparsity, batches, seed, scope, params), seed)
    score_method, objective = _SCORED[method]
    return masks_from_scores(scores(model, batches, score_method, objective=objective, params=params, seed=seed),
                             sparsity, scope)


def saliency_batches(data, per_class: int, seed: int, device=None):
    """One class-balanced batch of `per_class` examples per class, normalised like training data.

    SNIP needs only a mini-batch; balancing it keeps every class represented even when it is small.
    """
    subset = data.subset(few_shot_indices(data.labels, per_class, seed))
    return list(DeviceLoader(subset, len(subset), device=device or "cpu"))


def build_pruned(model_name: str, method: str, sparsity: float, seed: int, like, *, saliency_data=None,
                 saliency_per_class: int = 10, scope: str = "global", device=None):
    """Build `model_name` from `seed` for data shaped like `like` and prune it by `method`.

    Saliency is computed on `saliency_data` (default: `like`; another dataset for cross-domain SNIP),
    on `device` (default: the CPU). Returns (model, masks), masks None for `dense`.
    """
    channels, size = like.images.shape[1], like.images.shape[-1]
    model = build(model_name, like.num_classes, in_channels=channels, image_size=size, seed=seed).to(device or "cpu")
    batches = None if method in DATA_FREE_METHODS else saliency_batches(
        like if saliency_data is None else saliency_data, saliency_per_class, seed, device)
    masks = make_masks(model, method, sparsity, batches, seed, scope)
    if masks is not None:
        apply_masks(model, masks)
    return model, masks


def prune_and_fit(model_name: str, method: str, sparsity: float, seed: int, train, test, *,
                  saliency_data=None, saliency_per_class: int = 10, scope: str = "global",
                  epochs: int = 30, **fit_options):
    """`build_pruned`, train on `train`, test on `test`, and report one row.

    Returns (row, model): the row holds the settings, the final and best test accuracy in percent,
    the density actually kept and whether any layer collapsed.
    """
    model, masks = build_pruned(model_name, method, sparsity, seed, train, saliency_data=saliency_data,
                                saliency_per_class=saliency_per_class, scope=scope, device=fit_options.get("device"))
    history = fit(model, train, test, epochs, seed=seed, **fit_options)
    report = sparsity_report(model)
    row = dict(model=model_name, method=method, sparsity=sparsity if masks is not None else 0.0, seed=seed,
               final_acc=100 * history.final_acc, best_acc=100 * history.best_acc,
               density=report.density, collapsed=len(report.collapsed), seconds=history.seconds)
    return row, model
