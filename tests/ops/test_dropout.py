"""mcvd.ops.dropout and the mcvd::dropout kernels.

The mask's rule (csrc/philox.h) is checked against a Philox4x32-10 written
here in NumPy from the published algorithm, which must first reproduce the
generator's published known answers (Random123's kat_vectors); the kernels'
outputs are then compared, in float64, with x / (1 - p) on that mask.
"""
import numpy as np
import pytest
import torch

import mcvd
from mcvd.ops import dropout, dropout_ref
from mcvd.ops.dropout import triton_kernels

U32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """Philox4x32-10 on arrays of counters (four uint32 words each) under one key (two words)."""
    mul0, mul1, weyl0, weyl1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), 0x9E3779B9, 0xBB67AE85
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(10):
        p0, p1 = mul0 * c[0], mul1 * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0)) & U32, p1 & U32,
             ((p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1)) & U32, p0 & U32]
        k0, k1 = (k0 + weyl0) & 0xFFFFFFFF, (k1 + weyl1) & 0xFFFFFFFF
    return c


def expected_mask(shape, p, seed) -> torch.Tensor:
    """The keep mask of csrc/philox.h's rule: element i reads word i % 4 of counter (i // 4, 0)."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    ctr = i // np.uint64(4)
    zero = np.zeros(n, dtype=np.uint64)
    key = int(seed) & 0xFFFFFFFFFFFFFFFF
    words = np.stack(philox4x32_10([ctr & U32, ctr >> np.uint64(32), zero, zero], (key & 0xFFFFFFFF, key >> 32)), 1)
    word = words[np.arange(n), (i % np.uint64(4)).astype(np.int64)]
    threshold = min(round(p * 2.0**32), 2**32 - 1)
    return torch.from_numpy(word >= threshold).reshape(shape)


@pytest.mark.parametrize("ctr, key, out", [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_the_numpy_philox_gives_the_published_known_answers(ctr, key, out):
    assert [int(w) for w in philox4x32_10(ctr, key)] == list(out)


def kernel(backend):
    """The torch op that `backend` runs (the C++ op serves "cpu" and "cuda")."""
    return triton_kernels().fwd if backend == "triton" else torch.ops.mcvd.dropout


# Sizes with and without a partial last counter, and one of several
# thousand blocks; seeds with the key's high word zero, set and all ones.
SHAPES = [(1,), (3,), (4,), (2, 3, 5, 7), (3, 5, 17, 13), (8, 64, 33, 31)]
SEEDS = [0, 0x1234567890ABCDEF, -1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.9])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_matches_the_mask_rule(backend_device, shape, p, seed):
    backend, device = backend_device
    x = torch.randn(shape, dtype=torch.float64, device=device)
    y = kernel(backend)(x, p, torch.tensor(seed, device=device))
    want = torch.where(expected_mask(shape, p, seed), x.cpu() * (1.0 / (1.0 - p)), 0.0)
    torch.testing.assert_close(y.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_is_the_scaled_input_rounded_once(backend_device, dtype):
    backend, device = backend_device
    x = torch.randn(5, 7, 33, dtype=torch.float64).to(dtype)
    y = kernel(backend)(x.to(device), 0.3, torch.tensor(7, device=device)).cpu()
    scale = torch.tensor(1.0 / 0.7, dtype=torch.float32)  # the kernels scale in float32 (opmath)
    want = torch.where(expected_mask(x.shape, 0.3, 7), x.float() * scale, 0.0).to(dtype)
    assert y.dtype == dtype
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_kept_fraction_and_mean_are_those_of_dropout(backend_device):
    """Over 4M elements the kept fraction is within 6 standard deviations of
    1 - p, and E[y] = x (a unit input keeps its mean)."""
    backend, device = backend_device
    n, p = 4 * 2**20, 0.1
    y = dropout(torch.ones(n, device=device), p, backend=backend)
    kept = (y != 0).double().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 6 * sd
    assert abs(y.double().mean().item() - 1.0) < 6 * sd / (1 - p)
    assert torch.all((y == 0) | (y == torch.tensor(1 / (1 - p), dtype=torch.float32)))


def test_neighbouring_words_are_not_correlated():
    """Each element has its own word: the keep indicators of elements 1, 2, 3
    and 4 apart (same counter, next counter) are uncorrelated."""
    keep = (dropout(torch.ones(2**22), 0.5, backend="cpu") != 0).double()
    for lag in (1, 2, 3, 4):
        corr = torch.corrcoef(torch.stack([keep[:-lag], keep[lag:]]))[0, 1].item()
        assert abs(corr) < 6 / (2**22) ** 0.5, lag


def test_the_mask_does_not_depend_on_the_thread_count():
    x, seed = torch.randn(6, 64, 40, 40), torch.tensor(12345)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.mcvd.dropout(x, 0.2, seed)
        torch.set_num_threads(2)
        two = torch.ops.mcvd.dropout(x, 0.2, seed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_strided_inputs_are_read_in_row_major_order(backend_device):
    backend, device = backend_device
    base = torch.randn(4, 6, 5, 3, dtype=torch.float64, device=device)
    seed = torch.tensor(99, device=device)
    views = (base.permute(0, 3, 1, 2), base.contiguous(memory_format=torch.channels_last),
             base[:1].expand(4, -1, -1, -1))
    for x in views:
        y = kernel(backend)(x, 0.4, seed)
        assert y.is_contiguous()
        assert torch.equal(y, kernel(backend)(x.contiguous(), 0.4, seed))


def test_backward_applies_the_forward_mask(backend_device):
    backend, device = backend_device
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64, device=device, requires_grad=True)
    y = dropout(x, 0.3, backend=backend)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    keep = y.detach() != 0
    assert 0.5 < keep.double().mean() < 0.9  # the mask drops some and keeps most (p = 0.3 of 945)
    torch.testing.assert_close(gx, torch.where(keep, g / 0.7, 0.0), rtol=1e-15, atol=0)


def test_gradcheck_and_gradgradcheck_with_a_fixed_seed(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    seed = torch.tensor(2024, device=device)
    assert torch.autograd.gradcheck(lambda t: kernel(backend)(t, 0.5, seed), (x,))
    assert torch.autograd.gradgradcheck(lambda t: kernel(backend)(t, 0.5, seed), (x,))


@pytest.mark.parametrize("layout", ["contiguous", "permuted", "channels_last", "expanded"])
def test_opcheck(backend_device, layout):
    backend, device = backend_device
    base = torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device)
    x = {"contiguous": base, "permuted": base.permute(0, 2, 3, 1),
         "channels_last": base.contiguous(memory_format=torch.channels_last),
         "expanded": base[:1].expand(3, -1, -1, -1)}[layout].requires_grad_()
    op = kernel(backend)
    torch.library.opcheck(getattr(op, "default", op), (x, 0.25, torch.tensor(5, device=device)))


@pytest.mark.slow
def test_compiled_matches_eager_with_a_given_seed(backend_device):
    backend, device = backend_device
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device)
    seed = torch.tensor(31, device=device)

    op = kernel(backend)

    def f(x, seed):
        return op(x.permute(0, 2, 3, 1), 0.3, seed) * 1.5

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(f, fullgraph=True, dynamic=False)(x, seed), f(x, seed),
                               rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_dropout_draws_its_seed_in_the_graph():
    """Under torch.compile the seed comes from inductor's generator (another
    stream than eager's), in one graph: the output is still a dropout of x."""
    x = torch.randn(4, 8, 16, dtype=torch.float64)
    torch._dynamo.reset()
    y = torch.compile(lambda t: dropout(t, 0.5, backend="cpu"), fullgraph=True)(x)
    keep = y != 0
    assert 0.3 < keep.double().mean().item() < 0.7
    torch.testing.assert_close(y[keep], x[keep] * 2.0, rtol=0, atol=0)


