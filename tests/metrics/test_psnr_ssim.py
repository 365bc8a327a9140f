"""PSNR and SSIM against scikit-image and numpy closed forms."""
import numpy as np
import pytest
import torch

from mcvd.metrics.psnr_ssim import PSNR_MAX, best_of_samples, psnr, ssim

skm = pytest.importorskip("skimage.metrics")


def video_pair(shape, noise=0.3):
    target = torch.rand(shape, dtype=torch.float64) * 2 - 1
    pred = (target + noise * torch.randn(shape, dtype=torch.float64)).clamp(-1, 1)
    return pred, target


def unit(x):
    return ((x.numpy() + 1) / 2).clip(0, 1)


def skimage_ssim(a, b):
    """scikit-image on one [C, H, W] frame in [0, 1], the paper's settings."""
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    return skm.structural_similarity(a, b, channel_axis=0, **kw) if a.shape[0] > 1 else \
        skm.structural_similarity(a[0], b[0], **kw)


def test_clip_psnr_is_skimages_psnr_of_the_whole_clip():
    pred, target = video_pair((3, 4, 2, 9, 7))
    expected = [skm.peak_signal_noise_ratio(unit(target[i]), unit(pred[i]), data_range=1) for i in range(3)]
    np.testing.assert_allclose(psnr(pred, target).numpy(), expected, rtol=1e-12)


def test_clip_psnr_comes_from_the_clip_mse_not_the_mean_frame_psnr():
    pred, target = video_pair((2, 5, 1, 8, 8))
    frame_mse = ((unit(pred) - unit(target)) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(psnr(pred, target, per_frame=True).numpy(), 10 * np.log10(1 / frame_mse), rtol=1e-12)
    np.testing.assert_allclose(psnr(pred, target).numpy(), 10 * np.log10(1 / frame_mse.mean(1)), rtol=1e-12)
    assert (psnr(pred, target) < psnr(pred, target, per_frame=True).mean(-1)).all()  # Jensen


def test_values_are_clamped_to_the_data_range_first():
    # Within the rounding margin beyond [-1, 1] (1e-3 in float32); further out is refused
    # (tests/metrics/test_metric_inputs.py).
    target = torch.ones(1, 2, 1, 11, 11)
    assert (psnr((1 + 9e-4) * target, target) == PSNR_MAX).all()
    torch.testing.assert_close(ssim((1 + 9e-4) * target, target), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pred: expected values in \[-1, 1\]"):
        psnr(1.5 * target, target)


@pytest.mark.parametrize("shape", [(2, 3, 3, 23, 17), (1, 2, 1, 11, 11), (4, 1, 64, 64)])
def test_frame_ssim_is_skimages(shape):
    pred, target = video_pair(shape)
    p, t = unit(pred).reshape(-1, *shape[-3:]), unit(target).reshape(-1, *shape[-3:])
    expected = np.array([skimage_ssim(a, b) for a, b in zip(p, t)]).reshape(shape[:-3])
    np.testing.assert_allclose(ssim(pred, target, per_frame=True).numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ssim(pred, target).numpy(), expected.mean(-1), rtol=1e-10, atol=1e-12)


def test_float32_input_is_scored_in_float64():
    pred, target = video_pair((1, 2, 1, 12, 12))
    torch.testing.assert_close(ssim(pred.float(), target.float()), ssim(pred.float().double(), target.float().double()))
    assert psnr(pred.float(), target.float()).dtype == torch.float64


def test_best_of_samples_takes_the_best_clip_score():
    target = torch.rand(3, 4, 1, 16, 16) * 2 - 1
    samples = torch.stack([(target + s * torch.randn_like(target)).clamp(-1, 1) for s in (0.5, 0.1, 0.3)])
    scores = psnr(samples, target)  # target broadcasts over the samples
    assert scores.shape == (3, 3)
    best = best_of_samples(scores)
    torch.testing.assert_close(best, torch.stack([psnr(samples[i], target) for i in range(3)]).amax(0))
    torch.testing.assert_close(best, psnr(samples[1], target))  # the least noisy sample wins every clip
    assert best_of_samples(ssim(samples, target)).shape == (3,)


def test_bad_inputs_are_named():
    v = torch.zeros(1, 2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"target: expected the shape of pred \[1, 2, 1, 16, 16\] or a trailing"):
        psnr(v, torch.zeros(1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"pred: expected a video \[\.\.\., T, C, H, W\], got shape \[16, 16\]"):
        ssim(torch.zeros(16, 16), torch.zeros(16, 16))
    with pytest.raises(TypeError, match=r"target: expected floats in \[-1, 1\] \(shape \[\.\.\., T, C, H, W\]\), "
                                        r"got dtype torch.uint8 \(8-bit levels map to \[-1, 1\] as x / 127.5 - 1\)"):
        psnr(v, v.to(torch.uint8))
    with pytest.raises(ValueError, match=r"pred: SSIM's 11x11 window needs frames of at least 11x11, got 10x16"):
        ssim(torch.zeros(1, 1, 1, 10, 16), torch.zeros(1, 1, 1, 10, 16))
    with pytest.raises(ValueError, match=r"scores: expected a tensor with a samples dimension"):
        best_of_samples(torch.tensor(1.0))
    for metric in (psnr, ssim):
        with pytest.raises(TypeError, match=r"per_frame: expected a bool, got str 'no'"):
            metric(v, v, per_frame="no")
        with pytest.raises(ValueError, match=r"target: expected the device of pred \(cpu\), got meta"):
            metric(v, v.to("meta"))


def test_psnr_is_capped_at_100_db():
    # Equal frames have MSE 0 and an infinite PSNR, which no mean or interval can take in (mcvd.metrics.stats):
    # PSNR is capped at PSNR_MAX = 100 dB (MSE 1e-10), as libvpx and x264 cap it.
    assert PSNR_MAX == 100.0
    target = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    target[1, 0, 0, 0, 0] = 0.0
    pred = target.clone()
    pred[1, 0, 0, 0, 0] = 1e-3  # 0.5e-3 in [0, 1]: MSE 1.3e-9 over the clip, 88.9 dB, under the cap
    clip = psnr(pred, target)
    assert clip[0] == 100.0 and clip[1] == pytest.approx(10 * np.log10(192 / 0.5e-3 ** 2), rel=1e-9)
    frames = psnr(pred, target, per_frame=True)
    assert frames[0].tolist() == [100.0] * 3 and frames[1, 1:].tolist() == [100.0] * 2
    from mcvd.metrics.stats import summary

    assert summary(clip.tolist())["mean"] == pytest.approx((100 + clip[1].item()) / 2)
    for bad in ("abc", torch.ones(2, 2)):
        with pytest.raises(TypeError, match=r"values: expected a sequence of numbers, got "):
            summary(bad)
