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


def scoring(method: str) -> str | None:
    """The saliency `method` ranks weights by: shuffled SNIP ranks by SNIP's, dense by none. Methods
    with one scoring share one computation of it (`build_pruned`'s `cache`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return None if method == "dense" else "snip" if method == "shuffled_snip" else method


def method_scores(model: nn.Module, method: str, batches=None, seed: int = 0,
                  bn_mode: str = "eval", params: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """The scores `method` prunes `model` by, at any sparsity (see `scoring`); None for `dense`.
    `bn_mode` is the BatchNorm mode while scoring and `params` the weights scored (`pruning.scores`)."""
    name = scoring(method)
    if name is None:
        return None
    score_method, objective = _SCORED[name]
    return scores(model, batches, score_method, objective=objective, params=params, seed=seed, bn_mode=bn_mode)


def masks_for_method(weight_scores, method: str, sparsity: float, seed: int = 0,
                     scope: str = "global") -> dict[str, torch.Tensor] | None:
    """Masks keeping the top (1 - sparsity) of `method_scores`; shuffled for `shuffled_snip`."""
    if weight_scores is None:
        return None
    masks = masks_from_scores(weight_scores, sparsity, scope)
    return shuffle_masks(masks, seed) if method == "shuffled_snip" else masks


def make_masks(model: nn.Module, method: str, sparsity: float, batches=None, seed: int = 0,
               scope: str = "global", bn_mode: str = "eval",
               params: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """Masks for `model` by `method` at `sparsity`; None for `dense`.

    `batches` feed the data-dependent methods: pass another dataset's batches for cross-domain SNIP.
    `params` restricts scoring and pruning to those weights (default: every prunable weight); the
    sparsity is then a fraction of them, and the rest stay dense (transfer scores only what it trains).
    """
    weight_scores = method_scores(model, method, batches, seed, bn_mode, params)
    return masks_for_method(weight_scores, method, sparsity, seed, scope)


def saliency_batches(data, per_class: int, seed: int, device=None, balanced: bool = True):
    """One batch of `per_class` examples per class (class-balanced), normalised like training data;
    with `balanced=False`, as many examples drawn at random regardless of class, as the official SNIP
    code takes its batch. SNIP needs only a mini-batch; balancing keeps every class in it."""
    if balanced:
        pick = few_shot_indices(data.labels, per_class, seed)
    else:
        count = min(len(data), per_class * data.num_classes)
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    subset = data.subset(pick)
    return list(DeviceLoader(subset, len(subset), device=device or "cpu"))


def build_pruned(model_name: str, method: str, sparsity: float, seed: int, like, *, saliency_data=None,
                 saliency_per_class: int = 10, scope: str = "global", device=None, cache: dict | None = None,
                 saliency_key=None, bn_mode: str = "eval", balanced: bool = True, init: str = "default",
                 train_seed: int | None = None):
    """Build `model_name` from `seed` for data shaped like `like` and prune it by `method`.

    Saliency is computed on `saliency_data` (default: `like`; another dataset for cross-domain SNIP),
    on `device` (default: the CPU). With `cache`, a dict the caller keeps across calls, a network's
    scores are computed once and reused for every sparsity and for shuffled SNIP; `saliency_key`
    must then name the saliency data (default: the object's identity). `bn_mode` is BatchNorm's mode
    while scoring; `balanced=False` scores a random rather than a class-balanced batch; `init` is
    `models.build`'s. With `train_seed`, the masks go onto a fresh initialisation from that seed (the
    official SNIP code's practice) instead of the one that was scored. Returns (model, masks), masks
    None for `dense`.
    """
    channels, size = like.images.shape[1], like.images.shape[-1]
    model = build(model_name, like.num_classes, in_channels=channels, image_size=size, seed=seed,
                  init=init).to(device or "cpu")
    source = like if saliency_data is None else saliency_data
    key = (model_name, like.num_classes, channels, size, seed, init, scoring(method), saliency_per_class, bn_mode,
           balanced, id(source) if saliency_key is None else saliency_key)
    if cache is not None and key in cache:
        weight_scores = cache[key]
    else:
        batches = None if method in DATA_FREE_METHODS else saliency_batches(source, saliency_per_class, seed, device,
                                                                            balanced)
        weight_scores = method_scores(model, method, batches, seed, bn_mode)
        if cache is not None:
            cache[key] = weight_scores
    masks = masks_for_method(weight_scores, method, sparsity, seed, scope)
    if train_seed is not None and train_seed != seed:
        # The official SNIP code scores one initialisation and trains another under the mask.
        model = build(model_name, like.num_classes, in_channels=channels, image_size=size, seed=train_seed,
                      init=init).to(device or "cpu")
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
