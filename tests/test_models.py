import pytest
import torch

from snipnb.models import NAMES, build


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# Pinned counts, each checked by hand (conv = cin*cout*k*k [+cout bias], BN = 2*c, linear = in*out+out):
#
# resnet18 (3ch, 100 classes): the standard CIFAR ResNet-18 figure, 11,220,132.
#
# resnet20 (3ch, 100): stem 3*16*9 + BN 32 = 464; stage 1: 3 * (2*16*16*9 + 64) = 14,016;
#   stage 2: (16*32*9 + 32*32*9 + 128) + 2 * (2*32*32*9 + 128) = 13,952 + 37,120 = 51,072;
#   stage 3: (32*64*9 + 64*64*9 + 256) + 2 * (2*64*64*9 + 256) = 55,552 + 147,968 = 203,520;
#   body 269,072 + head 64*100+100 = 6,500 -> 275,572. (At 10 classes: 269,722, the
#   published option-A figure. The oft-quoted 272,474 adds 2,752 for 1x1 conv+BN
#   projections, i.e. option B: 16*32 + 2*32 + 32*64 + 2*64 = 2,752.)
#
# vgg11 (3ch, 100): convs with bias 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160
#   + 3 * 2,359,808 = 9,220,480; BN 2*(64+128+256+256+512*4) = 5,504; head 512*100+100
#   = 51,300 -> 9,277,284 (= 9,231,114 at 10 classes + 90*513).
#
# wrn16_2 (3ch, 100): stem 3*16*9 = 432;
#   stage 1: [BN 32 + 16*32*9 + BN 64 + 32*32*9 + 1x1 16*32] + [64 + 9,216 + 64 + 9,216]
#            = 14,432 + 18,560 = 32,992;
#   stage 2: [64 + 18,432 + 128 + 36,864 + 2,048] + [128 + 36,864 + 128 + 36,864]
#            = 57,536 + 73,984 = 131,520;
#   stage 3: [128 + 73,728 + 256 + 147,456 + 8,192] + [256 + 147,456 + 256 + 147,456]
#            = 229,760 + 295,424 = 525,184;
#   final BN 256; body 690,384 + head 128*100+100 = 12,900 -> 703,284 (691,674 at 10 classes).
#
# simple_convnet (3ch, 100): (3*64*9 + 64 + 128) + 3 * (64*64*9 + 64 + 128)
#   = 1,920 + 3 * 37,056 = 113,088; head 64*100+100 = 6,500 -> 119,588.
#
# lenet300_100 (1x28x28, 10): 784*300+300 + 300*100+100 + 100*10+10 = 235,500 + 30,100 + 1,010.
# lenet5_caffe (1x28x28, 10): 28-5+1=24 -> pool 12 -> 8 -> pool 4, so
#   (25*20+20) + (20*25*50+50) + (50*16*500+500) + (500*10+10) = 520 + 25,050 + 400,500 + 5,010.
CNN_COUNTS_3x32_100 = {
    "resnet18": 11_220_132,
    "resnet20": 275_572,
    "vgg11": 9_277_284,
    "wrn16_2": 703_284,
    "simple_convnet": 119_588,
}
# mlp400 (1x28x28, 10): 784*400+400 + 400*400+400 + 400*10+10 = 314,000 + 160,400 + 4,010.
# mlp1000 (1x28x28, 10): 784*1000+1000 + 1000*1000+1000 + 1000*10+10 = 785,000 + 1,001,000 + 10,010.
MNIST_COUNTS_1x28_10 = {"lenet300_100": 266_610, "lenet5_caffe": 431_080, "mlp400": 478_410, "mlp1000": 1_796_010}


def test_names_cover_all_pins():
    assert set(NAMES) == set(CNN_COUNTS_3x32_100) | set(MNIST_COUNTS_1x28_10)


@pytest.mark.parametrize("name", sorted(CNN_COUNTS_3x32_100))
def test_cnn_param_counts(name):
    assert n_params(build(name, 100, 3, 32)) == CNN_COUNTS_3x32_100[name]


