import pytest
import torch

from snipnb import data, models
from snipnb.pruning import apply_masks, masks_from_scores, scores, weight
from snipnb.train import tested_epochs as epochs_tested  # under its own name pytest would collect it as a test
from snipnb.train import evaluate, fit


@pytest.fixture(scope="module")
def mnist_like():
    kw = dict(num_classes=4, channels=1, image_size=16, per_class=40, test_per_class=20, seed=0)
    return data.synthetic(train=True, **kw), data.synthetic(train=False, **kw)


def net(seed=0):
    return models.build("simple_convnet", 4, in_channels=1, image_size=16, seed=seed)


def test_fit_learns_the_synthetic_task(mnist_like):
    train, test = mnist_like
    model = net()
    before = evaluate(model, test)
    history = fit(model, train, test, epochs=6, lr=0.05, batch_size=32, progress=False)
    assert len(history.test_acc) == len(history.train_loss) == 6
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.final_acc > 0.6 > before + 0.2
    assert history.best_acc == max(history.test_acc) and 1 <= history.best_epoch <= 6
    assert history.images == 6 * len(train)


def test_a_cpu_run_repeats_exactly_with_the_same_seed(mnist_like):
    train, test = mnist_like
    runs = []
    for _ in range(2):
        model = net(seed=1)
        h = fit(model, train, test, epochs=2, batch_size=32, augment=True, seed=7, progress=False)
        runs.append((h, model.state_dict()))
    assert runs[0][0].train_loss == runs[1][0].train_loss
    assert runs[0][0].test_acc == runs[1][0].test_acc
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k
    other = fit(net(seed=1), train, test, epochs=2, batch_size=32, augment=True, seed=8, progress=False)
    assert other.train_loss != runs[0][0].train_loss  # the seed drives batch order and crops


def test_pruned_weights_are_exactly_zero_after_training(mnist_like):
    train, test = mnist_like
    model = net()
    batch = [(train.images[:64].float() / 255, train.labels[:64])]
    masks = masks_from_scores(scores(model, batch), 0.9)
    apply_masks(model, masks)
    fit(model, train, test, epochs=3, momentum=0.9, weight_decay=5e-3, batch_size=32, progress=False)
    for name, mask in masks.items():
        assert torch.count_nonzero(weight(model, name)[~mask]) == 0, name
        assert torch.count_nonzero(weight(model, name)[mask]) > 0.9 * mask.sum(), name


