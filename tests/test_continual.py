import math

import numpy as np
import pytest
import torch

from snipnb import data, models
from snipnb.continual import (EWC, STRATEGIES, MultiHeadNet, PackNet, SingleHeadNet, importance,
                              linear_probe_accuracy, permuted_tasks, pixel_permutations, split_tasks)
from snipnb.sequence import ContinualRun, run_sequence, tasks_for
from snipnb.train import fit


def small(**kw):
    base = dict(model="simple_convnet", dataset="synthetic", n_tasks=5, epochs=1, batch_size=32, lr=0.05,
                synthetic_shape=(1, 16), importance_examples=64, retrain_epochs=1, augment=False)
    return ContinualRun(**{**base, **kw})


@pytest.fixture(scope="module")
def tasks():
    kw = dict(num_classes=6, channels=1, image_size=16, per_class=30, test_per_class=10)
    return split_tasks(data.synthetic(True, **kw), data.synthetic(False, **kw), 3, seed=0)


def test_split_tasks_partitions_classes_and_holds_out_validation(tasks):
    assert sorted(c for t in tasks for c in t.classes) == list(range(6))
    for t in tasks:
        assert t.train.num_classes == 2 and set(t.train.labels.tolist()) == {0, 1}
        assert len(t.val) == 6 and len(t.train) == 54 and len(t.test) == 20
        # no image is both in train and validation
        assert not (t.train.images.flatten(1)[:, None] == t.val.images.flatten(1)[None]).all(-1).any()


