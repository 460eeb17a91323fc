"""Saliency scores, the masks they choose, and the controls reviewers ask for.

A mask is a dict from a weight's name (as in `model.named_parameters()` of the unpruned model) to a
bool tensor of the same shape; `True` keeps the weight. How a model holds its masks (in the forward
pass, saved with its state dict) is `snipnb.masks`; its functions are re-exported here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .masks import (PRUNABLE_MODULES, SparsityReport, apply_masks, load_pruned, masks_from_state_dict,  # noqa: F401
                    masks_of, named_weights, parameter_names, prunable, remove_masks, sparsity_report,
                    weight, weight_name)

METHODS = ("snip", "snip_per_sample", "magnitude", "random", "fisher")
OBJECTIVES = ("labels", "pseudo_labels", "rotation")
BN_MODES = ("eval", "train")
SCOPES = ("global", "layerwise")
FISHER_LABELS = ("empirical", "sampled")


def _choice(argument: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")


# --------------------------------------------------------------------------------------- scores


def scores(
    model: nn.Module,
    batches=None,
    method: str = "snip",
    *,
    objective: str = "labels",
    params: list[str] | None = None,
    bn_mode: str = "eval",
    max_batches: int | None = None,
    fisher_labels: str = "empirical",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Score every weight in `params` (default: `prunable(model)`); higher means more important.

    - `snip`: connection sensitivity |dL/dθ · θ| (Lee et al. 2019). The signed gradients of all
      batches are summed before the absolute value is taken, as SNIP and FORCE do, so that opposite
      votes from different batches cancel rather than add up.
    - `snip_per_sample`: the mean over samples of the per-sample |dL_n/dθ · θ|, with true labels:
      SNIP's saliency built like the Fisher, so the two can stand in for each other as an EWC
      importance (here no sign can cancel across samples).
    - `magnitude`: |θ|. `random`: uniform noise from `seed` (the random-pruning control).
    - `fisher`: the diagonal Fisher, the mean over *samples* of the squared per-sample gradient
      (not the square of a batch-mean gradient). `fisher_labels="empirical"` uses the true labels,
      `"sampled"` draws labels from the model's own predictive distribution (the true Fisher).

    `objective` picks the loss SNIP differentiates, which is how label-free SNIP is made:
    - `labels` (default): cross-entropy with the true labels.
    - `pseudo_labels`: cross-entropy against the model's own argmax predictions. This is the
      default label-free objective because it reaches every layer, the class head included, and it
      is the same loss as labeled SNIP, so a difference between the two is due to the labels alone.
    - `rotation`: predict which of 0/90/180/270 degrees each image was rotated by, through a
      fresh 4-way linear head on `model.embed(x)` drawn from `seed`. It never touches the class head,
      so the head's weights get no score and are left out of the result (they stay dense).

    Cross-domain SNIP is `snip` with batches from another dataset: `batches` is any iterable of
    (images, labels). Scores are computed in float32 with autocast off. BatchNorm runs in `bn_mode`
    (`eval`, the default, uses the running statistics, which at initialisation are the identity;
    `train` uses batch statistics); the model's mode and buffers are restored afterwards.
    """
    _choice("method", method, METHODS)
    _choice("objective", objective, OBJECTIVES)
    _choice("bn_mode", bn_mode, BN_MODES)
    _choice("fisher_labels", fisher_labels, FISHER_LABELS)
    named = named_weights(model)
    names = prunable(model) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"params has names that are not parameters of the model: {unknown}")
    if not names:
        raise ValueError("params is empty: nothing to score")

    if method == "magnitude":
        return {n: weight(model, n).detach().float().abs() for n in names}
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(named[n].shape, generator=g).to(named[n].device) for n in names}

    if batches is None:
        raise ValueError(f"batches is required for method={method!r}")
    batches = itertools.islice(batches, max_batches) if max_batches is not None else batches
    was_training = model.training
    saved_buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train(bn_mode == "train")
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            if method in ("fisher", "snip_per_sample"):
                totals, count = _per_sample_sums(model, batches, names, method, fisher_labels, seed)
            else:
                totals, count = _gradient_sums(model, batches, names, objective, seed)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved_buffers[k])
    if count == 0:
        raise ValueError("batches is empty: saliency needs at least one batch")
    if method in ("fisher", "snip_per_sample"):
        return {n: t / count for n, t in totals.items()}
    return {n: (t * weight(model, n).detach().float()).abs() for n, t in totals.items() if t is not None}


