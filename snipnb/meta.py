"""The MAML family on `torch.func`: where the inner loop may learn, and who decides.

Every method meta-learns an initialisation θ with an inner loop of `steps` gradient steps on an
episode's support set and an outer loss on its query set (Finn et al. 2017). They differ only in
which parameters the inner loop may move, and by how much:

- `maml`: all of them, by α·∇L. Second order by default (the outer gradient flows through the inner
  gradients); `first_order=True` drops those terms (FOMAML).
- `anil` (Raghu et al. 2020): only the head. `boil` (Oh et al. 2021): only the body, head fixed.
- `sparse_maml` (von Oswald et al. 2021): one meta-learned score m per adapted parameter; the inner
  step is θ' = θ − α·step(m)⊙∇L, step(m) = ½(1 + sign m): 1 where m > 0, 0 where m < 0 (½ at
  exactly 0). Its backward is straight-through, as in the published code (`models.py`:
  `0.5*(BinaryLayer.apply(x) + 1)`, whose sign passes the gradient unchanged): ∂step/∂m = ½ everywhere,
  so a closed score keeps learning and can reopen. The scores' initialisation is `init_scores`'.
- `sparse_relu_maml`: θ' = θ − ReLU(m)⊙∇L, m a per-parameter learning rate starting at α. Also
  straight-through, as the published runs (`--meta_relu_through`): forward ReLU(m), backward ∂/∂m = 1
  everywhere, so a closed rate (m ≤ 0) still gets a meta-gradient and can reopen.
- `snip_maml` (this project's question): on each episode, SNIP saliency |∇L⊙θ| of the conv and
  linear weights on the *support set*, at θ; the inner loop moves only the top (1 − sparsity) of them
  (one threshold over all layers, as SNIP). Its two random controls draw a fresh mask every episode:
  `shuffled_snip_maml` moves as many weights in each layer as SNIP's mask keeps there, at random
  positions (SNIP's choice of layers kept, its choice within a layer shuffled); `uniform_random_maml`
  moves the same fraction (1 − sparsity) of every layer, at least one weight per layer (no SNIP at all).
  Biases always adapt in all three (and BatchNorm parameters where the inner loop adapts them at all),
  under 3% of Conv-4's parameters. No control fixes one random mask for every episode.

`InnerLoop.bn_inner` says whether the inner loop adapts BatchNorm's affine parameters, for every method
alike (ANIL adapts none anyway). The published code adapts them in Conv-4 and keeps them out of the
inner loop of its ResNet-12 runs (`--no_bn_in_inner_loop`); `metarun.MetaRun` picks that per model. Out
of the inner loop they are the same tensors before and after adaptation and learn only in the outer loop.

The inner loop is a function of the parameters (`functional_call`, `grad`), so a meta-batch of tasks
can run as one `vmap` over tasks when the model holds no buffers: on a GPU, by default; on the CPU a
Python loop over tasks is faster (`vectorizes`), and models with BatchNorm running statistics always
loop. BatchNorm uses the statistics of the batch it sees, in the inner loop and on the query set, as
MAML and the published Sparse-MAML code do (there: torchmeta's
`MetaBatchNorm2d(track_running_stats=False)`; here: `BatchStatNorm2d`).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .models import Net

METHODS = ("maml", "anil", "boil", "sparse_maml", "sparse_relu_maml", "snip_maml", "shuffled_snip_maml",
           "uniform_random_maml")
SCORED = ("sparse_maml", "sparse_relu_maml")  # methods that meta-learn a score m per parameter
MASKED = ("snip_maml", "shuffled_snip_maml", "uniform_random_maml")  # inner loop masked afresh per episode
RANDOM_CONTROLS = ("shuffled_snip_maml", "uniform_random_maml")  # SNIP-MAML's controls: random placement
# The old name of shuffled_snip_maml: it was called a random control but kept SNIP's per-layer counts.
RENAMED = {"random_mask_maml": RANDOM_CONTROLS}
MODELS = ("conv4", "resnet12")
SCORE_DISTS = ("kaiming_uniform", "uniform", "constant")  # how init_scores draws Sparse-MAML's scores


def _choice(argument: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")


def check_method(method: str) -> None:
    """A method of `METHODS`; the old name of a renamed one is refused with what replaced it."""
    if method in RENAMED:
        raise ValueError(f"method {method!r} is gone: it kept SNIP's per-layer counts, so it was shuffled SNIP, "
                         f"not a random mask. Its controls are now {' and '.join(map(repr, RENAMED[method]))} "
                         "(same per-layer counts as SNIP; same fraction of every layer)")
    _choice("method", method, METHODS)


# ---------------------------------------------------------------------------------------- models


class BatchStatNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the statistics of the batch it sees (no running
    statistics), as MAML's inner loop does, written out in elementary ops.

    Why not `F.batch_norm`: under `vmap` over tasks its second-order gradient is wrong (torch 2.14:
    the meta-gradient differed from a per-task loop, and from plain autograd, by as much as the
    gradient itself; `tests/test_meta.py` checks the two agree), while the elementary ops batch correctly.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, eps=eps, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centred once, and the per-channel factors folded before they meet the feature map: two
        # full-size ops fewer, which the second-order backward pays again (1.16x a meta-batch on the
        # CPU). Means as sums times 1/n: a mean's backward divides the whole feature map by n, a
        # sum's only expands, and the scaling stays per channel (1.06x more in medians of CPU time;
        # benchmarks/RESULTS.md).
        inv_n = x.shape[1] / x.numel()
        centred = x - x.sum((0, 2, 3), keepdim=True) * inv_n
        var = (centred * centred).sum((0, 2, 3), keepdim=True) * inv_n
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return torch.addcmul(self.bias.view(1, -1, 1, 1), centred, scale)


def conv4(in_channels: int, n_way: int, filters: int = 32, image_size: int = 84) -> Net:
    """The 4-layer ConvNet of Vinyals et al. and MAML: four [3x3 conv, BN, ReLU, 2x2 max-pool] blocks,
    then a linear head on the flattened features (filters x 5 x 5 for 84 px, filters x 1 x 1 for 28)."""
    layers, cin, side = collections.OrderedDict(), in_channels, image_size
    for i in range(1, 5):
        layers[f"conv{i}"] = nn.Conv2d(cin, filters, 3, padding=1)
        layers[f"bn{i}"] = BatchStatNorm2d(filters)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        cin, side = filters, side // 2
    if side < 1:
        raise ValueError(f"image_size must be at least 16 for conv4, got {image_size}")
    layers["flatten"] = nn.Flatten()
    return Net(nn.Sequential(layers), filters * side * side, n_way)


class _ResBlock12(nn.Module):
    """ResNet-12 block: three 3x3 conv-BN-LeakyReLU(0.1) with a 1x1 conv-BN shortcut, then 2x2 max-pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        convs = []
        for i in range(3):
            convs += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                      BatchStatNorm2d(cout)]
            if i < 2:
                convs.append(nn.LeakyReLU(0.1))
        self.convs = nn.Sequential(*convs)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                      BatchStatNorm2d(cout))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.leaky_relu(self.convs(x) + self.shortcut(x), 0.1))


