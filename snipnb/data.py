"""Image datasets as whole uint8 tensors, plus the seeded splits the experiments are built from.

Every split is small enough to hold in memory, so a dataset is just `ImageData`: all images as one
uint8 N x C x H x W tensor, the labels, and the per-channel statistics of the *training* split (so
train and test are normalised identically). MNIST and CIFAR come through torchvision; `synthetic`
is a learnable stand-in with the same shapes for machines without the real files. `uci_digits`
are the 8 x 8 handwritten digits scikit-learn ships inside its package, so they need no download.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import pathlib
import socket
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

DATASETS = ("mnist", "cifar10", "cifar100", "synthetic", "uci_digits")
DOWNLOAD_TIMEOUT_S = 30.0


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


@dataclass(eq=False)
class ImageData:
    images: torch.Tensor = field(repr=False)  # uint8, N x C x H x W, contiguous, CPU
    labels: torch.Tensor = field(repr=False)  # int64, N
    num_classes: int
    mean: tuple[float, ...]  # per channel, training split, [0, 1] units
    std: tuple[float, ...]
    name: str

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be int64 of shape ({len(self.images)},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> ImageData:
        """The rows at `indices` (a tensor or list of ints, or a boolean mask); stats are kept."""
        index = torch.as_tensor(indices)
        if index.dtype != torch.bool:
            index = index.long()
        return ImageData(self.images[index].contiguous(), self.labels[index].clone(), self.num_classes,
                         self.mean, self.std, self.name)

    def classes(self, keep) -> ImageData:
        """Only the rows whose label is in `keep`. Labels are not renumbered, so heads stay comparable."""
        keep = torch.tensor([int(label) for label in keep], dtype=torch.int64)
        return self.subset(torch.isin(self.labels, keep))


def data_root(root=None) -> pathlib.Path:
    """`root` if given, else $SNIPNB_DATA, else ~/.cache/snipnb/data."""
    if root is None:
        root = os.environ.get("SNIPNB_DATA") or pathlib.Path.home() / ".cache" / "snipnb" / "data"
    return pathlib.Path(root).expanduser()


def load(name: str, train: bool = True, root=None, download: bool = True, **synthetic_options) -> ImageData:
    """Load a whole split of one of `DATASETS`.

    Real datasets are read from `data_root(root)` in torchvision's layout and downloaded there only
    if missing, `download` is true and $SNIPNB_OFFLINE is not set. `synthetic_options` go to
    `synthetic` and are an error for the real datasets.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got name={name!r}")
    if name == "synthetic":
        return synthetic(train=train, **synthetic_options)
    if name == "uci_digits" and not synthetic_options:
        return uci_digits(train=train)
    if synthetic_options:
        raise TypeError(f"options {sorted(synthetic_options)} only apply to name='synthetic', not {name!r}")

    root = data_root(root)
    images, labels = _read_torchvision(name, train, root, download)
    key = (name, str(root))
    if train:
        _TRAIN_STATS[key] = _channel_stats(images)
    elif key not in _TRAIN_STATS:
        _TRAIN_STATS[key] = _channel_stats(_read_torchvision(name, True, root, download)[0])
    mean, std = _TRAIN_STATS[key]
    return ImageData(images, labels, _NUM_CLASSES[name], mean, std, name)


def num_classes(name: str) -> int:
    """How many classes dataset `name` has (`synthetic` as `load_cached` makes it)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return _NUM_CLASSES.get(name, 10)


def smallest_class(name: str) -> int:
    """Images in the smallest class of the training split of `name` (as `load_cached` makes it),
    the largest k a few-shot run can ask for."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return _SMALLEST_TRAIN_CLASS[name]