def _objective_loss(model, x, y, objective, head_generator):
    if objective == "labels":
        return F.cross_entropy(model(x), y)
    if objective == "pseudo_labels":
        logits = model(x)
        return F.cross_entropy(logits, logits.argmax(1).detach())
    # rotation: every image appears at all four angles, so the task is balanced.
    if x.shape[-1] != x.shape[-2]:
        raise ValueError("objective='rotation' needs square images")
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    targets = torch.arange(4, device=x.device).repeat_interleave(len(x))
    features = model.embed(rotated)
    weight = torch.randn(4, features.shape[1], generator=head_generator).to(x.device)
    return F.cross_entropy(features @ (weight / features.shape[1] ** 0.5).T, targets)


def _check_batch(x, y) -> None:
    # An empty batch adds nothing to the sums and would pass for a batch with no signal.
    if len(x) == 0:
        raise ValueError("batches has a batch of 0 images: saliency needs images to score on")
    if len(y) != len(x):
        raise ValueError(f"a batch has {len(x)} images but {len(y)} labels")


def _gradient_sums(model, batches, names, objective, seed):
    named = named_weights(model)
    tensors = [named[n] for n in names]
    totals: list[torch.Tensor | None] = [None] * len(names)
    count = 0
    for x, y in batches:
        _check_batch(x, y)
        device = tensors[0].device
        x, y = x.to(device).float(), y.to(device)
        # The same auxiliary head for every batch, or the summed gradients would not agree on a task.
        head_generator = torch.Generator().manual_seed(seed)
        loss = _objective_loss(model, x, y, objective, head_generator)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                totals[i] = g.float() if totals[i] is None else totals[i] + g.float()
        count += 1
    return dict(zip(names, totals)), count


def _per_sample_sums(model, batches, names, method, fisher_labels, seed, chunk_size=32):
    """Sums over samples of g_n² (fisher) or |g_n · θ| (snip_per_sample), g_n one sample's gradient."""
    from torch.func import functional_call, grad, vmap

    # functional_call wants the names named_parameters() uses (a masked weight's is `...original`).
    real = parameter_names(model)
    named = {n: p.detach() for n, p in model.named_parameters()}
    scored = {real[n]: named[real[n]] for n in names}
    fixed = {n: p for n, p in named.items() if n not in scored}
    buffers = dict(model.named_buffers())
    sampler = torch.Generator().manual_seed(seed)

    def sample_loss(scored_params, x, y):
        out = functional_call(model, ({**fixed, **scored_params}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in scored.items()}
    count = 0
    for x, y in batches:
        _check_batch(x, y)
        device = next(iter(scored.values())).device
        x, y = x.to(device).float(), y.to(device)
        if method == "fisher" and fisher_labels == "sampled":
            with torch.no_grad():
                probs = F.softmax(model(x).float(), dim=1).cpu()
            y = torch.multinomial(probs, 1, generator=sampler).squeeze(1).to(device)
        for n, g in per_sample_grads(scored, x, y).items():
            g = g.float()
            totals[n] += g.pow(2).sum(0) if method == "fisher" else (g * scored[n].float()).abs().sum(0)
        count += len(x)
    return {weight_name(n): t for n, t in totals.items()}, count


# ---------------------------------------------------------------------------------------- masks


def masks_from_scores(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global"
) -> dict[str, torch.Tensor]:
    """Keep exactly the top (1 - sparsity) of the scored weights, over all layers or per layer.

    The count kept is round((1 - sparsity) * n), at least one weight; ties are broken by `topk`.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    _choice("scope", scope, SCOPES)
    if not scores:
        raise ValueError("scores is empty: nothing to prune")
    for name, s in scores.items():
        if torch.isnan(s).any():
            raise ValueError(f"scores[{name!r}] contains NaN")
    if scope == "layerwise":
        return {n: _keep_top(s.flatten(), sparsity).view(s.shape) for n, s in scores.items()}
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    keep = _keep_top(flat, sparsity)
    pieces = keep.split([s.numel() for s in scores.values()])
    return {n: piece.view(s.shape).to(s.device) for (n, s), piece in zip(scores.items(), pieces)}


def _keep_top(flat: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_keep = max(1, round((1.0 - sparsity) * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    return keep


def shuffle_masks(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same number of kept weights in every layer, at random positions (Frankle et al. 2021)."""
    g = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        perm = torch.randperm(mask.numel(), generator=g).to(mask.device)
        shuffled[name] = mask.flatten()[perm].view(mask.shape)
    return shuffled


def mask_overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Jaccard index of the kept weights of two masks over the layers both cover: |A ∩ B| / |A ∪ B|."""
    shared = [n for n in a if n in b]
    if not shared:
        raise ValueError("the masks share no layer to compare")
    both = sum(int((a[n] & b[n].to(a[n].device)).sum()) for n in shared)
    either = sum(int((a[n] | b[n].to(a[n].device)).sum()) for n in shared)
    return both / either if either else 1.0