def resnet12(in_channels: int, n_way: int, widths=(64, 160, 320, 640)) -> Net:
    """ResNet-12 of Oreshkin et al. / Lee et al. (MetaOptNet), as in the Sparse-MAML table: four
    residual blocks of widths 64-160-320-640, global average pooling, a linear head."""
    blocks, cin = [], in_channels
    for width in widths:
        blocks.append(_ResBlock12(cin, width))
        cin = width
    return Net(nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin, n_way)


def build(name: str, in_channels: int, n_way: int, image_size: int, filters: int = 32, seed: int = 0) -> Net:
    """Model `name` of `MODELS`, initialised from `seed` without touching the global RNG."""
    _choice("model", name, MODELS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return conv4(in_channels, n_way, filters, image_size) if name == "conv4" else resnet12(in_channels, n_way)


def can_vmap(model: nn.Module) -> bool:
    """Tasks can share one vmap when the forward pass writes no buffer (no BN running statistics)."""
    return not any(True for _ in model.buffers())


def weight_names(model: nn.Module) -> list[str]:
    """Conv and linear weights: what SNIP scores and what the sparsity figures count."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def bn_names(model: nn.Module) -> list[str]:
    """BatchNorm's affine parameters (weight and bias of every BatchNorm layer, shortcuts' included)."""
    return [f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p, value in m.named_parameters(recurse=False) if value is not None]


# ----------------------------------------------------------------------------------- inner loop


@dataclasses.dataclass(frozen=True)
class InnerLoop:
    """How one episode adapts: `steps` of SGD at rate `lr` on the support set."""

    steps: int = 5
    lr: float = 0.1
    first_order: bool = False
    sparsity: float = 0.9  # snip_maml and its controls: the fraction of weights held fixed
    bn_inner: bool = True  # False: BatchNorm's affine parameters stay out of the inner loop (every method)


def adapted_names(model: nn.Module, method: str, bn_inner: bool = True) -> list[str]:
    """The parameters `method`'s inner loop may move: the head for ANIL, the body for BOIL, else all;
    without BatchNorm's affine parameters unless `bn_inner`."""
    check_method(method)
    held = set() if bn_inner else set(bn_names(model))
    names = [n for n, _ in model.named_parameters() if n not in held]
    if method == "anil":
        return [n for n in names if n.startswith("head.")]
    if method == "boil":
        return [n for n in names if not n.startswith("head.")]
    return names


