"""Are the digits still there? Digit recall of Stochastic Moving MNIST frames.

PSNR and SSIM reward a prediction that puts the right amount of ink in the
right places, whether or not it is the right digit: strokes where a 3 should
be score almost as well as the 3. This measure asks a classifier instead. A
small CNN (`DigitClassifier`), trained on frames of the *training* digits
(two digits at 32 x 32, `StochasticMovingMNIST`, labels from
`StochasticMovingMNIST.labels`), gives each frame a score per class; a
frame's **digit recall** is the share of its clip's distinct digit classes
among its two highest-scoring classes. The true frames of held-out clips
score about 0.9 (overlapping digits hide each other), the empty frame about
0.2 (the classes the classifier leans to on nothing).

The weights ship with the package (mcvd/weights/smmnist_digits.pt, made by
scripts/make_digit_classifier.py) and are read weights-only after their
SHA-256 is checked.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcvd.fileio import DigestMismatch, load_weights_only

WEIGHTS_FILE = Path(__file__).resolve().parent.parent / "weights" / "smmnist_digits.pt"
SHA256 = "40bccfebd4156f410c1750ce3bddd9d1866e94247cc664def73d7175391325fd"
FORMAT = "mcvd-digit-classifier"
SIZE = 32  # frames are resized to SIZE x SIZE, where two digits of SIZE / 2 pixels were trained on
CLASSES = 10


class DigitClassifier(nn.Sequential):
    """[N, 1, 32, 32] frames in [-1, 1] -> [N, 10] scores, one per digit class
    (multi-label: trained with a sigmoid per class on the clip's digit classes)."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(128, CLASSES))


def load_digit_classifier(file: str | os.PathLike | None = None) -> DigitClassifier:
    """The shipped classifier in eval mode on the CPU, from `file` (default: the
    installed weights), whose SHA-256 must be the recorded one.
    Raises FileNotFoundError for a missing file, ValueError for another digest."""
    path = Path(file) if file is not None else WEIGHTS_FILE
    try:
        payload = load_weights_only(path, "file", "digit classifier", sha256=SHA256)
    except DigestMismatch as err:
        raise ValueError(f"file: {path} has SHA-256 {err.digest}, not the {SHA256} recorded for the digit "
                         f"classifier: the file is damaged or was replaced; reinstall mcvd, or remake it with "
                         f"scripts/make_digit_classifier.py") from None
    model = DigitClassifier()
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def digit_recall(classifier: nn.Module, frames: torch.Tensor, labels: torch.Tensor, *,
                 batch: int = 1024) -> torch.Tensor:
    """Digit recall per frame, averaged over clips: float64 [T] on the CPU.

    frames: [N, T, 1, H, W] in [-1, 1], square (resized to 32 x 32 when H is
        not 32; the classifier saw digits half the frame's side).
    labels: integer [N, D], the digit classes of each clip (repeats allowed).
    """
    if frames.dim() != 5 or frames.shape[2] != 1 or frames.shape[3] != frames.shape[4]:
        raise ValueError(f"frames: expected [N, T, 1, H, H] grey frames, got shape {list(frames.shape)}")
    if labels.dim() != 2 or labels.shape[0] != frames.shape[0] or labels.dtype.is_floating_point:
        raise ValueError(f"labels: expected integer classes [N={frames.shape[0]}, digits], got "
                         f"{labels.dtype} {list(labels.shape)}")
    N, T = frames.shape[:2]
    # The classifier's weights decide the device: frames sampled on a GPU, a classifier left on the CPU.
    device = next(classifier.parameters(), frames).device
    x = frames.reshape(N * T, 1, *frames.shape[3:]).to(device, torch.float32)
    if x.shape[-1] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        scores = torch.cat([classifier(chunk) for chunk in x.split(batch)])
    top2 = F.one_hot(scores.topk(2, dim=1).indices, CLASSES).sum(1).bool().view(N, T, CLASSES)
    present = F.one_hot(labels.to(device).long(), CLASSES).sum(1).bool()            # [N, 10]: distinct classes
    found = (top2 & present[:, None]).sum(-1).double() / present.sum(-1, keepdim=True).double()
    return found.mean(0).cpu()
