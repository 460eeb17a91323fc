"""Tests for snipnb.data. None touch the network or a real dataset: the on-disk formats are written
here, tiny, in torchvision's real layouts."""

import gzip
import hashlib
import pickle
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from snipnb import data
from snipnb.data import DATASETS, DatasetNotFoundError, ImageData


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch):
    monkeypatch.delenv("SNIPNB_OFFLINE", raising=False)
    monkeypatch.delenv("SNIPNB_DATA", raising=False)


# --- fixtures in the real on-disk formats -------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    # idx format: big-endian magic (0x08 = uint8, then the number of dims), the dims, raw bytes.
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_mnist(root: Path, compress: bool = False) -> dict:
    rng = np.random.default_rng(0)
    splits = {"train": (rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10),
              "t10k": (rng.integers(0, 256, (10, 28, 28)), np.arange(10)[::-1])}
    suffix = ".gz" if compress else ""
    for prefix, (images, labels) in splits.items():
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return splits


def trust_mnist_archives(raw: Path, monkeypatch) -> list:
    """Make torchvision expect the md5s of the archives in `raw` instead of the real MNIST ones."""
    files = [file for file, _ in datasets.MNIST.resources]
    resources = [(file, hashlib.md5((raw / file).read_bytes()).hexdigest()) for file in files]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    return resources


