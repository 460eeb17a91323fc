"""Few-shot episodes and the class-split datasets meta-learning draws them from.

A meta-learning dataset is three disjoint sets of *classes* (`MetaSplits`: meta-train, meta-val,
meta-test), each an `ImageData` whose labels number its own classes 0..C-1. An episode is an N-way
task: N classes of one split, K support and Q query images of each, relabelled 0..N-1 in a random
order. `episodes` draws them from one split only, so a split's classes can never leak into another's
episodes, and a seed fixes the whole stream.

Here: `mnist_rotations` (an Omniglot-style set made of MNIST, a class being a digit at one of four
rotations; meta-train on digits 0-5, meta-val on 6-7, meta-test on 8-9) and `synthetic` (for tests).
For users: `omniglot` (torchvision's download, read from its folders), `cifar_fs` (CIFAR-100 with the
64/16/20 class split of Bertinetto et al. 2019) and `mini_imagenet` (files the user provides).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib

import numpy as np
import torch

from . import data
from .data import ImageData

DATASETS = ("mnist_rotations", "omniglot", "cifar_fs", "mini_imagenet", "synthetic")
SPLITS = ("train", "val", "test")

# CIFAR-FS (Bertinetto et al., ICLR 2019): the meta-val and meta-test classes of their split files;
# meta-train is the other 64 CIFAR-100 classes.
CIFAR_FS_VAL = ("beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
                "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor")
CIFAR_FS_TEST = ("baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
                 "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale",
                 "woman", "worm")
MNIST_ROTATION_DIGITS = {"train": (0, 1, 2, 3, 4, 5), "val": (6, 7), "test": (8, 9)}
ROTATIONS = (0, 90, 180, 270)


@dataclasses.dataclass(eq=False)
class MetaSplits:
    """Three disjoint class sets. Each split's labels are 0..C-1; `class_names[split][c]` names class c.

    All splits are normalised with the meta-train split's channel statistics (`train.mean`, `train.std`).
    """

    train: ImageData
    val: ImageData
    test: ImageData
    class_names: dict  # split -> tuple of names, one per class

    def __getitem__(self, split: str) -> ImageData:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


@dataclasses.dataclass(eq=False)
class Episode:
    """One N-way task, or a stack of T tasks (a leading task dimension on every tensor).

    Images are normalised float32; labels are 0..N-1. `classes` holds the split's class ids behind
    labels 0..N-1, so `classes[y]` names the class of an image labelled y.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor

    def tensors(self) -> tuple:
        return self.support_x, self.support_y, self.query_x, self.query_y, self.classes

    def to(self, device) -> Episode:
        return Episode(*(t.to(device) for t in self.tensors()))


def check_episode_shape(split: ImageData, n_way: int, k_shot: int, q_query: int, name: str = "split") -> None:
    """ValueError unless `split` has n_way classes with at least k_shot + q_query images each."""
    for arg, value in (("n_way", n_way), ("k_shot", k_shot), ("q_query", q_query)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    sizes = torch.bincount(split.labels, minlength=split.num_classes)
    present = int((sizes > 0).sum())
    if n_way > present:
        raise ValueError(f"n_way={n_way} is larger than the {present} classes of the {name} split")
    smallest = int(sizes[sizes > 0].min())
    if k_shot + q_query > smallest:
        raise ValueError(f"k_shot + q_query = {k_shot} + {q_query} = {k_shot + q_query} is larger than the "
                         f"smallest class of the {name} split ({smallest} images)")


class EpisodeSampler:
    """Draws episodes of one split, on `device`, from a seeded generator of its own.

    The split's images stay on the device as uint8; an episode is one gather and one normalisation.
    Class choice and image choice come from `seed` only, so two samplers with the same seed yield the
    same episodes, whatever else the program draws.
    """

    def __init__(self, split: ImageData, n_way: int, k_shot: int, q_query: int, seed: int, device="cpu",
                 name: str = "split"):
        check_episode_shape(split, n_way, k_shot, q_query, name)
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        channels = split.images.shape[1]
        self.mean = torch.tensor(split.mean, device=self.device).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(split.std, device=self.device).view(1, channels, 1, 1) * 255
        order = torch.argsort(split.labels, stable=True)
        sizes = torch.bincount(split.labels, minlength=split.num_classes)
        self.present = torch.nonzero(sizes > 0).flatten()
        # Members of class c are order[starts[c] : starts[c] + sizes[c]]: one table, no Python lists.
        self.order, self.sizes = order, sizes
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, tasks: int | None = None) -> Episode:
        """One episode, or `tasks` episodes stacked on a leading task dimension."""
        if tasks is None:
            return self._squeeze(self.sample(1))
        n, per_class = self.n_way, self.k_shot + self.q_query
        g = self.generator
        picks = torch.stack([torch.randperm(len(self.present), generator=g)[:n] for _ in range(tasks)])
        classes = self.present[picks]  # tasks x n
        # per_class distinct members of each class: the first per_class of a random ranking of its members.
        ranks = torch.rand(tasks, n, int(self.sizes.max()), generator=g)
        ranks[torch.arange(int(self.sizes.max())) >= self.sizes[classes].unsqueeze(-1)] = 2.0
        chosen = ranks.argsort(-1)[..., :per_class]  # tasks x n x per_class, positions within each class
        index = self.order[self.starts[classes].unsqueeze(-1) + chosen].to(self.device)
        images = ((self.images[index].float() - self.mean) / self.std)  # tasks x n x per_class x C x H x W
        labels = torch.arange(n, device=self.device).view(1, n, 1).expand(tasks, n, per_class)
        shape = images.shape[3:]
        k = self.k_shot
        return Episode(images[:, :, :k].reshape(tasks, n * k, *shape), labels[:, :, :k].reshape(tasks, -1),
                       images[:, :, k:].reshape(tasks, -1, *shape), labels[:, :, k:].reshape(tasks, -1),
                       classes.to(self.device))

    @staticmethod
    def _squeeze(batch: Episode) -> Episode:
        return Episode(*(t[0] for t in batch.tensors()))


