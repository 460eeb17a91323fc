"""Saliency scores, masks and the controls reviewers ask for.

A mask is a dict from parameter name (as in `model.named_parameters()`) to a bool tensor of the same
shape; `True` keeps the weight. Applied to a model, each mask becomes a buffer `<param>_mask` on the
parameter's module, so it is saved and loaded with `state_dict` (open_lth keeps masks the same way).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("snip", "snip_per_sample", "magnitude", "random", "fisher")
OBJECTIVES = ("labels", "pseudo_labels", "rotation")
BN_MODES = ("eval", "train")
SCOPES = ("global", "layerwise")
FISHER_LABELS = ("empirical", "sampled")
PRUNABLE_MODULES = (nn.Conv2d, nn.Linear)


def _choice(argument: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")


def prunable(model: nn.Module) -> list[str]:
    """Names of the weights SNIP prunes: conv and linear weights, not biases or norm parameters."""
    return [f"{m_name}.weight" if m_name else "weight"
            for m_name, m in model.named_modules() if isinstance(m, PRUNABLE_MODULES)]


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
    named = dict(model.named_parameters())
    names = prunable(model) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"params has names that are not parameters of the model: {unknown}")
    if not names:
        raise ValueError("params is empty: nothing to score")

    if method == "magnitude":
        return {n: named[n].detach().float().abs() for n in names}
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
    return {n: (t * named[n].detach().float()).abs() for n, t in totals.items() if t is not None}


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


def _gradient_sums(model, batches, names, objective, seed):
    named = dict(model.named_parameters())
    tensors = [named[n] for n in names]
    totals: list[torch.Tensor | None] = [None] * len(names)
    count = 0
    for x, y in batches:
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

    named = {n: p.detach() for n, p in model.named_parameters()}
    scored = {n: named[n] for n in names}
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
    return totals, count


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


def _owner(model: nn.Module, name: str):
    module_name, _, param_name = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    if module is None or not isinstance(getattr(module, param_name, None), nn.Parameter):
        raise ValueError(f"masks has a name that is not a parameter of the model: {name!r}")
    return module, param_name


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach masks as `<param>_mask` buffers and zero the pruned weights, in place.

    Training through `snipnb.train.fit` keeps pruned weights at exactly zero: it zeroes their
    gradients before each optimiser step (so neither momentum nor weight decay can move them) and
    re-applies the masks after it. A hand-written loop should call `enforce_masks` the same way.
    Applying again replaces the masks.
    """
    for name, mask in masks.items():
        module, param_name = _owner(model, name)
        param = getattr(module, param_name)
        if mask.shape != param.shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, "
                             f"the parameter has {tuple(param.shape)}")
        mask = mask.to(device=param.device, dtype=torch.bool)
        buffer = f"{param_name}_mask"
        if hasattr(module, buffer):
            getattr(module, buffer).copy_(mask)
        else:
            module.register_buffer(buffer, mask.clone())
    enforce_masks(model)
    return model


def masked_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """(name, parameter, mask) for every parameter that has a mask attached."""
    found = []
    for m_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            mask = getattr(module, f"{p_name}_mask", None)
            if isinstance(mask, torch.Tensor):
                found.append((f"{m_name}.{p_name}" if m_name else p_name, param, mask))
    return found


@torch.no_grad()
def enforce_masks(model: nn.Module, masked=None) -> None:
    """Zero every pruned weight and its gradient. `masked` may be a cached `masked_parameters`."""
    for _, param, mask in masked if masked is not None else masked_parameters(model):
        param.mul_(mask)
        if param.grad is not None:
            param.grad.mul_(mask)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks currently attached to `model`, keyed by parameter name."""
    return {name: mask.clone() for name, _, mask in masked_parameters(model)}


def masks_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks saved in a state dict, so a fresh model can be prepared for `load_state_dict`:
    `apply_masks(model, masks_from_state_dict(sd)); model.load_state_dict(sd)`."""
    return {k[: -len("_mask")]: v for k, v in state_dict.items() if k.endswith("_mask")}


# --------------------------------------------------------------------------------------- report


@dataclass
class SparsityReport:
    layers: pd.DataFrame  # one row per prunable weight: shape, total, kept, nonzero, density, collapsed
    total: int
    kept: int
    collapsed: list[str]  # layers with no weight left: the network is cut there

    @property
    def density(self) -> float:
        return self.kept / self.total


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Per-layer and global density of the prunable weights, from the attached masks."""
    masks = {name: mask for name, _, mask in masked_parameters(model)}
    named = dict(model.named_parameters())
    rows = []
    for name in prunable(model):
        p = named[name]
        kept = int(masks[name].sum()) if name in masks else p.numel()
        rows.append(dict(layer=name, shape=tuple(p.shape), total=p.numel(), kept=kept,
                         nonzero=int((p != 0).sum()), density=kept / p.numel(), collapsed=kept == 0))
    layers = pd.DataFrame(rows)
    return SparsityReport(layers=layers, total=int(layers.total.sum()), kept=int(layers.kept.sum()),
                          collapsed=list(layers.layer[layers.collapsed]))