def test_manual_seed_reproduces_a_call_and_calls_differ():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5, backend="cpu"), dropout(x, 0.5, backend="cpu")
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5, backend="cpu"), a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("backend", [None, "reference", "cpu"])
def test_identity_when_not_training_or_p_is_zero(backend):
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, False, backend=backend) is x
    assert dropout(x, 0.0, backend=backend) is x
    assert dropout_ref(x, 0.5, False) is x


def test_reference_is_pytorch_dropout():
    x = torch.randn(1000)
    torch.manual_seed(5)
    y = dropout(x, 0.2, backend="reference")
    torch.manual_seed(5)
    assert torch.equal(y, torch.nn.functional.dropout(x, 0.2, True))


def test_auto_backend_is_the_cpu_kernel_on_the_cpu():
    x = torch.randn(64)
    torch.manual_seed(8)
    y = dropout(x, 0.5)
    torch.manual_seed(8)
    assert torch.equal(y, dropout(x, 0.5, backend="cpu"))


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(3), 1.0), ValueError, r"p: expected a probability in \[0, 1\), got 1.0"),
    ((torch.randn(3), -0.1), ValueError, r"p: expected a probability in \[0, 1\), got -0.1"),
    ((torch.randn(3), float("nan")), ValueError, r"p: expected a probability in \[0, 1\), got nan"),
    ((torch.randn(3), True), TypeError, r"p: expected a probability in \[0, 1\), got bool True"),
    ((torch.randn(3), "0.5"), TypeError, r"p: expected a probability in \[0, 1\), got str '0.5'"),
    ((torch.ones(3, dtype=torch.int64), 0.5), TypeError, r"x: expected a floating dtype .* got torch.int64"),
    (([1.0, 2.0], 0.5), TypeError, r"x: expected a tensor, got list"),
    ((torch.randn(3), 0.5, 1), TypeError, r"training: expected a bool, got int 1"),
])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_arguments_are_named(backend, args, error, match):
    with pytest.raises(error, match=match):
        dropout(*args, backend=backend)