def write_cifar(root: Path, hundred: bool, monkeypatch) -> dict:
    """Tiny CIFAR in the real pickle layout; rows are C x H x W flattened, as in the real files."""
    rng = np.random.default_rng(1)
    num_classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    files = {"test" if hundred else "test_batch": 6}
    files.update({"train": 12} if hundred else {f"data_batch_{i}": 3 for i in range(1, 6)})
    rows = {}
    for file, n in files.items():
        images, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n)
        rows[file] = (images, labels.tolist())
        entry = {"data": rows[file][0], label_key: rows[file][1], "batch_label": file,
                 "filenames": [f"{file}_{i}.png" for i in range(n)]}
        if hundred:
            entry["coarse_labels"] = [label // 5 for label in rows[file][1]]
        (folder / file).write_bytes(pickle.dumps(entry))
    names = [f"class_{i}" for i in range(num_classes)]
    if hundred:
        meta = {"fine_label_names": names, "coarse_label_names": names[:20]}
    else:
        meta = {"label_names": names}
    meta_file = "meta" if hundred else "batches.meta"
    (folder / meta_file).write_bytes(pickle.dumps(meta))
    # torchvision checks each file against the real dataset's md5; md5=None means "exists".
    dataset_class = datasets.CIFAR100 if hundred else datasets.CIFAR10
    train_files = [f for f in files if f.startswith(("train", "data_batch"))]
    test_files = [f for f in files if f not in train_files]
    monkeypatch.setattr(dataset_class, "train_list", [[f, None] for f in train_files])
    monkeypatch.setattr(dataset_class, "test_list", [[f, None] for f in test_files])
    monkeypatch.setattr(dataset_class, "meta", {**dataset_class.meta, "md5": None})
    stack = lambda names: (np.concatenate([rows[f][0] for f in names]), sum((rows[f][1] for f in names), []))
    return {"train": stack(train_files), "test": stack(test_files)}


def channel_stats(images: np.ndarray):
    x = images.astype(np.float64) / 255
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


# --- real formats -------------------------------------------------------------------------------

def test_mnist_idx_files_round_trip(tmp_path):
    written = write_mnist(tmp_path)
    train = data.load("mnist", root=tmp_path, download=False)
    test = data.load("mnist", train=False, root=tmp_path, download=False)
    for loaded, (images, labels) in ((train, written["train"]), (test, written["t10k"])):
        assert loaded.images.shape == (len(images), 1, 28, 28) and loaded.images.dtype == torch.uint8
        assert loaded.images.is_contiguous()
        assert torch.equal(loaded.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
        assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == labels.tolist()
        assert loaded.num_classes == 10 and loaded.name == "mnist"
    mean, std = channel_stats(written["train"][0][:, None])
    assert test.mean == pytest.approx(mean) and test.std == pytest.approx(std)


def test_mnist_archives_are_unpacked_offline_only_when_their_md5_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")
    written = write_mnist(tmp_path, compress=True)
    # The real md5s do not match these tiny archives: like a half-finished download, leave them.
    with pytest.raises(DatasetNotFoundError, match="SNIPNB_OFFLINE"):
        data.load("mnist", root=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte").exists()

    trust_mnist_archives(raw, monkeypatch)
    loaded = data.load("mnist", train=False, root=tmp_path)
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(written["t10k"][0].astype(np.uint8)))


def test_a_folder_marked_read_only_is_never_written(tmp_path, monkeypatch):
    write_mnist(tmp_path, compress=True)
    raw = tmp_path / "MNIST" / "raw"
    resources = trust_mnist_archives(raw, monkeypatch)
    raw.chmod(0o555)  # root ignores this bit, so the code must look at it itself
    try:
        with pytest.raises(DatasetNotFoundError, match="read-only"):
            data.load("mnist", root=tmp_path, download=True)
        assert sorted(path.name for path in raw.iterdir()) == sorted(file for file, _ in resources)
    finally:
        raw.chmod(0o755)


@pytest.mark.parametrize("hundred", [True, False], ids=["cifar100", "cifar10"])
def test_cifar_pickles_round_trip_in_chw_order(tmp_path, monkeypatch, hundred):
    written = write_cifar(tmp_path, hundred, monkeypatch)
    # One pixel with distinct R, G, B at row 3, column 5 of the first test image.
    rows = written["test"][0]
    rows[0] = 0
    rows[0, [0 * 1024 + 3 * 32 + 5, 1 * 1024 + 3 * 32 + 5, 2 * 1024 + 3 * 32 + 5]] = [10, 20, 30]
    name = "cifar100" if hundred else "cifar10"
    test_file = tmp_path / ("cifar-100-python/test" if hundred else "cifar-10-batches-py/test_batch")
    entry = pickle.loads(test_file.read_bytes())
    entry["data"] = rows
    test_file.write_bytes(pickle.dumps(entry))

    test = data.load(name, train=False, root=tmp_path, download=False)
    assert test.images.shape == (6, 3, 32, 32) and test.images.is_contiguous()
    assert test.images[0, :, 3, 5].tolist() == [10, 20, 30]
    assert test.images[0].sum() == 60  # nothing landed transposed or in another channel
    assert torch.equal(test.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == written["test"][1]
    assert test.num_classes == (100 if hundred else 10)

    train = data.load(name, root=tmp_path, download=False)
    assert torch.equal(train.images, torch.from_numpy(written["train"][0].reshape(-1, 3, 32, 32)))
    mean, std = channel_stats(written["train"][0].reshape(-1, 3, 32, 32))
    assert test.mean == pytest.approx(mean) and test.std == pytest.approx(std)
    assert train.mean == test.mean and train.std == test.std


# --- missing data and downloads -----------------------------------------------------------------

def test_missing_data_without_download_fails_fast_and_says_where(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as caught:
        data.load("cifar100", root=tmp_path, download=False)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "cifar100" in message and str(tmp_path / "cifar-100-python") in message
    assert "SNIPNB_DATA" in message and "download=True" in message and "-p data_root" in message
    # Raised cleanly: no chained torchvision traceback burying the message.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert isinstance(caught.value, FileNotFoundError)


def test_offline_env_prevents_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SNIPNB_OFFLINE", "1")

    def download(self):
        raise AssertionError("a download was attempted despite SNIPNB_OFFLINE=1")

    monkeypatch.setattr(datasets.CIFAR10, "download", download)
    with pytest.raises(DatasetNotFoundError, match="SNIPNB_OFFLINE"):
        data.load("cifar10", root=tmp_path, download=True)


def test_download_from_a_refusing_mirror_raises_not_found(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(DatasetNotFoundError, match="download failed") as caught:
        data.load("mnist", root=tmp_path, download=True)
    assert str(tmp_path) in str(caught.value)


def test_download_from_a_silent_mirror_times_out_and_restores_the_socket_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.3)
    before = socket.getdefaulttimeout()
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.getsockname()[1]}/"])
        # Watchdog: if the timeout is not applied, closing the server resets the connection, so a
        # broken implementation fails this test instead of hanging the suite.
        watchdog = threading.Timer(10, server.close)
        watchdog.start()
        start = time.perf_counter()
        try:
            with pytest.raises(DatasetNotFoundError):
                data.load("mnist", root=tmp_path, download=True)
        finally:
            watchdog.cancel()
    assert time.perf_counter() - start < 5
    assert socket.getdefaulttimeout() == before


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_root() == tmp_path / "home" / ".cache" / "snipnb" / "data"
    monkeypatch.setenv("SNIPNB_DATA", str(tmp_path / "env"))
    assert data.data_root() == tmp_path / "env"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root("~/x") == tmp_path / "home" / "x"


def test_load_rejects_unknown_names_and_stray_options():
    with pytest.raises(ValueError, match="name") as caught:
        data.load("imagenet")
    assert all(name in str(caught.value) for name in DATASETS)
    with pytest.raises(TypeError, match="per_class"):
        data.load("mnist", per_class=5)


# --- few-shot subsets and class splits ----------------------------------------------------------

def unbalanced_labels():
    sizes = {0: 5, 1: 8, 2: 6, 3: 10}
    labels = torch.cat([torch.full((n,), c) for c, n in sizes.items()])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_few_shot_indices_are_k_per_class_nested_and_seeded():
    labels = unbalanced_labels()
    subsets = {k: data.few_shot_indices(labels, k, seed=3) for k in (1, 2, 5)}
    for k, indices in subsets.items():
        assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values)
        assert torch.bincount(labels[indices]).tolist() == [k] * 4
    assert set(subsets[1].tolist()) < set(subsets[2].tolist()) < set(subsets[5].tolist())
    assert torch.equal(subsets[2], data.few_shot_indices(labels, 2, seed=3))
    assert not torch.equal(subsets[2], data.few_shot_indices(labels, 2, seed=4))


@pytest.mark.parametrize("k", [0, 6])
def test_few_shot_indices_reject_impossible_k(k):
    with pytest.raises(ValueError, match=rf"k={k}") as caught:
        data.few_shot_indices(unbalanced_labels(), k, seed=0)
    assert "class 0 with 5" in str(caught.value)


def test_a_validation_split_is_held_out_once_and_the_k_shot_subsets_come_from_the_rest():
    labels = unbalanced_labels()
    held_out, rest = data.validation_split(labels, 2)
    assert torch.bincount(labels[held_out]).tolist() == [2] * 4
    assert sorted(held_out.tolist() + rest.tolist()) == list(range(len(labels)))  # a partition
    assert torch.equal(held_out, data.validation_split(labels, 2)[0])  # the same every time
    for seed in range(3):
        subsets = [set(rest[data.few_shot_indices(labels[rest], k, seed)].tolist()) for k in (1, 2, 3)]
        assert not subsets[-1] & set(held_out.tolist())
        assert subsets[0] < subsets[1] < subsets[2]  # still nested
    none, everything = data.validation_split(labels, None)
    assert none is None and everything.tolist() == list(range(len(labels)))
    with pytest.raises(ValueError, match="val_per_class=6"):
        data.validation_split(labels, 6)


def test_a_validation_split_leaves_every_class_images_for_the_k_shot_subsets():
    # Class 0 has 3 images: holding out 3 would leave none of it for any k-shot subset.
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([3, 5, 5])])
    held_out, rest = data.validation_split(labels, 2)
    assert torch.bincount(labels[rest]).tolist() == [1, 3, 3]
    for per_class in (3, 4):
        with pytest.raises(ValueError, match=rf"from 1 to 2, .*class 0 with 3 images.*val_per_class={per_class}"):
            data.validation_split(labels, per_class)
    for wrong in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"val_per_class must be an int from 1 to 2.*got val_per_class={wrong}"):
            data.validation_split(labels, wrong)


