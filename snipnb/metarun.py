"""Learning where to learn: one meta-learning run per `MetaRun` (notebook 06).

A run meta-trains one method of `meta.METHODS` on the meta-train classes of a dataset, checks it on a
fixed set of meta-validation episodes every `eval_every` iterations, keeps the checkpoint that did
best there, and tests that checkpoint on `test_episodes` meta-test episodes. The episodes of a split
depend on the seed only, so every method of one seed meets the same validation and test episodes
(the paired comparison), and methods differ in nothing but how their inner loop learns.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from tqdm import tqdm

from . import meta, meta_data, published, stats

# Classes per split (train, val, test) and the smallest class, to check a run when it is made; the
# loaded data are checked again before a run. Omniglot's val/test class counts depend on `val_alphabets`
# and are checked on the data only; every Omniglot character has 20 drawings.
SPLIT_SHAPES = {
    "mnist_rotations": ((24, 8, 8), 5421),
    "omniglot": (None, 20),
    "cifar_fs": ((64, 16, 20), 600),
    "mini_imagenet": ((64, 16, 20), 600),
    "synthetic": ((10, 5, 5), 30),
}


# What the published Sparse-MAML runs do, per model (von Oswald et al. 2021, github.com/Johswald/
# learning_where_to_learn: run_sparse_MAML.sh's commands, train.py's optimizer_mask and inner_loop_params,
# models.py's GradientMask): Conv-4 runs draw the scores with `--kaiming_init`, train them with their own
# Adam (`--optimizer_mask` default) at `--mask_lr=0.0075` and adapt BatchNorm in the inner loop; ResNet-12
# runs draw them U(-1/2, 1/2), use Adam at `--mask_lr=0.01` and pass `--no_bn_in_inner_loop`. Both centre
# the scores on `--init_shift` (default 0). No Conv-4 sparse-ReLU-MAML run is published: it takes the
# Conv-4 mask_lr here; its rates start at α (`--meta_constant_init`) whatever the model.
PUBLISHED = {"conv4": {"score_dist": "kaiming_uniform", "mask_lr": 0.0075, "bn_inner": True},
             "resnet12": {"score_dist": "uniform", "mask_lr": 0.01, "bn_inner": False}}
MASK_OPTIMIZERS = ("adam", "sgd")
SCORE_SEED = 1_000_003  # the scores' stream is seed + this: apart from the model's, which `seed` draws
# The random controls' placement noise: one stream per seed and purpose (`noise_seed`), under this key.
# Drawn from `seed` itself, its first draw repeated the model's initialisation (torch.rand from the same
# state as the init's uniform draws): the control's first mask was the largest initial weights of conv1.
NOISE_SEED = 2_000_003
NOISE_PURPOSES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class MetaRun:
    """Every setting that changes a result of one meta-learning run."""

    method: str = "maml"
    dataset: str = "mnist_rotations"
    model: str = "conv4"
    filters: int = 32  # conv4 width (MAML: 32 on mini-ImageNet, 64 on Omniglot)
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 15
    inner_steps: int = 5
    eval_inner_steps: int | None = None  # inner steps at validation and test; None: inner_steps
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    meta_batch: int = 4
    iterations: int = 1000
    first_order: bool = False
    sparsity: float = 0.9  # snip_maml and its random controls: fraction of weights the inner loop leaves fixed
    # Sparse-MAML's scores, the published way by default (`PUBLISHED`, per model); None: as published.
    # score_dist="constant", score_init=0.01, mask_lr=outer_lr, bn_inner=True is this library's first choice.
    score_dist: str | None = None  # sparse_maml: one of meta.SCORE_DISTS (kaiming_uniform, uniform, constant)
    score_init: float = 0.0  # sparse_maml: the mean of the initial scores ("constant": their value)
    mask_optimizer: str = "adam"  # scored methods: the scores' own optimiser, "adam" or "sgd" (momentum 0.9, Nesterov)
    mask_lr: float | None = None  # scored methods: its learning rate
    bn_inner: bool | None = None  # every method: the inner loop adapts BatchNorm's affine parameters
    eval_every: int = 100
    val_episodes: int = 100
    test_episodes: int = 600
    seed: int = 0
    synthetic_shape: tuple = (1, 28)  # (channels, image size) when dataset is synthetic

    def __post_init__(self):
        meta.check_method(self.method)
        meta._choice("dataset", self.dataset, meta_data.DATASETS)
        meta._choice("model", self.model, meta.MODELS)
        for name in ("filters", "n_way", "k_shot", "q_query", "inner_steps", "meta_batch", "iterations",
                     "eval_every", "val_episodes", "test_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.eval_inner_steps is not None and self.eval_inner_steps < 1:
            raise ValueError(f"eval_inner_steps must be None or a positive int, got {self.eval_inner_steps!r}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.inner_lr <= 0 or self.outer_lr <= 0:
            raise ValueError(f"inner_lr and outer_lr must be positive, got {self.inner_lr} and {self.outer_lr}")
        if self.score_dist is not None:
            meta._choice("score_dist", self.score_dist, meta.SCORE_DISTS)
        meta._choice("mask_optimizer", self.mask_optimizer, MASK_OPTIMIZERS)
        if self.mask_lr is not None and not self.mask_lr > 0:
            raise ValueError(f"mask_lr must be None (as published) or positive, got {self.mask_lr!r}")
        if self.bn_inner is not None and not isinstance(self.bn_inner, bool):
            raise ValueError(f"bn_inner must be None (as published), True or False, got {self.bn_inner!r}")
        (classes, smallest) = SPLIT_SHAPES[self.dataset]
        for split, count in zip(meta_data.SPLITS, classes or ()):
            if self.n_way > count:
                raise ValueError(f"n_way={self.n_way} is larger than the {count} classes of {self.dataset}'s "
                                 f"meta-{split} split")
        if self.k_shot + self.q_query > smallest:
            raise ValueError(f"k_shot + q_query = {self.k_shot + self.q_query} is larger than the smallest "
                             f"class of {self.dataset} ({smallest} images)")

    def setting(self, name: str):
        """Field `name`, or what the published runs use for this model where it is None (`PUBLISHED`)."""
        value = getattr(self, name)
        return PUBLISHED[self.model][name] if value is None else value

    @property
    def inner(self) -> meta.InnerLoop:
        return meta.InnerLoop(self.inner_steps, self.inner_lr, self.first_order, self.sparsity,
                              self.setting("bn_inner"))

    @property
    def eval_inner(self) -> meta.InnerLoop:
        return dataclasses.replace(self.inner, steps=self.eval_inner_steps or self.inner_steps)


def _splits(run: MetaRun) -> meta_data.MetaSplits:
    splits = meta_data.load_cached(run.dataset, run.synthetic_shape)
    for split in meta_data.SPLITS:  # the real data, checked as well as the table above
        meta_data.check_episode_shape(splits[split], run.n_way, run.k_shot, run.q_query, f"meta-{split}")
    return splits


def _sampler(run, splits, split, device, seed_offset=0):
    return meta_data.EpisodeSampler(splits[split], run.n_way, run.k_shot, run.q_query, run.seed + seed_offset,
                                    device, f"meta-{split}")


def initial_scores(run: MetaRun, model, device=None) -> dict[str, torch.Tensor]:
    """The scores `run` starts from (leaves on `device`), drawn from a stream of their own (seed + SCORE_SEED)."""
    generator = torch.Generator().manual_seed(run.seed + SCORE_SEED)
    scores = meta.init_scores(model, run.method, run.inner_lr, run.score_init, run.setting("score_dist"),
                              run.setting("bn_inner"), generator)
    return {n: s.to(device or "cpu").detach().requires_grad_() for n, s in scores.items()}


def noise_seed(seed: int, purpose: str) -> int:
    """The seed of the random controls' placement noise for run seed `seed` and `purpose` (one of
    `NOISE_PURPOSES`), from numpy's SeedSequence of (NOISE_SEED, seed, purpose): no two (seed, purpose)
    share a stream. Sums did: with seed + NOISE_SEED for training and validation and + 1 for test,
    validation repeated training's draws and seed s's test masks were seed s + 1's training masks."""
    meta._choice("purpose", purpose, NOISE_PURPOSES)
    entropy = [NOISE_SEED, seed, NOISE_PURPOSES.index(purpose)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def noise_stream(run: MetaRun, purpose: str) -> torch.Generator:
    """The generator the random controls draw their placement noise from for `purpose` (`noise_seed`)."""
    return torch.Generator().manual_seed(noise_seed(run.seed, purpose))


def meta_optimizers(run: MetaRun, params: dict, scores: dict) -> list[torch.optim.Optimizer]:
    """The outer loop's optimisers: Adam at `outer_lr` for θ, and the scores' own (`mask_optimizer` at
    `mask_lr`), as the published code has `optimizer_theta` and `optimizer_mask`."""
    optimizers = [torch.optim.Adam(params.values(), lr=run.outer_lr)]
    if scores:
        lr = run.setting("mask_lr")
        optimizers.append(torch.optim.Adam(scores.values(), lr=lr) if run.mask_optimizer == "adam" else
                          torch.optim.SGD(scores.values(), lr=lr, momentum=0.9, nesterov=True))
    return optimizers


def meta_train(run: MetaRun, device=None, progress: bool = False):
    """Meta-train `run`; return (model, best params, best scores, history rows, best val accuracy, best step)."""
    device = torch.device(device or "cpu")
    splits = _splits(run)
    channels, size = splits.train.images.shape[1], splits.train.images.shape[-1]
    model = meta.build(run.model, channels, run.n_way, size, run.filters, run.seed).to(device)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    scores = initial_scores(run, model, device)
    optimizers = meta_optimizers(run, params, scores)
    train = _sampler(run, splits, "train", device)
    noise_generator = noise_stream(run, "train")
    history, best = [], (-1.0, 0, None, None)
    train_acc, window = torch.zeros((), device=device), 0  # summed on the device: no host sync per step

    def validate(iteration):
        nonlocal best
        val = meta.evaluate(model, run.method, params, scores, _sampler(run, splits, "val", device, 10_000),
                            run.val_episodes, run.eval_inner, seed=noise_seed(run.seed, "val")).mean().item()
        row = {"iteration": iteration, "val_acc": 100 * val}
        if window:  # mean query accuracy of the meta-training tasks since the last validation
            row["train_acc"] = 100 * train_acc.item() / window
        row.update({f"density:{n}": d for n, d in meta.score_density(scores, meta.weight_names(model)).items()})
        history.append(row)
        if val > best[0]:
            best = (val, iteration, {n: p.detach().clone() for n, p in params.items()},
                    {n: s.detach().clone() for n, s in scores.items()})

    validate(0)
    for iteration in tqdm(range(1, run.iterations + 1), desc=run.method, disable=not progress):
        batch = train.sample(run.meta_batch)
        noise = meta.mask_noise(model, run.method, run.meta_batch, noise_generator, device)
        losses, accuracies = meta.meta_batch_loss(model, run.method, params, scores, batch, run.inner, noise)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        for optimizer in optimizers:
            optimizer.step()
        train_acc += accuracies.detach().mean()
        window += 1
        if iteration % run.eval_every == 0 or iteration == run.iterations:
            validate(iteration)
            train_acc.zero_()
            window = 0
    val, step, best_params, best_scores = best
    return model, best_params, best_scores, history, val, step


def run_meta(run: MetaRun, device=None, progress: bool = False) -> dict:
    """Meta-train, choose the checkpoint on meta-validation, test it; a flat dict of numbers.

    - `test_acc`, `test_ci95`: mean query accuracy (%) over `test_episodes` meta-test episodes and the
      half-width of its 95% normal interval (1.96 standard errors), as the few-shot literature reports.
    - `val_acc`, `best_iteration`: the chosen checkpoint. `val_acc@<i>`, `train_acc@<i>`: the curves.
    - Scored methods: `density:<weight>` (fraction with m > 0) at the checkpoint, `density:<weight>@<i>`
      over meta-training, `density` over all weights; `snip_jaccard`, the mean overlap of the learned
      mask with SNIP's mask at the same density on each test episode's support set;
      `layer_chance_jaccard`, the overlap they would have by chance given each one's per-layer counts
      (what to judge `snip_jaccard` against), and `chance_jaccard`, a uniform mask's at that density.
      The three are NaN when every learned score is closed (no mask to compare).
    - snip_maml: `snip_episode_jaccard`, `shuffled_chance_jaccard`, `uniform_chance_jaccard`: how much
      SNIP's mask stays the same from one test episode to the next, beside what its controls' fresh
      draws share by chance (`snip_stability_report`).
    """
    device = torch.device(device or "cpu")
    model, params, scores, history, val, step = meta_train(run, device, progress)
    splits = _splits(run)
    test = meta.evaluate(model, run.method, params, scores, _sampler(run, splits, "test", device, 20_000),
                         run.test_episodes, run.eval_inner, seed=noise_seed(run.seed, "test"))
    result = {"test_acc": 100 * test.mean().item(),
              "test_ci95": 100 * 1.96 * test.std().item() / math.sqrt(len(test)) if len(test) > 1 else math.nan,
              "val_acc": 100 * val, "best_iteration": step}
    for row in history:
        result.update({f"{key}@{row['iteration']}": value for key, value in row.items() if key != "iteration"
                       and (run.method in meta.SCORED or not key.startswith("density"))})
    if run.method in meta.SCORED:
        result.update(learned_mask_report(run, model, params, scores, splits, device))
    if run.method == "snip_maml":
        result.update(snip_stability_report(run, model, params, splits, device))
    return result


def uniform_chance_overlap(model, sparsity: float) -> float:
    """What two of uniform_random_maml's masks share by chance: `meta.layer_chance_jaccard` of the
    counts it keeps per layer (`meta.uniform_counts`). Not d / (2 − d) at the global density d = 1 −
    sparsity: rounding and the one weight every layer keeps make a small layer's fraction larger than d
    (at sparsity 0.99, a 36-weight conv1 keeps 1 of 36, not 0.36), which raises the overlap."""
    params = dict(model.named_parameters())
    sizes = {n: params[n].numel() for n in meta.weight_names(model)}
    counts = meta.uniform_counts(sizes, sparsity)
    return float(meta.layer_chance_jaccard(counts, counts, sizes))


def snip_stability_report(run, model, params, splits, device, episodes: int = 100) -> dict:
    """How much SNIP-MAML's mask stays the same from one meta-test episode to the next, at the chosen
    checkpoint, beside what its controls' fresh draws share by chance.

    - `snip_episode_jaccard`: mean Jaccard of SNIP's mask (at `run.sparsity`, on the support set) on
      each of `episodes` test episodes with the next episode's;
    - `shuffled_chance_jaccard`: what two shuffled-SNIP masks with those episodes' per-layer counts
      share by chance (`meta.layer_chance_jaccard`, mean over the consecutive pairs);
    - `uniform_chance_jaccard`: what two uniform-random masks share by chance (`uniform_chance_overlap`).
    A mask far more stable than its controls' is a second difference between SNIP-MAML and them, beside
    the choice of weights; a fixed random mask, which would separate the two, is not run.
    """
    names = meta.weight_names(model)
    batch = _sampler(run, splits, "test", device, 20_000).sample(episodes)
    snip = meta.snip_masks_like(model, params, batch, names, 1 - run.sparsity)
    counts = {n: m.flatten(1).sum(1) for n, m in snip.items()}
    sizes = {n: m[0].numel() for n, m in snip.items()}
    shuffled = meta.layer_chance_jaccard({n: c[:-1] for n, c in counts.items()},
                                         {n: c[1:] for n, c in counts.items()}, sizes)
    return {"snip_episode_jaccard": meta.consecutive_jaccard(snip).mean().item(),
            "shuffled_chance_jaccard": shuffled.mean().item(),
            "uniform_chance_jaccard": uniform_chance_overlap(model, run.sparsity)}


def learned_mask_report(run, model, params, scores, splits, device, episodes: int = 100) -> dict:
    """Per-weight density of m > 0, and its overlap with SNIP's per-episode mask at the same density,
    beside the overlap their per-layer counts alone give (`meta.layer_chance_jaccard`)."""
    names = meta.weight_names(model)
    density = meta.score_density(scores, names)
    learned = {n: scores[n] > 0 for n in names}
    total = sum(m.numel() for m in learned.values())
    overall = sum(int(m.sum()) for m in learned.values()) / total
    report = {f"density:{n}": d for n, d in density.items()}
    report["density"] = overall
    if overall == 0:  # every score closed: no learned mask, so no overlap and no chance overlap either
        return {**report, "snip_jaccard": math.nan, "layer_chance_jaccard": math.nan, "chance_jaccard": math.nan}
    batch = _sampler(run, splits, "test", device, 20_000).sample(episodes)
    snip = meta.snip_masks_like(model, params, batch, names, overall)
    report["snip_jaccard"] = meta.jaccard(learned, snip).mean().item()
    sizes = {n: learned[n].numel() for n in names}
    report["layer_chance_jaccard"] = meta.layer_chance_jaccard(
        {n: learned[n].sum() for n in names}, {n: snip[n].flatten(1).sum(1) for n in names}, sizes).mean().item()
    report["chance_jaccard"] = overall / (2 - overall)  # E|A∩R| / E|A∪R| for R uniform at A's density
    for n in names:
        report[f"snip_density:{n}"] = snip[n].float().mean().item()
    return report


OVERLAP_COLUMNS = ("snip_jaccard", "layer_chance_jaccard", "chance_jaccard")  # learned_mask_report's overlap


class OlderRecordsError(ValueError):
    """Records made by older library code lack a number the chapter now reads."""


def check_overlap_recorded(rows) -> None:
    """Raise `OlderRecordsError` if a Sparse-MAML record with a learned mask (density > 0) lacks one of
    `OVERLAP_COLUMNS`: `layer_chance_jaccard` came later than the others, so older code's records have
    no chance level to judge their overlap against (a column absent from every record, or NaN in some)."""
    opened = rows[rows.density > 0]
    for column in OVERLAP_COLUMNS:
        lacking = opened.seed.tolist() if column not in rows else opened.seed[opened[column].isna()].tolist()
        if lacking:
            raise OlderRecordsError(f"the Sparse-MAML records of seeds {lacking} have a learned mask but no "
                                    f"{column}: older library code made them; rerun them to judge the overlap")


def learned_overlap_line(rows) -> str:
    """One exploratory Markdown line on Sparse-MAML's runs (`rows`, one per seed): how much of the
    network its learned mask adapts, and whether SNIP's mask overlaps it more than their per-layer counts
    alone would (`snip_jaccard` − `layer_chance_jaccard`, t interval over the seeds that have a mask: a
    density above 0). Records from older code without those numbers: `OlderRecordsError`."""
    check_overlap_recorded(rows)
    density = rows.density.mean()
    if density > 0.999:
        return ("- **Learned sparsity:** none emerged (every score is still above zero at the chosen checkpoint), "
                "so there is no learned mask to compare with SNIP's.")
    compared = rows[rows.density > 0]
    closed = len(rows) - len(compared)
    closed_note = f" On {closed} of {len(rows)} seeds every score closed: no mask, left out." if closed else ""
    if not len(compared):
        return (f"- **Learned sparsity:** every learned score closed at the chosen checkpoint on all {len(rows)} "
                "seeds: Sparse-MAML's inner loop adapts no conv or linear weight, and there is no mask to compare "
                "with SNIP's.")
    j, chance, uniform = (compared[c].mean() for c in OVERLAP_COLUMNS)
    _, low, high = stats.t_interval(compared.snip_jaccard - compared.layer_chance_jaccard)
    span = f"[{low:+.3f}, {high:+.3f}] over {len(compared)} seeds" if len(compared) > 1 else "on one seed"
    if math.isnan(low):
        call = "one seed, no interval"
    else:
        call = ("more than their per-layer counts give by chance" if low > 0 else
                "less than their per-layer counts give by chance" if high < 0 else
                "a difference from what their per-layer counts give by chance is not detected at this power")
    return (f"- **Learned sparsity:** Sparse-MAML adapts {density:.1%} of the conv and linear weights at its chosen "
            f"checkpoint (mean over seeds). SNIP's mask at that density overlaps the learned one with Jaccard {j:.3f}, "
            f"against {chance:.3f} for masks with the same per-layer counts at random places within each layer "
            f"(difference {j - chance:+.3f} {span}): {call}. "
            f"A uniform random mask of that density would share {uniform:.3f}: the difference between the two chance "
            f"levels is what the layer counts alone give.{closed_note}")


def mask_stability_line(rows) -> str:
    """One exploratory Markdown line on SNIP-MAML's runs (`rows`, one per seed): how much its mask stays
    the same from one test episode to the next, beside what its controls' fresh masks share by chance.
    The verdict is a paired t interval over seeds of each seed's excess over the larger of its two chance
    levels; one seed gives no interval and no verdict."""
    same, shuffled, uniform = (rows[c].mean() for c in
                               ("snip_episode_jaccard", "shuffled_chance_jaccard", "uniform_chance_jaccard"))
    chance = rows[["shuffled_chance_jaccard", "uniform_chance_jaccard"]].max(axis=1)
    excess = (rows.snip_episode_jaccard - chance).dropna()
    mean, low, high = stats.t_interval(excess)
    if math.isnan(low):
        span, call = "on one seed", "one seed, no interval"
    else:
        span = f"[{low:+.3f}, {high:+.3f}] over {len(excess)} seeds"
        call = ("so SNIP-MAML differs from its controls in how stable its mask is from episode to episode as well "
                "as in which weights it picks" if low > 0 else
                "so SNIP's consecutive masks share less than the controls' fresh draws do by chance" if high < 0 else
                "SNIP's mask is not detectably more stable than the controls' fresh draws")
    return (f"- **How fixed is SNIP's mask?** SNIP-MAML's masks on consecutive test episodes overlap with Jaccard "
            f"{same:.3f} (mean over seeds). Its controls draw a fresh mask every episode: two shuffled-SNIP masks "
            f"share {shuffled:.3f} by chance, two uniform-random masks {uniform:.3f}. SNIP's overlap minus the "
            f"larger of its seed's two chance levels: {mean:+.3f} {span}; {call}; a fixed random mask, the same on "
            "every episode, which would tell stability from choice, is not run.")


def protocol_table(run: MetaRun):
    """This run's settings beside the published protocols of `published.META_PROTOCOLS`, one row per
    setting; a value a source does not state shows as "not stated" (never NaN)."""
    import pandas as pd

    fields = list(next(iter(published.META_PROTOCOLS.values())))
    ours = {f: getattr(run, f) for f in fields}
    ours["eval_inner_steps"] = run.eval_inner_steps or run.inner_steps
    columns = {"this run": ours, **published.META_PROTOCOLS}
    return pd.DataFrame({name: ["not stated" if values[f] is None else str(values[f]) for f in fields]
                         for name, values in columns.items()}, index=fields)


def grid(methods, seeds: int, **settings) -> list[MetaRun]:
    """Every method once per seed; `settings` are the other `MetaRun` fields, shared by all runs."""
    return [MetaRun(method=method, seed=seed, **settings) for seed in range(seeds) for method in methods]


def history_table(results, prefix: str):
    """Long table (method, seed, k_shot, iteration, layer, value) of the `<prefix>[:<layer>]@<i>` columns."""
    columns = [c for c in results.columns if c.startswith(prefix) and "@" in c
               and c.split("@")[0].split(":")[0] == prefix]
    long = results.melt(id_vars=[c for c in ("method", "seed", "k_shot") if c in results],
                        value_vars=columns, var_name="key").dropna(subset=["value"])
    parts = long.pop("key").str.rsplit("@", n=1)
    long["iteration"] = parts.str[1].astype(int)
    long["layer"] = parts.str[0].str.partition(":")[2].replace("", None)
    return long
