import dataclasses
import math

import pandas as pd
import pytest
import torch

from snipnb import data
from snipnb.sweep import config_id
from snipnb.table1 import (OFFICIAL_WINDOW, Table1Run, _result, ablation_grid, ablation_view, ablations, build,
                           curves, data_of, early_losses, gaps, grid, last_stretch, masks_for, measure_speed,
                           run_table1_stack, split_validation, stability, stack_key)
from snipnb.train import History


def tiny(**kw):
    # 900 training images after the 10% validation split: 9 steps of 100 per epoch.
    return Table1Run(**{**dict(dataset="synthetic", synthetic_shape=(1, 16), epochs=2), **kw})


def test_a_stack_reports_every_checkpoint_choice_and_the_density_it_trained():
    runs = [tiny(), tiny(method="snip", sparsity=0.9), tiny(method="random", sparsity=0.9)]
    results = run_table1_stack(runs, "cpu")
    assert len(results) == 3
    for run, result in zip(runs, results):
        assert result["iterations"] == 2 * 9 and result["checkpoints"] == 2
        assert result["density"] == pytest.approx(1 - run.sparsity, abs=1e-3)
        # A run shorter than the official window: its best test error is the best of all checkpoints.
        assert 0 <= result["best_test_error"] <= min(result["final_error"], result["best_val_error"]) <= 100
        assert result["best_val_iteration"] in (9, 18)
        assert result["curve_iterations"] == [9, 18] and result["test_error_curve"][-1] == result["final_error"]
        best = result["curve_iterations"].index(result["best_val_iteration"])
        assert result["val_error_curve"][best] == min(result["val_error_curve"]) == result["val_error"]


def test_curves_lay_out_each_run_one_row_per_checkpoint():
    runs = [tiny(), tiny(method="snip", sparsity=0.9)]
    results = pd.DataFrame([{**vars(run), **result} for run, result in zip(runs, run_table1_stack(runs, "cpu"))])
    long = curves(results)
    assert len(long) == 4 and list(long.iteration) == [9, 18, 9, 18]
    last = long[long.iteration == 18].set_index("method")
    assert list(last.checkpoint_test_error) == list(results.set_index("method").loc[last.index].final_error)
    with pytest.raises(ValueError, match="recorded before table1 kept its curves"):
        curves(results.drop(columns="val_error_curve"))


def test_the_last_stretch_starts_at_the_first_checkpoint_after_the_last_decay():
    # 50 epochs of 540 iterations: the decay at 25,000 falls in epoch 47, whose checkpoint is at 25,380.
    assert last_stretch(27_000, 540) == pytest.approx(1 - 25_380 / 27_000)
    assert last_stretch(4_320, 540) == 0.3  # never decays
    assert last_stretch(75_000, 1000) == pytest.approx(1 - 51_000 / 75_000)  # the second decay, not the first
    assert last_stretch(25_200, 540, step_every=25_000) == 0.3  # the checkpoint after the decay is the last one


def test_a_run_repeats_exactly_on_the_cpu():
    run = tiny(method="shuffled_snip", sparsity=0.8)
    assert run_table1_stack([run], "cpu") == run_table1_stack([run], "cpu")


def test_the_validation_split_is_fixed_disjoint_and_left_out_of_training():
    whole = data.load_cached("synthetic", True, (1, 16))
    train, val, _ = data_of(tiny())
    assert (len(train), len(val)) == (900, 100)
    again_train, again_val = split_validation(whole, 0.1)
    assert torch.equal(val.images, again_val.images) and torch.equal(train.labels, again_train.labels)
    rows = {tuple(x.flatten().tolist()) for x in train.images}
    assert not any(tuple(x.flatten().tolist()) in rows for x in val.images)
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation(whole, 0.0001)


def test_a_fresh_initialisation_trains_under_the_mask_scored_on_the_first():
    scored, _ = build(tiny(method="snip", sparsity=0.9))
    fresh, fresh_masks = build(tiny(method="snip", sparsity=0.9, fresh_init=True))
    assert all(torch.equal(a, b) for a, b in zip(masks_for(tiny(method="snip", sparsity=0.9)).values(),
                                                  fresh_masks.values()))
    assert not torch.equal(scored.head.parametrizations.weight.original,
                           fresh.head.parametrizations.weight.original)