# Train-split statistics per (name, root), so loading a test split does not re-read the training
# set every time. Stale only if the files on disk are replaced while the process runs.
_TRAIN_STATS: dict[tuple[str, str], tuple[tuple[float, ...], tuple[float, ...]]] = {}
_NUM_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
_SMALLEST_TRAIN_CLASS = {"mnist": 5421, "cifar10": 5000, "cifar100": 500, "synthetic": 100, "uci_digits": 87}
# The torchvision class, the folder under the root it reads, and the files it expects there.
_TORCHVISION = {
    "mnist": (datasets.MNIST, "MNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                                           "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
    "cifar10": (datasets.CIFAR10, "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta"),
    "cifar100": (datasets.CIFAR100, "cifar-100-python", "train, test, meta"),
}


def _read_torchvision(name: str, train: bool, root: pathlib.Path, download: bool):
    try:
        dataset = _open_torchvision(name, root, train, download)
    except (RuntimeError, OSError) as error:
        # The message says all there is to say; torchvision's chained traceback would bury it.
        raise DatasetNotFoundError(_not_found_message(name, root, download, error)) from None
    if name == "mnist":
        images = dataset.data.unsqueeze(1)  # N x 28 x 28 -> N x 1 x 28 x 28
    else:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # torchvision gives N x H x W x C
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _open_torchvision(name: str, root: pathlib.Path, train: bool, download: bool):
    dataset_class, folder, _ = _TORCHVISION[name]
    try:
        return dataset_class(root, train=train, download=False)
    except RuntimeError:
        # Unpacking and downloading write next to the data. A folder marked read-only (a shared
        # copy, say) is left alone, even when running as root, which could write there anyway.
        if _marked_read_only(root, root / folder):
            raise
    # Archives copied in by hand, or left by an earlier download, unpack without the network.
    for archive in _verified_archives(dataset_class, root):
        extract_archive(str(archive))
    if not download or _offline():
        return dataset_class(root, train=train, download=False)
    # torchvision's download has no timeout of its own; a stalled mirror would hang the run.
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        return dataset_class(root, train=train, download=True)


def _marked_read_only(*folders: pathlib.Path) -> bool:
    return any(folder.is_dir() and not folder.stat().st_mode & 0o222 for folder in folders)


def _verified_archives(dataset_class, root: pathlib.Path) -> list[pathlib.Path]:
    # Only archives whose md5 is torchvision's, so a half-finished download is never unpacked.
    if dataset_class is datasets.MNIST:
        candidates = [(root / "MNIST" / "raw" / file, md5) for file, md5 in dataset_class.resources]
    else:
        candidates = [(root / dataset_class.filename, dataset_class.tgz_md5)]
    return [path for path, md5 in candidates if check_integrity(str(path), md5)]


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _offline() -> bool:
    return os.environ.get("SNIPNB_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _not_found_message(name: str, root: pathlib.Path, download: bool, error: Exception) -> str:
    _, folder, files = _TORCHVISION[name]
    folder = root / folder
    if _marked_read_only(root, folder):
        why = "the folder is read-only, so nothing was unpacked or downloaded into it"
    elif _offline():
        why = "SNIPNB_OFFLINE is set, so no download was tried"
    elif not download:
        why = "download=False, so no download was tried"
    else:
        why = f"the download failed: {error}"
    return (f"dataset {name!r} not found in {folder} ({why}). To provide it, copy torchvision's "
            f"layout into a writable folder ({folder} holding {files}; the archives torchvision downloads, "
            f"placed where it puts them, also work) and point to it: root= in Python, -p data_root PATH for a "
            f"notebook run by papermill, or $SNIPNB_DATA; or run once online with download=True.")


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # A 256-bin histogram per channel gives exact mean/std in float64 without ever materialising a
    # float copy of the whole split (CIFAR would need 600 MB for that).
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].flatten(), minlength=256).double()
        counts /= counts.sum()
        mean = (counts * values).sum()
        means.append(mean.item())
        stds.append(((counts * (values - mean) ** 2).sum()).sqrt().item())
    return tuple(means), tuple(stds)


