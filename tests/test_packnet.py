"""PackNet's claim, and shuffled SNIP-PackNet: SNIP's per-layer counts at random positions."""

import pytest
import torch

from snipnb import models
from snipnb.continual import MultiHeadNet, PackNet
from snipnb.sequence import ContinualRun, run_sequence


def _net():
    return MultiHeadNet(models.build("simple_convnet", 1, in_channels=1, image_size=16, seed=0), [2, 2, 2])


def _counts(packnet, task):
    return {n: int((packnet.owner[n] == task).sum()) for n in packnet.weights}


def _scores(net, packnet, value):
    named = dict(net.named_parameters())
    return {n: value(n, named[n]) for n in packnet.weights}


def test_shuffled_claim_keeps_the_scores_counts_per_layer_even_where_zero_scores_tie_across_layers():
    # SNIP's exact zeros: 60% of every layer scores 0, and the pooled top fraction cuts into them, so which
    # layers the tied zeros are kept in is topk's choice. The shuffled claim keeps that choice's counts.
    net = _net()
    packnet = PackNet(net)
    g = torch.Generator().manual_seed(1)

    def tied(n, p):
        s = torch.rand(p.shape, generator=g) + 1
        return s * (torch.rand(p.shape, generator=g) > 0.6)

    weight_scores = _scores(net, packnet, tied)
    zeros = sum(int((s == 0).sum()) for s in weight_scores.values())
    total = sum(s.numel() for s in weight_scores.values())
    assert total - zeros < 0.7 * total < total, "the kept fraction must cut into the tied zeros"
    by_score = PackNet(_net())
    by_score.claim(_net(), 0, weight_scores, keep=0.7)
    for seed in range(5):
        shuffled = PackNet(_net())
        shuffled.claim(_net(), 0, weight_scores, keep=0.7, shuffle=torch.Generator().manual_seed(seed))
        assert _counts(shuffled, 0) == _counts(by_score, 0)


def test_shuffled_claim_keeps_counts_that_are_not_a_uniform_fraction_at_other_positions():
    net = _net()
    packnet = PackNet(net)
    first, *rest = packnet.weights
    # The first layer scores highest everywhere: the scores keep all of it, and less of the others.
    weight_scores = _scores(net, packnet, lambda n, p: torch.rand(p.shape) + (10 if n == first else 0))
    by_score = PackNet(net)
    by_score.claim(_net(), 0, weight_scores, keep=0.5)
    shuffled = PackNet(net)
    shuffled.claim(net, 0, weight_scores, keep=0.5, shuffle=torch.Generator().manual_seed(0))
    counts = _counts(shuffled, 0)
    assert counts == _counts(by_score, 0)
    fractions = {n: counts[n] / packnet.owner[n].numel() for n in packnet.weights}
    assert fractions[first] == 1.0 and len(set(fractions.values())) > 1
    # Same counts, other positions: in a layer kept in part, the shuffle picks other weights than the scores.
    partial = [n for n in rest if 0 < fractions[n] < 1]
    assert partial and any(not torch.equal(shuffled.owner[n], by_score.owner[n]) for n in partial)
    # What a task does not keep is released and zeroed, as with the scores' own choice.
    named = dict(net.named_parameters())
    for n in packnet.weights:
        assert (named[n][shuffled.owner[n] == -1] == 0).all()


def test_a_later_shuffled_claim_leaves_the_first_tasks_weights_untouched():
    net = _net()
    packnet = PackNet(net)
    packnet.claim(net, 0, _scores(net, packnet, lambda n, p: p.detach().abs()), keep=0.3)
    first = {n: (packnet.owner[n] == 0).clone() for n in packnet.weights}
    named = dict(net.named_parameters())
    values = {n: named[n].detach()[first[n]].clone() for n in packnet.weights}
    # Task 1 scores task 0's weights highest: a claim that looked outside the free weights would take them.
    weight_scores = _scores(net, packnet, lambda n, p: torch.rand(p.shape) + 10 * first[n])
    packnet.claim(net, 1, weight_scores, keep=0.5, shuffle=torch.Generator().manual_seed(0))
    for n in packnet.weights:
        assert torch.equal(packnet.owner[n] == 0, first[n]), n
        assert torch.equal(named[n].detach()[first[n]], values[n]), n
        free_before = int((~first[n]).sum())
        assert int((packnet.owner[n] == 1).sum()) <= free_before
    kept = sum(_counts(packnet, 1).values())
    assert kept == round(0.5 * sum(int((~f).sum()) for f in first.values()))


def test_claim_rejects_a_fraction_outside_zero_to_one():
    net = _net()
    packnet = PackNet(net)
    with pytest.raises(ValueError, match="keep"):
        packnet.claim(net, 0, _scores(net, packnet, lambda n, p: p.detach().abs()), keep=1.5)


def test_the_runners_first_shuffled_claim_has_snip_packnets_counts_per_layer_at_other_positions(monkeypatch):
    claims = {}
    original = PackNet.claim

    def recording(self, net, task, weight_scores, keep, shuffle=None):
        original(self, net, task, weight_scores, keep, shuffle=shuffle)
        if task == 0:
            claims[recording.strategy] = {n: (o == 0).clone() for n, o in self.owner.items()}

    monkeypatch.setattr(PackNet, "claim", recording)
    base = dict(model="simple_convnet", dataset="synthetic", n_tasks=2, epochs=2, batch_size=32, lr=0.05, keep=0.3,
                synthetic_shape=(1, 16), importance_examples=64, retrain_epochs=1, augment=False, probe_examples=0)
    for strategy in ("snip_packnet", "shuffled_snip_packnet"):
        recording.strategy = strategy
        run_sequence(ContinualRun(strategy=strategy, **base), device="cpu")
    snip, shuffled = claims["snip_packnet"], claims["shuffled_snip_packnet"]
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {n: int(m.sum()) for n, m in snip.items()}
    assert any(not torch.equal(shuffled[n], snip[n]) for n in snip)
    # SNIP's own budget is not a uniform fraction of every layer (else the control would be random PackNet's).
    assert len({round(float(m.float().mean()), 3) for m in snip.values()}) > 1