@pytest.mark.parametrize("benchmark, scenario", [("split", "task"), ("split", "class"), ("permuted", "domain")])
def test_each_seed_holds_out_its_own_validation_images_even_where_the_class_order_is_fixed(
        monkeypatch, benchmark, scenario):
    # Split-MNIST keeps the class order 0/1, 2/3, ... for every seed; its validation images must still
    # change with the seed, or every search seed tunes on the same 10% of each task. MNIST is stood
    # in for by synthetic digits of its shape (tests never read real data).
    kw = dict(num_classes=10, channels=1, image_size=8, per_class=20, test_per_class=2)
    monkeypatch.setattr(data, "load_cached", lambda name, train, shape=None: data.synthetic(train, **kw))

    def val_images(seed):
        run = ContinualRun(dataset="mnist", model="lenet300_100", benchmark=benchmark, scenario=scenario,
                           n_tasks=5 if benchmark == "split" else 2, seed=seed)
        return [t.val.images for t in tasks_for(run)]

    first, again, other = val_images(0), val_images(0), val_images(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    if benchmark == "split":  # the class order itself stays Split-MNIST's
        run = ContinualRun(dataset="mnist", model="lenet300_100", n_tasks=5, seed=1)
        assert [t.classes for t in tasks_for(run)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_multi_head_net_uses_the_head_of_its_task():
    net = MultiHeadNet(models.build("simple_convnet", 1, in_channels=1, image_size=16, seed=0), [2, 3])
    x = torch.randn(4, 1, 16, 16)
    net.eval()
    net.task = 1
    assert net(x).shape == (4, 3)
    net.task = "all"
    both = net(x)
    net.task = 0
    torch.testing.assert_close(both[:, :2], net(x))


def test_ewc_penalty_is_zero_at_the_anchor_and_weights_the_squared_drift():
    net = torch.nn.Linear(2, 1, bias=False)
    ewc = EWC(lam=3.0)
    ewc.consolidate(net, {"weight": torch.tensor([[1.0, 2.0]])})
    assert ewc.penalty(net) == 0
    with torch.no_grad():
        net.weight += torch.tensor([[1.0, 0.5]])
    assert ewc.penalty(net).item() == pytest.approx(3.0 * (1.0 * 1.0 + 2.0 * 0.25))
    online = EWC(lam=1.0, online=True, gamma=0.5)
    online.consolidate(net, {"weight": torch.ones(1, 2)})
    online.consolidate(net, {"weight": torch.ones(1, 2)})
    assert len(online.anchors) == 1 and torch.equal(online.anchors[0][0]["weight"], torch.full((1, 2), 1.5))


def test_the_merged_ewc_penalty_is_the_sum_of_one_term_per_task_and_so_is_its_gradient():
    net = torch.nn.Linear(5, 3)
    ewc = EWC(lam=2.0)
    g = torch.Generator().manual_seed(0)
    terms = []
    for task in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        importance = {n: torch.rand(p.shape, generator=g) * (n == "weight" or task != 1) for n, p in net.named_parameters()}
        ewc.consolidate(net, importance)
        terms.append((importance, {n: p.detach().clone() for n, p in net.named_parameters()}))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    by_task = 2.0 * sum((w[n] * (p - t[n]) ** 2).sum() for w, t in terms for n, p in net.named_parameters())
    merged = ewc.penalty(net)
    torch.testing.assert_close(merged, by_task)
    grads = torch.autograd.grad(merged, list(net.parameters()))
    expected = torch.autograd.grad(by_task, list(net.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_ewc_with_lambda_zero_is_fine_tuning_exactly():
    finetune = run_sequence(small(strategy="finetune", n_tasks=2), device="cpu")
    ewc = run_sequence(small(strategy="ewc", n_tasks=2, ewc_lambda=0.0), device="cpu")
    assert ewc["R"] == finetune["R"] and ewc["probe_before"] == finetune["probe_before"]


def test_packnet_frozen_weights_are_bit_identical_after_later_tasks(tasks):
    net = MultiHeadNet(models.build("simple_convnet", 1, in_channels=1, image_size=16, seed=0), [2, 2, 2])
    packnet = PackNet(net)
    options = dict(batch_size=16, lr=0.1, weight_decay=5e-3, device="cpu", progress=False)
    net.task = 0
    fit(net, tasks[0].train, None, 1, after_step=packnet.frozen_restorer(net, 0), **options)
    magnitude = {n: p.detach().abs() for n, p in net.named_parameters() if n in packnet.weights}
    packnet.claim(net, 0, magnitude, keep=1 / 3)
    packnet.save_norms(net, 0)
    owned = {n: p.detach()[packnet.owner[n] == 0].clone() for n, p in net.named_parameters() if n in packnet.weights}
    shared = {n: p.detach().clone() for n, p in net.named_parameters() if n in packnet.shared}
    assert shared, "simple_convnet's conv biases are shared parameters PackNet must freeze"
    released = sum(int((packnet.owner[n] == -1).sum()) for n in packnet.weights)
    kept = sum(int((packnet.owner[n] == 0).sum()) for n in packnet.weights)
    assert kept == round((kept + released) / 3)
    for t in (1, 2):
        net.task = t
        fit(net, tasks[t].train, None, 2, after_step=packnet.frozen_restorer(net, t), **options)
    params = dict(net.named_parameters())
    for n, before in owned.items():
        assert torch.equal(params[n].detach()[packnet.owner[n] == 0], before), n
    for n, before in shared.items():
        assert torch.equal(params[n].detach(), before), n


def test_packnet_never_forgets_and_uses_its_capacity():
    result = run_sequence(small(strategy="packnet", n_tasks=5, epochs=2), device="cpu")
    R = np.array(result["R"])
    assert result["after_retraining"] == pytest.approx(list(np.diag(R)))
    assert R[-1] == pytest.approx(list(np.diag(R)))  # the final row equals the diagonal: no forgetting
    assert result["forgetting"] <= 1e-9
    shares = np.array(list(result["usage"].values()))  # layers x (tasks..., free)
    assert shares.sum(1) == pytest.approx(np.ones(len(shares)))
    assert shares[:, :-1].sum() > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_reports_the_accuracy_matrix_and_metrics(strategy):
    result = run_sequence(small(strategy=strategy, n_tasks=2, epochs=2), device="cpu")
    rows = 1 if strategy == "joint" else 2
    assert np.array(result["R"]).shape == (rows, 2) and len(result["b"]) == 2
    assert 0 <= result["avg_acc"] <= 100
    if strategy == "joint":
        assert math.isnan(result["forgetting"])
    else:
        assert len(result["probe_before"]) == 2 and math.isfinite(result["fwt"])


def test_a_run_without_the_probe_reports_no_forward_transfer():
    # probe_examples=0 skips the linear probe (the λ search needs only R): fwt is then missing, not a crash.
    result = run_sequence(small(strategy="ewc", n_tasks=2, probe_examples=0), device="cpu")
    assert math.isnan(result["fwt"]) and all(math.isnan(p) for p in result["probe_init"])
    assert np.array(result["R"]).shape == (2, 2) and math.isfinite(result["forgetting"])


@pytest.mark.parametrize("scenario, benchmark, protects_head", [("task", "split", False), ("class", "split", True),
                                                                ("domain", "permuted", True)])
def test_ewc_protects_the_head_every_task_shares(monkeypatch, scenario, benchmark, protects_head):
    # Class- and domain-IL answer every task through one head, which later tasks train: EWC must
    # anchor it, or the classifier drifts freely while only the body is held. A task-IL head is private.
    anchored = []
    original = EWC.consolidate
    monkeypatch.setattr(EWC, "consolidate", lambda self, net, weights: (anchored.append(set(weights)),
                                                                       original(self, net, weights))[1])
    run_sequence(small(strategy="ewc", n_tasks=2, scenario=scenario, benchmark=benchmark, probe_examples=0),
                 device="cpu")
    assert anchored and all(any(n.startswith("body.") for n in names) for names in anchored)
    assert all(("head.weight" in names) == protects_head for names in anchored)
    assert not any(n.startswith("heads.") for names in anchored for n in names)


def test_bad_runs_are_rejected():
    with pytest.raises(ValueError, match="strategy"):
        small(strategy="replay")
    with pytest.raises(ValueError, match="split"):
        small(split="train")
    with pytest.raises(ValueError, match="keep"):
        small(keep=0.0)


def test_rank_correlation_is_spearmans():
    from snipnb.sequence import rank_correlation

    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # monotone: ranks agree exactly
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)  # 1 - 6*4/(4*15)


def test_shared_batchnorm_lets_packnet_forget_what_per_task_batchnorm_keeps():
    shared = run_sequence(small(strategy="packnet", n_tasks=2, epochs=2, packnet_bn="shared"), device="cpu")
    per_task = run_sequence(small(strategy="packnet", n_tasks=2, epochs=2), device="cpu")
    # Same weights and heads either way; only task 0's BatchNorm differs at the end.
    assert per_task["R"][1][0] == per_task["after_retraining"][0]
    assert shared["R"][1][0] != shared["after_retraining"][0]
    with pytest.raises(ValueError, match="packnet_bn"):
        small(packnet_bn="frozen")


def test_a_penalty_too_stiff_for_the_learning_rate_is_reported_as_diverged():
    tame = run_sequence(small(strategy="ewc", n_tasks=2, ewc_lambda=0.001), device="cpu")
    wild = run_sequence(small(strategy="ewc", n_tasks=2, ewc_lambda=1e6, lr=0.5), device="cpu")
    assert tame["diverged"] is False and wild["diverged"] is True


@pytest.mark.parametrize("kwargs, argument", [(dict(model="resnet1000"), "model"),
                                              (dict(dataset="cifar100", n_tasks=3), "n_tasks"),
                                              (dict(n_tasks=0), "n_tasks"),
                                              (dict(strategy="gem"), "strategy"),
                                              (dict(dataset="imagenet"), "dataset"),
                                              (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"),
                                              (dict(keep=0.0), "keep"), (dict(ewc_lambda=-1.0), "ewc_lambda"),
                                              (dict(fisher_labels="true"), "fisher_labels")])
def test_bad_continual_runs_are_rejected_when_made(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        small(**kwargs)


def test_permuted_tasks_keep_the_labels_and_permute_each_task_by_its_own_fixed_permutation():
    kw = dict(num_classes=3, channels=1, image_size=6, per_class=10, test_per_class=4)
    train, test = data.synthetic(True, **kw), data.synthetic(False, **kw)
    tasks = permuted_tasks(train, test, 4, seed=7)
    perms = pixel_permutations(4, 36, seed=7)
    assert torch.equal(perms[0], torch.arange(36))  # task 0 is the data itself
    assert all(sorted(p.tolist()) == list(range(36)) for p in perms)
    assert len({tuple(p.tolist()) for p in perms}) == 4
    for task, perm in zip(tasks, perms):
        assert task.classes == [0, 1, 2] and task.train.num_classes == 3
        assert torch.equal(task.test.labels, test.labels)
        assert torch.equal(task.test.images.flatten(1), test.images.flatten(1)[:, perm])
        assert len(task.train) + len(task.val) == len(train)
    # The same seed gives the same tasks; another seed other permutations.
    again = permuted_tasks(train, test, 4, seed=7)
    assert all(torch.equal(a.train.images, b.train.images) for a, b in zip(tasks, again))
    assert not torch.equal(pixel_permutations(4, 36, seed=8)[1], perms[1])


def test_class_incremental_split_labels_are_head_outputs_and_the_head_grows():
    kw = dict(num_classes=6, channels=1, image_size=16, per_class=10, test_per_class=4)
    tasks = split_tasks(data.synthetic(True, **kw), data.synthetic(False, **kw), 3, seed=None, scenario="class")
    assert [sorted(set(t.test.labels.tolist())) for t in tasks] == [[0, 1], [2, 3], [4, 5]]
    net = SingleHeadNet(models.build("simple_convnet", 6, 1, 16, seed=0), active=[2, 4, 6])
    x = torch.randn(3, 1, 16, 16)
    net.eval()
    shapes = []
    for t in range(3):
        net.task = t
        shapes.append(net(x).shape[1])
    assert shapes == [2, 4, 6]
    with pytest.raises(ValueError, match="scenario"):
        split_tasks(data.synthetic(True, **kw), data.synthetic(False, **kw), 3, seed=None, scenario="domain")


def test_class_incremental_finetuning_forgets_what_task_incremental_keeps():
    # The reason for the scenario: without the task id, the newest classes win every answer.
    task_il = run_sequence(small(strategy="finetune", n_tasks=2, epochs=3), device="cpu")
    class_il = run_sequence(small(strategy="finetune", n_tasks=2, epochs=3, scenario="class"), device="cpu")
    assert class_il["R"][1][0] < task_il["R"][1][0] - 20


def test_importance_controls_keep_the_scale_but_not_the_information(tasks):
    net = MultiHeadNet(models.build("simple_convnet", 1, in_channels=1, image_size=16, seed=0), [2, 2, 2])
    params = [n for n, _ in net.named_parameters() if n.startswith("body.")]
    options = dict(params=params, examples=32, device="cpu")
    fisher = importance(net, tasks[0].train, "fisher", **options)
    shuffled = importance(net, tasks[0].train, "shuffled_fisher", **options)
    uniform = importance(net, tasks[0].train, "uniform", **options)
    flat = {k: torch.cat([v.flatten() for v in d.values()]) for k, d in
            dict(fisher=fisher, shuffled=shuffled, uniform=uniform).items()}
    assert torch.equal(flat["uniform"], torch.ones_like(flat["uniform"]))
    # The same values (so the same distribution and mean), at other positions.
    torch.testing.assert_close(flat["shuffled"].sort().values, flat["fisher"].sort().values)
    assert not torch.equal(flat["shuffled"], flat["fisher"])
    assert flat["fisher"].mean() == pytest.approx(1.0)


def test_the_shuffled_fisher_is_shuffled_anew_for_every_task_and_the_fisher_is_not_touched(tasks):
    # Permuted MNIST's tasks are all the same size: a shuffle that depended on the size alone gave
    # every task the same one. Here the same images stand for two tasks of equal size.
    net = MultiHeadNet(models.build("simple_convnet", 1, in_channels=1, image_size=16, seed=0), [2, 2, 2])
    params = [n for n, _ in net.named_parameters() if n.startswith("body.")]

    def flat(criterion, seed=3, **kw):
        found = importance(net, tasks[0].train, criterion, params=params, examples=32, seed=seed, device="cpu", **kw)
        return torch.cat([v.flatten() for v in found.values()])

    first, second = flat("shuffled_fisher", task=0), flat("shuffled_fisher", task=1)
    assert not torch.equal(first, second)
    torch.testing.assert_close(first.sort().values, second.sort().values)  # the same values, elsewhere
    assert torch.equal(flat("shuffled_fisher", task=1), second)  # the same (seed, task): the same shuffle
    assert not torch.equal(flat("shuffled_fisher", seed=4, task=1), second)  # another seed: another shuffle
    # The Fisher itself, which EWC and SNIP-EWC use, does not depend on the task index.
    assert torch.equal(flat("fisher", task=5), flat("fisher"))
    for criterion in ("shuffled_fisher", "uniform"):
        with pytest.raises(ValueError, match="task"):
            flat(criterion, task=-1)


def test_the_default_lambda_grid_never_diverges_with_adam():
    # The chapters search λ over decades; with SGD the stiffest penalties blew the weights up.
    for lam in (1e-2, 1e2, 1e6):
        result = run_sequence(small(strategy="ewc", n_tasks=2, optimizer="adam", lr=1e-3, ewc_lambda=lam),
                              device="cpu")
        assert result["diverged"] is False and np.isfinite(result["R"]).all()


def test_packnet_budget_is_the_same_epochs_as_every_strategy():
    with pytest.raises(ValueError, match="retrain_epochs"):
        small(strategy="packnet", epochs=2, retrain_epochs=2)
    with pytest.raises(ValueError, match="task id"):
        small(strategy="packnet", epochs=2, scenario="class")


def test_linear_probe_reads_what_the_features_separate():
    # A body that passes the images through: the probe fits the synthetic classes well above chance,
    # and a body that outputs a constant leaves it at chance.
    kw = dict(num_classes=4, channels=1, image_size=8, per_class=60, test_per_class=30, clutter=0.3, max_shift=0)
    train, test = data.synthetic(True, **kw), data.synthetic(False, **kw)
    identity = torch.nn.Flatten()
    identity.register_parameter("unused", torch.nn.Parameter(torch.zeros(1)))
    assert linear_probe_accuracy(identity, train, test, device="cpu") > 0.9

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.w.expand(len(x), 5)

    assert linear_probe_accuracy(Constant(), train, test, device="cpu") < 0.4


def test_seen_accuracy_curve_averages_the_tasks_learned_so_far():
    # After task i the curve shows the mean of R[i, 0..i], not of the whole row (tasks still to come).
    import matplotlib

    matplotlib.use("Agg")
    from snipnb.plots import seen_accuracy_curves

    R = np.array([[90.0, 10.0, 10.0], [50.0, 80.0, 10.0], [40.0, 60.0, 70.0]])
    ax = seen_accuracy_curves({"a": R, "b": R - 10})
    x, y = ax.lines[0].get_data()
    assert list(x) == [1, 2, 3] and list(y) == pytest.approx([90.0, 65.0, 170 / 3])
    assert ax.lines[0].get_marker() != ax.lines[1].get_marker()
