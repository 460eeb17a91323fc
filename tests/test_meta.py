"""The MAML family, its episodes and its runs, on tiny models and made-up data (seconds in all)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from snipnb import data, meta, meta_data, metarun, pruning, stats
from snipnb.meta_data import EpisodeSampler
from snipnb.metarun import MetaRun, grid, history_table, run_meta
from snipnb.models import Net
from snipnb.sweep import run_sweep


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return Net(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), 6, 3)


def leaves(model):
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def task(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g), torch.arange(n) % 3, torch.randn(n, 4, generator=g), torch.arange(n) % 3)


# ----------------------------------------------------------------------------------- inner loop


def mlp_by_hand(p, x):
    return torch.tanh(x @ p["body.0.weight"].T + p["body.0.bias"]) @ p["head.weight"].T + p["head.bias"]


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_maml_gradient_equals_a_hand_written_two_step_reference(first_order):
    model, (xs, ys, xq, yq) = tiny_mlp(), task()
    lr = 0.5
    theta = leaves(model)
    fast = theta
    for _ in range(2):
        g = torch.autograd.grad(F.cross_entropy(mlp_by_hand(fast, xs), ys), list(fast.values()),
                                create_graph=not first_order)
        fast = {n: fast[n] - lr * gi for n, gi in zip(fast, g)}
    reference = torch.autograd.grad(F.cross_entropy(mlp_by_hand(fast, xq), yq), list(theta.values()))

    params = leaves(model)
    loss, _ = meta.episode_loss(model, "maml", params, {}, xs, ys, xq, yq, meta.InnerLoop(2, lr, first_order))
    ours = torch.autograd.grad(loss, list(params.values()))
    for r, o in zip(reference, ours):
        torch.testing.assert_close(o, r)


def test_second_and_first_order_gradients_differ():
    model, (xs, ys, xq, yq) = tiny_mlp(), task()
    grads = []
    for first_order in (False, True):
        params = leaves(model)
        loss, _ = meta.episode_loss(model, "maml", params, {}, xs, ys, xq, yq, meta.InnerLoop(2, 0.5, first_order))
        grads.append(torch.autograd.grad(loss, params["body.0.weight"])[0])
    assert not torch.allclose(*grads)


def test_anil_adapts_only_the_head_and_boil_only_the_body():
    model, (xs, ys, _, _) = tiny_mlp(), task()
    params = leaves(model)
    anil = meta.adapt(model, "anil", params, {}, xs, ys, meta.InnerLoop(3, 0.5))
    boil = meta.adapt(model, "boil", params, {}, xs, ys, meta.InnerLoop(3, 0.5))
    for name, p in params.items():
        in_head = name.startswith("head.")
        assert torch.equal(anil[name], p) != in_head, name
        assert torch.equal(boil[name], p) == in_head, name


def sparse_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.randn(p.shape, generator=g).requires_grad_() for n, p in model.named_parameters()}
    first = next(iter(scores))
    with torch.no_grad():
        scores[first][0] = 0.0  # exactly zero: closed for ReLU(m), half open for Sparse-MAML's ½(1 + sign m)
    return scores


@pytest.mark.parametrize("method", ["sparse_maml", "sparse_relu_maml"])
def test_sparse_maml_leaves_closed_parameters_bit_identical_and_scores_get_gradients(method):
    model, (xs, ys, xq, yq) = tiny_mlp(), task()
    params, scores = leaves(model), sparse_scores(model)
    fast = meta.adapt(model, method, params, scores, xs, ys, meta.InnerLoop(3, 0.5))
    for name, p in params.items():
        closed = scores[name] < 0 if method == "sparse_maml" else scores[name] <= 0
        assert torch.equal(fast[name][closed], p[closed]), name
        assert (fast[name][~closed] != p[~closed]).any(), name
    loss, _ = meta.episode_loss(model, method, params, scores, xs, ys, xq, yq, meta.InnerLoop(3, 0.5))
    loss.backward()
    for name, m in scores.items():
        assert m.grad is not None and m.grad.abs().sum() > 0, name
    # Through the straight-through estimator a closed parameter's score still learns, so it can reopen.
    closed = scores["body.0.weight"] < 0
    assert closed.any() and (scores["body.0.weight"].grad[closed] != 0).all()


@pytest.mark.parametrize("method", ["sparse_maml", "sparse_relu_maml"])
def test_scores_get_the_straight_through_meta_gradient_of_a_hand_written_step(method):
    # One inner step θ' = θ − r(m)⊙g_s, g_s = ∇L_s(θ), does not depend on m except through r(m), so
    # ∂L_q(θ')/∂m = −r'(m)⊙∇L_q(θ')⊙g_s. The published straight-through backward: r'(m) = α/2 for
    # r = α·½(1 + sign m) (Sparse-MAML), r'(m) = 1 for r = ReLU(m) (sparse-ReLU-MAML), open or closed.
    model, (xs, ys, xq, yq) = tiny_mlp(), task()
    alpha, theta, scores = 0.5, leaves(model), sparse_scores(model)
    g_s = torch.autograd.grad(F.cross_entropy(mlp_by_hand(theta, xs), ys), list(theta.values()))
    if method == "sparse_maml":
        rate = {n: alpha * 0.5 * (1 + torch.sign(m.detach())) for n, m in scores.items()}
        slope = alpha / 2
    else:
        rate = {n: m.detach().clamp(min=0) for n, m in scores.items()}
        slope = 1.0
    fast = {n: theta[n].detach() - rate[n] * g for n, g in zip(theta, g_s)}
    fast = {n: f.requires_grad_() for n, f in fast.items()}
    g_q = torch.autograd.grad(F.cross_entropy(mlp_by_hand(fast, xq), yq), list(fast.values()))
    reference = {n: -slope * gq * gs for n, gq, gs in zip(theta, g_q, g_s)}

    loss, _ = meta.episode_loss(model, method, leaves(model), scores, xs, ys, xq, yq, meta.InnerLoop(1, alpha))
    ours = dict(zip(scores, torch.autograd.grad(loss, list(scores.values()))))
    for n in scores:
        torch.testing.assert_close(ours[n], reference[n])
    closed = scores["body.0.weight"] < 0
    assert closed.any() and (ours["body.0.weight"][closed] != 0).all()  # a closed score can reopen


def tiny_conv(seed=0, n_way=3):
    return meta.build("conv4", 1, n_way, 16, filters=4, seed=seed)


def conv_batch(tasks=3, n_way=3, k=2, q=3, seed=0):
    split = meta_data.synthetic(classes=(6, 3, 3), per_class=10, image_size=16).train
    return EpisodeSampler(split, n_way, k, q, seed).sample(tasks)


@pytest.mark.parametrize("method", ["maml", "sparse_maml", "shuffled_snip_maml", "uniform_random_maml"])
def test_vmap_over_tasks_equals_a_python_loop(method):
    model, batch = tiny_conv(), conv_batch()
    assert meta.can_vmap(model)
    results = []
    for vectorize in (True, False):
        params = leaves(model)
        scores = {n: s.requires_grad_() for n, s in sparse_scores(model).items()} if method == "sparse_maml" else {}
        noise = meta.mask_noise(model, method, 3, torch.Generator().manual_seed(0), "cpu")
        losses, accs = meta.meta_batch_loss(model, method, params, scores, batch, meta.InnerLoop(2, 0.3), noise,
                                            vectorize=vectorize)
        results.append((losses.detach(), accs, torch.autograd.grad(losses.sum(), list(params.values()))))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_second_order_meta_gradient_of_conv4_under_vmap_equals_plain_autograd():
    # BatchNorm with batch statistics is where vmap once went wrong (F.batch_norm's double backward).
    model, batch = tiny_conv(), conv_batch()
    theta = leaves(model)
    total = 0
    for t in range(3):
        fast = dict(theta)
        for _ in range(2):
            loss = F.cross_entropy(torch.func.functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: fast[n] - 0.3 * gi for n, gi in zip(fast, g)}
        total = total + F.cross_entropy(torch.func.functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
    reference = torch.autograd.grad(total, list(theta.values()))
    params = leaves(model)
    losses, _ = meta.meta_batch_loss(model, "maml", params, {}, batch, meta.InnerLoop(2, 0.3), vectorize=True)
    for r, o in zip(reference, torch.autograd.grad(losses.sum(), list(params.values()))):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)


def test_snip_maml_moves_only_the_most_salient_weights_and_its_control_as_many_per_layer():
    model, batch = tiny_conv(), conv_batch(tasks=1)
    xs, ys = batch.support_x[0], batch.support_y[0]
    params, names, sparsity = leaves(model), meta.weight_names(model), 0.8
    fast = meta.adapt(model, "snip_maml", params, {}, xs, ys, meta.InnerLoop(2, 0.3, sparsity=sparsity))
    moved = {n: fast[n] != params[n] for n in names}
    total = sum(params[n].numel() for n in names)
    assert sum(int(m.sum()) for m in moved.values()) == round((1 - sparsity) * total)
    # The moved weights are SNIP's choice: the library's SNIP scores on the same support set.
    model.load_state_dict({n: p.detach() for n, p in params.items()})
    saliency = pruning.scores(model, [(xs, ys)], "snip", params=names)
    flat = torch.cat([saliency[n].flatten() for n in names])
    top = torch.zeros_like(flat, dtype=torch.bool)
    top[flat.topk(round((1 - sparsity) * total)).indices] = True
    assert torch.equal(torch.cat([moved[n].flatten() for n in names]), top)
    # The shuffled control moves as many weights in every layer, elsewhere.
    noise = {n: v[0] for n, v in meta.mask_noise(model, "shuffled_snip_maml", 1, torch.Generator(), "cpu").items()}
    control = meta.adapt(model, "shuffled_snip_maml", params, {}, xs, ys, meta.InnerLoop(2, 0.3, sparsity=sparsity),
                         noise)
    for n in names:
        assert int((control[n] != params[n]).sum()) == int(moved[n].sum()), n
    assert not all(torch.equal(control[n] != params[n], moved[n]) for n in names)


def test_the_uniform_control_moves_the_same_fraction_of_every_layer_and_at_least_one_weight():
    model, batch = tiny_conv(), conv_batch(tasks=1)
    xs, ys = batch.support_x[0], batch.support_y[0]
    params, names = leaves(model), meta.weight_names(model)
    sizes = {n: params[n].numel() for n in names}
    for sparsity in (0.8, 0.999):  # at 0.999 every layer of this tiny net rounds to 0 weights: one is kept
        noise = {n: v[0] for n, v in meta.mask_noise(model, "uniform_random_maml", 1, torch.Generator(), "cpu").items()}
        fast = meta.adapt(model, "uniform_random_maml", params, {}, xs, ys, meta.InnerLoop(2, 0.3, sparsity=sparsity),
                          noise)
        moved = {n: int((fast[n] != params[n]).sum()) for n in names}
        assert moved == {n: max(1, round((1 - sparsity) * sizes[n])) for n in names}, sparsity
    # SNIP's mask at 0.8 does not keep 20% of every layer: the shuffled control would differ from this one.
    snip = meta.adapt(model, "snip_maml", params, {}, xs, ys, meta.InnerLoop(1, 0.3, sparsity=0.8))
    assert {n: int((snip[n] != params[n]).sum()) for n in names} != meta.uniform_counts(sizes, 0.8)


def test_the_old_control_name_is_refused_naming_both_new_controls():
    with pytest.raises(ValueError, match="shuffled_snip_maml.*uniform_random_maml"):
        MetaRun(method="random_mask_maml")
    with pytest.raises(ValueError, match="shuffled_snip_maml.*uniform_random_maml"):
        meta.adapted_names(tiny_mlp(), "random_mask_maml")


def test_jaccard_counts_shared_kept_entries():
    a = {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    b = {"w": torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)}
    torch.testing.assert_close(meta.jaccard(a, b), torch.tensor([1 / 3, 1.0]))


def random_masks(counts: dict, sizes: dict, pairs: int, generator) -> dict:
    """`pairs` masks per layer with exactly counts[n] of sizes[n] entries kept, at uniformly random places."""
    return {n: torch.rand(pairs, sizes[n], generator=generator).argsort(1).argsort(1) < counts[n] for n in sizes}


def monte_carlo_jaccard(a: dict, b: dict) -> tuple[float, float]:
    """(ratio of the summed intersections to the summed unions, mean of the per-pair Jaccard) over pairs."""
    both = sum((a[n] & b[n]).sum(1) for n in a).double()
    either = sum((a[n] | b[n]).sum(1) for n in a).double()
    return float(both.sum() / either.sum()), float((both / either).mean())


def test_layer_chance_jaccard_is_what_random_masks_with_those_per_layer_counts_share():
    # A small layer both masks keep most of, and large ones they keep little of: layer structure alone
    # gives an overlap far above a uniform mask's d / (2 − d).
    sizes = {"small": 12, "big": 300, "mid": 40}
    a, b = {"small": 10, "big": 15, "mid": 4}, {"small": 11, "big": 6, "mid": 30}
    generator = torch.Generator().manual_seed(0)
    ratio_of_means, mean_ratio = monte_carlo_jaccard(random_masks(a, sizes, 4000, generator),
                                                     random_masks(b, sizes, 4000, generator))
    chance = float(meta.layer_chance_jaccard(a, b, sizes))
    assert chance == pytest.approx(ratio_of_means, abs=0.003)  # a ratio of expectations: exactly this, in the limit
    assert chance == pytest.approx(mean_ratio, abs=0.005)  # the expected ratio, close to it here
    density = (sum(a.values()) + sum(b.values())) / 2 / sum(sizes.values())
    assert chance > 3 * density / (2 - density)
    # Counts with an episode dimension give one chance overlap per episode.
    per_episode = meta.layer_chance_jaccard(a, {n: torch.tensor([c, c]) for n, c in b.items()}, sizes)
    torch.testing.assert_close(per_episode, torch.full((2,), chance, dtype=torch.float64))
    assert math.isnan(float(meta.layer_chance_jaccard({"w": 0}, {"w": 0}, {"w": 5})))


def test_the_uniform_controls_chance_overlap_is_what_4000_pairs_of_its_own_masks_share():
    # At sparsity 0.99 every layer of this net rounds to at most one kept weight and keeps one: its
    # masks are 1% dense overall but keep 1/12 of the head, so d / (2 − d) at d = 0.01 is far too low.
    model, sparsity = tiny_conv(), 0.99
    chance = metarun.uniform_chance_overlap(model, sparsity)
    generator = torch.Generator().manual_seed(0)

    def masks():
        noise = meta.mask_noise(model, "uniform_random_maml", 4000, generator, "cpu")
        return {n: m.bool().flatten(1) for n, m in torch.vmap(lambda v: meta.uniform_random_mask(v, sparsity))(noise).items()}

    ratio_of_means, mean_ratio = monte_carlo_jaccard(masks(), masks())
    assert chance == pytest.approx(ratio_of_means, abs=0.002)
    assert chance == pytest.approx(mean_ratio, abs=0.002)
    density = 1 - sparsity
    assert chance > 2 * density / (2 - density)


def test_the_stability_line_says_whether_snips_mask_is_steadier_than_the_controls_draws():
    rows = pd.DataFrame({"seed": range(3), "snip_episode_jaccard": [0.60, 0.62, 0.61],
                         "shuffled_chance_jaccard": 0.08, "uniform_chance_jaccard": 0.05})
    line = metarun.mask_stability_line(rows)
    _, low, high = stats.t_interval(rows.snip_episode_jaccard - 0.08)  # the excess over the larger chance level
    assert f"[{low:+.3f}, {high:+.3f}] over 3 seeds" in line and "0.610" in line
    assert "as well as in which weights it picks" in line
    chance_level = metarun.mask_stability_line(rows.assign(snip_episode_jaccard=[0.07, 0.09, 0.08]))
    assert "not detectably more stable" in chance_level


def test_the_stability_verdict_pairs_each_seed_with_its_own_larger_chance_level():
    # Overlap and chance rise together from seed to seed: 0.05 above chance on every seed, though the
    # interval of the overlap alone reaches far below the mean chance level.
    rows = pd.DataFrame({"seed": range(3), "snip_episode_jaccard": [0.30, 0.51, 0.69],
                         "shuffled_chance_jaccard": [0.25, 0.45, 0.65], "uniform_chance_jaccard": 0.05})
    assert stats.t_interval(rows.snip_episode_jaccard)[1] < rows.shuffled_chance_jaccard.mean()
    assert "as well as in which weights it picks" in metarun.mask_stability_line(rows)
    # Against the larger level, the uniform control's here, SNIP's mask is no steadier.
    below_uniform = rows.assign(uniform_chance_jaccard=[0.32, 0.50, 0.72])
    assert "not detectably more stable" in metarun.mask_stability_line(below_uniform)
    # One seed: no interval, and no verdict either way.
    one = metarun.mask_stability_line(rows.iloc[:1])
    assert "one seed, no interval" in one and "as well as" not in one and "not detectably" not in one


def test_consecutive_jaccard_compares_each_episodes_mask_with_the_next():
    masks = {"w": torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0]], dtype=torch.bool),
             "v": torch.tensor([[1, 0], [0, 0], [0, 1]], dtype=torch.bool)}
    torch.testing.assert_close(meta.consecutive_jaccard(masks), torch.tensor([1 / 4, 2 / 3]))


@pytest.mark.parametrize("method", ["maml", "sparse_maml"])
def test_resnet12_runs_a_meta_batch_under_vmap(method):
    model = meta.resnet12(3, 5, widths=(4, 4, 8, 8))
    split = meta_data.synthetic(classes=(6, 3, 3), per_class=6, channels=3, image_size=16).train
    batch = EpisodeSampler(split, 5, 1, 2, 0).sample(2)
    bn_inner = MetaRun(model="resnet12").inner.bn_inner  # as published: False
    scores = meta.init_scores(model, method, 0.1, 0.0, "uniform", bn_inner)
    losses, accs = meta.meta_batch_loss(model, method, leaves(model), scores, batch,
                                        meta.InnerLoop(1, 0.1, bn_inner=bn_inner))
    assert losses.shape == accs.shape == (2,) and torch.isfinite(losses).all()


def held_bn_reference(model, theta, batch, lr, steps):
    """MAML's meta-gradient by hand, with BatchNorm's affine parameters held out of the inner loop."""
    bn = set(meta.bn_names(model))
    fast = dict(theta)
    xs, ys, xq, yq = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    for _ in range(steps):
        moving = [n for n in fast if n not in bn]
        loss = F.cross_entropy(torch.func.functional_call(model, fast, (xs,)), ys)
        g = torch.autograd.grad(loss, [fast[n] for n in moving], create_graph=True)
        fast = {**fast, **{n: fast[n] - lr * gi for n, gi in zip(moving, g)}}
    query = F.cross_entropy(torch.func.functional_call(model, fast, (xq,)), yq)
    return dict(zip(theta, torch.autograd.grad(query, list(theta.values()))))


def test_batchnorm_out_of_the_inner_loop_gets_only_the_outer_gradient():
    model, batch = tiny_conv(), conv_batch(tasks=1)
    bn = meta.bn_names(model)
    assert len(bn) == 8 and all(".bn" in n for n in bn)
    reference = held_bn_reference(model, leaves(model), batch, 0.3, 2)
    params = leaves(model)
    losses, _ = meta.meta_batch_loss(model, "maml", params, {}, batch, meta.InnerLoop(2, 0.3, bn_inner=False))
    ours = dict(zip(params, torch.autograd.grad(losses.sum(), list(params.values()))))
    for n in params:
        torch.testing.assert_close(ours[n], reference[n], rtol=1e-4, atol=1e-6)
    # Adapting BatchNorm (the default) is another meta-gradient.
    params = leaves(model)
    losses, _ = meta.meta_batch_loss(model, "maml", params, {}, batch, meta.InnerLoop(2, 0.3))
    adapted = torch.autograd.grad(losses.sum(), [params[n] for n in bn])
    assert not all(torch.allclose(a, ours[n], rtol=1e-4, atol=1e-6) for a, n in zip(adapted, bn))


@pytest.mark.parametrize("method", meta.METHODS)
def test_bn_inner_holds_batchnorm_for_every_method(method):
    model, batch = tiny_conv(), conv_batch(tasks=1)
    xs, ys = batch.support_x[0], batch.support_y[0]
    bn, body = meta.bn_names(model), "body.conv2.weight"
    noise = {n: v[0] for n, v in meta.mask_noise(model, method, 1, torch.Generator().manual_seed(1), "cpu").items()}
    moved = {}
    for bn_inner in (False, True):
        params = leaves(model)
        scores = meta.init_scores(model, method, 0.3, 0.01, "constant", bn_inner)  # all open
        assert set(scores) == (set() if method not in meta.SCORED else
                               set(params) - (set() if bn_inner else set(bn)))
        fast = meta.adapt(model, method, params, scores, xs, ys, meta.InnerLoop(3, 0.3, sparsity=0.5,
                                                                                 bn_inner=bn_inner), noise)
        moved[bn_inner] = {n: not torch.equal(fast[n], params[n]) for n in params}
        if not bn_inner:
            assert all(fast[n] is params[n] for n in bn)  # the same tensors, through every inner step
    assert not any(moved[False][n] for n in bn)
    assert all(moved[True][n] for n in bn) == (method != "anil")
    assert moved[False][body] == moved[True][body] == (method != "anil")
    assert moved[False]["head.weight"] == (method != "boil")


def test_published_settings_per_model():
    conv4, resnet = MetaRun(method="sparse_maml"), MetaRun(method="sparse_maml", model="resnet12")
    def published(run):
        return run.inner.bn_inner, run.setting("score_dist"), run.setting("mask_lr")

    assert published(conv4) == (True, "kaiming_uniform", 0.0075)
    assert published(resnet) == (False, "uniform", 0.01)
    explicit = MetaRun(model="resnet12", bn_inner=True, score_dist="constant", mask_lr=1e-3)
    assert published(explicit) == (True, "constant", 1e-3)
    assert explicit.eval_inner.bn_inner


def test_sparse_maml_scores_start_centred_about_half_closed_at_the_published_scale():
    run = MetaRun(method="sparse_maml", filters=32)
    model = meta.build("conv4", 3, 5, 84, 32, seed=0)
    scores = metarun.initial_scores(run, model)
    assert set(scores) == {n for n, _ in model.named_parameters()}  # Conv-4 adapts BatchNorm: it has scores
    every = torch.cat([s.detach().flatten() for s in scores.values()])
    assert abs(float((every > 0).float().mean()) - 0.5) < 0.02
    for n, s in scores.items():
        s = s.detach()
        assert abs(float(s.mean())) < 1e-6, n  # each tensor shifted to mean score_init = 0
        # kaiming_uniform_ for conv and linear weights: U(−b, b), b = √(6 / fan_in); U(−½, ½) for 1-d ones.
        bound = math.sqrt(6 / (s.shape[1] * math.prod(s.shape[2:]))) if s.dim() > 1 else 0.5
        spread = float(s.max() - s.min())  # the shift to the mean leaves the range alone
        assert spread <= 2 * bound and (s.numel() < 100 or spread >= 1.9 * bound), n
        if s.numel() >= 100:
            assert abs(float(s.std()) / (bound / math.sqrt(3)) - 1) < 0.05, n
    ones = torch.cat([s.detach().flatten() for s in scores.values() if s.dim() == 1])
    assert abs(float(ones.std()) * math.sqrt(12) - 1) < 0.1
    # Drawn apart from the model's weights (seeded alike, they would repeat its uniform draws).
    w, m = model.body.conv1.weight.detach().flatten(), scores["body.conv1.weight"].detach().flatten()
    assert abs(float(torch.corrcoef(torch.stack([w, m]))[0, 1])) < 0.2
    # ResNet-12 (published: U(−½, ½) for every score, BatchNorm held out of the inner loop, so unscored).
    resnet = meta.resnet12(3, 5, widths=(8, 8, 16, 16))
    uniform = meta.init_scores(resnet, "sparse_maml", 0.1, 0.0, "uniform", False, torch.Generator().manual_seed(0))
    assert "body.0.shortcut.1.weight" in meta.bn_names(resnet)  # the shortcut's BatchNorm too, as published
    assert set(uniform) == {n for n, _ in resnet.named_parameters()} - set(meta.bn_names(resnet))
    big = uniform["body.3.convs.0.weight"].detach()
    assert 0.95 <= float(big.max() - big.min()) <= 1 and abs(float(big.std()) * math.sqrt(12) - 1) < 0.05
    # The library's first choice stays reachable: every score at +0.01.
    old = metarun.initial_scores(dataclasses.replace(run, score_dist="constant", score_init=0.01), model)
    assert all(bool((s == 0.01).all()) for s in old.values())
    relu = metarun.initial_scores(dataclasses.replace(run, method="sparse_relu_maml"), model)
    assert all(bool((s == run.inner_lr).all()) for s in relu.values())  # ReLU rates start at α (constant init)


@pytest.mark.parametrize("mask_optimizer", ["adam", "sgd"])
def test_scores_step_with_their_own_optimiser_and_rate(mask_optimizer):
    run = MetaRun(method="sparse_maml", outer_lr=1e-3, mask_lr=0.02, mask_optimizer=mask_optimizer)
    model = tiny_mlp()
    params, scores = leaves(model), sparse_scores(model)
    before = {n: t.detach().clone() for n, t in {**params, **{f"m:{n}": s for n, s in scores.items()}}.items()}
    g = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(t.shape, generator=g) for n, t in before.items()}
    optimizers = metarun.meta_optimizers(run, params, scores)
    for n, p in params.items():
        p.grad = grads[n].clone()
    for n, s in scores.items():
        s.grad = grads[f"m:{n}"].clone()
    for optimizer in optimizers:
        optimizer.step()
    # Adam's first step is lr·g/(|g| + ε) (bias-corrected moments g and g²); Nesterov SGD's, lr·(1 + 0.9)·g.
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), before[n] - 1e-3 * grads[n] / (grads[n].abs() + 1e-8))
    for n, s in scores.items():
        g_m = grads[f"m:{n}"]
        step = g_m / (g_m.abs() + 1e-8) if mask_optimizer == "adam" else 1.9 * g_m
        torch.testing.assert_close(s.detach(), before[f"m:{n}"] - 0.02 * step)


def test_one_shared_adam_is_reachable_as_mask_lr_equal_to_outer_lr():
    model, (xs, ys, xq, yq) = tiny_mlp(), task()
    run = MetaRun(method="sparse_maml", outer_lr=1e-2, mask_lr=1e-2)
    finals = []
    for shared in (True, False):
        params, scores = leaves(model), sparse_scores(model)
        optimizers = ([torch.optim.Adam([*params.values(), *scores.values()], lr=1e-2)] if shared else
                      metarun.meta_optimizers(run, params, scores))
        for _ in range(3):
            loss, _ = meta.episode_loss(model, "sparse_maml", params, scores, xs, ys, xq, yq, meta.InnerLoop(2, 0.5))
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        finals.append([t.detach() for t in (*params.values(), *scores.values())])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------- episodes


def marked_digits():
    """A stand-in MNIST whose images say what they are: one bright pixel in the top-left corner whose
    value encodes the digit. A rotation carries the pixel to another corner, so an image's class
    (digit, rotation) can be read back from it."""
    labels = torch.arange(10).repeat_interleave(12)
    images = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = (20 * labels + 10).to(torch.uint8)
    images[:, 0, 3, 3] = torch.arange(len(labels)).to(torch.uint8)  # every image distinct
    return data.ImageData(images, labels, 10, (0.0,), (1.0,), "marked")


def read_class(image):
    corners = {(0, 0): 0, (7, 0): 90, (7, 7): 180, (0, 7): 270}  # where rot90 carries the top-left pixel
    for (r, c), angle in corners.items():
        if image[r, c] > 0:
            return f"{(int(image[r, c]) - 10) // 20}@{angle}"
    raise AssertionError("no marker")


@pytest.mark.parametrize("split", meta_data.SPLITS)
def test_episodes_never_mix_splits_and_label_each_image_with_its_class(split):
    splits = meta_data.rotation_classes(marked_digits(), meta_data.MNIST_ROTATION_DIGITS, "marked")
    assert [splits[s].num_classes for s in meta_data.SPLITS] == [24, 8, 8]
    names = splits.class_names[split]
    allowed = {str(d) for d in meta_data.MNIST_ROTATION_DIGITS[split]}
    sampler = EpisodeSampler(splits[split], 5, 2, 3, seed=0)
    for _ in range(20):
        episode = sampler.sample()
        for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            raw = (x * sampler.std + sampler.mean).round()
            for image, label in zip(raw, y):
                cls = read_class(image[0])
                assert cls.split("@")[0] in allowed
                assert cls == names[int(episode.classes[label])]
        everything = torch.cat([episode.support_x, episode.query_x]).flatten(1)
        assert len(torch.unique(everything, dim=0)) == len(everything)  # no image drawn twice


def test_episodes_repeat_for_a_seed_and_differ_across_seeds():
    split = meta_data.synthetic().train

    def stream(seed):
        return [e.support_x for e in meta_data.episodes(split, 5, 1, 2, seed=seed, count=3, tasks=2)]

    torch.manual_seed(1)
    a = stream(3)
    torch.manual_seed(2)  # global RNG state plays no part
    b = stream(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], stream(4)[0])
    assert a[0].shape == (2, 5, 1, 28, 28)


def test_episode_shape_errors_name_the_value():
    split = meta_data.synthetic().val  # 5 classes of 30 images
    with pytest.raises(ValueError, match="n_way=6"):
        EpisodeSampler(split, 6, 1, 1, 0)
    with pytest.raises(ValueError, match="k_shot \\+ q_query = 16 \\+ 15 = 31"):
        EpisodeSampler(split, 5, 16, 15, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="reptile"), "method must be one of .*'reptile'"),
    (dict(n_way=9), "n_way=9 is larger than the 8 classes of mnist_rotations's meta-val"),
    (dict(dataset="synthetic", k_shot=20, q_query=15), "k_shot \\+ q_query = 35"),
    (dict(sparsity=1.0), "sparsity"),
    (dict(dataset="imagenet"), "dataset must be one of"),
    (dict(inner_steps=0), "inner_steps must be a positive int, got 0"),
    (dict(score_dist="normal"), "score_dist must be one of .*'normal'"),
    (dict(mask_optimizer="rmsprop"), "mask_optimizer must be one of"),
    (dict(mask_lr=0.0), "mask_lr must be None \\(as published\\) or positive, got 0.0"),
    (dict(bn_inner=1), "bn_inner must be None"),
])
def test_bad_runs_are_rejected_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaRun(**kwargs)


# ------------------------------------------------------------------------------------- datasets


def test_cifar_fs_splits_classes_64_16_20_by_name():
    names = [f"other{i}" for i in range(64)] + list(meta_data.CIFAR_FS_VAL + meta_data.CIFAR_FS_TEST)
    order = np.random.default_rng(0).permutation(100)
    names = [names[i] for i in order]
    labels = torch.arange(100).repeat_interleave(2)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8).contiguous()
    splits = meta_data.cifar_fs_from(images, labels, names)
    assert [splits[s].num_classes for s in meta_data.SPLITS] == [64, 16, 20]
    assert splits.class_names["test"] == meta_data.CIFAR_FS_TEST
    for split in meta_data.SPLITS:  # every image sits under its own class name
        for image, label in zip(splits[split].images, splits[split].labels):
            assert names[int(image[0, 0, 0])] == splits.class_names[split][int(label)]
    with pytest.raises(ValueError, match="lacks the CIFAR-FS classes"):
        meta_data.cifar_fs_from(images, labels, [f"c{i}" for i in range(100)])


def write_png(path, value, size=(10, 10), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_mini_imagenet_reads_both_common_layouts(tmp_path, layout):
    root = tmp_path / "mini-imagenet"
    for split, classes in (("train", 3), ("val", 2), ("test", 2)):
        rows = []
        for c in range(classes):
            for i in range(2):
                name = f"n0{split}{c}"
                value = 40 * c + 10 * i + 5
                if layout == "folders":
                    write_png(root / split / name / f"{i}.png", value, mode="RGB")
                else:
                    write_png(root / "images" / f"{name}_{i}.png", value, mode="RGB")
                    rows.append(f"{name}_{i}.png,{name}")
        if layout == "csv":
            (root / f"{split}.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    splits = meta_data.mini_imagenet(tmp_path, image_size=8)
    assert [splits[s].num_classes for s in meta_data.SPLITS] == [3, 2, 2]
    assert splits.train.images.shape == (6, 3, 8, 8)
    assert splits.class_names["val"] == ("n0val0", "n0val1")
    assert torch.equal(splits.train.images[:, 0, 0, 0], torch.tensor([5, 15, 45, 55, 85, 95], dtype=torch.uint8))


def test_mini_imagenet_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="mini-imagenet"):
        meta_data.mini_imagenet(tmp_path)


def test_omniglot_reads_torchvisions_folders_with_rotations_as_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    for part, alphabets in (("images_background", ["Latin", "Greek"]), ("images_evaluation", ["Aa", "Bb", "Cc"])):
        for alphabet in alphabets:
            for character in ("character01", "character02"):
                for i in range(2):
                    write_png(tmp_path / "omniglot-py" / part / alphabet / character / f"{i}.png", 255)
    splits = meta_data.omniglot(tmp_path, image_size=12, val_alphabets=1)
    assert [splits[s].num_classes for s in meta_data.SPLITS] == [16, 8, 16]  # characters x 4 rotations
    assert splits.class_names["val"][0] == "Aa/character01@0"
    assert splits.train.images.shape[1:] == (1, 12, 12) and int(splits.train.images.max()) == 0  # inverted
    with pytest.raises(data.DatasetNotFoundError, match="Omniglot"):
        meta_data.omniglot(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ runs


def tiny_run(**kw):
    base = dict(dataset="synthetic", filters=4, n_way=3, k_shot=1, q_query=2, inner_steps=1, meta_batch=2,
                iterations=2, eval_every=1, val_episodes=4, test_episodes=6, synthetic_shape=(1, 16))
    return MetaRun(**{**base, **kw})


def test_runs_go_through_the_sweep_and_repeat_exactly(tmp_path):
    shared = {k: v for k, v in vars(tiny_run()).items() if k not in ("method", "seed")}
    runs = grid(["sparse_maml", "snip_maml"], 1, **shared)
    table = run_sweep(run_meta, runs, tmp_path, progress=False).set_index("method")
    assert table.test_acc.between(0, 100).all() and (table.test_ci95 > 0).all()
    assert {"val_acc", "best_iteration", "val_acc@2", "density:head.weight@2"} <= set(table.columns)
    sparse = table.loc["sparse_maml"]
    assert 0 <= sparse["density"] <= 1 and 0 <= sparse["snip_jaccard"] <= 1 and 0 < sparse["layer_chance_jaccard"] <= 1
    assert pd.isna(table.loc["snip_maml", "density:head.weight@2"])  # only scored methods have scores
    stability = table.loc["snip_maml", ["snip_episode_jaccard", "shuffled_chance_jaccard", "uniform_chance_jaccard"]]
    assert stability.between(0, 1).all() and pd.isna(table.loc["sparse_maml", "snip_episode_jaccard"])
    curves = history_table(table.reset_index(), "density")
    assert set(curves.iteration) == {0, 1, 2} and "body.conv1.weight" in set(curves.layer)
    assert set(history_table(table.reset_index(), "val_acc").layer.dropna()) == set()
    again = run_meta(runs[0])
    assert again == {k: v for k, v in table.loc["sparse_maml"].items() if k in again}


def test_a_learned_mask_with_every_score_closed_has_no_overlap_to_report():
    run = tiny_run(method="sparse_maml")
    splits = metarun._splits(run)
    model = meta.build(run.model, 1, run.n_way, 16, run.filters, run.seed)
    params = {n: p.detach() for n, p in model.named_parameters()}
    closed = {n: -torch.ones_like(p) for n, p in params.items()}
    report = metarun.learned_mask_report(run, model, params, closed, splits, "cpu", episodes=3)
    assert report["density"] == 0
    assert all(math.isnan(report[k]) for k in ("snip_jaccard", "layer_chance_jaccard", "chance_jaccard"))
    # One layer open: the overlap and its chance level are numbers, and the layer counts raise the chance level.
    one_open = {**closed, "head.weight": torch.ones_like(params["head.weight"])}
    report = metarun.learned_mask_report(run, model, params, one_open, splits, "cpu", episodes=3)
    assert 0 <= report["snip_jaccard"] <= 1 and report["layer_chance_jaccard"] > report["chance_jaccard"]


def test_the_learned_overlap_is_judged_against_what_the_layer_counts_give_not_a_uniform_mask():
    rows = pd.DataFrame({"seed": range(4), "density": 0.3, "snip_jaccard": [0.40, 0.42, 0.41, 0.43],
                         "layer_chance_jaccard": [0.41, 0.41, 0.42, 0.42], "chance_jaccard": 0.3 / 1.7})
    line = metarun.learned_overlap_line(rows)
    # 2.4x a uniform mask's overlap, and all of it from the layers: no claim beyond chance.
    assert "not detected at this power" in line and "0.415" in line and "only slightly" not in line
    above = metarun.learned_overlap_line(rows.assign(layer_chance_jaccard=0.2))
    assert "more than their per-layer counts give by chance" in above
    one_closed = rows.astype({"snip_jaccard": float, "density": float}).copy()
    one_closed.loc[0, ["density", "snip_jaccard", "layer_chance_jaccard", "chance_jaccard"]] = [0.0] + [math.nan] * 3
    assert "On 1 of 4 seeds every score closed" in metarun.learned_overlap_line(one_closed)
    all_closed = rows.assign(density=0.0, snip_jaccard=math.nan, layer_chance_jaccard=math.nan, chance_jaccard=math.nan)
    line = metarun.learned_overlap_line(all_closed)
    assert "every learned score closed" in line and "nan" not in line


def test_the_learned_overlap_tells_closed_scores_by_density_and_refuses_records_without_a_chance_level():
    rows = pd.DataFrame({"seed": range(3), "density": 0.3, "snip_jaccard": [0.40, 0.42, 0.41],
                         "layer_chance_jaccard": [0.41, 0.41, 0.42], "chance_jaccard": 0.3 / 1.7})
    # A seed with a mask but no chance level is older code's record, not a seed whose every score closed.
    older = rows.astype({"layer_chance_jaccard": float}).copy()
    older.loc[1, "layer_chance_jaccard"] = math.nan
    with pytest.raises(metarun.OlderRecordsError, match=r"seeds \[1\] .* no layer_chance_jaccard: older"):
        metarun.learned_overlap_line(older)
    with pytest.raises(metarun.OlderRecordsError, match=r"seeds \[0, 1, 2\] .* no layer_chance_jaccard"):
        metarun.learned_overlap_line(rows.drop(columns="layer_chance_jaccard"))
    # Without a learned mask there is nothing to judge, so older records need no chance level.
    all_closed = rows.drop(columns="layer_chance_jaccard").assign(density=0.0, snip_jaccard=math.nan)
    assert "every learned score closed" in metarun.learned_overlap_line(all_closed)


@pytest.mark.parametrize("method", meta.RANDOM_CONTROLS)
def test_the_random_controls_draw_their_noise_apart_from_the_models_initialisation(method):
    # Drawn from the run's own seed, the control's first noise repeated the initial weights of the
    # first layer (the same uniform draws), so its "random" mask kept conv1's largest initial weights.
    run = tiny_run(method=method, seed=3, filters=16)
    model = meta.build(run.model, 1, run.n_way, 16, run.filters, run.seed)
    name = meta.weight_names(model)[0]
    weight = dict(model.named_parameters())[name].detach().flatten()

    def correlation(generator):
        noise = meta.mask_noise(model, run.method, 1, generator, "cpu")[name][0].flatten()
        return float(torch.corrcoef(torch.stack([noise, weight]))[0, 1])

    assert abs(correlation(torch.Generator().manual_seed(run.seed))) > 0.99  # what the old stream did
    assert abs(correlation(metarun.noise_stream(run, "train"))) < 0.2


def test_each_seed_and_purpose_draws_placement_noise_from_a_stream_of_its_own():
    def draws(seed, purpose):
        return torch.rand(8, generator=metarun.noise_stream(tiny_run(seed=seed), purpose))

    streams = {(seed, purpose): draws(seed, purpose) for seed in (0, 1) for purpose in metarun.NOISE_PURPOSES}
    for purpose in ("val", "test"):  # two seeds' validation and test masks differ
        assert not torch.equal(streams[0, purpose], streams[1, purpose]), purpose
    for seed in (0, 1):  # within a seed, training, validation and test each have their own
        assert len({tuple(streams[seed, p].tolist()) for p in metarun.NOISE_PURPOSES}) == 3, seed
    assert not torch.equal(streams[0, "test"], streams[1, "train"])  # the old sums shared these
    assert torch.equal(draws(1, "val"), streams[1, "val"])  # and each stream repeats
    with pytest.raises(ValueError, match="purpose must be one of"):
        metarun.noise_seed(0, "test2")


def test_batch_statistics_norm_is_batch_norm_in_training_mode_to_the_second_derivative():
    # The rewritten elementary ops must stay BatchNorm, also in what MAML's meta-gradient differentiates.
    torch.manual_seed(0)
    norm = meta.BatchStatNorm2d(4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 4, 5, 5, requires_grad=True)
    outputs = {}
    for name, f in {"ours": norm, "torch": lambda v: F.batch_norm(v, None, None, norm.weight, norm.bias, True)}.items():
        y = f(x)
        g = torch.autograd.grad((y * torch.linspace(-1, 1, 25).view(5, 5)).pow(2).sum(), x, create_graph=True)[0]
        outputs[name] = (y, g, torch.autograd.grad(g.pow(2).sum(), (x, norm.weight)))
    ours, reference = outputs["ours"], outputs["torch"]
    torch.testing.assert_close(ours[0], reference[0])
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(ours[2], reference[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_meta_batch_loops_over_its_tasks_on_the_cpu_and_vmaps_them_on_a_gpu(monkeypatch):
    assert not meta.vectorizes("cpu") and not meta.vectorizes(torch.device("cpu"))
    assert meta.vectorizes("cuda") and meta.vectorizes("cuda:1")
    vmapped = []
    monkeypatch.setattr(meta, "vmap", lambda f: vmapped.append(f) or torch.func.vmap(f))
    model, batch = tiny_conv(), conv_batch()
    runs = {}
    for vectorize in (None, False):
        params = leaves(model)
        losses, _ = meta.meta_batch_loss(model, "maml", params, {}, batch, meta.InnerLoop(2, 0.3), vectorize=vectorize)
        runs[vectorize] = torch.autograd.grad(losses.sum(), list(params.values()))
    assert not vmapped
    assert all(torch.equal(a, b) for a, b in zip(runs[None], runs[False]))  # the loop, bit for bit
    meta.meta_batch_loss(model, "maml", leaves(model), {}, batch, meta.InnerLoop(1, 0.3), vectorize=True)
    assert len(vmapped) == 1


def test_the_protocol_table_sets_this_run_beside_the_published_ones_without_nan():
    from snipnb import published

    table = metarun.protocol_table(MetaRun(filters=16, inner_steps=1, eval_inner_steps=None, iterations=900))
    assert list(table.columns) == ["this run", *published.META_PROTOCOLS]
    assert table.loc["eval_inner_steps", "this run"] == "1"  # None: the run evaluates with inner_steps
    assert table.loc["filters", "this run"] == "16" and table.loc["iterations", "this run"] == "900"
    sparse = "Sparse-MAML run script, Conv-4 5-way 5-shot"
    settings = ["filters", "inner_steps", "meta_batch", "first_order"]
    assert table.loc[settings, sparse].tolist() == ["64", "35", "2", "True"]
    # A value the source does not state shows so, never as a guess or NaN.
    assert table.loc["eval_inner_steps", "MAML, Omniglot 5-way 1-shot"] == "not stated"
    # One rule for MAML's queries per class: one number where meta-training and test agree (Omniglot: K).
    assert table.loc["q_query", "MAML, Omniglot 5-way 1-shot"] == "1"
    assert table.loc["q_query", "MAML, mini-ImageNet 5-way 1-shot"] == "15 in meta-training, 1 at test"
    assert not table.isna().any().any() and not table.apply(lambda c: c.str.contains("nan|None")).any().any()
    assert set(published.META_PROTOCOL_SOURCES) == set(published.META_PROTOCOLS)