def episodes(split: ImageData, n_way: int, k_shot: int, q_query: int, seed: int, count: int | None = None,
             tasks: int | None = None, device="cpu"):
    """Yield `count` episodes (forever if None) of `split`, the same ones for the same seed.

    With `tasks`, each item is a meta-batch: `tasks` episodes stacked on a leading dimension.
    """
    sampler = EpisodeSampler(split, n_way, k_shot, q_query, seed, device)
    drawn = 0
    while count is None or drawn < count:
        yield sampler.sample(tasks)
        drawn += 1


# ------------------------------------------------------------------------------------- datasets


def _split(images: torch.Tensor, labels: torch.Tensor, names, stats_from=None, name="") -> ImageData:
    mean, std = (stats_from.mean, stats_from.std) if stats_from is not None else data._channel_stats(images)
    return ImageData(images.contiguous(), labels.long(), len(names), mean, std, name)


def _from_classes(pieces: dict, dataset_name: str) -> MetaSplits:
    """pieces: split -> list of (class name, uint8 images of that class)."""
    built, names = {}, {}
    for split in SPLITS:
        classes = pieces[split]
        images = torch.cat([imgs for _, imgs in classes])
        labels = torch.cat([torch.full((len(imgs),), c) for c, (_, imgs) in enumerate(classes)])
        names[split] = tuple(name for name, _ in classes)
        built[split] = _split(images, labels, names[split], built.get("train"), dataset_name)
    return MetaSplits(built["train"], built["val"], built["test"], names)


def mnist_rotations(root=None, download: bool = True) -> MetaSplits:
    """Omniglot-style MNIST: a class is (digit, rotation by 0/90/180/270 degrees).

    Meta-train: digits 0-5 (24 classes), meta-val: 6-7 (8), meta-test: 8-9 (8), all images of
    MNIST's training split. Rotations as new classes follow the Omniglot protocol of Santoro et al.
    and MAML. (A 6 turned by 180 degrees resembles a 9: meta-val and meta-test are not far apart.)
    """
    mnist = data.load("mnist", train=True, root=root, download=download)
    return rotation_classes(mnist, MNIST_ROTATION_DIGITS, "mnist_rotations")


def rotation_classes(base: ImageData, digits: dict, name: str) -> MetaSplits:
    """Every (label, rotation) pair of `base` as a class, with `digits[split]` the labels of each split."""
    pieces = {}
    for split in SPLITS:
        pieces[split] = [(f"{d}@{angle}", torch.rot90(base.images[base.labels == d], angle // 90, dims=(-2, -1)))
                         for d in digits[split] for angle in ROTATIONS]
    return _from_classes(pieces, name)


def synthetic(classes=(10, 5, 5), per_class: int = 30, channels: int = 1, image_size: int = 28,
              seed: int = 0) -> MetaSplits:
    """A learnable stand-in: `data.synthetic` prototypes cut into disjoint class sets for tests and CI."""
    base = data.synthetic(num_classes=sum(classes), channels=channels, image_size=image_size,
                          per_class=per_class, seed=seed)
    bounds = np.cumsum([0, *classes])
    pieces = {split: [(f"class{c}", base.images[base.labels == c]) for c in range(bounds[i], bounds[i + 1])]
              for i, split in enumerate(SPLITS)}
    return _from_classes(pieces, "synthetic")


def cifar_fs(root=None, download: bool = True) -> MetaSplits:
    """CIFAR-FS: CIFAR-100's train and test images pooled, 600 per class, split 64/16/20 by class."""
    from torchvision import datasets

    train = data.load("cifar100", train=True, root=root, download=download)
    test = data.load("cifar100", train=False, root=root, download=False)
    names = datasets.CIFAR100(data.data_root(root), train=False, download=False).classes
    return cifar_fs_from(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]), names)