def test_class_split_partitions_classes():
    assert data.class_split(10, 5, seed=None) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    split = data.class_split(10, 5, seed=0)
    assert sorted(c for task in split for c in task) == list(range(10))
    assert all(len(task) == 2 and task == sorted(task) for task in split)
    assert split == data.class_split(10, 5, seed=0)
    assert split != data.class_split(10, 5, seed=1)
    assert data.class_split(torch.tensor([7, 3, 3, 5, 9, 7]), 2, seed=None) == [[3, 5], [7, 9]]
    for n_tasks in (3, 0):
        with pytest.raises(ValueError, match="n_tasks"):
            data.class_split(10, n_tasks, seed=0)


# --- synthetic ----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_shaped_like_the_real_sets():
    train, test = data.synthetic(train=True), data.load("synthetic", train=False)
    assert train.images.shape == (1000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (500, 3, 32, 32) and test.name == "synthetic"
    assert torch.bincount(train.labels).tolist() == [100] * 10
    assert torch.equal(train.images, data.synthetic(train=True).images)
    assert torch.equal(test.labels, data.load("synthetic", train=False).labels)
    # Same sizes, so only the sample stream can tell the splits apart.
    assert not torch.equal(train.images, data.synthetic(train=False, test_per_class=100).images)
    assert test.mean == train.mean and test.std == train.std
    assert not torch.equal(train.images, data.synthetic(train=True, seed=1).images)
    mnist_like = data.load("synthetic", channels=1, image_size=28, num_classes=5, per_class=4)
    assert mnist_like.images.shape == (20, 1, 28, 28) and mnist_like.num_classes == 5


def test_synthetic_is_learnable_but_not_trivial():
    def features(d):
        mean, std = torch.tensor(d.mean).view(1, -1, 1, 1), torch.tensor(d.std).view(1, -1, 1, 1)
        return ((d.images.float() / 255 - mean) / std).flatten(1)

    train, test = data.synthetic(train=True), data.synthetic(train=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    x = features(train)
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), train.labels).backward()
        optimizer.step()
    accuracy = (model(features(test)).argmax(1) == test.labels).float().mean().item()
    assert 0.3 < accuracy < 0.98  # chance is 0.1


