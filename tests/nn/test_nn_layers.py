"""The network's stateless layers and its attention block against independent float64 computations."""
import math

import numpy as np
import pytest
import torch

from mcvd.nn.blocks import AttnBlock
from mcvd.nn.layers import fir_downsample, fir_kernel, fir_upsample, group_count, timestep_embedding


@pytest.mark.parametrize("channels, groups", [(4, 1), (12, 3), (20, 5), (32, 8), (36, 9), (64, 16), (96, 24),
                                              (128, 32), (192, 32), (200, 25), (288, 32)])
def test_group_count(channels, groups):
    # min(C // 4, 32), lowered to the next divisor of C
    assert group_count(channels) == groups


def test_group_count_needs_four_channels():
    with pytest.raises(ValueError, match="channels: expected >= 4 for GroupNorm, got 3"):
        group_count(3)


@pytest.mark.parametrize("dim", [8, 9, 64])
def test_timestep_embedding_closed_form(dim):
    steps = torch.tensor([0, 1, 17, 500, 999])
    half = dim // 2
    w = np.array([10000.0 ** (-i / (half - 1)) for i in range(half)])
    args = steps.numpy()[:, None].astype(np.float64) * w[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args), np.zeros((5, dim % 2))], axis=1)
    got = timestep_embedding(steps, dim)
    assert got.dtype == torch.float32 and got.shape == (5, dim)
    # float32 arguments up to 999 carry an absolute rounding error ~ 999 * 2**-24 = 6e-5.
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-4, rtol=0)


def upfirdn_1d(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """StyleGAN2's upfirdn along the last axis: zero-insert, pad, convolve, decimate."""
    n = x.shape[-1]
    u = np.zeros(x.shape[:-1] + (n * up,))
    u[..., ::up] = x
    u = np.concatenate([np.zeros(x.shape[:-1] + (pad[0],)), u, np.zeros(x.shape[:-1] + (pad[1],))], axis=-1)
    y = np.stack([(u[..., i:i + len(k)] * k[::-1]).sum(-1) for i in range(u.shape[-1] - len(k) + 1)], axis=-1)
    return y[..., ::down]


def fir_2d(x: np.ndarray, up: int, down: int, pad: tuple[int, int], gain: float) -> np.ndarray:
    k = np.array([1.0, 3.0, 3.0, 1.0])
    k = k / k.sum() * math.sqrt(gain)  # separable: the 2-d filter sums to `gain`
    y = upfirdn_1d(x, k, up, down, pad)
    return np.swapaxes(upfirdn_1d(np.swapaxes(y, -1, -2), k, up, down, pad), -1, -2)


def test_fir_upsample_matches_upfirdn():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    got = fir_upsample(x, fir_kernel(4.0).double())
    expected = fir_2d(x.numpy(), up=2, down=1, pad=(2, 1), gain=4.0)
    assert got.shape == (2, 3, 10, 12)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fir_downsample_matches_upfirdn():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    got = fir_downsample(x, fir_kernel(1.0).double())
    expected = fir_2d(x.numpy(), up=1, down=2, pad=(1, 1), gain=1.0)
    assert got.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fir_keeps_a_constant_image_inside():
    x = torch.full((1, 1, 8, 8), 2.5)
    assert torch.allclose(fir_upsample(x, fir_kernel(4.0))[..., 2:-2, 2:-2], torch.tensor(2.5))
    assert torch.allclose(fir_downsample(x, fir_kernel(1.0))[..., 1:-1, 1:-1], torch.tensor(2.5))


@pytest.mark.parametrize("channels, heads, size", [(8, 1, 4), (12, 3, 5), (16, 2, 3)])
def test_attention_block_against_float64_softmax(channels, heads, size, backend):
    block = AttnBlock(channels, heads, backend=backend)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.5)
    x = torch.randn(2, channels, size, size)
    got = block(x)
    # Independent float64 computation: GroupNorm, per-head softmax(q k^T / sqrt(D)) v.
    xd = x.double()
    G = block.norm.num_groups
    g = xd.view(2, G, -1)
    n = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)).view_as(xd)
    n = n * block.norm.weight.double()[:, None, None] + block.norm.bias.double()[:, None, None]
    h = n.flatten(2).transpose(1, 2)                                      # [B, N, C]
    qkv = h @ block.qkv.weight.double().T + block.qkv.bias.double()
    q, k, v = qkv.split(channels, dim=-1)
    D = channels // heads
    outs = []
    for i in range(heads):
        sl = slice(i * D, (i + 1) * D)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(D), dim=-1)
        outs.append(a @ v[..., sl])
    o = torch.cat(outs, dim=-1) @ block.proj.weight.double().T + block.proj.bias.double()
    expected = (xd + o.transpose(1, 2).reshape_as(xd)) / math.sqrt(2)
    # float32 through two GEMMs and a softmax over <= 25 positions
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