@pytest.mark.parametrize("kwargs, argument", [(dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"),
                                              (dict(schedule="step"), "schedule"),
                                              (dict(eval_every=0), "eval_every"),
                                              (dict(warmup_steps=-1), "warmup"),
                                              (dict(warmup_epochs=1, warmup_steps=5), "not both")])
def test_fit_rejects_bad_arguments(mnist_like, kwargs, argument):
    train, test = mnist_like
    with pytest.raises(ValueError, match=argument):
        fit(net(), train, test, **{"epochs": 1, **kwargs}, progress=False)


def test_eval_every_tests_on_schedule_and_always_after_the_last_epoch(mnist_like):
    train, test = mnist_like
    history = fit(net(), train, test, epochs=5, eval_every=2, batch_size=32, progress=False)
    assert history.test_epochs == [2, 4, 5] and len(history.test_acc) == 3
    assert history.best_epoch in (2, 4, 5) and len(history.train_loss) == 5


def test_evaluations_spreads_that_many_tests_over_a_run_of_any_length(mnist_like):
    assert epochs_tested(300, evaluations=6) == [50, 100, 150, 200, 250, 300]
    assert epochs_tested(43, evaluations=6) == [8, 15, 22, 29, 36, 43]  # the last is always tested
    assert epochs_tested(3, evaluations=6) == [1, 2, 3]  # fewer epochs than tests: every epoch
    assert epochs_tested(5, eval_every=2) == [2, 4, 5]  # without evaluations, every eval_every and the last
    for wrong, name in ((dict(evaluations=0), "evaluations"), (dict(evaluations=2.5), "evaluations"),
                        (dict(eval_every=0), "eval_every"), (dict(epochs=0), "epochs")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            epochs_tested(**{"epochs": 5, **wrong})
    train, test = mnist_like
    history = fit(net(), train, test, epochs=6, evaluations=3, eval_every=5, val=test, batch_size=32, progress=False)
    assert history.test_epochs == [2, 4, 6] and len(history.val_acc) == 3
    with pytest.raises(ValueError, match="evaluations"):
        fit(net(), train, test, epochs=1, evaluations=0, progress=False)


def test_penalty_is_added_to_the_loss_and_after_step_runs_every_step(mnist_like):
    train, test = mnist_like
    model = net()
    steps = []
    anchor = model.head.weight.detach().clone()

    def pull_head_to_anchor():
        return 2.0 * ((model.head.weight - anchor) ** 2).sum()

    fit(model, train, None, epochs=2, batch_size=32, penalty=pull_head_to_anchor,
        after_step=lambda: steps.append(1), progress=False)
    free = net()
    fit(free, train, None, epochs=2, batch_size=32, progress=False)
    assert len(steps) == 2 * -(-len(train) // 32)
    assert (model.head.weight - anchor).abs().max() < 0.25 * (free.head.weight - anchor).abs().max()


@pytest.mark.parametrize("labels", [torch.tensor([0, 4]), torch.tensor([-1, 0])], ids=["too_large", "negative"])
def test_labels_the_model_cannot_predict_are_refused(mnist_like, labels):
    train, test = mnist_like
    bad = data.ImageData(train.images[:2], labels, 5, train.mean, train.std, "bad")
    with pytest.raises(ValueError, match=r"4 output classes"):
        fit(net(), bad, None, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"4 output classes"):
        evaluate(net(), bad)


def test_step_schedule_decays_by_gamma_every_step_every_steps():
    from snipnb.train import make_optimizer

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = make_optimizer([param], 100, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                                          schedule="step", step_every=10, step_gamma=0.1)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[9] == pytest.approx(0.1)
    assert lrs[10] == lrs[19] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="step_every"):
        fit(net(), data.synthetic(num_classes=4, channels=1, image_size=16, per_class=4), None, 1,
            schedule="step", progress=False)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_the_fused_update_on_the_cpu_is_the_loops_update(kind):
    from snipnb.train import make_optimizer

    torch.manual_seed(0)
    start, x = torch.randn(50, 20), torch.randn(64, 50)
    trained = {}
    for fused in (False, True):
        weight = torch.nn.Parameter(start.clone())
        optimizer, scheduler = make_optimizer([weight], 20, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                              schedule="cosine", warmup_steps=3, optimizer=kind, fused=fused)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for _ in range(20):
            optimizer.zero_grad()
            (x @ weight).tanh().square().mean().backward()
            optimizer.step()
            scheduler.step()
        trained[fused] = weight.detach()
    moved = (trained[False] - start).abs().max()
    assert moved > 1e-2  # the steps did something, and the same thing both ways:
    torch.testing.assert_close(trained[True], trained[False], rtol=0, atol=1e-5)


def test_the_fused_update_is_the_default_on_the_cpu_only():
    from snipnb.train import make_optimizer

    recipe = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0, schedule="constant")
    on_cpu, _ = make_optimizer(iter([torch.nn.Parameter(torch.zeros(3))]), 10, **recipe)  # a generator, as fit passes
    assert on_cpu.defaults["fused"] is True and len(on_cpu.param_groups[0]["params"]) == 1
    elsewhere, _ = make_optimizer([torch.nn.Parameter(torch.zeros(3, device="meta"))], 10, **recipe)
    assert elsewhere.defaults["fused"] is None  # PyTorch's own default (foreach on a GPU), not False


def test_validation_picks_the_checkpoint_without_looking_at_the_test_set(mnist_like):
    train, test = mnist_like
    val = train.subset(torch.arange(40))
    history = fit(net(), train, test, epochs=3, val=val, batch_size=32, progress=False)
    assert len(history.val_acc) == len(history.test_acc) == 3
    assert history.test_at_best_val == history.test_acc[int(torch.tensor(history.val_acc).argmax())]
    assert torch.isnan(torch.tensor(fit(net(), train, test, epochs=1, progress=False).test_at_best_val))


def test_a_warm_up_in_steps_trains_as_the_same_warm_up_in_epochs(mnist_like, monkeypatch):
    from snipnb import train as train_module

    train, test = mnist_like  # 160 images: 5 steps an epoch at batch 32
    seen = []
    real = train_module.make_optimizer
    monkeypatch.setattr(train_module, "make_optimizer",
                        lambda *a, **kw: seen.append(kw["warmup_steps"]) or real(*a, **kw))
    by_steps, by_epochs = net(), net()
    fit(by_steps, train, None, epochs=2, batch_size=32, warmup_steps=7, progress=False)
    fit(by_epochs, train, None, epochs=2, batch_size=32, warmup_epochs=1.4, progress=False)
    assert seen == [7, 7]
    for a, b in zip(by_steps.parameters(), by_epochs.parameters()):
        assert torch.equal(a, b)


def killed_at_the_second_save(monkeypatch):
    """`fit` dies as a machine taken back would, after its second epoch but before writing its state."""
    import snipnb.train as train_module

    real, saves = train_module._save_state, []

    def save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(train_module, "_save_state", save)
    return lambda: monkeypatch.setattr(train_module, "_save_state", real)


def test_a_run_killed_part_way_goes_on_from_its_state_file_to_the_same_bits(mnist_like, tmp_path, monkeypatch):
    train, test = mnist_like
    kw = dict(epochs=3, lr=0.05, batch_size=32, augment=True, seed=7, progress=False)
    whole_model = net(seed=1)
    whole = fit(whole_model, train, test, **kw)
    state = tmp_path / "run.state"
    revive = killed_at_the_second_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit(net(seed=1), train, test, state_file=state, **kw)
    revive()
    assert torch.load(state, weights_only=False)["epochs_done"] == 1  # epoch 2 was lost with the kill
    torch.manual_seed(123)  # a new process: other global generators, and a model built anew (other weights)
    resumed_model = net(seed=2)
    resumed = fit(resumed_model, train, test, state_file=state, **kw)
    assert resumed.train_loss == whole.train_loss and resumed.test_acc == whole.test_acc
    assert resumed.test_epochs == whole.test_epochs and resumed.images == whole.images
    for name, value in whole_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    with pytest.raises(ValueError, match="another run.*seed"):
        fit(net(seed=1), train, test, state_file=state, **{**kw, "seed": 8})
    with pytest.raises(ValueError, match="penalty or after_step"):
        fit(net(seed=1), train, test, state_file=tmp_path / "other.state", after_step=lambda: None, **kw)