# --- ImageData ----------------------------------------------------------------------------------

def test_subset_and_classes_select_rows_and_keep_stats():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    full = ImageData(images, torch.tensor([0, 1, 2, 3, 1, 0]), 4, (0.5,), (0.25,), "toy")
    for picked in (full.subset([4, 0]), full.subset(torch.tensor([4, 0]))):
        assert picked.images[:, 0, 0, 0].tolist() == [4, 0] and picked.labels.tolist() == [1, 0]
        assert (picked.num_classes, picked.mean, picked.std, picked.name) == (4, (0.5,), (0.25,), "toy")
        assert picked.images.is_contiguous() and len(picked) == 2
    kept = full.classes([1, 3])
    assert kept.labels.tolist() == [1, 3, 1] and kept.images[:, 0, 0, 0].tolist() == [1, 3, 4]
    assert (kept.num_classes, kept.mean, kept.std) == (4, (0.5,), (0.25,))
    assert len(full.classes(torch.tensor([2]))) == 1


def test_recipe_defaults_augment_cifar_only_and_shape_synthetic_like_the_real_set():
    assert data.recipe_defaults("cifar100") == dict(augment=True, synthetic_shape=(3, 32))
    assert data.recipe_defaults("mnist") == dict(augment=False, synthetic_shape=(1, 28))
    assert data.recipe_defaults("synthetic")["augment"] is False
    with pytest.raises(ValueError, match="name"):
        data.recipe_defaults("imagenet")


def test_load_cached_loads_once_and_keys_on_shape_and_seed():
    a = data.load_cached("synthetic", True, (1, 16))
    assert data.load_cached("synthetic", True, (1, 16)) is a
    assert a.images.shape[1:] == (1, 16, 16)
    other = data.load_cached("synthetic", True, (1, 16), synthetic_seed=1)
    assert not torch.equal(other.images, a.images)


@pytest.mark.parametrize("option, value", [("num_classes", 0), ("per_class", 0), ("test_per_class", 0),
                                           ("channels", 0), ("image_size", -1), ("max_shift", -1),
                                           ("noise", -0.1), ("num_classes", 2.5)])
def test_synthetic_refuses_settings_that_make_no_dataset(option, value):
    with pytest.raises(ValueError, match=option):
        data.synthetic(**{option: value})


# --- UCI digits (scikit-learn ships them; nothing is downloaded) ---------------------------------

def test_uci_digits_are_a_fixed_half_split_of_every_scan_scaled_to_uint8():
    from sklearn.datasets import load_digits

    train, test = data.load("uci_digits"), data.load("uci_digits", train=False)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.num_classes == test.num_classes == 10 and train.name == "uci_digits"
    assert len(train) + len(test) == 1797
    counts = torch.bincount(test.labels, minlength=10) - torch.bincount(train.labels, minlength=10)
    assert counts.abs().max() <= 1  # half of every class is held out
    assert test.mean == train.mean == pytest.approx(channel_stats(train.images.numpy())[0].tolist())
    # At 8 px the images are the scans themselves, 0..16 ink scaled to 0..255, each in one split only.
    small = [data.uci_digits(train=flag, image_size=8) for flag in (True, False)]
    ours = sorted(tuple(image.flatten().tolist()) + (int(label),)
                  for split in small for image, label in zip(split.images, split.labels))
    digits = load_digits()
    scans = sorted(tuple(np.round(image * 255 / 16).astype(int).flatten().tolist()) + (int(label),)
                   for image, label in zip(digits.images, digits.target))
    assert ours == scans
    assert torch.equal(data.load("uci_digits", train=False).images, test.images)  # the same split every time


def test_uci_digits_refuse_a_size_below_the_scans():
    with pytest.raises(ValueError, match="image_size"):
        data.uci_digits(image_size=4)
    with pytest.raises(TypeError, match="per_class"):
        data.load("uci_digits", per_class=5)
    assert data.recipe_defaults("uci_digits") == dict(augment=False, synthetic_shape=(1, 28))