def test_the_saliency_batch_settings_change_the_masks():
    base = masks_for(tiny(method="snip", sparsity=0.9))
    for changed in (dict(saliency_images=500), dict(saliency_balanced=False)):
        other = masks_for(tiny(method="snip", sparsity=0.9, **changed))
        assert not torch.equal(base["body.1.weight"], other["body.1.weight"]), changed


def test_variance_scaling_initialises_biases_too():
    default, _ = build(tiny())
    scaled, _ = build(tiny(init="variance_scaling"))
    assert torch.count_nonzero(default.body[1].bias) == 0
    assert torch.count_nonzero(scaled.body[1].bias) == 300


@pytest.mark.parametrize("kwargs, argument", [
    (dict(method="snap", sparsity=0.5), "method"), (dict(method="snip"), "sparsity"),
    (dict(sparsity=0.5), "sparsity"), (dict(method="snip", sparsity=1.0), "sparsity"),
    (dict(model="lenet7"), "model"), (dict(init="he"), "init"), (dict(epochs=0), "epochs"),
    (dict(lr=0), "lr"), (dict(val_fraction=1.0), "val_fraction"), (dict(step_every=0), "step_every"),
    (dict(method="snip", sparsity=0.9, saliency_images=105), "saliency_images"),
    (dict(method="snip", sparsity=0.9, saliency_images=5, saliency_balanced=False), "saliency_images"),
    (dict(fresh_init=True), "fresh_init"), (dict(method="random", sparsity=0.9, saliency_images=1000),
                                            "saliency_images"),
    (dict(seed=-1), "seed"), (dict(seed=True), "seed")])
