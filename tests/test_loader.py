import pytest
import torch

from snipnb.data import ImageData
from snipnb.loader import DeviceLoader


def numbered(n=10, size=6):
    # Each image is filled with its own index, so a batch says which examples it holds.
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return ImageData(images, torch.arange(n), num_classes=n, mean=(0.0,), std=(1 / 255,), name="numbered")


def test_an_epoch_visits_every_example_once_in_a_seeded_order():
    data = numbered(10)
    loader = DeviceLoader(data, 4, shuffle=True, seed=3)
    assert len(loader) == 3
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(10))
    assert seen.tolist() != list(range(10))
    assert torch.equal(torch.cat([y for _, y in DeviceLoader(data, 4, shuffle=True, seed=3)]), seen)
    second_epoch = torch.cat([y for _, y in loader])
    assert not torch.equal(second_epoch, seen)  # a fresh order every epoch


def test_drop_last_and_images_match_labels():
    loader = DeviceLoader(numbered(10), 4, shuffle=True, drop_last=True)
    assert len(loader) == 2
    for x, y in loader:
        # mean 0 and std 1/255 turn pixel value v back into v exactly.
        assert torch.equal(x[:, 0, 0, 0], y.float())


def test_normalisation_uses_the_datasets_mean_and_std():
    images = torch.full((2, 3, 4, 4), 51, dtype=torch.uint8)
    data = ImageData(images, torch.zeros(2, dtype=torch.long), 1, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5),
                     name="flat")
    x, _ = next(iter(DeviceLoader(data, 2)))
    torch.testing.assert_close(x[:, :, 0, 0], torch.tensor([[0.2, 0.0, -0.2]] * 2))


def test_crop_and_flip_are_padded_windows_of_the_original():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 2, 8, 8), generator=g, dtype=torch.uint8)
    data = ImageData(images, torch.arange(64), 64, mean=(0.0, 0.0), std=(1 / 255, 1 / 255), name="rand")
    pad = 2
    padded = torch.nn.functional.pad(images.float(), (pad,) * 4)
    offsets, flips = set(), 0
    for x, y in DeviceLoader(data, 16, augment=True, pad=pad, seed=1):
        for image, label in zip(x, y):
            matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (0, 1)
                       if torch.equal(image, (lambda w: w.flip(-1) if flip else w)(
                           padded[label, :, dy:dy + 8, dx:dx + 8]))]
            assert matches, "an augmented image is not a (flipped) window of its padded original"
            offsets.add(matches[0][:2])
            flips += matches[0][2]
    assert len(offsets) > 15  # crops vary across the 25 possible offsets
    assert 10 < flips < 54  # about half are flipped


def test_channels_last_output():
    data = ImageData(torch.zeros(4, 3, 5, 5, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 1,
                     mean=(0.5,) * 3, std=(0.2,) * 3, name="zeros")
    x, _ = next(iter(DeviceLoader(data, 4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(numbered(4), 0)
    with pytest.raises(ValueError, match="empty"):
        DeviceLoader(numbered(4).subset([]), 2)


def test_one_channel_batches_are_channels_last_so_a_masked_network_stays_channels_last():
    # With one channel, .contiguous(channels_last) keeps NCHW strides, and a masked first
    # convolution (weight · mask, contiguous) then put the whole first block in NCHW: 2x slower tests.
    from snipnb import models
    from snipnb.pruning import apply_masks, masks_from_scores, scores

    from snipnb.data import synthetic

    images = synthetic(False, num_classes=3, channels=1, image_size=16, per_class=1, test_per_class=4, seed=0)
    x, _ = next(iter(DeviceLoader(images, 4, channels_last=True)))
    assert x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last)
    plain, _ = next(iter(DeviceLoader(images, 4)))
    assert torch.equal(x, plain)  # the same values, only the strides differ
    model = models.build("simple_convnet", 3, 1, 16, seed=0)
    apply_masks(model, masks_from_scores(scores(model, [(plain, torch.arange(4) % 3)]), 0.5))
    model.to(memory_format=torch.channels_last)
    first = model.body[0](x)
    assert first.is_contiguous(memory_format=torch.channels_last) and first.stride(1) == 1
