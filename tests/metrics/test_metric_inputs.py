"""Bad input to a metric raises, naming the argument and what was expected,
instead of returning a number: values outside [-1, 1] (8-bit levels,
integer videos), NaN, empty videos, clips too short for I3D, NaN features."""
import math

import numpy as np
import pytest
import torch

from mcvd.metrics.fvd import fvd, fvd_protocol, frechet_distance, i3d_features
from mcvd.metrics.lpips import lpips
from mcvd.metrics.psnr_ssim import psnr, ssim
from mcvd.metrics.stats import summary


def clip(shape=(2, 3, 3, 16, 16)):
    return torch.rand(shape) * 2 - 1


def fvd_(pred, target):
    return fvd(target, pred)  # FVD's arguments are (real, fake)


# The checks run before any network is built: these tests need no weights.
METRICS = {"psnr": (psnr, "pred", "target"), "ssim": (ssim, "pred", "target"), "lpips": (lpips, "pred", "target"),
           "fvd": (fvd_, "fake", "real")}
FRAMES = {"fvd": 9}  # I3D's minimum


def pair(metric, *, dtype=torch.float32):
    shape = (2, FRAMES.get(metric, 3), 3, 16, 16)
    return clip(shape).to(dtype), clip(shape).to(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("bad, found", [
    (lambda x: (x + 1) * 127.5, r"got values in \[0(\.\d+)?, 25\d(\.\d+)?\]"),  # 8-bit levels as floats
    (lambda x: x * 100, r"got values in \[-\d\d(\.\d+)?, \d\d(\.\d+)?\]"),
    (lambda x: x * 1.01, r"got values in \[-1\.01?\d*, 1\.01?\d*\]"),
    (lambda x: x.index_put((torch.tensor(0),), torch.tensor(float("nan"))), r"got \d+ NaN values"),
    (lambda x: x.index_put((torch.tensor(0),), torch.tensor(float("inf"))), r"got values in \[-?\d.*, inf\]"),
])
def test_values_outside_the_data_range_are_refused(metric, which, bad, found):
    fn, *names = METRICS[metric]
    args = list(pair(metric))
    args[which] = bad(args[which])
    with pytest.raises(ValueError, match=rf"{names[which]}: expected values in \[-1, 1\] .*{found}"):
        fn(*args)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_videos_are_refused(metric, dtype):
    fn, *names = METRICS[metric]
    good, _ = pair(metric)
    bad = torch.randint(-100, 101, good.shape).to(dtype)
    with pytest.raises(TypeError, match=rf"{names[1]}: expected floats in \[-1, 1\] .*got dtype {dtype}"):
        fn(good, bad)


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_rounding_beyond_the_range_is_accepted_and_clamped(metric, dtype):
    fn = METRICS[metric][0]
    target = torch.ones(1, 2, 1, 11, 11, dtype=dtype)
    over = target + torch.finfo(dtype).eps  # one ULP above 1 (bfloat16: 1.0078)
    assert over.max() > 1
    score = fn(over, target)
    assert (score == 100.0).all() if metric == "psnr" else torch.equal(score, torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("metric", ["psnr", "ssim", "lpips"])
@pytest.mark.parametrize("shape", [(2, 0, 3, 16, 16), (0, 3, 16, 16), (2, 3, 3, 0, 16)])
def test_empty_videos_are_refused(metric, shape):
    fn, name, _ = METRICS[metric]
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"{name}: expected at least one frame of at least 1x1 pixels"):
        fn(x, x)


def test_psnr_of_an_empty_batch_is_empty():
    x = torch.zeros(0, 3, 1, 16, 16)
    assert psnr(x, x).shape == (0,) and ssim(x, x).shape == (0,)


def test_fvd_needs_i3ds_minimum_frames_and_two_videos():
    good = clip((2, 9, 3, 16, 16))
    with pytest.raises(ValueError, match=r"real: expected videos of at least 9 frames \(I3D's minimum\), "
                                         r"got 8 frames \(shape \[2, 8, 3, 16, 16\]\)"):
        fvd(good[:, :8], good)
    with pytest.raises(ValueError, match=r"fake: expected videos of at least 9 frames"):
        fvd(good, good[:, :8])
    with pytest.raises(ValueError, match=r"fake: expected at least 2 videos \[N >= 2, T, C, H, W\], got shape "
                                         r"\[1, 9, 3, 16, 16\]"):
        fvd(good, good[:1])
    with pytest.raises(ValueError, match=r"videos: expected videos of at least 9 frames \(I3D's minimum\)"):
        i3d_features(good[:, :8])
    with pytest.raises(ValueError, match=r"videos: expected values in \[-1, 1\]"):
        i3d_features(good * 255)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_frechet_distance_of_non_finite_features_is_refused(value):
    a, b = torch.randn(5, 4), torch.randn(6, 4)
    b[2, 1] = value
    with pytest.raises(ValueError, match=r"feats_b: expected finite features, got 1 NaN or infinite value"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match=r"real_feats: expected finite features, got 1 NaN or infinite value"):
        fvd_protocol(b, torch.randn(6, 2, 4))
    with pytest.raises(ValueError, match=r"fake_feats: expected finite features, got 2 NaN or infinite values"):
        fvd_protocol(torch.randn(6, 4), b[:, None].repeat(1, 2, 1))


def test_frechet_distance_that_overflows_is_refused():
    a = torch.randn(5, 3, dtype=torch.float64) * 1e200  # finite, but the covariances overflow float64
    with pytest.raises(FloatingPointError, match=r"feats_a, feats_b: the Frechet distance is not finite"):
        frechet_distance(a, a + 1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_summary_of_non_finite_values_is_refused(value):
    with pytest.raises(ValueError, match=rf"values: expected finite numbers, got {value} at index 1"):
        summary([1.0, value, 2.0])
    assert math.isfinite(summary(np.array([1.0, 2.0]))["conf95"])


def test_fvd_protocol_names_its_arguments():
    real, fake = torch.randn(6, 4), torch.randn(6, 2, 4)
    with pytest.raises(ValueError, match=r"real_feats: expected \[N >= 2, D\] features of N real clips, got \[1, 4\]"):
        fvd_protocol(real[:1], fake[:1])
    with pytest.raises(ValueError, match=r"fake_feats: expected \[N, k, D\] with N = 6 real clips and k >= 1 samples, "
                                         r"got \[6, 0, 4\]"):
        fvd_protocol(real, fake[:, :0])
