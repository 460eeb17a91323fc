import pytest
import torch

from snipnb.fewshot import FewShotRun, masks_for, run_few_shot, run_few_shot_stack, stack_key


def tiny(**kw):
    base = dict(model="simple_convnet", dataset="synthetic", k=2, epochs=2, batch_size=8, source="synthetic",
                synthetic_shape=(1, 16))
    return FewShotRun(**{**base, **kw})


def test_a_run_reports_accuracy_and_the_density_it_trained():
    result = run_few_shot(tiny(method="snip", sparsity=0.8))
    assert set(result) == {"final_acc", "best_acc", "density", "collapsed"}
    assert result["density"] == pytest.approx(0.2, abs=1e-4)
    assert 0 <= result["final_acc"] <= result["best_acc"] <= 100


def test_a_run_repeats_exactly_on_the_cpu():
    assert run_few_shot(tiny(method="shuffled_snip", sparsity=0.5)) == run_few_shot(tiny(method="shuffled_snip",
                                                                                         sparsity=0.5))


def test_cross_domain_snip_scores_other_images_than_labeled_snip():
    labeled, cross = masks_for(tiny(method="snip", sparsity=0.9)), masks_for(tiny(method="snip_cross_domain",
                                                                                   sparsity=0.9))
    assert set(labeled) == set(cross)
    assert not all(torch.equal(labeled[n], cross[n]) for n in labeled)
    assert sum(int(m.sum()) for m in cross.values()) == sum(int(m.sum()) for m in labeled.values())


def test_the_seed_picks_the_subset_and_the_masks():
    a, b = masks_for(tiny(method="snip", sparsity=0.9, seed=0)), masks_for(tiny(method="snip", sparsity=0.9, seed=1))
    assert not torch.equal(a["body.0.weight"], b["body.0.weight"])
    assert masks_for(tiny()) is None  # dense


@pytest.mark.parametrize("kwargs, argument", [(dict(method="snap"), "method"),
                                              (dict(method="dense", sparsity=0.5), "sparsity"),
                                              (dict(method="snip", sparsity=1.0), "sparsity"),
                                              (dict(k=0), "k"), (dict(k=101), "k"),
                                              (dict(dataset="cifar100", k=501), "k"),
                                              (dict(model="resnet1000"), "model"),
                                              (dict(dataset="imagenet"), "dataset"),
                                              (dict(source="svhn"), "source"),
                                              (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"),
                                              (dict(batch_size=0), "batch_size"),
                                              (dict(eval_every=0), "eval_every")])
def test_bad_runs_are_rejected_when_made(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        tiny(**kwargs)


def test_a_stack_of_runs_gives_what_the_runs_give_one_by_one():
    # A few-shot grid cell: dense, two sparsities of SNIP and shuffled SNIP, two seeds.
    cell = [tiny(seed=s, method=m, sparsity=sp, augment=False) for s in (0, 1)
            for m, sp in (("dense", 0.0), ("snip", 0.5), ("snip", 0.8), ("shuffled_snip", 0.8))]
    stacked = run_few_shot_stack(cell)
    alone = run_few_shot_stack(cell, stacked=False)
    for a, b in zip(stacked, alone):
        assert a["density"] == b["density"] and a["collapsed"] == b["collapsed"]
        assert a["final_acc"] == pytest.approx(b["final_acc"], abs=1.0)  # a borderline image or two
    assert run_few_shot(cell[1]) == alone[1]


def test_saliency_is_scored_once_per_network_and_reused_across_sparsities(monkeypatch):
    from snipnb import experiment

    calls = []
    original = experiment.method_scores
    monkeypatch.setattr(experiment, "method_scores", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    cell = [tiny(seed=0, method=m, sparsity=sp, epochs=1)
            for m, sp in (("snip", 0.5), ("snip", 0.8), ("shuffled_snip", 0.8), ("random", 0.5), ("random", 0.9))]
    run_few_shot_stack(cell)
    assert sorted(calls) == ["random", "snip"]


def test_a_stack_refuses_runs_that_differ_in_what_it_shares():
    with pytest.raises(ValueError, match="'k'"):
        run_few_shot_stack([tiny(k=2), tiny(k=3)])
    with pytest.raises(ValueError, match="'epochs'"):
        run_few_shot_stack([tiny(), tiny(epochs=3, seed=1)])
    assert stack_key(tiny(seed=0, method="snip", sparsity=0.5)) == stack_key(tiny(seed=3))


def test_batchnorm_mode_while_scoring_is_a_setting_of_the_run():
    eval_masks = masks_for(tiny(method="snip", sparsity=0.9))
    train_masks = masks_for(tiny(method="snip", sparsity=0.9, bn_mode="train"))
    assert not all(torch.equal(eval_masks[n], train_masks[n]) for n in eval_masks)
    # In one stack the two modes are scored apart, not served from one cache entry.
    both = run_few_shot_stack([tiny(method="snip", sparsity=0.9, epochs=1),
                               tiny(method="snip", sparsity=0.9, epochs=1, bn_mode="train")])
    assert len(both) == 2
    with pytest.raises(ValueError, match="bn_mode"):
        tiny(bn_mode="frozen")


def test_a_stack_of_one_run_is_the_run_trained_alone(monkeypatch):
    # On the CPU the chapters run stacks of one (a vmapped stack is slower there): such a run trains
    # with `fit`, exactly the run `run_few_shot` makes.
    import snipnb.fewshot

    def no_stack(*args, **kwargs):
        raise AssertionError("a lone run went through fit_stack")

    monkeypatch.setattr(snipnb.fewshot, "fit_stack", no_stack)
    run = tiny(method="snip", sparsity=0.5, augment=False)
    assert run_few_shot_stack([run]) == [run_few_shot(run)]
