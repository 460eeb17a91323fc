"""SNOW (Yoo, Kang & Cho, ICLR 2020): a frozen source network and a small delta network that
subscribes to some of the source's channels through channel pooling.

    image ─ prepare ─┬─ source stem ── s0 ─ stage 1 ── s1 ─ ... ─ stage S ── sS        frozen: eval, no_grad
                     │                 │P0               │P1                 │PS        channel pooling: M_j of N_j
                     └─ delta stem ─── d0 ⊕ ─ stage 1' ─ d1 ⊕ ─ ... ─ stage S' ─ dS ⊕ ─ avg-pool ─ head

Both networks see the same image (after the source's own input preparation: resizing and
normalisation, `prepare`). After the source's stem and after each of its residual stages, a
`ChannelPooling` layer picks M_j of that point's N_j source channels, scales them by a learned
weight, and concatenates (⊕) them to the delta's feature map of the same spatial size; the result is
the input of the delta's next stage, or, after the last stage, of its classifier. Only the delta's
output is used. The delta has the source's shape (same block type, blocks per stage, strides) with
every width divided by `width_divisor`, and is randomly initialised. The source runs in eval mode
under `torch.no_grad()`: its weights and BatchNorm statistics stay bit for bit what they were.

What is supported as a source (`split_source`): torchvision's ResNets with basic or bottleneck
blocks (ResNet-18/34/50/101/152, the ImageNet stem), the project's pretrained backbones
(`snipnb.pretrained`: `body.input`, `body.stem`, `body.layer1..4`, the ImageNet or the CIFAR stem;
the delta's stem has the source's kernel, stride and max-pool, so its maps match the source's at
every tap), and the project's small CIFAR ResNets (`snipnb.models` `resnet18`, `resnet20`: a 3x3
stem and residual blocks grouped into stages where the width or stride changes). Anything else is
refused with a ValueError.

`SnowTasks` serves several target tasks from one source: one source forward pass, then one delta per
task, which is SNOW's lifelong-learning claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from . import checks, models

SELECTIONS = ("learned", "snip", "random")
SLOT_ORDERS = ("stable", "sorted")
SIGMA_SCHEDULES = ("constant", "cosine")


# --------------------------------------------------------------------------------- channel pooling


class ChannelPooling(nn.Module):
    """Pick `m` of `channels` input channels and scale each by its learned weight.

    The weight vector `w` (`self.weight`, length N = `channels`, an `nn.Parameter` initialised to
    1) does both jobs. The seed's pseudocode (Algorithm 1 of the reproduction report), line by line:

        if training:  rand_v = w + N(0, σ)            ->  score = w + sigma * randn(N)
                      _, idx = topK(rand_v, M)        ->  idx = topk(score, m)
                      selected_weights = w[idx]       ->  w[idx]
        else:         selected_weights, idx = topK(w, M)   (the seed prints topK(rand_v, M) here, but at
                                                            evaluation there is no noise: top-M of w)
        x = x[idx];  x = x ⊗ selected_weights         ->  x.index_select(1, idx) * w[idx]

    The noise only decides *which* channels are taken; the gradient of the loss reaches w through
    the product, at the M selected entries (the others get a zero gradient that step). A channel
    whose weight grows is kept; one whose weight shrinks below the others' is swapped out, and the
    noise gives every channel a chance to be tried. (A public reproduction kept w as a plain
    tensor, so it never learned; here it is a parameter, and tests/test_snow.py checks it moves.)
    `sigma` is an attribute a training loop may change between steps (`set_sigma`, the schedules
    of `sigma_at`): noise that shrinks to 0 lets the training selection settle on the top-M of w,
    the selection evaluation uses. `sigma = 0` selects the top-M of w in training too.

    Where each selected channel enters the delta's next convolution (its *slot*, the position in
    the output) is `slot_order`:
    - `"stable"` (default): a channel selected again keeps the slot it had in the previous training
      draw; a newcomer takes a slot a dropped channel freed (newcomers in ascending channel
      order, into the freed slots in ascending order). The next convolution's weights for a slot
      then keep meeting the channel they were trained on, whatever else the noise swaps. The
      slots of the last training draw are a buffer (`slots`), so evaluation, and a model loaded
      from a state dict, place the top-M of w the same way (`assign_slots`).
    - `"sorted"`: ascending channel order, as the project first did: any change of the set shifts
      every slot after the first channel that changed.

    `fix(indices)` pins the selection (SNIP-chosen or random channels, the project's ablation):
    those `m` channels in training and evaluation alike, in ascending order, still scaled by their
    learned weights. The pinned indices are a buffer, so they travel in the state dict.
    """

    def __init__(self, channels: int, m: int, sigma: float, slot_order: str = "stable"):
        super().__init__()
        checks.integer("channels", channels, 1)
        checks.integer("m", m, 1)
        if m > channels:
            raise ValueError(f"m must be at most the number of source channels N={channels}, got m={m}")
        checks.number("sigma", sigma, 0)
        checks.one_of("slot_order", slot_order, SLOT_ORDERS)
        self.channels, self.m, self.sigma, self.slot_order = channels, m, float(sigma), slot_order
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("fixed_index", torch.full((m,), -1, dtype=torch.long))
        # The channel in each slot at the last training draw; -1 before the first.
        self.register_buffer("slots", torch.full((m,), -1, dtype=torch.long))
        self.fixed = False  # mirrors fixed_index, read without a device sync in forward
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_fixed())

    def _sync_fixed(self) -> None:
        self.fixed = bool((self.fixed_index >= 0).all())

    def fix(self, indices) -> ChannelPooling:
        """Pin the selection to `indices` (m distinct channel numbers); returns self."""
        index = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        if index.numel() != self.m or len(set(index.tolist())) != self.m:
            raise ValueError(f"indices must be {self.m} distinct channels, got {index.tolist()}")
        if index.min() < 0 or index.max() >= self.channels:
            raise ValueError(f"indices must lie in 0..{self.channels - 1}, got {index.tolist()}")
        self.fixed_index.copy_(index.sort().values)
        self.fixed = True
        return self

    def index(self) -> torch.Tensor:
        """The channels this forward pass takes, in slot order (see the class docstring). In
        training this is a draw: the slots it fills are remembered."""
        if self.fixed:
            return self.fixed_index
        score = self.weight.detach()
        if self.training and self.sigma > 0:
            score = score + self.sigma * torch.randn_like(score)
        chosen = torch.topk(score, self.m, sorted=False).indices
        order = chosen.sort().values if self.slot_order == "sorted" else assign_slots(self.slots, chosen)
        if self.training:
            self.slots.copy_(order)
        return order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"channel pooling over {self.channels} channels got an input with {x.shape[1]}")
        index = self.index()
        return x.index_select(1, index) * self.weight[index].to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, m={self.m}, sigma={self.sigma}, slot_order={self.slot_order}, "
                f"fixed={self.fixed}")


def assign_slots(slots: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The channels `chosen` (m distinct) in slot order, given the channel each slot held before
    (`slots`, -1 where none): a chosen channel that held a slot keeps it; the newcomers, in
    ascending order, fill the freed slots in ascending order. Device ops only, no host sync.

        assign_slots([2, 5, 9], {5, 9, 12}) == [12, 5, 9]      (sorted order would shift: [5, 9, 12])
    """
    chosen = chosen.sort().values
    kept = torch.isin(slots, chosen)
    newcomer = ~torch.isin(chosen, slots)
    newcomers_first = chosen[torch.argsort((~newcomer).to(torch.uint8), stable=True)]
    rank = torch.cumsum((~kept).to(torch.long), 0) - 1  # each freed slot's rank among the freed slots
    return torch.where(kept, slots, newcomers_first[rank.clamp(min=0)])


def sigma_at(sigma: float, schedule: str, step: int, steps: int) -> float:
    """The selection noise at training step `step` (0-based) of `steps`: `"constant"`, σ throughout
    (the seed's); `"cosine"`, σ annealed to 0 on a half cosine, σ at the first step, 0 at the last,
    so training ends on the selection evaluation uses (the top-M of w)."""
    checks.one_of("schedule", schedule, SIGMA_SCHEDULES)
    if schedule == "constant":
        return sigma
    progress = min(step, steps - 1) / (steps - 1) if steps > 1 else 0.0
    return sigma * 0.5 * (1 + math.cos(math.pi * progress))


def set_sigma(model: Snow | Delta, sigma: float) -> None:
    """Set the selection noise of every pooling layer of `model` (the next training draws use it)."""
    checks.number("sigma", sigma, 0)
    for pool in _delta(model).pools:
        pool.sigma = float(sigma)


# ------------------------------------------------------------------------------------ the source


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape of a source network, all the delta builder needs.

    `family`: 'torchvision' (torchvision's blocks, ImageNet stem) or 'snipnb' (`snipnb.models`'
    CIFAR blocks, 3x3 stem). `block`: 'basic' or 'bottleneck'. `stem`: (in_channels, width,
    kernel, stride, padding, max-pool (kernel, stride, padding) or None). `stages`: (blocks,
    planes, stride) per stage; a stage's output width is planes times the block's expansion.
    """

    family: str
    block: str
    stem: tuple
    stages: tuple

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def widths(self) -> tuple[int, ...]:
        """N_j: the channels after the stem and after each stage, where the pooling layers tap."""
        return (self.stem[1], *(planes * self.expansion for _, planes, _ in self.stages))

    @property
    def conv_widths(self) -> tuple[int, ...]:
        """Every distinct width a convolution of the source has (what `width_divisor` must divide)."""
        return tuple(sorted({self.stem[1], *(p for _, p, _ in self.stages), *self.widths[1:]}))


class SourceStages(nn.Module):
    """The frozen source cut at its taps: `forward(x)` returns (prepared image, [s0, s1, ..., sS]).

    It holds the source's own modules (not copies), with `requires_grad` off, always in eval mode,
    and runs them under `torch.no_grad()`: nothing in a training loop can change them.
    """

    def __init__(self, prepare: nn.Module, stages: Sequence[nn.Module]):
        super().__init__()
        self.prepare = prepare
        self.stages = nn.ModuleList(stages)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.prepare(x)
        features, h = [], x
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return x, features


class StoredStages(nn.Module):
    """Stands in for `SourceStages` when the source's outputs were computed beforehand: it takes them
    as one flat tuple (prepared image, s0, ..., sS), as `snipnb.frozen.features` stores what a
    `SourceStages` returns, and hands them on as `SourceStages` would have: (prepared image, [s0..sS])."""

    def forward(self, stored: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return stored[0], list(stored[1:])


@contextlib.contextmanager
def stored_source(model: Snow | SnowTasks):
    """Within the block, `model.source` is a `StoredStages`: `model` takes the source's stored
    outputs (`snipnb.frozen.features` of its `SourceStages`) in place of images. The block is given
    the source, which is put back on the way out, also after an error."""
    source = model.source
    model.source = StoredStages()
    try:
        yield source
    finally:
        model.source = source


SUPPORTED = ("a torchvision ResNet with basic or bottleneck blocks (resnet18/34/50/101/152)",
             "a snipnb.pretrained backbone (body.stem, body.layer1..4)",
             "snipnb.models' resnet18 or resnet20")


def _unsupported(source, why: str) -> ValueError:
    return ValueError(f"SNOW cannot use this source ({type(source).__name__}): {why}. Supported: "
                      + "; ".join(SUPPORTED))


def _torchvision_layout(source, stem_modules, layers) -> Layout:
    conv1, maxpool = stem_modules["conv1"], stem_modules.get("maxpool")
    first = layers[0][0]
    if isinstance(first, torchvision.models.resnet.Bottleneck):
        block = "bottleneck"
    elif isinstance(first, torchvision.models.resnet.BasicBlock):
        block = "basic"
    else:
        raise _unsupported(source, f"its blocks are {type(first).__name__}")
    stages = []
    for layer in layers:
        for b in layer:
            if type(b) is not type(first) or b.conv1.groups != 1 or getattr(b, "conv2").groups != 1:
                raise _unsupported(source, "its blocks are grouped or mixed (ResNeXt?)")
            if block == "bottleneck" and b.conv1.out_channels * 4 != b.conv3.out_channels:
                raise _unsupported(source, "its bottlenecks are widened (Wide ResNet?)")
        head = layer[0]
        stride = (head.conv2 if block == "bottleneck" else head.conv1).stride[0]
        stages.append((len(layer), head.conv1.out_channels if block == "bottleneck" else head.conv2.out_channels,
                       stride))
    pool = None
    if isinstance(maxpool, nn.MaxPool2d):
        pool = tuple(_int(getattr(maxpool, a)) for a in ("kernel_size", "stride", "padding"))
    stem = (conv1.in_channels, conv1.out_channels, conv1.kernel_size[0], conv1.stride[0], conv1.padding[0], pool)
    return Layout("torchvision", block, stem, tuple(stages))


def _int(value) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


def split_source(source: nn.Module) -> tuple[SourceStages, Layout]:
    """Cut a supported source network at its taps: (frozen stages, its layout). The source's modules
    are used in place, frozen: all its parameters stop requiring gradients, the head SNOW does not
    use included, so an optimiser given the source's parameters cannot move any of them."""
    stages, layout = _split(source)
    source.requires_grad_(False)
    return stages, layout


def _split(source: nn.Module) -> tuple[SourceStages, Layout]:
    if isinstance(source, torchvision.models.ResNet):
        stem = nn.Sequential(source.conv1, source.bn1, source.relu, source.maxpool)
        layers = [source.layer1, source.layer2, source.layer3, source.layer4]
        layout = _torchvision_layout(source, {"conv1": source.conv1, "maxpool": source.maxpool}, layers)
        return SourceStages(nn.Identity(), [stem, *layers]), layout
    body = getattr(source, "body", None)
    if body is None:
        raise _unsupported(source, "it has no `body`")
    names = ("stem", "layer1", "layer2", "layer3", "layer4")
    if all(hasattr(body, n) for n in names):  # snipnb.pretrained.Backbone
        stem = body.stem
        if not hasattr(stem, "conv1"):
            raise _unsupported(source, "its body.stem has no conv1")
        layers = [getattr(body, n) for n in names[1:]]
        layout = _torchvision_layout(source, dict(stem.named_children()), layers)
        return SourceStages(getattr(body, "input", nn.Identity()), [stem, *layers]), layout
    return _split_snipnb(source, body)


def _split_snipnb(source, body) -> tuple[SourceStages, Layout]:
    children = list(body.children()) if isinstance(body, nn.Sequential) else []
    stem, rest = children[:3], children[3:]
    blocks = []
    while rest and isinstance(rest[0], models.BasicBlock):
        blocks.append(rest.pop(0))
    if not (len(stem) == 3 and isinstance(stem[0], nn.Conv2d) and isinstance(stem[1], nn.BatchNorm2d)
            and isinstance(stem[2], nn.ReLU)) or not blocks or len(rest) != 1:
        raise _unsupported(source, "its body is not a conv-BN-ReLU stem, residual BasicBlocks and a pooling layer")
    groups = []
    for b in blocks:  # a stage starts where the stride or the width changes
        if not groups or b.conv1.stride[0] != 1 or b.conv1.in_channels != b.conv2.out_channels:
            groups.append([])
        groups[-1].append(b)
    stages = tuple((len(g), g[0].conv2.out_channels, g[0].conv1.stride[0]) for g in groups)
    conv = stem[0]
    layout = Layout("snipnb", "basic", (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                                        conv.padding[0], None), stages)
    return SourceStages(nn.Identity(), [nn.Sequential(*stem)] + [nn.Sequential(*g) for g in groups]), layout


# ------------------------------------------------------------------------------------- the delta


def pooled_channels(layout: Layout, m, width_divisor: int) -> tuple[int, ...]:
    """M_j for every tap: `m` itself if an int, one value per tap if a sequence, and for None as many
    channels as the delta has there (N_j / width_divisor), so the delta's own and the subscribed
    channels enter each stage in equal numbers. Each must lie in 1..N_j."""
    widths = layout.widths
    if m is None:
        return tuple(n // width_divisor for n in widths)
    if isinstance(m, (list, tuple)):
        if len(m) != len(widths):
            raise ValueError(f"m must have one value per tap ({len(widths)}: after the stem and each stage, "
                             f"N = {widths}), got {list(m)}")
        values = tuple(m)
    else:
        values = (m,) * len(widths)
    for j, (value, n) in enumerate(zip(values, widths)):
        checks.integer("m", value, 1)
        if value > n:
            raise ValueError(f"m={value} is larger than N={n}, the source's channels at tap {j} "
                             f"(N per tap: {widths})")
    return tuple(int(v) for v in values)


def check_divisor(layout: Layout, width_divisor: int) -> None:
    checks.integer("width_divisor", width_divisor, 1)
    bad = [w for w in layout.conv_widths if w % width_divisor]
    if bad:
        raise ValueError(f"width_divisor={width_divisor} does not divide the source's widths {layout.conv_widths} "
                         f"(not {bad})")


class Delta(nn.Module):
    """The trained part of SNOW: a narrow copy of the source's shape, its pooling layers and its head.

    `forward(x, features)` takes the prepared image and the source's tap outputs (`SourceStages`):

        h = stem(x);  for j in 1..S: h = stage_j(cat[h, pool_{j-1}(s_{j-1})]);  logits = head(avg(cat[h, pool_S(s_S)]))
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], pools: Sequence[ChannelPooling], width: int,
                 num_classes: int, width_divisor: int):
        super().__init__()
        self.width_divisor = width_divisor
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList(pools)
        self.embed_dim = width + pools[-1].m
        self.head = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.pools):
            raise ValueError(f"the delta subscribes to {len(self.pools)} taps, got {len(features)} feature maps")
        h = self.stem(x)
        for stage, pool, feature in zip(self.stages, self.pools, features):
            h = stage(torch.cat([h, pool(feature).to(h.dtype)], 1))
        h = torch.cat([h, self.pools[-1](features[-1]).to(h.dtype)], 1)
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(x, features))


def _torchvision_stage(block: str, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    cls = torchvision.models.resnet.Bottleneck if block == "bottleneck" else torchvision.models.resnet.BasicBlock
    layers = []
    for i in range(blocks):
        s, out = (stride if i == 0 else 1), planes * cls.expansion
        downsample = None
        if s != 1 or inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=s, bias=False), nn.BatchNorm2d(out))
        layers.append(cls(inplanes, planes, s, downsample))
        inplanes = out
    return nn.Sequential(*layers)


def _snipnb_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    # The zero-padding shortcut ("A") cannot take an input wider than its output, which a block fed
    # with subscribed channels often is: the delta projects ("B") wherever the shape changes.
    return nn.Sequential(*(models.BasicBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1, "B")
                           for i in range(blocks)))


def build_delta(layout: Layout, num_classes: int, *, m=None, sigma: float = 0.1, width_divisor: int = 8,
                slot_order: str = "stable", seed: int | None = None) -> Delta:
    """A randomly initialised delta for a source of `layout` (see `Delta`), with `num_classes` outputs.

    Every width is the source's divided by `width_divisor`; the first block of each stage takes the
    delta's channels plus the M channels pooled from the source (`pooled_channels(m)`), and projects
    its shortcut wherever the width or stride changes. Convolutions get He init (fan-out), BatchNorm
    ones and zeros, the head PyTorch's default; with `seed` the init is reproducible and the global
    RNG is left untouched. `sigma` and `slot_order` are the pooling layers' (`ChannelPooling`).
    """
    checks.integer("num_classes", num_classes, 1)
    check_divisor(layout, width_divisor)
    checks.number("sigma", sigma, 0)
    checks.one_of("slot_order", slot_order, SLOT_ORDERS)
    ms = pooled_channels(layout, m, width_divisor)

    def make() -> Delta:
        in_ch, width, kernel, stride, padding, pool = layout.stem
        stem_width = width // width_divisor
        stem = [nn.Conv2d(in_ch, stem_width, kernel, stride=stride, padding=padding, bias=False),
                nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)]
        if pool is not None:
            stem.append(nn.MaxPool2d(*pool))
        stages, h = [], stem_width
        for (blocks, planes, s), pooled in zip(layout.stages, ms):
            narrow = planes // width_divisor
            if layout.family == "torchvision":
                stages.append(_torchvision_stage(layout.block, h + pooled, narrow, blocks, s))
            else:
                stages.append(_snipnb_stage(h + pooled, narrow, blocks, s))
            h = narrow * layout.expansion
        pools = [ChannelPooling(n, mj, sigma, slot_order) for n, mj in zip(layout.widths, ms)]
        delta = Delta(nn.Sequential(*stem), stages, pools, h, num_classes, width_divisor)
        for module in delta.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        return delta

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return make()


# -------------------------------------------------------------------------------------- the model


class Snow(nn.Module):
    """A frozen source and one delta: `model(x)` is the delta's logits for images `x`.

    `train()` never reaches the source (it stays in eval mode), and the source runs under
    `torch.no_grad()`, so a training loop updates the delta, its pooling weights and its head only.
    """

    def __init__(self, source: SourceStages, delta: Delta, layout: Layout):
        super().__init__()
        self.source, self.delta, self.layout = source, delta, layout

    @property
    def head(self) -> nn.Linear:
        return self.delta.head

    @property
    def embed_dim(self) -> int:
        return self.delta.embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.delta.embed(*self.source(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.delta(*self.source(x))


class SnowTasks(nn.Module):
    """One source serving several target tasks: `model(x)` is a list of logits, one per delta.

    The source runs once per batch, whatever the number of tasks; each task adds only its delta.
    """

    def __init__(self, source: SourceStages, deltas: Sequence[Delta]):
        super().__init__()
        self.source = source
        self.deltas = nn.ModuleList(deltas)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        prepared, features = self.source(x)
        return [delta(prepared, features) for delta in self.deltas]


def build_snow(source: nn.Module, num_classes: int, *, m=None, sigma: float = 0.1, width_divisor: int = 8,
               slot_order: str = "stable", seed: int | None = None) -> Snow:
    """SNOW over `source` (frozen in place) with a new delta for `num_classes` (see `build_delta`).

    `m`: channels pooled at each tap (an int, one per tap, or None for N_j / width_divisor);
    `sigma`: the standard deviation of the selection noise in training; `width_divisor`: how much
    narrower the delta is than the source; `slot_order`: where a selected channel enters the
    delta (`ChannelPooling`).
    """
    stages, layout = split_source(source)
    return Snow(stages, build_delta(layout, num_classes, m=m, sigma=sigma, width_divisor=width_divisor,
                                    slot_order=slot_order, seed=seed), layout)


# ------------------------------------------------------------------ which channels, and the controls


def _delta(model: Snow | Delta) -> Delta:
    return model.delta if isinstance(model, Snow) else model


def selection(model: Snow | Delta) -> list[torch.Tensor]:
    """The channels each pooling layer takes at evaluation (ascending), one tensor per tap."""
    return [_eval_index(pool).sort().values.cpu() for pool in _delta(model).pools]


def _eval_index(pool: ChannelPooling) -> torch.Tensor:
    was = pool.training
    pool.eval()
    try:
        return pool.index().detach().clone()
    finally:
        pool.train(was)


def fix_selection(model: Snow, indices: Sequence) -> Snow:
    """Pin every pooling layer of `model` to the given channels (one index list per tap); returns it."""
    pools = model.delta.pools
    if len(indices) != len(pools):
        raise ValueError(f"indices must hold one selection per tap ({len(pools)}), got {len(indices)}")
    for pool, index in zip(pools, indices):
        pool.fix(index)
    return model


def random_channels(layout: Layout, m, width_divisor: int, seed: int) -> list[torch.Tensor]:
    """M_j channels drawn uniformly at each tap, from `seed`: the control for a chosen selection."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator)[:mj].sort().values
            for n, mj in zip(layout.widths, pooled_channels(layout, m, width_divisor))]


def snip_channel_scores(model: Snow, batches, *, seed: int = 0) -> list[torch.Tensor]:
    """SNIP's connection sensitivity of every source channel at every tap, from the target's data.

    A scoring copy of `model` subscribes to *all* N_j channels of every tap (M_j = N_j, every
    pooling weight 1, no noise), its delta as wide as `model`'s and initialised from `seed`. The score of
    channel c is |Σ_batches ∂L/∂w_c · w_c|, SNIP's |g · θ| for the connection that carries channel c
    to the delta (the signed gradients of all batches summed before the absolute value, as
    `snipnb.pruning.scores` does). The delta's BatchNorm uses its running statistics (the identity
    at initialisation), so each image is scored alone. The source is shared, not copied.
    """
    layout, delta = model.layout, model.delta
    scorer = Snow(model.source, build_delta(layout, delta.head.out_features, m=list(layout.widths), sigma=0.0,
                                            width_divisor=delta.width_divisor, seed=seed), layout)
    device = next(delta.parameters()).device
    scorer.to(device).eval()
    weights = [pool.weight for pool in scorer.delta.pools]
    totals = [torch.zeros_like(w) for w in weights]
    count = 0
    with torch.autocast(device.type, enabled=False):
        for x, y in batches:
            loss = F.cross_entropy(scorer(x), y, reduction="sum")
            for total, grad in zip(totals, torch.autograd.grad(loss, weights)):
                total += grad
            count += len(y)
    if count == 0:
        raise ValueError("batches is empty: SNIP needs at least one batch of the target's data")
    return [(total * w.detach()).abs().cpu() for total, w in zip(totals, weights)]


def snip_channels(model: Snow, batches, *, seed: int = 0) -> list[torch.Tensor]:
    """The M_j channels with the highest `snip_channel_scores` at each tap (ascending), M_j as `model`'s."""
    return top_channels(model, snip_channel_scores(model, batches, seed=seed))


def top_channels(model: Snow, scores) -> list[torch.Tensor]:
    """The M_j channels with the highest `scores` at each tap (ascending), M_j as `model`'s."""
    return [torch.topk(s, pool.m).indices.sort().values for s, pool in zip(scores, model.delta.pools)]


# ---------------------------------------------------------------------- how a learned selection settles


class SelectionLog:
    """How the learned selection of every pooling layer settles over training.

    Call `step()` after every optimiser step (`snipnb.train.fit`'s `after_step`); `steps` is how
    many there will be. The steps are cut into `windows` equal stretches (fewer if there are fewer
    steps), and for each stretch and tap it keeps:

    - `overlap[i][j]`: the mean over window i's steps of |training draw ∩ top-M of w| / M at tap j,
      w as it was when the draw was made: how much of what the delta trained on is what
      evaluation would have taken at that moment (1 with no noise; M/N for a draw at random);
    - `kept[i][j]`: the share of tap j's M slots that hold the same channel as in the step before
      (the first step, with no step before it, is left out);
    - `settled()[i][j]`: the share of the final evaluation selection that the evaluation selection
      at the end of window i already holds.

    Everything is counted on the device and read once per window. Pinned (fixed) selections are
    refused: they draw nothing.
    """

    def __init__(self, model: Snow | Delta, steps: int, windows: int = 20):
        checks.integer("steps", steps, 1)
        checks.integer("windows", windows, 1)
        self.pools = list(_delta(model).pools)
        if any(pool.fixed for pool in self.pools):
            raise ValueError("a fixed selection draws nothing to log: SelectionLog is for learned selections")
        self.steps, self.windows, self.done = steps, min(windows, steps), 0
        self.window_steps: list[int] = []  # how many steps each window holds
        self.overlap: list[list[float]] = []
        self.kept: list[list[float]] = []
        self.chosen: list[list[torch.Tensor]] = []  # the evaluation selection at the end of each window
        self._top = [self._top_mask(pool) for pool in self.pools]  # what evaluation takes before each draw
        self._previous = [pool.slots.detach().clone() for pool in self.pools]
        self._reset()

    @staticmethod
    def _top_mask(pool: ChannelPooling) -> torch.Tensor:
        mask = torch.zeros(pool.channels, dtype=torch.bool, device=pool.weight.device)
        mask[torch.topk(pool.weight.detach(), pool.m, sorted=False).indices] = True
        return mask

    def _reset(self) -> None:
        device = self.pools[0].weight.device
        self._overlap = torch.zeros(len(self.pools), device=device)
        self._kept = torch.zeros(len(self.pools), device=device)
        self._compared = torch.zeros(len(self.pools), device=device)
        self._count = 0

    def _window(self, step: int) -> int:
        return step * self.windows // self.steps

    def step(self) -> None:
        """Count the draw the step just trained on; call after the optimiser step."""
        if self.done >= self.steps:
            raise RuntimeError(f"SelectionLog was told of {self.steps} steps and has logged them all")
        for j, pool in enumerate(self.pools):
            drawn = pool.slots.detach()
            self._overlap[j] += self._top[j][drawn.clamp(min=0)].sum() * (drawn >= 0).all()
            seen = (self._previous[j] >= 0).all()
            self._kept[j] += (drawn == self._previous[j]).sum() * seen
            self._compared[j] += seen
            self._previous[j] = drawn.clone()
            self._top[j] = self._top_mask(pool)  # w after the step: what the next draw is measured against
        self._count += 1
        self.done += 1
        if self.done == self.steps or self._window(self.done) != self._window(self.done - 1):
            m = torch.tensor([pool.m for pool in self.pools], device=self._overlap.device, dtype=torch.float)
            self.overlap.append((self._overlap / (m * self._count)).tolist())
            self.kept.append(torch.where(self._compared > 0, self._kept / (m * self._compared.clamp(min=1)),
                                         torch.nan).tolist())
            self.chosen.append([torch.topk(pool.weight.detach(), pool.m).indices.cpu() for pool in self.pools])
            self.window_steps.append(self._count)
            self._reset()

    def settled(self) -> list[list[float]]:
        """`settled()[i][j]`: the share of the last window's evaluation selection at tap j that the
        evaluation selection at the end of window i already holds."""
        if not self.chosen:
            return []
        final = [set(c.tolist()) for c in self.chosen[-1]]
        return [[len(final[j] & set(c.tolist())) / len(c) for j, c in enumerate(window)] for window in self.chosen]


# ------------------------------------------------------------------------------------------ counts


def parameter_count(module: nn.Module, trainable: bool | None = None) -> int:
    """Parameters of `module`: all, or only those that (do not) require gradients."""
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)