def init_scores(model: nn.Module, method: str, lr: float, score_init: float, dist: str = "constant",
                bn_inner: bool = True, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The meta-learned scores m, one per parameter the inner loop adapts; none for unscored methods.

    sparse_relu_maml: m = α = `lr` everywhere, so it starts as MAML (the published `--meta_constant_init`).
    sparse_maml, by `dist` (one of `SCORE_DISTS`), as the published `GradientMask`:
    - "kaiming_uniform" (their `--kaiming_init`, used for Conv-4): conv and linear weights' scores
      ~ U(−b, b), b = √(6 / fan_in) (PyTorch's `kaiming_uniform_` with its defaults); 1-d tensors
      (biases, BatchNorm) ~ U(−½, ½);
    - "uniform" (their default, used for ResNet-12): every score ~ U(−½, ½);
    then each tensor is shifted to mean exactly `score_init` (their `init_shift`, 0 in every published
    run), so about half the scores start closed;
    - "constant": every score is `score_init` (this library's first choice, +0.01: all open, as MAML).
    `generator` draws the random ones (the global RNG if None).
    """
    _choice("dist", dist, SCORE_DISTS)
    if method not in SCORED:
        return {}
    params = dict(model.named_parameters())
    names = adapted_names(model, method, bn_inner)
    if method == "sparse_relu_maml" or dist == "constant":
        value = score_init if method == "sparse_maml" else lr
        return {n: torch.full_like(params[n], value).requires_grad_() for n in names}
    scores = {}
    for n in names:
        shape = params[n].shape
        bound = 0.5
        if dist == "kaiming_uniform" and len(shape) > 1:
            bound = math.sqrt(6 / (shape[1] * math.prod(shape[2:])))
        draw = (2 * torch.rand(shape, generator=generator) - 1) * bound
        scores[n] = (draw - draw.mean() + score_init).to(params[n]).requires_grad_()
    return scores


def step_gate(m: torch.Tensor) -> torch.Tensor:
    """Sparse-MAML's gate as published: ½(1 + sign m) forward (1 open, 0 closed, ½ at exactly 0), and
    a straight-through backward through the sign, so ∂gate/∂m = ½ everywhere."""
    return 0.5 * (torch.sign(m).detach() + 1 + (m - m.detach()))


def relu_through(m: torch.Tensor) -> torch.Tensor:
    """sparse-ReLU-MAML's learning rate as published: ReLU(m) forward, identity backward (∂/∂m = 1
    everywhere), so a rate closed at m ≤ 0 still learns and can reopen."""
    return m + (F.relu(m) - m).detach()


def saliency_mask(grads: dict, params: dict, names: list[str], sparsity: float) -> dict[str, torch.Tensor]:
    """SNIP's mask: the top (1 - sparsity) of |g ⊙ θ| over all `names` at once (vmap-safe)."""
    saliency = {n: (grads[n] * params[n]).abs().detach() for n in names}
    flat = torch.cat([s.flatten() for s in saliency.values()])
    keep = max(1, round((1 - sparsity) * flat.numel()))
    threshold = torch.topk(flat, keep).values[-1]
    return {n: (s >= threshold).to(s.dtype) for n, s in saliency.items()}


def _smallest(noise: torch.Tensor, count) -> torch.Tensor:
    """1 at the `count` positions of the smallest `noise`, else 0 (`count` may be a tensor: vmap-safe)."""
    rank = noise.flatten().argsort().argsort()
    return (rank < count).view(noise.shape)


def matched_random_mask(mask: dict, noise: dict) -> dict[str, torch.Tensor]:
    """shuffled_snip_maml's mask: as many kept entries per layer as `mask`, at the positions of the
    smallest `noise` (vmap-safe)."""
    return {n: _smallest(noise[n], m.sum()).to(m.dtype) for n, m in mask.items()}


def uniform_counts(sizes: dict, sparsity: float) -> dict[str, int]:
    """uniform_random_maml's kept weights per layer: the fraction 1 − `sparsity` of each layer's
    `sizes[n]` entries, rounded, and at least one, so that no layer is shut out of the inner loop."""
    return {n: max(1, round((1 - sparsity) * size)) for n, size in sizes.items()}


def uniform_random_mask(noise: dict, sparsity: float) -> dict[str, torch.Tensor]:
    """uniform_random_maml's mask: `uniform_counts` of each layer at the positions of its smallest
    `noise` (vmap-safe)."""
    counts = uniform_counts({n: v.numel() for n, v in noise.items()}, sparsity)
    return {n: _smallest(v, counts[n]).to(v.dtype) for n, v in noise.items()}


def adapt(model: nn.Module, method: str, params: dict, scores: dict, x: torch.Tensor, y: torch.Tensor,
          inner: InnerLoop, noise: dict | None = None) -> dict[str, torch.Tensor]:
    """θ' after `inner.steps` steps of `method` on (x, y), as a function of θ (and m) that autograd
    differentiates; the parameters `method` does not adapt are returned as the same tensors."""
    names = adapted_names(model, method, inner.bn_inner)
    fixed = {n: p for n, p in params.items() if n not in names}
    fast = {n: params[n] for n in names}

    def support_loss(moving):
        return F.cross_entropy(functional_call(model, {**fixed, **moving}, (x,)), y)

    masks = None
    for step in range(inner.steps):
        grads = grad(support_loss)(fast)
        if inner.first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        if method == "uniform_random_maml" and step == 0:
            masks = uniform_random_mask({n: noise[n] for n in weight_names(model)}, inner.sparsity)
        elif method in MASKED and step == 0:
            # The first step's gradient is the support-set gradient at θ: exactly what SNIP scores.
            masks = saliency_mask(grads, fast, weight_names(model), inner.sparsity)
            if method == "shuffled_snip_maml":
                masks = matched_random_mask(masks, noise)
        if method == "sparse_maml":
            fast = {n: fast[n] - inner.lr * step_gate(scores[n]) * grads[n] for n in names}
        elif method == "sparse_relu_maml":
            fast = {n: fast[n] - relu_through(scores[n]) * grads[n] for n in names}
        elif masks is not None:
            fast = {n: fast[n] - inner.lr * (masks[n] * grads[n] if n in masks else grads[n]) for n in names}
        else:
            fast = {n: fast[n] - inner.lr * grads[n] for n in names}
    return {**fixed, **fast}


def episode_loss(model, method, params, scores, support_x, support_y, query_x, query_y, inner, noise=None):
    """(query loss, query accuracy) of one episode after adapting on its support set."""
    fast = adapt(model, method, params, scores, support_x, support_y, inner, noise)
    logits = functional_call(model, fast, (query_x,))
    return F.cross_entropy(logits, query_y), (logits.argmax(-1) == query_y).float().mean()


def mask_noise(model: nn.Module, method: str, tasks: int, generator: torch.Generator, device) -> dict:
    """The random numbers SNIP-MAML's random controls place their kept weights by, one draw per task (seeded)."""
    if method not in RANDOM_CONTROLS:
        return {}
    shapes = dict(model.named_parameters())
    return {n: torch.rand(tasks, *shapes[n].shape, generator=generator).to(device) for n in weight_names(model)}


def vectorizes(device) -> bool:
    """Whether a meta-batch runs its tasks as one vmap by default on `device`: on a GPU, where one
    small task at a time leaves it idle; not on the CPU, where a Python loop over the tasks is
    1.2-1.4x faster (a vmapped convolution with per-task weights turns grouped; benchmarks/RESULTS.md)."""
    return torch.device(device).type != "cpu"


def meta_batch_loss(model, method, params, scores, batch, inner: InnerLoop, noise: dict | None = None,
                    vectorize: bool | None = None):
    """Per-task (query loss, query accuracy) of a meta-batch (an `Episode` with a task dimension).

    `vectorize` runs the tasks as one vmap (if the model allows it), else as a Python loop; None: as
    `vectorizes` says for the batch's device. Both give the same numbers up to float rounding.
    """
    noise = noise or {}
    inputs = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    if vectorize is None:
        vectorize = vectorizes(batch.support_x.device)

    def one_task(sx, sy, qx, qy, task_noise):
        return episode_loss(model, method, params, scores, sx, sy, qx, qy, inner, task_noise)

    if vectorize and can_vmap(model):
        return vmap(one_task)(*inputs, noise)
    results = [one_task(*(t[i] for t in inputs), {n: v[i] for n, v in noise.items()})
               for i in range(len(batch.support_x))]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


def evaluate(model, method, params, scores, sampler, episodes: int, inner: InnerLoop, tasks_per_call: int = 5,
             seed: int = 0, vectorize: bool | None = None) -> torch.Tensor:
    """Query accuracy of each of `episodes` episodes from `sampler`, adapted with `inner` (first order:
    the adapted weights are the same, and no outer gradient is needed)."""
    params = {n: p.detach() for n, p in params.items()}
    scores = {n: s.detach() for n, s in scores.items()}
    inner = dataclasses.replace(inner, first_order=True)
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    with torch.no_grad():  # no outer graph; torch.func.grad still differentiates the inner loop
        for start in range(0, episodes, tasks_per_call):
            batch = sampler.sample(min(tasks_per_call, episodes - start))
            noise = mask_noise(model, method, len(batch.support_x), generator, batch.support_x.device)
            accuracies.append(meta_batch_loss(model, method, params, scores, batch, inner, noise, vectorize)[1])
    return torch.cat(accuracies)


# ---------------------------------------------------------------------------- learned sparsity


def score_density(scores: dict, names: list[str]) -> dict[str, float]:
    """Fraction of entries with m > 0 (the parameters the inner loop may move), per name; {} without scores."""
    return {n: float((scores[n] > 0).float().mean()) for n in names if n in scores}


def snip_masks_like(model, params, batch, names: list[str], density: float) -> dict[str, torch.Tensor]:
    """SNIP's mask on each episode's support set at `params`, at global `density` (one mask per task)."""
    params = {n: p.detach() for n, p in params.items()}

    def one(sx, sy):
        def loss(weights):
            return F.cross_entropy(functional_call(model, {**params, **weights}, (sx,)), sy)

        grads = grad(loss)({n: params[n] for n in names})
        return saliency_mask(grads, params, names, 1 - density)

    if can_vmap(model):
        return vmap(one)(batch.support_x, batch.support_y)
    masks = [one(sx, sy) for sx, sy in zip(batch.support_x, batch.support_y)]
    return {n: torch.stack([m[n] for m in masks]) for n in names}


def jaccard(a: dict, b: dict, mask_dims: int | None = None) -> torch.Tensor:
    """|A ∩ B| / |A ∪ B| of two masks, over all names. The leading dimensions of `b` that `a` lacks index
    masks (a task dimension in `b` gives one overlap per task); `mask_dims` says how many leading
    dimensions index masks where both sides have them (`consecutive_jaccard`)."""
    def kept(combine) -> torch.Tensor:
        total = 0
        for n in a:
            start = b[n].dim() - a[n].dim() if mask_dims is None else mask_dims
            total = total + combine(a[n].bool(), b[n].bool()).flatten(start_dim=start).sum(-1)
        return total

    return kept(torch.logical_and).float() / kept(torch.logical_or).clamp(min=1).float()


def layer_chance_jaccard(counts_a: dict, counts_b: dict, sizes: dict) -> torch.Tensor:
    """The overlap two masks have by chance when only their per-layer counts are given: in layer n of
    `sizes[n]` entries, A keeps `counts_a[n]` and B `counts_b[n]`, each at uniformly random positions
    (or one mask fixed and the other random: the same expectations). Counts may be tensors with leading
    dimensions (one per episode, say); the result has those dimensions.

    Layer structure alone raises the overlap above a uniform mask's d / (2 − d): two masks that both
    keep most of a small layer share much of it, whatever they pick inside it. So the overlap of two
    methods' masks is judged against this, not against a uniform mask of their overall density.

    It is E|A ∩ B| / E|A ∪ B| = Σ a·b/n / Σ (a + b − a·b/n), a ratio of expectations, not the expected
    Jaccard E[|A ∩ B| / |A ∪ B|]; the two agree closely when the masks keep many weights (the ratio's
    spread is small) and may differ by a few thousandths on tiny ones. NaN where both masks are empty.
    """
    shared = sum(torch.as_tensor(counts_a[n], dtype=torch.float64) * torch.as_tensor(counts_b[n], dtype=torch.float64)
                 / sizes[n] for n in sizes)
    either = sum(torch.as_tensor(counts_a[n], dtype=torch.float64) + torch.as_tensor(counts_b[n], dtype=torch.float64)
                 for n in sizes) - shared
    return torch.where(either > 0, shared / either.clamp(min=1e-12), torch.full_like(either, math.nan))


def consecutive_jaccard(masks: dict) -> torch.Tensor:
    """Jaccard of each episode's mask with the next one's: `masks` hold one mask per episode along
    their first dimension (as `snip_masks_like` returns them); E − 1 values for E episodes."""
    return jaccard({n: m[:-1] for n, m in masks.items()}, {n: m[1:] for n, m in masks.items()}, mask_dims=1)