def cifar_fs_from(images: torch.Tensor, labels: torch.Tensor, class_names) -> MetaSplits:
    """CIFAR-FS from CIFAR-100 images, their labels and CIFAR-100's class names (in label order)."""
    class_names = list(class_names)
    missing = sorted(set(CIFAR_FS_VAL + CIFAR_FS_TEST) - set(class_names))
    if missing:
        raise ValueError(f"class_names lacks the CIFAR-FS classes {missing}: are these CIFAR-100's names?")
    held_out = set(CIFAR_FS_VAL + CIFAR_FS_TEST)
    split_names = {"train": [n for n in class_names if n not in held_out], "val": CIFAR_FS_VAL,
                   "test": CIFAR_FS_TEST}
    pieces = {split: [(n, images[labels == class_names.index(n)]) for n in names]
              for split, names in split_names.items()}
    return _from_classes(pieces, "cifar_fs")


def omniglot(root=None, download: bool = True, image_size: int = 28, val_alphabets: int = 5) -> MetaSplits:
    """Omniglot: the 30 background alphabets for meta-train, the 20 evaluation alphabets for meta-val
    (the first `val_alphabets`, alphabetically) and meta-test (the rest); each character rotated by
    0/90/180/270 degrees is a class, as in MAML. Images are resized to `image_size` and inverted
    (strokes bright on black, as MNIST). Read from torchvision's folders
    (`omniglot-py/images_background`, `omniglot-py/images_evaluation`), downloaded by torchvision when
    missing.
    """
    folder = data.data_root(root) / "omniglot-py"
    for background in (True, False):
        part = folder / ("images_background" if background else "images_evaluation")
        if not part.is_dir():
            if not download or data._offline():
                raise data.DatasetNotFoundError(f"Omniglot not found: {part} is missing (download=False or "
                                                f"SNIPNB_OFFLINE set). Unpack torchvision's Omniglot zips there.")
            from torchvision import datasets

            datasets.Omniglot(str(data.data_root(root)), background=background, download=True)
    background = _character_folders(folder / "images_background")
    evaluation = _character_folders(folder / "images_evaluation")
    alphabets = sorted({alphabet for alphabet, _ in evaluation})
    val_set = set(alphabets[:val_alphabets])
    groups = {"train": background, "val": [c for c in evaluation if c[0] in val_set],
              "test": [c for c in evaluation if c[0] not in val_set]}
    pieces = {}
    for split, characters in groups.items():
        pieces[split] = []
        for alphabet, path in characters:
            images = 255 - _read_images(sorted(path.glob("*.png")), image_size, channels=1)
            pieces[split] += [(f"{alphabet}/{path.name}@{angle}", torch.rot90(images, angle // 90, dims=(-2, -1)))
                              for angle in ROTATIONS]
    return _from_classes(pieces, "omniglot")


def _character_folders(part: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    return [(alphabet.name, character) for alphabet in sorted(p for p in part.iterdir() if p.is_dir())
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir())]


def mini_imagenet(root=None, image_size: int = 84) -> MetaSplits:
    """mini-ImageNet (Vinyals et al. 2016; the split of Ravi & Larochelle 2017) from the user's files.

    It cannot be downloaded. Two common layouts under `<root>/mini-imagenet` are read:
    - folders: `train/<class>/<image>`, `val/<class>/<image>`, `test/<class>/<image>`;
    - CSV: `images/<file>` with `train.csv`, `val.csv`, `test.csv` of `filename,label` rows.
    Images are resized to `image_size` square (84 is the usual size).
    """
    folder = data.data_root(root) / "mini-imagenet"
    pieces = {}
    for split in SPLITS:
        if (folder / split).is_dir():
            classes = {c.name: sorted(f for f in c.iterdir() if f.is_file())
                       for c in sorted(p for p in (folder / split).iterdir() if p.is_dir())}
        elif (folder / f"{split}.csv").is_file():
            classes = {}
            with open(folder / f"{split}.csv", newline="") as f:
                for row in csv.DictReader(f):
                    classes.setdefault(row["label"], []).append(folder / "images" / row["filename"])
        else:
            raise data.DatasetNotFoundError(
                f"mini-ImageNet not found: {folder} must hold {split}/<class>/<image> folders or images/ with "
                f"{split}.csv (mini-ImageNet cannot be downloaded; put the files there, or pass root=)")
        pieces[split] = [(name, _read_images(files, image_size, channels=3)) for name, files in classes.items()]
    return _from_classes(pieces, "mini_imagenet")


def _read_images(paths, size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.uint8).reshape(size, size, channels))
    if not arrays:
        raise ValueError(f"no images to read (a class folder is empty?)")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load(name: str, root=None, download: bool = True, **synthetic_options) -> MetaSplits:
    """The meta-learning dataset `name`, one of `DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "synthetic":
        return synthetic(**synthetic_options)
    if synthetic_options:
        raise TypeError(f"options {sorted(synthetic_options)} only apply to 'synthetic', not {name!r}")
    if name == "mini_imagenet":
        return mini_imagenet(root)
    return {"mnist_rotations": mnist_rotations, "omniglot": omniglot, "cifar_fs": cifar_fs}[name](root, download)


@functools.lru_cache(maxsize=4)
def load_cached(name: str, synthetic_shape: tuple = (1, 28)) -> MetaSplits:
    """`load` once per process (a sweep worker runs many configs on one dataset)."""
    if name == "synthetic":
        channels, size = synthetic_shape
        return load(name, channels=channels, image_size=size)
    return load(name)