def test_bad_runs_are_rejected_when_made(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Table1Run(**kwargs)


def test_a_random_saliency_batch_may_hold_any_number_of_images():
    assert Table1Run(method="snip", sparsity=0.9, saliency_images=105, saliency_balanced=False).saliency_images == 105


def test_runs_that_differ_in_masks_or_init_stack_and_others_do_not():
    a = tiny(method="snip", sparsity=0.9, init="variance_scaling", fresh_init=True, seed=3)
    assert stack_key(a) == stack_key(tiny())
    assert stack_key(tiny(epochs=3)) != stack_key(tiny())
    with pytest.raises(ValueError, match="epochs"):
        run_table1_stack([tiny(), tiny(epochs=3)], "cpu")


def test_the_official_checkpoint_choice_looks_only_at_the_last_10k_iterations():
    history = History(test_epochs=list(range(1, 16)), test_acc=[0.9] * 15, val_acc=[0.5] * 15)
    history.test_acc[1] = 0.99  # iteration 2,000: outside the last 10,000 of 15,000
    history.test_acc[9] = 0.95  # iteration 10,000: inside
    history.val_acc[12] = 0.6  # the best validation accuracy, at iteration 13,000
    model = build(tiny())[0]
    result = _result(model, history, steps=1000)
    assert OFFICIAL_WINDOW == 10_000
    assert result["best_test_error"] == pytest.approx(5.0)
    assert result["best_val_error"] == pytest.approx(10.0) and result["best_val_iteration"] == 13_000
    assert result["final_error"] == pytest.approx(10.0) and result["iterations"] == 15_000
    # The learning curves: every checkpoint's iteration, validation and test error, in order.
    assert result["curve_iterations"] == list(range(1000, 15_001, 1000))
    assert result["val_error_curve"][12] == pytest.approx(40.0) and result["val_error_curve"][0] == pytest.approx(50.0)
    assert result["test_error_curve"][1] == pytest.approx(1.0) and result["test_error_curve"][-1] == pytest.approx(10.0)


def test_the_official_window_holds_the_checkpoints_after_the_last_10k_iterations_began():
    from snipnb.table1 import in_official_window

    # 15 epochs of 1,000 iterations: 5,000 is the window's open edge, 6,000 to 15,000 inside (10 checkpoints).
    assert in_official_window(range(1000, 15_001, 1000)) == [False] * 5 + [True] * 10
    assert in_official_window([4320]) == [True]  # a run shorter than the window: every checkpoint


def test_the_ablation_grid_shares_dense_runs_and_changes_one_thing_at_a_time():
    changes = ablations(long_epochs=5)
    settings = dict(dataset="synthetic", synthetic_shape=(1, 16), epochs=2)
    runs = ablation_grid(changes, [0.9, 0.95], 2, **settings)
    assert len(runs) == len(set(runs))
    dense = [r for r in runs if r.method == "dense"]
    # Dense runs only where an ablation changes them: 5 epochs, and variance scaling (shared by two ablations).
    assert sorted((r.epochs, r.init) for r in dense) == [(2, "variance_scaling")] * 2 + [(5, "default")] * 2
    snip = [r for r in runs if r.method == "snip"]
    assert len(snip) == len(changes) * 2 * 2
    assert all(r.model == "lenet300_100" for r in runs)


def test_the_ablation_view_pairs_each_ablation_with_the_dense_runs_trained_its_way():
    changes = ablations(long_epochs=5)
    settings = dict(dataset="synthetic", synthetic_shape=(1, 16), epochs=2)
    runs = grid("lenet300_100", [0.9], ["snip", "random"], 2, **settings)
    runs += [r for r in ablation_grid(changes, [0.9], 2, **settings) if r not in runs]
    # A made-up error per run that says which run it is: 10 per epoch, +1 for variance scaling, +seed/10.
    results = pd.DataFrame([{**dataclasses.asdict(r), "id": config_id(r),
                             "error": 10 * r.epochs + (r.init != "default") + r.seed / 10 + (r.method == "snip")}
                            for r in runs])
    default = Table1Run(**settings)
    view = ablation_view(results, changes, default)
    assert set(view.ablation) == {"default", *changes}
    for name in ("default", "fresh init under the mask", "official code (all three)", "5 epochs"):
        part = view[view.ablation == name]
        assert sorted(part.method) == ["dense", "dense", "snip", "snip"], name
        assert "random" not in set(part.method)
    official = view[view.ablation == "official code (all three)"]
    assert set(official.init) == {"variance_scaling"}
    assert set(view[view.ablation == "fresh init under the mask"].init) == {"default"}
    gap = gaps(view, "error")
    # Every SNIP run's made-up error is its dense partner's + 1: paired on the seed and the ablation.
    assert gap.gap.tolist() == [1.0] * len(gap) and len(gap) == 2 * (len(changes) + 1)


def test_speed_is_measured_in_run_iterations_per_second():
    assert measure_speed(tiny(), stack=2, iterations=3, device="cpu") > 0


def test_early_losses_tell_a_stable_learning_rate_from_one_that_diverges():
    stable, unstable = early_losses([tiny(lr=0.01), tiny(lr=0.01, seed=1)], 9, "cpu"), early_losses([tiny(lr=1e4)], 9, "cpu")
    assert all(0 < loss < 5 for loss in stable)
    assert not math.isfinite(unstable[0]) or unstable[0] > 100


def test_the_stability_check_trains_each_setting_with_its_momentum():
    # On these images LeNet-5-Caffe at lr 0.7 diverges in a few steps with momentum 0.9 but not without
    # it: what the check must show for MNIST at lr 0.1, momentum applied and not left at its default.
    checked = stability("lenet5_caffe", [dict(lr=0.7, momentum=0.9), dict(lr=0.7, momentum=0.0)], seeds=3,
                        iterations=9, device="cpu", dataset="synthetic", synthetic_shape=(1, 16))
    assert list(checked.columns) == ["model", "lr", "momentum", "seed 0", "seed 1", "seed 2", "diverged"]
    assert checked.diverged.tolist() == [3, 0]
    assert all(0 < loss < 5 for loss in checked.iloc[1][["seed 0", "seed 1", "seed 2"]])


def test_a_stack_of_one_run_trains_with_fit(monkeypatch):
    import snipnb.table1

    def no_stack(*args, **kwargs):
        raise AssertionError("a lone run went through fit_stack")

    monkeypatch.setattr(snipnb.table1, "fit_stack", no_stack)
    assert len(run_table1_stack([tiny(method="snip", sparsity=0.5)], "cpu")) == 1


def test_a_warm_up_is_counted_in_iterations_and_tames_a_rate_that_diverges_without_it(monkeypatch):
    import snipnb.train

    warmups = []
    make_optimizer = snipnb.train.make_optimizer
    monkeypatch.setattr(snipnb.train, "make_optimizer",
                        lambda *a, **kw: warmups.append(kw["warmup_steps"]) or make_optimizer(*a, **kw))
    run_table1_stack([tiny(warmup_iterations=5, epochs=1)], "cpu")  # 9 iterations an epoch
    assert warmups == [5]
    # lr 1e4 diverges within 9 steps (above); warmed up over a million iterations it stays below 0.1.
    assert all(0 < loss < 5 for loss in early_losses([tiny(lr=1e4, warmup_iterations=10**6)], 9, "cpu"))
    with pytest.raises(ValueError, match="warmup_iterations"):
        tiny(warmup_iterations=-1)