@pytest.mark.parametrize("x, p, seed, match", [
    (torch.ones(3, dtype=torch.int32), 0.5, torch.tensor(1), r"x: expected a floating dtype"),
    (torch.ones(3), 1.0, torch.tensor(1), r"p: expected a probability in \[0, 1\), got 1"),
    (torch.ones(3), 0.5, torch.tensor(1, dtype=torch.int32), r"seed: expected dtype torch.int64, got torch.int32"),
    (torch.ones(3), 0.5, torch.tensor([1]), r"seed: expected a 0-d tensor, got shape \[1\]"),
])
def test_the_kernel_names_bad_arguments(x, p, seed, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mcvd.dropout(x, p, seed)


def test_network_dropout_layer_keeps_nn_dropout_state_dicts():
    """ResBlock's dropout layer has no state (checkpoints of the reference code load as before)."""
    model = mcvd.MCVD(mcvd.ModelConfig(image_size=8, num_frames=1, num_frames_cond=1, ngf=8, ch_mult=(1,),
                                       num_res_blocks=1, attn_resolutions=(), dropout=0.25))
    layers = [m for m in model.modules() if type(m).__name__ == "Dropout"]
    assert layers and all(m.p == 0.25 and not list(m.state_dict()) for m in layers)
    model.eval()
    x = torch.randn(2, 2, 1, 8, 8).clamp(-1, 1)
    t = torch.tensor([10, 500])
    assert torch.equal(model(x[:, 1:], t, cond=x[:, :1]), model(x[:, 1:], t, cond=x[:, :1]))


def test_the_training_network_traces_as_one_graph():
    """The SMMNIST preset (its dropout 0.1) in training mode, at its own
    shapes, traced by dynamo with fullgraph=True (no graph break at the seed's
    draw or the op) and differentiated; dropout is live in the graph: two
    calls differ, and the same generator state gives the same output."""
    cfg = mcvd.ModelConfig.preset("smmnist")
    model = mcvd.MCVD(cfg).train()
    x = torch.rand(1, cfg.num_frames, 1, 64, 64) * 2 - 1
    cond = torch.rand(1, cfg.num_frames_cond, 1, 64, 64) * 2 - 1
    t = torch.tensor([10])
    torch._dynamo.reset()
    traced = torch.compile(model, backend="eager", fullgraph=True)
    torch.manual_seed(1)
    a = traced(x, t, cond=cond)
    b = traced(x, t, cond=cond)
    torch.manual_seed(1)
    assert torch.equal(traced(x, t, cond=cond), a)
    assert not torch.equal(a, b)
    a.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
