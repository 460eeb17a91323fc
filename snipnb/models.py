"""The networks SNIP is studied on, built by name.

Every model is a `Net`: a feature extractor (`body`) followed by one linear
classifier (`head`), so `model(x) == model.head(model.embed(x))`. Label-free
saliency scores `embed`, and continual learning swaps or stacks heads, so the
split is the one structural promise every architecture keeps.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

NAMES = ("resnet18", "resnet20", "vgg11", "wrn16_2", "simple_convnet", "lenet300_100", "lenet5_caffe", "mlp400", "mlp1000")

# The input each model is built for unless told otherwise: the SNIP paper's LeNets and the continual-
# learning MLPs are MNIST networks (so their parameter counts match the papers'), the rest CIFAR networks.
DEFAULT_INPUT = {name: (1, 28) if name.startswith(("lenet", "mlp")) else (3, 32) for name in NAMES}

# Smallest square input each model accepts. Two floor-mode max-pool stacks
# shrink the image to nothing below these; everything else pools adaptively.
_MIN_IMAGE_SIZE = {"simple_convnet": 16, "lenet5_caffe": 16}


class Net(nn.Module):
    """A feature extractor plus a linear head; `embed_dim` is the head's width."""

    def __init__(self, body: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.embed_dim = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _pool_flatten() -> nn.Sequential:
    # Global average pooling lets every CNN accept any image size.
    # torch.flatten (not .view) copes with channels_last tensors.
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


class BasicBlock(nn.Module):
    """Post-activation residual block of He et al. (conv-BN-ReLU-conv-BN, add, ReLU).

    `shortcut="B"` projects with a 1x1 conv + BN when the shape changes
    (ResNet-18); `shortcut="A"` subsamples and zero-pads the channels, which
    adds no parameters (the CIFAR ResNet-20 of the paper).
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        self.pad = 0
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            else:
                self.stride, self.pad = stride, cout - cin

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return self.shortcut(x)
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the zero channels between both ends, as the reference code does.
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU-conv twice, 1x1 conv shortcut on shape change.

    As in the reference implementation, a projecting shortcut reads the
    pre-activated input, so BN-ReLU is shared by both branches.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.project is None else self.project(act)
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _stages(block, widths, blocks_per_stage, strides, cin, **kw) -> list[nn.Module]:
    layers = []
    for width, stride in zip(widths, strides):
        for i in range(blocks_per_stage):
            layers.append(block(cin, width, stride if i == 0 else 1, **kw))
            cin = width
    return layers


def _resnet18(c: int, s: int) -> tuple[nn.Module, int]:
    # CIFAR stem: 3x3 stride 1 and no max-pool, so 32x32 inputs keep detail.
    stem = [_conv3x3(c, 64), nn.BatchNorm2d(64), nn.ReLU()]
    blocks = _stages(BasicBlock, (64, 128, 256, 512), 2, (1, 2, 2, 2), 64, shortcut="B")
    return nn.Sequential(*stem, *blocks, _pool_flatten()), 512


def _resnet20(c: int, s: int) -> tuple[nn.Module, int]:
    stem = [_conv3x3(c, 16), nn.BatchNorm2d(16), nn.ReLU()]
    blocks = _stages(BasicBlock, (16, 32, 64), 3, (1, 2, 2), 16, shortcut="A")
    return nn.Sequential(*stem, *blocks, _pool_flatten()), 64


def _vgg11(c: int, s: int) -> tuple[nn.Module, int]:
    layers, cin = [], c
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            # ceil_mode keeps five halvings legal below 32 px (28 -> 14-7-4-2-1);
            # at 32 px it is identical to the usual floor-mode pool.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers, _pool_flatten()), 512


def _wrn16_2(c: int, s: int) -> tuple[nn.Module, int]:
    # Depth 16 = 6 * 2 blocks + 4, so two blocks per stage; width 2 doubles 16-32-64.
    blocks = _stages(PreActBlock, (32, 64, 128), 2, (1, 2, 2), 16)
    tail = [nn.BatchNorm2d(128), nn.ReLU(), _pool_flatten()]
    return nn.Sequential(_conv3x3(c, 16), *blocks, *tail), 128


def _simple_convnet(c: int, s: int) -> tuple[nn.Module, int]:
    layers, cin = [], c
    for _ in range(4):
        layers += [nn.Conv2d(cin, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
        cin = 64
    return nn.Sequential(*layers, _pool_flatten()), 64


def _lenet300_100(c: int, s: int) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU()), 100


def _lenet5_caffe(c: int, s: int) -> tuple[nn.Module, int]:
    # Faithful to Caffe's lenet_train_test.prototxt: no ReLU after the convs,
    # the only nonlinearities are the max-pools and the ReLU after fc 500.
    side = ((s - 4) // 2 - 4) // 2
    convs = [nn.Conv2d(c, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2)]
    fc = [nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU()]
    return nn.Sequential(*convs, *fc), 500


def _mlp(units: int):
    """Two hidden layers of `units` ReLU units: van de Ven et al.'s continual-learning MLP (their
    `fc_layers=3` counts the output layer), 400 units for Split MNIST and 1000 for Permuted MNIST."""
    def build(c: int, s: int) -> tuple[nn.Module, int]:
        return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, units), nn.ReLU(), nn.Linear(units, units),
                             nn.ReLU()), units
    return build


_BUILDERS = {
    "resnet18": _resnet18,
    "resnet20": _resnet20,
    "vgg11": _vgg11,
    "wrn16_2": _wrn16_2,
    "simple_convnet": _simple_convnet,
    "lenet300_100": _lenet300_100,
    "lenet5_caffe": _lenet5_caffe,
    "mlp400": _mlp(400),
    "mlp1000": _mlp(1000),
}
assert tuple(_BUILDERS) == NAMES


INITS = ("default", "variance_scaling")


def _variance_scaling(model: nn.Module) -> None:
    # TensorFlow 1.x's tf.variance_scaling_initializer() with its defaults, which the official SNIP
    # code uses for weights and biases alike: a normal of std sqrt(1 / fan_in) truncated at 2 std
    # (TF's fan_in of a 1-D bias is its length; a conv's fan_in is in_channels * kernel area).
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.trunc_normal_(m.weight, std=fan_in ** -0.5, a=-2 * fan_in ** -0.5, b=2 * fan_in ** -0.5)
            if m.bias is not None:
                std = len(m.bias) ** -0.5
                nn.init.trunc_normal_(m.bias, std=std, a=-2 * std, b=2 * std)


def _init(model: nn.Module, name: str, init: str = "default") -> None:
    if init == "variance_scaling":
        _variance_scaling(model)
        return
    if name.startswith("lenet"):
        # SNIP's LeNet experiments use variance-scaling (Glorot) init; saliency
        # |g * w| depends on the weight scale, so match the paper, head included.
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
        return
    # Standard ResNet-style init for conv weights; linear and BN stay at PyTorch defaults.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _check_positive(arg: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be a positive int, got {value!r}")


def build(name: str, num_classes: int, in_channels: int | None = None, image_size: int | None = None,
          seed: int | None = None, init: str = "default") -> nn.Module:
    """Build model `name` for `in_channels` x `image_size`^2 inputs (default: `DEFAULT_INPUT[name]`,
    1 x 28 x 28 for the LeNets and the MLPs, 3 x 32 x 32 for the rest).

    `init="default"`: Glorot normal with zero biases for the LeNets (the SNIP paper's "variance
    scaling"), He for the CNNs' convolutions. `init="variance_scaling"`: TensorFlow 1.x's default
    variance scaling, biases included, as the official SNIP code initialises its LeNets.

    With `seed`, initialisation is reproducible and the caller's global RNG
    state is left untouched (so building a model never shifts data order).
    """
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    default_channels, default_size = DEFAULT_INPUT[name]
    in_channels = default_channels if in_channels is None else in_channels
    image_size = default_size if image_size is None else image_size
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("image_size", image_size)
    min_size = _MIN_IMAGE_SIZE.get(name, 1)
    if image_size < min_size:
        raise ValueError(f"image_size must be at least {min_size} for {name}, got {image_size}")

    def make() -> Net:
        body, dim = _BUILDERS[name](in_channels, image_size)
        model = Net(body, dim, num_classes)
        _init(model, name, init)
        return model

    if seed is None:
        return make()
    # Models are built on the CPU, so only the CPU generator is forked and seeded;
    # torch.manual_seed would also reseed (and so disturb) every CUDA generator.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return make()