def synthetic(train: bool = True, *, num_classes: int = 10, channels: int = 3, image_size: int = 32,
              per_class: int = 100, test_per_class: int = 50, seed: int = 0, clutter: float = 1.5,
              max_shift: int = 3, noise: float = 0.1) -> ImageData:
    """A learnable stand-in for MNIST/CIFAR (`channels=1, image_size=28` for MNIST's shape).

    Each class has a smooth random prototype (a 4 x 4 random grid upsampled). A sample is its class
    prototype at a random contrast, shifted by up to `max_shift` pixels, plus a smooth random
    "clutter" image of relative strength `clutter`, a random brightness and pixel noise of std
    `noise` ([0, 1] units). Clutter lives in the same low-frequency space as the prototypes, so it
    cannot be averaged away and is what keeps the task from being trivially separable.
    `per_class` counts training samples per class. Train and test share prototypes for a seed but
    draw different samples; the same arguments always give identical tensors.
    """
    for argument, value, least in (("num_classes", num_classes, 1), ("channels", channels, 1),
                                   ("image_size", image_size, 1), ("per_class", per_class, 1),
                                   ("test_per_class", test_per_class, 1), ("max_shift", max_shift, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{argument} must be an int >= {least}, got {value!r}")
    for argument, value in (("clutter", clutter), ("noise", noise)):
        if not value >= 0:
            raise ValueError(f"{argument} must be >= 0, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    # Drawn first so each split's sample stream depends only on `seed`, not on the other options.
    train_seed, test_seed = torch.randint(2**62, (2,), generator=generator).tolist()
    canvas = image_size + 2 * max_shift
    prototypes = _smooth_images(num_classes, channels, canvas, generator)

    def draw(count: int, sample_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(sample_seed)
        n = num_classes * count
        labels = torch.arange(num_classes).repeat_interleave(count)[torch.randperm(n, generator=g)]
        shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=g)
        contrast = torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5, generator=g)
        brightness = 0.1 * torch.randn(n, 1, 1, 1, generator=g)
        images = torch.empty(n, channels, image_size, image_size, dtype=torch.uint8)
        pixel = torch.arange(image_size)
        channel = torch.arange(channels).view(1, -1, 1, 1)
        for start in range(0, n, 4096):  # chunks bound the float memory for CIFAR-sized requests
            part = slice(start, start + 4096)
            rows, cols = shifts[part, 0, None] + pixel, shifts[part, 1, None] + pixel
            crops = prototypes[labels[part].view(-1, 1, 1, 1), channel,
                               rows[:, None, :, None], cols[:, None, None, :]]
            signal = contrast[part] * crops + clutter * _smooth_images(len(crops), channels, image_size, g)
            pixels = 0.5 + 0.2 * signal + brightness[part] + noise * torch.randn(crops.shape, generator=g)
            images[part] = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        return images, labels

    train_images, train_labels = draw(per_class, train_seed)
    mean, std = _channel_stats(train_images)
    images, labels = (train_images, train_labels) if train else draw(test_per_class, test_seed)
    return ImageData(images, labels, num_classes, mean, std, "synthetic")


def _smooth_images(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    # Bicubic upsampling of a 4 x 4 random grid, written as the separable matrix product it is:
    # `F.interpolate` on thousands of tiny images is several times slower.
    grid = torch.randn(n, channels, 4, 4, generator=generator)
    basis = torch.eye(4).view(4, 1, 4, 1)
    upsample = F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=False).view(4, size).T
    return upsample @ grid @ upsample.T


UCI_TEST_FRACTION = 0.5  # held out per class, as scikit-learn's own digits example does


def uci_digits(train: bool = True, image_size: int = 28) -> ImageData:
    """The UCI handwritten digits (`sklearn.datasets.load_digits`): 1,797 scans of 8 x 8 pixels, 10 classes.

    Pixels count ink from 0 to 16, so they are scaled to 0..255 (ink bright on a dark ground, as in
    MNIST) and upsampled bilinearly to `image_size` (MNIST's 28 by default, so they can stand in
    for MNIST as another domain of the same classes). A fixed half of each class, drawn once with
    seed 0, is the test split; the other half is the training split and gives the statistics.
    """
    from sklearn.datasets import load_digits  # scikit-learn is needed only for this dataset

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 (the scans are 8 x 8), got {image_size!r}")
    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255 / 16)
    if image_size != 8:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = pixels.round().clamp(0, 255).to(torch.uint8).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()
        held_out = round(UCI_TEST_FRACTION * len(members))
        is_test[members[torch.randperm(len(members), generator=generator)[:held_out]]] = True
    mean, std = _channel_stats(images[~is_test])
    part = ~is_test if train else is_test
    return ImageData(images[part].contiguous(), labels[part].clone(), 10, mean, std, "uci_digits")


def few_shot_indices(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """`k` indices per class present in `labels`, as a sorted int64 tensor.

    One seeded permutation per class, truncated to `k`: for a fixed seed the k=1 subset lies inside
    the k=2 subset, and so on, so growing k only ever adds examples.
    """
    labels = torch.as_tensor(labels)
    classes, sizes = torch.unique(labels, return_counts=True)
    smallest = int(sizes.argmin())
    if k < 1 or k > sizes[smallest]:
        raise ValueError(f"k must be between 1 and the size of the smallest class (class "
                         f"{int(classes[smallest])} with {int(sizes[smallest])} examples), got k={k}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values.long()


VALIDATION_SEED = 0  # draws the one validation set that every run on a dataset shares


def validation_split(labels: torch.Tensor, per_class: int | None,
                     seed: int = VALIDATION_SEED) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(validation indices or None, the indices the k-shot subsets are drawn from) of a training
    split with these `labels`.

    `per_class` images of every class, 1 to one less than the smallest class, are held out once
    (`few_shot_indices` with `seed`), before any k-shot subset is drawn: the validation set is the
    same for every run's seed, k and method, and disjoint from every subset drawn from the rest.
    Drawing the subsets from the rest with `few_shot_indices(labels[rest], k, seed)` keeps them
    nested across k. Without `per_class` nothing is held out and the rest is the whole split.
    """
    labels = torch.as_tensor(labels)
    everything = torch.arange(len(labels))
    if per_class is None:
        return None, everything
    classes, sizes = torch.unique(labels, return_counts=True)
    smallest = int(sizes.argmin())
    # Holding out a whole class would leave it out of every k-shot subset drawn from the rest, silently.
    is_int = isinstance(per_class, numbers.Integral) and not isinstance(per_class, bool)
    if not is_int or not 1 <= per_class < sizes[smallest]:
        raise ValueError(f"val_per_class must be an int from 1 to {int(sizes[smallest]) - 1}, one less than the "
                         f"smallest class (class {int(classes[smallest])} with {int(sizes[smallest])} images), so "
                         f"every class keeps images to draw k-shot subsets from; got val_per_class={per_class!r}")
    held_out = few_shot_indices(labels, per_class, seed)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held_out] = False
    return held_out, everything[rest]


def class_split(labels_or_num_classes, n_tasks: int, seed: int | None = None) -> list[list[int]]:
    """Cut the classes into `n_tasks` equal groups, for class-incremental tasks.

    Classes are 0..C-1 for an int, else the distinct labels. `seed=None` keeps the natural order
    (Split-MNIST's 0/1, 2/3, ...); a seed shuffles them first. Each group is sorted.
    """
    if isinstance(labels_or_num_classes, int):
        classes = torch.arange(labels_or_num_classes)
    else:
        classes = torch.unique(torch.as_tensor(labels_or_num_classes))
    if n_tasks < 1 or len(classes) % n_tasks != 0:
        raise ValueError(f"n_tasks must be >= 1 and divide the number of classes ({len(classes)}), "
                         f"got n_tasks={n_tasks}")
    if seed is not None:
        classes = classes[torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))]
    return [sorted(group.tolist()) for group in classes.chunk(n_tasks)]


@functools.lru_cache(maxsize=8)
def load_cached(name: str, train: bool, synthetic_shape: tuple = (3, 32), synthetic_seed: int = 0) -> ImageData:
    """`load` once per process: a sweep worker runs many configs on the same data. For `synthetic`,
    `synthetic_shape` is (channels, image size) and `synthetic_seed` picks its class prototypes."""
    if name != "synthetic":
        return load(name, train=train)
    channels, size = synthetic_shape
    return load(name, train=train, channels=channels, image_size=size, seed=synthetic_seed)


def recipe_defaults(name: str) -> dict:
    """The per-dataset defaults the experiment configs share: crop-and-flip augmentation for CIFAR
    only (it does not preserve digits), and the image shape a synthetic stand-in should have."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got name={name!r}")
    grey = name in ("mnist", "uci_digits")
    return dict(augment=name in ("cifar10", "cifar100"), synthetic_shape=(1, 28) if grey else (3, 32))