@pytest.mark.parametrize("name", sorted(MNIST_COUNTS_1x28_10))
def test_mnist_network_param_counts(name):
    assert n_params(build(name, 10, 1, 28)) == MNIST_COUNTS_1x28_10[name]


@pytest.mark.parametrize("name", sorted(MNIST_COUNTS_1x28_10))
def test_mnist_networks_default_to_the_papers_mnist_input(name):
    # The SNIP paper's LeNets and van de Ven's MLPs are 28 x 28 MNIST networks: no extra arguments for their counts.
    assert n_params(build(name, 10)) == MNIST_COUNTS_1x28_10[name]
    assert n_params(build(name, 10, in_channels=1)) == MNIST_COUNTS_1x28_10[name]


def test_counts_at_ten_classes_match_published_figures():
    assert n_params(build("resnet20", 10)) == 269_722
    assert n_params(build("vgg11", 10)) == 9_231_114
    assert n_params(build("wrn16_2", 10)) == 691_674


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,size,classes", [(3, 32, 100), (1, 28, 10)])
def test_shape_and_head_embed_split(name, channels, size, classes):
    model = build(name, classes, channels, size, seed=0).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x)
        feats = model.embed(x)
        assert out.shape == (2, classes)
        assert isinstance(model.head, torch.nn.Linear)
        assert feats.shape == (2, model.embed_dim) == (2, model.head.in_features)
        torch.testing.assert_close(model.head(feats), out)


def test_train_mode_forward_and_backward_reach_every_parameter():
    # Saliency needs a gradient for every weight; a dead branch would show up as None.
    model = build("wrn16_2", 10, seed=0).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["resnet20", "lenet5_caffe"])
def test_seed_reproducible_and_distinct(name):
    assert _same_weights(build(name, 10, seed=1), build(name, 10, seed=1))
    assert not _same_weights(build(name, 10, seed=1), build(name, 10, seed=2))


def test_seed_leaves_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build("simple_convnet", 5, seed=7)
    assert torch.equal(torch.get_rng_state(), before)


def test_lenet_uses_glorot_init_with_zero_biases():
    model = build("lenet300_100", 10, 1, 28, seed=0)
    first = model.body[1]
    assert torch.count_nonzero(first.bias) == 0 and torch.count_nonzero(model.head.bias) == 0
    # Glorot normal std = sqrt(2 / (fan_in + fan_out)); PyTorch's default would be ~3x smaller.
    expected = (2 / (784 + 300)) ** 0.5
    assert abs(first.weight.std().item() - expected) / expected < 0.05


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(name="resnet50", num_classes=10), "resnet50"),
        (dict(name="resnet20", num_classes=0), "num_classes"),
        (dict(name="resnet20", num_classes=10, in_channels=0), "in_channels"),
        (dict(name="resnet20", num_classes=10, image_size=0), "image_size"),
        (dict(name="lenet5_caffe", num_classes=10, image_size=12), "image_size"),
        (dict(name="simple_convnet", num_classes=10, image_size=8), "image_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        build(**kwargs)


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError) as err:
        build("alexnet", 10)
    assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize("name", ["simple_convnet", "lenet5_caffe"])
def test_smallest_accepted_image_size_runs(name):
    model = build(name, 3, 1, 16).eval()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_channels_last_matches_contiguous():
    model = build("resnet20", 10, seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_variance_scaling_is_tensorflows_truncated_normal_biases_included():
    model = build("lenet300_100", 10, seed=0, init="variance_scaling")
    first = model.body[1]
    std = 784 ** -0.5
    assert first.weight.abs().max() <= 2 * std + 1e-6  # truncated at two standard deviations
    # The std of a normal truncated at ±2σ is 0.8796σ.
    assert float(first.weight.detach().std()) == pytest.approx(0.8796 * std, rel=0.02)
    assert first.bias.abs().max() > 0 and first.bias.abs().max() <= 2 * 300 ** -0.5 + 1e-6
    with pytest.raises(ValueError, match="init"):
        build("lenet300_100", 10, init="orthogonal")
