"""Remake mcvd/weights/smmnist_digits.pt, the digit classifier of mcvd.metrics.digits, and print its
SHA-256 (to record as mcvd.metrics.digits.SHA256).

    .venv/bin/python scripts/make_digit_classifier.py [OUT]

Trains on frames of Stochastic Moving MNIST clips made of the *training* digits only (32 x 32, two
16-pixel digits, the demo's cpu size; a data seed no demo or test uses), 4,000 steps of 64 frames with
Adam, a sigmoid per class against the clip's digit classes; one thread, as the shipped file was made
(another thread count sums in another order: other weights of the same quality); about nine minutes on
one core. Run again on the machine that made the shipped file (an AMD EPYC, torch 2.13.0+cpu), it wrote
the same bytes. Prints the digit recall of the true frames of 192 held-out clips (test digits).
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mcvd.data import StochasticMovingMNIST
from mcvd.fileio import atomic_write, file_sha256
from mcvd.metrics.digits import CLASSES, FORMAT, WEIGHTS_FILE, DigitClassifier, digit_recall

CLIPS, FRAMES, STEPS, BATCH, SEED = 8000, 4, 4000, 64, 1000


def clips_and_labels(split: str, seed: int, n: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = StochasticMovingMNIST(frames, split=split, seed=seed, length=n, num_digits=2, image_size=32,
                                 digit_size=16)
    return torch.stack([data[i] for i in range(n)]), torch.tensor([data.labels(i) for i in range(n)])


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    clips, labels = clips_and_labels("train", SEED, CLIPS, FRAMES)
    frames = clips.reshape(-1, 1, 32, 32)
    targets = F.one_hot(labels, CLASSES).sum(1).clamp(max=1).float().repeat_interleave(FRAMES, 0)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for step in range(STEPS):
        i = torch.randint(len(frames), (BATCH,))
        loss = F.binary_cross_entropy_with_logits(model(frames[i]), targets[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == STEPS - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    test, test_labels = clips_and_labels("test", 0, 192, 8)
    print("digit recall of the true frames of 192 held-out clips:",
          " ".join(f"{v:.3f}" for v in digit_recall(model, test, test_labels).tolist()))
    payload = {"format": FORMAT, "version": 1, "state_dict": model.state_dict()}
    atomic_write(out, lambda fh: torch.save(payload, fh))
    print(f"{out}: SHA-256 {file_sha256(out)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS_FILE)
