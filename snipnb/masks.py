"""Masks that hold in any training loop, saved and loaded with the model.

A mask is a dict from a weight's name (as `model.named_parameters()` gives it before pruning, e.g.
`body.0.weight`) to a bool tensor of the same shape; `True` keeps the weight. `apply_masks` makes
each masked weight a `torch.nn.utils.parametrize` parametrization, `weight = original * mask`, the
way PyTorch's own `torch.nn.utils.prune` works. So the forward pass computes with the pruned weights
at zero whatever loop, optimiser or trainer library drives the model, and the gradient reaching
`original` is zero at pruned positions.

What that changes for a user (the price of PyTorch's mechanism):
- `named_parameters()` lists a masked weight as `<module>.parametrizations.weight.original`.
  `weight_name(name)` maps it back; `module.weight` still reads as the masked weight.
- The state dict holds `<module>.parametrizations.weight.original` and
  `<module>.parametrizations.weight.0.mask`. A fresh model takes it in one call:
  `load_pruned(model, torch.load(path, weights_only=True))`.
- `remove_masks(model)` bakes the masks in and gives back plain parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE_MODULES = (nn.Conv2d, nn.Linear)
_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")
_SAVED_MASK = re.compile(r"(^|\.)parametrizations\.([^.]+)\.0\.mask$")


class Mask(nn.Module):
    """The parametrization `original -> original * mask`; the mask is a bool buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def prunable(model: nn.Module) -> list[str]:
    """Names of the weights SNIP prunes: conv and linear weights, not biases or norm parameters."""
    return [f"{m_name}.weight" if m_name else "weight"
            for m_name, m in model.named_modules() if isinstance(m, PRUNABLE_MODULES)]


def weight_name(parameter_name: str) -> str:
    """`a.parametrizations.weight.original` -> `a.weight`; any other name is returned as is."""
    return _PARAMETRIZED.sub(r"\1\2", parameter_name)


def named_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every trainable tensor of `model` by its unpruned name. For a masked weight this is the
    parameter the optimiser updates (`original`), not the masked product."""
    return {weight_name(n): p for n, p in model.named_parameters()}


def parameter_names(model: nn.Module) -> dict[str, str]:
    """Unpruned name -> the name `named_parameters()` (and `functional_call`) uses for it."""
    return {weight_name(n): n for n, _ in model.named_parameters()}


def weight(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor the forward pass uses for weight `name` (for a masked weight, the masked product)."""
    module, param_name = _owner(model, name)
    return getattr(module, param_name)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, param_name = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    if module is None or not (parametrize.is_parametrized(module, param_name)
                              or isinstance(getattr(module, param_name, None), nn.Parameter)):
        raise ValueError(f"masks has a name that is not a parameter of the model: {name!r}")
    return module, param_name


def _mask_module(module: nn.Module, param_name: str) -> Mask | None:
    if not parametrize.is_parametrized(module, param_name):
        return None
    return next((p for p in module.parametrizations[param_name] if isinstance(p, Mask)), None)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask the named weights of `model` in place (see the module docstring); return `model`.

    The pruned entries of the underlying parameter are zeroed too, so optimiser state and weight
    decay start from zeros there. Applying again to a weight replaces its mask.
    """
    for name, mask in masks.items():
        module, param_name = _owner(model, name)
        shape = getattr(module, param_name).shape
        if mask.shape != shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, the parameter has {tuple(shape)}")
        existing = _mask_module(module, param_name)
        if existing is None:
            device = getattr(module, param_name).device
            parametrize.register_parametrization(module, param_name, Mask(mask.to(device)))
            existing = _mask_module(module, param_name)
        else:
            existing.mask.copy_(mask)
        with torch.no_grad():
            module.parametrizations[param_name].original.mul_(existing.mask)
    return model


def _masked(model: nn.Module) -> list[tuple[str, nn.Module, str, Mask]]:
    found = []
    for m_name, module in model.named_modules():
        for param_name in list(getattr(module, "parametrizations", {}) or {}):
            mask = _mask_module(module, param_name)
            if mask is not None:
                found.append((f"{m_name}.{param_name}" if m_name else param_name, module, param_name, mask))
    return found


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to `model`, keyed by weight name (copies)."""
    return {name: mask.mask.clone() for name, _, _, mask in _masked(model)}


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the masks into plain parameters (pruned entries stay zero), in place; return `model`."""
    for module in {id(m): m for _, m, _, _ in _masked(model)}.values():
        lists = module.parametrizations
        if all(len(lists[p]) == 1 and isinstance(lists[p][0], Mask) for p in lists):
            # torch's remove_parametrizations deletes the property from the module's class, which
            # a deep copy of the model shares, and so would break the copy. Ours only masks: undo
            # it on this instance alone.
            baked = {p: nn.Parameter(getattr(module, p).detach().clone(),
                                     requires_grad=lists[p].original.requires_grad) for p in lists}
            module.__class__ = module.__class__.__bases__[0]
            del module._modules["parametrizations"]
            for p, value in baked.items():
                module.register_parameter(p, value)
        else:
            for _, other, param_name, _ in _masked(model):
                if other is module:
                    parametrize.remove_parametrizations(module, param_name, leave_parametrized=True)
    return model


def masks_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks saved in a pruned model's state dict, keyed by weight name."""
    return {_SAVED_MASK.sub(r"\1\2", k): v for k, v in state_dict.items() if _SAVED_MASK.search(k)}


def load_pruned(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a state dict saved from a pruned model into a freshly built one, masks included.

    `load_pruned(models.build(...), torch.load(path, weights_only=True))`. A state dict without
    masks loads as plain `load_state_dict` does. Strict: every key must match.
    """
    apply_masks(model, masks_from_state_dict(state_dict))
    model.load_state_dict(state_dict)
    return model


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
    """Per-layer and global density of the prunable weights, from the attached masks. `nonzero`
    counts the weights the forward pass computes with (the masked product)."""
    masks = masks_of(model)
    rows = []
    for name in prunable(model):
        module, param_name = _owner(model, name)
        weight = getattr(module, param_name)
        kept = int(masks[name].sum()) if name in masks else weight.numel()
        rows.append(dict(layer=name, shape=tuple(weight.shape), total=weight.numel(), kept=kept,
                         nonzero=int((weight != 0).sum()), density=kept / weight.numel(), collapsed=kept == 0))
    layers = pd.DataFrame(rows)
    return SparsityReport(layers=layers, total=int(layers.total.sum()), kept=int(layers.kept.sum()),
                          collapsed=list(layers.layer[layers.collapsed]))
